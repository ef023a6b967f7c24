//! Logging: `tracing` to stderr (journald takes stderr under systemd).
//!
//! `--log-format text` (default) is human-readable, without colour escapes unless
//! stderr is a terminal; `--log-format json` writes one JSON object per line
//! (`timestamp`, `level`, `target`, `fields`, spans) for log shippers. Levels come
//! from `RUST_LOG` (e.g. `RUST_LOG=debug,rumqttc=warn`), else the daemon's default.
//!
//! Every line is one event: control characters inside an event (a newline in a topic,
//! an id, a peer's error text) are written escaped (`\n`, `\r`, `\x1b`…), so text
//! from the network can never forge a log line ([`escape_event`]).

use std::io::Write;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The `--log-format` option both daemons take (also `PLATEN_LOG_FORMAT`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct LogArgs {
    /// Log lines as text (default) or JSON objects; levels from RUST_LOG.
    #[arg(
        long,
        value_enum,
        global = true,
        env = "PLATEN_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Install the global subscriber. `default_filter` applies when `RUST_LOG` is unset
/// or invalid (an invalid one is reported once the subscriber is up).
pub fn init(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => match EnvFilter::try_new(&s) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(default_filter), Some(format!("{s:?}: {e}"))),
        },
        _ => (EnvFilter::new(default_filter), None),
    };
    let ansi = format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || Escaping {
            inner: std::io::stderr(),
            keep_esc: ansi,
        });
    let result = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .flatten_event(false)
            .try_init(),
        LogFormat::Text => builder
            // No colour escapes in files and the journal.
            .with_ansi(ansi)
            .try_init(),
    };
    if result.is_ok() {
        if let Some(bad) = bad {
            tracing::warn!("RUST_LOG ignored: {bad}");
        }
    }
}

/// One formatted event with its control characters escaped; the final newline (the
/// event's end) is kept. `keep_esc`: leave ESC for colour on a terminal.
pub fn escape_event(buf: &[u8], keep_esc: bool) -> Vec<u8> {
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut out = Vec::with_capacity(buf.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0x1b if keep_esc => out.push(b),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    if body.len() != buf.len() {
        out.push(b'\n');
    }
    out
}

/// A writer that escapes each event (tracing's formatter writes one event per call).
struct Escaping<W> {
    inner: W,
    keep_esc: bool,
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write_all(&escape_event(buf, self.keep_esc))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_inside_an_event_are_escaped() {
        let cases: [(&[u8], bool, &[u8]); 5] = [
            (b"plain line\n", false, b"plain line\n"),
            (
                b"no contract x\nFAKE 2026 INFO admin logged in\n",
                false,
                b"no contract x\\nFAKE 2026 INFO admin logged in\n",
            ),
            (b"a\rb\0c\x7f\n", false, b"a\\rb\\x00c\\x7f\n"),
            (b"\x1b[2mdim\x1b[0m\n", true, b"\x1b[2mdim\x1b[0m\n"),
            (b"\x1b]0;title\x07", false, b"\\x1b]0;title\\x07"),
        ];
        for (input, keep_esc, want) in cases {
            assert_eq!(
                escape_event(input, keep_esc),
                want,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        // Text beyond ASCII passes unchanged.
        assert_eq!(
            escape_event("Büro 3\n".as_bytes(), false),
            "Büro 3\n".as_bytes()
        );
    }
}
