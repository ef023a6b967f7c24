//! When an open change next needs the engine: pure, from its setup state. The engine
//! keeps every open change in a due index under this time (in the same write as the
//! change), and each pass takes only what is due — settled changes cost nothing.

use crate::billing::period;
use crate::model::SetupState;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use platen_protocol::Id;

/// The timers that decide when a change is due.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    pub report_deadline: Duration,
    pub republish_after: Duration,
    /// Shortest wait (a due time in the past becomes now + this).
    pub tick: Duration,
    /// Longest wait: an open change is looked at least this often.
    pub recheck: Duration,
}

/// The next time the engine should step this change; `None` once it is settled.
pub fn next_due(
    s: &SetupState,
    printers: &[Id],
    timers: &Timers,
    tz: Tz,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if s.settled {
        return None;
    }
    let mut due = now + timers.recheck;
    let mut at = |t: DateTime<Utc>| {
        if t < due {
            due = t;
        }
    };
    if s.completed_at.is_none() {
        for p in printers {
            match s.printers.get(p) {
                None => at(now),
                Some(ps) if ps.confirmed_at.is_some() => {}
                Some(ps) => match (ps.latest(), ps.failed_at) {
                    (None, _) => at(now),
                    (Some(_), Some(failed)) => {
                        at(failed + ps.republish_wait(timers.republish_after))
                    }
                    (Some((_, published)), None) if !ps.deadline_noted => {
                        at(published + timers.report_deadline)
                    }
                    _ => {}
                },
            }
            match s.services.get(p) {
                None => at(now),
                Some(ss) if ss.confirmed_at.is_some() => {}
                Some(ss) => at(ss.next_attempt_at.unwrap_or(now)),
            }
        }
        // A fault known while setup is open: the period's part is owed a grace after
        // it ends (the period that ended less than the grace ago, or this one).
        if s.config_fault.is_some() || s.service_fault.is_some() {
            let grace = crate::billing::compensation::INTERIM_GRACE;
            at(period::containing(tz, now - grace).end + grace);
        }
    } else {
        // Completed, not settled: the decision or a shipment is still to be made.
        at(now);
    }
    Some(due.max(now + timers.tick))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FaultNote, PrinterSetup, ServiceSetup};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn timers() -> Timers {
        Timers {
            report_deadline: Duration::seconds(60),
            republish_after: Duration::seconds(30),
            tick: Duration::milliseconds(500),
            recheck: Duration::seconds(60),
        }
    }

    #[test]
    fn due_times_table() {
        let now = t("2026-03-10T12:00:00Z");
        let p1: Id = "p1".parse().unwrap();
        let printers = [p1.clone()];
        let published = |at: &str| {
            let mut ps = PrinterSetup::default();
            ps.add_published(1, t(at));
            ps
        };
        let confirmed_service = ServiceSetup {
            set_up: true,
            confirmed_at: Some(now),
            ..Default::default()
        };
        let state = |ps: Option<PrinterSetup>, ss: Option<ServiceSetup>| {
            let mut s = SetupState::default();
            if let Some(ps) = ps {
                s.printers.insert(p1.clone(), ps);
            }
            if let Some(ss) = ss {
                s.services.insert(p1.clone(), ss);
            }
            s
        };
        let tick = now + Duration::milliseconds(500);
        let cases: Vec<(&str, SetupState, Option<DateTime<Utc>>)> = vec![
            ("new: publish now", state(None, None), Some(tick)),
            (
                "awaiting a report: its deadline",
                state(
                    Some(published("2026-03-10T11:59:30Z")),
                    Some(confirmed_service.clone()),
                ),
                Some(t("2026-03-10T12:00:30Z")),
            ),
            (
                "failed: republish after the wait",
                state(
                    Some(PrinterSetup {
                        failed_at: Some(t("2026-03-10T11:59:50Z")),
                        ..published("2026-03-10T11:58:00Z")
                    }),
                    Some(confirmed_service.clone()),
                ),
                Some(t("2026-03-10T12:00:20Z")),
            ),
            (
                "five unanswered: the wait has doubled four times",
                state(
                    Some(PrinterSetup {
                        failed_at: Some(t("2026-03-10T11:59:00Z")),
                        unanswered: 5,
                        deadline_noted: true,
                        ..published("2026-03-10T11:50:00Z")
                    }),
                    Some(confirmed_service.clone()),
                ),
                // 30 s × 16 = 8 min after the failure, but rechecked within a minute.
                Some(now + Duration::seconds(60)),
            ),
            (
                "provider retry",
                state(
                    Some(PrinterSetup {
                        confirmed_at: Some(now),
                        ..published("2026-03-10T11:59:00Z")
                    }),
                    Some(ServiceSetup {
                        next_attempt_at: Some(t("2026-03-10T12:00:05Z")),
                        ..Default::default()
                    }),
                ),
                Some(t("2026-03-10T12:00:05Z")),
            ),
            (
                "settled: never",
                SetupState {
                    settled: true,
                    ..Default::default()
                },
                None,
            ),
        ];
        for (what, s, want) in cases {
            assert_eq!(
                next_due(&s, &printers, &timers(), chrono_tz::UTC, now),
                want,
                "{what}"
            );
        }
        // A fault while setup is open: due a grace after the period ends, if nothing
        // is sooner.
        let late = t("2026-03-31T23:59:30Z");
        // Both confirmations are in, T1 not yet decided: only the period's end counts.
        let mut s = state(
            Some(PrinterSetup {
                confirmed_at: Some(late),
                ..published("2026-03-10T11:00:00Z")
            }),
            Some(confirmed_service),
        );
        s.config_fault = Some(FaultNote {
            at: now,
            reason: "r".into(),
            cause: Default::default(),
        });
        let end_of_march = t("2026-03-31T23:59:59Z");
        assert_eq!(
            next_due(
                &s,
                &printers,
                &Timers {
                    recheck: Duration::days(60),
                    ..timers()
                },
                chrono_tz::UTC,
                late
            ),
            Some(end_of_march + Duration::seconds(1) + crate::billing::compensation::INTERIM_GRACE),
        );
    }

    #[test]
    fn republish_waits_double_up_to_an_hour_and_versions_stay_bounded() {
        let mut ps = PrinterSetup::default();
        let base = Duration::seconds(30);
        let waits: Vec<i64> = (0..10)
            .map(|n| {
                ps.unanswered = n;
                ps.republish_wait(base).num_seconds()
            })
            .collect();
        assert_eq!(waits, [30, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        let at = t("2026-03-10T12:00:00Z");
        for v in 1..=100 {
            ps.add_published(v, at);
        }
        assert_eq!(ps.published.len(), crate::model::KEPT_VERSIONS + 1);
        assert_eq!(ps.published.keys().next(), Some(&1), "the first stays");
        assert_eq!(ps.latest().map(|(v, _)| v), Some(100));
        assert_eq!(
            ps.versions_dropped,
            100 - 1 - crate::model::KEPT_VERSIONS as u32
        );
    }
}
