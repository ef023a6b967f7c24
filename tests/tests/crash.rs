//! Crash harness (#6): SIGKILL the agent — then, in a second run, the cloud — at
//! random points while contract changes are being published, applied, read back and
//! reported, many times in a row; then let the system settle and check at the cloud:
//!
//! - every change settled, and the newest config version of every printer was
//!   reported applied (in the cloud's report store: a change may have been confirmed
//!   by an earlier version's report while the newest was still being applied) and is
//!   what the agent holds as completed (final status);
//! - no report was lost: every report id that crossed the broker, and every version
//!   the agent completed, is in the cloud's report store; the agent's outbox holds
//!   no report;
//! - duplicates were deduplicated: each report id entered each change's timeline
//!   exactly once, however often the broker delivered it;
//! - the ledger holds exactly what `compensation::decide` gives for each change's
//!   recorded evidence (T0, T1, fault) — no entry missing, none extra, none twice;
//! - every shipment in the ledger was ordered at the provider once, under its key;
//! - every migration scheduled during the run executed once, as one plan change to
//!   its target plan; the refused ones (asked before telemetry arrived) are stored.
//!
//! Real processes: Mosquitto, the simulator (three printers, 25 ms per request so a
//! kill lands inside applies; p2 refuses sysLocation until the end, so its changes
//! are config faults that are compensated — on toner delivery, so with shipments),
//! `platen-provider`, `platen-cloud serve --catalog` and the agent binary, which
//! sends telemetry every two seconds; migrations between two plans are asked for
//! throughout, scheduled two seconds ahead by the catalog's rule. Each run makes
//! `PLATEN_CRASH_KILLS` kills (default 20, the long run in the guide uses 200);
//! `PLATEN_CRASH_SEED` replays a run's timing.
//!
//! The third run (#20) has three cloud instances on one PostgreSQL (a server of the
//! test's own) sharing the report stream through `$share/platen-cloud/…`: each kill
//! takes a random instance, API requests go to a random one, and halfway through the
//! database is stopped for three seconds. The same checks hold: nothing lost,
//! nothing doubled, the ledger equal to the formula.

use chrono::{DateTime, Utc};
use platen_cloud::billing::compensation::{self, Decision};
use platen_cloud::model::ServiceKind;
use platen_e2e::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const SYS_LOCATION: &str = "1.3.6.1.2.1.1.6.0";
const PRINTERS: [&str; 3] = ["p1", "p2", "p3"];

/// The plans and migration rules of every run. c-p1 and c-p3 move between `basic`
/// and `basic-b` (scheduled two seconds ahead, and only once telemetry has reached
/// the cloud); c-p2 is on toner delivery, so its config faults are compensated with
/// shipments as well as credits.
const CATALOG: &str = r#"
[[plan]]
id = "basic"
name = "Basic"
service = { kind = "basic", monthly_fee = 1000000000 }
[plan.config_template]
sysLocation = "Room 42"
sysContact = "ops@acme.example"

[[plan]]
id = "basic-b"
name = "Basic, the other one"
service = { kind = "basic", monthly_fee = 1000000000 }
[plan.config_template]
sysLocation = "Room 42"
sysContact = "ops@acme.example"

[[plan]]
id = "toner"
name = "Toner delivery"
service = { kind = "consumables_delivery", monthly_fee = 1000000000, item = "toner-k" }
[plan.config_template]
sysLocation = "Room 42"
sysContact = "ops@acme.example"

[[rule]]
id = "later"
from = "any"
to = "any"
allow = "after 2s"

[[rule]]
id = "usage_unknown"
from = "any"
to = "any"
when = ["telemetry = none"]
refuse = { code = "usage_unknown", message = "no telemetry yet" }
"#;

/// The contract of each printer and its first plan.
fn first_plan(printer: &str) -> &'static str {
    if printer == "p2" {
        "toner"
    } else {
        "basic"
    }
}

/// What a plan of [`CATALOG`] sells, for the formula.
fn service_of(plan: &str) -> ServiceKind {
    let catalog = platen_cloud::plans::catalog::Catalog::parse(CATALOG).expect("test catalog");
    let id: platen_protocol::Id = plan.parse().expect("plan id");
    catalog.plans[&id].service.clone()
}

/// A small deterministic generator (xorshift64*): the seed is printed, so a failing
/// run's kill timing can be replayed with `PLATEN_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("PLATEN_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("crash harness seed: PLATEN_CRASH_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn kills() -> usize {
    std::env::var("PLATEN_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Agent,
    Cloud,
    /// One of three cloud instances on one PostgreSQL, at random.
    Instance,
}

/// Cloud instances of the instance run.
const INSTANCES: usize = 3;

/// Their claim lease: how long a dead instance's changes wait for another.
const LEASE_SECS: u64 = 3;

struct World {
    dir: tempfile::TempDir,
    broker_port: u16,
    _broker: Mosquitto,
    sim: Sim,
    provider: ProviderProc,
    /// One cloud, or [`INSTANCES`] on one database.
    clouds: Vec<CloudProc>,
    /// The instance API requests go to.
    front: usize,
    /// The instances' database server.
    pg: Option<platen_e2e::postgres::Postgres>,
    agent: AgentProc,
    tap: Tap,
}

async fn world(victim: Victim) -> World {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&[
        "p1,delay-ms=25",
        &format!("p2,delay-ms=25,read-only={SYS_LOCATION}"),
        "p3,delay-ms=25",
    ]);
    let provider = ProviderProc::start();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, CATALOG).expect("catalog file");
    let catalog = catalog.to_str().expect("utf-8 path");
    let (clouds, pg) = if victim == Victim::Instance {
        let pg = platen_e2e::postgres::Postgres::start();
        let url = pg.fresh_db("instances");
        let clouds = (1..=INSTANCES)
            .map(|i| {
                CloudProc::start_instance(
                    broker.port,
                    &dir.path().join(format!("cloud-{i}")),
                    &provider.url,
                    (&url, &format!("platen-cloud-{i}")),
                    &[
                        "--catalog",
                        catalog,
                        "--claim-lease-secs",
                        &LEASE_SECS.to_string(),
                    ],
                )
            })
            .collect();
        (clouds, Some(pg))
    } else {
        let cloud = CloudProc::start_with(
            broker.port,
            &dir.path().join("cloud"),
            &provider.url,
            &["--catalog", catalog],
        );
        (vec![cloud], None)
    };
    let tap = Tap::start(
        broker.port,
        "crash-report-tap",
        &["platen/v1/acme/+/config/report"],
    )
    .await;
    let printers: Vec<PrinterEntry> = PRINTERS
        .iter()
        .map(|p| PrinterEntry::new(p, sim.addr(p)))
        .collect();
    // Telemetry flows all the time: migrations are decided on it.
    let agent = AgentProc::start(
        dir.path(),
        &(agent_toml(
            "gw-crash",
            broker.port,
            &dir.path().join("state"),
            &printers,
        ) + "\n[telemetry]\ninterval_secs = 2\nheartbeat_secs = 60\n"),
    );
    World {
        dir,
        broker_port: broker.port,
        _broker: broker,
        sim,
        provider,
        clouds,
        front: 0,
        pg,
        agent,
        tap,
    }
}

async fn api(w: &World, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    http_json(method, &format!("{}{path}", w.clouds[w.front].api), body).await
}

/// Wait until the cloud's API answers (after a start or a restart).
async fn cloud_up(w: &World) {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ok = reqwest::get(format!("{}/healthz", w.clouds[w.front].api))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(tokio::time::Instant::now() < end, "cloud never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn contracts(w: &World) {
    cloud_up(w).await;
    let (s, v) = api(
        w,
        "POST",
        "/v1/tenants",
        Some(json!({"id": "acme", "name": "Acme"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    for p in PRINTERS {
        let (s, v) = api(
            w,
            "POST",
            "/v1/contracts",
            Some(json!({
                "id": format!("c-{p}"), "tenant": "acme", "printers": [p], "plan": first_plan(p),
                "time_zone": "Europe/Berlin", "currency": "EUR"
            })),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
}

/// An instance dies holding claims on open changes and stays down: the others take
/// them over once the lease has run out (measured), and the work goes on.
async fn takeover(w: &mut World, rng: &mut Rng) {
    let victim = rng.below(w.clouds.len() as u64) as usize;
    w.front = (victim + 1) % w.clouds.len();
    cloud_up(w).await;
    for p in PRINTERS {
        let (s, v) = api(
            w,
            "POST",
            &format!("/v1/contracts/c-{p}/changes"),
            Some(json!({"settings": {"sysContact": format!("takeover-{p}")}})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let pg = w.pg.as_ref().expect("the instances' database");
    let url = w.clouds[victim].store_url.clone().expect("store url");
    let db = url.rsplit('/').next().expect("database name");
    let owner = format!("platen-cloud-{}", victim + 1);
    // The moment of death, as if it had just claimed every open change.
    w.clouds[victim].crash();
    let held = pg.psql(
        db,
        &format!(
            "WITH c AS (UPDATE changes SET claimed_by = '{owner}', \
             claim_until = now() + interval '{LEASE_SECS} seconds' \
             WHERE NOT settled AND due_at IS NOT NULL RETURNING 1) SELECT count(*) FROM c"
        ),
    );
    let held: u64 = held.trim().parse().expect("count");
    assert!(held >= PRINTERS.len() as u64, "claimed {held}");
    let start = std::time::Instant::now();
    let left = |pg: &platen_e2e::postgres::Postgres| -> u64 {
        pg.psql(
            db,
            &format!("SELECT count(*) FROM changes WHERE claimed_by = '{owner}'"),
        )
        .trim()
        .parse()
        .expect("count")
    };
    while left(pg) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(LEASE_SECS + 15),
            "the dead instance's claims were never taken over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(LEASE_SECS * 1000 - 500),
        "taken over before the lease ran out: {took:?}"
    );
    eprintln!(
        "instance run: {held} claims of a dead instance taken over after {} ms (lease {LEASE_SECS} s)",
        took.as_millis()
    );
    w.clouds[victim].restart();
}

/// Migrations asked for during a run.
#[derive(Debug, Default)]
struct Asked {
    /// Ids of those scheduled (each must execute once).
    scheduled: Vec<String>,
    /// Refused because no telemetry had reached the cloud yet.
    refused: usize,
    /// Not stored: one was already pending, or the contract was on the plan already.
    skipped: usize,
}

/// Ask to move c-p1 or c-p3, at random, from `basic` to `basic-b` or back.
async fn ask_migration(w: &World, rng: &mut Rng, asked: &mut Asked) {
    let contract = format!("c-{}", ["p1", "p3"][rng.below(2) as usize]);
    let (s, v) = api(w, "GET", &format!("/v1/contracts/{contract}"), None).await;
    assert_eq!(s, 200, "{v}");
    let plan = if v["plan"]["id"] == "basic" {
        "basic-b"
    } else {
        "basic"
    };
    let (s, v) = api(
        w,
        "POST",
        "/v1/migrations",
        Some(json!({"tenant": "acme", "contract": contract, "plan": plan})),
    )
    .await;
    match (s, v["error"]["code"].as_str()) {
        (201, _) => {
            assert_eq!(v["state"], "scheduled", "{v}");
            asked
                .scheduled
                .push(v["id"].as_str().expect("id").to_string());
        }
        (422, Some("migration_refused")) => {
            assert_eq!(v["migration"]["rule"], "usage_unknown", "{v}");
            asked.refused += 1;
        }
        (409, Some("migration_pending")) | (422, Some("same_plan")) => asked.skipped += 1,
        other => panic!("migration of {contract} to {plan}: {other:?} {v}"),
    }
}

/// Wait until telemetry of the migrating contracts' printers has reached the cloud.
async fn telemetry_in(w: &World) {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    for c in ["c-p1", "c-p3"] {
        loop {
            let (s, v) = api(w, "GET", &format!("/v1/contracts/{c}/usage"), None).await;
            if s == 200 && v["seen"]["telemetry"] == "complete" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "no telemetry of {c}: {s} {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Kill `victim` `n` times at random points while changes and migrations keep
/// coming.
async fn kill_loop(
    w: &mut World,
    victim: Victim,
    n: usize,
    rng: &mut Rng,
    asked: &mut Asked,
) -> usize {
    let mut changes = 0;
    for i in 0..n {
        w.front = rng.below(w.clouds.len() as u64) as usize;
        if victim == Victim::Instance && i == n / 4 {
            takeover(w, rng).await;
        }
        if victim == Victim::Instance && i == n / 2 {
            // The database goes away for a few seconds under every instance.
            let pg = w.pg.as_mut().expect("the instances' database");
            pg.stop();
            tokio::time::sleep(Duration::from_secs(3)).await;
            pg.restart();
        }
        // New work before most kills: a settings change on a random contract.
        if rng.below(4) != 0 {
            cloud_up(w).await;
            let p = PRINTERS[rng.below(PRINTERS.len() as u64) as usize];
            let (s, v) = api(
                w,
                "POST",
                &format!("/v1/contracts/c-{p}/changes"),
                Some(json!({"settings": {"sysContact": format!("crash-{i}")}})),
            )
            .await;
            assert_eq!(s, 201, "change {i} on {p}: {v}");
            changes += 1;
        }
        if rng.below(2) == 0 {
            ask_migration(w, rng, asked).await;
        }
        // An apply of three settings at 25 ms per request takes ~250 ms; reports
        // follow within milliseconds: kill anywhere in and around that.
        tokio::time::sleep(rng.millis(0, 450)).await;
        let instance = rng.below(w.clouds.len() as u64) as usize;
        match victim {
            Victim::Agent => w.agent.kill9(),
            Victim::Cloud | Victim::Instance => w.clouds[instance].crash(),
        }
        tokio::time::sleep(rng.millis(0, 150)).await;
        match victim {
            Victim::Agent => w.agent.restart(),
            Victim::Cloud | Victim::Instance => w.clouds[instance].restart(),
        }
    }
    changes
}

fn ts(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// Every change of every contract, once all are settled.
async fn settled(w: &World) -> BTreeMap<String, Value> {
    let end = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut all = BTreeMap::new();
        let mut open = Vec::new();
        for p in PRINTERS {
            let (s, v) = api(w, "GET", &format!("/v1/contracts/c-{p}"), None).await;
            if s != 200 {
                open.push(format!("c-{p}: HTTP {s}"));
                continue;
            }
            all.insert(format!("c-{p}"), v.clone());
            for c in v["changes"].as_array().unwrap() {
                if c["state"] != "settled" {
                    open.push(format!("{} {}", c["id"], c["state"]));
                }
            }
        }
        if open.is_empty() {
            return all;
        }
        if tokio::time::Instant::now() > end {
            panic!(
                "never settled: {open:?}\nagent log tail:\n{}",
                tail(&w.agent.log())
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last 6,000 bytes or so of a log, cut at a character boundary.
fn tail(s: &str) -> &str {
    let mut i = s.len().saturating_sub(6000);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

struct Outcome {
    changes: usize,
    reports: usize,
    deliveries: usize,
    ledger: usize,
    shipments: usize,
    stored: usize,
}

async fn check(
    w: &mut World,
    contracts: &BTreeMap<String, Value>,
    first_deliveries: usize,
) -> Outcome {
    let mut outcome = Outcome {
        changes: 0,
        reports: 0,
        deliveries: 0,
        ledger: 0,
        shipments: 0,
        stored: 0,
    };
    // Reports that entered the cloud, from every timeline: each id exactly once.
    let mut entered: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut ids: BTreeSet<String> = BTreeSet::new();
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    // Ledger key → quantity, for every part that ships toner.
    let mut shipments: BTreeMap<String, u64> = BTreeMap::new();
    for (id, status) in contracts {
        let (s, tl) = api(w, "GET", &format!("/v1/contracts/{id}/timeline"), None).await;
        assert_eq!(s, 200, "{tl}");
        for e in tl.as_array().unwrap() {
            if e["event"] == "report_received" {
                let rid = e["report_id"].as_str().unwrap().to_string();
                // One report may be evidence for several open changes of the printer;
                // within one change it must enter once.
                entered
                    .entry(format!("{rid} in {}", e["change_id"]))
                    .or_default()
                    .push(e.clone());
                ids.insert(rid.clone());
            }
        }
        // The ledger: exactly the formula's parts for each change's evidence.
        let (s, ledger) = api(w, "GET", &format!("/v1/ledger?contract={id}"), None).await;
        assert_eq!(s, 200, "{ledger}");
        // Per key: the fee credit, the unavailable seconds, the toner shipped.
        let mut actual: BTreeMap<String, (u64, u64, Option<u64>)> = BTreeMap::new();
        for e in ledger.as_array().unwrap() {
            let key = e["key"].as_str().unwrap().to_string();
            let shipped = e["shipment"]["quantity"].as_u64();
            if let Some(q) = shipped {
                shipments.insert(key.clone(), q);
            }
            let prev = actual.insert(
                key.clone(),
                (
                    e["fee_credit"].as_u64().unwrap(),
                    e["unavailable_secs"].as_u64().unwrap(),
                    shipped,
                ),
            );
            assert!(prev.is_none(), "ledger key {key} twice");
        }
        let mut expected: BTreeMap<String, (u64, u64, Option<u64>)> = BTreeMap::new();
        for c in status["changes"].as_array().unwrap() {
            let service = service_of(c["plan"].as_str().expect("plan"));
            outcome.changes += 1;
            let change_id = c["id"].as_str().unwrap();
            // A customer-side config fault (the agent was down before publication) is
            // not compensated on this plan.
            let fault = (!c["config_fault"].is_null()
                && c["config_fault_cause"]["side"] != "customer")
                || !c["service_fault"].is_null();
            let t1 = ts(&c["completed_at"]);
            let decision = compensation::decide(&compensation::Input {
                service: &service,
                tz: chrono_tz::Europe::Berlin,
                t0: ts(&c["effective_at"]),
                t1: Some(t1),
                fault,
                now: Utc::now(),
            });
            match decision {
                Decision::Final { parts } => {
                    for part in parts {
                        expected.insert(
                            format!("{change_id}/{}", part.period.label()),
                            (
                                part.fee_credit,
                                part.unavailable_secs,
                                part.shipment.map(|s| s.quantity),
                            ),
                        );
                    }
                }
                Decision::NotOwed(_) => {}
                other => panic!("{change_id} completed but decided {other:?}"),
            }
            for (printer, ps) in c["printers"].as_object().unwrap() {
                assert!(
                    !ps["config_confirmed_at"].is_null(),
                    "{change_id}: {printer} never confirmed: {c:#}"
                );
                if let Some(v) = ps["versions"].as_array().and_then(|v| v.last()) {
                    let v = v.as_u64().unwrap();
                    let n = newest.entry(printer.clone()).or_default();
                    *n = (*n).max(v);
                }
            }
        }
        assert_eq!(actual, expected, "{id}: ledger ≠ formula\n{status:#}");
        outcome.ledger += actual.len();
    }
    for (rid, events) in &entered {
        assert_eq!(
            events.len(),
            1,
            "report {rid} entered the cloud more than once: {events:#?}"
        );
    }
    outcome.reports = ids.len();
    // Every shipment in the ledger ordered at the provider once, under its key.
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    let ordered: BTreeMap<String, u64> = loop {
        let (s, v) = http_json("GET", &format!("{}/v1/shipments", w.provider.url), None).await;
        assert_eq!(s, 200, "{v}");
        let orders = v.as_array().expect("shipments");
        let ordered: BTreeMap<String, u64> = orders
            .iter()
            .map(|o| {
                assert_eq!(o["item"], "toner-k", "{o}");
                (
                    o["key"].as_str().expect("key").to_string(),
                    o["quantity"].as_u64().expect("quantity"),
                )
            })
            .collect();
        assert_eq!(ordered.len(), orders.len(), "a key ordered twice: {v:#}");
        if ordered == shipments || tokio::time::Instant::now() > end {
            break ordered;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        ordered, shipments,
        "provider's orders ≠ the ledger's shipments"
    );
    outcome.shipments = ordered.len();
    // The newest version of every printer gets reported (a change may have been
    // confirmed by an earlier version's report while a newer one was still applying).
    let newest_ids: Vec<String> = PRINTERS
        .iter()
        .map(|p| format!("gw-crash:{p}:v{}", newest[*p]))
        .collect();
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    let crossed: BTreeSet<String> = loop {
        let crossed: BTreeSet<String> = w
            .tap
            .payloads()
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(p).expect("report JSON");
                v["report_id"].as_str().unwrap().to_string()
            })
            .collect();
        if newest_ids.iter().all(|id| crossed.contains(id)) {
            break crossed;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "newest versions {newest_ids:?} never reported\n{}",
            tail(&w.agent.log())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    outcome.deliveries = first_deliveries;
    // The agent's side: a graceful stop, then its store.
    assert_eq!(w.agent.terminate(), Some(0), "agent exit after SIGTERM");
    let store = platen_agent::store::Store::open(&w.agent.state_dir).expect("agent store");
    for p in PRINTERS {
        let id: platen_protocol::Id = p.parse().unwrap();
        let completed = store.completed(&id).unwrap();
        let want = newest[p];
        assert_eq!(
            completed, want,
            "{p}: agent completed v{completed}, newest v{want}"
        );
    }
    let left: Vec<_> = store
        .outbox_peek(10_000)
        .into_iter()
        .filter(|(_, e)| e.topic.ends_with("/config/report"))
        .collect();
    assert!(left.is_empty(), "reports left in the outbox: {left:?}");
    // The cloud's report store (read with `platen-cloud reports` once it is stopped):
    // every report that crossed the broker is there — also those no change looked at
    // (the cloud killed after publishing a version, before saving it, so the change
    // published again under a newer version; or a change already confirmed by an
    // earlier version's report).
    for c in &mut w.clouds {
        c.crash();
    }
    let out = std::process::Command::new(workspace_bin("platen-cloud"))
        .args(["--port", &w.broker_port.to_string(), "--state-dir"])
        .arg(w.dir.path().join("cloud"))
        .args(["--client-id", "crash-harness-reports", "reports"])
        .envs(
            w.clouds[0]
                .store_url
                .iter()
                .map(|u| ("PLATEN_STORE__URL", u)),
        )
        .output()
        .expect("platen-cloud reports");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("stored report JSON");
            let r = &v["report"];
            (
                r["report_id"].as_str().expect("report_id").to_string(),
                r["status"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    for rid in crossed.iter().chain(&ids) {
        assert!(
            stored.contains_key(rid),
            "report {rid} crossed the broker but is not in the cloud's store"
        );
    }
    for id in &newest_ids {
        assert_eq!(stored[id], "applied", "{id}: the newest version, applied");
    }
    outcome.stored = stored.len();
    outcome
}

/// Every migration of the run once none is scheduled any more: each one asked for
/// executed (none cancelled or superseded), the refused ones stored as refused.
async fn executed(w: &World, asked: &Asked) -> Vec<Value> {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let all = loop {
        let (s, v) = api(w, "GET", "/v1/migrations?tenant=acme&limit=1000", None).await;
        assert_eq!(s, 200, "{v}");
        let all = v.as_array().expect("migrations").clone();
        if all.iter().all(|m| m["state"] != "scheduled") {
            break all;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "migrations never executed: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let state = |id: &str| {
        all.iter()
            .find(|m| m["id"] == id)
            .map(|m| m["state"].as_str().unwrap_or("?"))
    };
    for id in &asked.scheduled {
        assert_eq!(state(id), Some("executed"), "migration {id}: {all:#?}");
    }
    let refused = all.iter().filter(|m| m["state"] == "refused").count();
    assert_eq!(refused, asked.refused, "refusals stored: {all:#?}");
    assert_eq!(all.len(), asked.scheduled.len() + asked.refused, "{all:#?}");
    all
}

/// Each executed migration made exactly one plan change, to its target plan, and
/// no plan changed otherwise.
fn check_migrations(contracts: &BTreeMap<String, Value>, migrations: &[Value]) {
    for (id, status) in contracts {
        let plan_changes: BTreeMap<String, String> = status["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter(|c| c["change"]["kind"] == "plan_change")
            .map(|c| {
                (
                    c["id"].as_str().expect("change id").to_string(),
                    c["plan"].as_str().expect("plan").to_string(),
                )
            })
            .collect();
        let made: BTreeMap<String, String> = migrations
            .iter()
            .filter(|m| m["contract"] == id.as_str() && m["state"] == "executed")
            .map(|m| {
                (
                    m["change_id"].as_str().expect("change_id").to_string(),
                    m["to_plan"].as_str().expect("to_plan").to_string(),
                )
            })
            .collect();
        let executed = migrations
            .iter()
            .filter(|m| m["contract"] == id.as_str() && m["state"] == "executed")
            .count();
        assert_eq!(made.len(), executed, "{id}: two migrations, one change");
        assert_eq!(
            plan_changes, made,
            "{id}: plan changes ≠ executed migrations"
        );
    }
}

/// Reports each cloud took in since it started (new and duplicate).
async fn reports_seen(w: &World) -> Vec<u64> {
    let mut out = Vec::new();
    for c in &w.clouds {
        out.push(
            metric(&c.api, "platen_cloud_reports_total{outcome=\"new\"}").await
                + metric(&c.api, "platen_cloud_reports_total{outcome=\"duplicate\"}").await,
        );
    }
    out
}

async fn crash_run(victim: Victim) {
    let n = kills();
    let mut rng = Rng::from_env();
    let mut w = world(victim).await;
    contracts(&w).await;
    let mut asked = Asked::default();
    // Asked before any telemetry can have arrived: refused (usage unknown), most
    // likely; then the kills start once telemetry is in, so migrations are scheduled
    // and executed through them in every run (however slow the machine).
    ask_migration(&w, &mut rng, &mut asked).await;
    telemetry_in(&w).await;
    let changes = kill_loop(&mut w, victim, n, &mut rng, &mut asked).await;
    // Leave everything running; p2 becomes writable so its faults can complete.
    cloud_up(&w).await;
    w.sim.command(&format!("writable p2 {SYS_LOCATION}"));
    let migrations = executed(&w, &asked).await;
    let all = settled(&w).await;
    // Every report that crossed the broker, delivered twice more (a replaying or
    // redelivering broker): nothing may change.
    let replayed = w.tap.payloads();
    let seen_before = reports_seen(&w).await;
    for _ in 0..2 {
        for p in &replayed {
            let v: Value = serde_json::from_slice(p).expect("report JSON");
            let topic = format!(
                "platen/v1/acme/{}/config/report",
                v["printer_id"].as_str().expect("printer_id")
            );
            w.tap.publish(&topic, p.clone()).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        settled(&w).await,
        all,
        "replayed reports changed the contracts"
    );
    if victim == Victim::Instance {
        // The shared subscription gave each replayed report to exactly one instance,
        // and the work was spread: not every delivery went to one of them.
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        let per_instance = loop {
            let after = reports_seen(&w).await;
            let got: Vec<u64> = after.iter().zip(&seen_before).map(|(a, b)| a - b).collect();
            if got.iter().sum::<u64>() >= 2 * replayed.len() as u64
                || tokio::time::Instant::now() > end
            {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            per_instance.iter().sum::<u64>(),
            2 * replayed.len() as u64,
            "each replayed report reached one instance: {per_instance:?}"
        );
        assert!(
            per_instance.iter().filter(|n| **n > 0).count() >= 2,
            "deliveries spread over the instances: {per_instance:?}"
        );
        eprintln!("instance run: replayed reports per instance {per_instance:?}");
    }
    check_migrations(&all, &migrations);
    let o = check(&mut w, &all, replayed.len()).await;
    assert!(o.changes >= changes + PRINTERS.len(), "changes made");
    assert!(o.ledger >= 1, "p2's refused setting was compensated");
    assert!(o.shipments >= 1, "p2's faults shipped toner");
    assert!(
        !asked.scheduled.is_empty(),
        "migrations executed: {asked:?}"
    );
    eprintln!(
        "crash harness ({victim:?}): {n} kills survived; {} changes settled; {} reports \
         in timelines, {} in the cloud's store ({} broker deliveries, each replayed twice); \
         {} ledger entries equal to the formula; {} shipments ordered once; migrations: \
         {} executed once, {} refused before telemetry, {} not stored (pending or same plan)",
        o.changes,
        o.reports,
        o.stored,
        o.deliveries,
        o.ledger,
        o.shipments,
        asked.scheduled.len(),
        asked.refused,
        asked.skipped
    );
    let _ = &w.dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sigkilled_at_random_points_loses_and_doubles_nothing() {
    crash_run(Victim::Agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_sigkilled_at_random_points_loses_and_doubles_nothing() {
    crash_run(Victim::Cloud).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_instances_sigkilled_at_random_points_loses_and_doubles_nothing() {
    crash_run(Victim::Instance).await;
}
