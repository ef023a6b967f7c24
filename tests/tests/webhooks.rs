//! Outbound webhooks end to end (#21): a compensated fault writes its ledger entry
//! and, in the same store call, its events; the cloud delivers them signed to a
//! receiver of the test's own that goes down, answers 500, answers too slowly, and
//! comes back; the cloud is SIGKILLed in the middle of a delivery; the secret is
//! rotated. Every request the receiver got is then verified with the Standard
//! Webhooks reference library from PyPI (`tests/tools/verify_webhooks.py`), not with
//! Platen's code.
//!
//! A second test has a printer go quiet twice — it stops answering its agent, then
//! the agent dies — and checks one `printer.stale` per quiet spell, saying which.
//!
//! Real processes: Mosquitto, the simulator, the agent, `platen-provider`,
//! `platen-cloud serve` (first retry 100 ms, receiver timeout 1 s; stale after 4 s).

use axum::http::HeaderMap;
use platen_e2e::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SYS_LOCATION: &str = "1.3.6.1.2.1.1.6.0";
const FEE: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// 204 at once.
    Ok,
    /// 500.
    Fail,
    /// Longer than the cloud's timeout.
    Slow,
    /// 204 after half a second (a window to kill the cloud in).
    Lingering,
}

#[derive(Clone, Debug)]
struct Got {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Default)]
struct Seen {
    mode: Option<Mode>,
    got: Vec<Got>,
    /// The requests being answered now: (their place in `got`, their id).
    in_flight: Vec<(usize, String)>,
}

/// The provider's billing system, as far as webhooks go: records every request.
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    fn new() -> Receiver {
        Receiver {
            port: free_tcp_port(),
            seen: Arc::new(Mutex::new(Seen {
                mode: Some(Mode::Ok),
                ..Default::default()
            })),
            task: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/platen", self.port)
    }

    async fn up(&mut self) {
        let seen = self.seen.clone();
        let app = axum::Router::new().route(
            "/hooks/platen",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let id = h("webhook-id");
                    let (mode, place) = {
                        let mut s = seen.lock().unwrap();
                        let place = s.got.len();
                        s.in_flight.push((place, id.clone()));
                        s.got.push(Got {
                            id: id.clone(),
                            timestamp: h("webhook-timestamp"),
                            signature: h("webhook-signature"),
                            body,
                        });
                        (s.mode.unwrap_or(Mode::Ok), place)
                    };
                    let status = match mode {
                        Mode::Ok => 204,
                        Mode::Fail => 500,
                        Mode::Slow => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            204
                        }
                        Mode::Lingering => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            204
                        }
                    };
                    let mut s = seen.lock().unwrap();
                    if let Some(i) = s.in_flight.iter().position(|x| x.0 == place) {
                        s.in_flight.remove(i);
                    }
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("receiver port");
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    fn set(&self, mode: Mode) {
        self.seen.lock().unwrap().mode = Some(mode);
    }

    fn got(&self) -> Vec<Got> {
        self.seen.lock().unwrap().got.clone()
    }

    /// Whether a request for `id` that arrived as the `from`-th or later is being
    /// answered now (an earlier slow one may still be sleeping).
    fn in_flight(&self, id: &str, from: usize) -> bool {
        self.seen
            .lock()
            .unwrap()
            .in_flight
            .iter()
            .any(|(place, x)| x == id && *place >= from)
    }
}

async fn api(cloud: &CloudProc, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    http_json(method, &format!("{}{path}", cloud.api), body).await
}

async fn until<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            eprintln!(
                "webhooks test: {what} after {} ms",
                start.elapsed().as_millis()
            );
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The deliveries of an event, as the API shows them.
async fn deliveries(cloud: &CloudProc, event: &str) -> Vec<Value> {
    let (s, v) = api(cloud, "GET", &format!("/v1/webhooks/events/{event}"), None).await;
    assert_eq!(s, 200, "{v}");
    v["deliveries"].as_array().unwrap().clone()
}

/// Verify `requests`, each under `secret`, with the reference library.
fn verify_independently(dir: &std::path::Path, secret: &str, requests: &[Got]) -> usize {
    let python = std::env::var("PLATEN_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/../target/tools/py/bin/python",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: run scripts/setup (it installs the Standard Webhooks reference library)"
    );
    let file = dir.join(format!("requests-{}.json", rand_suffix()));
    let list: Vec<Value> = requests
        .iter()
        .map(|g| {
            json!({"secret": secret, "id": g.id, "timestamp": g.timestamp,
                   "signature": g.signature, "body": g.body})
        })
        .collect();
    std::fs::write(&file, serde_json::to_vec(&list).unwrap()).unwrap();
    let out = std::process::Command::new(&python)
        .arg(format!(
            "{}/tools/verify_webhooks.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(&file)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "the reference library refused a signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_reach_the_billing_system_signed_through_outages_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let mut sim = Sim::start(&[&format!("p1,read-only={SYS_LOCATION}")]);
    let provider = ProviderProc::start();
    let mut cloud = CloudProc::start_with(
        broker.port,
        &dir.path().join("cloud"),
        &provider.url,
        &[
            "--webhook-first-retry-ms",
            "100",
            "--webhook-timeout-secs",
            "1",
        ],
    );
    let _agent = AgentProc::start(
        dir.path(),
        &agent_toml(
            "gw-w",
            broker.port,
            &dir.path().join("state"),
            &[PrinterEntry::new("p1", sim.addr("p1"))],
        ),
    );
    let mut rx = Receiver::new();
    until("the cloud answers", 30, async || {
        let (s, _) = api(&cloud, "GET", "/v1/webhooks/endpoints", None).await;
        (s == 200).then_some(())
    })
    .await;

    // The endpoint: its secret is shown once, never listed; tenants may not see it.
    let (s, v) = api(
        &cloud,
        "POST",
        "/v1/webhooks/endpoints",
        Some(json!({"id": "billing", "url": rx.url()})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let secret1 = v["secret"].as_str().unwrap().to_string();
    assert!(secret1.starts_with("whsec_"));
    let (_, list) = api(&cloud, "GET", "/v1/webhooks/endpoints", None).await;
    assert!(!list.to_string().contains("whsec_"), "{list}");
    let (s, _) = http_json_as(
        "GET",
        &format!("{}/v1/webhooks/endpoints", cloud.api),
        None,
        Some("tenant:acme"),
    )
    .await;
    assert_eq!(s, 403);
    for (bad, code) in [
        (json!({"id": "x", "url": "ftp://h/x"}), "invalid_url"),
        (
            json!({"id": "y", "url": "http://h/", "events": ["coffee.made"]}),
            "unknown_event_type",
        ),
    ] {
        let (s, v) = api(&cloud, "POST", "/v1/webhooks/endpoints", Some(bad)).await;
        assert_eq!((s, v["error"]["code"].as_str()), (422, Some(code)), "{v}");
    }

    // A fault that clears: compensated with a credit and extra pages.
    for (path, body) in [
        ("/v1/tenants", json!({"id": "acme", "name": "Acme"})),
        (
            "/v1/plans",
            json!({"id": "flat", "name": "Flat", "service":
                   {"kind": "flat_rate_print", "monthly_fee": FEE, "page_cap": 100000},
                   "config_template": {"sysLocation": "Room 42"}}),
        ),
        (
            "/v1/contracts",
            json!({"id": "c1", "tenant": "acme", "printers": ["p1"], "plan": "flat",
                   "time_zone": "Europe/Berlin", "currency": "EUR"}),
        ),
    ] {
        let (s, v) = api(&cloud, "POST", path, Some(body)).await;
        assert_eq!(s, 201, "{path}: {v}");
    }
    until("a config fault", 40, async || {
        let (_, v) = api(&cloud, "GET", "/v1/contracts/c1", None).await;
        (!v["changes"][0]["config_fault"].is_null()).then_some(())
    })
    .await;
    sim.command(&format!("writable p1 {SYS_LOCATION}"));
    let ledger = until("the compensation", 40, async || {
        let (_, v) = api(&cloud, "GET", "/v1/ledger?contract=c1", None).await;
        v.as_array().filter(|a| !a.is_empty()).map(|a| a[0].clone())
    })
    .await;
    let key = ledger["key"].as_str().unwrap().to_string();

    // The events, each written with its fact: the fault, the credit and the pages (ids
    // from the ledger key), the settlement; numbered in the contract's order.
    let credit = format!("credit.issued/{key}");
    let pages = format!("pages.granted/{key}");
    let settled = "change.settled/c1.1".to_string();
    let fault = "change.fault/c1.1/config/p1".to_string();
    let ids = until("four events", 20, async || {
        let (_, events) = api(&cloud, "GET", "/v1/webhooks/events", None).await;
        let ids: Vec<(String, u64)> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["event"]["id"].as_str().unwrap().to_string(),
                    e["event"]["seq"].as_u64().unwrap(),
                )
            })
            .collect();
        (ids.len() >= 4).then_some(ids)
    })
    .await;
    assert_eq!(
        ids,
        vec![
            (fault.clone(), 1),
            (credit.clone(), 2),
            (pages.clone(), 3),
            (settled.clone(), 4)
        ]
    );

    // The receiver is down: attempts fail and are retried.
    until("two failed attempts", 20, async || {
        let d = deliveries(&cloud, &credit).await;
        (d[0]["tries"].as_u64().unwrap() >= 2).then_some(())
    })
    .await;
    let d = deliveries(&cloud, &credit).await;
    assert_eq!(d[0]["state"], "pending");
    assert!(d[0]["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("refused"));
    // Up, answering 500: recorded with its status, still pending.
    rx.set(Mode::Fail);
    rx.up().await;
    until("a 500 recorded", 20, async || {
        let d = deliveries(&cloud, &credit).await;
        d[0]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["status"] == 500)
            .then_some(())
    })
    .await;
    // Too slow: the attempt times out (a replay makes it due now).
    rx.set(Mode::Slow);
    assert!(
        metric(
            &cloud.api,
            "platen_cloud_webhook_deliveries{state=\"pending\"}"
        )
        .await
            >= 4,
        "the outbox holds them"
    );
    let (s, v) = api(
        &cloud,
        "POST",
        "/v1/webhooks/replay",
        Some(json!({"event": credit})),
    )
    .await;
    assert_eq!((s, v["replayed"].as_u64()), (200, Some(1)), "{v}");
    until("a timeout recorded", 20, async || {
        let d = deliveries(&cloud, &credit).await;
        d[0]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["error"] == "no answer within the timeout")
            .then_some(())
    })
    .await;
    let (_, eps) = api(&cloud, "GET", "/v1/webhooks/endpoints", None).await;
    assert!(
        !eps[0]["failing_since"].is_null(),
        "marked failing after 5 in a row: {eps}"
    );
    // Back: everything since the contract began replayed at once and delivered, the
    // failing mark cleared.
    rx.set(Mode::Ok);
    let (s, v) = api(
        &cloud,
        "POST",
        "/v1/webhooks/replay",
        Some(json!({"since": "2020-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!((s, v["replayed"].as_u64()), (200, Some(4)), "{v}");
    let (s, _) = api(
        &cloud,
        "POST",
        "/v1/webhooks/replay",
        Some(json!({"event": credit, "since": "2020-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(s, 400, "one or the other");
    for event in [&fault, &credit, &pages, &settled] {
        until("delivered", 20, async || {
            let d = deliveries(&cloud, event).await;
            (d[0]["state"] == "delivered").then_some(())
        })
        .await;
    }
    let (_, eps) = api(&cloud, "GET", "/v1/webhooks/endpoints", None).await;
    assert!(eps[0]["failing_since"].is_null(), "{eps}");
    // The metrics: attempts by outcome, an empty outbox.
    let m = |series: &'static str| metric(&cloud.api, series);
    assert!(
        m("platen_cloud_webhook_attempts_total{outcome=\"failed\"}").await >= 5,
        "failed attempts counted"
    );
    assert!(m("platen_cloud_webhook_attempts_total{outcome=\"delivered\"}").await >= 4);
    assert_eq!(
        m("platen_cloud_webhook_deliveries{state=\"pending\"}").await,
        0
    );
    let (_, delivered) = api(
        &cloud,
        "GET",
        "/v1/webhooks/deliveries?state=delivered",
        None,
    )
    .await;
    assert_eq!(delivered.as_array().unwrap().len(), 4, "{delivered}");

    // What the billing system got: the ledger's amount, the event's id and sequence.
    let got = rx.got();
    let body: Value = serde_json::from_str(
        &got.iter()
            .rev()
            .find(|g| g.id == credit)
            .expect("the credit arrived")
            .body,
    )
    .unwrap();
    assert_eq!(body["type"], "credit.issued");
    assert_eq!(body["data"]["amount_minor"], ledger["fee_credit"]);
    assert_eq!(body["data"]["currency"], "EUR");
    assert_eq!(body["data"]["event_id"], credit.as_str());
    assert_eq!(body["data"]["contract_seq"], 2);

    // The finance export of the period: the entry in minor units and as a decimal,
    // totals per currency equal to the ledger; another tenant sees none of it.
    let period = key.rsplit('/').next().unwrap();
    let (s, x) = api(
        &cloud,
        "GET",
        &format!("/v1/ledger/export?period={period}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{x}");
    let fee = ledger["fee_credit"].as_u64().unwrap();
    assert_eq!(x["totals"][0]["currency"], "EUR");
    assert_eq!(x["totals"][0]["amount_minor"], fee);
    assert_eq!(
        x["totals"][0]["amount"],
        format!("{}.{:02}", fee / 100, fee % 100)
    );
    assert_eq!(x["rows"][0]["key"], key.as_str());
    let csv = reqwest::Client::new()
        .get(format!(
            "{}/v1/ledger/export?period={period}&format=csv",
            cloud.api
        ))
        .bearer_auth(test_token("operator"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "header, the entry, the EUR total: {csv}");
    assert!(
        lines[2].starts_with(&format!(",total,,,,{period},EUR,{fee},")),
        "{csv}"
    );
    let (s, other) = http_json_as(
        "GET",
        &format!("{}/v1/ledger/export?period={period}", cloud.api),
        None,
        Some("tenant:other"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(other["rows"], json!([]), "{other}");

    // The cloud dies in the middle of a delivery: after its restart the event is sent
    // again under the same id (at least once; the receiver deduplicates on the id).
    let before = rx.got().iter().filter(|g| g.id == pages).count();
    let from = rx.got().len();
    rx.set(Mode::Lingering);
    api(
        &cloud,
        "POST",
        "/v1/webhooks/replay",
        Some(json!({"event": pages})),
    )
    .await;
    until("a delivery in flight", 20, async || {
        rx.in_flight(&pages, from).then_some(())
    })
    .await;
    cloud.crash();
    rx.set(Mode::Ok);
    cloud.restart();
    until("delivered after the restart", 40, async || {
        let (s, v) = api(&cloud, "GET", &format!("/v1/webhooks/events/{pages}"), None).await;
        (s == 200 && v["deliveries"][0]["state"] == "delivered").then_some(())
    })
    .await;
    let after = rx.got().iter().filter(|g| g.id == pages).count();
    assert!(
        after >= before + 2,
        "sent in the crash and again after it: {before} then {after}"
    );

    // Everything so far verifies under the first secret, with the reference library.
    let so_far = rx.got();
    assert_eq!(
        verify_independently(dir.path(), &secret1, &so_far),
        so_far.len()
    );

    // Rotation: the new secret signs at once, the old one still does for a while.
    let (s, v) = api(
        &cloud,
        "POST",
        "/v1/webhooks/endpoints/billing/rotate",
        Some(json!({"keep_old_secs": 3600})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let secret2 = v["secret"].as_str().unwrap().to_string();
    assert_ne!(secret1, secret2);
    api(
        &cloud,
        "POST",
        "/v1/webhooks/replay",
        Some(json!({"event": credit})),
    )
    .await;
    let n = so_far.len();
    let rotated = until("a delivery after the rotation", 20, async || {
        let got = rx.got();
        (got.len() > n).then(|| got[n..].to_vec())
    })
    .await;
    assert_eq!(rotated[0].signature.split(' ').count(), 2, "two signatures");
    assert_eq!(verify_independently(dir.path(), &secret2, &rotated), 1);
    assert_eq!(verify_independently(dir.path(), &secret1, &rotated), 1);
    let _ = &provider;
}

/// `printer.stale` (#21): a printer under contract that stops answering its agent,
/// and later an agent that stops sending, each go stale once — one event per quiet
/// spell, however many sweeps see it — and the events say which side went quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_printer_that_goes_quiet_is_reported_stale_once_per_spell() {
    const STALE_AFTER: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let mut sim = Sim::start(&["p1"]);
    let provider = ProviderProc::start();
    let cloud = CloudProc::start_with(
        broker.port,
        &dir.path().join("cloud"),
        &provider.url,
        &["--stale-after-secs", &STALE_AFTER.to_string()],
    );
    let mut agent = AgentProc::start(
        dir.path(),
        &(agent_toml(
            "gw-s",
            broker.port,
            &dir.path().join("state"),
            &[PrinterEntry::new("p1", sim.addr("p1"))],
        ) + "\n[telemetry]\ninterval_secs = 1\nheartbeat_secs = 1\n"),
    );
    let mut rx = Receiver::new();
    rx.up().await;
    until("the cloud answers", 30, async || {
        let (s, _) = api(&cloud, "GET", "/v1/webhooks/endpoints", None).await;
        (s == 200).then_some(())
    })
    .await;
    let (s, v) = api(
        &cloud,
        "POST",
        "/v1/webhooks/endpoints",
        Some(json!({"id": "fleet", "url": rx.url(), "events": ["printer.stale"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    for (path, body) in [
        ("/v1/tenants", json!({"id": "acme", "name": "Acme"})),
        (
            "/v1/plans",
            json!({"id": "basic", "name": "Basic", "service": {"kind": "basic", "monthly_fee": FEE}}),
        ),
        (
            "/v1/contracts",
            json!({"id": "c1", "tenant": "acme", "printers": ["p1"], "plan": "basic",
                   "time_zone": "UTC", "currency": "EUR"}),
        ),
    ] {
        let (s, v) = api(&cloud, "POST", path, Some(body)).await;
        assert_eq!(s, 201, "{path}: {v}");
    }
    until("telemetry", 30, async || {
        let (_, v) = api(&cloud, "GET", "/v1/contracts/c1/usage", None).await;
        (v["seen"]["telemetry"] == "complete").then_some(())
    })
    .await;
    let stale = |rx: &Receiver| -> Vec<Value> {
        rx.got()
            .iter()
            .map(|g| serde_json::from_str::<Value>(&g.body).unwrap())
            .collect()
    };

    // The printer stops answering: the agent keeps sending its last reading.
    sim.command("drop p1 1000000");
    let first = until("stale: not answering", 30, async || {
        stale(&rx).into_iter().next()
    })
    .await;
    assert_eq!(first["type"], "printer.stale");
    let d = &first["data"];
    assert_eq!(
        (&d["printer"], &d["contract"], &d["agent"], &d["cause"]),
        (
            &json!("p1"),
            &json!("c1"),
            &json!("gw-s"),
            &json!("printer_not_answering")
        ),
        "{first}"
    );
    assert!(d["last_reading_at"].is_string(), "{first}");
    assert_eq!(d["stale_after_secs"], STALE_AFTER);

    // It answers again, then the agent dies: a second spell, its own event.
    sim.command("drop p1 0");
    until("fresh telemetry", 30, async || {
        let (_, v) = api(&cloud, "GET", "/v1/contracts/c1/usage", None).await;
        let read = v["detail"]["printers"]["p1"]["samples"]
            .as_u64()
            .unwrap_or(0);
        (read >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.kill9();
    let second = until("stale: agent silent", 30, async || {
        stale(&rx).into_iter().nth(1)
    })
    .await;
    assert_eq!(second["data"]["cause"], "agent_silent", "{second}");
    assert_ne!(second["data"]["event_id"], first["data"]["event_id"]);
    assert!(
        second["data"]["last_reading_at"].as_str() > first["data"]["last_reading_at"].as_str(),
        "a later reading: {first} {second}"
    );

    // Swept many times more: nothing new, and each event went out once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = stale(&rx);
    assert_eq!(got.len(), 2, "{got:#?}");
    let (_, events) = api(&cloud, "GET", "/v1/webhooks/events", None).await;
    let stale_ids: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == "printer.stale")
        .map(|e| e["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        stale_ids,
        [&first["data"]["event_id"], &second["data"]["event_id"]],
        "{events}"
    );
    let _ = (&sim, &provider, &broker);
}
