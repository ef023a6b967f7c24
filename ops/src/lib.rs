//! Operations support shared by Platen's daemons (`platen-agent`, `platen-cloud`).
//!
//! - [`config`]: TOML config files with `PLATEN_…` environment overrides, where every
//!   problem (syntax, unknown key, wrong type, failed check) is reported at once with
//!   its location: `FILE:LINE` or the environment variable that set it.
//! - [`logging`]: `tracing` to stderr, human-readable or JSON lines, `RUST_LOG` filters.
//! - [`version`]: the version string with git commit and protocol version.
//! - [`secret`]: a string that never shows itself in `Debug`, `Display` or serialized output.
//! - [`tls`]: rustls client configs for the broker from PEM files, private keys checked
//!   not to be readable by others.
//! - [`systemd`]: `READY=1`, `WATCHDOG=1`, `STATUS=…` to `$NOTIFY_SOCKET`; no-ops
//!   outside systemd.
//! - [`cli`]: tool commands end quietly when their reader goes away (`| head`).
//! - [`backoff`]: the one backoff (doubling waits with jitter, capped), for both.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod logging;
pub mod secret;
pub mod systemd;
pub mod tls;
pub mod version;
