//! The fleet as telemetry shows it: when a printer under contract has gone quiet
//! ([`stale`], a pure rule) and the sweep that reports it as `printer.stale`
//! ([`watch`]).

pub mod stale;
pub(crate) mod watch;
