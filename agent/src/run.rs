//! Wiring: open the store, connect SNMP clients, start the MQTT link, the inbound
//! handler and one reconciler per printer; stop them in order on shutdown.

use crate::apply::ApplyParams;
use crate::catalog::{Profile, ProfileError};
use crate::config::{AgentConfig, SnmpVersion};
use crate::mqtt::{self, MqttLink};
use crate::reconciler::PrinterTask;
use crate::snmp::{AsyncSnmp, SharedTransport, SnmpError, Target};
use crate::store::{Offer, Store, StoreError};
use chrono::Utc;
use platen_protocol::{codec, DesiredConfig, Id, Topic};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

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
}

/// A running agent; [`AgentHandle::shutdown`] stops it gracefully.
pub struct AgentHandle {
    stop: watch::Sender<bool>,
    link: MqttLink,
    link_tasks: mqtt::LinkTasks,
    workers: Vec<JoinHandle<()>>,
    store: Store,
}

impl AgentHandle {
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Stop taking work, let reconcilers stop, publish health `down`, disconnect,
    /// flush the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for w in self.workers {
            if tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .is_err()
            {
                warn!("a worker did not stop within 5 s");
            }
        }
        self.link.shutdown("agent stopped");
        mqtt::join_with_deadline(self.link_tasks, Duration::from_secs(3)).await;
        if let Err(e) = self.store.flush().await {
            error!(error = %e, "flushing state at shutdown");
        }
        info!("agent stopped");
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
    let store = Store::open(&cfg.state_dir)?;
    let params = ApplyParams::from(&cfg.apply);
    let transport = SharedTransport::bind().await.map_err(RunError::Socket)?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut profiles: HashMap<String, Arc<Profile>> = HashMap::new();
    let mut routes: HashMap<(Id, Id), watch::Sender<u64>> = HashMap::new();
    let mut workers = Vec::new();
    for p in &cfg.printers {
        let profile = match profiles.get(&p.profile) {
            Some(pr) => pr.clone(),
            None => {
                let pr = Arc::new(Profile::load(&p.profile)?);
                profiles.insert(p.profile.clone(), pr.clone());
                pr
            }
        };
        let target = Target {
            address: p.address.clone(),
            port: p.port,
            v1: p.snmp_version == SnmpVersion::V1,
            community: p.community.clone(),
            timeout: p.timeout(),
            retries: p.retries,
        };
        let snmp = AsyncSnmp::connect(&target, &transport)
            .await
            .map_err(|source| RunError::Snmp {
                printer: p.id.clone(),
                source,
            })?;
        let stored = store.desired(&p.id)?.map(|d| d.config.version).unwrap_or(0);
        let (tx, rx) = watch::channel(stored);
        routes.insert((p.tenant(&cfg).clone(), p.id.clone()), tx);
        let task = PrinterTask {
            agent: cfg.agent_id.clone(),
            printer: p.id.clone(),
            snmp,
            profile,
            params: params.clone(),
            store: store.clone(),
            latest: rx,
        };
        workers.push(tokio::spawn(task.run(stop_rx.clone())));
    }

    let filters = mqtt::desired_filters(cfg.printers.iter().map(|p| (p.tenant(&cfg), &p.id)));
    let (link, mut inbound, link_tasks) = MqttLink::start(&cfg, tls, store.clone(), filters);
    let (l, s) = (link.clone(), store.clone());
    let mut stop = stop_rx.clone();
    workers.push(tokio::spawn(async move {
        loop {
            let p = tokio::select! {
                p = inbound.recv() => match p { Some(p) => p, None => return },
                _ = stop.changed() => return,
            };
            match handle_desired(&s, &routes, &p.topic, &p.payload).await {
                Ok(()) => l.ack(&p).await,
                // Not acknowledged: the broker redelivers it after a reconnect.
                Err(e) => error!(topic = %p.topic, error = %e, "could not persist desired config; not acknowledged"),
            }
        }
    }));
    info!(agent = %cfg.agent_id, printers = cfg.printers.len(), outbox = store.outbox_len(), "agent started");
    Ok(AgentHandle {
        stop: stop_tx,
        link,
        link_tasks,
        workers,
        store,
    })
}

/// Validate and persist one inbound desired config. Bad input is logged and dropped
/// (Ok, so it is acknowledged and not redelivered forever); only a storage failure
/// is an error.
async fn handle_desired(
    store: &Store,
    routes: &HashMap<(Id, Id), watch::Sender<u64>>,
    topic: &str,
    payload: &[u8],
) -> Result<(), StoreError> {
    let (tenant, printer) = match topic.parse::<Topic>() {
        Ok(Topic::DesiredConfig { tenant, printer }) => (tenant, printer),
        Ok(other) => {
            warn!(topic, kind = ?other, "unexpected topic ignored");
            return Ok(());
        }
        Err(e) => {
            warn!(error = %e, "message on an invalid topic ignored");
            return Ok(());
        }
    };
    let Some(route) = routes.get(&(tenant.clone(), printer.clone())) else {
        warn!(
            topic,
            "desired config for a printer this agent does not manage ignored"
        );
        return Ok(());
    };
    if payload.is_empty() {
        debug!(topic, "retained desired config cleared");
        return Ok(());
    }
    let config: DesiredConfig = match codec::decode(payload) {
        Ok(c) => c,
        Err(e) => {
            warn!(topic, bytes = payload.len(), error = %e, "desired config refused");
            return Ok(());
        }
    };
    if config.printer_id != printer {
        warn!(topic, printer_id = %config.printer_id, "desired config names another printer than its topic; refused");
        return Ok(());
    }
    let version = config.version;
    match store.offer_desired(&tenant, config, Utc::now()).await? {
        Offer::Accepted => {
            info!(printer = %printer, version, "desired config accepted");
            let _ = route.send(version);
        }
        Offer::Duplicate => debug!(printer = %printer, version, "desired config already stored"),
        Offer::Stale { latest } => {
            warn!(printer = %printer, version, latest, "stale desired config ignored")
        }
    }
    Ok(())
}
