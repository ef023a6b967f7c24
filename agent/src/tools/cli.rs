//! The technician's commands: `diag`, `status`, `discover`.
//!
//! Exit status: 0 all good, 1 something is wrong (problems listed with hints),
//! 2 the command could not run (bad config, bad arguments).

use crate::config::AgentConfig;
use crate::observe::status::{process_alive, read_snapshot, Snapshot};
use crate::secret::Secret;
use crate::snmp::{AsyncSnmp, SharedTransport};
use crate::store::Store;
use crate::tools::diag::{
    broker_check, broker_problem, diagnose, outbox_problem, render_table, DiagOutput, DiagParams,
    OutboxCheck,
};
use platen_protocol::diag::LastReport;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(2)
}

/// Local state: from the running agent's status file, or from the database when no
/// agent runs (then the database is free to open).
struct Local {
    snapshot: Option<Snapshot>,
    running: bool,
    outbox: OutboxCheck,
    last_reports: BTreeMap<String, LastReport>,
    versions: BTreeMap<String, (u64, u64)>,
}

fn local_state(cfg: &AgentConfig) -> Local {
    let snapshot = read_snapshot(&cfg.state_dir).ok().flatten();
    let running = snapshot
        .as_ref()
        .is_some_and(|s| s.pid != 0 && s.pid != std::process::id() && process_alive(s.pid));
    let mut local = Local {
        snapshot,
        running,
        outbox: OutboxCheck::default(),
        last_reports: BTreeMap::new(),
        versions: BTreeMap::new(),
    };
    if running {
        let s = local.snapshot.as_ref().cloned().unwrap_or_default();
        local.outbox = OutboxCheck {
            source: "agent".into(),
            depth: s.outbox_depth,
            oldest_pending_at: s.oldest_pending_at,
            agent_running: true,
        };
        for (id, p) in &s.printers {
            if let Some(r) = &p.last_report {
                local.last_reports.insert(id.clone(), r.clone());
            }
            local
                .versions
                .insert(id.clone(), (p.desired_version, p.completed_version));
        }
        return local;
    }
    match Store::open(&cfg.state_dir) {
        Ok(store) => {
            local.outbox = OutboxCheck {
                source: "store".into(),
                depth: store.outbox_len(),
                oldest_pending_at: store.oldest_pending(),
                agent_running: false,
            };
            for p in &cfg.printers {
                if let Ok(Some(v)) = store.verified(&p.id) {
                    if let Some(r) = v.report {
                        local.last_reports.insert(p.id.to_string(), r);
                    }
                }
                let desired = store
                    .desired(&p.id)
                    .ok()
                    .flatten()
                    .map(|d| d.config.version)
                    .unwrap_or(0);
                let completed = store.completed(&p.id).unwrap_or(0);
                local
                    .versions
                    .insert(p.id.to_string(), (desired, completed));
            }
        }
        Err(e) => {
            local.outbox = OutboxCheck {
                source: format!("unavailable: {e}"),
                ..Default::default()
            };
        }
    }
    local
}

pub async fn diag(
    config: &Path,
    only: &[String],
    json: bool,
    write_test: bool,
    broker: bool,
) -> ExitCode {
    let cfg = match AgentConfig::load(config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let profiles = match crate::apply::profile::load_all(&cfg) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if let Some(unknown) = only
        .iter()
        .find(|id| !cfg.printers.iter().any(|p| p.id.as_str() == id.as_str()))
    {
        return fail(format!(
            "printer {unknown:?} is not in {}",
            config.display()
        ));
    }
    let chosen: Vec<_> = cfg
        .printers
        .iter()
        .filter(|p| only.is_empty() || only.iter().any(|o| o == p.id.as_str()))
        .collect();
    let local = local_state(&cfg);
    let transport = match SharedTransport::bind().await {
        Ok(t) => t,
        Err(e) => return fail(format!("SNMP socket: {e}")),
    };
    let bar = if !json && chosen.len() > 1 && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(chosen.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("checking printers {bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    // Printers are checked 16 at a time; each check is a handful of requests.
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut set = tokio::task::JoinSet::new();
    for (i, p) in chosen.iter().enumerate() {
        let profile = profiles[&p.profile].clone();
        let spec = crate::telemetry::spec(&cfg, &profile);
        let t = crate::snmp::Target::of(p);
        let id = p.id.clone();
        let last = local.last_reports.get(p.id.as_str()).cloned();
        let version = match p.snmp_version {
            crate::config::SnmpVersion::V1 => "v1",
            crate::config::SnmpVersion::V2c => "v2c",
            crate::config::SnmpVersion::V3 => "v3",
        };
        let (transport, sem, bar) = (transport.clone(), sem.clone(), bar.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.ok();
            bar.set_message(id.to_string());
            let target_s = format!("{}:{}", t.address, t.port);
            let d = match AsyncSnmp::connect(&t, &transport).await {
                Ok(snmp) => {
                    diagnose(
                        &snmp,
                        DiagParams {
                            printer: &id,
                            target: target_s,
                            snmp_version: version,
                            profile: &profile,
                            spec: &spec,
                            write_test,
                            last_report: last,
                            default_community: t.credentials.default_community(),
                        },
                    )
                    .await
                }
                Err(e) => platen_protocol::PrinterDiag {
                    last_report: last,
                    problems: vec![platen_protocol::diag::Problem {
                        check: "snmp".into(),
                        message: format!("{target_s}: {e}"),
                        hint: format!("check `address` and `port` for printer {id}"),
                    }],
                    ..platen_protocol::PrinterDiag::new(
                        id.clone(),
                        target_s.clone(),
                        version.into(),
                    )
                },
            };
            bar.inc(1);
            (i, d)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(x) = r {
            results.push(x);
        }
    }
    bar.finish_and_clear();
    results.sort_by_key(|(i, _)| *i);
    let broker = if broker {
        Some(broker_check(&cfg, Duration::from_secs(5)).await)
    } else {
        None
    };
    let now = chrono::Utc::now();
    let mut problems = Vec::new();
    if let Some(p) = broker.as_ref().and_then(broker_problem) {
        problems.push(p);
    }
    if let Some(p) = outbox_problem(&local.outbox, now) {
        problems.push(p);
    }
    let out = DiagOutput {
        agent_id: cfg.agent_id.to_string(),
        at: now,
        broker,
        outbox: local.outbox,
        printers: results.into_iter().map(|(_, d)| d).collect(),
        problems,
    };
    if json {
        match serde_json::to_string_pretty(&out) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(e),
        }
    } else {
        print!("{}", render_table(&out));
    }
    if out.problem_count() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub fn status(config: &Path, json: bool) -> ExitCode {
    let cfg = match AgentConfig::load(config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let local = local_state(&cfg);
    let snap = local.snapshot.clone().unwrap_or_default();
    if json {
        let v = serde_json::json!({
            "agent_id": cfg.agent_id.as_str(),
            "agent_running": local.running,
            "pid": if local.running { Some(snap.pid) } else { None },
            "status_written_at": snap.written_at,
            "broker_connected": local.running && snap.broker_connected,
            "outbox": local.outbox,
            "printers": cfg.printers.iter().map(|p| {
                let id = p.id.as_str();
                let s = snap.printers.get(id).cloned().unwrap_or_default();
                let (desired, completed) = local.versions.get(id).copied().unwrap_or_default();
                serde_json::json!({
                    "id": id,
                    "reachable": s.reachable,
                    "last_good_at": s.last_good_at,
                    "stale_since": s.stale_since,
                    "model": s.model,
                    "pages": s.pages,
                    "supply_warnings": s.supply_warnings,
                    "errors": s.errors,
                    "desired_version": desired,
                    "completed_version": completed,
                    "last_report": local.last_reports.get(id),
                })
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let now = chrono::Utc::now();
    let ago = |t: Option<chrono::DateTime<chrono::Utc>>| match t {
        Some(t) => format!("{} s ago", (now - t).num_seconds().max(0)),
        None => "never".into(),
    };
    if local.running {
        println!(
            "agent {}: running (pid {}), status written {}",
            cfg.agent_id,
            snap.pid,
            ago(snap.written_at)
        );
        println!(
            "broker: {}",
            if snap.broker_connected {
                "connected"
            } else {
                "NOT connected"
            }
        );
    } else {
        println!(
            "agent {}: not running{}",
            cfg.agent_id,
            snap.written_at
                .map(|t| format!(" (last status written {})", ago(Some(t))))
                .unwrap_or_default()
        );
    }
    println!(
        "outbox: {} pending{}",
        local.outbox.depth,
        local
            .outbox
            .oldest_pending_at
            .map(|t| format!(", oldest queued {}", ago(Some(t))))
            .unwrap_or_default()
    );
    println!();
    println!(
        "{:<16} {:<9} {:<14} {:>9} {:>15} {:>15}  LAST REPORT / WARNINGS",
        "PRINTER", "SNMP", "LAST READING", "PAGES", "DESIRED", "COMPLETED"
    );
    for p in &cfg.printers {
        let id = p.id.as_str();
        let s = snap.printers.get(id).cloned().unwrap_or_default();
        let (desired, completed) = local.versions.get(id).copied().unwrap_or_default();
        let snmp = match s.reachable {
            Some(true) => "ok",
            Some(false) => "STALE",
            None => "-",
        };
        let mut notes = Vec::new();
        if let Some(r) = local.last_reports.get(id) {
            notes.push(format!("v{} {}", r.config_version, r.status));
        }
        notes.extend(s.supply_warnings.iter().cloned());
        notes.extend(s.errors.iter().cloned());
        println!(
            "{:<16} {:<9} {:<14} {:>9} {:>15} {:>15}  {}",
            id,
            snmp,
            ago(s.last_good_at),
            s.pages.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            desired,
            completed,
            notes.join("; ")
        );
    }
    ExitCode::SUCCESS
}

#[derive(clap::Args)]
pub struct DiscoverArgs {
    range: String,
    #[arg(long, default_value_t = 161)]
    port: u16,
    /// A read community is enough. Never printed.
    #[arg(long, default_value = "public")]
    community: String,
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    #[arg(long, default_value_t = 1)]
    retries: u32,
    /// Hosts probed at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Print `[[printer]]` entries to paste into the agent config.
    #[arg(long)]
    toml: bool,
    #[arg(long)]
    json: bool,
}

pub async fn discover(a: DiscoverArgs) -> ExitCode {
    let DiscoverArgs {
        range,
        port,
        community,
        timeout_ms,
        retries,
        concurrency,
        toml,
        json,
    } = a;
    let range = range.as_str();
    let addresses = match crate::tools::discover::parse_range(range) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let bar = if !json && !toml && std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(addresses.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let b = bar.clone();
    let found = match crate::tools::discover::sweep(
        addresses.clone(),
        port,
        Secret::new(community),
        Duration::from_millis(timeout_ms.clamp(10, 60_000)),
        retries.min(5),
        concurrency,
        move || b.inc(1),
    )
    .await
    {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&found).unwrap_or_default()
        );
    } else if toml {
        for f in &found {
            println!("{}", f.as_toml());
        }
    } else {
        println!(
            "{} printer{} in {} address{}",
            found.len(),
            if found.len() == 1 { "" } else { "s" },
            addresses.len(),
            if addresses.len() == 1 { "" } else { "es" }
        );
        if found.is_empty() {
            // SNMPv1/v2c agents stay silent to a wrong community: say what to try.
            println!(
                "hint: nothing answered on UDP port {port}. A printer stays silent to a wrong community \
                 (--community, default public); check the range and the port, and that SNMP is on in the \
                 printer's web page."
            );
        }
        for f in &found {
            println!(
                "{:<21} {:<36} {}",
                format!("{}:{}", f.address, f.port),
                f.model.as_deref().unwrap_or("-"),
                f.serial.as_deref().unwrap_or("-")
            );
            println!("{:<21} profile {}: {}", "", f.profile, f.profile_reason);
        }
    }
    ExitCode::SUCCESS
}
