//! Section 1: Apply latency: a desired config with ten settings → SET → read-back → report,
//! beside the floor of the same stack and beside net-snmp's tools.
//!
//! - **Platen**: Mosquitto, `platen-printer-sim` and the release `platen-agent` as
//!   processes; `settle_ms = 0`. Timed from the broker's PUBACK of the desired config
//!   to the report's arrival at a QoS 1 subscriber (the broker forwards the report as
//!   it acknowledges it to the agent). Every setting changes in every run.
//! - **Floor**: the least any agent must do, with Platen's own libraries (async-snmp
//!   over the shared socket, rumqttc with TCP_NODELAY), no durability: one SET PDU of
//!   the ten objects, one GET PDU of them, one QoS 1 publish of a report-sized
//!   payload until its PUBACK.
//! - **net-snmp**: one `snmpset` process with the ten varbinds and one `snmpget`
//!   process, the way a shell script would do it (no MQTT at all).

use crate::mqtt::BenchMqtt;
use crate::table::{quantile, sorted_ms, Bound, Results};
use platen_agent::secret::Secret;
use platen_agent::snmp::{AsyncSnmp, ObjectId, SharedTransport, Snmp, SnmpValue, Target};
use platen_e2e::*;
use platen_protocol::{codec, ApplyReport, DesiredConfig, ReportStatus, SettingValue, Topic};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const SECTION: &str = "apply";
const WARMUP: u64 = 5;

/// The ten settings, each changing with `run`: (name, OID, net-snmp type, value).
fn ten(run: u64) -> Vec<(&'static str, &'static str, SettingValue)> {
    let t = |s: String| SettingValue::Text(s);
    let i = SettingValue::Integer;
    let odd = (run % 2) as i64;
    vec![
        (
            "sysContact",
            "1.3.6.1.2.1.1.4.0",
            t(format!("ops-{run}@acme.example")),
        ),
        ("sysName", "1.3.6.1.2.1.1.5.0", t(format!("printer-{run}"))),
        (
            "sysLocation",
            "1.3.6.1.2.1.1.6.0",
            t(format!("Floor {run}")),
        ),
        (
            "prtGeneralCurrentLocalization",
            "1.3.6.1.2.1.43.5.1.1.2.1",
            i(1 + odd),
        ),
        (
            "prtGeneralCurrentOperator",
            "1.3.6.1.2.1.43.5.1.1.4.1",
            t(format!("operator {run}")),
        ),
        (
            "prtGeneralServicePerson",
            "1.3.6.1.2.1.43.5.1.1.5.1",
            t(format!("service {run}")),
        ),
        (
            "prtInputDefaultIndex",
            "1.3.6.1.2.1.43.5.1.1.6.1",
            i(1 + odd),
        ),
        ("prtConsoleDisable", "1.3.6.1.2.1.43.5.1.1.13.1", i(3 + odd)),
        (
            "prtAuxiliarySheetStartupPage",
            "1.3.6.1.2.1.43.5.1.1.14.1",
            i(3 + odd),
        ),
        (
            "prtGeneralPrinterName",
            "1.3.6.1.2.1.43.5.1.1.16.1",
            t(format!("ACME-{run}")),
        ),
    ]
}

fn snmp_value(v: &SettingValue) -> SnmpValue {
    match v {
        SettingValue::Text(s) => SnmpValue::OctetString(s.as_bytes().to_vec()),
        SettingValue::Integer(i) => SnmpValue::Integer(*i),
    }
}

/// Platen end to end; returns the samples and one report payload (for the floor).
async fn platen(runs: u64) -> (Vec<Duration>, Vec<u8>) {
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1"]);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = agent_toml(
        "gw-bench",
        broker.port,
        &dir.path().join("state"),
        &[PrinterEntry::new("p1", sim.addr("p1"))],
    )
    .replace("settle_ms = 50", "settle_ms = 0");
    // The packaged default log level, not the tests' debug.
    let agent = AgentProc::start_with(dir.path(), &cfg, &[("RUST_LOG", "info")], &[]);
    let (tenant, printer) = (tenant(), "p1".parse().expect("id"));
    let mut mq = BenchMqtt::connect(
        broker.port,
        "bench-apply",
        &[Topic::report(&tenant, &printer).to_string()],
    )
    .await;
    let desired_topic = Topic::desired(&tenant, &printer).to_string();
    let mut out = Vec::new();
    let mut payload = Vec::new();
    for v in 1..=runs + WARMUP {
        let config = DesiredConfig {
            printer_id: printer.clone(),
            version: v,
            issued_at: chrono::Utc::now(),
            settings: ten(v)
                .into_iter()
                .map(|(n, _, val)| (n.to_string(), val))
                .collect::<BTreeMap<_, _>>(),
            signature: None,
        };
        mq.publish_acked(&desired_topic, true, codec::encode(&config))
            .await;
        let start = Instant::now();
        let want = ApplyReport::make_id(&"gw-bench".parse().expect("id"), &printer, v);
        let report = loop {
            let got = tokio::time::timeout(Duration::from_secs(20), mq.incoming.recv()).await;
            let Ok(Some((_, p))) = got else {
                panic!("no report for v{v}:\n{}", agent.log());
            };
            let r: ApplyReport = codec::decode(&p).expect("report decodes");
            if r.report_id == want {
                payload = p;
                break r;
            }
        };
        let took = start.elapsed();
        assert_eq!(report.status, ReportStatus::Applied, "{report:?}");
        assert!(
            report.settings.iter().all(|s| s.attempts >= 1),
            "every setting must have been written: {report:?}"
        );
        if v > WARMUP {
            out.push(took);
        }
    }
    (out, payload)
}

/// The floor: one SET PDU, one GET PDU, one QoS 1 publish to its PUBACK.
async fn floor(runs: u64, payload: Vec<u8>) -> Vec<Duration> {
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1"]);
    let addr = sim.addr("p1");
    let transport = SharedTransport::bind().await.expect("socket");
    let target = Target {
        address: addr.ip().to_string(),
        port: addr.port(),
        credentials: platen_agent::snmp::Credentials::V2c(Secret::new("private")),
        timeout: Duration::from_secs(1),
        retries: 1,
    };
    let snmp = AsyncSnmp::connect(&target, &transport)
        .await
        .expect("client");
    let mut mq = BenchMqtt::connect(broker.port, "bench-floor", &[]).await;
    let mut out = Vec::new();
    for run in 1..=runs + WARMUP {
        let items: Vec<(ObjectId, SnmpValue)> = ten(run)
            .iter()
            .map(|(_, oid, v)| (oid.parse().expect("oid"), snmp_value(v)))
            .collect();
        let oids: Vec<ObjectId> = items.iter().map(|(o, _)| o.clone()).collect();
        let start = Instant::now();
        snmp.set_many(&items).await.expect("SET of ten");
        let back = snmp.get(&oids).await.expect("GET of ten");
        mq.publish_acked("bench/floor", false, payload.clone())
            .await;
        let took = start.elapsed();
        assert_eq!(back[0], items[0].1, "the SET took");
        if run > WARMUP {
            out.push(took);
        }
    }
    out
}

/// `snmpset` + `snmpget` processes for the same ten objects.
fn net_snmp(runs: u64) -> Vec<Duration> {
    let sim = Sim::start(&["p1"]);
    let target = sim.addr("p1").to_string();
    let (setb, getb) = (system_bin("snmpset", "snmp"), system_bin("snmpget", "snmp"));
    let mut out = Vec::new();
    for run in 1..=runs {
        let mut set = Command::new(&setb);
        set.args(["-v2c", "-c", "private", "-t", "1", "-r", "1", &target])
            .env("MIBS", "");
        let mut get = Command::new(&getb);
        get.args(["-v2c", "-c", "private", "-t", "1", "-r", "1", &target])
            .env("MIBS", "");
        for (_, oid, v) in ten(run) {
            let (kind, text) = match v {
                SettingValue::Text(s) => ("s", s),
                SettingValue::Integer(i) => ("i", i.to_string()),
            };
            set.args([oid, kind, &text]);
            get.arg(oid);
        }
        let start = Instant::now();
        let s = set.output().expect("snmpset");
        let g = get.output().expect("snmpget");
        let took = start.elapsed();
        assert!(
            s.status.success() && g.status.success(),
            "{}",
            String::from_utf8_lossy(&s.stderr)
        );
        out.push(took);
    }
    out
}

pub async fn run(r: &mut Results, runs: u64) {
    eprintln!("apply: Platen end to end, {runs} runs …");
    let (p, payload) = platen(runs).await;
    eprintln!("apply: floor, {runs} runs …");
    let f = floor(runs, payload).await;
    eprintln!("apply: net-snmp processes, {runs} runs …");
    let n = net_snmp(runs);
    let (p, f, n) = (sorted_ms(&p), sorted_ms(&f), sorted_ms(&n));
    for (name, v) in [
        ("Platen: desired PUBACK → report delivered", &p),
        ("floor: SET + GET (10 objects) + QoS 1 publish/ack", &f),
        ("net-snmp: snmpset + snmpget processes", &n),
    ] {
        r.figure(SECTION, format!("{name}, p50"), quantile(v, 0.5), "ms");
        r.figure(SECTION, format!("{name}, p99"), quantile(v, 0.99), "ms");
    }
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        r.goal(
            SECTION,
            format!("latency within 1.5× of the floor ({label})"),
            format!("Platen {label} / floor {label}"),
            quantile(&p, q) / quantile(&f, q),
            Bound::AtMost,
            1.5,
        );
    }
    r.note(format!(
        "apply: Platen {:.1}× faster than snmpset + snmpget processes at p50",
        quantile(&n, 0.5) / quantile(&p, 0.5)
    ));
}
