//! Usage: pages printed in a billing period, from the agents' page-counter telemetry.
//!
//! Every telemetry message carries the printer's last good reading; the cloud keeps
//! one [`Sample`] per reading (its time, its billing counter and value, the worst
//! state of its consumable supplies), keyed by reading time, so a message delivered
//! twice or a stale message repeating an old reading is stored once.
//!
//! Pages in a period = the sum of the increases between consecutive samples, from
//! the last sample before the period (if any) through the samples inside it. A step
//! down is a flagged reset, never negative usage: a Counter32 wrap counts the pages
//! round the wrap, any other drop counts none and usage counts on from the new
//! value (unless a later reading climbs back to the value before the drop: then
//! the low readings were outliers and are ignored); a change of counter source (another billing counter) likewise starts
//! afresh. A period with no sample from a printer has no telemetry for it.
//!
//! [`pages_in`] and [`contract_usage`] are pure; the samples are kept behind the
//! storage port (its readings).

use crate::model::Period;
use crate::model::{ContractUsage, OtherCounter, PrinterUsage, Reset, Sample};
use crate::model::{SuppliesState, TelemetryState};
use platen_protocol::telemetry::{CounterKind, ResetKind, SupplyClass, SupplyState};
use platen_protocol::{Id, Telemetry};
use std::collections::BTreeMap;

impl Sample {
    /// The sample of a telemetry message's reading, if it has one.
    pub fn of(t: &Telemetry) -> Option<Sample> {
        let r = t.reading.as_ref()?;
        Some(Sample {
            read_at: r.read_at,
            message_id: t.message_id.clone(),
            counter: r.billing_counter.clone(),
            value: r.billing_value(),
            supplies: worst_supply(
                r.supplies
                    .iter()
                    .filter_map(|s| (s.class == SupplyClass::Consumed).then_some(s.state)),
            ),
            others: r
                .counters
                .iter()
                .filter(|c| Some(&c.name) != r.billing_counter.as_ref())
                .map(|c| OtherCounter {
                    name: c.name.clone(),
                    kind: c.kind,
                    value: c.value,
                })
                .collect(),
        })
    }
}

/// The worst of some consumable supply states: empty, low, ok; unknown when none
/// of them says.
fn worst_supply(states: impl Iterator<Item = SupplyState>) -> SuppliesState {
    let mut worst = SuppliesState::Unknown;
    for s in states {
        let this = match s {
            SupplyState::Empty => SuppliesState::Empty,
            SupplyState::Low => SuppliesState::Low,
            SupplyState::Ok | SupplyState::SomeRemaining => SuppliesState::Ok,
            _ => continue,
        };
        worst = worse(worst, this);
    }
    worst
}

fn worse(a: SuppliesState, b: SuppliesState) -> SuppliesState {
    let rank = |s| match s {
        SuppliesState::Unknown => 0,
        SuppliesState::Ok => 1,
        SuppliesState::Low => 2,
        SuppliesState::Empty => 3,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Usage from one printer's samples (sorted by `read_at`, any range): `None` when
/// none lies in the period.
pub fn pages_in(samples: &[Sample], period: &Period) -> Option<PrinterUsage> {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| period.contains(s.read_at))
        .collect();
    let last = *inside.last()?;
    let before = samples.iter().rev().find(|s| s.read_at < period.start);
    let window: Vec<&Sample> = before.into_iter().chain(inside.iter().copied()).collect();
    let counted: Vec<&Sample> = window
        .iter()
        .copied()
        .filter(|s| s.value.is_some() && s.counter.is_some())
        .collect();
    let mut pages: u64 = 0;
    let mut resets = Vec::new();
    // After a drop: the value before it, what was counted since, the reset's index.
    let mut dropped: Option<(u64, u64, usize)> = None;
    for w in counted.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (Some(old), Some(new)) = (a.value, b.value) else {
            continue;
        };
        if a.counter != b.counter {
            dropped = None;
            resets.push(Reset::SourceChanged {
                old: a.counter.clone().unwrap_or_default(),
                new: b.counter.clone().unwrap_or_default(),
                at: b.read_at,
            });
        } else if new >= old {
            match &mut dropped {
                // Back at or above the value before the drop: the low readings were
                // outliers. Count from the value before the drop instead, once.
                Some((floor, since, i)) if new >= *floor => {
                    pages = pages.saturating_sub(*since).saturating_add(new - *floor);
                    if let Reset::Backwards { new: low, at, .. } = resets[*i] {
                        resets[*i] = Reset::Outlier { value: low, at };
                    }
                    dropped = None;
                }
                Some((_, since, _)) => {
                    *since = since.saturating_add(new - old);
                    pages = pages.saturating_add(new - old);
                }
                None => pages = pages.saturating_add(new - old),
            }
        } else {
            let kind = ResetKind::classify(old, new);
            let across = kind.pages_across(old, new);
            pages = pages.saturating_add(across);
            resets.push(match kind {
                ResetKind::Wrap => Reset::Wrap {
                    old,
                    new,
                    at: b.read_at,
                    pages: across,
                },
                ResetKind::Backwards => {
                    dropped = match dropped {
                        Some((floor, since, i)) => Some((floor.max(old), since, i)),
                        None => Some((old, 0, resets.len())),
                    };
                    Reset::Backwards {
                        old,
                        new,
                        at: b.read_at,
                    }
                }
            });
        }
    }
    Some(PrinterUsage {
        pages,
        samples: inside.len(),
        from_value: counted.first().and_then(|s| s.value),
        to_value: counted.last().and_then(|s| s.value),
        resets,
        supplies: last.supplies,
        by_kind: pages_by_kind(&window),
    })
}

/// Pages per kind from the other counters of consecutive samples (oldest first):
/// each counter's steps up, summed per kind. A step down (a reset, a replaced board)
/// counts nothing, and a counter missing from either sample of a step is skipped:
/// the split is what the counters show, never an estimate. Usage — what a contract
/// is billed — stays the billing counter's, with its reset handling.
pub fn pages_by_kind(samples: &[&Sample]) -> BTreeMap<CounterKind, u64> {
    let mut out: BTreeMap<CounterKind, u64> = BTreeMap::new();
    for w in samples.windows(2) {
        for new in &w[1].others {
            let Some(kind) = new.kind else { continue };
            let Some(old) = w[0].others.iter().find(|o| o.name == new.name) else {
                continue;
            };
            if new.value >= old.value {
                let e = out.entry(kind).or_insert(0);
                *e = e.saturating_add(new.value - old.value);
            }
        }
    }
    out
}

pub fn contract_usage(period: &Period, printers: &BTreeMap<Id, Vec<Sample>>) -> ContractUsage {
    let per: BTreeMap<Id, Option<PrinterUsage>> = printers
        .iter()
        .map(|(id, s)| (id.clone(), pages_in(s, period)))
        .collect();
    let with = per.values().filter(|u| u.is_some()).count();
    let telemetry = match with {
        0 => TelemetryState::None,
        n if n == per.len() => TelemetryState::Complete,
        _ => TelemetryState::Partial,
    };
    let used = (with > 0).then(|| {
        per.values()
            .flatten()
            .map(|u| u.pages)
            .fold(0u64, u64::saturating_add)
    });
    let supplies = per
        .values()
        .flatten()
        .map(|u| u.supplies)
        .fold(SuppliesState::Unknown, worse);
    ContractUsage {
        period: period.label(),
        period_start: period.start,
        period_end: period.end,
        used,
        telemetry,
        supplies,
        printers: per,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::period;
    use chrono::TimeZone;
    use chrono::{DateTime, Utc};

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
    }

    fn s(read_at: DateTime<Utc>, value: u64) -> Sample {
        Sample {
            others: Vec::new(),
            read_at,
            message_id: format!("gw:p1:t{value}"),
            counter: Some("prtMarkerLifeCount.1".into()),
            value: Some(value),
            supplies: SuppliesState::Ok,
        }
    }

    fn march() -> Period {
        period::month(chrono_tz::UTC, 2026, 3)
    }

    /// The other counters of a reading travel with its sample, and the period's
    /// pages per kind are their steps up; a step down counts nothing, a counter
    /// missing from one sample of a step is skipped; billing usage is untouched.
    #[test]
    fn pages_per_kind_from_the_other_counters() {
        let t: Telemetry =
            platen_protocol::decode(include_bytes!("../../../protocol/golden/telemetry.json"))
                .unwrap();
        let sample = Sample::of(&t).unwrap();
        assert_eq!(sample.counter.as_deref(), Some("prtMarkerLifeCount.1"));
        assert_eq!(
            sample.others,
            [OtherCounter {
                name: "printBlack".into(),
                kind: Some(CounterKind::PrintBlack),
                value: 22876
            }]
        );
        let with = |at: DateTime<Utc>, total: u64, counters: &[(&str, CounterKind, u64)]| {
            let mut x = s(at, total);
            x.others = counters
                .iter()
                .map(|(n, k, v)| OtherCounter {
                    name: n.to_string(),
                    kind: Some(*k),
                    value: *v,
                })
                .collect();
            x
        };
        use CounterKind::{Black, Color};
        let samples = [
            // Before the period: the baseline.
            with(
                at(1, 0) - chrono::Duration::days(2),
                100,
                &[("b", Black, 60), ("c", Color, 40)],
            ),
            with(at(2, 0), 130, &[("b", Black, 80), ("c", Color, 50)]),
            // The colour counter went down (a replaced board): that step counts nothing.
            with(at(3, 0), 140, &[("b", Black, 85), ("c", Color, 5)]),
            // The black counter did not answer this time: no black step here…
            with(at(4, 0), 150, &[("c", Color, 10)]),
            // …nor from the sample without it.
            with(at(5, 0), 160, &[("b", Black, 95), ("c", Color, 15)]),
        ];
        let u = pages_in(&samples, &march()).unwrap();
        assert_eq!(u.pages, 60);
        assert_eq!(
            u.by_kind,
            BTreeMap::from([(Black, 20 + 5), (Color, 10 + 5 + 5)])
        );
    }

    #[test]
    fn usage_table() {
        let feb = Utc.with_ymd_and_hms(2026, 2, 27, 12, 0, 0).unwrap();
        let apr = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
        let top = (1u64 << 32) - 100;
        let mut other = s(at(10, 0), 7);
        other.counter = Some("konica.total".into());
        let cases: Vec<(&str, Vec<Sample>, Option<u64>, usize)> = vec![
            ("nothing", vec![], None, 0),
            ("only before the period", vec![s(feb, 100)], None, 0),
            ("only after", vec![s(apr, 100)], None, 0),
            (
                "one sample: the first of all",
                vec![s(at(2, 0), 100)],
                Some(0),
                0,
            ),
            (
                "baseline before the period",
                vec![s(feb, 100), s(at(2, 0), 150)],
                Some(50),
                0,
            ),
            (
                "samples after the period are not counted",
                vec![s(feb, 100), s(at(2, 0), 150), s(apr, 900)],
                Some(50),
                0,
            ),
            (
                "reset: 100 printed, back to 0, then 30",
                vec![
                    s(at(1, 1), 5000),
                    s(at(2, 0), 5100),
                    s(at(3, 0), 10),
                    s(at(4, 0), 40),
                ],
                Some(130),
                1,
            ),
            (
                "an outlier low reading, then back up: counted once, not doubled",
                vec![
                    s(at(1, 1), 1000),
                    s(at(2, 0), 1010),
                    s(at(3, 0), 5),
                    s(at(3, 1), 7),
                    s(at(4, 0), 1020),
                ],
                Some(20),
                1,
            ),
            (
                "two drops in a row, then back above the first",
                vec![
                    s(at(1, 1), 1000),
                    s(at(2, 0), 3),
                    s(at(3, 0), 1),
                    s(at(4, 0), 1001),
                ],
                Some(1),
                2,
            ),
            (
                "Counter32 wrap: 100 to the top, 50 after",
                vec![s(at(1, 1), top), s(at(2, 0), 50)],
                Some(150),
                1,
            ),
            (
                "counter source changed",
                vec![s(at(1, 1), 100), other.clone(), s(at(11, 0), 5)],
                Some(0),
                2,
            ),
        ];
        for (name, samples, want, resets) in cases {
            let got = pages_in(&samples, &march());
            assert_eq!(got.as_ref().map(|u| u.pages), want, "{name}");
            assert_eq!(got.map(|u| u.resets.len()).unwrap_or(0), resets, "{name}");
        }
    }

    #[test]
    fn contract_states() {
        let p1: Id = "p1".parse().unwrap();
        let p2: Id = "p2".parse().unwrap();
        let mut low = s(at(3, 0), 300);
        low.supplies = SuppliesState::Low;
        let mut m = BTreeMap::new();
        m.insert(p1.clone(), vec![]);
        m.insert(p2.clone(), vec![]);
        let u = contract_usage(&march(), &m);
        assert_eq!(
            (u.used, u.telemetry, u.supplies),
            (None, TelemetryState::None, SuppliesState::Unknown)
        );
        m.insert(p1.clone(), vec![s(at(1, 1), 100), low]);
        let u = contract_usage(&march(), &m);
        assert_eq!(
            (u.used, u.telemetry, u.supplies),
            (Some(200), TelemetryState::Partial, SuppliesState::Low)
        );
        m.insert(p2.clone(), vec![s(at(2, 0), 7), s(at(5, 0), 17)]);
        let u = contract_usage(&march(), &m);
        assert_eq!((u.used, u.telemetry), (Some(210), TelemetryState::Complete));
        assert_eq!(u.period, "2026-03");
    }

    #[test]
    fn worst_supply_ignores_what_it_cannot_judge() {
        use SupplyState::*;
        let cases: Vec<(Vec<SupplyState>, SuppliesState)> = vec![
            (vec![], SuppliesState::Unknown),
            (vec![Unknown], SuppliesState::Unknown),
            (vec![SomeRemaining, Unknown], SuppliesState::Ok),
            (vec![Ok, Low, Ok], SuppliesState::Low),
            (vec![Low, Empty], SuppliesState::Empty),
            (vec![Full, AlmostFull], SuppliesState::Unknown),
        ];
        for (states, want) in cases {
            assert_eq!(worst_supply(states.clone().into_iter()), want, "{states:?}");
        }
    }
}
