//! Logging: `tracing` to stderr (journald takes stderr under systemd).
//!
//! `--log-format text` (default) is human-readable, without colour escapes unless
//! stderr is a terminal; `--log-format json` writes one JSON object per line
//! (`timestamp`, `level`, `target`, `fields`, spans) for log shippers. Levels come
//! from `RUST_LOG` (e.g. `RUST_LOG=debug,rumqttc=warn`), else the daemon's default.

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .flatten_event(false)
            .try_init(),
        LogFormat::Text => builder
            // No colour escapes in files and the journal.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    if result.is_ok() {
        if let Some(bad) = bad {
            tracing::warn!("RUST_LOG ignored: {bad}");
        }
    }
}
