//! The broker link: the cloud's MQTT client.
//!
//! It publishes desired configs (retained, QoS 1, waiting for the broker's PUBACK)
//! and collects apply reports: each report is decoded strictly, checked against its
//! topic, stored under its `report_id` if new (deduplication: agents deliver at least
//! once), then acknowledged to the broker once it is durable: what arrived together
//! (up to [`INGEST_BATCH`]) is stored as one batch of the store (group commit). Its
//! MQTT session is persistent, so reports sent while it is offline are delivered when
//! it returns. It also keeps one sample per telemetry reading (page counter, supply
//! state) for the usage that migration rules see, and what agents and printers say of
//! themselves (fault evidence).

pub mod agents;
pub mod limits;

use crate::model::{AgentSeen, PrinterSeen, ReceivedReport};
use crate::store::{self, Store, StoreError, Stored};
use chrono::Utc;
use limits::{Buckets, IngestLimits};
use platen_ops::backoff::Backoff;
use platen_protocol::{
    codec, ApplyReport, DesiredConfig, Health, HealthStatus, Id, Topic, MAX_INCOMING_PACKET_BYTES,
    MAX_MESSAGE_BYTES,
};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch, Mutex};
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("broker: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("the broker did not acknowledge the publish within {0:?}")]
    NotAcknowledged(Duration),
    #[error("desired config refused: {0}")]
    Invalid(String),
}

/// [`Cloud::printer_evidence`].
#[derive(Clone, Debug, Default)]
pub struct PrinterEvidence {
    pub agent: Option<Id>,
    /// The agent's last health message.
    pub health: Option<AgentSeen>,
    pub printer: Option<PrinterSeen>,
}

/// What happened to an inbound report or telemetry message.
#[derive(Clone, Debug)]
pub enum ReportEvent {
    /// A report stored for the first time, and its tenant.
    New(Box<ReceivedReport>, Id),
    Duplicate {
        report_id: String,
    },
    Refused {
        topic: String,
        reason: String,
    },
    /// Refused by the rate limit of its printer (counted, not logged one by one).
    RateLimited {
        topic: String,
    },
    /// Refused like [`ReportEvent::Refused`] and counted, but one of a flood of the
    /// same kind: not logged one by one.
    RefusedQuietly {
        topic: String,
    },
    /// An agent's health message, kept as evidence when its state `changed`.
    Health {
        agent: Id,
        changed: bool,
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
    /// Refused because they answer a version this cloud never published.
    pub unpublished: AtomicU64,
    /// Telemetry refused by the per-printer rate limit.
    pub limited_telemetry: AtomicU64,
    /// Inbound messages the store could not take (down, restarting): kept
    /// unacknowledged and stored on a later attempt.
    pub store_retries: AtomicU64,
    /// Changes this instance stepped but could not save: its claim had run out and
    /// another instance had taken the change over.
    pub claims_lost: AtomicU64,
}

impl Counters {
    /// Prometheus text for `GET /metrics`, with the API's refused requests.
    pub fn render(&self, api_rejected: &std::collections::BTreeMap<u16, u64>) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = format!(
            "# HELP platen_cloud_reports_total Inbound reports by outcome.\n\
             # TYPE platen_cloud_reports_total counter\n\
             platen_cloud_reports_total{{outcome=\"new\"}} {}\n\
             platen_cloud_reports_total{{outcome=\"duplicate\"}} {}\n\
             # HELP platen_cloud_messages_refused_total Inbound reports and telemetry refused \
             (malformed, oversized, wrong topic, printer not the agent's).\n\
             # TYPE platen_cloud_messages_refused_total counter\n\
             platen_cloud_messages_refused_total {}\n\
             # HELP platen_cloud_reports_unpublished_total Reports refused for a version this cloud never published.\n\
             # TYPE platen_cloud_reports_unpublished_total counter\n\
             platen_cloud_reports_unpublished_total {}\n\
             # HELP platen_cloud_messages_rate_limited_total Inbound messages refused by the per-printer rate limits.\n\
             # TYPE platen_cloud_messages_rate_limited_total counter\n\
             platen_cloud_messages_rate_limited_total{{kind=\"telemetry\"}} {}\n\
             # HELP platen_cloud_store_retries_total Inbound messages the state store could not take at once (stored on a later attempt).\n\
             # TYPE platen_cloud_store_retries_total counter\n\
             platen_cloud_store_retries_total {}\n\
             # HELP platen_cloud_claims_lost_total Changes stepped after this instance's claim had run out (its step discarded).\n\
             # TYPE platen_cloud_claims_lost_total counter\n\
             platen_cloud_claims_lost_total {}\n\
             # HELP platen_cloud_api_errors_total API requests answered with an error, by status.\n\
             # TYPE platen_cloud_api_errors_total counter\n",
            get(&self.new),
            get(&self.duplicates),
            get(&self.refused),
            get(&self.unpublished),
            get(&self.limited_telemetry),
            get(&self.store_retries),
            get(&self.claims_lost)
        );
        for (status, n) in api_rejected {
            out.push_str(&format!(
                "platen_cloud_api_errors_total{{status=\"{status}\"}} {n}\n"
            ));
        }
        out
    }
}

/// The stored form of a received report: its JSON as the agent sent it (when it
/// came in the canonical envelope, which decoding just accepted) spliced into a
/// [`ReceivedReport`], instead of serialising the decoded report again.
fn stored_bytes(rec: &ReceivedReport, payload: &[u8]) -> Result<Vec<u8>, CloudError> {
    let invalid = |e: serde_json::Error| CloudError::Invalid(e.to_string());
    let Some(rest) = codec::strip_envelope(payload) else {
        return serde_json::to_vec(rec).map_err(invalid);
    };
    let at = serde_json::to_vec(&rec.received_at).map_err(invalid)?;
    let mut v = Vec::with_capacity(rest.len() + at.len() + 32);
    v.extend_from_slice(b"{\"report\":{");
    v.extend_from_slice(rest);
    v.extend_from_slice(b",\"received_at\":");
    v.extend_from_slice(&at);
    v.push(b'}');
    Ok(v)
}

/// A report message checked and ready to store ([`Cloud::check_report`]).
struct CheckedReport {
    topic: String,
    tenant: Id,
    rec: ReceivedReport,
    /// Its stored form.
    json: Vec<u8>,
}

/// What checking an inbound report gives.
enum Checked {
    /// Nothing to store: refused.
    Done(ReportEvent),
    Report(Box<CheckedReport>),
}

/// Most inbound messages stored under one flush.
pub const INGEST_BATCH: usize = 256;

/// Counted always, logged at the 1st, 2nd, 4th, 8th… occurrence: a flood of the same
/// refusal does not flood the log.
fn worth_logging(nth: u64) -> bool {
    nth.is_power_of_two()
}

/// Most distinct reports stored for one published version of one printer (the
/// genuine report and refusals, possibly from a replaced gateway): a gateway cannot
/// grow the store without bound by inventing report ids.
pub const MAX_REPORTS_PER_VERSION: usize = 8;

/// How the cloud authenticates to the broker (beyond its client id).
#[derive(Clone, Default)]
pub struct BrokerAuth {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub username: Option<String>,
    pub password: Option<platen_ops::secret::Secret>,
}

impl std::fmt::Debug for BrokerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAuth")
            .field("tls", &self.tls.is_some())
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

#[derive(Clone)]
pub struct Cloud {
    client: AsyncClient,
    /// Reports, published versions, seen state and readings (the contract store's
    /// backend too).
    store: Store,
    limits: IngestLimits,
    buckets: Arc<std::sync::Mutex<Buckets>>,
    /// What the current batch saw of each printer (`{tenant}/{printer}`), so a batch
    /// of one printer's messages reads its seen state once.
    seen_memo: Arc<std::sync::Mutex<std::collections::HashMap<String, Option<PrinterSeen>>>>,
    publish_lock: Arc<Mutex<()>>,
    pubacks: broadcast::Sender<u16>,
    events: broadcast::Sender<ReportEvent>,
    connected: watch::Receiver<bool>,
    signer: Option<Arc<platen_protocol::Signer>>,
    registry: Option<Arc<agents::Registry>>,
    /// The shared-subscription filters, when the instance is in a group.
    shared_filters: Option<[String; 2]>,
    pub counters: Arc<Counters>,
}

impl Cloud {
    /// Connect to the broker (plain, no credentials) and start collecting reports
    /// into `state_dir`.
    pub fn start(
        host: &str,
        port: u16,
        client_id: &str,
        state_dir: &Path,
    ) -> Result<Cloud, CloudError> {
        Self::start_with(
            host,
            port,
            client_id,
            state_dir,
            BrokerAuth::default(),
            None,
        )
    }

    /// Sign every desired config published from now on with `signer`.
    pub fn with_signer(mut self, signer: Option<Arc<platen_protocol::Signer>>) -> Cloud {
        self.signer = signer;
        self
    }

    /// [`Cloud::start`] with TLS and/or credentials, accepting reports and telemetry
    /// only from the agent each printer is registered to (when a registry is given).
    pub fn start_with(
        host: &str,
        port: u16,
        client_id: &str,
        state_dir: &Path,
        auth: BrokerAuth,
        registry: Option<Arc<agents::Registry>>,
    ) -> Result<Cloud, CloudError> {
        let store = Store::open_sled(state_dir)?;
        Self::connect(host, port, client_id, store, auth, registry, None)
    }

    /// Connect to the broker and collect reports and telemetry into `store`.
    ///
    /// With `share_group`, reports and telemetry come through the MQTT shared
    /// subscriptions `$share/<group>/…`: the broker hands each message to one instance
    /// of the group. Agents' health is subscribed by every instance (it is small, and
    /// each instance judges faults by it). The session is persistent under
    /// `client_id`: what the broker dispatched to an instance that died waits in its
    /// session until the instance (the same client id) connects again.
    pub fn connect(
        host: &str,
        port: u16,
        client_id: &str,
        store: Store,
        auth: BrokerAuth,
        registry: Option<Arc<agents::Registry>>,
        share_group: Option<&str>,
    ) -> Result<Cloud, CloudError> {
        let shared = |filter: String| match share_group {
            Some(g) => format!("$share/{g}/{filter}"),
            None => filter,
        };
        let reports_filter = shared(Topic::all_reports_filter());
        let telemetry_filter = shared(Topic::all_telemetry_filter());
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_manual_acks(true)
            // See MAX_INCOMING_PACKET_BYTES: read oversized messages, refuse them, ack.
            .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, MAX_MESSAGE_BYTES + 4096);
        if let Some(user) = &auth.username {
            let pass = auth.password.as_ref().map(|p| p.expose()).unwrap_or("");
            opts.set_credentials(user, pass);
        }
        if let Some(tls) = auth.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (pubacks, _) = broadcast::channel(64);
        let (events, _) = broadcast::channel(1024);
        let (conn_tx, connected) = watch::channel(false);
        let cloud = Cloud {
            client: client.clone(),
            store,
            limits: IngestLimits::default(),
            buckets: Arc::new(std::sync::Mutex::new(Buckets::default())),
            seen_memo: Default::default(),
            publish_lock: Arc::new(Mutex::new(())),
            pubacks: pubacks.clone(),
            events,
            connected,
            signer: None,
            registry,
            shared_filters: share_group.map(|_| [reports_filter.clone(), telemetry_filter.clone()]),
            counters: Arc::new(Counters::default()),
        };
        let (inbound_tx, mut inbound_rx) = mpsc::unbounded_channel::<rumqttc::Publish>();
        tokio::spawn(async move {
            let mut reconnect = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack)))
                        if ack.code == ConnectReturnCode::Success =>
                    {
                        reconnect.reset();
                        let _ = conn_tx.send(true);
                        // Every reconnect may be a fresh session: subscribe again.
                        let _ = client.try_subscribe(reports_filter.clone(), QoS::AtLeastOnce);
                        let _ = client.try_subscribe(telemetry_filter.clone(), QoS::AtLeastOnce);
                        if reports_filter.starts_with("$share/") {
                            // A session that once subscribed without the group would
                            // also get every message directly.
                            let _ = client.try_unsubscribe(Topic::all_reports_filter());
                            let _ = client.try_unsubscribe(Topic::all_telemetry_filter());
                        }
                        // Agents' health: evidence of who caused a missed deadline.
                        let _ = client.try_subscribe(Topic::all_health_filter(), QoS::AtLeastOnce);
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
                        tokio::time::sleep(reconnect.next_delay()).await;
                    }
                }
            }
        });
        let c = cloud.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(INGEST_BATCH);
            while inbound_rx.recv_many(&mut batch, INGEST_BATCH).await > 0 {
                // What could not be stored is tried again, backing off, before
                // anything newer: the store may be down for a while.
                let mut pending = std::mem::take(&mut batch);
                let mut retry = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
                loop {
                    pending = c.ingest_batch(pending).await;
                    if pending.is_empty() {
                        break;
                    }
                    tokio::time::sleep(retry.next_delay()).await;
                }
            }
        });
        Ok(cloud)
    }

    /// Store a batch of inbound messages off the runtime's threads, make them durable
    /// with one sync, then acknowledge each (group commit). Returns the messages that
    /// could not be stored (or whose sync failed): unacknowledged, for the caller to
    /// try again — the broker resends an unacknowledged message only after a
    /// reconnect, so a store that is down for a while (a database restart) must not
    /// leave them waiting for one.
    async fn ingest_batch(&self, batch: Vec<rumqttc::Publish>) -> Vec<rumqttc::Publish> {
        let c = self.clone();
        let stored = tokio::task::spawn_blocking(move || {
            // One transaction for the batch where the backend has them (group commit).
            if c.store.begin_batch().is_err() {
                return (batch, Vec::new(), false);
            }
            let results = c.store_batch(&batch);
            let synced = c.store.sync().is_ok();
            (batch, results, synced)
        })
        .await;
        let Ok((batch, results, synced)) = stored else {
            warn!("storing a batch of messages failed; they stay unacknowledged");
            return Vec::new();
        };
        if !synced {
            self.counters
                .store_retries
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            warn!(
                messages = batch.len(),
                "could not make the state store durable; not acknowledged, trying again"
            );
            return batch;
        }
        let mut retry = Vec::new();
        let mut first_error = None;
        for (p, ev) in batch.into_iter().zip(results) {
            match &ev {
                Ok(ReportEvent::Telemetry {
                    message_id,
                    new_reading,
                    ..
                }) => {
                    debug!(message_id, new_reading, "telemetry received");
                }
                Ok(ReportEvent::New(r, _)) => {
                    self.counters.new.fetch_add(1, Ordering::Relaxed);
                    info!(report_id = %r.report.report_id, status = %r.report.status, "report received");
                }
                Ok(ReportEvent::Duplicate { report_id }) => {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    debug!(report_id, "duplicate report dropped");
                }
                Ok(ReportEvent::Refused { topic, reason }) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(topic, reason, "message refused");
                }
                Ok(ReportEvent::RateLimited { .. }) => {
                    // Counted by kind; a flood is not logged line by line.
                }
                Ok(ReportEvent::RefusedQuietly { .. }) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ReportEvent::Health { .. }) => {}
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                    // A store that is down is waited for; anything else (an
                    // unreadable record) is not retried in a loop that would stall
                    // ingest: unacknowledged, it comes again after a reconnect.
                    if matches!(e, CloudError::Store(StoreError::Backend { .. })) {
                        retry.push(p);
                    }
                    continue;
                }
            }
            if let Ok(ev) = ev {
                let _ = self.events.send(ev);
            }
            let _ = self.client.ack(&p).await;
        }
        self.counters
            .store_retries
            .fetch_add(retry.len() as u64, Ordering::Relaxed);
        if let Some(error) = first_error {
            // One line per attempt, not one per message.
            warn!(
                messages = retry.len(),
                error, "could not store messages; not acknowledged, trying again"
            );
        }
        retry
    }

    /// Check and store each message of a batch (no sync): the reports of the batch
    /// are stored with one store call ([`store::Reports::store_reports`]).
    fn store_batch(&self, batch: &[rumqttc::Publish]) -> Vec<Result<ReportEvent, CloudError>> {
        let now = std::time::Instant::now();
        self.forget_seen();
        let mut results: Vec<Option<Result<ReportEvent, CloudError>>> =
            Vec::with_capacity(batch.len());
        let mut reports: Vec<(usize, Box<CheckedReport>)> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            let topic = p.topic.parse::<Topic>();
            if let Some(refusal) = self.rate_limited(&topic, &p.topic, now) {
                results.push(Some(Ok(refusal)));
                continue;
            }
            let done = match topic {
                Ok(Topic::Telemetry { tenant, printer }) => {
                    self.ingest_telemetry_unflushed(tenant, printer, &p.payload)
                }
                Ok(Topic::AgentHealth { agent }) => {
                    self.ingest_health(&agent, &p.payload, p.retain)
                }
                _ => match self.check_report(&p.topic, &p.payload) {
                    Ok(Checked::Done(ev)) => Ok(ev),
                    Ok(Checked::Report(r)) => {
                        // Stored below, with the batch's other reports.
                        reports.push((i, r));
                        results.push(None);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            results.push(Some(done));
        }
        if !reports.is_empty() {
            let new: Vec<store::NewReport<'_>> = reports
                .iter()
                .map(|(_, r)| store::NewReport {
                    tenant: &r.tenant,
                    report: &r.rec,
                    json: &r.json,
                })
                .collect();
            let stored = self.store.store_reports(&new, MAX_REPORTS_PER_VERSION);
            drop(new);
            match stored {
                Ok(stored) => {
                    for ((i, r), s) in reports.into_iter().zip(stored) {
                        results[i] = Some(self.report_stored(r, s));
                    }
                }
                Err(e) => {
                    // Every report of the batch fails as the call did (a store that is
                    // down stays retryable).
                    for (i, _) in reports {
                        results[i] = Some(Err(match &e {
                            StoreError::Backend { backend, message } => {
                                CloudError::Store(StoreError::Backend {
                                    backend,
                                    message: message.clone(),
                                })
                            }
                            other => CloudError::Invalid(other.to_string()),
                        }));
                    }
                }
            }
        }
        self.forget_seen();
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(CloudError::Invalid("report not stored".into()))))
            .collect()
    }

    /// Forget what [`Cloud::saw_printer`] remembered (it remembers within one batch).
    fn forget_seen(&self) {
        if let Ok(mut m) = self.seen_memo.lock() {
            m.clear();
        }
    }

    /// Decode, check and store one report, durably. Storage errors are errors; bad
    /// input is a `Refused` event.
    pub fn ingest(&self, topic: &str, payload: &[u8]) -> Result<ReportEvent, CloudError> {
        self.forget_seen();
        let ev = self.ingest_unflushed(topic, payload)?;
        if matches!(ev, ReportEvent::New(..)) {
            self.store.sync()?;
        }
        Ok(ev)
    }

    /// [`Cloud::ingest`] without the flush (the batch flushes once for all).
    fn ingest_unflushed(&self, topic: &str, payload: &[u8]) -> Result<ReportEvent, CloudError> {
        match self.check_report(topic, payload)? {
            Checked::Done(ev) => Ok(ev),
            Checked::Report(r) => {
                let stored =
                    self.store
                        .store_report(&r.tenant, &r.rec, &r.json, MAX_REPORTS_PER_VERSION)?;
                self.report_stored(r, stored)
            }
        }
    }

    /// Decode and check a report message: refused, or a report to store.
    fn check_report(&self, topic: &str, payload: &[u8]) -> Result<Checked, CloudError> {
        let refused = |reason: String| {
            Ok(Checked::Done(ReportEvent::Refused {
                topic: topic.to_string(),
                reason,
            }))
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
        if let Some(reg) = &self.registry {
            if let Err(why) = reg.check(&tenant, &printer, &report.agent_id) {
                return refused(why);
            }
        }
        let rec = ReceivedReport {
            report,
            received_at: Utc::now(),
        };
        let json = stored_bytes(&rec, payload)?;
        Ok(Checked::Report(Box::new(CheckedReport {
            topic: topic.to_string(),
            tenant,
            rec,
            json,
        })))
    }

    /// The event of a report the store took (or refused), noting its printer's agent.
    fn report_stored(
        &self,
        r: Box<CheckedReport>,
        stored: Stored,
    ) -> Result<ReportEvent, CloudError> {
        let CheckedReport {
            topic, tenant, rec, ..
        } = *r;
        let (printer, version) = (&rec.report.printer_id, rec.report.config_version);
        let refused = |reason: String| {
            Ok(ReportEvent::Refused {
                topic: topic.clone(),
                reason,
            })
        };
        match stored {
            Stored::Unpublished => {
                let n = self.counters.unpublished.fetch_add(1, Ordering::Relaxed) + 1;
                if !worth_logging(n) {
                    return Ok(ReportEvent::RefusedQuietly { topic });
                }
                refused(format!(
                    "version {version} of {tenant}/{printer} was never published by this cloud ({n} such reports so far)"
                ))
            }
            Stored::Full => refused(format!(
                "version {version} of {tenant}/{printer} already has {MAX_REPORTS_PER_VERSION} reports"
            )),
            Stored::New => {
                self.saw_printer(&tenant, printer, &rec.report.agent_id, None)?;
                Ok(ReportEvent::New(Box::new(rec), tenant))
            }
            Stored::Duplicate => {
                self.saw_printer(&tenant, printer, &rec.report.agent_id, None)?;
                Ok(ReportEvent::Duplicate {
                    report_id: rec.report.report_id,
                })
            }
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
        self.forget_seen();
        let ev = self.ingest_telemetry_unflushed(tenant, printer, payload)?;
        if matches!(
            ev,
            ReportEvent::Telemetry {
                new_reading: true,
                ..
            }
        ) {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.sync())
                .await
                .map_err(|e| CloudError::Invalid(e.to_string()))??;
        }
        Ok(ev)
    }

    fn ingest_telemetry_unflushed(
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
        if let Some(reg) = &self.registry {
            if let Err(reason) = reg.check(&tenant, &printer, &t.agent_id) {
                return Ok(ReportEvent::Refused {
                    topic: Topic::Telemetry { tenant, printer }.to_string(),
                    reason,
                });
            }
        }
        if let Some(r) = &t.reading {
            if r.read_at > Utc::now() + chrono::Duration::minutes(10) {
                return Ok(ReportEvent::Refused {
                    topic: Topic::Telemetry { tenant, printer }.to_string(),
                    reason: format!("reading time {} is in the future", r.read_at),
                });
            }
        }
        self.saw_printer(&tenant, &printer, &t.agent_id, Some(t.reachable))?;
        let new_reading = match crate::model::Sample::of(&t) {
            Some(sample) => self.store.record_sample(&tenant, &printer, &sample)?,
            None => false,
        };
        Ok(ReportEvent::Telemetry {
            tenant,
            printer,
            message_id: t.message_id,
            new_reading,
        })
    }

    /// The rate-limit refusal of a message on `topic`, if it is over its printer's rate.
    fn rate_limited(
        &self,
        topic: &Result<Topic, platen_protocol::topics::TopicError>,
        raw: &str,
        now: std::time::Instant,
    ) -> Option<ReportEvent> {
        let (Ok(Topic::Telemetry { tenant, printer }), Some(rate)) = (topic, self.limits.telemetry)
        else {
            return None;
        };
        let counter = &self.counters.limited_telemetry;
        let key = format!("{tenant}/{printer}");
        let ok = self
            .buckets
            .lock()
            .map(|mut b| b.take(&key, rate, now))
            .unwrap_or(true);
        if ok {
            return None;
        }
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if worth_logging(n) {
            warn!(
                topic = raw,
                refused_so_far = n,
                "messages over the printer's rate limit refused"
            );
        }
        Some(ReportEvent::RateLimited {
            topic: raw.to_string(),
        })
    }

    /// Use these ingest rate limits (default: [`IngestLimits::default`]).
    pub fn with_limits(mut self, limits: IngestLimits) -> Cloud {
        self.limits = limits;
        self
    }

    /// Note that `version` of `tenant`/`printer` is published (before publishing it).
    pub fn record_published(
        &self,
        tenant: &Id,
        printer: &Id,
        version: u64,
    ) -> Result<(), CloudError> {
        self.record_published_for(tenant, printer, version, None)
    }

    /// [`Cloud::record_published`], noting the contract change the version is for
    /// (report retention asks whether that change settled).
    fn record_published_for(
        &self,
        tenant: &Id,
        printer: &Id,
        version: u64,
        change: Option<&str>,
    ) -> Result<(), CloudError> {
        self.record_versions(tenant, printer, [version], change)
    }

    /// [`Cloud::record_published`] for many versions with one flush (bulk loads and
    /// the benchmark).
    pub fn record_published_many(
        &self,
        tenant: &Id,
        printer: &Id,
        versions: impl IntoIterator<Item = u64>,
    ) -> Result<(), CloudError> {
        self.record_versions(tenant, printer, versions, None)
    }

    fn record_versions(
        &self,
        tenant: &Id,
        printer: &Id,
        versions: impl IntoIterator<Item = u64>,
        change: Option<&str>,
    ) -> Result<(), CloudError> {
        let versions: Vec<u64> = versions.into_iter().collect();
        self.store
            .record_published(tenant, printer, &versions, change, Utc::now())?;
        Ok(())
    }

    /// Keep what a report or telemetry message says of its printer's agent (and, for
    /// telemetry, reachability); written only when it changes.
    fn saw_printer(
        &self,
        tenant: &Id,
        printer: &Id,
        agent: &Id,
        reachable: Option<bool>,
    ) -> Result<(), CloudError> {
        let key = format!("{tenant}/{printer}");
        let remembered = self
            .seen_memo
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned());
        let old = match remembered {
            Some(old) => old,
            None => self.store.printer_seen(tenant, printer)?,
        };
        let reachable = reachable
            .or(old.as_ref().map(|o| o.reachable))
            .unwrap_or(true);
        let since = match &old {
            Some(o) if o.reachable == reachable && &o.agent == agent => {
                if let Ok(mut m) = self.seen_memo.lock() {
                    m.insert(key, old);
                }
                return Ok(());
            }
            Some(o) if o.reachable == reachable => o.since,
            _ => Utc::now(),
        };
        let seen = PrinterSeen {
            agent: agent.clone(),
            reachable,
            since,
        };
        self.store.set_printer_seen(tenant, printer, &seen)?;
        if let Ok(mut m) = self.seen_memo.lock() {
            m.insert(key, Some(seen));
        }
        Ok(())
    }

    /// Keep an agent's health message (only its own agent may publish it: the ACL).
    fn ingest_health(
        &self,
        agent: &Id,
        payload: &[u8],
        retained: bool,
    ) -> Result<ReportEvent, CloudError> {
        let topic = Topic::health(agent).to_string();
        let h: Health = match codec::decode(payload) {
            Ok(h) => h,
            Err(e) => {
                return Ok(ReportEvent::Refused {
                    topic,
                    reason: e.to_string(),
                })
            }
        };
        if &h.agent_id != agent {
            return Ok(ReportEvent::Refused {
                topic,
                reason: format!("health of agent {} on this topic", h.agent_id),
            });
        }
        let up = h.status == HealthStatus::Up;
        let old = self.store.agent_seen(agent)?;
        if old.as_ref().is_some_and(|o| o.up == up) {
            // The minutely `up` of a running agent: nothing to write or flush.
            return Ok(ReportEvent::Health {
                agent: agent.clone(),
                changed: false,
            });
        }
        // A live message: it changed now. A retained one (read at subscription): the
        // agent's own time, but never in the future.
        let now = Utc::now();
        let since = if retained { h.since.min(now) } else { now };
        let seen = AgentSeen {
            up,
            since,
            reason: h.reason,
        };
        self.store.set_agent_seen(agent, &seen)?;
        Ok(ReportEvent::Health {
            agent: agent.clone(),
            changed: true,
        })
    }

    /// What the cloud knows of who answers for a printer: its agent (registered, or
    /// the last one heard on its topics) with that agent's last health, and the
    /// printer's reachability — the evidence a fault is attributed by.
    pub fn printer_evidence(&self, tenant: &Id, printer: &Id) -> PrinterEvidence {
        let seen = self.store.printer_seen(tenant, printer).ok().flatten();
        let agent = self
            .registry
            .as_ref()
            .and_then(|r| r.owner(tenant, printer).cloned())
            .or_else(|| seen.as_ref().map(|p| p.agent.clone()));
        let health = agent
            .as_ref()
            .and_then(|a| self.store.agent_seen(a).ok().flatten());
        PrinterEvidence {
            agent,
            health,
            printer: seen,
        }
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
        self.publish_desired_for(tenant, config, None).await
    }

    /// [`Cloud::publish_desired`] for a contract change (noted with the version).
    pub async fn publish_desired_for(
        &self,
        tenant: &Id,
        config: &DesiredConfig,
        change: Option<&str>,
    ) -> Result<(), CloudError> {
        config.validate().map_err(CloudError::Invalid)?;
        // Recorded (and flushed) before the publish: a report can only answer a
        // version the store knows was published.
        self.record_published_for(tenant, &config.printer_id, config.version, change)?;
        let topic = Topic::desired(tenant, &config.printer_id).to_string();
        let payload = match &self.signer {
            Some(signer) => {
                let mut signed = config.clone();
                signer.sign(tenant, &mut signed);
                codec::encode(&signed)
            }
            None => codec::encode(config),
        };
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
        self.store.reports().unwrap_or_default()
    }

    /// Reports for `tenant`/`printer` with a version in `versions`, oldest version first.
    pub fn reports_for(
        &self,
        tenant: &Id,
        printer: &Id,
        versions: std::ops::RangeInclusive<u64>,
    ) -> Vec<ReceivedReport> {
        self.store
            .reports_for(tenant, printer, versions)
            .unwrap_or_default()
    }

    /// The store (the contract store is the same backend).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn report(&self, report_id: &str) -> Option<ReceivedReport> {
        self.store.report(report_id).ok().flatten()
    }

    /// Inbound messages taken so far (stored, duplicate, refused or rate-limited).
    fn taken(&self) -> u64 {
        let c = &self.counters;
        [
            &c.new,
            &c.duplicates,
            &c.refused,
            &c.unpublished,
            &c.limited_telemetry,
        ]
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .sum()
    }

    /// Wait until no message has come in for `quiet`; the number that came meanwhile.
    async fn until_quiet(&self, quiet: Duration) -> u64 {
        let first = self.taken();
        let (mut last, mut since) = (first, tokio::time::Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.taken();
            if now != last {
                (last, since) = (now, tokio::time::Instant::now());
            } else if since.elapsed() >= quiet {
                return now - first;
            }
        }
    }

    /// Leave the shared-subscription group for good (an instance being retired):
    /// take in what the broker kept in this instance's session until nothing has
    /// come for `quiet`, unsubscribe from the shared filters, and take in what was
    /// still on its way. From then on the broker gives this instance's share to the
    /// others. Returns the number of messages taken in; `None` outside a group.
    pub async fn leave_group(&self, quiet: Duration) -> Option<u64> {
        let filters = self.shared_filters.as_ref()?;
        let mut taken = self.until_quiet(quiet).await;
        for f in filters {
            if let Err(e) = self.client.unsubscribe(f.clone()).await {
                warn!(filter = %f, error = %e, "could not unsubscribe");
            }
        }
        taken += self.until_quiet(quiet).await;
        info!(taken, "left the shared-subscription group");
        Some(taken)
    }

    pub async fn shutdown(&self) {
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.sync()).await;
        let _ = self.client.disconnect().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platen_protocol::{Code, ReportStatus, SettingResult, SettingValue};

    fn report(v: u64) -> ApplyReport {
        let now = Utc::now();
        ApplyReport {
            report_id: format!("gw:p1:v{v}"),
            agent_id: "gw".parse().unwrap(),
            printer_id: "p1".parse().unwrap(),
            config_version: v,
            status: ReportStatus::Applied,
            settings: vec![SettingResult {
                name: "sysLocation".into(),
                desired: SettingValue::Text("Floor \"2\"\n".into()),
                read_back: Some(SettingValue::Text("Floor \"2\"\n".into())),
                code: Code::Verified,
                detail: "verified by read-back".into(),
                attempts: 1,
                verified_at: Some(now),
            }],
            received_at: now,
            completed_at: now,
            refused: None,
        }
    }

    #[test]
    fn stored_reports_read_back_as_received_whatever_the_envelope() {
        let rec = ReceivedReport {
            report: report(7),
            received_at: Utc::now(),
        };
        for payload in [
            codec::encode(&rec.report),
            codec::encode_pretty(&rec.report),
            serde_json::to_vec(&rec.report).unwrap(), // no envelope (protocol 1.0 implied)
        ] {
            let bytes = stored_bytes(&rec, &payload).unwrap();
            let back: ReceivedReport = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back, rec, "{}", String::from_utf8_lossy(&payload));
        }
    }

    /// A report of a version this cloud never published is refused and counted, and
    /// a version holds a bounded number of distinct reports.
    #[tokio::test]
    async fn only_published_versions_are_stored_and_each_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cloud::start("127.0.0.1", 1, "t", dir.path()).unwrap();
        let topic = "platen/v1/acme/p1/config/report";
        let (acme, p1): (Id, Id) = ("acme".parse().unwrap(), "p1".parse().unwrap());
        for v in [5, u64::MAX] {
            let ev = c.ingest(topic, &codec::encode(&report(v))).unwrap();
            let ReportEvent::Refused { reason, .. } = ev else {
                panic!("{ev:?}")
            };
            assert!(reason.contains("never published"), "{reason}");
        }
        assert_eq!(c.counters.unpublished.load(Ordering::Relaxed), 2);
        assert!(c.reports().is_empty());
        c.record_published(&acme, &p1, 5).unwrap();
        // Reports of the same version from MAX_REPORTS_PER_VERSION + 2 agents.
        let mut stored = 0;
        for i in 0..MAX_REPORTS_PER_VERSION + 2 {
            let mut r = report(5);
            r.agent_id = format!("gw{i}").parse().unwrap();
            r.report_id = ApplyReport::make_id(&r.agent_id, &p1, 5);
            if matches!(
                c.ingest(topic, &codec::encode(&r)).unwrap(),
                ReportEvent::New(..)
            ) {
                stored += 1;
            }
        }
        assert_eq!(stored, MAX_REPORTS_PER_VERSION);
        // A redelivery of a stored one is still a duplicate, not a refusal.
        let mut r = report(5);
        r.agent_id = "gw0".parse().unwrap();
        r.report_id = ApplyReport::make_id(&r.agent_id, &p1, 5);
        assert!(matches!(
            c.ingest(topic, &codec::encode(&r)).unwrap(),
            ReportEvent::Duplicate { .. }
        ));
    }

    /// Reports of a change settled before the cutoff go, unless a ledger entry refers
    /// to the change; those of open changes and of hand-published versions stay.
    #[tokio::test]
    async fn report_retention_keeps_open_and_paid_changes_evidence() {
        use crate::model::{ChangeKind, Contract, ContractChange};
        use crate::model::{ChangeRecord, LedgerEntry};
        let dir = tempfile::tempdir().unwrap();
        let c = Cloud::start("127.0.0.1", 1, "t", dir.path()).unwrap();
        let store = c.store().clone();
        let (acme, now) = ("acme".parse::<Id>().unwrap(), Utc::now());
        let mut changes = Vec::new();
        for (i, printer) in ["p1", "p2", "p3"].iter().enumerate() {
            let k = Contract {
                id: format!("c{i}").parse().unwrap(),
                tenant: acme.clone(),
                printers: vec![printer.parse().unwrap()],
                plan: "basic".parse().unwrap(),
                effective_at: now,
                time_zone: "UTC".into(),
                currency: "EUR".into(),
                term_months: None,
                created_at: now,
            };
            let start = ContractChange {
                id: format!("c{i}.1"),
                contract: k.id.clone(),
                seq: 1,
                change: ChangeKind::Start,
                effective_at: now,
                requested_at: now,
                plan: k.plan.clone(),
                settings: Default::default(),
            };
            store.create_contract(&k, &start, false).unwrap();
            c.record_published_for(&acme, &k.printers[0], 1, Some(&start.id))
                .unwrap();
            let mut r = report(1);
            r.printer_id = k.printers[0].clone();
            r.report_id = ApplyReport::make_id(&r.agent_id, &r.printer_id, 1);
            let topic = format!("platen/v1/acme/{printer}/config/report");
            assert!(matches!(
                c.ingest(&topic, &codec::encode(&r)).unwrap(),
                ReportEvent::New(..)
            ));
            changes.push((k, start, r.report_id));
        }
        // c0 settled long ago; c1 settled long ago but paid; c2 still open.
        let long_ago = now - chrono::Duration::days(500);
        for (k, start, _) in &changes[..2] {
            let mut rec = ChangeRecord {
                change: start.clone(),
                setup: Default::default(),
            };
            rec.setup.settled = true;
            rec.setup.settled_at = Some(long_ago);
            store.save_change(&rec, None).unwrap();
            if k.id.as_str() == "c1" {
                let decision =
                    crate::billing::compensation::decide(&crate::billing::compensation::Input {
                        service: &crate::model::ServiceKind::Basic { monthly_fee: 100 },
                        tz: chrono_tz::UTC,
                        t0: long_ago - chrono::Duration::hours(1),
                        t1: Some(long_ago),
                        fault: true,
                        now,
                    });
                let crate::billing::compensation::Decision::Final { parts } = decision else {
                    panic!()
                };
                for part in parts {
                    store
                        .add_ledger(&LedgerEntry {
                            key: format!("{}/{}", start.id, part.period.label()),
                            tenant: acme.clone(),
                            contract: k.id.clone(),
                            change_id: start.id.clone(),
                            currency: "EUR".into(),
                            created_at: now,
                            reverses: None,
                            part,
                        })
                        .unwrap();
                }
            }
        }
        // A hand-published version (no change noted): kept.
        let p9: Id = "p9".parse().unwrap();
        c.record_published(&acme, &p9, 1).unwrap();
        let mut r9 = report(1);
        r9.printer_id = p9.clone();
        r9.report_id = ApplyReport::make_id(&r9.agent_id, &p9, 1);
        c.ingest("platen/v1/acme/p9/config/report", &codec::encode(&r9))
            .unwrap();
        let before = now - chrono::Duration::days(400);
        let (mut removed, mut from) = (0, Vec::new());
        loop {
            let (n, next) = store.prune_settled_reports(before, &from, 2).unwrap();
            removed += n;
            match next {
                Some(k) => from = k,
                None => break,
            }
        }
        assert_eq!(removed, 1);
        assert!(
            c.report(&changes[0].2).is_none(),
            "settled, unpaid: removed"
        );
        assert!(
            c.report(&changes[1].2).is_some(),
            "paid: its evidence stays"
        );
        assert!(c.report(&changes[2].2).is_some(), "open: stays");
        assert!(c.report(&r9.report_id).is_some(), "hand-published: stays");
        assert!(c
            .reports_for(&acme, &"p1".parse().unwrap(), 0..=u64::MAX)
            .is_empty());
    }

    #[tokio::test]
    async fn ingest_stores_once_and_indexes_every_report() {
        let dir = tempfile::tempdir().unwrap();
        // No broker on port 1: ingest does not need one.
        let c = Cloud::start("127.0.0.1", 1, "t", dir.path()).unwrap();
        let topic = "platen/v1/acme/p1/config/report";
        let (acme, p1): (Id, Id) = ("acme".parse().unwrap(), "p1".parse().unwrap());
        for v in [1, 2, 3] {
            c.record_published(&acme, &p1, v).unwrap();
        }
        for v in [1, 2, 2, 3] {
            c.ingest(topic, &codec::encode(&report(v))).unwrap();
        }
        assert!(matches!(
            c.ingest(topic, &codec::encode(&report(2))).unwrap(),
            ReportEvent::Duplicate { .. }
        ));
        let got: Vec<u64> = c
            .reports_for(&acme, &p1, 2..=u64::MAX)
            .iter()
            .map(|r| r.report.config_version)
            .collect();
        assert_eq!(got, vec![2, 3]);
        let bounded: Vec<u64> = c
            .reports_for(&acme, &p1, 1..=2)
            .iter()
            .map(|r| r.report.config_version)
            .collect();
        assert_eq!(bounded, vec![1, 2], "the upper bound holds");
        assert_eq!(c.reports().len(), 3);
        let stored = c.report("gw:p1:v3").unwrap().report;
        assert_eq!(
            stored.settings[0].desired,
            SettingValue::Text("Floor \"2\"\n".into())
        );
    }
}
