//! Operations support shared by Platen's daemons (`platen-agent`, `platen-cloud`).
//!
//! - [`config`]: TOML config files with `PLATEN_…` environment overrides, where every
//!   problem (syntax, unknown key, wrong type, failed check) is reported at once with
//!   its location: `FILE:LINE` or the environment variable that set it.
//! - [`logging`]: `tracing` to stderr, human-readable or JSON lines, `RUST_LOG` filters.
//! - [`version`]: the version string with git commit and protocol version.
//! - [`systemd`]: `READY=1`, `WATCHDOG=1`, `STATUS=…` to `$NOTIFY_SOCKET`; no-ops
//!   outside systemd.

pub mod config;
pub mod logging;
pub mod systemd;
pub mod version;
