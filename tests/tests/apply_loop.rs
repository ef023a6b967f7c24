//! End to end: real Mosquitto, the simulator and the agent as processes, the cloud
//! stub in-process; net-snmp's snmpd and tools for interoperability.

use platen_e2e::*;
use platen_protocol::{Code, ReportStatus, SettingValue};
use std::time::Duration;

const SYS_LOCATION: &str = "1.3.6.1.2.1.1.6.0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_verify_report_and_read_only_setting() {
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1", &format!("p2,read-only={SYS_LOCATION}")]);
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(broker.port, dir.path()).await;
    let agent = AgentProc::start(
        dir.path(),
        &agent_toml(
            "gw-e2e",
            broker.port,
            &dir.path().join("state"),
            &[
                PrinterEntry::new("p1", sim.addr("p1")),
                PrinterEntry::new("p2", sim.addr("p2")),
            ],
        ),
    );
    let settings = [
        ("sysLocation", t("Floor 2")),
        ("sysContact", t("ops@acme.example")),
        ("prtInputDefaultIndex", SettingValue::Integer(2)),
        ("prtConsoleDisable", t("disabled")),
        ("noSuchSetting", t("x")),
    ];
    cloud
        .publish_desired(&tenant(), &desired("p1", 1, &settings))
        .await
        .unwrap();
    cloud
        .publish_desired(&tenant(), &desired("p2", 1, &settings))
        .await
        .unwrap();

    let r1 = wait_report(&cloud, "gw-e2e:p1:v1", Duration::from_secs(20), &agent).await;
    assert_eq!(
        r1.report.status,
        ReportStatus::PartiallyApplied,
        "{:?}",
        r1.report
    );
    for name in [
        "sysLocation",
        "sysContact",
        "prtInputDefaultIndex",
        "prtConsoleDisable",
    ] {
        assert_eq!(code_of(&r1, name), Code::Verified, "{name}");
    }
    assert_eq!(code_of(&r1, "noSuchSetting"), Code::NotSupported);
    assert!(r1.report.completed_at >= r1.report.received_at);

    let r2 = wait_report(&cloud, "gw-e2e:p2:v1", Duration::from_secs(20), &agent).await;
    assert_eq!(code_of(&r2, "sysLocation"), Code::NotWritable);
    let loc = r2
        .report
        .settings
        .iter()
        .find(|s| s.name == "sysLocation")
        .unwrap();
    assert_eq!(
        loc.read_back,
        Some(t("Unknown")),
        "a refused setting reports the value in use"
    );
    assert_eq!(code_of(&r2, "sysContact"), Code::Verified);

    // The printers really hold the values: ask with net-snmp, not with our own client.
    let got = snmpget("private", &sim.addr("p1").to_string(), SYS_LOCATION).unwrap();
    assert!(got.contains("\"Floor 2\""), "{got}");
    let got = snmpget("private", &sim.addr("p2").to_string(), SYS_LOCATION).unwrap();
    assert!(got.contains("\"Unknown\""), "{got}");

    // A repeated (retained) delivery does not produce a second report; an older
    // version is ignored; a newer one is applied.
    cloud
        .publish_desired(&tenant(), &desired("p1", 1, &settings))
        .await
        .unwrap();
    cloud
        .publish_desired(
            &tenant(),
            &desired("p1", 2, &[("sysLocation", t("Floor 3"))]),
        )
        .await
        .unwrap();
    let r3 = wait_report(&cloud, "gw-e2e:p1:v2", Duration::from_secs(20), &agent).await;
    assert_eq!(r3.report.status, ReportStatus::Applied);
    assert_eq!(cloud.reports().len(), 3);
    assert!(
        agent.log().contains("desired config already stored"),
        "duplicate v1 was not recognised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_printer_is_504_after_bounded_retries() {
    let broker = Mosquitto::start(false);
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(broker.port, dir.path()).await;
    // Nothing listens on this UDP port.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let printer = PrinterEntry {
        id: "p9".into(),
        addr: dead,
        timeout_ms: 200,
        retries: 2,
    };
    let agent = AgentProc::start(
        dir.path(),
        &agent_toml("gw-e2e", broker.port, &dir.path().join("state"), &[printer]),
    );
    let started = std::time::Instant::now();
    cloud
        .publish_desired(
            &tenant(),
            &desired("p9", 1, &[("sysLocation", t("x")), ("sysContact", t("y"))]),
        )
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-e2e:p9:v1", Duration::from_secs(20), &agent).await;
    assert_eq!(r.report.status, ReportStatus::NotApplied);
    for s in &r.report.settings {
        assert_eq!(s.code, Code::Unreachable, "{s:?}");
        assert!(s.detail.contains("after 2 retries"), "{}", s.detail);
    }
    // Bounded: 3 tries of 200 ms for one GET, not per setting and not forever.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_in_the_outbox_survives_a_kill_and_keeps_its_id() {
    let mut broker = Mosquitto::start(true);
    // Slow printer: every request takes 300 ms, so the apply outlives the broker.
    let sim = Sim::start(&["p1,delay-ms=300"]);
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(broker.port, dir.path()).await;
    let mut agent = AgentProc::one_printer(dir.path(), broker.port, sim.addr("p1"));
    cloud
        .publish_desired(
            &tenant(),
            &desired(
                "p1",
                1,
                &[
                    ("sysLocation", t("Hall")),
                    ("sysContact", t("c")),
                    ("sysName", t("n")),
                ],
            ),
        )
        .await
        .unwrap();
    // Wait until the agent has the config, then take the broker away.
    agent.wait_log("applying desired config", Duration::from_secs(10));
    broker.stop();
    agent.wait_log("report queued", Duration::from_secs(15));
    agent.kill9();

    // The report is on disk, unsent.
    {
        let store = platen_agent::store::Store::open(&agent.state_dir).unwrap();
        // Telemetry shares the outbox; this test is about the report.
        let pending = reports_in(&store);
        assert_eq!(pending.len(), 1, "exactly one report in the outbox");
        assert!(
            pending[0]
                .1
                .payload
                .contains("\"report_id\":\"gw-e2e:p1:v1\""),
            "{}",
            pending[0].1.payload
        );
    }

    broker.restart();
    agent.restart();
    let r = wait_report(&cloud, "gw-e2e:p1:v1", Duration::from_secs(30), &agent).await;
    assert_eq!(r.report.status, ReportStatus::Applied);
    // Once acknowledged, the outbox drains; a graceful stop flushes that and exits 0.
    agent.wait_log("report acknowledged by broker", Duration::from_secs(10));
    assert_eq!(
        agent.terminate(),
        Some(0),
        "SIGTERM must stop the agent cleanly"
    );
    let store = platen_agent::store::Store::open(&agent.state_dir).unwrap();
    assert!(
        reports_in(&store).is_empty(),
        "acknowledged report still in the outbox"
    );
}

fn reports_in(store: &platen_agent::store::Store) -> Vec<(u64, platen_agent::store::OutboxEntry)> {
    store
        .outbox_peek(1000)
        .into_iter()
        .filter(|(_, e)| e.topic.ends_with("/config/report"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_apply_reapplies_and_reports_once() {
    let broker = Mosquitto::start(true);
    let sim = Sim::start(&["p1,delay-ms=250"]);
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(broker.port, dir.path()).await;
    let mut agent = AgentProc::one_printer(dir.path(), broker.port, sim.addr("p1"));
    cloud
        .publish_desired(
            &tenant(),
            &desired(
                "p1",
                1,
                &[
                    ("sysLocation", t("A")),
                    ("sysContact", t("B")),
                    ("sysName", t("C")),
                ],
            ),
        )
        .await
        .unwrap();
    agent.wait_log("applying desired config", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(400)).await;
    agent.kill9();
    assert!(
        cloud.report("gw-e2e:p1:v1").is_none(),
        "killed before the report was made"
    );
    agent.restart();
    let r = wait_report(&cloud, "gw-e2e:p1:v1", Duration::from_secs(30), &agent).await;
    assert_eq!(r.report.status, ReportStatus::Applied, "{:?}", r.report);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cloud.reports().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_agent_reconnects_resubscribes_and_delivers() {
    // No persistence: the restarted broker has forgotten every session and
    // subscription, so a delivery proves the agent subscribed again.
    let mut broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1"]);
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(broker.port, dir.path()).await;
    let agent = AgentProc::one_printer(dir.path(), broker.port, sim.addr("p1"));
    cloud
        .publish_desired(&tenant(), &desired("p1", 1, &[("sysLocation", t("one"))]))
        .await
        .unwrap();
    wait_report(&cloud, "gw-e2e:p1:v1", Duration::from_secs(20), &agent).await;

    broker.restart();
    assert!(cloud.wait_connected(Duration::from_secs(10)).await);
    // Wait for the agent's reconnect (its log says so), then publish.
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while agent.log().matches("connected to broker").count() < 2 {
        assert!(
            std::time::Instant::now() < end,
            "agent did not reconnect:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cloud
        .publish_desired(&tenant(), &desired("p1", 2, &[("sysLocation", t("two"))]))
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-e2e:p1:v2", Duration::from_secs(20), &agent).await;
    assert_eq!(r.report.status, ReportStatus::Applied);
    let got = snmpget("private", &sim.addr("p1").to_string(), SYS_LOCATION).unwrap();
    assert!(got.contains("\"two\""), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_applies_and_verifies_on_real_snmpd() {
    let snmpd = Snmpd::start();
    let broker = Mosquitto::start(false);
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(broker.port, dir.path()).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", snmpd.port).parse().unwrap();
    let agent = AgentProc::start(
        dir.path(),
        &agent_toml(
            "gw-e2e",
            broker.port,
            &dir.path().join("state"),
            &[PrinterEntry::new("srv", addr)],
        ),
    );
    cloud
        .publish_desired(
            &tenant(),
            &desired(
                "srv",
                1,
                &[
                    ("sysLocation", t("Rack 7")),
                    ("sysContact", t("noc@acme.example")),
                ],
            ),
        )
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-e2e:srv:v1", Duration::from_secs(20), &agent).await;
    assert_eq!(r.report.status, ReportStatus::Applied, "{:?}", r.report);
    let got = snmpget("public", &addr.to_string(), SYS_LOCATION).unwrap();
    assert!(got.contains("\"Rack 7\""), "{got}");
    // snmpd has no Printer MIB: a Printer-MIB setting is 404, not a crash or a hang.
    cloud
        .publish_desired(
            &tenant(),
            &desired("srv", 2, &[("prtGeneralPrinterName", t("x"))]),
        )
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-e2e:srv:v2", Duration::from_secs(20), &agent).await;
    assert_eq!(
        code_of(&r, "prtGeneralPrinterName"),
        Code::NotSupported,
        "{:?}",
        r.report
    );
}

#[test]
fn net_snmp_tools_work_against_the_simulator() {
    let sim = Sim::start(&["p1", &format!("p2,read-only={SYS_LOCATION}")]);
    let p1 = sim.addr("p1").to_string();
    let out = snmpset("private", &p1, SYS_LOCATION, "s", "Lobby").unwrap();
    assert!(out.contains("\"Lobby\""), "{out}");
    let out = snmpget("private", &p1, SYS_LOCATION).unwrap();
    assert!(out.contains("\"Lobby\""), "{out}");
    let out = snmpget("private", &p1, "1.3.6.1.2.1.43.5.1.1.16.1").unwrap();
    assert!(out.contains("\"p1\""), "{out}");
    let err = snmpset(
        "private",
        &sim.addr("p2").to_string(),
        SYS_LOCATION,
        "s",
        "x",
    )
    .unwrap_err();
    assert!(err.contains("notWritable"), "{err}");
    let err = snmpset("private", &p1, "1.3.6.1.2.1.43.5.1.1.6.1", "i", "70000").unwrap_err();
    assert!(err.contains("wrongValue"), "{err}");
    let err = snmpset("private", &p1, "1.3.6.1.2.1.43.5.1.1.6.1", "s", "two").unwrap_err();
    assert!(err.contains("wrongType"), "{err}");
    let err = snmpget("wrong-community", &p1, SYS_LOCATION).unwrap_err();
    assert!(err.contains("Timeout"), "{err}");
}

#[test]
fn simulator_plays_back_a_real_printer_recording() {
    let rec = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/snmprec/librenms-konica_c250i.snmprec"
    );
    let sim = Sim::start(&[&format!("km,snmprec={rec}")]);
    let target = sim.addr("km").to_string();
    let out = snmpget("private", &target, "1.3.6.1.2.1.1.1.0").unwrap();
    assert!(out.contains("KONICA MINOLTA bizhub C250i"), "{out}");
    let out = snmpget("private", &target, "1.3.6.1.2.1.43.10.2.1.4.1.1").unwrap();
    assert!(out.contains("33810"), "{out}");
}
