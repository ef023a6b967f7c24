//! HTTP JSON API (axum) over [`Ops`].
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | POST | `/v1/tenants` | `Tenant` | 201 tenant |
//! | GET | `/v1/tenants` | | tenants |
//! | POST | `/v1/plans` | `Plan` | 201 plan |
//! | GET | `/v1/plans` | | plans |
//! | POST | `/v1/contracts` | `NewContract` | 201 `{contract, change}` |
//! | GET | `/v1/contracts/{id}` | | `ContractStatus` |
//! | POST | `/v1/contracts/{id}/changes` | `ChangeRequest` | 201 change |
//! | GET | `/v1/contracts/{id}/timeline` | | timeline entries |
//! | GET | `/v1/ledger` | `?contract=&tenant=` | ledger entries |
//!
//! Errors: `{"error": {"code": "…", "message": "…"}}` with a 4xx (5xx for storage).
//! Request bodies are limited to 256 KiB.

use crate::model::{Plan, Tenant};
use crate::ops::{ApiError, ChangeRequest, NewContract, Ops};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use platen_protocol::Id;
use serde::{Deserialize, Serialize};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({"error": self}))).into_response()
    }
}

/// A JSON body, or a 400 with a machine-readable code.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| {
        let status = e.status().as_u16();
        let code = if status == 413 {
            "too_large"
        } else {
            "bad_request"
        };
        ApiError::new(if status == 413 { 413 } else { 400 }, code, e.body_text())
    })
}

fn created<T: Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

async fn post_tenant(
    State(o): State<Ops>,
    b: Result<Json<Tenant>, JsonRejection>,
) -> Result<Response, ApiError> {
    Ok(created(o.create_tenant(body(b)?)?))
}

async fn get_tenants(State(o): State<Ops>) -> Result<Response, ApiError> {
    Ok(Json(o.store().tenants()?).into_response())
}

async fn post_plan(
    State(o): State<Ops>,
    b: Result<Json<Plan>, JsonRejection>,
) -> Result<Response, ApiError> {
    Ok(created(o.create_plan(body(b)?)?))
}

async fn get_plans(State(o): State<Ops>) -> Result<Response, ApiError> {
    Ok(Json(o.store().plans()?).into_response())
}

async fn post_contract(
    State(o): State<Ops>,
    b: Result<Json<NewContract>, JsonRejection>,
) -> Result<Response, ApiError> {
    let (contract, change) = o.create_contract(body(b)?)?;
    Ok(created(
        serde_json::json!({"contract": contract, "change": change}),
    ))
}

async fn get_contract(State(o): State<Ops>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(o.contract_status(&id)?).into_response())
}

async fn post_change(
    State(o): State<Ops>,
    Path(id): Path<String>,
    b: Result<Json<ChangeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    Ok(created(o.change_contract(&id, body(b)?)?))
}

async fn get_timeline(State(o): State<Ops>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(o.timeline(&id)?).into_response())
}

#[derive(Deserialize)]
struct LedgerQuery {
    contract: Option<Id>,
    tenant: Option<Id>,
}

async fn get_ledger(
    State(o): State<Ops>,
    q: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(400, "bad_request", e.body_text()))?;
    Ok(Json(o.ledger(q.contract.as_ref(), q.tenant.as_ref())?).into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such endpoint")
}

pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/v1/tenants", post(post_tenant).get(get_tenants))
        .route("/v1/plans", post(post_plan).get(get_plans))
        .route("/v1/contracts", post(post_contract))
        .route("/v1/contracts/{id}", get(get_contract))
        .route("/v1/contracts/{id}/changes", post(post_change))
        .route("/v1/contracts/{id}/timeline", get(get_timeline))
        .route("/v1/ledger", get(get_ledger))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(256 * 1024))
        .with_state(ops)
}
