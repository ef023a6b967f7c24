//! `platen-bench`: every performance figure of the guide (docs/src/performance.md), side by side in one run.
//!
//! Each section measures Platen beside the limit it is judged against, in the same
//! run on the same machine, and states the goal as a ratio of the two (absolute
//! times drift on shared machines; ratios measured together do not drift as much):
//!
//! 1. [`apply`]: apply latency vs the floor of the same stack and vs net-snmp tools.
//! 2. [`fleet`]: a telemetry sweep of 1,000 simulated printers vs the raw
//!    async-snmp request rate.
//! 3. [`ingest`]: reports/s into `platen-cloud` vs Mosquitto's own pub → sub ceiling.
//! 4. [`decisions`]: compensation and migration-rule decisions per second per core.
//! 5. [`footprint`]: agent RSS with 10 and 1,000 printers, stripped binary sizes,
//!    sled state after 100k reports.
//!
//! Prints a Markdown table (the guide's) and writes the same figures as JSON.
//! Run it through `scripts/bench`, which builds the release binaries first.

mod apply;
mod decisions;
mod fleet;
mod footprint;
mod history;
mod ingest;
mod mqtt;
mod table;
mod traps;

use clap::Parser;
use std::path::PathBuf;
use table::Results;

#[derive(Parser)]
#[command(about = "Platen's benchmarks, side by side, as ratios against their limits")]
struct Args {
    /// Small sizes (a smoke run of every section, seconds instead of minutes).
    #[arg(long)]
    quick: bool,
    /// Run only these sections (apply, fleet, ingest, decisions, footprint, history, traps).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Write the figures as JSON here.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
}

/// Sizes of one run.
pub struct Sizes {
    pub apply_runs: u64,
    pub printers: usize,
    pub reports: usize,
    pub decisions: usize,
    pub footprint_printers: usize,
    pub footprint_secs: u64,
    pub stored_reports: usize,
    /// Contracts of the history section: the small and the large state, and the burst.
    pub history: (usize, usize, usize),
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            apply_runs: 500,
            printers: 1000,
            reports: 100_000,
            decisions: 1_000_000,
            footprint_printers: 1000,
            footprint_secs: 30,
            stored_reports: 100_000,
            history: (1_000, 50_000, 10_000),
        }
    }
    fn quick() -> Sizes {
        Sizes {
            apply_runs: 20,
            printers: 50,
            reports: 2_000,
            decisions: 10_000,
            footprint_printers: 50,
            footprint_secs: 6,
            stored_reports: 2_000,
            history: (100, 1_000, 500),
        }
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "at": chrono::Utc::now().to_rfc3339(),
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let mut r = Results::default();
    if want("apply") {
        apply::run(&mut r, sizes.apply_runs).await;
    }
    if want("fleet") {
        fleet::run(&mut r, sizes.printers).await;
    }
    if want("ingest") {
        ingest::run(&mut r, sizes.reports).await;
    }
    if want("decisions") {
        decisions::run(&mut r, sizes.decisions);
    }
    if want("footprint") {
        footprint::run(&mut r, &sizes).await;
    }
    if want("history") {
        let (small, large, burst) = sizes.history;
        let idle = std::time::Duration::from_secs(if args.quick { 2 } else { 10 });
        history::run(&mut r, small, large, burst, idle).await;
    }
    if want("traps") {
        traps::run(&mut r, if args.quick { 5 } else { 50 }).await;
    }
    println!("{}", r.render());
    let json = r.to_json(machine());
    if let Some(dir) = args.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    ) {
        Ok(()) => eprintln!("figures written to {}", args.json.display()),
        Err(e) => {
            eprintln!("could not write {}: {e}", args.json.display());
            std::process::exit(1);
        }
    }
    let missed = r.goals.iter().filter(|g| !g.met()).count();
    if missed > 0 {
        eprintln!("{missed} goal(s) not met");
    }
}
