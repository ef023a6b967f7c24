//! The technician's commands as processes: `diag`, `status`, `discover`, against
//! simulated printers and a real Mosquitto, checking output and exit codes.

use platen_e2e::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn agent_cmd(args: &[&str]) -> Output {
    Command::new(workspace_bin("platen-agent"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run platen-agent")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_config(dir: &Path, broker_port: u16, printers: &[PrinterEntry]) -> String {
    let cfg = agent_toml("gw-tech", broker_port, &dir.join("state"), printers);
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn diag_healthy_read_only_and_unreachable_printers() {
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["good", "ro,read-only=1.3.6.1.2.1.1.6.0"]);
    let dir = tempfile::tempdir().unwrap();
    let mut gone = PrinterEntry::new(
        "gone",
        format!("127.0.0.1:{}", free_udp_port()).parse().unwrap(),
    );
    gone.timeout_ms = 200;
    let cfg = write_config(
        dir.path(),
        broker.port,
        &[
            PrinterEntry::new("good", sim.addr("good")),
            PrinterEntry::new("ro", sim.addr("ro")),
            gone,
        ],
    );

    // Healthy printer, broker test included: exit 0.
    let o = agent_cmd(&["diag", "good", "--config", &cfg, "--write-test"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("Platen SimPrinter 1000"), "{out}");
    assert!(out.contains("SIM-good"), "{out}");
    assert!(
        out.contains("sysDescr (firmware): Platen SimPrinter 1000; firmware 1.0.0"),
        "{out}"
    );
    assert!(out.contains("Black Toner Cartridge SIM-TK1"), "{out}");
    assert!(out.contains("prtMarkerLifeCount.1"), "{out}");
    assert!(
        out.contains(&format!("broker 127.0.0.1:{}: ok", broker.port)),
        "{out}"
    );
    // Only a warning (below): nothing that stops printing, said as such.
    assert!(
        out.contains("no problems that stop printing (exit 0), but see the warnings"),
        "{out}"
    );
    assert!(!out.contains("NOT writable"), "{out}");
    // The printer's alert table, in the text output too.
    assert!(
        out.contains("good: alerts") && out.contains("markerTonerAlmostEmpty"),
        "{out}"
    );
    // Written with `private`: a warning with a hint, and still exit 0.
    assert!(
        out.contains("1 warning:\n  good [security] printer good is written with a factory-default community"),
        "{out}"
    );
    assert!(out.contains("set a write community of your own"), "{out}");
    // Enumerated settings show their labels.
    assert!(out.contains("\"enabled\""), "{out}");

    // Read-only sysLocation: found by the write test, with a hint; exit 1.
    let o = agent_cmd(&[
        "diag",
        "ro",
        "--config",
        &cfg,
        "--write-test",
        "--no-broker",
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("sysLocation is not writable (notWritable"),
        "{out}"
    );
    assert!(
        out.contains("hint: enable SNMP write access for sysLocation on printer ro"),
        "{out}"
    );
    // Without the write test nothing is written and nothing is wrong.
    let o = agent_cmd(&["diag", "ro", "--config", &cfg, "--no-broker"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Unreachable: timing and a hint naming the community; JSON for tools.
    let o = agent_cmd(&["diag", "gone", "--config", &cfg, "--no-broker", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("diag --json is JSON");
    let p = &v["printers"][0];
    assert_eq!(p["printer_id"], "gone");
    assert_eq!(p["reachable"], false);
    let problem = &p["problems"][0];
    assert_eq!(problem["check"], "snmp");
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("after 2 attempts"),
        "{problem}"
    );
    assert!(
        problem["hint"]
            .as_str()
            .unwrap()
            .contains("check `community` for printer gone"),
        "{problem}"
    );
    // The community itself is never printed.
    assert!(!String::from_utf8_lossy(&o.stdout).contains("private"));

    // A broker that is not there: a broker problem with a hint; exit 1.
    let cfg2 = write_config(
        &dir.path().join("x"),
        free_tcp_port(),
        &[PrinterEntry::new("good", sim.addr("good"))],
    );
    let o = agent_cmd(&["diag", "--config", &cfg2]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("[broker]") && out.contains("check [broker] host and port"),
        "{out}"
    );

    // Usage errors are exit 2.
    let o = agent_cmd(&["diag", "nope", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_running_agent_then_the_store() {
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1"]);
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(broker.port, dir.path()).await;
    let cfg_text = agent_toml(
        "gw-st",
        broker.port,
        &dir.path().join("state"),
        &[PrinterEntry::new("p1", sim.addr("p1"))],
    ) + "\n[telemetry]\ninterval_secs = 1\nheartbeat_secs = 60\n";
    let mut agent = AgentProc::start(dir.path(), &cfg_text);
    let cfg = agent.config.to_string_lossy().into_owned();
    cloud
        .publish_desired(&tenant(), &desired("p1", 3, &[("sysLocation", t("Lab"))]))
        .await
        .unwrap();
    wait_report(&cloud, "gw-st:p1:v3", Duration::from_secs(15), &agent).await;
    // While running: figures come from the agent's status file (the store is locked).
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let out = loop {
        let o = agent_cmd(&["status", "--config", &cfg]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{out}");
        if out.contains("v3 applied") && out.contains(" ok ") {
            break out;
        }
        assert!(std::time::Instant::now() < end, "{out}\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.contains("running (pid"), "{out}");
    assert!(out.contains("broker: connected"), "{out}");
    assert!(out.contains("outbox: 0 pending"), "{out}");
    assert!(out.contains("1000"), "pages from the last reading: {out}");

    // Its reader gone (`status | head -1`): a quiet end, no panic.
    for args in [
        vec!["status", "--config", cfg.as_str()],
        vec!["status", "--config", cfg.as_str(), "--json"],
    ] {
        let mut child = Command::new(workspace_bin("platen-agent"))
            .args(&args)
            .env("RUST_LOG", "off")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader closes before the first line
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(o.status.code(), Some(141), "{args:?}: {err}");
    }

    // Stopped: the store is read directly.
    assert_eq!(agent.terminate(), Some(0));
    let o = agent_cmd(&["status", "--config", &cfg, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["agent_running"], false);
    assert_eq!(v["outbox"]["source"], "store");
    assert_eq!(v["printers"][0]["completed_version"], 3);
    assert_eq!(v["printers"][0]["last_report"]["status"], "applied");
}

#[test]
fn discover_finds_printers_on_loopback_addresses() {
    let port = free_udp_port();
    let xerox = format!(
        "xerox,host=127.0.0.4,port={port},snmprec={}/fixtures/snmprec/librenms-xerox.snmprec",
        env!("CARGO_MANIFEST_DIR")
    );
    let _sim = Sim::start(&[&format!("sim,host=127.0.0.2,port={port}"), &xerox]);
    let o = agent_cmd(&[
        "discover",
        "127.0.0.1-127.0.0.6",
        "--port",
        &port.to_string(),
        "--community",
        "private",
        "--timeout-ms",
        "300",
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.starts_with("2 printers in 6 addresses"), "{out}");
    assert!(
        out.contains(&format!("127.0.0.2:{port}")) && out.contains("Platen SimPrinter 1000"),
        "{out}"
    );
    // A wrong community: nothing answers, and the output says what to try.
    let o = agent_cmd(&[
        "discover",
        "127.0.0.2",
        "--port",
        &port.to_string(),
        "--community",
        "wrong-one",
        "--timeout-ms",
        "200",
    ]);
    let wrong = text(&o);
    assert_eq!(o.status.code(), Some(0), "{wrong}");
    assert!(wrong.starts_with("0 printers in 1 address\n"), "{wrong}");
    assert!(wrong.contains("wrong community (--community"), "{wrong}");
    assert!(
        !wrong.contains("wrong-one"),
        "the community is never printed: {wrong}"
    );
    // The Xerox recording has no hrDevicePrinter row: found by its supplies table.
    assert!(
        out.contains(&format!("127.0.0.4:{port}")) && out.contains("Xerox AltaLink"),
        "{out}"
    );
    // Its maker's profile, picked by the enterprise number in sysObjectID, with why;
    // the simulator's own printer gets the default.
    assert!(
        out.contains("profile xerox: sysObjectID 1.3.6.1.4.1.253.8.62.1.35.2.3.1.1 is Xerox's"),
        "{out}"
    );
    assert!(out.contains("profile default: "), "{out}");
    // Pasteable config entries, checked by the agent's own config loader.
    let o = agent_cmd(&[
        "discover",
        "127.0.0.2/31",
        "--port",
        &port.to_string(),
        "--community",
        "private",
        "--toml",
    ]);
    let entries = String::from_utf8_lossy(&o.stdout).replace("<write community>", "secret");
    assert!(entries.contains("address = \"127.0.0.2\""), "{entries}");
    assert!(
        !entries.contains("private"),
        "the community is never printed: {entries}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!("agent_id='g'\ntenant='t'\nstate_dir='/tmp/x'\n[broker]\nhost='h'\n{entries}"),
    )
    .unwrap();
    // It holds a community: not for every user's eyes (config check refuses that).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = agent_cmd(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A range that is not one: exit 2.
    let o = agent_cmd(&["discover", "10.0.0.0/8"]);
    assert_eq!(o.status.code(), Some(2));
}

/// The reported case: error bits lowToner and lowPaper with the device in warning
/// used to give "no problems found". Now each bit is explained with its severity: low
/// ones are warnings (exit 0, said as such), one that stops printing is a problem
/// (exit 1). Also the recordings: a Xerox without prtMarkerLifeCount gets the
/// no-page-counter warning naming its maker; a Konica Minolta with one gets none.
#[test]
fn diag_explains_error_bits_and_missing_page_counters() {
    const ERRORS: &str = "1.3.6.1.2.1.25.3.5.1.2.1";
    const DEVICE_STATUS: &str = "1.3.6.1.2.1.25.3.2.1.5.1";
    let rec = |name: &str| {
        format!(
            "{name},snmprec={}/fixtures/snmprec/librenms-{name}.snmprec",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let (xerox, km) = (rec("xerox"), rec("konica_c250i"));
    let mut sim = Sim::start(&["p1", &xerox, &km]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        free_tcp_port(),
        &[
            PrinterEntry::new("p1", sim.addr("p1")),
            PrinterEntry::new("xerox", sim.addr("xerox")),
            PrinterEntry::new("km", sim.addr("konica_c250i")),
        ],
    );
    // lowPaper (bit 0) and lowToner (bit 2): 0xA0; the device in warning(3).
    sim.command(&format!("set p1 {ERRORS}|4x|a0"));
    sim.command(&format!("set p1 {DEVICE_STATUS}|2|3"));
    let o = agent_cmd(&["diag", "p1", "--config", &cfg, "--no-broker"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(!out.contains("no problems found"), "{out}");
    assert!(out.contains("but see the warnings"), "{out}");
    assert!(
        out.contains("p1 [status] printer reports lowPaper: paper is running low"),
        "{out}"
    );
    assert!(
        out.contains("p1 [status] printer reports lowToner: toner or ink is running low"),
        "{out}"
    );
    // markerSupplyMissing (bit 10): the printer cannot print.
    sim.command(&format!("set p1 {ERRORS}|4x|0020"));
    let o = agent_cmd(&["diag", "p1", "--config", &cfg, "--no-broker", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems = v["printers"][0]["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["message"]
            == "printer reports markerSupplyMissing: a toner cartridge or drum is missing"),
        "{problems:?}"
    );

    let o = agent_cmd(&["diag", "xerox", "km", "--config", &cfg, "--no-broker"]);
    let out = text(&o);
    assert!(
        out.contains("xerox [counters] printer xerox has no usable page counter"),
        "{out}"
    );
    assert!(
        out.contains("set profile = \"xerox\" for printer xerox"),
        "{out}"
    );
    // The KM recording has prtMarkerLifeCount: no counter warning for it; its tray 7
    // is empty (a warning, with the trays in the text).
    assert!(!out.contains("km [counters]"), "{out}");
    assert!(out.contains("km: input trays"), "{out}");
    assert!(
        out.contains("km [trays] paper tray \"tray 7\" is empty"),
        "{out}"
    );
}
