//! Telemetry, drift and remote diagnostics end to end: simulator process → agent
//! process → Mosquitto → a test subscriber.

use platen_e2e::*;
use platen_protocol::telemetry::{Event, ResetKind, SupplyState, Trigger};
use platen_protocol::{codec, Code, DiagRequest, DiagResponse, DriftReport, Telemetry, Topic};
use std::time::Duration;

const FAST: &str =
    "\n[telemetry]\ninterval_secs = 1\nheartbeat_secs = 60\n\n[drift]\ninterval_secs = 1\n";
const PAGE_COUNTER: &str = "1.3.6.1.2.1.43.10.2.1.4.1.1";

struct World {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    sim: Sim,
}

fn world(specs: &[&str]) -> World {
    World {
        dir: tempfile::tempdir().unwrap(),
        broker: Mosquitto::start(true),
        sim: Sim::start(specs),
    }
}

fn events<'a>(msgs: &'a [Telemetry], printer: &str) -> Vec<&'a Event> {
    msgs.iter()
        .filter(|m| m.printer_id.as_str() == printer)
        .flat_map(|m| m.events.iter())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_counter_reset_reboot_stale_and_supply_events() {
    let mut w = world(&["p1"]);
    let tap = Tap::start(
        w.broker.port,
        "telemetry-tap",
        &["platen/v1/acme/+/telemetry"],
    )
    .await;
    let cfg = agent_toml(
        "gw-t",
        w.broker.port,
        &w.dir.path().join("state"),
        &[PrinterEntry::new("p1", w.sim.addr("p1"))],
    ) + FAST;
    let agent = AgentProc::start(w.dir.path(), &cfg);
    let log = || agent.log();

    // The first reading, as the simulator holds it.
    let first: Telemetry = tap
        .wait_for(
            Duration::from_secs(15),
            "first telemetry",
            log,
            |m: &[Telemetry]| {
                m.iter()
                    .find(|t| t.reasons.contains(&Trigger::Startup))
                    .cloned()
            },
        )
        .await;
    assert_eq!(first.message_id, "gw-t:p1:t1");
    let r = first.reading.as_ref().unwrap();
    assert_eq!(r.identity.model.as_deref(), Some("Platen SimPrinter 1000"));
    assert_eq!(r.identity.serial.as_deref(), Some("SIM-p1"));
    assert_eq!(r.billing_value(), Some(1000));
    assert_eq!(r.counters[0].unit.as_deref(), Some("impressions"));
    assert_eq!(r.supplies[0].percent_remaining, Some(80));
    assert_eq!(r.status.printer.as_deref(), Some("idle"));
    assert_eq!(r.alerts[0].code.as_deref(), Some("markerTonerAlmostEmpty"));
    assert!(r.uptime_cs.is_some());
    // The input trays (protocol 1.1): a paper tray and an empty manual feed.
    let trays: Vec<_> = r
        .trays
        .iter()
        .map(|t| (t.name.as_str(), t.percent, t.state, t.manual))
        .collect();
    assert_eq!(
        trays,
        vec![
            ("Tray 1", Some(80), SupplyState::Ok, false),
            ("Bypass", Some(0), SupplyState::Empty, true)
        ]
    );

    // The page counter goes backwards (engine swap): a flagged reset, old and new values.
    w.sim.command(&format!("set p1 {PAGE_COUNTER}|65|10"));
    let (old, new, kind) = tap
        .wait_for(
            Duration::from_secs(10),
            "counter_reset",
            log,
            |m: &[Telemetry]| {
                events(m, "p1").into_iter().find_map(|e| match e {
                    Event::CounterReset { old, new, kind, .. } => Some((*old, *new, *kind)),
                    _ => None,
                })
            },
        )
        .await;
    assert_eq!((old, new, kind), (1000, 10, ResetKind::Backwards));

    // A reboot: sysUpTime restarts.
    w.sim.command("reboot p1");
    tap.wait_for(
        Duration::from_secs(10),
        "reboot",
        log,
        |m: &[Telemetry]| {
            events(m, "p1")
                .into_iter()
                .find(|e| matches!(e, Event::Reboot { .. }))
                .cloned()
        },
    )
    .await;

    // Toner at 5 %: supply_low with the description (the part number lives there).
    w.sim.command("set p1 1.3.6.1.2.1.43.11.1.1.9.1.1|2|5");
    let desc = tap
        .wait_for(
            Duration::from_secs(10),
            "supply_low",
            log,
            |m: &[Telemetry]| {
                events(m, "p1").into_iter().find_map(|e| match e {
                    Event::SupplyLow {
                        description,
                        percent_remaining: Some(5),
                        ..
                    } => Some(description.clone()),
                    _ => None,
                })
            },
        )
        .await;
    assert_eq!(desc, "Black Toner Cartridge SIM-TK1");

    // The printer stops answering: stale, with the age of the last good reading.
    w.sim.command("drop p1 1000000");
    let (age, stale_msg) = tap
        .wait_for(
            Duration::from_secs(15),
            "stale",
            log,
            |m: &[Telemetry]| {
                m.iter().find_map(|t| {
                    t.events.iter().find_map(|e| match e {
                        Event::Stale {
                            age_secs: Some(a), ..
                        } => Some((*a, t.clone())),
                        _ => None,
                    })
                })
            },
        )
        .await;
    assert!(!stale_msg.reachable);
    assert!(age <= 10, "age {age}");
    // The old reading travels with it, still showing the low toner.
    assert_eq!(
        stale_msg.reading.as_ref().unwrap().supplies[0].state,
        SupplyState::Low
    );
    w.sim.command("drop p1 0");
    tap.wait_for(
        Duration::from_secs(15),
        "recovered",
        log,
        |m: &[Telemetry]| {
            events(m, "p1")
                .into_iter()
                .find(|e| matches!(e, Event::Recovered { .. }))
                .cloned()
        },
    )
    .await;

    // Sequence numbers are gapless and unique.
    let mut seqs: Vec<u64> = tap.decoded::<Telemetry>().iter().map(|t| t.seq).collect();
    seqs.sort();
    let n = seqs.len() as u64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    let _ = &w.dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reported_with_the_value_found_and_reapplied_where_enabled() {
    let mut w = world(&["p1", "p2"]);
    let cloud = start_cloud(w.broker.port, w.dir.path()).await;
    let tap = Tap::start(
        w.broker.port,
        "drift-tap",
        &["platen/v1/acme/+/config/drift"],
    )
    .await;
    let mut cfg = agent_toml(
        "gw-d",
        w.broker.port,
        &w.dir.path().join("state"),
        &[
            PrinterEntry::new("p1", w.sim.addr("p1")),
            PrinterEntry::new("p2", w.sim.addr("p2")),
        ],
    );
    // p1 re-applies sysLocation on drift; p2 only reports.
    cfg = cfg.replacen(
        "retries = 1\n",
        "retries = 1\nreapply_on_drift = [\"sysLocation\"]\n",
        1,
    );
    let agent = AgentProc::start(w.dir.path(), &(cfg + FAST));
    let log = || agent.log();
    for p in ["p1", "p2"] {
        cloud
            .publish_desired(
                &tenant(),
                &desired(
                    p,
                    1,
                    &[("sysLocation", t("Room 1")), ("sysContact", t("ops"))],
                ),
            )
            .await
            .unwrap();
        let r = wait_report(
            &cloud,
            &format!("gw-d:{p}:v1"),
            Duration::from_secs(15),
            &agent,
        )
        .await;
        assert_eq!(code_of(&r, "sysLocation"), Code::Verified);
    }
    // Someone changes both on the printers' panels.
    for p in ["p1", "p2"] {
        w.sim
            .command(&format!("set {p} 1.3.6.1.2.1.1.6.0|4|Changed on the panel"));
    }
    let find = |printer: &'static str| {
        move |m: &[DriftReport]| m.iter().find(|d| d.printer_id.as_str() == printer).cloned()
    };
    let d1 = tap
        .wait_for(Duration::from_secs(15), "drift p1", log, find("p1"))
        .await;
    let d2 = tap
        .wait_for(Duration::from_secs(15), "drift p2", log, find("p2"))
        .await;
    for d in [&d1, &d2] {
        assert_eq!(d.config_version, 1);
        assert_eq!(d.settings.len(), 1, "only the changed setting: {d:?}");
        let s = &d.settings[0];
        assert_eq!((s.name.as_str(), s.code), ("sysLocation", Code::Drift));
        assert_eq!(s.found, Some(t("Changed on the panel")));
        assert_eq!(s.desired, t("Room 1"));
    }
    assert_eq!(d1.settings[0].reapplied, Some(Code::Verified));
    assert_eq!(d2.settings[0].reapplied, None);
    // Checked with net-snmp's snmpget, not our client: p1 is back, p2 keeps the panel value.
    let get =
        |p: &str| snmpget("private", &w.sim.addr(p).to_string(), "1.3.6.1.2.1.1.6.0").unwrap();
    assert!(get("p1").contains("Room 1"), "{}", get("p1"));
    assert!(get("p2").contains("Changed on the panel"), "{}", get("p2"));
    // The same drift is not reported again on every check.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p2_reports = tap
        .decoded::<DriftReport>()
        .iter()
        .filter(|d| d.printer_id.as_str() == "p2")
        .count();
    assert_eq!(p2_reports, 1, "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_diagnostics_answer_only_when_enabled() {
    let w = world(&["p1", "p2"]);
    let tap = Tap::start(
        w.broker.port,
        "diag-tap",
        &["platen/v1/acme/+/cmd/diag/response"],
    )
    .await;
    let mut cfg = agent_toml(
        "gw-r",
        w.broker.port,
        &w.dir.path().join("state"),
        &[
            PrinterEntry::new("p1", w.sim.addr("p1")),
            PrinterEntry::new("p2", w.sim.addr("p2")),
        ],
    );
    cfg.push_str("\n[diagnostics]\nremote = true\n");
    let agent = AgentProc::start(w.dir.path(), &cfg);
    agent.wait_log("agent started", Duration::from_secs(10));
    let req = DiagRequest {
        request_id: "ticket-4711".into(),
        write_test: false,
    };
    let topic = Topic::diag_request(&tenant(), &"p1".parse().unwrap()).to_string();
    // Retry the request until the agent's subscription is in place.
    let mut resp = None;
    for _ in 0..20 {
        tap.publish(&topic, codec::encode(&req)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(r) = tap.decoded::<DiagResponse>().into_iter().next() {
            resp = Some(r);
            break;
        }
    }
    let resp = resp.unwrap_or_else(|| panic!("no diagnostics response\n{}", agent.log()));
    assert_eq!(resp.request_id, "ticket-4711");
    assert_eq!(resp.result.printer_id.as_str(), "p1");
    assert!(resp.result.reachable);
    assert_eq!(resp.result.settings.len(), 10);
    assert!(
        resp.result.settings.iter().all(|s| s.writable.is_none()),
        "no write test asked"
    );
    let json = String::from_utf8(tap.payloads()[0].clone()).unwrap();
    assert!(
        !json.contains("private"),
        "the community never leaves the agent: {json}"
    );
    // Malformed requests are refused with a log line, nothing crashes.
    tap.publish(&topic, b"{\"request_id\": 5}".to_vec()).await;
    agent.wait_log("diagnostics request refused", Duration::from_secs(5));

    // The same agent config without [diagnostics] remote: no answer.
    drop(agent);
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = agent_toml(
        "gw-r2",
        w.broker.port,
        &dir2.path().join("state"),
        &[PrinterEntry::new("p2", w.sim.addr("p2"))],
    );
    let agent2 = AgentProc::start(dir2.path(), &cfg2);
    agent2.wait_log("agent started", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let topic2 = Topic::diag_request(&tenant(), &"p2".parse().unwrap()).to_string();
    tap.publish(&topic2, codec::encode(&req)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        tap.decoded::<DiagResponse>()
            .iter()
            .all(|r| r.result.printer_id.as_str() != "p2"),
        "remote diagnostics are off by default"
    );
}

/// A real printer's recording plays back its sysUpTime (advancing from the recorded
/// value), and a reboot of it is seen by the agent as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_is_detected_on_a_recorded_printer() {
    const RECORDED_UPTIME: u64 = 217_539_735; // librenms-brother.snmprec
    let brother = format!(
        "brother,snmprec={}/fixtures/snmprec/librenms-brother.snmprec",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut w = world(&[&brother]);
    let tap = Tap::start(
        w.broker.port,
        "telemetry-tap-rec",
        &["platen/v1/acme/+/telemetry"],
    )
    .await;
    let cfg = agent_toml(
        "gw-t",
        w.broker.port,
        &w.dir.path().join("state"),
        &[PrinterEntry::new("brother", w.sim.addr("brother"))],
    ) + FAST;
    let agent = AgentProc::start(w.dir.path(), &cfg);
    let log = || agent.log();
    let first: Telemetry = tap
        .wait_for(
            Duration::from_secs(15),
            "first telemetry",
            log,
            |m: &[Telemetry]| m.first().cloned(),
        )
        .await;
    let uptime = first.reading.as_ref().unwrap().uptime_cs.unwrap();
    assert!(uptime >= RECORDED_UPTIME, "played back: {uptime}");
    w.sim.command("reboot brother");
    let after = tap
        .wait_for(
            Duration::from_secs(10),
            "reboot",
            log,
            |m: &[Telemetry]| {
                events(m, "brother").into_iter().find_map(|e| match e {
                    Event::Reboot { .. } => m.last().and_then(|t| t.reading.clone()),
                    _ => None,
                })
            },
        )
        .await;
    assert!(
        after.uptime_cs.unwrap() < RECORDED_UPTIME,
        "restarted: {:?}",
        after.uptime_cs
    );
}

/// SNMP notifications (#23): a printer's trap makes the agent poll it at once, so a
/// new alert reaches the broker in well under the sweep interval (an hour here);
/// traps from an address no printer has, and a flood from the printer's own, cost
/// at most one poll per `min_interval_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_makes_the_agent_poll_its_printer_now() {
    const ALERT: &str = "1.3.6.1.2.1.43.18.1.1";
    let mut w = world(&["p1"]);
    let tap = Tap::start(w.broker.port, "trap-tap", &["platen/v1/acme/+/telemetry"]).await;
    let trap_port = free_udp_port();
    let metrics_port = free_tcp_port();
    let cfg = agent_toml(
        "gw-trap",
        w.broker.port,
        &w.dir.path().join("state"),
        &[PrinterEntry::new("p1", w.sim.addr("p1"))],
    ) + &format!(
        "\n[telemetry]\ninterval_secs = 3600\nheartbeat_secs = 3600\n\n[traps]\nlisten = \"127.0.0.1:{trap_port}\"\nmin_interval_ms = 3000\n\n[metrics]\nenabled = true\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    );
    let agent = AgentProc::start(w.dir.path(), &cfg);
    let log = || agent.log();
    tap.wait_for(
        Duration::from_secs(15),
        "startup telemetry",
        log,
        |m: &[Telemetry]| {
            m.iter()
                .find(|t| t.reasons.contains(&Trigger::Startup))
                .cloned()
        },
    )
    .await;
    let before = tap.decoded::<Telemetry>().len();

    // A new alert on the panel, and the printer's trap about it.
    w.sim.command(&format!("set p1 {ALERT}.2.1.2|2|3")); // severity: critical
    w.sim.command(&format!("set p1 {ALERT}.4.1.2|2|8")); // group: input
    w.sim.command(&format!("set p1 {ALERT}.7.1.2|2|808")); // code: inputMediaSupplyEmpty
    w.sim
        .command(&format!("set p1 {ALERT}.8.1.2|4|Tray 2 empty"));
    let sent = std::time::Instant::now();
    w.sim.command(&format!("trap p1 127.0.0.1:{trap_port}"));
    let raised = tap
        .wait_for(
            Duration::from_secs(10),
            "the alert after the trap",
            log,
            |m: &[Telemetry]| {
                m.iter().find_map(|t| {
                    t.events
                        .iter()
                        .any(|e| matches!(e, Event::AlertRaised { .. }))
                        .then(|| t.clone())
                })
            },
        )
        .await;
    let took = sent.elapsed();
    assert!(
        raised
            .reading
            .as_ref()
            .unwrap()
            .alerts
            .iter()
            .any(|a| a.description.as_deref() == Some("Tray 2 empty")),
        "{raised:?}"
    );
    eprintln!("trap → telemetry on the broker: {} ms", took.as_millis());

    // A flood of traps right after: rate limited, at most one more poll (nothing
    // changed, so no message either way).
    for _ in 0..20 {
        w.sim.command(&format!("trap p1 127.0.0.1:{trap_port}"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = format!("http://127.0.0.1:{metrics_port}");
    let count = async |outcome: &str| {
        metric(
            &metrics,
            &format!("platen_traps_total{{outcome=\"{outcome}\"}}"),
        )
        .await
    };
    assert_eq!(count("poll").await, 1);
    assert_eq!(count("rate_limited").await, 20);
    assert_eq!(
        tap.decoded::<Telemetry>().len(),
        before + 1,
        "one message: the alert's"
    );
    let _ = &w.dir;
}
