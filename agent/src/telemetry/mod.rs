//! Telemetry: one poll of a printer ([`poll`]), the fleet poller that sweeps them
//! all ([`fleet`]), the tracker that turns readings into events and due messages
//! ([`tracker`], re-exported here), what the page counters say together
//! ([`counters`]), and SNMP notifications as reasons to poll ([`traps`]).

pub mod counters;
pub mod fleet;
pub(crate) mod poll;
pub mod tracker;
pub(crate) mod traps;

pub use tracker::*;

/// What a poll of a printer with `profile` reads and how it judges supplies.
pub fn spec(
    cfg: &crate::config::AgentConfig,
    profile: &crate::apply::profile::Profile,
) -> crate::snmp::printer_mib::TelemetrySpec {
    crate::snmp::printer_mib::TelemetrySpec {
        vendor_counters: profile.counters.clone(),
        billing_counter: profile.billing_counter.clone(),
        low_percent: cfg.telemetry.low_percent,
    }
}
