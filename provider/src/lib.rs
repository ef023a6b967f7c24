//! `platen-provider`: a small HTTP server standing for the provider of the contracted
//! service (a page-count service, a toner delivery service).
//!
//! API (JSON):
//! * `PUT  /v1/services/{contract}/{printer}` — set up the service (idempotent);
//!   body `{"service": "flat_rate_print", "plan": "…", "params": {…}}`; answers
//!   `{"status": "pending" | "active"}`. A service becomes active `activation_ms` after
//!   its first setup.
//! * `GET  /v1/services/{contract}/{printer}` — its status, or 404.
//! * `POST /v1/shipments` — accept a shipment order `{key, contract, item, quantity}`;
//!   the `key` makes it idempotent: a repeat returns 200 with the first order, a
//!   different order under the same key is 409.
//! * `GET  /v1/shipments` — every accepted order.
//!
//! Fault knobs (for tests and the demo), set through [`Faults`] or the binary's stdin:
//! down (the port refuses connections), slow answers, error responses for the next N
//! calls, status unobtainable for a while. State is in memory: this is a stand-in.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Fault knobs; all off by default.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Delay every answer by this much.
    pub slow: Duration,
    /// Answer the next N API calls with 500.
    pub errors_left: u32,
    /// Until then, status reads answer 503 (setup and shipments still work).
    pub status_unobtainable_until: Option<Instant>,
    /// A new service turns active this long after its first setup.
    pub activation: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceSetup {
    pub service: String,
    pub plan: String,
    #[serde(default)]
    pub params: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub contract: String,
    pub printer: String,
    pub service: String,
    pub plan: String,
    /// `pending` or `active`.
    pub status: String,
    pub set_up_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShipmentOrder {
    pub key: String,
    pub contract: String,
    pub item: String,
    pub quantity: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcceptedShipment {
    #[serde(flatten)]
    pub order: ShipmentOrder,
    pub accepted_at: DateTime<Utc>,
}

#[derive(Debug)]
struct Service {
    setup: ServiceSetup,
    set_up_at: DateTime<Utc>,
    first_setup: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    faults: Faults,
    services: BTreeMap<(String, String), Service>,
    shipments: Vec<AcceptedShipment>,
    calls: u64,
}

/// Shared provider state (survives going down and up again).
#[derive(Clone, Default)]
pub struct ProviderState(Arc<Mutex<Inner>>);

impl ProviderState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.lock().faults);
    }

    pub fn shipments(&self) -> Vec<AcceptedShipment> {
        self.lock().shipments.clone()
    }

    /// API calls answered so far (including faulty answers).
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

/// Common fault handling: slowness, then injected errors. Returns an error response to send.
async fn faults(state: &ProviderState, status_read: bool) -> Option<Response> {
    let slow = {
        let mut g = state.lock();
        g.calls += 1;
        g.faults.slow
    };
    if !slow.is_zero() {
        tokio::time::sleep(slow).await;
    }
    let mut g = state.lock();
    if g.faults.errors_left > 0 {
        g.faults.errors_left -= 1;
        return Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected_error",
            "provider error (fault knob)",
        ));
    }
    if status_read {
        if let Some(until) = g.faults.status_unobtainable_until {
            if Instant::now() < until {
                return Some(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "status_unavailable",
                    "status cannot be read right now (fault knob)",
                ));
            }
        }
    }
    None
}

/// Fault knobs, then the JSON body: the common start of every write handler.
async fn admit<T>(
    state: &ProviderState,
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Response> {
    if let Some(r) = faults(state, false).await {
        return Err(r);
    }
    body.map(|Json(b)| b)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

fn status_of(contract: &str, printer: &str, s: &Service, activation: Duration) -> ServiceStatus {
    ServiceStatus {
        contract: contract.into(),
        printer: printer.into(),
        service: s.setup.service.clone(),
        plan: s.setup.plan.clone(),
        status: if s.first_setup.elapsed() >= activation {
            "active".into()
        } else {
            "pending".into()
        },
        set_up_at: s.set_up_at,
    }
}

async fn put_service(
    State(state): State<ProviderState>,
    Path((contract, printer)): Path<(String, String)>,
    body: Result<Json<ServiceSetup>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let setup = match admit(&state, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut g = state.lock();
    let activation = g.faults.activation;
    let key = (contract.clone(), printer.clone());
    let svc = g.services.entry(key).or_insert_with(|| Service {
        setup: setup.clone(),
        set_up_at: Utc::now(),
        first_setup: Instant::now(),
    });
    // A changed plan re-configures the service in place.
    svc.setup = setup;
    Json(status_of(&contract, &printer, svc, activation)).into_response()
}

async fn get_service(
    State(state): State<ProviderState>,
    Path((contract, printer)): Path<(String, String)>,
) -> Response {
    if let Some(r) = faults(&state, true).await {
        return r;
    }
    let g = state.lock();
    match g.services.get(&(contract.clone(), printer.clone())) {
        Some(s) => Json(status_of(&contract, &printer, s, g.faults.activation)).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", "no such service"),
    }
}

async fn post_shipment(
    State(state): State<ProviderState>,
    body: Result<Json<ShipmentOrder>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let order = match admit(&state, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if order.key.is_empty() || order.quantity == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "key must be set and quantity > 0",
        );
    }
    let mut g = state.lock();
    if let Some(prev) = g.shipments.iter().find(|s| s.order.key == order.key) {
        return if prev.order == order {
            (StatusCode::OK, Json(prev.clone())).into_response()
        } else {
            error(
                StatusCode::CONFLICT,
                "key_conflict",
                "a different order was accepted under this key",
            )
        };
    }
    let accepted = AcceptedShipment {
        order,
        accepted_at: Utc::now(),
    };
    g.shipments.push(accepted.clone());
    (StatusCode::CREATED, Json(accepted)).into_response()
}

async fn list_shipments(State(state): State<ProviderState>) -> Response {
    if let Some(r) = faults(&state, false).await {
        return r;
    }
    Json(state.shipments()).into_response()
}

pub fn router(state: ProviderState) -> Router {
    Router::new()
        .route(
            "/v1/services/{contract}/{printer}",
            put(put_service).get(get_service),
        )
        .route("/v1/shipments", post(post_shipment).get(list_shipments))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// A running provider; [`Provider::go_down`] closes its port, [`Provider::come_up`]
/// opens it again with the same state.
pub struct Provider {
    pub addr: SocketAddr,
    pub state: ProviderState,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Provider {
    /// Listen on `addr` (port 0 for a free one).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Provider> {
        let listener = TcpListener::bind(addr).await?;
        let mut p = Provider {
            addr: listener.local_addr()?,
            state: ProviderState::default(),
            server: None,
        };
        p.serve(listener);
        Ok(p)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tx, rx) = oneshot::channel::<()>();
        let app = router(self.state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        self.server = Some((tx, task));
    }

    pub fn is_up(&self) -> bool {
        self.server.is_some()
    }

    /// Stop listening: connections are refused until [`Provider::come_up`].
    pub async fn go_down(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Listen again on the same address.
    pub async fn come_up(&mut self) -> std::io::Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        // The port was ours a moment ago; retry briefly in case the OS still holds it.
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("could not bind")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn order(c: &reqwest::Client, base: &str, body: serde_json::Value) -> u16 {
        let r = c
            .post(format!("{base}/v1/shipments"))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    }

    async fn status(c: &reqwest::Client, base: &str) -> ServiceStatus {
        let r = c
            .get(format!("{base}/v1/services/c1/p1"))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    async fn started() -> (Provider, String) {
        let p = Provider::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let base = format!("http://{}", p.addr);
        (p, base)
    }

    #[tokio::test]
    async fn setup_status_and_shipments() {
        let (p, base) = started().await;
        let c = reqwest::Client::new();
        let r = c
            .get(format!("{base}/v1/services/c1/p1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let body = serde_json::json!({"service": "flat_rate_print", "plan": "flat-1000"});
        let r = c
            .put(format!("{base}/v1/services/c1/p1"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let s = status(&c, &base).await;
        assert_eq!(s.status, "active");
        let order_body =
            serde_json::json!({"key": "k1", "contract": "c1", "item": "toner", "quantity": 2});
        assert_eq!(order(&c, &base, order_body.clone()).await, 201);
        assert_eq!(
            order(&c, &base, order_body).await,
            200,
            "a repeat is accepted once"
        );
        let other =
            serde_json::json!({"key": "k1", "contract": "c1", "item": "toner", "quantity": 3});
        assert_eq!(order(&c, &base, other).await, 409);
        assert_eq!(p.state.shipments().len(), 1);
        let r = c
            .post(format!("{base}/v1/shipments"))
            .body("{not json")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }

    #[tokio::test]
    async fn fault_knobs() {
        let (mut p, base) = started().await;
        let c = reqwest::Client::new();
        let body = serde_json::json!({"service": "basic", "plan": "b"});
        p.state.set_faults(|f| {
            f.errors_left = 1;
            f.activation = Duration::from_millis(300);
        });
        let r = c
            .put(format!("{base}/v1/services/c1/p1"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        let s: ServiceStatus = c
            .put(format!("{base}/v1/services/c1/p1"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(s.status, "pending");
        p.state.set_faults(|f| {
            f.status_unobtainable_until = Some(Instant::now() + Duration::from_secs(60))
        });
        let r = c
            .get(format!("{base}/v1/services/c1/p1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        p.state.set_faults(|f| f.status_unobtainable_until = None);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let s = status(&c, &base).await;
        assert_eq!(s.status, "active");

        p.go_down().await;
        let fresh = reqwest::Client::new();
        assert!(
            fresh.get(format!("{base}/healthz")).send().await.is_err(),
            "down means connection refused"
        );
        p.come_up().await.unwrap();
        let s = status(&fresh, &base).await;
        assert_eq!(s.status, "active", "state survives down/up");
    }
}
