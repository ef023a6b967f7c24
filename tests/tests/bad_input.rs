//! Bad input (#6) on every MQTT topic the agent and the cloud read and on every HTTP
//! endpoint: malformed, truncated, invalid UTF-8, oversized and deeply nested JSON,
//! wrong types, unknown fields and settings, stale and duplicate versions, a config
//! or report naming another printer than its topic, reports for unknown printers and
//! replayed report ids. Each is refused with a clear error — logged, counted in
//! `/metrics`, answered where there is a sender to tell (a refusal report for a
//! config whose version can be read; an HTTP 4xx with a JSON error) — and nothing
//! already stored changes: afterwards the contracts, timelines, ledger and reports
//! are as before, and both links still work (a new change is applied and settles).

use platen_e2e::*;
use platen_protocol::{ApplyReport, Code};
use serde_json::{json, Value};
use std::time::Duration;

const FEE: u64 = 1_000_000_000;

/// Payloads that no reader may accept, with the reason the agent counts.
fn garbage() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
    let mut oversized = br#"{"version": 3, "pad": ""#.to_vec();
    oversized.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    oversized.extend(br#""}"#);
    vec![
        ("not JSON", b"hello printer".to_vec(), "malformed"),
        (
            "truncated",
            br#"{"protocol":"1.0","printer_id":"p2","vers"#.to_vec(),
            "malformed",
        ),
        ("invalid UTF-8", vec![b'{', 0xff, 0xfe, b'}'], "malformed"),
        ("JSON null", b"null".to_vec(), "malformed"),
        ("a number", b"42".to_vec(), "malformed"),
        ("nested 100 000 deep", deep(100_000), "malformed"),
        ("1 MiB", oversized, "oversized"),
    ]
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Everything the cloud's API shows of its state.
async fn snapshot(api: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for path in [
        "/v1/tenants",
        "/v1/plans",
        "/v1/resellers",
        "/v1/migrations",
        "/v1/contracts/c1",
        "/v1/contracts/c1/timeline",
        "/v1/ledger",
    ] {
        let (s, v) = http_json("GET", &format!("{api}{path}"), None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        out.push((path.to_string(), v));
    }
    out
}

async fn wait_settled(api: &str, changes: usize, agent: &AgentProc) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (_, v) = http_json("GET", &format!("{api}/v1/contracts/c1"), None).await;
        let ch = v["changes"].as_array().cloned().unwrap_or_default();
        if ch.len() == changes && ch.iter().all(|c| c["state"] == "settled") {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "c1 never settled: {v:#}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_counted_answered_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1", "p2"]);
    let provider = ProviderProc::start();
    let registry = dir.path().join("agents.toml");
    std::fs::write(
        &registry,
        "[[agent]]\nid = \"gw-bad\"\nprinters = [\"acme/p1\", \"acme/p2\"]\n",
    )
    .unwrap();
    let cloud = CloudProc::start_with(
        broker.port,
        &dir.path().join("cloud"),
        &provider.url,
        &["--agents", registry.to_str().unwrap()],
    );
    let metrics_port = free_tcp_port();
    let mut cfg = agent_toml(
        "gw-bad",
        broker.port,
        &dir.path().join("state"),
        &[
            PrinterEntry::new("p1", sim.addr("p1")),
            PrinterEntry::new("p2", sim.addr("p2")),
        ],
    );
    cfg.push_str(&format!(
        "\n[diagnostics]\nremote = true\n\n[metrics]\nenabled = true\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    ));
    let mut agent = AgentProc::start(dir.path(), &cfg);
    let tap = Tap::start(
        broker.port,
        "bad-input-tap",
        &["platen/v1/acme/+/config/report"],
    )
    .await;
    let api = cloud.api.clone();

    // A contract for p1, applied and settled: the state that must not change.
    for (path, body) in [
        ("/v1/tenants", json!({"id": "acme", "name": "Acme"})),
        (
            "/v1/plans",
            json!({"id": "basic", "name": "Basic", "service": {"kind": "basic", "monthly_fee": FEE},
                   "config_template": {"sysLocation": "Room 42"}}),
        ),
        (
            "/v1/contracts",
            json!({"id": "c1", "tenant": "acme", "printers": ["p1"], "plan": "basic",
                   "time_zone": "Europe/Berlin", "currency": "EUR"}),
        ),
    ] {
        let (s, v) = http_json("POST", &format!("{api}{path}"), Some(body)).await;
        assert_eq!(s, 201, "POST {path}: {v}");
    }
    wait_settled(&api, 1, &agent).await;
    let p1_report = tap
        .wait_for::<ApplyReport, _>(
            Duration::from_secs(10),
            "p1 report",
            || agent.log(),
            |r| r.iter().find(|r| r.printer_id.as_str() == "p1").cloned(),
        )
        .await;
    let before = snapshot(&api).await;
    let cloud_metrics = format!("{api}/metrics");
    let agent_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let refused_before = metric(
        &get_text(&cloud_metrics).await,
        "platen_cloud_messages_refused_total",
    );

    // ---- MQTT: garbage on every topic the agent and the cloud read ----
    let topics = [
        "platen/v1/acme/p2/config/desired",
        "platen/v1/acme/p2/cmd/diag",
        "platen/v1/acme/p1/config/report",
        "platen/v1/acme/p1/telemetry",
    ];
    for (_, payload, _) in garbage() {
        for topic in topics {
            tap.publish(topic, payload.clone()).await;
        }
    }
    let mut cloud_refusals = 2 * garbage().len() as u64;

    // ---- agent: configs the codec or the checks refuse, on p2 (no contract) ----
    let config = |version: u64, printer: &str, settings: Value| {
        serde_json::to_vec(&json!({
            "protocol": "1.0", "printer_id": printer, "version": version,
            "issued_at": "2026-11-22T10:00:00Z", "settings": settings
        }))
        .unwrap()
    };
    let desired_p2 = "platen/v1/acme/p2/config/desired";
    // Wrong types: a setting value that is neither text nor integer, a text version.
    tap.publish(desired_p2, config(7, "p2", json!({"sysLocation": true})))
        .await;
    tap.publish(
        desired_p2,
        config(8, "p2", json!({"sysLocation": {"nested": [1, 2]}})),
    )
    .await;
    let mut text_version = config(1, "p2", json!({"sysLocation": "x"}));
    text_version = String::from_utf8(text_version)
        .unwrap()
        .replace("\"version\":1", "\"version\":\"nine\"")
        .into_bytes();
    tap.publish(desired_p2, text_version).await;
    // Unknown field.
    let mut unknown =
        serde_json::from_slice::<Value>(&config(6, "p2", json!({"sysLocation": "x"}))).unwrap();
    unknown["colour"] = json!("red");
    tap.publish(desired_p2, serde_json::to_vec(&unknown).unwrap())
        .await;
    // A readable version → a refusal report the cloud can read.
    for v in [6u64, 7, 8] {
        let id = format!("gw-bad:p2:v{v}:refused400");
        let r = tap
            .wait_for::<ApplyReport, _>(
                Duration::from_secs(10),
                &id,
                || agent.log(),
                |r| r.iter().find(|r| r.report_id == id).cloned(),
            )
            .await;
        let refusal = r.refused.expect("report-level refusal");
        assert_eq!(refusal.code, Code::ValueRejected);
        assert!(
            refusal.detail.contains("malformed desired config"),
            "{}",
            refusal.detail
        );
    }
    // Unknown setting beside a good one: the good one is applied, the unknown is 404.
    tap.publish(
        desired_p2,
        config(
            10,
            "p2",
            json!({"sysLocation": "Hall 10", "noSuchSetting": "x"}),
        ),
    )
    .await;
    let r10 = tap
        .wait_for::<ApplyReport, _>(
            Duration::from_secs(10),
            "p2 v10",
            || agent.log(),
            |r| r.iter().find(|r| r.report_id == "gw-bad:p2:v10").cloned(),
        )
        .await;
    let code = |r: &ApplyReport, n: &str| r.settings.iter().find(|s| s.name == n).map(|s| s.code);
    assert_eq!(code(&r10, "sysLocation"), Some(Code::Verified));
    assert_eq!(code(&r10, "noSuchSetting"), Some(Code::NotSupported));
    // The cloud never published p2's versions 6, 7, 8 and 10 (this test did, on the
    // broker): their reports are refused there, and counted as unpublished.
    cloud_refusals += 4;
    // Stale (v9 < v10) and duplicate (v10 again, other content): ignored, no report.
    tap.publish(desired_p2, config(9, "p2", json!({"sysLocation": "Stale"})))
        .await;
    tap.publish(
        desired_p2,
        config(10, "p2", json!({"sysLocation": "Duplicate"})),
    )
    .await;
    // Another printer's config on p2's topic.
    tap.publish(
        desired_p2,
        config(11, "p1", json!({"sysLocation": "Wrong printer"})),
    )
    .await;
    agent.wait_log(
        "desired config names another printer than its topic",
        Duration::from_secs(10),
    );
    agent.wait_log("stale desired config ignored", Duration::from_secs(10));

    // ---- cloud: reports that must not be stored ----
    let mut forged = serde_json::to_value(&p1_report).unwrap();
    // p1's report on p2's topic.
    tap.publish(
        "platen/v1/acme/p2/config/report",
        serde_json::to_vec(&forged).unwrap(),
    )
    .await;
    // A printer outside the registry.
    forged["printer_id"] = json!("p9");
    forged["report_id"] = json!("gw-bad:p9:v1");
    tap.publish(
        "platen/v1/acme/p9/config/report",
        serde_json::to_vec(&forged).unwrap(),
    )
    .await;
    cloud_refusals += 2;
    // A replayed report id with other content: the first one stays.
    let mut replay = serde_json::to_value(&p1_report).unwrap();
    replay["status"] = json!("not_applied");
    tap.publish(
        "platen/v1/acme/p1/config/report",
        serde_json::to_vec(&replay).unwrap(),
    )
    .await;

    // ---- HTTP: bad bodies on every endpoint that takes one ----
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let big = format!("{{\"id\":\"x\",\"name\":\"{}\"}}", "a".repeat(300 * 1024));
    let bodies: Vec<(&str, String)> = vec![
        ("not JSON", "hello".into()),
        ("truncated", "{\"id\": \"acme2\", \"na".into()),
        ("nested", deep),
        ("oversized", big),
        (
            "wrong types",
            "{\"id\": 5, \"name\": [\"a\"], \"tenant\": {}, \"printers\": \"p1\"}".into(),
        ),
        (
            "unknown field",
            "{\"id\": \"zz\", \"name\": \"Z\", \"surprise\": true}".into(),
        ),
    ];
    let client = reqwest::Client::new();
    let mut http_refusals = 0;
    for path in [
        "/v1/tenants",
        "/v1/plans",
        "/v1/contracts",
        "/v1/contracts/c1/changes",
        "/v1/resellers",
        "/v1/migrations",
    ] {
        for (what, body) in &bodies {
            let resp = client
                .post(format!("{api}{path}"))
                .bearer_auth(test_token("operator"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert!(
                (400..500).contains(&status),
                "POST {path} {what}: {status} {text}"
            );
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("POST {path} {what}: not JSON ({e}): {text}"));
            assert!(v["error"]["code"].is_string(), "POST {path} {what}: {v}");
            if *what == "oversized" {
                assert_eq!(status, 413, "POST {path} oversized: {v}");
            }
            http_refusals += 1;
        }
    }
    for (method, path) in [
        ("GET", "/v1/ledger?contract=%ZZ"),
        ("GET", "/v1/contracts/no%20such"),
        ("DELETE", "/v1/migrations/does-not-exist"),
        ("GET", "/v1/nowhere"),
    ] {
        let (s, v) = http_json(method, &format!("{api}{path}"), None).await;
        assert!((400..500).contains(&s), "{method} {path}: {s} {v}");
        http_refusals += 1;
    }

    // ---- nothing changed; everything was counted ----
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        agent.try_exit_code(),
        None,
        "the agent exited:\n{}",
        agent.log()
    );
    let after = snapshot(&api).await;
    for ((path, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{path} changed");
    }
    let m = get_text(&cloud_metrics).await;
    assert_eq!(
        metric(&m, "platen_cloud_messages_refused_total") - refused_before,
        cloud_refusals,
        "{m}"
    );
    assert_eq!(
        metric(&m, "platen_cloud_reports_unpublished_total"),
        4,
        "p2's reports of versions the cloud never published: {m}"
    );
    let api_errors: u64 = m
        .lines()
        .filter(|l| l.starts_with("platen_cloud_api_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        api_errors >= http_refusals,
        "{api_errors} < {http_refusals}\n{m}"
    );
    let am = get_text(&agent_metrics).await;
    let refused = |topic: &str, reason: &str| {
        metric(
            &am,
            &format!("platen_inbound_refused_total{{topic=\"{topic}\",reason=\"{reason}\"}}"),
        )
    };
    let malformed = garbage().iter().filter(|g| g.2 == "malformed").count() as u64;
    assert_eq!(refused("desired", "malformed"), malformed + 4, "{am}");
    assert_eq!(refused("desired", "oversized"), 1, "{am}");
    assert_eq!(refused("desired", "stale"), 1, "{am}");
    assert_eq!(refused("desired", "wrong_printer"), 1, "{am}");
    assert_eq!(refused("diag", "malformed"), garbage().len() as u64, "{am}");
    // p2 still holds v10's value: neither the stale nor the duplicate was applied.
    let location = snmpget("private", &sim.addr("p2").to_string(), "1.3.6.1.2.1.1.6.0").unwrap();
    assert!(location.contains("\"Hall 10\""), "{location}");
    assert!(tap
        .decoded::<ApplyReport>()
        .iter()
        .all(|r| r.report_id != "gw-bad:p2:v9"));

    // ---- and both links still work ----
    let (s, v) = http_json(
        "POST",
        &format!("{api}/v1/contracts/c1/changes"),
        Some(json!({"settings": {"sysLocation": "After the storm"}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    wait_settled(&api, 2, &agent).await;
    // The replayed report id kept its first content.
    let tl = after
        .iter()
        .find(|(p, _)| p == "/v1/contracts/c1/timeline")
        .unwrap();
    assert!(tl
        .1
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["status"] != "not_applied"));
    let _ = dir;
}
