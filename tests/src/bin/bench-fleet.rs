//! Benchmark: one agent polls a fleet of simulated printers.
//!
//! `platen-printer-sim` runs N printers in its own process (one UDP port each; 10 %
//! of them never answer). In this process, the agent's own fleet poller
//! (`platen_agent::fleet::Fleet`: shared UDP socket, bounded concurrency, ≤ 2
//! requests in flight per printer, the printers' default timeout 1 s and 2 retries)
//! sweeps them, queueing telemetry into a real sled outbox. Printed: sweep time,
//! requests per second (from the socket's own counters), messages queued, and this
//! process's peak RSS (VmHWM), which is the agent side only. Beside it, in the same
//! run and over the same socket: the raw async-snmp rate, single-OID GETs to the
//! answering printers with 256 in flight.
//!
//! Run: `cargo build --release --workspace --bins && target/release/bench-fleet [PRINTERS]`

use platen_agent::fleet::{Fleet, FleetPrinter};
use platen_agent::printer_mib::TelemetrySpec;
use platen_agent::secret::Secret;
use platen_agent::snmp::{AsyncSnmp, ObjectId, SharedTransport, Snmp, Target};
use platen_agent::status::Board;
use platen_agent::store::Store;
use platen_agent::telemetry::{Thresholds, Tracker};
use platen_e2e::Sim;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// One sweep, with the requests counted on the socket.
async fn measure(
    fleet: &mut Fleet<AsyncSnmp>,
    transport: &SharedTransport,
    label: &str,
    note: &str,
) {
    let (ok0, exp0) = transport.stats();
    let s = fleet.sweep().await;
    let (ok1, exp1) = transport.stats();
    let reqs = (ok1 - ok0) + (exp1 - exp0);
    println!(
        "{label:>5}  {:>6.2}  {reqs:>8}  {:>9.0}  {:>8}  {:>10}  {:>15}{note}",
        s.elapsed.as_secs_f64(),
        reqs as f64 / s.elapsed.as_secs_f64(),
        s.answered,
        s.unanswered,
        s.messages
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let dead = n / 10;
    let specs: Vec<String> = (0..n)
        .map(|i| {
            if i % 10 == 9 {
                format!("p{i},drop-first=4000000000")
            } else {
                format!("p{i}")
            }
        })
        .collect();
    let refs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let started = Instant::now();
    let sim = Sim::start(&refs);
    println!(
        "{n} simulated printers ({dead} never answer) started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let transport = SharedTransport::bind().await.expect("socket");
    let mut printers = Vec::new();
    let mut live = Vec::new();
    for (i, (id, addr)) in sim.printers.iter().enumerate() {
        let target = Target {
            address: addr.ip().to_string(),
            port: addr.port(),
            v1: false,
            community: Secret::new("private"),
            timeout: Duration::from_millis(1000),
            retries: 2,
        };
        let snmp = AsyncSnmp::connect(&target, &transport)
            .await
            .expect("client");
        if i % 10 != 9 {
            live.push(snmp.clone());
        }
        let pid = id.parse().expect("id");
        printers.push(FleetPrinter {
            id: pid,
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
    let rss_before = vm_hwm_kib();
    let mut fleet = Fleet {
        printers,
        concurrency: 128,
        thresholds: Thresholds::default(),
        drift_interval: None,
        store: (std::env::var_os("BENCH_NO_STORE").is_none()).then(|| store.clone()),
        board: Board::new("bench", std::process::id()),
        telemetry: true,
    };
    println!(
        "agent side before polling: peak RSS {} MiB",
        rss_before / 1024
    );
    println!();
    println!("sweep  time_s  requests  req_per_s  answered  unanswered  messages_queued");
    for sweep in 1..=3 {
        measure(&mut fleet, &transport, &sweep.to_string(), "").await;
    }
    // The same poller over the answering printers only: throughput without timeouts.
    fleet.printers.retain(|p| !p.tracker.is_stale());
    for sweep in 1..=2 {
        let label = format!("L{sweep}");
        measure(
            &mut fleet,
            &transport,
            &label,
            "   (answering printers only)",
        )
        .await;
    }
    println!();
    println!(
        "agent side peak RSS (VmHWM) after all sweeps: {} MiB; outbox holds {} messages",
        vm_hwm_kib() / 1024,
        store.outbox_len()
    );

    // The raw client rate over the same socket: one-OID GETs, 256 in flight.
    let oid: ObjectId = "1.3.6.1.2.1.1.3.0".parse().expect("oid");
    let total = 20_000usize;
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut set = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for i in 0..total {
        let snmp = live[i % live.len()].clone();
        let (sem, oid) = (sem.clone(), oid.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await.ok();
            snmp.get(std::slice::from_ref(&oid)).await.is_ok()
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        ok += usize::from(r.unwrap_or(false));
    }
    let el = t0.elapsed().as_secs_f64();
    println!(
        "raw async-snmp GET (1 OID, 256 in flight, same socket): {total} requests in {el:.2} s = {:.0} req/s ({ok} answered)",
        total as f64 / el
    );
}
