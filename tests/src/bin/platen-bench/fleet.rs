//! Section 2: Fleet sweep: one agent polls N simulated printers, 10 % of them unreachable.
//!
//! `platen-printer-sim` runs the printers in its own process (one UDP port each).
//! In this process, the agent's own fleet poller (`Fleet`: one shared UDP socket,
//! 128 printers at a time, ≤ 2 requests in flight per printer, timeout 1 s with 2
//! retries) sweeps them and queues telemetry into a real sled outbox. Beside it, over
//! the same socket in the same run: the raw async-snmp rate, single-OID GETs to the
//! answering printers with 256 in flight.

use crate::table::{Bound, Results};
use platen_agent::observe::status::Board;
use platen_agent::secret::Secret;
use platen_agent::snmp::printer_mib::TelemetrySpec;
use platen_agent::snmp::{AsyncSnmp, ObjectId, SharedTransport, Snmp, Target};
use platen_agent::store::Store;
use platen_agent::telemetry::fleet::{Fleet, FleetPrinter, SweepStats};
use platen_agent::telemetry::{Thresholds, Tracker};
use platen_e2e::Sim;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECTION: &str = "fleet";
const TIMEOUT: Duration = Duration::from_secs(1);

/// One sweep and the requests it sent (from the socket's own counters).
async fn sweep(fleet: &mut Fleet<AsyncSnmp>, transport: &SharedTransport) -> (SweepStats, u64) {
    let (ok0, exp0) = transport.stats();
    let s = fleet.sweep().await;
    let (ok1, exp1) = transport.stats();
    (s, (ok1 - ok0) + (exp1 - exp0))
}

/// Single-OID GETs over `clients` from 256 loops (256 in flight): requests per second.
async fn raw_rate(clients: &[AsyncSnmp], total: usize) -> f64 {
    const IN_FLIGHT: usize = 256;
    let oid: ObjectId = "1.3.6.1.2.1.1.3.0".parse().expect("oid");
    let mut set = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for w in 0..IN_FLIGHT {
        let mine: Vec<AsyncSnmp> = (w..total)
            .step_by(IN_FLIGHT)
            .map(|i| clients[i % clients.len()].clone())
            .collect();
        let oid = oid.clone();
        set.spawn(async move {
            let mut ok = 0usize;
            for snmp in mine {
                ok += usize::from(snmp.get(std::slice::from_ref(&oid)).await.is_ok());
            }
            ok
        });
    }
    let mut ok = 0usize;
    while let Some(r) = set.join_next().await {
        ok += r.unwrap_or(0);
    }
    let rate = total as f64 / t0.elapsed().as_secs_f64();
    assert!(
        ok * 100 >= total * 99,
        "raw GETs: only {ok} of {total} answered"
    );
    rate
}

/// `n` simulated printers `p0…`; with `dead`, every tenth never answers.
pub fn simulate(n: usize, dead: bool) -> Sim {
    let specs: Vec<String> = (0..n)
        .map(|i| {
            if dead && i % 10 == 9 {
                format!("p{i},drop-first=4000000000")
            } else {
                format!("p{i}")
            }
        })
        .collect();
    let refs: Vec<&str> = specs.iter().map(String::as_str).collect();
    Sim::start(&refs)
}

pub async fn run(r: &mut Results, n: usize) {
    eprintln!("fleet: {n} printers …");
    let sim = simulate(n, true);
    let transport = SharedTransport::bind().await.expect("socket");
    let mut printers = Vec::new();
    let mut live = Vec::new();
    for (i, (id, addr)) in sim.printers.iter().enumerate() {
        let target = Target {
            address: addr.ip().to_string(),
            port: addr.port(),
            credentials: platen_agent::snmp::Credentials::V2c(Secret::new("private")),
            timeout: TIMEOUT,
            retries: 2,
        };
        let snmp = AsyncSnmp::connect(&target, &transport)
            .await
            .expect("client");
        if i % 10 != 9 {
            live.push(snmp.clone());
        }
        printers.push(FleetPrinter {
            id: id.parse().expect("id"),
            tenant: "acme".parse().expect("tenant"),
            snmp,
            spec: Arc::new(TelemetrySpec::default()),
            device: None,
            tracker: Tracker::new("bench".parse().expect("id"), id.parse().expect("id"), 0),
            drift: None,
            next_drift: None,
        });
    }
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("store");
    let mut fleet = Fleet {
        printers,
        concurrency: 128,
        thresholds: Thresholds::default(),
        drift_interval: None,
        store: Some(store.clone()),
        board: Board::new("bench", std::process::id()),
        telemetry: true,
    };
    let (first, first_reqs) = sweep(&mut fleet, &transport).await;
    assert_eq!(first.answered, live.len(), "every live printer answers");
    let (steady, steady_reqs) = sweep(&mut fleet, &transport).await;
    // The same poller over the answering printers only.
    let mut all = std::mem::take(&mut fleet.printers);
    let (dead, alive): (Vec<_>, Vec<_>) = all.drain(..).partition(|p| p.tracker.is_stale());
    fleet.printers = alive;
    // Best of three, like the sweeps: one datagram lost on loopback stalls its loop
    // for a whole timeout, which says nothing about the client's rate.
    let mut raw = 0f64;
    for _ in 0..3 {
        raw = raw.max(raw_rate(&live, 20 * live.len().max(1000)).await);
    }
    let mut best: Option<(SweepStats, u64)> = None;
    for _ in 0..3 {
        let s = sweep(&mut fleet, &transport).await;
        if best.as_ref().is_none_or(|b| s.0.elapsed < b.0.elapsed) {
            best = Some(s);
        }
    }
    let (live_sweep, live_reqs) = best.expect("three sweeps");
    fleet.printers.extend(dead);
    let secs = |s: &SweepStats| s.elapsed.as_secs_f64();
    let live_rate = live_reqs as f64 / secs(&live_sweep);
    r.figure(
        SECTION,
        format!(
            "first sweep, {n} printers ({} unreachable, 3 attempts each)",
            n / 10
        ),
        secs(&first),
        "s",
    );
    r.figure(
        SECTION,
        "  requests in the first sweep",
        first_reqs as f64,
        "",
    );
    r.figure(
        SECTION,
        format!("steady sweep, {n} printers (unreachable ones known to be down)"),
        secs(&steady),
        "s",
    );
    r.figure(
        SECTION,
        "  requests in the steady sweep",
        steady_reqs as f64,
        "",
    );
    r.figure(
        SECTION,
        format!("sweep of the {} answering printers (best of 3)", live.len()),
        secs(&live_sweep),
        "s",
    );
    r.figure(SECTION, "  request rate of that sweep", live_rate, "req/s");
    r.figure(
        SECTION,
        "raw async-snmp GET rate, same socket, 256 in flight (best of 3)",
        raw,
        "req/s",
    );
    r.figure(
        SECTION,
        "telemetry messages queued in the first sweep (sled outbox)",
        first.messages as f64,
        "",
    );
    r.goal(
        SECTION,
        "sweep request rate at least half the raw rate",
        "sweep req/s / raw req/s",
        live_rate / raw,
        Bound::AtLeast,
        0.5,
    );
    r.goal(
        SECTION,
        "unreachable printers add at most one timeout (1 s)",
        "(steady sweep − answering-only sweep) / timeout",
        (secs(&steady) - secs(&live_sweep)) / TIMEOUT.as_secs_f64(),
        Bound::AtMost,
        1.0,
    );
}
