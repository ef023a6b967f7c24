//! When a printer under contract is stale: nothing newer than `stale_after` came
//! from it — its newest stored reading, or the contract's start when none came since,
//! whichever is later, lies `stale_after` or more in the past.
//!
//! One rule covers both ways a printer goes quiet: a printer that stops answering
//! its agent (the agent keeps sending its last good reading, whose time stops
//! moving) and an agent that stops sending (nothing arrives). Which one it was is
//! told apart by what the agent last said ([`crate::model::Quiet::cause`]).
//!
//! `stale_after` must be longer than the agents' telemetry heartbeat: an idle
//! printer sends a reading only on a change or on the heartbeat (900 s by default),
//! hence the default of an hour.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// The default `fleet.stale_after_secs`: four default agent heartbeats.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(3600);

/// When a printer watched since `watched_since` (its contract's start), whose newest
/// reading was taken at `last_reading`, is stale if nothing newer comes.
pub fn stale_at(
    last_reading: Option<DateTime<Utc>>,
    watched_since: DateTime<Utc>,
    stale_after: Duration,
) -> DateTime<Utc> {
    let from = last_reading.map_or(watched_since, |r| r.max(watched_since));
    from + chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX)
}

/// [`stale_at`], when it has passed at `now`.
pub fn stale_since(
    now: DateTime<Utc>,
    last_reading: Option<DateTime<Utc>>,
    watched_since: DateTime<Utc>,
    stale_after: Duration,
) -> Option<DateTime<Utc>> {
    let at = stale_at(last_reading, watched_since, stale_after);
    (now >= at).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, h, m, 0).unwrap()
    }

    #[test]
    fn staleness_table() {
        let hour = Duration::from_secs(3600);
        // (now, newest reading, contract start) → stale since
        let cases = [
            // Fresh: the newest reading is less than an hour old.
            (t(10, 59), Some(t(10, 0)), t(8, 0), None),
            // Exactly an hour: stale from that instant.
            (t(11, 0), Some(t(10, 0)), t(8, 0), Some(t(11, 0))),
            (t(15, 0), Some(t(10, 0)), t(8, 0), Some(t(11, 0))),
            // No reading since the contract began: counted from its start.
            (t(8, 59), None, t(8, 0), None),
            (t(9, 30), None, t(8, 0), Some(t(9, 0))),
            // A reading older than the contract (the printer moved contracts): the
            // contract's start counts, so the new contract gets its hour.
            (t(8, 30), Some(t(6, 0)), t(8, 0), None),
            (t(9, 0), Some(t(6, 0)), t(8, 0), Some(t(9, 0))),
            // A contract that starts later is not watched before it starts.
            (t(9, 0), None, t(12, 0), None),
        ];
        for (now, last, since, want) in cases {
            assert_eq!(
                stale_since(now, last, since, hour),
                want,
                "now {now}, last {last:?}, since {since}"
            );
        }
    }
}
