//! End to end: contracts → config publication → agent apply/read-back → provider
//! setup → fault determination → compensation, across real processes (Mosquitto, the
//! agent, the simulator, `platen-provider`, `platen-cloud serve`) through the HTTP API.

use platen_cloud::billing::compensation::{ceil_share, fee_credit};
use platen_cloud::billing::period;
use platen_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

const SYS_LOCATION: &str = "1.3.6.1.2.1.1.6.0";
const FEE: u64 = 1_000_000_000;
const CAP: u64 = 100_000;

struct World {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    sim: Sim,
    provider: ProviderProc,
    cloud: CloudProc,
    agent: AgentProc,
}

fn world(sim_spec: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&[sim_spec]);
    let provider = ProviderProc::start();
    let cloud = CloudProc::start(broker.port, &dir.path().join("cloud"), &provider.url);
    let agent = AgentProc::start(
        dir.path(),
        &agent_toml(
            "gw-c",
            broker.port,
            &dir.path().join("state"),
            &[PrinterEntry::new("p1", sim.addr("p1"))],
        ),
    );
    World {
        dir,
        broker,
        sim,
        provider,
        cloud,
        agent,
    }
}

async fn post(api: &str, path: &str, body: Value) -> Value {
    let (status, v) = http_json("POST", &format!("{api}{path}"), Some(body)).await;
    assert_eq!(status, 201, "POST {path}: {v}");
    v
}

async fn get(api: &str, path: &str) -> Value {
    let (status, v) = http_json("GET", &format!("{api}{path}"), None).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

async fn create(w: &World, contract: &str, service: Value) {
    let api = &w.cloud.api;
    let (s, _) = http_json(
        "POST",
        &format!("{api}/v1/tenants"),
        Some(json!({"id": "acme", "name": "Acme"})),
    )
    .await;
    assert!(s == 201 || s == 409);
    let plan = format!("plan-{contract}");
    post(
        api,
        "/v1/plans",
        json!({
            "id": plan, "name": "Test plan", "service": service,
            "config_template": {"sysLocation": "Room 42", "sysContact": "ops@acme.example"}
        }),
    )
    .await;
    post(
        api,
        "/v1/contracts",
        json!({
            "id": contract, "tenant": "acme", "printers": ["p1"], "plan": plan,
            "time_zone": "Europe/Berlin", "currency": "EUR"
        }),
    )
    .await;
}

/// Poll the contract until `pred` holds on its first change.
async fn wait_change(
    w: &World,
    contract: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (status, v) = http_json(
            "GET",
            &format!("{}/v1/contracts/{contract}", w.cloud.api),
            None,
        )
        .await;
        if status == 200 && pred(&v["changes"][0]) {
            return v;
        }
        if tokio::time::Instant::now() > end {
            let tl = get(&w.cloud.api, &format!("/v1/contracts/{contract}/timeline")).await;
            panic!(
                "{contract}: never {what}\nstatus: {v:#}\ntimeline: {tl:#}\nagent log:\n{}",
                w.agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ts(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

/// The single ledger entry of `contract` equals the formula applied to the evidence.
async fn check_compensation(w: &World, contract: &str, status: &Value) -> Value {
    let change = &status["changes"][0];
    let (t0, t1) = (ts(&change["effective_at"]), ts(&change["completed_at"]));
    let ledger = get(&w.cloud.api, &format!("/v1/ledger?contract={contract}")).await;
    let entries = ledger.as_array().unwrap();
    assert_eq!(entries.len(), 1, "one ledger entry: {ledger:#}");
    let e = &entries[0];
    let u = (t1 - t0).num_seconds() as u64;
    let p = period::containing(chrono_tz::Europe::Berlin, t0);
    assert!(p.contains(t1), "test assumes T0 and T1 in one period");
    assert!(u >= 1, "the fault made setup late: U = {u} s");
    assert_eq!(e["unavailable_secs"], u);
    assert_eq!(e["period_secs"], p.secs());
    assert_eq!(e["fee_credit"], fee_credit(FEE, u, p.secs()), "{e:#}");
    assert_eq!(e["key"], format!("{contract}.1/{}", p.label()));
    assert_eq!(ts(&e["from"]), t0);
    assert_eq!(ts(&e["to"]), t1);
    e.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_setting_later_writable_is_compensated_by_the_formula() {
    let mut w = world(&format!("p1,read-only={SYS_LOCATION}"));
    create(
        &w,
        "c1",
        json!({"kind": "flat_rate_print", "monthly_fee": FEE, "page_cap": CAP}),
    )
    .await;
    let s = wait_change(&w, "c1", "a config fault", |c| !c["config_fault"].is_null()).await;
    assert!(
        s["changes"][0]["config_fault"]
            .as_str()
            .unwrap()
            .contains("sysLocation: 403"),
        "{s:#}"
    );
    assert_eq!(s["changes"][0]["state"], "setting_up");
    // The fault clears; the cloud re-publishes (a newer version) and the agent verifies it.
    w.sim.command(&format!("writable p1 {SYS_LOCATION}"));
    let s = wait_change(&w, "c1", "settled", |c| c["state"] == "settled").await;
    assert!(s["changes"][0]["service_fault"].is_null());
    let versions = s["changes"][0]["printers"]["p1"]["versions"]
        .as_array()
        .unwrap()
        .len();
    assert!(versions >= 2, "re-published after the failure: {s:#}");
    let e = check_compensation(&w, "c1", &s).await;
    let u = e["unavailable_secs"].as_u64().unwrap();
    let pages = ceil_share(CAP, u, e["period_secs"].as_u64().unwrap());
    assert_eq!(e["extra_pages"]["pages"], pages);
    // The contract shows the raised page cap for this period.
    let cap = s["page_caps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["period"]
                == e["period"]["year"].to_string()
                    + "-"
                    + &format!("{:02}", e["period"]["month"].as_u64().unwrap())
        })
        .cloned();
    let cap = cap.unwrap_or_else(|| panic!("no page cap row: {s:#}"));
    assert_eq!(cap["total"], CAP + pages);
    assert_eq!(s["credits_total"], e["fee_credit"]);
    // The evidence: the refused report, the fault, the confirmation, the arithmetic.
    let tl = get(&w.cloud.api, "/v1/contracts/c1/timeline").await;
    let events: Vec<&str> = tl
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    // The same timeline read in pages of three, following `Platen-Next-After`.
    let mut paged: Vec<serde_json::Value> = Vec::new();
    let mut after: Option<String> = None;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    loop {
        let mut url = format!("{}/v1/contracts/c1/timeline?limit=3", w.cloud.api);
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let r = client
            .get(&url)
            .bearer_auth(test_token("operator"))
            .send()
            .await
            .unwrap();
        after = r
            .headers()
            .get("platen-next-after")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Vec<serde_json::Value> = r.json().await.unwrap();
        assert!(page.len() <= 3);
        paged.extend(page);
        if after.is_none() {
            break;
        }
    }
    assert_eq!(paged.len(), tl.as_array().unwrap().len(), "{paged:#?}");
    for needed in [
        "change_requested",
        "config_published",
        "report_received",
        "config_fault",
        "config_confirmed",
        "service_confirmed",
        "setup_completed",
        "compensation",
    ] {
        assert!(
            events.contains(&needed),
            "timeline lacks {needed}: {events:?}"
        );
    }
    let comp = tl
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "compensation")
        .unwrap();
    assert!(comp["part"]["fee_arithmetic"]
        .as_str()
        .unwrap()
        .starts_with(&format!("round_half_up({FEE} × {u} s")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_then_up_is_a_service_fault_and_ships_consumables() {
    let mut w = world("p1");
    w.provider.command("down");
    create(
        &w,
        "c2",
        json!({"kind": "consumables_delivery", "monthly_fee": FEE, "item": "toner-k"}),
    )
    .await;
    let s = wait_change(&w, "c2", "a service fault", |c| {
        !c["service_fault"].is_null()
    })
    .await;
    assert!(
        s["changes"][0]["service_fault"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{s:#}"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    w.provider.command("up");
    let s = wait_change(&w, "c2", "settled", |c| c["state"] == "settled").await;
    assert!(s["changes"][0]["config_fault"].is_null(), "{s:#}");
    let e = check_compensation(&w, "c2", &s).await;
    assert_eq!(e["shipment"]["quantity"], 1, "ceil(U / 7 days)");
    let (_, shipped) = http_json("GET", &format!("{}/v1/shipments", w.provider.url), None).await;
    let shipped = shipped.as_array().unwrap();
    assert_eq!(shipped.len(), 1, "{shipped:?}");
    assert_eq!(shipped[0]["key"], e["key"]);
    assert_eq!(shipped[0]["item"], "toner-k");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_reports_and_a_cloud_crash_pay_once() {
    let mut w = world(&format!("p1,read-only={SYS_LOCATION}"));
    let tap = Tap::start(
        w.broker.port,
        "report-tap",
        &["platen/v1/acme/p1/config/report"],
    )
    .await;
    create(&w, "c3", json!({"kind": "basic", "monthly_fee": FEE})).await;
    wait_change(&w, "c3", "a config fault", |c| !c["config_fault"].is_null()).await;
    // Crash the cloud mid-way; it continues from sled.
    w.cloud.crash_and_restart();
    w.sim.command(&format!("writable p1 {SYS_LOCATION}"));
    let s = wait_change(&w, "c3", "settled", |c| c["state"] == "settled").await;
    let first = check_compensation(&w, "c3", &s).await;
    // Every report the agent sent, delivered three more times.
    let payloads = tap.payloads();
    assert!(payloads.len() >= 2, "captured {} reports", payloads.len());
    for _ in 0..3 {
        for p in &payloads {
            tap.publish("platen/v1/acme/p1/config/report", p.clone())
                .await;
        }
    }
    // And once more a crash after settlement.
    tokio::time::sleep(Duration::from_millis(800)).await;
    w.cloud.crash_and_restart();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = get(&w.cloud.api, "/v1/contracts/c3").await;
    let again = check_compensation(&w, "c3", &s).await;
    assert_eq!(first, again, "the ledger entry never changes");
    let tl = get(&w.cloud.api, "/v1/contracts/c3/timeline").await;
    let count = |ev: &str| {
        tl.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == ev)
            .count()
    };
    assert_eq!(count("compensation"), 1);
    assert_eq!(
        count("report_received"),
        payloads.len(),
        "each report entered once: {tl:#}"
    );
    let _ = &w.dir;
}
