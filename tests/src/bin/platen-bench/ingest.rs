//! Section 3: Cloud ingest: reports per second that the cloud takes from Mosquitto, decodes
//! strictly, deduplicates and stores durably (acknowledging each only once it is
//! flushed), beside the broker's own ceiling in the same run: `mosquitto_pub` →
//! `mosquitto_sub`, QoS 1, the same payloads from the same file.
//!
//! The cloud runs on each backend: sled (the embedded default) and PostgreSQL (a
//! server of the benchmark's own, in a temporary directory, with its default
//! durability: every commit is flushed to its WAL).
//!
//! On PostgreSQL it also runs with two and three cloud instances sharing the stream
//! through one MQTT shared subscription (`$share/<group>/…`), as several
//! `platen-cloud` processes on one database do.
//!
//! The file holds N distinct apply reports (ten settings each, ~2 KB, as the agent
//! writes them) and one redelivery for every tenth, so deduplication is on the path.
//! Each side runs twice, alternating; the better run of each counts.

use crate::table::{Bound, Results};
use chrono::Utc;
use platen_cloud::store::Store;
use platen_cloud::Cloud;
use platen_e2e::postgres::Postgres;
use platen_e2e::{system_bin, Mosquitto};
use platen_protocol::{codec, ApplyReport, Code, ReportStatus, SettingResult, SettingValue, Topic};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const SECTION: &str = "ingest";

fn report(version: u64) -> ApplyReport {
    let now = Utc::now();
    let settings = (0..10)
        .map(|i| SettingResult {
            name: format!("setting{i}"),
            desired: SettingValue::Text(format!("value {version}/{i}")),
            read_back: Some(SettingValue::Text(format!("value {version}/{i}"))),
            code: Code::Verified,
            detail: "verified by read-back".into(),
            attempts: 1,
            verified_at: Some(now),
        })
        .collect();
    ApplyReport {
        report_id: ApplyReport::make_id(
            &"gw-bench".parse().expect("id"),
            &"p1".parse().expect("id"),
            version,
        ),
        agent_id: "gw-bench".parse().expect("id"),
        printer_id: "p1".parse().expect("id"),
        config_version: version,
        status: ReportStatus::Applied,
        settings,
        received_at: now,
        completed_at: now,
        refused: None,
    }
}

/// Write the payload file: `n` reports, every tenth followed by a redelivery.
/// Returns (lines, duplicates, average payload bytes).
fn payloads(path: &Path, n: usize) -> (usize, usize, usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("payload file"));
    let (mut lines, mut dups, mut bytes) = (0, 0, 0);
    for v in 1..=n as u64 {
        let p = codec::encode(&report(v));
        assert!(!p.contains(&b'\n'), "one payload per line");
        let copies = if v % 10 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            f.write_all(&p).expect("write");
            f.write_all(b"\n").expect("write");
            lines += 1;
            bytes += p.len();
        }
        dups += copies - 1;
    }
    f.flush().expect("flush");
    (lines, dups, bytes / lines.max(1))
}

/// `mosquitto_pub -l` fed from `file` through a pipe that stays open until the
/// returned [`Feed`] is finished: at EOF, mosquitto_pub 2.0 disconnects without
/// waiting for the PUBACKs of what it still has in flight, and those are lost.
struct Feed {
    child: std::process::Child,
    writer: std::thread::JoinHandle<std::process::ChildStdin>,
}

impl Feed {
    fn start(port: u16, topic: &str, file: &Path) -> Feed {
        let mut child = Command::new(system_bin("mosquitto_pub", "mosquitto-clients"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-i", "bench-pub", "-t", topic, "-l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("mosquitto_pub");
        let mut stdin = child.stdin.take().expect("stdin");
        let file = file.to_path_buf();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::open(file).expect("payload file");
            std::io::copy(&mut f, &mut stdin).expect("feeding mosquitto_pub");
            stdin
        });
        Feed { child, writer }
    }

    /// Close the pipe (everything was received) and wait for the publisher.
    fn finish(mut self) {
        drop(self.writer.join().expect("feeder"));
        wait_exit(&mut self.child, "mosquitto_pub", Duration::from_secs(10));
    }
}

fn wait_exit(child: &mut std::process::Child, what: &str, within: Duration) {
    let end = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                assert!(s.success(), "{what} failed: {s}");
                return;
            }
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_micros(500)),
            _ => {
                let _ = child.kill();
                panic!("{what} did not finish within {within:?}");
            }
        }
    }
}

/// Broker ceiling: messages/s from `mosquitto_pub -l` to `mosquitto_sub -C`.
fn ceiling(port: u16, topic: &str, file: &Path, lines: usize) -> f64 {
    let mut sub = Command::new(system_bin("mosquitto_sub", "mosquitto-clients"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-i", "bench-sub", "-t", topic, "-C", &lines.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    // Let it connect and subscribe (loopback: milliseconds).
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let feed = Feed::start(port, topic, file);
    wait_exit(&mut sub, "mosquitto_sub", Duration::from_secs(300));
    let took = t0.elapsed();
    feed.finish();
    lines as f64 / took.as_secs_f64()
}

/// Where the cloud under test keeps its state.
enum Backend<'a> {
    Sled,
    /// PostgreSQL, with this many cloud instances sharing the stream (each its own
    /// client id and connection pool, as separate processes have; one shared
    /// subscription group).
    Postgres(&'a Postgres, usize),
}

/// The cloud: messages/s until every report is stored and every redelivery dropped
/// (by all instances together). Returns the rate and the size of its state
/// (directory, or database).
async fn cloud(
    port: u16,
    topic: &str,
    file: &Path,
    n: usize,
    dups: usize,
    round: u32,
    backend: &Backend<'_>,
) -> (f64, u64) {
    let dir = tempfile::tempdir().expect("tmp");
    let (stores, db, group) = match backend {
        Backend::Sled => (
            vec![Store::open_sled(dir.path()).expect("sled")],
            None,
            None,
        ),
        Backend::Postgres(pg, instances) => {
            let url = pg.fresh_db("ingest");
            let name = url.rsplit('/').next().unwrap_or_default().to_string();
            let stores = (0..*instances)
                .map(|_| Store::open_postgres(&url, None).expect("postgres"))
                .collect();
            (stores, Some(name), Some(format!("bench-{round}")))
        }
    };
    let mut clouds = Vec::new();
    for (i, store) in stores.into_iter().enumerate() {
        let c = Cloud::connect(
            "127.0.0.1",
            port,
            &format!("bench-cloud-{round}-{i}"),
            store,
            Default::default(),
            None,
            group.as_deref(),
        )
        .expect("cloud");
        assert!(c.wait_connected(Duration::from_secs(10)).await);
        clouds.push(c);
    }
    // Every version the feed reports was published (as the engine records it).
    clouds[0]
        .record_published_many(
            &"acme".parse().expect("id"),
            &"p1".parse().expect("id"),
            1..=n as u64,
        )
        .expect("record published versions");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let feed = Feed::start(port, topic, file);
    let end = t0 + Duration::from_secs(600);
    let sum = |f: fn(&Cloud) -> &std::sync::atomic::AtomicU64| {
        clouds
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed) as usize)
            .sum::<usize>()
    };
    loop {
        let new = sum(|c| &c.counters.new);
        let dup = sum(|c| &c.counters.duplicates);
        if new + dup >= n + dups {
            assert_eq!((new, dup), (n, dups), "each report stored once");
            break;
        }
        assert!(
            Instant::now() < end,
            "the cloud stored {new} of {n} reports"
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let took = t0.elapsed();
    feed.finish();
    assert_eq!(sum(|c| &c.counters.refused), 0, "no report refused");
    for c in clouds {
        c.shutdown().await;
    }
    let size = match (backend, db) {
        (Backend::Postgres(pg, _), Some(name)) => pg
            .psql(&name, "SELECT pg_database_size(current_database())")
            .parse()
            .unwrap_or(0),
        _ => dir_size(dir.path()),
    };
    ((n + dups) as f64 / took.as_secs_f64(), size)
}

/// Seconds until a change claimed by an instance that died (claimed, never saved) is
/// claimed by another instance polling at the engine's default tick, with `lease`.
fn takeover(pg: &Postgres, lease: Duration) -> f64 {
    use platen_cloud::ops::Ops;
    use platen_cloud::store::Claim;
    let url = pg.fresh_db("takeover");
    let open = || Store::open_postgres(&url, None).expect("postgres");
    let ops = Ops::new(open(), Default::default());
    ops.create_tenant(serde_json::from_str(r#"{"id":"acme","name":"Acme"}"#).expect("tenant"))
        .expect("tenant");
    ops.create_plan(
        serde_json::from_str(
            r#"{"id":"basic","name":"Basic","service":{"kind":"basic","monthly_fee":900}}"#,
        )
        .expect("plan"),
    )
    .expect("plan");
    ops.create_contract(
        serde_json::from_value(serde_json::json!({
            "id": "c1", "tenant": "acme", "printers": ["p1"], "plan": "basic",
            "time_zone": "UTC", "currency": "EUR"
        }))
        .expect("contract"),
    )
    .expect("contract");
    let claim = |owner: &str| Claim {
        owner: owner.into(),
        lease: chrono::Duration::from_std(lease).expect("lease"),
    };
    let (dead, alive) = (open(), open());
    let held = dead
        .claim_due(&claim("dies"), Utc::now(), 8)
        .expect("claim");
    assert_eq!(held.len(), 1, "the start change is due");
    let t0 = Instant::now();
    let tick = platen_cloud::engine::EngineConfig::default().tick;
    loop {
        if !alive
            .claim_due(&claim("lives"), Utc::now(), 8)
            .expect("claim")
            .is_empty()
        {
            return t0.elapsed().as_secs_f64();
        }
        assert!(t0.elapsed() < lease * 3, "never taken over");
        std::thread::sleep(tick);
    }
}

/// Bytes PostgreSQL keeps per telemetry sample (table, its key, TOAST), from `n`
/// samples of the protocol's golden telemetry message (one printer's counter and
/// four supplies), one minute apart, over 100 printers.
fn bytes_per_sample(pg: &Postgres, n: usize) -> f64 {
    use platen_protocol::Telemetry;
    let url = pg.fresh_db("samples");
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    let store = Store::open_postgres(&url, None).expect("postgres");
    let golden: Telemetry =
        platen_protocol::decode(include_bytes!("../../../../protocol/golden/telemetry.json"))
            .expect("golden telemetry");
    let tenant = "acme".parse().expect("id");
    let start = Utc::now() - chrono::Duration::days(30);
    store.begin_batch().expect("batch");
    for i in 0..n {
        let mut t = golden.clone();
        t.printer_id = format!("p{}", i % 100).parse().expect("id");
        t.seq = i as u64 + 1;
        t.message_id = Telemetry::make_id(&t.agent_id, &t.printer_id, t.seq);
        let r = t.reading.as_mut().expect("reading");
        r.read_at = start + chrono::Duration::minutes((i / 100) as i64);
        r.counters[0].value = 1000 + i as u64;
        let sample = platen_cloud::model::Sample::of(&t).expect("sample");
        store
            .record_sample(&tenant, &t.printer_id, &sample)
            .expect("sample stored");
        if i % 1000 == 999 {
            store.sync().expect("commit");
            store.begin_batch().expect("batch");
        }
    }
    store.sync().expect("commit");
    pg.psql(&name, "VACUUM ANALYZE readings");
    let bytes: f64 = pg
        .psql(&name, "SELECT pg_total_relation_size('readings')")
        .parse()
        .unwrap_or(0.0);
    bytes / n as f64
}

/// Bytes of every file under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

pub async fn run(r: &mut Results, n: usize) {
    eprintln!("ingest: {n} reports …");
    let broker = Mosquitto::start_unbounded();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("reports.txt");
    let (lines, dups, avg) = payloads(&file, n);
    let topic = Topic::report(&"acme".parse().expect("id"), &"p1".parse().expect("id")).to_string();
    let pg = Postgres::start();
    let (mut best_ceiling, mut best_cloud, mut state) = (0f64, 0f64, 0u64);
    let (mut best_pg, mut pg_state) = (0f64, 0u64);
    // Two and three instances on PostgreSQL (index 0: two).
    let mut best_shared = [0f64; 2];
    for round in 1..=2 {
        best_ceiling = best_ceiling.max(ceiling(broker.port, &topic, &file, lines));
        let (rate, size) = cloud(broker.port, &topic, &file, n, dups, round, &Backend::Sled).await;
        best_cloud = best_cloud.max(rate);
        state = size;
        let (rate, size) = cloud(
            broker.port,
            &topic,
            &file,
            n,
            dups,
            round + 10,
            &Backend::Postgres(&pg, 1),
        )
        .await;
        best_pg = best_pg.max(rate);
        pg_state = size;
        for k in 2..=3 {
            let (rate, _) = cloud(
                broker.port,
                &topic,
                &file,
                n,
                dups,
                round + 10 * k as u32,
                &Backend::Postgres(&pg, k),
            )
            .await;
            best_shared[k - 2] = best_shared[k - 2].max(rate);
        }
    }
    r.figure(
        SECTION,
        format!("messages per run ({n} reports + {dups} redeliveries, {avg} B each)"),
        lines as f64,
        "",
    );
    r.figure(
        SECTION,
        "broker ceiling: mosquitto_pub → mosquitto_sub, QoS 1",
        best_ceiling,
        "msg/s",
    );
    r.figure(
        SECTION,
        "platen-cloud: decode, dedupe, store, flush, ack",
        best_cloud,
        "msg/s",
    );
    r.figure(
        SECTION,
        "platen-cloud on PostgreSQL: decode, dedupe, commit, ack",
        best_pg,
        "msg/s",
    );
    r.figure(
        SECTION,
        "PostgreSQL bytes per telemetry sample (readings table with its key)",
        bytes_per_sample(&pg, if n >= 100_000 { 50_000 } else { 5_000 }),
        "B",
    );
    let lease = Duration::from_secs(2);
    let took = takeover(&pg, lease);
    r.figure(
        SECTION,
        format!(
            "a dead instance's change taken over (lease {} s, tick {} ms)",
            lease.as_secs(),
            platen_cloud::engine::EngineConfig::default()
                .tick
                .as_millis()
        ),
        took,
        "s",
    );
    for (k, rate) in [(2, best_shared[0]), (3, best_shared[1])] {
        r.figure(
            SECTION,
            format!("{k} instances on one PostgreSQL, one shared subscription"),
            rate,
            "msg/s",
        );
    }
    r.figure(
        SECTION,
        format!("cloud sled state after {n} reports"),
        state as f64 / 1e6,
        "MB",
    );
    r.figure(
        SECTION,
        format!("cloud PostgreSQL database after {n} reports"),
        pg_state as f64 / 1e6,
        "MB",
    );
    r.goal(
        SECTION,
        "ingest at least half the broker ceiling",
        "cloud msg/s / broker msg/s",
        best_cloud / best_ceiling,
        Bound::AtLeast,
        0.5,
    );
    r.goal(
        SECTION,
        "ingest on PostgreSQL at least half the broker ceiling",
        "cloud on PostgreSQL msg/s / broker msg/s",
        best_pg / best_ceiling,
        Bound::AtLeast,
        0.5,
    );
}
