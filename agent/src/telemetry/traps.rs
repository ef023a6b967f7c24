//! SNMP notifications (traps, informs) from the printers, as reasons to poll.
//!
//! A notification is never data: it only makes the agent poll the printer it came
//! from now, instead of at the next sweep, so an alert reaches the cloud in seconds.
//! What the poll reads is what counts, so a spoofed or replayed notification costs
//! one poll and nothing else. The source address picks the printer (SNMP does not
//! authenticate it; v1/v2c notifications must also carry one of the printers'
//! communities, checked by the receiver); one poll per address per
//! `min_interval`, however many arrive. Notifications from an address no printer
//! has are counted and dropped.
//!
//! [`Sources`] is the pure part (routing and the rate limit); [`listen`] the socket.

use platen_protocol::Id;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// What came of one notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Poll these printers (every printer configured at the source's address).
    Poll(Vec<Id>),
    /// The address was polled on a notification less than `min_interval` ago.
    RateLimited,
    /// No printer has this address.
    UnknownSource,
}

impl Route {
    /// The metric's `outcome` label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Route::Poll(_) => "poll",
            Route::RateLimited => "rate_limited",
            Route::UnknownSource => "unknown_source",
        }
    }
}

/// Printers by address, and when each address last caused a poll.
pub struct Sources {
    printers: HashMap<IpAddr, Vec<Id>>,
    last: HashMap<IpAddr, Instant>,
    min_interval: Duration,
}

impl Sources {
    pub fn new(
        printers: impl IntoIterator<Item = (IpAddr, Id)>,
        min_interval: Duration,
    ) -> Sources {
        let mut by: HashMap<IpAddr, Vec<Id>> = HashMap::new();
        for (ip, id) in printers {
            by.entry(canonical(ip)).or_default().push(id);
        }
        Sources {
            printers: by,
            last: HashMap::new(),
            min_interval,
        }
    }

    /// Route a notification from `source` arriving at `now`.
    pub fn route(&mut self, source: IpAddr, now: Instant) -> Route {
        let ip = canonical(source);
        let Some(ids) = self.printers.get(&ip) else {
            return Route::UnknownSource;
        };
        // Only known addresses are remembered: the map stays as small as the fleet.
        match self.last.get(&ip) {
            Some(t) if now.duration_since(*t) < self.min_interval => Route::RateLimited,
            _ => {
                self.last.insert(ip, now);
                Route::Poll(ids.clone())
            }
        }
    }
}

/// An IPv4 address as it arrives on a dual-stack socket (`::ffff:a.b.c.d`) is that
/// IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Receive notifications until `stop`; each one routed by `sources` and, when it is
/// to be polled, its printers sent on `poke`.
pub async fn listen(
    receiver: crate::snmp::Notifications,
    mut sources: Sources,
    poke: mpsc::Sender<Vec<Id>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    info!(listen = %receiver.local_addr(), "listening for SNMP notifications");
    loop {
        let got = tokio::select! {
            r = receiver.next_source() => r,
            _ = stop.changed() => return Ok(()),
        };
        let source = match got {
            Ok(s) => s,
            Err(e) => {
                // A datagram that is not an acceptable notification (wrong community,
                // malformed): nothing to do but note it.
                debug!(error = %e, "SNMP notification refused");
                continue;
            }
        };
        let route = sources.route(source.ip(), Instant::now());
        crate::observe::metrics::get().trap(route.outcome());
        match route {
            Route::Poll(ids) => {
                debug!(%source, printers = ?ids, "SNMP notification: polling now");
                if poke.send(ids).await.is_err() {
                    return Ok(());
                }
            }
            Route::RateLimited => debug!(%source, "SNMP notification: polled recently"),
            Route::UnknownSource => {
                warn!(%source, "SNMP notification from an address no printer has: ignored")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_routed_by_address_and_rate_limited() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let id = |s: &str| s.parse::<Id>().unwrap();
        let mut s = Sources::new(
            [
                (ip("10.0.0.5"), id("mfp")),
                (ip("10.0.0.6"), id("a")),
                (ip("10.0.0.6"), id("b")),
            ],
            Duration::from_secs(5),
        );
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(s.route(ip("10.0.0.5"), at(0)), Route::Poll(vec![id("mfp")]));
        assert_eq!(s.route(ip("10.0.0.5"), at(4999)), Route::RateLimited);
        // The dual-stack form of the same address is the same printer.
        assert_eq!(s.route(ip("::ffff:10.0.0.5"), at(4999)), Route::RateLimited);
        assert_eq!(
            s.route(ip("10.0.0.5"), at(5000)),
            Route::Poll(vec![id("mfp")])
        );
        // Another address has its own budget; two printers behind one address both poll.
        assert_eq!(
            s.route(ip("10.0.0.6"), at(5001)),
            Route::Poll(vec![id("a"), id("b")])
        );
        // Unknown sources are dropped and not remembered (a spoofed flood from many
        // addresses grows nothing).
        for i in 0..1000u32 {
            let spoofed = IpAddr::from((0x0b00_0000u32 + i).to_be_bytes());
            assert_eq!(s.route(spoofed, at(6000)), Route::UnknownSource);
        }
        assert_eq!(s.last.len(), 2);
        assert_eq!(Route::RateLimited.outcome(), "rate_limited");
    }
}
