//! Which old telemetry samples retention keeps: the decision both backends apply
//! while they walk a printer's samples oldest first.
//!
//! Samples read before `thin_before` are kept only where billing and disputes need
//! them — the last of each UTC day (the day's maximum of a counter that only grows)
//! and both sides of a counter drop (a reset or a replaced counter) — and samples
//! read before `delete_before` are removed. Each printer's newest sample always stays
//! (a period's usage starts from the last sample before it).

use chrono::{DateTime, Utc};

/// Walks samples in (printer, time) order and says which to keep.
pub struct Thinner {
    delete: u64,
    thin: u64,
    /// The previous sample's printer and value.
    prev: Option<(Vec<u8>, Option<u64>)>,
}

fn ms(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

impl Thinner {
    pub fn new(delete_before: DateTime<Utc>, thin_before: DateTime<Utc>) -> Thinner {
        Thinner {
            delete: ms(delete_before),
            thin: ms(thin_before.max(delete_before)),
            prev: None,
        }
    }

    /// Whether to keep the sample of `printer` read at `at_ms` with `value`; `next` is
    /// the printer's following sample (its time and value), `None` for its newest.
    pub fn keep(
        &mut self,
        printer: &[u8],
        at_ms: u64,
        value: Option<u64>,
        next: Option<(u64, Option<u64>)>,
    ) -> bool {
        let after_drop = matches!(&self.prev, Some((p, Some(pv))) if p.as_slice() == printer && value.is_some_and(|h| h < *pv));
        let keep = match next {
            None => true,
            Some(_) if at_ms < self.delete => false,
            Some(_) if at_ms >= self.thin => true,
            Some((next_at, next_value)) => {
                let day = |t: u64| t / 86_400_000;
                day(next_at) != day(at_ms)
                    || matches!((value, next_value), (Some(h), Some(n)) if n < h)
                    || after_drop
            }
        };
        self.prev = Some((printer.to_vec(), value));
        keep
    }
}
