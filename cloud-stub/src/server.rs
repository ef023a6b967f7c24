//! The whole cloud process: MQTT link (reports), the setup engine and the HTTP API,
//! started together and stopped explicitly.

use crate::api;
use crate::contracts::ContractStore;
use crate::engine::{Engine, EngineConfig};
use crate::ops::Ops;
use crate::{Cloud, CloudError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::info;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub broker_host: String,
    pub broker_port: u16,
    pub client_id: String,
    pub state_dir: PathBuf,
    /// HTTP API address (port 0: a free port; see [`Server::api_addr`]).
    pub api_listen: SocketAddr,
    pub engine: EngineConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Store(#[from] crate::contracts::StoreError),
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
    api_addr: SocketAddr,
    stop: watch::Sender<bool>,
    engine: JoinHandle<()>,
    api: (oneshot::Sender<()>, JoinHandle<()>),
}

impl Server {
    pub async fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        let cloud = Cloud::start(
            &cfg.broker_host,
            cfg.broker_port,
            &cfg.client_id,
            &cfg.state_dir,
        )?;
        let store = ContractStore::open(cloud.db())?;
        let engine = Engine::new(cloud.clone(), store.clone(), cfg.engine.clone());
        let ops = Ops::new(store, Some(engine.clone()));
        let (stop, stop_rx) = watch::channel(false);
        let engine_task = engine.spawn(stop_rx);
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
        let app = api::router(ops.clone());
        let api_task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = api_stop_rx.await;
                })
                .await;
        });
        info!(%api_addr, "platen-cloud API listening");
        Ok(Server {
            cloud,
            ops,
            api_addr,
            stop,
            engine: engine_task,
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
