//! The whole cloud process: MQTT link (reports and telemetry), the setup engine, the
//! migration scheduler and the HTTP API, started together and stopped explicitly.

use crate::engine::{Engine, EngineConfig};
use crate::http::api;
use crate::ops::migrations::Migrations;
use crate::ops::Ops;
use crate::plans::catalog::Catalog;
use crate::{Cloud, CloudError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub broker_host: String,
    pub broker_port: u16,
    /// The instance's client id: its broker session and the owner of its claims.
    pub client_id: String,
    /// Reports and telemetry through `$share/<group>/…` (several instances).
    pub share_group: Option<String>,
    /// TLS and credentials towards the broker.
    pub broker_auth: crate::BrokerAuth,
    /// Signs every desired config the cloud publishes.
    pub signer: Option<std::sync::Arc<platen_protocol::Signer>>,
    /// Which agent may report for which printer (none: any agent).
    pub registry: Option<std::sync::Arc<crate::link::agents::Registry>>,
    /// The embedded store's directory (used when `database` is `None`).
    pub state_dir: PathBuf,
    /// The production store (`store.url`): PostgreSQL instead of sled.
    pub database: Option<crate::store::Database>,
    /// HTTP API address (port 0: a free port; see [`Server::api_addr`]).
    pub api_listen: SocketAddr,
    pub engine: EngineConfig,
    /// How webhook deliveries are made.
    pub webhooks: crate::webhooks::WebhookConfig,
    /// A printer under contract with no reading newer than this is stale
    /// ([`crate::fleet::stale`]).
    pub stale_after: Duration,
    /// Plan catalog and migration rules (none: plans through the API, no migrations).
    pub catalog: Option<Catalog>,
    /// API bearer tokens ([`crate::http::auth`]). None: an open API, refused unless
    /// `api_listen` is a loopback address.
    pub tokens_file: Option<PathBuf>,
    /// Timeouts and connection caps of the HTTP API.
    pub api_limits: crate::http::listener::ApiLimits,
    /// What requests may ask for (how far back a contract may take effect).
    pub policy: crate::ops::Policy,
    /// Per-printer rate limit on telemetry.
    pub ingest_limits: crate::link::limits::IngestLimits,
    /// Telemetry samples read longer ago than this are removed (each printer's
    /// newest is kept).
    pub telemetry_retention: Duration,
    /// Reports of changes settled longer ago (unless a ledger entry refers to the
    /// change) and refused migrations decided longer ago are removed.
    pub history_retention: Duration,
}

/// Telemetry samples are kept 400 days by default: the open and the previous billing
/// period with room for a year of disputes.
pub const DEFAULT_TELEMETRY_RETENTION: Duration = Duration::from_secs(400 * 86400);

/// Reports of settled changes and refused migrations are kept 400 days by default.
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(400 * 86400);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Tokens(#[from] crate::http::auth::TokenFileError),
    #[error("the HTTP API listens on {0}, beyond this machine, without authentication: set api.tokens_file (--tokens)")]
    OpenApi(SocketAddr),
    #[error("{0}")]
    Webhooks(String),
    #[error("HTTP API on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Server {
    pub cloud: Cloud,
    pub ops: Ops,
    pub migrations: Migrations,
    api_addr: SocketAddr,
    stop: watch::Sender<bool>,
    engine: JoinHandle<()>,
    scheduler: JoinHandle<()>,
    retention: JoinHandle<()>,
    deliverer: JoinHandle<()>,
    stale_watch: JoinHandle<()>,
    api: (oneshot::Sender<()>, JoinHandle<()>),
}

impl Server {
    pub async fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        let auth = match &cfg.tokens_file {
            Some(path) => crate::http::auth::Auth::from_file(path)?,
            None if cfg.api_listen.ip().is_loopback() => {
                warn!("the HTTP API has no tokens file: every local caller is the operator");
                crate::http::auth::Auth::Open
            }
            None => return Err(ServerError::OpenApi(cfg.api_listen)),
        };
        let store = crate::store::Store::open(&cfg.state_dir, cfg.database.as_ref())?;
        info!(store = %store.describe(), "state store open");
        let cloud = Cloud::connect(
            &cfg.broker_host,
            cfg.broker_port,
            &cfg.client_id,
            store,
            cfg.broker_auth.clone(),
            cfg.registry.clone(),
            cfg.share_group.as_deref(),
        )?
        .with_signer(cfg.signer.clone())
        .with_limits(cfg.ingest_limits);
        let store = cloud.store().clone();
        let engine = Engine::new(
            cloud.clone(),
            store.clone(),
            cfg.engine.clone(),
            &cfg.client_id,
        );
        let mut ops = Ops::new(store, engine.waker()).with_policy(cfg.policy.clone());
        if let Some(c) = cfg.catalog.clone() {
            ops = ops.with_catalog(c)?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let engine_task = engine.spawn(stop_rx.clone());
        let migrations = Migrations::new(ops.clone());
        let scheduler = spawn_scheduler(migrations.clone(), cfg.engine.tick, stop_rx.clone());
        let deliverer = crate::webhooks::Deliverer::new(
            ops.store().clone(),
            cfg.webhooks.clone(),
            &cfg.client_id,
        )
        .map_err(ServerError::Webhooks)?;
        let webhook_counters = deliverer.counters();
        let deliverer = deliverer.spawn(stop_rx.clone());
        let stale_watch = spawn_stale_watch(
            crate::fleet::watch::StaleWatch::new(ops.store().clone(), cfg.stale_after),
            stop_rx.clone(),
        );
        let retention = spawn_retention(
            ops.clone(),
            (cfg.telemetry_retention, cfg.history_retention),
            stop_rx,
        );
        let listener = tokio::net::TcpListener::bind(cfg.api_listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: cfg.api_listen,
                source,
            })?;
        let api_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: cfg.api_listen,
                source,
            })?;
        let (api_stop, api_stop_rx) = oneshot::channel::<()>();
        let counters = cloud.counters.clone();
        let metrics_store = ops.store().clone();
        let app = api::router(ops.clone(), migrations.clone(), std::sync::Arc::new(auth)).route(
            "/metrics",
            axum::routing::get(move || {
                let rejected = crate::http::error::REJECTED
                    .lock()
                    .map(|m| m.clone())
                    .unwrap_or_default();
                let mut text = counters.render(&rejected);
                let (store, webhooks) = (metrics_store.clone(), webhook_counters.clone());
                async move {
                    // The outbox figures come from the store (off the runtime's threads);
                    // a store that does not answer leaves them out, not the rest.
                    if let Ok(Ok(stats)) =
                        tokio::task::spawn_blocking(move || store.delivery_stats()).await
                    {
                        text.push_str(&webhooks.render(&stats, chrono::Utc::now()));
                    }
                    text
                }
            }),
        );
        let api_task = tokio::spawn(crate::http::listener::serve(
            listener,
            app,
            cfg.api_limits,
            api_stop_rx,
        ));
        info!(%api_addr, "platen-cloud API listening");
        Ok(Server {
            cloud,
            ops,
            migrations,
            api_addr,
            stop,
            engine: engine_task,
            scheduler,
            retention,
            deliverer,
            stale_watch,
            api: (api_stop, api_task),
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Stop the engine and the API, flush, disconnect.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.engine).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.scheduler).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.retention).await;
        let _ = tokio::time::timeout(Duration::from_secs(15), self.deliverer).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stale_watch).await;
        let _ = self.api.0.send(());
        let abort = self.api.1.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), self.api.1)
            .await
            .is_err()
        {
            abort.abort();
        }
        self.cloud.shutdown().await;
    }
}

/// Runs scheduled migrations when their time comes: on start (catching up on any that
/// fell due while the cloud was down) and then every `tick`.
/// The stale-printer sweep ([`crate::fleet::watch`]), after its grace period, off
/// the runtime's threads.
fn spawn_stale_watch(
    watch: crate::fleet::watch::StaleWatch,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (every, grace) = (watch.every(), watch.grace());
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = stop.changed() => return,
        }
        let watch = std::sync::Arc::new(std::sync::Mutex::new(watch));
        loop {
            let w = watch.clone();
            let swept = tokio::task::spawn_blocking(move || match w.lock() {
                Ok(mut w) => w.sweep(chrono::Utc::now()).map_err(|e| e.to_string()),
                Err(_) => Err("the sweep panicked before".to_string()),
            })
            .await;
            match swept {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "stale printer sweep: will retry"),
                Err(e) => warn!(error = %e, "stale printer sweep failed; will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    })
}

fn spawn_scheduler(
    migrations: Migrations,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let m = migrations.clone();
            match tokio::task::spawn_blocking(move || m.run_due(chrono::Utc::now())).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => info!(n, "scheduled migrations executed"),
                Ok(Err(e)) => warn!(error = %e, "scheduled migrations: will retry"),
                Err(e) => warn!(error = %e, "scheduled migrations task failed; will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(tick.max(Duration::from_millis(100))) => {}
                _ = stop.changed() => return,
            }
        }
    })
}

/// Retention, at start and then hourly, in batches of 10,000 keys off the runtime's
/// threads (a large history never stalls the API): telemetry samples older than the
/// previous billing period are thinned to what billing and disputes need and removed
/// past `keep.0`; reports of changes settled before `keep.1` (no ledger entry
/// referring to them) and refused migrations decided before it are removed.
fn spawn_retention(
    ops: Ops,
    keep: (Duration, Duration),
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = chrono::Utc::now();
            let ago =
                |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
            let cutoff = ago(keep.0);
            let history = ago(keep.1);
            // Full resolution for the open and the previous billing period (UTC months;
            // a zone's month starts at most a day off).
            let this_month = crate::billing::period::containing(chrono_tz::UTC, now).start;
            let thin_before = crate::billing::period::containing(
                chrono_tz::UTC,
                this_month - chrono::Duration::seconds(1),
            )
            .start
                - chrono::Duration::days(1);
            for what in ["telemetry samples", "reports", "refused migrations"] {
                let (mut from, mut removed) = (Vec::new(), 0usize);
                loop {
                    let o = ops.clone();
                    let start = std::mem::take(&mut from);
                    let r = tokio::task::spawn_blocking(move || -> Result<_, String> {
                        let store = o.store();
                        match what {
                            "telemetry samples" => store
                                .prune_samples(cutoff, thin_before, &start, 10_000)
                                .map_err(|e| e.to_string()),
                            "reports" => store
                                .prune_settled_reports(history, &start, 10_000)
                                .map_err(|e| e.to_string()),
                            _ => store
                                .prune_refused_migrations(history, &start, 10_000)
                                .map_err(|e| e.to_string()),
                        }
                    })
                    .await;
                    match r {
                        Ok(Ok((n, next))) => {
                            removed += n;
                            match next {
                                Some(k) => from = k,
                                None => break,
                            }
                        }
                        Ok(Err(e)) => {
                            warn!(error = %e, what, "retention: will retry");
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, what, "retention task failed; will retry");
                            break;
                        }
                    }
                    if *stop.borrow() {
                        return;
                    }
                }
                if removed > 0 {
                    info!(removed, what, "retention: removed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                _ = stop.changed() => return,
            }
        }
    })
}
