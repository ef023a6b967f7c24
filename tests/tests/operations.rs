//! Operations, end to end with real processes: the Prometheus endpoint scraped during
//! a run, JSON log lines, systemd's notify protocol (READY, WATCHDOG, STOPPING) on a
//! socket the test binds, settings from `PLATEN_…` variables, the protocol version
//! check, and the `config check` / `config show` commands.

use platen_e2e::*;
use platen_protocol::{codec, Code, Health, ReportStatus, SettingValue, Topic};
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// Datagrams received on a notify socket so far, as `KEY=VALUE` lines.
fn notifications(sock: &UnixDatagram, into: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        into.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_string),
        );
    }
}

/// `name{labels} value` lines of a scrape, keyed by everything before the value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_json_logs_notify_env_and_protocol_refusal() {
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1"]);
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(broker.port, dir.path()).await;
    let tap = Tap::start(broker.port, "ops-tap", &["platen/v1/agents/+/health"]).await;
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let metrics_port = free_tcp_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    // The file has no [metrics] section and a wrong broker port: the environment
    // switches metrics on and fixes the port.
    let text = agent_toml(
        "gw-ops",
        1,
        &dir.path().join("state"),
        &[PrinterEntry::new("p1", sim.addr("p1"))],
    );
    let port = broker.port.to_string();
    let mut agent = AgentProc::start_with(
        dir.path(),
        &text,
        &[
            ("PLATEN_BROKER__PORT", port.as_str()),
            ("PLATEN_METRICS__ENABLED", "true"),
            ("PLATEN_METRICS__LISTEN", listen.as_str()),
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "4000000"),
        ],
        &["--log-format", "json"],
    );

    cloud
        .publish_desired(
            &tenant(),
            &desired(
                "p1",
                1,
                &[("sysLocation", t("Floor 2")), ("noSuchSetting", t("x"))],
            ),
        )
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-ops:p1:v1", Duration::from_secs(20), &agent).await;
    assert_eq!(r.report.status, ReportStatus::PartiallyApplied);

    // A desired config of a newer major protocol version: refused with a 505 report,
    // the printer untouched.
    let newer = String::from_utf8(codec::encode(&desired(
        "p1",
        5,
        &[("sysLocation", t("Hacked"))],
    )))
    .unwrap()
    .replacen(
        &format!("\"protocol\":\"{}\"", platen_protocol::PROTOCOL_VERSION),
        "\"protocol\":\"2.0\"",
        1,
    );
    // As a newer cloud would publish it: recorded as published, so the cloud takes
    // its report (a report of a version never published is refused).
    cloud
        .record_published(&tenant(), &"p1".parse().unwrap(), 5)
        .unwrap();
    tap.publish(
        &Topic::desired(&tenant(), &"p1".parse().unwrap()).to_string(),
        newer.into_bytes(),
    )
    .await;
    let refused = wait_report(
        &cloud,
        "gw-ops:p1:v5:refused505",
        Duration::from_secs(20),
        &agent,
    )
    .await;
    assert_eq!(refused.report.status, ReportStatus::NotApplied);
    let why = refused.report.refused.as_ref().expect("refusal");
    assert_eq!(why.code, Code::ProtocolUnsupported);
    assert!(why.detail.contains("protocol 2.0"), "{}", why.detail);
    let got = snmpget("private", &sim.addr("p1").to_string(), "1.3.6.1.2.1.1.6.0").unwrap();
    assert!(got.contains("\"Floor 2\""), "{got}");

    // Retained health: version with the commit, uptime.
    let health = tap
        .wait_for::<Health, _>(
            Duration::from_secs(10),
            "health up",
            || agent.log(),
            |hs| hs.iter().find(|h| h.uptime_secs.is_some()).cloned(),
        )
        .await;
    assert!(
        health.version.starts_with(env!("CARGO_PKG_VERSION")),
        "{}",
        health.version
    );
    assert!(health.version.contains('+'), "{}", health.version);

    // The scrape, once the outbox has drained.
    let end = Instant::now() + Duration::from_secs(10);
    let (text, m) = loop {
        let text = scrape(metrics_port).await;
        let m = samples(&text);
        if m.get("platen_outbox_depth") == Some(&0.0) || Instant::now() > end {
            break (text, m);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let want = [
        ("platen_reports_total{status=\"partially_applied\"}", 1.0),
        ("platen_reports_total{status=\"not_applied\"}", 1.0),
        ("platen_report_settings_total{code=\"200\"}", 1.0),
        ("platen_report_settings_total{code=\"404\"}", 1.0),
        ("platen_report_settings_total{code=\"505\"}", 1.0),
        ("platen_outbox_depth", 0.0),
        ("platen_outbox_oldest_age_seconds", 0.0),
        ("platen_mqtt_connected", 1.0),
    ];
    for (k, v) in want {
        assert_eq!(m.get(k), Some(&v), "{k} in\n{text}");
    }
    assert!(
        m["platen_snmp_request_duration_seconds_count{printer=\"p1\",op=\"set\"}"] >= 1.0,
        "{text}"
    );
    assert!(
        m["platen_snmp_request_duration_seconds_count{printer=\"p1\",op=\"get\"}"] >= 2.0,
        "{text}"
    );
    let age = m["platen_telemetry_age_seconds{printer=\"p1\"}"];
    assert!((0.0..60.0).contains(&age), "{text}");
    assert!(m["platen_agent_uptime_seconds"] > 0.0, "{text}");
    assert!(
        m.keys().any(|k| k.starts_with("platen_agent_info{")
            && k.contains(&format!(
                "protocol=\"{}\"",
                platen_protocol::PROTOCOL_VERSION
            ))),
        "{text}"
    );
    assert!(
        text.contains("# TYPE platen_snmp_request_duration_seconds histogram"),
        "{text}"
    );

    // SNMP errors are counted per printer: stop the printer answering.
    let before = m
        .get("platen_snmp_errors_total{printer=\"p1\",kind=\"timeout\"}")
        .copied()
        .unwrap_or(0.0);
    drop(sim);
    cloud
        .publish_desired(&tenant(), &desired("p1", 6, &[("sysContact", t("x"))]))
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-ops:p1:v6", Duration::from_secs(20), &agent).await;
    assert_eq!(r.report.settings[0].code, Code::Unreachable);
    let m = samples(&scrape(metrics_port).await);
    assert!(m["platen_snmp_errors_total{printer=\"p1\",kind=\"timeout\"}"] > before);

    // systemd: ready after the broker connection, the watchdog fed, stopping on TERM.
    let mut seen = Vec::new();
    notifications(&notify, &mut seen);
    assert!(seen.iter().any(|l| l == "READY=1"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l == "STATUS=connected to the broker; 1 printer"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|l| l == "WATCHDOG=1"), "{seen:?}");
    assert_eq!(agent.terminate(), Some(0));
    notifications(&notify, &mut seen);
    assert!(seen.iter().any(|l| l == "STOPPING=1"), "{seen:?}");

    // Every log line is a JSON object with a level and fields.
    let log = agent.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"].is_object() && v["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 10, "{log}");
    assert!(
        log.contains("\"message\":\"desired config refused\""),
        "{log}"
    );
    // Secrets stay out of logs whatever the format.
    assert!(!log.contains("\"private\""), "community in the log");
    let _ = SettingValue::Integer(0);
}

#[test]
fn config_check_lists_every_problem_and_show_redacts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    let text = "agent_id = \"gw\"\ntenant = \"acme\"\nstate_dir = \"/tmp/x\"\n\n[broker]\nhost = \"h\"\nport = \"1883\"\nkeepalive = 3\n\n[[printer]]\nid = \"p1\"\naddress = \"10.0.0.9\"\ncommunity = \"s3cret-community\"\ntimeout_ms = 5\n";
    std::fs::write(&file, text).unwrap();
    let out = Command::new(workspace_bin("platen-agent"))
        .args(["config", "check"])
        .arg(&file)
        .env("PLATEN_TELEMETRY__CONCURRENCY", "lots")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let f = file.display();
    for want in [
        format!("{f}:7: broker.port: invalid type: string \"1883\", expected u16"),
        format!("{f}:8: broker.keepalive: unknown key"),
        format!("{f}:14: printer[0].timeout_ms: must be between 10 and 60000 (printer p1)"),
        format!("{f} (env PLATEN_TELEMETRY__CONCURRENCY): telemetry.concurrency: invalid type: string \"lots\""),
        format!("{f}: 4 problems"),
    ] {
        assert!(err.contains(&want), "wanted {want:?} in\n{err}");
    }

    let fixed = text
        .replace("port = \"1883\"\nkeepalive = 3\n", "")
        .replace("timeout_ms = 5", "timeout_ms = 500");
    std::fs::write(&file, fixed).unwrap();
    // Readable by others, with a community in it: refused, as `run` refuses it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = Command::new(workspace_bin("platen-agent"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&open.stderr);
    assert_eq!(open.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is readable by every user (mode 644)"),
        "{err}"
    );
    assert!(!err.contains("s3cret-community"), "{err}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let ok = Command::new(workspace_bin("platen-agent"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        format!("{f}: ok (1 printer)")
    );

    let show = Command::new(workspace_bin("platen-agent"))
        .args(["config", "show", "--config"])
        .arg(&file)
        .env("PLATEN_BROKER__USERNAME", "gw")
        .env("PLATEN_BROKER__PASSWORD", "hunter2-pw")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    assert!(
        shown.contains("# broker.password from env PLATEN_BROKER__PASSWORD"),
        "{shown}"
    );
    assert!(shown.contains("password = \"[REDACTED]\""), "{shown}");
    assert!(shown.contains("community = \"[REDACTED]\""), "{shown}");
    assert!(
        !shown.contains("hunter2-pw") && !shown.contains("s3cret-community"),
        "{shown}"
    );
    // Defaults are shown too: the effective configuration, not the file.
    assert!(shown.contains("heartbeat_secs = 900"), "{shown}");

    let version = Command::new(workspace_bin("platen-agent"))
        .arg("--version")
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&version.stdout);
    assert!(
        v.starts_with(&format!(
            "platen-agent {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{v}"
    );
    assert!(
        v.trim_end()
            .ends_with(&format!("protocol {})", platen_protocol::PROTOCOL_VERSION)),
        "{v}"
    );
}
