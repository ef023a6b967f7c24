//! The cloud on PostgreSQL, across real processes: reports keep streaming through a
//! database restart (nothing lost, nothing doubled); `/healthz` says when the
//! database is down; a wrong URL stops `serve` with one line that names the host
//! and never the password; `config show` hides the URL; `config check` refuses a
//! world-readable file that holds it; `db migrate` applies the schema once; three
//! instances' migration schedulers at once execute each scheduled migration once; an
//! instance retired with `serve --leave-group` hands over what its session kept.

use platen_e2e::postgres::{Postgres, PASSWORD};
use platen_e2e::{workspace_bin, Mosquitto};
use platen_protocol::{codec, ApplyReport, Id, ReportStatus};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn report(version: u64) -> ApplyReport {
    let now = chrono::Utc::now();
    let (agent, printer): (Id, Id) = ("gw".parse().unwrap(), "p1".parse().unwrap());
    ApplyReport {
        report_id: ApplyReport::make_id(&agent, &printer, version),
        agent_id: agent,
        printer_id: printer,
        config_version: version,
        status: ReportStatus::Applied,
        settings: vec![],
        received_at: now,
        completed_at: now,
        refused: None,
    }
}

/// 600 reports published at 100 a second; PostgreSQL is stopped for 3 s in the
/// middle. Every report ends up stored exactly once, each counted new once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_stream_through_a_database_restart() {
    const N: u64 = 600;
    let mut pg = Postgres::start();
    let broker = Mosquitto::start(false);
    let url = pg.fresh_db("stream");
    let store = platen_cloud::store::Store::open_postgres(&url, None).unwrap();
    let cloud = platen_cloud::Cloud::connect(
        "127.0.0.1",
        broker.port,
        "cloud-pg",
        store.clone(),
        Default::default(),
        None,
        None,
    )
    .unwrap();
    assert!(cloud.wait_connected(Duration::from_secs(10)).await);
    let (acme, p1): (Id, Id) = ("acme".parse().unwrap(), "p1".parse().unwrap());
    cloud.record_published_many(&acme, &p1, 1..=N).unwrap();
    // Let the cloud's subscriptions land before publishing.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let opts = rumqttc::MqttOptions::new("agent-pg", "127.0.0.1", broker.port);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 1024);
    let pump = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let topic = "platen/v1/acme/p1/config/report";
    let publisher = tokio::spawn(async move {
        for v in 1..=N {
            client
                .publish(
                    topic,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    codec::encode(&report(v)),
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        client
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.stop();
    // While it is down, /healthz-style checks fail and nothing is acknowledged.
    assert!(store.check().is_err());
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.restart();
    let _client = publisher.await.unwrap();
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        let n = cloud.reports().len() as u64;
        if n == N {
            break;
        }
        assert!(Instant::now() < end, "{n} of {N} reports stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids: std::collections::BTreeSet<String> = cloud
        .reports()
        .into_iter()
        .map(|r| r.report.report_id)
        .collect();
    assert_eq!(ids.len() as u64, N, "each stored once");
    assert_eq!(
        cloud.counters.new.load(Ordering::Relaxed),
        N,
        "each counted new exactly once"
    );
    assert!(
        cloud.counters.store_retries.load(Ordering::Relaxed) > 0,
        "the restart was not seen: no message had to wait"
    );
    assert!(store.check().is_ok());
    pump.abort();
    cloud.shutdown().await;
}

fn cloud_cmd() -> Command {
    let mut c = Command::new(workspace_bin("platen-cloud"));
    c.env_remove("PLATEN_STORE__URL");
    c
}

#[test]
fn serve_refuses_a_wrong_url_in_one_line_without_the_password() {
    let closed = platen_e2e::free_tcp_port();
    let dir = tempfile::tempdir().unwrap();
    let out = cloud_cmd()
        .args(["--state-dir"])
        .arg(dir.path())
        .args(["serve", "--api-listen", "127.0.0.1:0"])
        .env(
            "PLATEN_STORE__URL",
            format!("postgres://platen:{PASSWORD}@127.0.0.1:{closed}/platen"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("platen-cloud:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains(&format!("127.0.0.1:{closed}")), "{line}");
    assert!(!err.contains(PASSWORD), "{err}");
    // Nothing was created in the state directory for sled: the database was asked.
    assert!(!dir.path().join("db").exists());
}

#[test]
fn config_hides_the_url_and_db_migrate_applies_the_schema_once() {
    let pg = Postgres::start();
    let url = pg.fresh_db("cfg");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cloud.toml");
    std::fs::write(
        &file,
        format!(
            "state_dir = \"{}\"\n[broker]\nhost = \"127.0.0.1\"\nport = 1883\nclient_id = \"c\"\n[store]\nurl = \"{url}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // World-readable with the URL in it: refused by check (as by serve).
    let out = cloud_cmd()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("database URL") && err.contains("644"), "{err}");
    assert!(!err.contains(PASSWORD));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = cloud_cmd()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cloud_cmd()
        .args(["config", "show", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        shown.contains("[store]") && shown.contains("REDACTED"),
        "{shown}"
    );
    assert!(!shown.contains(PASSWORD), "{shown}");
    // db migrate: applied, then current.
    let migrate = || {
        let out = cloud_cmd()
            .args(["db", "migrate", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = migrate();
    let known = platen_cloud::store::postgres::SCHEMA.len();
    assert!(first.contains(&format!("0 → {known}")), "{first}");
    assert!(!first.contains(PASSWORD), "{first}");
    let second = migrate();
    assert!(second.contains("current"), "{second}");
    let db = url.rsplit('/').next().unwrap();
    assert_eq!(
        pg.psql(db, "SELECT count(*) FROM platen_schema"),
        known.to_string()
    );
    // No database named: exit 2.
    let out = cloud_cmd().args(["db", "migrate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `store copy` from a state directory into PostgreSQL: counts printed, checked, the
/// password never shown; a second copy into the now non-empty database is refused.
#[test]
fn store_copy_moves_an_install_and_refuses_a_full_target() {
    let pg = Postgres::start();
    let url = pg.fresh_db("move");
    let dir = tempfile::tempdir().unwrap();
    {
        let s = platen_cloud::store::Store::open_sled(dir.path()).unwrap();
        s.add_tenant(&platen_cloud::model::Tenant {
            id: "acme".parse().unwrap(),
            name: "Acme".into(),
            reseller: None,
        })
        .unwrap();
        s.sync().unwrap();
    }
    let copy = || {
        // sled's flusher may hold the directory's lock a moment after the drop.
        let mut last = None;
        for _ in 0..50 {
            let out = cloud_cmd()
                .args(["store", "copy", "--from"])
                .arg(dir.path())
                .env("PLATEN_COPY_TO", &url)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if !err.contains("in use") {
                return (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    err,
                );
            }
            last = Some(err);
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the state directory stayed locked: {last:?}");
    };
    let (code, out, err) = copy();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("tenants: 1") && out.contains("copied and checked"),
        "{out}"
    );
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "{out}{err}"
    );
    let db = url.rsplit('/').next().unwrap();
    assert_eq!(pg.psql(db, "SELECT doc->>'name' FROM tenants"), "Acme");
    let (code, _, err) = copy();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already holds data"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}

/// Three instances' migration schedulers on one database, all at once, several times
/// over: every scheduled migration is executed exactly once, each making exactly one
/// plan change of its contract.
#[test]
fn scheduled_migrations_run_once_across_instances() {
    use platen_cloud::model::MigrationState;
    use platen_cloud::ops::migrations::{MigrationRequest, Migrations, Outcome};
    use platen_cloud::ops::Ops;
    use platen_cloud::plans::catalog::Catalog;
    use platen_cloud::store::Store;
    const CONTRACTS: usize = 12;
    let catalog = || Catalog::parse(include_str!("../../packaging/catalog.example.toml")).unwrap();
    let pg = Postgres::start();
    let url = pg.fresh_db("migrations");
    let instance = || {
        let ops = Ops::new(
            Store::open_postgres(&url, None).unwrap(),
            Default::default(),
        )
        .with_catalog(catalog())
        .unwrap();
        Migrations::new(ops.clone())
    };
    let setup = Ops::new(
        Store::open_postgres(&url, None).unwrap(),
        Default::default(),
    )
    .with_catalog(catalog())
    .unwrap();
    setup
        .create_tenant(serde_json::from_str(r#"{"id":"acme","name":"Acme"}"#).unwrap())
        .unwrap();
    let first = instance();
    let mut scheduled = Vec::new();
    for i in 0..CONTRACTS {
        let n = serde_json::from_value(serde_json::json!({
            "id": format!("c{i}"), "tenant": "acme", "printers": [format!("p{i}")],
            "plan": "color-2000", "time_zone": "UTC", "currency": "EUR"
        }))
        .unwrap();
        setup.create_contract(n).unwrap();
        let req = MigrationRequest {
            tenant: "acme".parse().unwrap(),
            contract: Some(format!("c{i}").parse().unwrap()),
            plan: "mono-1000".parse().unwrap(),
            dry_run: false,
        };
        match first.migrate(&"operator".parse().unwrap(), req).unwrap() {
            Outcome::Accepted(m) if m.state == MigrationState::Scheduled => scheduled.push(m.id),
            other => panic!("expected a scheduled migration: {other:?}"),
        }
    }
    // Long after every migration's time: three schedulers at once, five ticks each.
    let later = chrono::Utc::now() + chrono::Duration::days(400);
    let executed: usize = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| {
                let m = instance();
                s.spawn(move || (0..5).map(|_| m.run_due(later).unwrap()).sum::<usize>())
            })
            .collect();
        runs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(
        executed, CONTRACTS,
        "each migration executed by one scheduler"
    );
    let store = Store::open_postgres(&url, None).unwrap();
    for (i, id) in scheduled.iter().enumerate() {
        let m = store.migration(id).unwrap().unwrap();
        assert!(
            matches!(m.state, MigrationState::Executed { .. }),
            "{id}: {:?}",
            m.state
        );
        let changes = store.changes_of(&format!("c{i}").parse().unwrap()).unwrap();
        assert_eq!(changes.len(), 2, "c{i}: start and one plan change");
        assert_eq!(changes[1].change.plan.as_str(), "mono-1000");
    }
}

/// Retiring an instance: one of two instances sharing the stream is SIGKILLed, so the
/// broker keeps dispatching its share into its persistent session. `serve
/// --leave-group` under its client id takes that share in and unsubscribes; from then
/// on every report goes to the other instance. Nothing is lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_instance_hands_over_what_its_session_kept() {
    use platen_e2e::{metric, CloudProc, ProviderProc};
    const N: u64 = 40;
    let pg = Postgres::start();
    let broker = Mosquitto::start(false);
    let provider = ProviderProc::start();
    let url = pg.fresh_db("retire");
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str, extra: &[&str]| {
        CloudProc::start_instance(
            broker.port,
            &dir.path().join(name),
            &provider.url,
            (&url, name),
            extra,
        )
    };
    let mut a = start("cloud-a", &[]);
    let b = start("cloud-b", &[]);
    for c in [&a, &b] {
        let end = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/healthz", c.api))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < end, "instance never came up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let store = platen_cloud::store::Store::open_postgres(&url, None).unwrap();
    let (acme, p1): (Id, Id) = ("acme".parse().unwrap(), "p1".parse().unwrap());
    let versions: Vec<u64> = (1..=3 * N).collect();
    store
        .record_published(&acme, &p1, &versions, None, chrono::Utc::now())
        .unwrap();
    // a dies; its subscription stays in its session.
    a.crash();
    let opts = rumqttc::MqttOptions::new("agent-retire", "127.0.0.1", broker.port);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 1024);
    let pump = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let publish = |from: u64| {
        let client = client.clone();
        async move {
            for v in from..from + N {
                let payload = codec::encode(&report(v));
                client
                    .publish(
                        "platen/v1/acme/p1/config/report",
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        payload,
                    )
                    .await
                    .unwrap();
            }
        }
    };
    let stored = |store: &platen_cloud::store::Store| store.reports().unwrap().len() as u64;
    let wait_for = |want: u64| {
        let store = store.clone();
        async move {
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                let n = stored(&store);
                if n >= want || Instant::now() > end {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    publish(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let while_dead = stored(&store);
    assert!(
        while_dead < N && while_dead > 0,
        "the dead instance's share waits in its session: {while_dead} of {N} stored"
    );
    let taken_by_b = metric(&b.api, "platen_cloud_reports_total{outcome=\"new\"}").await;
    assert_eq!(taken_by_b, while_dead);
    // Retire a: what its session kept comes in, then a leaves the group.
    let out = Command::new(workspace_bin("platen-cloud"))
        .args(["--port", &broker.port.to_string(), "--client-id", "cloud-a"])
        .arg("--state-dir")
        .arg(dir.path().join("cloud-a"))
        .args(["--store-url", &url, "serve", "--api-listen", "127.0.0.1:0"])
        .args(["--provider-url", &provider.url, "--leave-group"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("left the shared-subscription group"),
        "{text}"
    );
    assert_eq!(wait_for(N).await, N, "a's share was handed over");
    // From now on b takes everything, also with a gone for good.
    publish(N + 1).await;
    assert_eq!(wait_for(2 * N).await, 2 * N);
    let end = Instant::now() + Duration::from_secs(10);
    while metric(&b.api, "platen_cloud_reports_total{outcome=\"new\"}").await < while_dead + N {
        assert!(Instant::now() < end, "b did not take every later report");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pump.abort();
}
