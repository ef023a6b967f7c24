//! Plan migrations end to end: the simulator's page counter → agent telemetry →
//! Mosquitto → `platen-cloud serve --catalog` (usage) → the rules → contract change →
//! config publication → agent apply and read-back → compensation when a fault
//! delays it; scheduled migrations across a cloud crash. Real processes throughout.

use platen_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

const PAGE_COUNTER: &str = "1.3.6.1.2.1.43.10.2.1.4.1.1";
const CONSOLE_DISABLE: &str = "1.3.6.1.2.1.43.5.1.1.13.1";
const FAST: &str = "\n[telemetry]\ninterval_secs = 1\nheartbeat_secs = 60\n";

const CATALOG: &str = r#"
[[plan]]
id = "big"
name = "Mono 1000"
groups = ["flat"]
service = { kind = "flat_rate_print", monthly_fee = 4900, page_cap = 1000 }
config_template = { sysContact = "billing@acme.example" }

[[plan]]
id = "small"
name = "Mono 500"
groups = ["flat"]
service = { kind = "flat_rate_print", monthly_fee = 2900, page_cap = 500 }
config_template = { sysContact = "billing@acme.example" }

[[plan]]
id = "color"
name = "Colour 2000"
groups = ["flat"]
service = { kind = "flat_rate_print", monthly_fee = 9900, page_cap = 2000 }
config_template = { sysContact = "billing@acme.example", prtConsoleDisable = "disabled" }

[[plan]]
id = "later"
name = "Mono 3000"
service = { kind = "flat_rate_print", monthly_fee = 12900, page_cap = 3000 }

[[rule]]
id = "default"
from = "any"
to = "any"
allow = "immediate"

[[rule]]
id = "small_over_cap"
from = "plan:big"
to = "plan:small"
when = ["used > target.page_cap"]
refuse = { code = "usage_over_target_cap", message = "more pages printed than the target plan allows" }

[[rule]]
id = "small_usage_unknown"
from = "plan:big"
to = "plan:small"
when = ["telemetry = none"]
refuse = { code = "usage_unknown", message = "no telemetry this period" }

[[rule]]
id = "to_later"
from = "any"
to = "plan:later"
allow = "after 4s"
"#;

struct World {
    dir: tempfile::TempDir,
    _broker: Mosquitto,
    sim: Sim,
    _provider: ProviderProc,
    cloud: CloudProc,
    agent: AgentProc,
}

/// Everything running; reseller r1 looks after tenant acme, r2 after nobody; contract
/// c1 on plan `big` for printer p1.
async fn world(sim_spec: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&[sim_spec]);
    let provider = ProviderProc::start();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let cloud = CloudProc::start_with(
        broker.port,
        &dir.path().join("cloud"),
        &provider.url,
        &["--catalog", catalog.to_str().unwrap()],
    );
    let agent = AgentProc::start(
        dir.path(),
        &format!(
            "{}{FAST}",
            agent_toml(
                "gw-m",
                broker.port,
                &dir.path().join("state"),
                &[PrinterEntry::new("p1", sim.addr("p1"))],
            )
        ),
    );
    let api = &cloud.api;
    for (path, body) in [
        ("/v1/resellers", json!({"id": "r1", "name": "PrintPartner"})),
        (
            "/v1/resellers",
            json!({"id": "r2", "name": "Other partner"}),
        ),
        (
            "/v1/tenants",
            json!({"id": "acme", "name": "Acme", "reseller": "r1"}),
        ),
        (
            "/v1/contracts",
            json!({"id": "c1", "tenant": "acme", "printers": ["p1"], "plan": "big",
                   "time_zone": "Europe/Berlin", "currency": "EUR"}),
        ),
    ] {
        let (s, v) = http_json("POST", &format!("{api}{path}"), Some(body)).await;
        assert_eq!(s, 201, "POST {path}: {v}");
    }
    World {
        dir,
        _broker: broker,
        sim,
        _provider: provider,
        cloud,
        agent,
    }
}

impl World {
    async fn get(&self, path: &str) -> Value {
        let (s, v) = http_json("GET", &format!("{}{path}", self.cloud.api), None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    async fn migrate(&self, actor: Option<&str>, body: Value) -> (u16, Value) {
        http_json_as(
            "POST",
            &format!("{}/v1/migrations", self.cloud.api),
            Some(body),
            actor,
        )
        .await
    }

    /// Poll `path` until `pred` holds (40 s).
    async fn wait(&self, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let (s, v) = http_json("GET", &format!("{}{path}", self.cloud.api), None).await;
            if s == 200 && pred(&v) {
                return v;
            }
            if tokio::time::Instant::now() > end {
                let tl = self.get("/v1/contracts/c1/timeline").await;
                panic!(
                    "never {what}: {v:#}\ntimeline: {tl:#}\nagent log:\n{}",
                    self.agent.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The contract's change `seq` once `pred` holds on it.
    async fn wait_change(&self, seq: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait("/v1/contracts/c1", what, |v| {
            v["changes"].get(seq - 1).is_some_and(&pred)
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_from_telemetry_refuses_a_downgrade_and_an_upgrade_reaches_the_printer() {
    let mut w = world("p1").await;
    let api = w.cloud.api.clone();
    // The agent's first reading is the baseline; the printer then prints 600 pages.
    let u = w
        .wait("/v1/contracts/c1/usage", "a first reading", |v| {
            v["seen"]["telemetry"] == "complete"
        })
        .await;
    let base = u["detail"]["printers"]["p1"]["to_value"].as_u64().unwrap();
    w.sim
        .command(&format!("set p1 {PAGE_COUNTER}|65|{}", base + 600));
    w.wait("/v1/contracts/c1/usage", "600 pages", |v| {
        v["seen"]["used"] == 600
    })
    .await;

    // Who asks: a token is required; a reseller acts only for its own tenants (another's
    // answers as a tenant that does not exist).
    let ask_small = json!({"tenant": "acme", "plan": "small"});
    let (s, v) = w.migrate(None, ask_small.clone()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    for who in ["reseller:r2", "tenant:other"] {
        let (s, v) = w.migrate(Some(who), ask_small.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("unknown_tenant")),
            "{who}: {v}"
        );
    }

    // A dry run explains and changes nothing (CLI, as the reseller).
    let (code, out, err) = cloud_cli_as(
        &api,
        "reseller:r1",
        &[
            "migrate",
            "--tenant",
            "acme",
            "--plan",
            "small",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["outcome"], "dry_run");
    assert_eq!(d["rule"], "small_over_cap");
    assert_eq!(d["decision"], "refuse");
    assert_eq!(d["code"], "usage_over_target_cap");
    assert_eq!(d["usage"]["used"], 600);
    assert_eq!(d["requested_by"], "reseller:r1");
    assert_eq!(w.get("/v1/migrations").await, json!([]), "nothing stored");

    // The real request is refused, with the rule and the usage it saw, and stored.
    let (s, v) = w.migrate(Some("reseller:r1"), ask_small.clone()).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "migration_refused");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("small_over_cap"));
    assert_eq!(v["migration"]["state"], "refused");
    assert_eq!(v["migration"]["usage"]["used"], 600);
    // No path around it: a dated contract change to the plan is refused too.
    let (s, v) = http_json(
        "POST",
        &format!("{api}/v1/contracts/c1/changes"),
        Some(json!({"plan": "small", "effective_at": "2020-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("use_migrations"))
    );
    assert_eq!(w.get("/v1/contracts/c1").await["plan"]["id"], "big");

    // The upgrade is allowed at once; the agent applies and verifies the new config.
    let (s, v) = w
        .migrate(
            Some("tenant:acme"),
            json!({"tenant": "acme", "plan": "color"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (v["rule"].as_str(), v["timing"].as_str()),
        (Some("default"), Some("immediate"))
    );
    assert_eq!(v["state"], "executed");
    assert_eq!(v["change_id"], "c1.2");
    let st = w
        .wait_change(2, "the migration's change completed", |c| {
            c["completed_at"].is_string()
        })
        .await;
    assert_eq!(st["plan"]["id"], "color");
    assert_eq!(st["changes"][1]["change"]["kind"], "plan_change");
    assert!(st["changes"][1]["config_fault"].is_null(), "{st:#}");
    let on_printer = snmpget("private", &w.sim.addr("p1").to_string(), CONSOLE_DISABLE).unwrap();
    assert!(
        on_printer.trim_end().ends_with("INTEGER: 4") || on_printer.contains("(4)"),
        "disabled(4) on the printer: {on_printer}"
    );
    let list = w.get("/v1/migrations?tenant=acme").await;
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2);
    assert!(
        states.contains(&"refused") && states.contains(&"executed"),
        "{states:?}"
    );
    drop(w.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_printer_turns_the_migration_into_a_compensation() {
    // prtConsoleDisable (only in the `color` plan) is refused until the fault clears.
    let mut w = world(&format!("p1,read-only={CONSOLE_DISABLE}")).await;
    w.wait_change(1, "the start completed", |c| c["completed_at"].is_string())
        .await;
    let (s, v) = w
        .migrate(Some("operator"), json!({"tenant": "acme", "plan": "color"}))
        .await;
    assert_eq!(s, 201, "{v}");
    w.wait_change(2, "a config fault", |c| c["config_fault"].is_string())
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.sim.command(&format!("writable p1 {CONSOLE_DISABLE}"));
    let st = w
        .wait_change(2, "settled", |c| c["state"] == "settled")
        .await;
    let ch = &st["changes"][1];
    let t0: chrono::DateTime<chrono::Utc> = ch["effective_at"].as_str().unwrap().parse().unwrap();
    let t1: chrono::DateTime<chrono::Utc> = ch["completed_at"].as_str().unwrap().parse().unwrap();
    assert!((t1 - t0).num_seconds() >= 2, "late by the fault: {ch:#}");
    let ledger = w.get("/v1/ledger?contract=c1").await;
    let e = ledger
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["change_id"] == "c1.2")
        .unwrap_or_else(|| panic!("a ledger entry for the migration: {ledger:#}"));
    assert_eq!(e["unavailable_secs"], (t1 - t0).num_seconds());
    assert!(e["extra_pages"]["pages"].as_u64().unwrap() >= 1, "{e:#}");
    assert_eq!(st["plan"]["id"], "color");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_migration_runs_at_its_time_after_a_cloud_crash() {
    let mut w = world("p1").await;
    let (s, v) = w
        .migrate(
            Some("tenant:acme"),
            json!({"tenant": "acme", "plan": "later"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (v["rule"].as_str(), v["state"].as_str()),
        (Some("to_later"), Some("scheduled"))
    );
    let due: chrono::DateTime<chrono::Utc> = v["effective_at"].as_str().unwrap().parse().unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    // Down before it is due, back after.
    w.cloud.crash();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(chrono::Utc::now() > due);
    w.cloud.restart();
    let m = w
        .wait(&format!("/v1/migrations/{id}"), "executed", |m| {
            m["state"] == "executed"
        })
        .await;
    assert_eq!(m["change_id"], "c1.2");
    let st = w.get("/v1/contracts/c1").await;
    assert_eq!(st["plan"]["id"], "later");
    assert_eq!(st["changes"].as_array().unwrap().len(), 2, "run once");
    let effective: chrono::DateTime<chrono::Utc> = st["changes"][1]["effective_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        effective, due,
        "effective at the rule's time, not at the restart"
    );
    // Restarting again does not run it twice.
    w.cloud.crash_and_restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = w
        .wait("/v1/contracts/c1", "the API back", |v| {
            v["plan"]["id"] == "later"
        })
        .await;
    assert_eq!(st["changes"].as_array().unwrap().len(), 2);
}

#[test]
fn catalog_check_prints_every_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[plan]]\nid = \"a\"\nname = \"A\"\nservice = { kind = \"basic\", monthly_fee = 1 }\n\n[[rule]]\nid = \"r\"\nfrom = \"plan:b\"\nto = \"any\"\nallow = \"soon\"\n",
    )
    .unwrap();
    let (code, out, err) = cloud_cli(
        "http://127.0.0.1:9",
        &["catalog", "check", bad.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}{err}");
    let file = bad.display().to_string();
    assert!(
        err.contains(&format!("{file}: error: no catch-all rule")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:6: error: rule \"r\": from: no plan b")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:6: error: rule \"r\": allow: \"soon\"")),
        "{err}"
    );
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/catalog.example.toml"
    );
    let (code, out, err) = cloud_cli("http://127.0.0.1:9", &["catalog", "check", example]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid: 4 plans, 9 rules, 0 warnings"), "{out}");
    let (code, _, err) = cloud_cli(
        "http://127.0.0.1:9",
        &["catalog", "check", "/nonexistent.toml"],
    );
    assert_eq!(code, 2, "{err}");
}
