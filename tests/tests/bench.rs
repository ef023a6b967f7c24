//! `platen-bench --quick`: every section runs against real processes and writes
//! its figures and goals as JSON (a smoke run; the figures themselves come from the
//! release build through `scripts/bench`).

use std::process::Command;

#[test]
fn the_benchmark_command_runs_every_section_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_platen-bench"))
        .args(["--quick", "--json"])
        .arg(&json)
        .output()
        .expect("run platen-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).unwrap();
    let figures = v["figures"].as_array().expect("figures");
    for section in [
        "apply",
        "fleet",
        "ingest",
        "decisions",
        "footprint",
        "history",
        "traps",
    ] {
        let n = figures.iter().filter(|f| f["section"] == section).count();
        assert!(n >= 3, "section {section} has {n} figures:\n{stdout}");
    }
    for f in figures {
        let x = f["value"].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x > 0.0, "figure {f}");
    }
    let goals = v["goals"].as_array().expect("goals");
    // apply p50 and p99, fleet rate and timeout, ingest on sled and on PostgreSQL,
    // footprint RSS × 2 and binary; history: three p95 ratios, idle CPU, the burst;
    // traps: trap → telemetry.
    assert_eq!(goals.len(), 15, "{stdout}");
    for g in goals {
        let ratio = g["ratio"].as_f64().unwrap_or(f64::NAN);
        assert!(ratio.is_finite(), "goal {g}");
        assert!(g["met"].is_boolean());
        // The printed table carries the same goal.
        let name = g["name"].as_str().unwrap();
        assert!(stdout.contains(name), "{name} not in the table:\n{stdout}");
    }
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
}
