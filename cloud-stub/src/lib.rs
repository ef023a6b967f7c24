//! `platen-cloud` (stub): the cloud side of the apply → verify → report loop.
//!
//! It publishes desired configs (retained, QoS 1, waiting for the broker's PUBACK)
//! and collects apply reports: each report is decoded strictly, checked against its
//! topic, stored in sled under its `report_id` if new (deduplication: agents deliver
//! at least once), then acknowledged to the broker. Its MQTT session is persistent,
//! so reports sent while it is offline are delivered when it returns.
//! It also keeps one sample per telemetry reading (page counter, supply state) for
//! the usage that migration rules see ([`usage`]). The contract engine, compensation
//! and plan migrations sit on top ([`engine`], [`compensation`], [`migration`]).

pub mod api;
pub mod catalog;
pub mod compensation;
pub mod config;
pub mod contracts;
pub mod engine;
pub mod migration;
pub mod model;
pub mod ops;
pub mod period;
pub mod server;
pub mod usage;

use chrono::{DateTime, Utc};
use platen_protocol::{codec, ApplyReport, DesiredConfig, Id, Topic, MAX_MESSAGE_BYTES};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch, Mutex};
use tracing::{debug, info, warn};
use usage::ReadingStore;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("state store: {0}")]
    Store(#[from] sled::Error),
    #[error("broker: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("the broker did not acknowledge the publish within {0:?}")]
    NotAcknowledged(Duration),
    #[error("desired config refused: {0}")]
    Invalid(String),
}

/// A report as stored: the agent's report plus when the cloud received it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReceivedReport {
    pub report: ApplyReport,
    pub received_at: DateTime<Utc>,
}

/// What happened to an inbound report or telemetry message.
#[derive(Clone, Debug)]
pub enum ReportEvent {
    New(Box<ReceivedReport>),
    Duplicate {
        report_id: String,
    },
    Refused {
        topic: String,
        reason: String,
    },
    /// A telemetry message; `new_reading` when its reading was not stored before.
    Telemetry {
        tenant: Id,
        printer: Id,
        message_id: String,
        new_reading: bool,
    },
}

#[derive(Default)]
pub struct Counters {
    pub new: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
}

fn index_key(tenant: &Id, printer: &Id, version: u64, report_id: &str) -> String {
    format!("{tenant}/{printer}/{version:020}/{report_id}")
}

#[derive(Clone)]
pub struct Cloud {
    client: AsyncClient,
    reports: sled::Tree,
    report_index: sled::Tree,
    readings: ReadingStore,
    db: sled::Db,
    publish_lock: Arc<Mutex<()>>,
    pubacks: broadcast::Sender<u16>,
    events: broadcast::Sender<ReportEvent>,
    connected: watch::Receiver<bool>,
    pub counters: Arc<Counters>,
}

impl Cloud {
    /// Connect to the broker and start collecting reports into `state_dir`.
    pub fn start(
        host: &str,
        port: u16,
        client_id: &str,
        state_dir: &Path,
    ) -> Result<Cloud, CloudError> {
        std::fs::create_dir_all(state_dir).map_err(|e| CloudError::Store(sled::Error::Io(e)))?;
        let db = sled::open(state_dir.join("db"))?;
        let reports = db.open_tree("reports")?;
        let report_index = db.open_tree("report_index")?;
        let readings = ReadingStore::open(&db)?;
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_MESSAGE_BYTES + 4096, MAX_MESSAGE_BYTES + 4096);
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (pubacks, _) = broadcast::channel(64);
        let (events, _) = broadcast::channel(1024);
        let (conn_tx, connected) = watch::channel(false);
        let cloud = Cloud {
            client: client.clone(),
            reports,
            report_index,
            readings,
            db,
            publish_lock: Arc::new(Mutex::new(())),
            pubacks: pubacks.clone(),
            events,
            connected,
            counters: Arc::new(Counters::default()),
        };
        let (inbound_tx, mut inbound_rx) = mpsc::unbounded_channel::<rumqttc::Publish>();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack)))
                        if ack.code == ConnectReturnCode::Success =>
                    {
                        delay = Duration::from_millis(100);
                        let _ = conn_tx.send(true);
                        // Every reconnect may be a fresh session: subscribe again.
                        let _ = client.try_subscribe(Topic::all_reports_filter(), QoS::AtLeastOnce);
                        let _ =
                            client.try_subscribe(Topic::all_telemetry_filter(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if inbound_tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) => {
                        let _ = pubacks.send(a.pkid);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        let _ = conn_tx.send(false);
                        debug!(error = %e, "cloud: broker connection lost");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        let c = cloud.clone();
        tokio::spawn(async move {
            while let Some(p) = inbound_rx.recv().await {
                let ev = match p.topic.parse::<Topic>() {
                    Ok(Topic::Telemetry { tenant, printer }) => {
                        c.ingest_telemetry(tenant, printer, &p.payload).await
                    }
                    _ => c.ingest(&p.topic, &p.payload),
                };
                match &ev {
                    Ok(ReportEvent::Telemetry {
                        message_id,
                        new_reading,
                        ..
                    }) => {
                        debug!(message_id, new_reading, "telemetry received");
                    }
                    Ok(ReportEvent::New(r)) => {
                        c.counters.new.fetch_add(1, Ordering::Relaxed);
                        info!(report_id = %r.report.report_id, status = %r.report.status, "report received");
                    }
                    Ok(ReportEvent::Duplicate { report_id }) => {
                        c.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        debug!(report_id, "duplicate report dropped");
                    }
                    Ok(ReportEvent::Refused { topic, reason }) => {
                        c.counters.refused.fetch_add(1, Ordering::Relaxed);
                        warn!(topic, reason, "report refused");
                    }
                    Err(e) => {
                        // Not acknowledged: the broker redelivers it.
                        warn!(error = %e, topic = %p.topic, "could not store message");
                        continue;
                    }
                }
                if let Ok(ev) = ev {
                    let _ = c.events.send(ev);
                }
                let _ = c.client.ack(&p).await;
            }
        });
        Ok(cloud)
    }

    /// Decode, check and store one report. Storage errors are errors; bad input is a
    /// `Refused` event.
    pub fn ingest(&self, topic: &str, payload: &[u8]) -> Result<ReportEvent, CloudError> {
        let refused = |reason: String| {
            Ok(ReportEvent::Refused {
                topic: topic.to_string(),
                reason,
            })
        };
        let (tenant, printer) = match topic.parse::<Topic>() {
            Ok(Topic::ConfigReport { tenant, printer }) => (tenant, printer),
            Ok(_) => return refused("not a report topic".into()),
            Err(e) => return refused(e.to_string()),
        };
        let report: ApplyReport = match codec::decode(payload) {
            Ok(r) => r,
            Err(e) => return refused(e.to_string()),
        };
        if report.printer_id != printer {
            return refused(format!(
                "report for printer {} on the topic of {printer}",
                report.printer_id
            ));
        }
        let rec = ReceivedReport {
            report,
            received_at: Utc::now(),
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| CloudError::Invalid(e.to_string()))?;
        let id = rec.report.report_id.clone();
        // Insert only if absent: the first delivery wins, later ones are duplicates.
        // The report and its index entry are written in one transaction.
        use sled::Transactional;
        let key = index_key(&tenant, &printer, rec.report.config_version, &id);
        let inserted = (&self.reports, &self.report_index)
            .transaction(|(reports, index)| {
                if reports.get(id.as_bytes())?.is_some() {
                    return Ok(false);
                }
                reports.insert(id.as_bytes(), bytes.as_slice())?;
                index.insert(key.as_bytes(), id.as_bytes())?;
                Ok(true)
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => CloudError::Store(e),
                sled::transaction::TransactionError::Abort(()) => {
                    CloudError::Invalid("transaction aborted".into())
                }
            })?;
        if inserted {
            self.db.flush()?;
            Ok(ReportEvent::New(Box::new(rec)))
        } else {
            Ok(ReportEvent::Duplicate { report_id: id })
        }
    }

    /// Decode, check and keep the reading of one telemetry message (usage for the
    /// migration rules). Bad input is a `Refused` event.
    pub async fn ingest_telemetry(
        &self,
        tenant: Id,
        printer: Id,
        payload: &[u8],
    ) -> Result<ReportEvent, CloudError> {
        let t: platen_protocol::Telemetry = match codec::decode(payload) {
            Ok(t) => t,
            Err(e) => {
                return Ok(ReportEvent::Refused {
                    topic: Topic::Telemetry { tenant, printer }.to_string(),
                    reason: e.to_string(),
                })
            }
        };
        if t.printer_id != printer {
            return Ok(ReportEvent::Refused {
                topic: Topic::Telemetry { tenant, printer }.to_string(),
                reason: format!("telemetry of printer {} on this topic", t.printer_id),
            });
        }
        let new_reading = self.readings.record(&tenant, &t)?;
        if new_reading {
            self.readings.flush().await?;
        }
        Ok(ReportEvent::Telemetry {
            tenant,
            printer,
            message_id: t.message_id,
            new_reading,
        })
    }

    pub fn subscribe_events(&self) -> broadcast::Receiver<ReportEvent> {
        self.events.subscribe()
    }

    pub async fn wait_connected(&self, within: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(within, rx.wait_for(|c| *c))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Publish a desired config, retained with QoS 1, and wait for the broker's PUBACK.
    pub async fn publish_desired(
        &self,
        tenant: &Id,
        config: &DesiredConfig,
    ) -> Result<(), CloudError> {
        config.validate().map_err(CloudError::Invalid)?;
        let topic = Topic::desired(tenant, &config.printer_id).to_string();
        let payload = codec::encode(config);
        // One confirmed publish at a time, so the next PUBACK is ours.
        let _guard = self.publish_lock.lock().await;
        let mut acks = self.pubacks.subscribe();
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await?;
        let within = Duration::from_secs(10);
        tokio::time::timeout(within, acks.recv())
            .await
            .map_err(|_| CloudError::NotAcknowledged(within))?
            .map_err(|_| CloudError::NotAcknowledged(within))?;
        Ok(())
    }

    /// Every stored report, ordered by report id.
    pub fn reports(&self) -> Vec<ReceivedReport> {
        self.reports
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// Reports for `tenant`/`printer` with version ≥ `min_version`, oldest version first.
    pub fn reports_for(&self, tenant: &Id, printer: &Id, min_version: u64) -> Vec<ReceivedReport> {
        let prefix = format!("{tenant}/{printer}/");
        let start = index_key(tenant, printer, min_version, "");
        self.report_index
            .range(start.as_bytes()..)
            .filter_map(|kv| kv.ok())
            .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
            .filter_map(|(_, id)| self.report(&String::from_utf8_lossy(&id)))
            .collect()
    }

    /// The sled database (the contract store keeps its trees in it too).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn report(&self, report_id: &str) -> Option<ReceivedReport> {
        self.reports
            .get(report_id.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
    }

    pub async fn shutdown(&self) {
        let _ = self.db.flush_async().await;
        let _ = self.client.disconnect().await;
    }
}
