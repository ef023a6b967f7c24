//! The agent's MQTT link (rumqttc), built around its known pitfalls.
//!
//! Two tasks:
//! - **poll task**: the only caller of `EventLoop::poll`; it never awaits a publish.
//!   It forwards inbound publishes (manual acks: the handler persists, then acks),
//!   maps each outgoing publish's packet id to what it carried, and turns PUBACKs
//!   into outbox deletions. On a connection error it discards rumqttc's in-memory
//!   `pending` queue (our outbox in sled is the source of truth), then sleeps with
//!   exponential backoff and jitter before the next attempt.
//! - **pump task**: on every CONNACK (treated as a possibly fresh session) it
//!   re-subscribes, republishes retained health `up` (and again every minute, with the
//!   uptime), and (re)sends every outbox entry
//!   with `try_publish`, at most [`WINDOW`] in flight.
//!
//! Matching PUBACKs to outbox entries: the pump pushes a tag and calls `try_publish`
//! under one lock; rumqttc assigns packet ids in request order and reports each as
//! `Outgoing::Publish(pkid)`, where the poll task pops the tag. After an error the
//! poll task, under the same lock, drains the request channel (`clean`), drops
//! `pending` and clears all tags, so no stale tag can meet a new packet id.

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::store::Store;
use chrono::Utc;
use platen_protocol::{
    codec, Health, HealthStatus, Id, Topic, MAX_INCOMING_PACKET_BYTES, MAX_MESSAGE_BYTES,
};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet,
    Publish, QoS,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Most outbox reports in flight (published, not yet acknowledged) at once.
pub const WINDOW: usize = 32;
/// rumqttc's inflight limit: above WINDOW plus health publishes, so packet ids never collide.
const INFLIGHT: u16 = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Outbox(u64),
    Untracked,
}

#[derive(Default)]
struct LinkState {
    connected: bool,
    fresh_session: bool,
    stopping: bool,
    tags: VecDeque<Tag>,
    by_pkid: HashMap<u16, Tag>,
    inflight: HashSet<u64>,
    reconnects: u64,
    /// Why the state store cannot be written, and since when, while it cannot:
    /// health is `down`.
    storage_fault: Option<(String, chrono::DateTime<Utc>)>,
    /// Health changed: publish it at the next pump round.
    health_dirty: bool,
}

impl LinkState {
    fn reset(&mut self) {
        self.connected = false;
        self.tags.clear();
        self.by_pkid.clear();
        self.inflight.clear();
    }
}

/// A handle on the running link.
#[derive(Clone)]
pub struct MqttLink {
    client: AsyncClient,
    state: Arc<Mutex<LinkState>>,
    wake: Arc<Notify>,
    agent: Id,
    since: chrono::DateTime<Utc>,
    started: std::time::Instant,
}

pub struct LinkTasks {
    pub poll: JoinHandle<()>,
    pub pump: JoinHandle<()>,
}

fn lock(m: &Mutex<LinkState>) -> MutexGuard<'_, LinkState> {
    // A panic while holding this lock would be a bug in this module; keep going
    // with the state as it is rather than cascading the panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Republish the retained `up` message this often, so its uptime stays current.
const HEALTH_EVERY: Duration = Duration::from_secs(60);

fn health(
    agent: &Id,
    status: HealthStatus,
    since: chrono::DateTime<Utc>,
    uptime: Option<Duration>,
    reason: Option<String>,
) -> Vec<u8> {
    codec::encode(&Health {
        agent_id: agent.clone(),
        status,
        version: platen_ops::version::short().into(),
        since,
        uptime_secs: uptime.map(|d| d.as_secs()),
        reason,
    })
}

impl MqttLink {
    /// Start the link. Inbound publishes (desired configs) arrive on the returned
    /// receiver and must be acknowledged with [`MqttLink::ack`] once persisted.
    pub fn start(
        cfg: &AgentConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
        store: Store,
        subscriptions: Vec<String>,
    ) -> (MqttLink, mpsc::UnboundedReceiver<Publish>, LinkTasks) {
        let since = Utc::now();
        let b = &cfg.broker;
        let mut opts = MqttOptions::new(b.client_id(&cfg.agent_id), b.host.clone(), b.port);
        opts.set_keep_alive(Duration::from_secs(b.keep_alive_secs))
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(INFLIGHT)
            .set_request_channel_capacity(4 * WINDOW + 64)
            // Far above our own message limit, so an oversized message is refused by
            // the codec with a reason instead of wedging the connection.
            .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, MAX_MESSAGE_BYTES + 4096)
            .set_last_will(LastWill::new(
                Topic::health(&cfg.agent_id).to_string(),
                health(
                    &cfg.agent_id,
                    HealthStatus::Down,
                    since,
                    None,
                    Some("connection lost".into()),
                ),
                QoS::AtLeastOnce,
                true,
            ));
        if let (Some(u), Some(p)) = (&b.username, &b.password) {
            opts.set_credentials(u.clone(), p.expose().to_string());
        } else if let Some(u) = &b.username {
            opts.set_credentials(u.clone(), String::new());
        }
        if let Some(tls) = tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 4 * WINDOW + 64);
        // Small MQTT packets must not wait for Nagle + delayed ACK (~40 ms per hop).
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let link = MqttLink {
            client,
            state: Arc::new(Mutex::new(LinkState::default())),
            wake: store.outbox_wake(),
            agent: cfg.agent_id.clone(),
            since,
            started: std::time::Instant::now(),
        };
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let (acked_tx, acked_rx) = mpsc::unbounded_channel();
        let backoff = Backoff::new(
            Duration::from_millis(b.reconnect_min_ms),
            Duration::from_millis(b.reconnect_max_ms),
        );
        let poll = tokio::spawn(poll_loop(
            eventloop,
            link.clone(),
            inbound_tx,
            acked_tx,
            backoff,
        ));
        let pump = tokio::spawn(pump_loop(link.clone(), store, subscriptions, acked_rx));
        (link, inbound_rx, LinkTasks { poll, pump })
    }

    /// Acknowledge an inbound publish (after it was persisted).
    pub async fn ack(&self, p: &Publish) {
        if let Err(e) = self.client.ack(p).await {
            debug!(error = %e, "ack not sent; the broker will redeliver");
        }
    }

    pub fn is_connected(&self) -> bool {
        lock(&self.state).connected
    }

    /// Publish under a tag, without waiting. False when not connected or the request
    /// channel is full (the caller retries later).
    fn publish_tagged(&self, tag: Tag, topic: &str, payload: Vec<u8>, retain: bool) -> bool {
        let mut s = lock(&self.state);
        if !s.connected || s.stopping {
            return false;
        }
        s.tags.push_back(tag);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => true,
            Err(e) => {
                s.tags.pop_back();
                debug!(error = %e, "publish deferred");
                false
            }
        }
    }

    /// Publish retained health with the current uptime: `up`, or `down` with the
    /// reason while the state store cannot be written; false if not sent.
    fn publish_health(&self, topic: &str) -> bool {
        let fault = lock(&self.state).storage_fault.clone();
        let (status, since, reason) = match fault {
            None => (HealthStatus::Up, self.since, None),
            Some((reason, since)) => (HealthStatus::Down, since, Some(reason)),
        };
        let payload = health(
            &self.agent,
            status,
            since,
            Some(self.started.elapsed()),
            reason,
        );
        self.publish_tagged(Tag::Untracked, topic, payload, true)
    }

    /// The state store cannot be written (`Some(reason)`: health `down` with the
    /// reason, configs refused) or can again (`None`: health `up`, and subscribe
    /// again — a backstop for configs beyond those the agent held meanwhile).
    pub fn set_storage_fault(&self, fault: Option<String>) {
        let mut s = lock(&self.state);
        if s.storage_fault.as_ref().map(|(r, _)| r) == fault.as_ref() {
            return;
        }
        if fault.is_none() {
            s.fresh_session = s.connected;
        }
        // Down since the first failure, whatever the later reasons say.
        let since = s.storage_fault.as_ref().map_or_else(Utc::now, |(_, t)| *t);
        s.storage_fault = fault.map(|r| (r, since));
        s.health_dirty = true;
        drop(s);
        self.wake.notify_one();
    }

    /// Why the state store cannot be written, if it cannot.
    pub fn storage_fault(&self) -> Option<String> {
        lock(&self.state)
            .storage_fault
            .as_ref()
            .map(|(r, _)| r.clone())
    }

    /// Graceful stop: publish retained health `down` and disconnect.
    pub fn shutdown(&self, reason: &str) {
        let payload = health(
            &self.agent,
            HealthStatus::Down,
            Utc::now(),
            Some(self.started.elapsed()),
            Some(reason.into()),
        );
        let topic = Topic::health(&self.agent).to_string();
        let sent = self.publish_tagged(Tag::Untracked, &topic, payload, true);
        let mut s = lock(&self.state);
        s.stopping = true;
        if sent {
            let _ = self.client.try_disconnect();
        }
        self.wake.notify_one();
    }
}

async fn poll_loop(
    mut eventloop: EventLoop,
    link: MqttLink,
    inbound: mpsc::UnboundedSender<Publish>,
    acked: mpsc::UnboundedSender<u64>,
    mut backoff: Backoff,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code == ConnectReturnCode::Success {
                    backoff.reset();
                    let mut s = lock(&link.state);
                    s.connected = true;
                    s.fresh_session = true;
                    s.reconnects += 1;
                    crate::observe::metrics::get().connected(s.reconnects);
                    info!(session_present = ack.session_present, "connected to broker");
                    link.wake.notify_one();
                } else {
                    warn!(code = ?ack.code, "broker refused the connection");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if inbound.send(p).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                let tag = lock(&link.state).by_pkid.remove(&a.pkid);
                if let Some(Tag::Outbox(key)) = tag {
                    let _ = acked.send(key);
                    link.wake.notify_one();
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut s = lock(&link.state);
                match s.tags.pop_front() {
                    Some(tag) => {
                        s.by_pkid.insert(pkid, tag);
                    }
                    None => warn!(pkid, "outgoing publish without a tag"),
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                info!("disconnected from broker");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let stopping = {
                    let mut s = lock(&link.state);
                    eventloop.clean();
                    eventloop.pending.clear();
                    s.reset();
                    s.stopping
                };
                if stopping {
                    return;
                }
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection lost");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn pump_loop(
    link: MqttLink,
    store: Store,
    subscriptions: Vec<String>,
    mut acked: mpsc::UnboundedReceiver<u64>,
) {
    let health_topic = Topic::health(&link.agent).to_string();
    let mut health_at: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = link.wake.notified() => {}
            // A safety net: nothing should depend on it.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        while let Ok(key) = acked.try_recv() {
            if let Err(e) = store.remove_outbox(key) {
                warn!(key, error = %e, "removing acknowledged report");
            }
            lock(&link.state).inflight.remove(&key);
            debug!(key, "report acknowledged by broker");
        }
        let (setup, stopping) = {
            let mut s = lock(&link.state);
            let setup = s.connected && s.fresh_session;
            s.fresh_session = false;
            (setup, s.stopping)
        };
        if stopping {
            return;
        }
        let health_due = (health_at.is_some_and(|t| t.elapsed() >= HEALTH_EVERY)
            || lock(&link.state).health_dirty)
            && lock(&link.state).connected;
        if health_due && link.publish_health(&health_topic) {
            health_at = Some(std::time::Instant::now());
            lock(&link.state).health_dirty = false;
        }
        if setup {
            let filters = subscriptions
                .iter()
                .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
            if !subscriptions.is_empty() {
                if let Err(e) = link.client.try_subscribe_many(filters) {
                    warn!(error = %e, "subscribe deferred");
                    lock(&link.state).fresh_session = true;
                }
            }
            if link.publish_health(&health_topic) {
                health_at = Some(std::time::Instant::now());
            } else {
                lock(&link.state).fresh_session = true;
            }
        }
        // (Re)send the outbox, oldest first, within the window.
        let room = WINDOW.saturating_sub(lock(&link.state).inflight.len());
        if room == 0 {
            continue;
        }
        for (key, entry) in store.outbox_peek(WINDOW * 2) {
            if lock(&link.state).inflight.contains(&key) {
                continue;
            }
            if lock(&link.state).inflight.len() >= WINDOW {
                break;
            }
            if !link.publish_tagged(
                Tag::Outbox(key),
                &entry.topic,
                entry.payload.into_bytes(),
                false,
            ) {
                break;
            }
            lock(&link.state).inflight.insert(key);
        }
    }
}

/// Subscription filters for the given printers' desired configs.
pub fn desired_filters<'a>(printers: impl Iterator<Item = (&'a Id, &'a Id)>) -> Vec<String> {
    printers
        .map(|(tenant, printer)| Topic::desired(tenant, printer).to_string())
        .collect()
}

/// Used by `run` to wait for the poll task with a deadline at shutdown.
pub async fn join_with_deadline(tasks: LinkTasks, deadline: Duration) {
    let LinkTasks { poll, pump } = tasks;
    if tokio::time::timeout(deadline, poll).await.is_err() {
        warn!("broker did not confirm the disconnect in time");
    }
    pump.abort();
}
