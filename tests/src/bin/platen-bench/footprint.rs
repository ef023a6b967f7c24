//! Section 5: Footprint: what the agent costs a gateway.
//!
//! - **RSS**: the release `platen-agent` process with 10 and with N simulated
//!   printers (10 % unreachable at N), Mosquitto connected, telemetry every 5 s (1 s with `--quick`),
//!   sampled from /proc for the whole run: *peak* is the kernel's VmHWM, *idle* the
//!   lowest VmRSS seen after the third sweep (between sweeps).
//! - **Binary sizes**: the release binaries stripped (`strip`), as the packages ship them.
//! - **sled state**: the agent's store after N reports went through it the way the
//!   reconciler and pump do it (desired stored, report completed into the outbox,
//!   PUBACK removes it); the cloud's store after N reports is in the ingest section.

use crate::ingest::dir_size;
use crate::table::{Bound, Results};
use platen_agent::store::{OutboxEntry, Store, Verified};
use platen_e2e::*;
use platen_protocol::{DesiredConfig, SettingValue};
use std::path::Path;
use std::time::{Duration, Instant};

const SECTION: &str = "footprint";
const MB: f64 = 1e6;

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (idle RSS, peak RSS) in bytes of an agent polling `n` printers for `secs`.
fn agent_rss(n: usize, secs: u64) -> (f64, f64) {
    let broker = Mosquitto::start(false);
    let sim = crate::fleet::simulate(n, n >= 100);
    let dir = tempfile::tempdir().expect("tmp");
    let entries: Vec<PrinterEntry> = sim
        .printers
        .iter()
        .map(|(id, addr)| PrinterEntry {
            timeout_ms: 1000,
            retries: 2,
            ..PrinterEntry::new(id, *addr)
        })
        .collect();
    // At least three sweeps before the idle samples: every 5 s in a 30 s run.
    let interval = (secs / 6).max(1);
    let cfg = agent_toml("gw-bench", broker.port, &dir.path().join("state"), &entries)
        + &format!("\n[telemetry]\ninterval_secs = {interval}\n");
    let agent = AgentProc::start_with(dir.path(), &cfg, &[("RUST_LOG", "info")], &[]);
    let pid = agent.pid().expect("agent running");
    let start = Instant::now();
    let mut idle = u64::MAX;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(100));
        let sweeps = agent.log().matches("telemetry sweep").count();
        if sweeps >= 3 {
            if let Some(rss) = status_kib(pid, "VmRSS:") {
                idle = idle.min(rss);
            }
        }
    }
    let peak = status_kib(pid, "VmHWM:").expect("agent alive");
    assert!(
        idle != u64::MAX,
        "fewer than 3 sweeps in {secs} s:\n{}",
        agent.log()
    );
    (idle as f64 * 1024.0, peak as f64 * 1024.0)
}

fn stripped_size(bin: &Path) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let copy = dir.path().join("bin");
    std::fs::copy(bin, &copy).expect("copy binary");
    let ok = std::process::Command::new(system_bin("strip", "binutils"))
        .arg(&copy)
        .status()
        .expect("strip")
        .success();
    assert!(ok, "strip {}", bin.display());
    std::fs::metadata(&copy).expect("stripped").len() as f64
}

/// The agent's sled directory after `n` reports, 100 printers.
async fn agent_store(n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("store");
    let tenant = tenant();
    let printers = 100usize;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..printers {
        let (store, tenant) = (store.clone(), tenant.clone());
        let per = n / printers + usize::from(p < n % printers);
        tasks.spawn(async move {
            let id: platen_protocol::Id = format!("p{p}").parse().expect("id");
            for v in 1..=per as u64 {
                let settings = (0..10)
                    .map(|i| {
                        (
                            format!("setting{i}"),
                            SettingValue::Text(format!("v{v}/{i}")),
                        )
                    })
                    .collect();
                let config = DesiredConfig {
                    printer_id: id.clone(),
                    version: v,
                    issued_at: chrono::Utc::now(),
                    settings,
                    signature: None,
                };
                store
                    .offer_desired(&tenant, config, chrono::Utc::now())
                    .await
                    .expect("offer");
                let entry = OutboxEntry::new("t".into(), "r".repeat(2000));
                let key = store
                    .complete(&id, v, &entry, &Verified::default())
                    .await
                    .expect("complete");
                store.remove_outbox(key).expect("remove");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer");
    }
    store.flush().await.expect("flush");
    assert_eq!(store.outbox_len(), 0);
    drop(store);
    dir_size(dir.path()) as f64
}

pub async fn run(r: &mut Results, sizes: &crate::Sizes) {
    let many = sizes.footprint_printers;
    eprintln!("footprint: agent RSS with 10 and {many} printers …");
    let (idle10, peak10) = agent_rss(10, sizes.footprint_secs);
    let (idle_n, peak_n) = agent_rss(many, sizes.footprint_secs);
    r.figure(SECTION, "agent idle RSS, 10 printers", idle10 / MB, "MB");
    r.figure(SECTION, "agent peak RSS, 10 printers", peak10 / MB, "MB");
    r.figure(
        SECTION,
        format!("agent idle RSS, {many} printers"),
        idle_n / MB,
        "MB",
    );
    r.figure(
        SECTION,
        format!("agent peak RSS, {many} printers"),
        peak_n / MB,
        "MB",
    );
    r.goal(
        SECTION,
        "idle RSS with 10 printers ≤ 15 MB",
        "idle RSS / 15 MB",
        idle10 / (15.0 * MB),
        Bound::AtMost,
        1.0,
    );
    r.goal(
        SECTION,
        format!("idle RSS with {many} printers ≤ 60 MB"),
        "idle RSS / 60 MB",
        idle_n / (60.0 * MB),
        Bound::AtMost,
        1.0,
    );
    eprintln!("footprint: binary sizes …");
    let agent = stripped_size(&workspace_bin("platen-agent"));
    let cloud = stripped_size(&workspace_bin("platen-cloud"));
    r.figure(SECTION, "platen-agent binary, stripped", agent / MB, "MB");
    r.figure(SECTION, "platen-cloud binary, stripped", cloud / MB, "MB");
    r.goal(
        SECTION,
        "stripped agent binary ≤ 12 MB",
        "size / 12 MB",
        agent / (12.0 * MB),
        Bound::AtMost,
        1.0,
    );
    eprintln!(
        "footprint: agent store after {} reports …",
        sizes.stored_reports
    );
    let store = agent_store(sizes.stored_reports).await;
    r.figure(
        SECTION,
        format!(
            "agent sled state after {} reports (100 printers)",
            sizes.stored_reports
        ),
        store / MB,
        "MB",
    );
}
