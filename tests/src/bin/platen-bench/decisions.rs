//! Section 4: Decision throughput: the cloud's pure decision functions over synthetic
//! contract sets, one thread (so the figure is per core).
//!
//! - **Compensation**: `compensation::decide` over N changes: service kinds (flat
//!   rate, consumables, basic), five time zones (DST ones included), effective times
//!   across a year, setups that completed minutes to 40 days late or not yet, with
//!   and without a fault.
//! - **Migration rules**: `Catalog::decide` of the packaged example catalog over N
//!   requests: every plan pair, usage from none to twice the largest cap, every
//!   telemetry and supply state, 0–30 days left.
//! - **Catalog check**: parsing and exhaustively validating the example catalog.
//!
//! Inputs are generated before the clock starts; a checksum of the outcomes keeps
//! the optimiser from dropping the work.

use crate::table::Results;
use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use platen_cloud::billing::compensation::{decide, Decision, Input};
use platen_cloud::model::{Plan, ServiceKind};
use platen_cloud::model::{SuppliesState, TelemetryState, Usage};
use platen_cloud::plans::catalog::Catalog;
use std::hint::black_box;
use std::time::Instant;

const SECTION: &str = "decisions";

/// xorshift64*: reproducible inputs without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn compensation(r: &mut Results, n: usize) {
    let services = [
        ServiceKind::FlatRatePrint {
            monthly_fee: 4900,
            page_cap: 1000,
        },
        ServiceKind::ConsumablesDelivery {
            monthly_fee: 1900,
            item: "toner".into(),
            shipment_unit_secs: 7 * 86_400,
        },
        ServiceKind::Basic { monthly_fee: 990 },
    ];
    let zones: [Tz; 5] = [
        chrono_tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::America::New_York,
        chrono_tz::Asia::Tokyo,
        chrono_tz::America::Santiago,
    ];
    let base: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let inputs: Vec<Input> = (0..n)
        .map(|_| {
            let t0 = base + Duration::seconds(rng.below(365 * 86_400) as i64);
            let late = Duration::seconds(rng.below(40 * 86_400) as i64 - 3_600);
            let t1 = (rng.below(5) != 0).then_some(t0 + late);
            Input {
                service: &services[rng.below(3) as usize],
                tz: zones[rng.below(5) as usize],
                t0,
                t1,
                fault: rng.below(4) != 0,
                now: t1.unwrap_or(t0) + Duration::seconds(rng.below(60 * 86_400) as i64),
            }
        })
        .collect();
    let t = Instant::now();
    let mut owed = 0usize;
    for i in &inputs {
        if let Decision::Final { parts } | Decision::Interim { parts } = black_box(decide(i)) {
            owed += parts.len();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    assert!(owed > 0, "some changes are owed compensation");
    r.figure(
        SECTION,
        format!("compensation decisions ({n} synthetic changes, one core)"),
        n as f64 / secs,
        "per s",
    );
}

fn migrations(r: &mut Results, n: usize) {
    let text = include_str!("../../../../packaging/catalog.example.toml");
    let t = Instant::now();
    let reps = 20;
    for _ in 0..reps {
        black_box(Catalog::parse(black_box(text)).expect("example catalog"));
    }
    let check_ms = t.elapsed().as_secs_f64() * 1000.0 / reps as f64;
    let catalog = Catalog::parse(text).expect("example catalog");
    let plans: Vec<&Plan> = catalog.plans.values().collect();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let telemetry = [
        TelemetryState::None,
        TelemetryState::Partial,
        TelemetryState::Complete,
    ];
    let supplies = [
        SuppliesState::Ok,
        SuppliesState::Low,
        SuppliesState::Empty,
        SuppliesState::Unknown,
    ];
    let requests: Vec<(&Plan, &Plan, Usage)> = (0..n)
        .map(|_| {
            let t = telemetry[rng.below(3) as usize];
            (
                plans[rng.below(plans.len() as u64) as usize],
                plans[rng.below(plans.len() as u64) as usize],
                Usage {
                    used: (t != TelemetryState::None).then(|| rng.below(4001)),
                    telemetry: t,
                    days_left: rng.below(31) as u32,
                    supplies: supplies[rng.below(4) as usize],
                },
            )
        })
        .collect();
    let t = Instant::now();
    let mut refused = 0usize;
    for (from, to, usage) in &requests {
        let v = black_box(catalog.decide(from, to, usage)).expect("a catch-all decides");
        refused += usize::from(matches!(
            v.decision,
            platen_cloud::model::Decision::Refuse { .. }
        ));
    }
    let secs = t.elapsed().as_secs_f64();
    assert!(refused > 0 && refused < n, "both outcomes occur");
    r.figure(
        SECTION,
        format!(
            "migration-rule decisions ({n} requests, {} plans, {} rules, one core)",
            plans.len(),
            catalog.rules.len()
        ),
        n as f64 / secs,
        "per s",
    );
    r.figure(
        SECTION,
        "catalog parse + exhaustive validation (example catalog)",
        check_ms,
        "ms",
    );
}

pub fn run(r: &mut Results, n: usize) {
    eprintln!("decisions: {n} each …");
    compensation(r, n);
    migrations(r, n);
}
