//! Wiring: open the store, connect SNMP clients, start the MQTT link, the inbound
//! handler, one reconciler per printer, the fleet poller (telemetry and drift) and
//! the status writer; stop them in order on shutdown.

use crate::apply::drift::DriftCheck;
use crate::apply::profile::{Profile, ProfileError};
use crate::apply::reconciler::{PrinterLock, PrinterTask};
use crate::apply::ApplyParams;
use crate::config::{AgentConfig, SnmpVersion};
use crate::link::mqtt::{self, MqttLink};
use crate::observe::status::Board;
use crate::snmp::printer_mib::TelemetrySpec;
use crate::snmp::{AsyncSnmp, SharedTransport, SnmpError, Target};
use crate::store::{OutboxEntry, Store, StoreError};
use crate::telemetry::fleet::{Fleet, FleetPrinter};
use crate::telemetry::{Thresholds, Tracker};
use crate::tools::diag::{diagnose, DiagParams};
use chrono::Utc;
use platen_protocol::{codec, DiagRequest, DiagResponse, Id, Topic};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("broker TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("printer {printer}: {source}")]
    Snmp {
        printer: Id,
        #[source]
        source: SnmpError,
    },
    #[error("SNMP socket: {0}")]
    Socket(SnmpError),
    #[error("signing.trusted_keys: {0}")]
    Keys(#[from] platen_protocol::signing::KeyError),
    #[error("metrics endpoint {listen}: {source}")]
    Metrics {
        listen: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("state directory {path} cannot be written: {source}; the agent refuses to run rather than accept configs it cannot keep")]
    Unwritable {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("traps.listen: {0}")]
    Traps(String),
}

/// Bind the notification listener ([`crate::telemetry::traps`]) and start it; returns what the
/// fleet poller hears it on. Printers are known by their addresses (host names are
/// resolved once, here); v1/v2c notifications must carry one of the printers'
/// communities.
async fn start_trap_listener(
    cfg: &AgentConfig,
    addr: std::net::SocketAddr,
    stop: watch::Receiver<bool>,
    workers: &mut Vec<JoinHandle<()>>,
) -> Result<Option<tokio::sync::mpsc::Receiver<Vec<Id>>>, RunError> {
    let mut by_address = Vec::new();
    for p in &cfg.printers {
        match tokio::net::lookup_host((p.address.as_str(), p.port)).await {
            Ok(addrs) => by_address.extend(addrs.map(|a| (a.ip(), p.id.clone()))),
            Err(e) => warn!(printer = %p.id, address = %p.address, error = %e,
                "cannot resolve the printer's address: its notifications will not be recognised"),
        }
    }
    let communities: Vec<crate::secret::Secret> = cfg
        .printers
        .iter()
        .filter(|p| p.snmp_version != crate::config::SnmpVersion::V3)
        .map(|p| p.community.clone())
        .collect();
    if communities.is_empty() {
        warn!("traps.listen is set but no printer uses SNMPv1/v2c: notifications from SNMPv3 printers are not taken yet; no listener");
        return Ok(None);
    }
    let sources = crate::telemetry::traps::Sources::new(
        by_address,
        Duration::from_millis(cfg.traps.min_interval_ms),
    );
    // The listener binds before the agent reports itself running: a port in use is
    // an error at start, not a warning later.
    let receiver = crate::snmp::Notifications::bind(addr, &communities)
        .await
        .map_err(RunError::Traps)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    workers.push(tokio::spawn(async move {
        if let Err(e) = crate::telemetry::traps::listen(receiver, sources, tx, stop).await {
            error!(error = %e, "SNMP notification listener stopped");
        }
    }));
    Ok(Some(rx))
}

/// How long a graceful stop waits for the workers (applies in flight) together.
pub const SHUTDOWN_WORKERS: Duration = Duration::from_secs(5);
/// How long a graceful stop waits for queued reports to be acknowledged.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// How long a graceful stop waits for health `down` and the disconnect.
pub const SHUTDOWN_LINK: Duration = Duration::from_secs(3);

/// A running agent; [`AgentHandle::shutdown`] stops it gracefully.
pub struct AgentHandle {
    stop: watch::Sender<bool>,
    link: MqttLink,
    link_tasks: mqtt::LinkTasks,
    workers: Vec<JoinHandle<()>>,
    store: Store,
    board: Board,
    state_dir: PathBuf,
}

impl AgentHandle {
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Stop taking work; let applies in flight finish (up to [`SHUTDOWN_WORKERS`],
    /// all workers together — an apply cut off there is not lost: its desired config
    /// is stored and applied again at the next start); give queued reports up to
    /// [`SHUTDOWN_DRAIN`] to be acknowledged (the rest stay in the outbox); publish
    /// health `down`, disconnect (up to [`SHUTDOWN_LINK`]), flush the store, write
    /// the final status. Bounded: about 10 s plus one flush.
    pub async fn shutdown(self) {
        platen_ops::systemd::stopping();
        info!("stopping: no new work; applies in flight may finish");
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WORKERS;
        let mut cut = 0;
        for w in self.workers {
            let abort = w.abort_handle();
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                abort.abort();
                cut += 1;
            }
        }
        if cut > 0 {
            warn!(
                workers = cut,
                "stopped without finishing (applies cut off run again at the next start)"
            );
        }
        let drain_until = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
        while self.link.is_connected()
            && tokio::time::Instant::now() < drain_until
            && self
                .store
                .outbox_peek(10_000)
                .iter()
                .any(|(_, e)| e.topic.ends_with("/config/report"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.link.shutdown("agent stopped");
        mqtt::join_with_deadline(self.link_tasks, SHUTDOWN_LINK).await;
        if let Err(e) = self.store.flush().await {
            error!(error = %e, "flushing state at shutdown");
        }
        refresh_board(&self.board, &self.store, false);
        self.board.update(|s| {
            s.pid = 0;
            s.written_at = Some(Utc::now());
        });
        if let Err(e) = crate::observe::status::write_snapshot(&self.state_dir, &self.board.get()) {
            warn!(error = %e, "writing the final status file");
        }
        info!("agent stopped");
    }
}

/// What a remote diagnostics request needs for one printer.
#[derive(Clone)]
struct DiagContext {
    snmp: AsyncSnmp,
    /// A write test must not interleave with an apply on the same printer.
    lock: PrinterLock,
    profile: Arc<Profile>,
    spec: Arc<TelemetrySpec>,
    target: String,
    version: &'static str,
    default_community: Option<&'static str>,
}

fn version_name(v: SnmpVersion) -> &'static str {
    match v {
        SnmpVersion::V1 => "v1",
        SnmpVersion::V2c => "v2c",
        SnmpVersion::V3 => "v3",
    }
}

/// Start the agent described by `cfg`.
pub async fn start(cfg: AgentConfig) -> Result<AgentHandle, RunError> {
    // TLS material first: a bad certificate must stop the agent before it does anything.
    let tls = cfg
        .broker
        .tls
        .as_ref()
        .map(crate::tls::client_config)
        .transpose()?;
    let profiles = crate::apply::profile::load_all(&cfg)?;
    let trusted = cfg.signing.trusted().map_err(RunError::Keys)?;
    if trusted.is_empty() {
        warn!("desired-config signatures are not checked: [signing] trusted_keys is empty");
    } else {
        info!(keys = ?trusted, "desired configs must be signed by a trusted key");
    }
    let store = Store::open(&cfg.state_dir)?;
    // Opening can succeed on a full disk or a read-only file system; writing cannot.
    store.probe().await.map_err(|source| RunError::Unwritable {
        path: cfg.state_dir.clone(),
        source,
    })?;
    let params = ApplyParams::from(&cfg.apply);
    let transport = SharedTransport::bind().await.map_err(RunError::Socket)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let board = Board::new(cfg.agent_id.as_str(), std::process::id());

    let mut routes: HashMap<(Id, Id), watch::Sender<u64>> = HashMap::new();
    let mut diag_ctx: HashMap<(Id, Id), DiagContext> = HashMap::new();
    let mut workers = Vec::new();
    let mut fleet_printers = Vec::new();
    for p in &cfg.printers {
        let profile = profiles[&p.profile].clone();
        let snmp = AsyncSnmp::connect(&Target::of(p), &transport)
            .await
            .map_err(|source| RunError::Snmp {
                printer: p.id.clone(),
                source,
            })?
            .with_metrics(p.id.as_str());
        let tenant = p.tenant(&cfg).clone();
        let stored = store.desired(&p.id)?.map(|d| d.config.version).unwrap_or(0);
        let (tx, rx) = watch::channel(stored);
        routes.insert((tenant.clone(), p.id.clone()), tx);
        let lock: PrinterLock = Arc::default();
        let spec = Arc::new(crate::telemetry::spec(&cfg, &profile));
        diag_ctx.insert(
            (tenant.clone(), p.id.clone()),
            DiagContext {
                snmp: snmp.clone(),
                lock: lock.clone(),
                profile: profile.clone(),
                spec: spec.clone(),
                target: format!("{}:{}", p.address, p.port),
                version: version_name(p.snmp_version),
                default_community: Target::of(p).credentials.default_community(),
            },
        );
        let drift = (cfg.drift.interval_secs > 0).then(|| {
            DriftCheck::new(
                cfg.agent_id.clone(),
                p.id.clone(),
                tenant.clone(),
                profile.clone(),
                params.clone(),
                p.reapply_on_drift.clone(),
                lock.clone(),
            )
        });
        fleet_printers.push(FleetPrinter {
            id: p.id.clone(),
            tenant: tenant.clone(),
            snmp: snmp.clone(),
            spec,
            device: None,
            tracker: Tracker::new(
                cfg.agent_id.clone(),
                p.id.clone(),
                store.seq(crate::store::SeqKind::Telemetry, &p.id)?,
            ),
            drift,
            next_drift: None,
        });
        let task = PrinterTask {
            agent: cfg.agent_id.clone(),
            printer: p.id.clone(),
            snmp,
            profile,
            params: params.clone(),
            store: store.clone(),
            latest: rx,
            lock,
        };
        workers.push(tokio::spawn(task.run(stop_rx.clone())));
    }

    if cfg.telemetry.enabled || cfg.drift.interval_secs > 0 {
        let t = &cfg.telemetry;
        let fleet = Fleet {
            printers: fleet_printers,
            concurrency: t.concurrency,
            thresholds: Thresholds {
                heartbeat: Duration::from_secs(t.heartbeat_secs),
                supply_change_pct: t.supply_change_pct,
                pages_step: t.pages_step,
            },
            drift_interval: (cfg.drift.interval_secs > 0)
                .then(|| Duration::from_secs(cfg.drift.interval_secs)),
            store: Some(store.clone()),
            board: board.clone(),
            telemetry: t.enabled,
        };
        // Drift-only agents sweep at the drift interval.
        let every = if t.enabled {
            t.interval_secs
        } else {
            cfg.drift.interval_secs
        };
        let pokes = match (t.enabled, cfg.traps.listen) {
            (true, Some(addr)) => {
                start_trap_listener(&cfg, addr, stop_rx.clone(), &mut workers).await?
            }
            _ => None,
        };
        workers.push(tokio::spawn(fleet.run(
            Duration::from_secs(every),
            pokes,
            stop_rx.clone(),
        )));
    }

    let mut filters = mqtt::desired_filters(cfg.printers.iter().map(|p| (p.tenant(&cfg), &p.id)));
    if cfg.diagnostics.remote {
        filters.extend(
            cfg.printers
                .iter()
                .map(|p| Topic::diag_request(p.tenant(&cfg), &p.id).to_string()),
        );
    }
    let (link, mut inbound, link_tasks) = MqttLink::start(&cfg, tls, store.clone(), filters);
    let storage_check = Arc::new(Notify::new());
    let storage_back = Arc::new(Notify::new());
    workers.push(tokio::spawn(storage_watch(
        store.clone(),
        link.clone(),
        cfg.state_dir.clone(),
        (storage_check.clone(), storage_back.clone()),
        stop_rx.clone(),
    )));
    let (l, s) = (link.clone(), store.clone());
    let mut stop = stop_rx.clone();
    let agent_id = cfg.agent_id.clone();
    let remote_diag = cfg.diagnostics.remote;
    let board_in = board.clone();
    workers.push(tokio::spawn(async move {
        // Desired configs that arrived while the store could not be written, not
        // acknowledged: taken up again, in order, once it can. (The broker would send
        // them again only after a reconnect, and meanwhile they fill its in-flight
        // window for this agent, so the retained configs would not come through.)
        let mut held: VecDeque<rumqttc::Publish> = VecDeque::new();
        loop {
            let p = match held.pop_front() {
                Some(p) if l.storage_fault().is_none() => p,
                other => {
                    if let Some(p) = other {
                        held.push_front(p);
                    }
                    tokio::select! {
                        p = inbound.recv() => match p { Some(p) => p, None => return },
                        _ = storage_back.notified() => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            if let Ok(Topic::DiagRequest { tenant, printer }) = p.topic.parse::<Topic>() {
                // Requests are not persisted: acknowledge, then answer through the outbox.
                l.ack(&p).await;
                if !remote_diag {
                    warn!(topic = %p.topic, "diagnostics request ignored: [diagnostics] remote is off");
                    continue;
                }
                match diag_ctx.get(&(tenant.clone(), printer.clone())) {
                    Some(ctx) => {
                        let (ctx, s, agent, board) =
                            (ctx.clone(), s.clone(), agent_id.clone(), board_in.clone());
                        tokio::spawn(answer_diag(ctx, s, agent, board, tenant, printer, p.payload.to_vec()));
                    }
                    None => {
                        warn!(topic = %p.topic, "diagnostics request for a printer this agent does not manage");
                        crate::observe::metrics::get().refused("diag", "unknown_printer");
                    }
                }
                continue;
            }
            if let Some(reason) = l.storage_fault() {
                error!(topic = %p.topic, reason, "desired config refused: the state store cannot be written; not acknowledged");
                crate::observe::metrics::get().refused("desired", "storage");
                // Beyond the cap, the broker resends it after the next reconnect.
                if held.len() < MAX_HELD {
                    held.push_back(p);
                }
                continue;
            }
            match crate::link::inbound::handle_desired(&s, &agent_id, &routes, &trusted, &p.topic, &p.payload).await {
                Ok(()) => l.ack(&p).await,
                Err(e) => {
                    error!(topic = %p.topic, error = %e, "could not persist desired config; not acknowledged, retried");
                    storage_check.notify_one();
                    held.push_front(p);
                    // Not faster than once a second, whatever the error.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }));
    workers.push(tokio::spawn(status_writer(
        board.clone(),
        store.clone(),
        link.clone(),
        cfg.state_dir.clone(),
        stop_rx.clone(),
    )));
    if cfg.metrics.enabled {
        let listen = cfg.metrics.listen;
        let server = crate::tools::metrics_endpoint::serve(
            listen,
            store.clone(),
            board.clone(),
            link.clone(),
            stop_rx.clone(),
        )
        .await
        .map_err(|source| RunError::Metrics { listen, source })?;
        workers.push(server);
    }
    workers.push(tokio::spawn(notify_ready(
        link.clone(),
        cfg.printers.len(),
        stop_rx.clone(),
    )));
    info!(agent = %cfg.agent_id, printers = cfg.printers.len(), outbox = store.outbox_len(), "agent started");
    Ok(AgentHandle {
        stop: stop_tx,
        link,
        link_tasks,
        workers,
        store,
        board,
        state_dir: cfg.state_dir.clone(),
    })
}

/// How long a start waits for the broker before telling systemd it is ready anyway
/// (degraded: configs already stored are applied, telemetry is queued).
pub const READY_GRACE: Duration = Duration::from_secs(20);

/// How often the state store is probed; a failed write elsewhere probes at once.
const STORAGE_PROBE_EVERY: Duration = Duration::from_secs(5);
/// Desired configs kept (unacknowledged) while the store cannot be written; a broker's
/// in-flight window per client is smaller (Mosquitto: 20 by default).
const MAX_HELD: usize = 256;

/// Probe the state store; while it cannot be written, health is `down` with the
/// reason and desired configs are refused (held, not acknowledged). When it can be
/// written again, health goes back `up`, the held configs are taken up (`back`) and
/// the link subscribes again.
async fn storage_watch(
    store: Store,
    link: MqttLink,
    dir: PathBuf,
    (check, back): (Arc<Notify>, Arc<Notify>),
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STORAGE_PROBE_EVERY) => {}
            _ = check.notified() => {}
            _ = stop.changed() => return,
        }
        match store.probe().await {
            Ok(()) => {
                let was_down = link.storage_fault().is_some();
                link.set_storage_fault(None);
                if was_down {
                    info!(state_dir = %dir.display(), "state store writable again; health up");
                    back.notify_one();
                }
            }
            Err(e) => {
                let reason = format!("state store {} cannot be written: {e}", dir.display());
                if link.storage_fault().is_none() {
                    error!(
                        reason,
                        "health down; desired configs refused until it can be written"
                    );
                }
                link.set_storage_fault(Some(reason));
            }
        }
    }
}

/// Tell systemd the agent is ready: at the first broker connection, or after
/// [`READY_GRACE`] without one (degraded start, documented in the guide).
async fn notify_ready(link: MqttLink, printers: usize, mut stop: watch::Receiver<bool>) {
    let deadline = tokio::time::Instant::now() + READY_GRACE;
    loop {
        if link.is_connected() {
            let plural = if printers == 1 { "" } else { "s" };
            platen_ops::systemd::ready(&format!(
                "connected to the broker; {printers} printer{plural}"
            ));
            info!("ready: connected to the broker");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            platen_ops::systemd::ready(&format!(
                "degraded: broker not reachable yet (retrying); {printers} printers"
            ));
            warn!(
                grace_secs = READY_GRACE.as_secs(),
                "ready without a broker connection (degraded start); retrying in the background"
            );
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Run a diagnostics request and queue the response.
async fn answer_diag(
    ctx: DiagContext,
    store: Store,
    agent: Id,
    board: Board,
    tenant: Id,
    printer: Id,
    payload: Vec<u8>,
) {
    let req: DiagRequest = match codec::decode(&payload) {
        Ok(r) => r,
        Err(e) => {
            warn!(printer = %printer, error = %e, "diagnostics request refused");
            crate::observe::metrics::get().refused("diag", "malformed");
            return;
        }
    };
    info!(printer = %printer, request = %req.request_id, write_test = req.write_test, "remote diagnostics");
    let last_report = board
        .get()
        .printers
        .get(printer.as_str())
        .and_then(|p| p.last_report.clone());
    let _guard = if req.write_test {
        Some(ctx.lock.lock().await)
    } else {
        None
    };
    let result = diagnose(
        &ctx.snmp,
        DiagParams {
            printer: &printer,
            target: ctx.target.clone(),
            snmp_version: ctx.version,
            profile: &ctx.profile,
            spec: &ctx.spec,
            write_test: req.write_test,
            last_report,
            default_community: ctx.default_community,
        },
    )
    .await;
    let resp = DiagResponse {
        request_id: req.request_id,
        agent_id: agent,
        at: Utc::now(),
        result,
    };
    let payload = String::from_utf8(codec::encode(&resp)).unwrap_or_default();
    let entry = OutboxEntry::new(Topic::diag_response(&tenant, &printer).to_string(), payload);
    if let Err(e) = store.enqueue(&entry).await {
        error!(printer = %printer, error = %e, "could not queue the diagnostics response");
    }
}

/// Fill the board's durable figures from the store.
fn refresh_board(board: &Board, store: &Store, connected: bool) {
    let depth = store.outbox_len();
    let oldest = store.oldest_pending();
    let ids: Vec<String> = board.get().printers.keys().cloned().collect();
    board.update(|s| {
        s.broker_connected = connected;
        s.outbox_depth = depth;
        s.oldest_pending_at = oldest;
    });
    for id in ids {
        let Ok(pid) = Id::new(&id) else { continue };
        let desired = store.desired(&pid).ok().flatten().map(|d| d.config.version);
        let completed = store.completed(&pid).unwrap_or(0);
        let verified = store.verified(&pid).ok().flatten();
        board.printer(&id, |p| {
            p.desired_version = desired.unwrap_or(0);
            p.completed_version = completed;
            p.last_report = verified.and_then(|v| v.report);
        });
    }
}

/// Keep `{state_dir}/status.json` current (every 2 s) for `status` and `diag`.
async fn status_writer(
    board: Board,
    store: Store,
    link: MqttLink,
    dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    // Gateways often run on flash: write when something changed, else every 30 s.
    let mut last: Option<(crate::observe::status::Snapshot, std::time::Instant)> = None;
    let watchdog = platen_ops::systemd::watchdog_interval();
    let mut last_status = String::new();
    loop {
        // This loop is the agent's health loop: it feeds systemd's watchdog (when the
        // unit has one; at most every 2 s, well inside any WatchdogSec) and keeps
        // `systemctl status` current. A hung runtime stops both.
        if watchdog.is_some() {
            platen_ops::systemd::watchdog();
        }
        refresh_board(&board, &store, link.is_connected());
        let mut snap = board.get();
        let status = format!(
            "{}; outbox {}",
            if snap.broker_connected {
                "connected"
            } else {
                "broker not connected"
            },
            snap.outbox_depth
        );
        if status != last_status {
            platen_ops::systemd::status(&status);
            last_status = status;
        }
        let unchanged = last.as_ref().is_some_and(|(prev, at)| {
            let mut a = prev.clone();
            a.written_at = snap.written_at;
            a == snap && at.elapsed() < Duration::from_secs(30)
        });
        if !unchanged {
            snap.written_at = Some(Utc::now());
            let (d, s2) = (dir.clone(), snap.clone());
            match tokio::task::spawn_blocking(move || {
                crate::observe::status::write_snapshot(&d, &s2)
            })
            .await
            {
                Ok(Ok(())) => last = Some((snap, std::time::Instant::now())),
                Ok(Err(e)) => warn!(error = %e, "writing the status file"),
                Err(e) => warn!(error = %e, "status writer task"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
    }
}
