//! Broker outages (#6). Mosquitto stopped while reports and telemetry keep being
//! produced, then started again; and a broker that accepts connections but never
//! answers (no CONNACK, or a CONNACK and then nothing: no SUBACK, PUBACK or PINGRESP).
//! In both, everything the agent produced arrives afterwards, in order per printer
//! (telemetry sequence numbers, first arrivals, strictly increasing and without a
//! gap), and agent and cloud resynchronise: subscriptions again, retained desired
//! configs read again (and recognised as already stored), the outbox sent again.

use platen_e2e::*;
use platen_protocol::{ApplyReport, ReportStatus, Telemetry};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Arrivals = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A subscriber with a persistent session that records every arrival in order
/// (duplicates included), connecting to `port` until dropped.
struct Observer {
    seen: Arrivals,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    async fn start(port: u16, id: &str) -> Observer {
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(false);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
        let seen: Arrivals = Default::default();
        let s = seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = client
                            .subscribe("platen/v1/acme/+/telemetry", rumqttc::QoS::AtLeastOnce)
                            .await;
                        let _ = client
                            .subscribe("platen/v1/acme/+/config/report", rumqttc::QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        s.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("observer subscribed")
            .unwrap();
        Observer { seen, task }
    }

    /// Telemetry sequence numbers per printer, in order of first arrival.
    fn telemetry(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut first = BTreeSet::new();
        for (topic, payload) in self.seen.lock().unwrap().iter() {
            if !topic.ends_with("/telemetry") {
                continue;
            }
            let t: Telemetry = platen_protocol::decode(payload).expect("telemetry decodes");
            if first.insert(t.message_id.clone()) {
                out.entry(t.printer_id.to_string()).or_default().push(t.seq);
            }
        }
        out
    }

    fn reports(&self) -> Vec<ApplyReport> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.ends_with("/config/report"))
            .map(|(_, p)| platen_protocol::decode(p).expect("report decodes"))
            .collect()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn agent_config(port: u16, dir: &std::path::Path, sim: &Sim) -> String {
    let mut cfg = agent_toml(
        "gw-o",
        port,
        &dir.join("state"),
        &[
            PrinterEntry::new("p1", sim.addr("p1")),
            PrinterEntry::new("p2", sim.addr("p2")),
        ],
    );
    cfg = cfg.replace(
        "reconnect_max_ms = 1000",
        "reconnect_max_ms = 1000\nkeep_alive_secs = 5",
    );
    cfg.push_str("\n[telemetry]\ninterval_secs = 1\nheartbeat_secs = 1\n");
    cfg
}

/// After a graceful stop: every telemetry message the agent numbered arrived, or is
/// still in its outbox to be sent at the next start; arrivals are in order.
fn check_telemetry(observer: &Observer, agent: &mut AgentProc) -> BTreeMap<String, u64> {
    assert_eq!(agent.terminate(), Some(0));
    let store = platen_agent::store::Store::open(&agent.state_dir).unwrap();
    let mut pending: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (_, e) in store.outbox_peek(100_000) {
        if e.topic.ends_with("/telemetry") {
            let t: Telemetry = platen_protocol::decode(e.payload.as_bytes()).unwrap();
            pending
                .entry(t.printer_id.to_string())
                .or_default()
                .insert(t.seq);
        }
    }
    let seen = observer.telemetry();
    let mut counts = BTreeMap::new();
    for p in ["p1", "p2"] {
        let last = store
            .seq(platen_agent::store::SeqKind::Telemetry, &p.parse().unwrap())
            .unwrap();
        let arrived = seen.get(p).cloned().unwrap_or_default();
        assert!(
            arrived.windows(2).all(|w| w[0] < w[1]),
            "{p}: telemetry out of order: {arrived:?}"
        );
        let all: BTreeSet<u64> = arrived
            .iter()
            .copied()
            .chain(pending.get(p).into_iter().flatten().copied())
            .collect();
        let want: BTreeSet<u64> = (1..=last).collect();
        assert_eq!(
            all,
            want,
            "{p}: telemetry lost (arrived {arrived:?}, pending {:?})",
            pending.get(p)
        );
        counts.insert(p.to_string(), last);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_everything_arrives_in_order_and_both_sides_resync() {
    let mut broker = Mosquitto::start(true);
    // p1 is slow: an apply of three settings outlives the broker.
    let sim = Sim::start(&["p1,delay-ms=300", "p2"]);
    let dir = tempfile::tempdir().unwrap();
    let observer = Observer::start(broker.port, "outage-observer").await;
    let cloud = start_cloud(broker.port, dir.path()).await;
    let mut agent = AgentProc::start(dir.path(), &agent_config(broker.port, dir.path(), &sim));
    for p in ["p1", "p2"] {
        cloud
            .publish_desired(&tenant(), &desired(p, 1, &[("sysLocation", t("One"))]))
            .await
            .unwrap();
        wait_report(
            &cloud,
            &format!("gw-o:{p}:v1"),
            Duration::from_secs(20),
            &agent,
        )
        .await;
    }
    // v2 for p1; once the agent applies it, the broker goes away.
    let log_before = agent.log_mark();
    cloud
        .publish_desired(
            &tenant(),
            &desired(
                "p1",
                2,
                &[
                    ("sysLocation", t("Two")),
                    ("sysContact", t("c2")),
                    ("sysName", t("n2")),
                ],
            ),
        )
        .await
        .unwrap();
    agent.wait_log_after(
        log_before,
        "applying desired config",
        Duration::from_secs(10),
    );
    broker.stop();
    let outage_start = agent.log_mark();
    // v2's report is made with the broker gone; telemetry goes on for four seconds.
    agent.wait_log_after(log_before, "report queued", Duration::from_secs(15));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        agent.try_exit_code(),
        None,
        "the agent exited during the outage"
    );
    broker.restart();
    // The cloud gets the report made during the outage (agent re-sent its outbox, the
    // cloud reconnected)…
    let r = wait_report(&cloud, "gw-o:p1:v2", Duration::from_secs(30), &agent).await;
    assert_eq!(r.report.status, ReportStatus::Applied);
    // …the agent subscribed again and read its retained configs again (already stored)…
    agent.wait_log_after(
        outage_start,
        "desired config already stored",
        Duration::from_secs(15),
    );
    // …and a new config reaches it.
    cloud
        .publish_desired(&tenant(), &desired("p2", 3, &[("sysLocation", t("Three"))]))
        .await
        .unwrap();
    wait_report(&cloud, "gw-o:p2:v3", Duration::from_secs(20), &agent).await;
    // Let the outbox drain, then check what arrived.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = check_telemetry(&observer, &mut agent);
    let reports: BTreeSet<String> = observer
        .reports()
        .into_iter()
        .map(|r| r.report_id)
        .collect();
    for id in ["gw-o:p1:v1", "gw-o:p2:v1", "gw-o:p1:v2", "gw-o:p2:v3"] {
        assert!(
            reports.contains(id),
            "{id} never reached the observer: {reports:?}"
        );
    }
    eprintln!("broker outage: telemetry per printer {counts:?}, all arrived in order");
}

/// How the fake broker treats a connection.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Accept, read, never answer (not even CONNACK).
    Silent,
    /// CONNACK, then read and never answer again.
    ConnackOnly,
    /// Pass the connection to the real broker.
    Forward,
}

/// A TCP front for the broker: connections are served as `mode` says when they
/// arrive; a mode change closes the connections of the previous mode.
async fn front(
    listener: tokio::net::TcpListener,
    upstream: u16,
    mode: tokio::sync::watch::Receiver<Mode>,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let mut m = mode.clone();
        let current = *m.borrow_and_update();
        tokio::spawn(async move {
            if current == Mode::Forward {
                if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
                }
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            let mut answered = false;
            loop {
                tokio::select! {
                    r = sock.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(_) if current == Mode::ConnackOnly && !answered => {
                            answered = true;
                            let _ = sock.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                        }
                        Ok(_) => {}
                    },
                    _ = m.changed() => return,
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_acknowledges_loses_nothing() {
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1", "p2"]);
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_port = listener.local_addr().unwrap().port();
    let (mode_tx, mode_rx) = tokio::sync::watch::channel(Mode::Silent);
    let front_task = tokio::spawn(front(listener, broker.port, mode_rx));
    let observer = Observer::start(broker.port, "noack-observer").await;
    let mut agent = AgentProc::start(dir.path(), &agent_config(front_port, dir.path(), &sim));
    // No CONNACK for 6 s, then a CONNACK and silence for 12 s (past two keep-alives).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(agent.try_exit_code(), None);
    mode_tx.send(Mode::ConnackOnly).unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        agent.try_exit_code(),
        None,
        "the agent exited:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        !log.contains("report acknowledged") && !log.contains("panicked"),
        "{log}"
    );
    // Nothing arrived anywhere yet.
    assert!(observer.telemetry().is_empty());
    // The real broker behind the front: everything produced so far arrives, in order.
    mode_tx.send(Mode::Forward).unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = observer.telemetry();
        if t.get("p1").is_some_and(|v| v.len() >= 18) && t.get("p2").is_some_and(|v| v.len() >= 18)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "backlog never arrived: {t:?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = check_telemetry(&observer, &mut agent);
    eprintln!("non-acknowledging broker: telemetry per printer {counts:?}, all arrived in order");
    front_task.abort();
}
