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
//! | POST | `/v1/resellers` | `Reseller` | 201 reseller |
//! | GET | `/v1/resellers` | | resellers |
//! | GET | `/v1/catalog` | | plans, rules, warnings |
//! | GET | `/v1/contracts/{id}/usage` | | the usage the migration rules see now |
//! | POST | `/v1/migrations` | `MigrationRequest`, header `Platen-Actor` | 200 dry run, 201 accepted, 422 refused |
//! | GET | `/v1/migrations` | `?tenant=&contract=&state=` | migrations |
//! | GET | `/v1/migrations/{id}` | | migration |
//! | DELETE | `/v1/migrations/{id}` | header `Platen-Actor` | the cancelled migration |
//!
//! Errors: `{"error": {"code": "…", "message": "…"}}` with a 4xx (5xx for storage).
//! A refused migration is a 422 with code `migration_refused` and, beside the
//! error, the stored `migration` with the deciding rule and the usage it saw.
//! Request bodies are limited to 256 KiB.
//!
//! `Platen-Actor` (`operator`, `tenant:ID`, `reseller:ID`) says who asks, until
//! API authentication replaces it with bearer tokens mapped to the same actors.

use crate::catalog::{Catalog, Decision, Problem};
use crate::migration::{Actor, MigrationRequest, Outcome};
use crate::model::{Plan, Reseller, Tenant};
use crate::ops::{ApiError, ChangeRequest, NewContract, Ops};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
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

async fn post_reseller(
    State(o): State<Ops>,
    b: Result<Json<Reseller>, JsonRejection>,
) -> Result<Response, ApiError> {
    Ok(created(o.create_reseller(body(b)?)?))
}

async fn get_resellers(State(o): State<Ops>) -> Result<Response, ApiError> {
    Ok(Json(o.store().resellers()?).into_response())
}

/// A rule as the API shows it.
#[derive(Serialize)]
struct RuleView<'a> {
    id: &'a str,
    line: usize,
    from: String,
    to: String,
    when: &'a [String],
    #[serde(flatten)]
    decision: &'a Decision,
}

#[derive(Serialize)]
struct CatalogView<'a> {
    plans: Vec<&'a Plan>,
    rules: Vec<RuleView<'a>>,
    warnings: &'a [Problem],
}

pub fn catalog_json(c: &Catalog) -> serde_json::Value {
    serde_json::to_value(CatalogView {
        plans: c.plans.values().collect(),
        rules: c
            .rules
            .iter()
            .map(|r| RuleView {
                id: &r.id,
                line: r.line,
                from: r.from.to_string(),
                to: r.to.to_string(),
                when: &r.when_text,
                decision: &r.decision,
            })
            .collect(),
        warnings: &c.warnings,
    })
    .unwrap_or_default()
}

async fn get_catalog(State(o): State<Ops>) -> Result<Response, ApiError> {
    let c = o
        .catalog()
        .ok_or_else(|| ApiError::new(404, "no_catalog", "no plan catalog is loaded"))?;
    Ok(Json(catalog_json(c)).into_response())
}

async fn get_usage(State(o): State<Ops>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let c = o.contract(&id)?;
    let (seen, detail) = o.usage_of(&c, chrono::Utc::now());
    Ok(Json(serde_json::json!({"seen": seen, "detail": detail})).into_response())
}

fn actor(h: &HeaderMap) -> Result<Actor, ApiError> {
    let v = h.get("platen-actor").ok_or_else(|| {
        ApiError::new(
            401,
            "actor_required",
            "say who asks: header Platen-Actor: operator | tenant:ID | reseller:ID",
        )
    })?;
    v.to_str()
        .map_err(|_| ApiError::new(400, "bad_request", "Platen-Actor is not text"))?
        .parse()
        .map_err(|e: String| ApiError::new(400, "bad_request", e))
}

async fn post_migration(
    State(o): State<Ops>,
    h: HeaderMap,
    b: Result<Json<MigrationRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = actor(&h)?;
    Ok(match o.migrate(&who, body(b)?)? {
        d @ Outcome::DryRun(_) => Json(d).into_response(),
        a @ Outcome::Accepted(_) => created(a),
        Outcome::Refused(m) => {
            let message = match &m.decision.verdict.decision {
                Decision::Refuse { code, message } => {
                    format!(
                        "refused by rule {} ({code}): {message}",
                        m.decision.verdict.rule
                    )
                }
                Decision::Allow { .. } => String::new(),
            };
            let e = ApiError::new(422, "migration_refused", message);
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(serde_json::json!({"error": e, "outcome": "refused", "migration": m})),
            )
                .into_response()
        }
    })
}

#[derive(Deserialize)]
struct MigrationQuery {
    tenant: Option<Id>,
    contract: Option<Id>,
    state: Option<String>,
}

async fn get_migrations(
    State(o): State<Ops>,
    q: Result<Query<MigrationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(400, "bad_request", e.body_text()))?;
    Ok(
        Json(o.migrations(q.tenant.as_ref(), q.contract.as_ref(), q.state.as_deref())?)
            .into_response(),
    )
}

async fn get_migration(State(o): State<Ops>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let m = o
        .store()
        .migration(&id)?
        .ok_or_else(|| ApiError::new(404, "unknown_migration", format!("no migration {id}")))?;
    Ok(Json(m).into_response())
}

async fn delete_migration(
    State(o): State<Ops>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let who = actor(&h)?;
    Ok(Json(o.cancel_migration(&who, &id)?).into_response())
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
        .route("/v1/resellers", post(post_reseller).get(get_resellers))
        .route("/v1/catalog", get(get_catalog))
        .route("/v1/contracts/{id}/usage", get(get_usage))
        .route("/v1/migrations", post(post_migration).get(get_migrations))
        .route(
            "/v1/migrations/{id}",
            get(get_migration).merge(delete(delete_migration)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(256 * 1024))
        .with_state(ops)
}
