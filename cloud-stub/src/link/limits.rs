//! Ingest rate limits: a token bucket per printer for telemetry, checked on the topic
//! alone before a message is decoded, so a flooding gateway costs the cloud a map
//! lookup per message and is refused (acknowledged and counted) beyond its rate.
//!
//! Reports have no such limit: a report is stored only for a version this cloud
//! published, at most [`crate::link::MAX_REPORTS_PER_VERSION`] of them, so what a gateway
//! can make the cloud keep is bounded by what the cloud sent it; everything else is
//! refused after a decode and one lookup. A genuine report is never dropped for a
//! rate (that would turn a gateway's flood into a missed deadline the provider pays).
//!
//! Pure: the caller passes the time. An agent can publish only on its own printers'
//! topics (the broker ACL), so the per-printer buckets bound each agent too.

use std::collections::HashMap;
use std::time::Instant;

/// A sustained rate with a burst on top.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Messages that may arrive at once (the bucket's size).
    pub burst: u32,
    /// Messages per minute, sustained.
    pub per_minute: u32,
}

/// Limits per printer; `None`: unlimited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IngestLimits {
    pub telemetry: Option<Rate>,
}

impl Default for IngestLimits {
    /// Telemetry: a burst of 240 (four hours of a default-interval backlog after an
    /// outage), then two a second.
    fn default() -> Self {
        IngestLimits {
            telemetry: Some(Rate {
                burst: 240,
                per_minute: 120,
            }),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Most buckets kept; beyond it, full buckets (idle keys) are dropped.
const MAX_BUCKETS: usize = 200_000;

/// Token buckets by key.
#[derive(Debug, Default)]
pub struct Buckets {
    map: HashMap<String, Bucket>,
}

impl Buckets {
    /// Take one token for `key` at `now`; false: over the rate.
    pub fn take(&mut self, key: &str, rate: Rate, now: Instant) -> bool {
        let cap = f64::from(rate.burst.max(1));
        let per_sec = f64::from(rate.per_minute) / 60.0;
        if self.map.len() >= MAX_BUCKETS && !self.map.contains_key(key) {
            self.map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < cap
            });
        }
        let b = self.map.entry(key.to_string()).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at);
        b.tokens = (b.tokens + elapsed.as_secs_f64() * per_sec).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_sustained_rate_per_key() {
        let rate = Rate {
            burst: 3,
            per_minute: 60,
        };
        let t0 = Instant::now();
        let mut b = Buckets::default();
        let taken: Vec<bool> = (0..5).map(|_| b.take("a", rate, t0)).collect();
        assert_eq!(taken, [true, true, true, false, false]);
        // Another key has its own bucket.
        assert!(b.take("b", rate, t0));
        // One second later: one more token, not more.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.take("a", rate, t1));
        assert!(!b.take("a", rate, t1));
        // Long idle: back to the burst, never above it.
        let t2 = t1 + Duration::from_secs(3600);
        let taken: Vec<bool> = (0..4).map(|_| b.take("a", rate, t2)).collect();
        assert_eq!(taken, [true, true, true, false]);
    }

    #[test]
    fn idle_keys_are_dropped_when_the_map_is_full() {
        let rate = Rate {
            burst: 2,
            per_minute: 60,
        };
        let t0 = Instant::now();
        let mut b = Buckets::default();
        for i in 0..MAX_BUCKETS {
            b.map.insert(
                format!("k{i}"),
                Bucket {
                    tokens: 2.0,
                    at: t0,
                },
            );
        }
        assert!(b.take("new", rate, t0 + Duration::from_secs(1)));
        assert_eq!(b.len(), 1, "full buckets are idle keys");
    }
}
