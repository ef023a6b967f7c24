//! The one backoff of Platen's daemons: waits that double after each failure, up to a
//! cap.
//!
//! [`Backoff`] is the stateful form, for a loop that retries until it succeeds
//! (broker reconnects, a store that does not answer): each failure doubles the base
//! delay from `min` up to `max`; the delay returned is the base scaled by a jitter
//! factor in [0.5, 1.5) so a fleet of gateways does not reconnect in lockstep after
//! a broker restart; a success resets it. [`doubled`] is the stateless form, for a
//! wait computed from an attempt count that is stored elsewhere (SET retries, provider
//! retries of a change).
//!
//! Schedules that are domain rules — a change's republication wait, the webhook
//! retry schedule of the Standard Webhooks recommendation — live with their rules.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            base: min,
        }
    }

    /// The next delay, with random jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with_jitter(rand::random::<f64>())
    }

    /// The next delay with a given jitter sample in [0, 1): deterministic, for tests.
    pub fn next_with_jitter(&mut self, sample: f64) -> Duration {
        let factor = 0.5 + sample.clamp(0.0, 0.999_999);
        let delay = self.base.mul_f64(factor);
        self.base = (self.base * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.base = self.min;
    }

    /// Whether the base has reached `max` (a loop that has failed this long may say
    /// so once, rather than at every attempt).
    pub fn at_max(&self) -> bool {
        self.base >= self.max
    }
}

/// `base` doubled `times` times (at most 2¹⁶ ×), at most `max`.
pub fn doubled(base: Duration, times: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << times.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubled_waits_are_capped() {
        let s = Duration::from_secs;
        let got: Vec<Duration> = (0..6).map(|n| doubled(s(1), n, s(20))).collect();
        assert_eq!(got, [s(1), s(2), s(4), s(8), s(16), s(20)]);
        assert_eq!(doubled(s(1), u32::MAX, Duration::MAX), s(65536));
        assert_eq!(doubled(Duration::MAX, 3, Duration::MAX), Duration::MAX);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_maximum() {
        let mut b = Backoff::new(ms(100), ms(1000));
        let got: Vec<Duration> = (0..6).map(|_| b.next_with_jitter(0.5)).collect();
        assert_eq!(
            got,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        let mut b = Backoff::new(ms(1000), ms(1000));
        assert_eq!(b.next_with_jitter(0.0), ms(500));
        let hi = b.next_with_jitter(1.0);
        assert!(hi < ms(1500) && hi > ms(1499), "{hi:?}");
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(d >= ms(500) && d < ms(1500), "{d:?}");
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(ms(10), ms(1000));
        b.next_with_jitter(0.5);
        b.next_with_jitter(0.5);
        b.reset();
        assert_eq!(b.next_with_jitter(0.5), ms(10));
    }

    #[test]
    fn degenerate_bounds_are_safe() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(b.next_with_jitter(0.5) > Duration::ZERO);
    }
}
