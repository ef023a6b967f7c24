//! HTTP JSON API (axum) over [`Ops`].
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | POST | `/v1/tenants` | `Tenant` | 201 tenant |
//! | GET | `/v1/tenants` | | tenants |
//! | POST | `/v1/plans` | `Plan` | 201 plan |
//! | GET | `/v1/plans` | | plans |
//! | POST | `/v1/contracts` | `NewContract` | 201 `{contract, change}` |
//! | GET | `/v1/contracts` | `?tenant=&reseller=` | contracts |
//! | GET | `/v1/contracts/{id}` | | `ContractStatus` |
//! | POST | `/v1/contracts/{id}/changes` | `ChangeRequest` | 201 change |
//! | GET | `/v1/contracts/{id}/timeline` | | timeline entries |
//! | GET | `/v1/ledger` | `?contract=&tenant=` | ledger entries |
//! | GET | `/v1/ledger/export` | `?period=YYYY-MM&format=json\|csv&tenant=` | the period's entries with decimal amounts and totals per currency |
//! | POST | `/v1/resellers` | `Reseller` | 201 reseller |
//! | GET | `/v1/resellers` | | resellers |
//! | GET | `/v1/catalog` | | plans, rules, warnings |
//! | GET | `/v1/contracts/{id}/usage` | | the usage the migration rules see now |
//! | POST | `/v1/migrations` | `MigrationRequest` | 200 dry run, 201 accepted, 422 refused |
//! | GET | `/v1/migrations` | `?tenant=&contract=&state=` | migrations |
//! | GET | `/v1/migrations/{id}` | | migration |
//! | DELETE | `/v1/migrations/{id}` | | the cancelled migration |
//! | POST | `/v1/webhooks/endpoints` | `NewEndpoint` | 201 `{endpoint, secret}` (the secret shown once) |
//! | GET | `/v1/webhooks/endpoints` | | endpoints (without secrets) |
//! | POST | `/v1/webhooks/endpoints/{id}/rotate` | `{keep_old_secs}` | `{endpoint, secret}` |
//! | POST | `/v1/webhooks/endpoints/{id}/disable`, `…/enable` | | endpoint |
//! | GET | `/v1/webhooks/events` | `?after=N&limit=` | `[{n, event}]` in the order written |
//! | GET | `/v1/webhooks/events/{id}` | | `{event, deliveries}` |
//! | GET | `/v1/webhooks/deliveries` | `?state=pending\|delivered\|failed&limit=` | deliveries |
//! | POST | `/v1/webhooks/replay` | `{event}` or `{since}` | `{replayed}` (deliveries made due now) |
//!
//! Webhook endpoints: the operator's get every event; a reseller creates and manages
//! its own, which get its tenants' events, and sees only those events and deliveries;
//! tenants have none (403); replays are the operator's.
//!
//! Errors: `{"error": {"code": "…", "message": "…"}}` with a 4xx (5xx for storage).
//! A refused migration is a 422 with code `migration_refused` and, beside the
//! error, the stored `migration` with the deciding rule and the usage it saw.
//! Request bodies are limited to 256 KiB.
//!
//! Every list (`GET` tenants, plans, resellers, contracts, a timeline, the ledger,
//! migrations) is paged: `?limit=` (default 100, at most 1,000) and `?after=` (the
//! cursor); a page that may not be the last carries `Link: <…>; rel="next"` and
//! `Platen-Next-After`. Cursors are keys, so a page is stable under inserts.
//!
//! Every `/v1` request carries `Authorization: Bearer <token>` ([`crate::http::auth`]); the
//! token's actor decides what it may do:
//! - operator: everything;
//! - tenant: reads plans and the catalog, its own tenant record, contracts (status,
//!   timeline, usage), ledger and migrations; requests and cancels its migrations;
//! - reseller: the same for the tenants assigned to it, and its own reseller record.
//!
//! Creating tenants, plans, contracts, resellers and settings changes is the
//! operator's. 401 `unauthenticated` without a valid token, 403 `forbidden` for an
//! action the actor may not take on something it may see. Whatever a caller may not
//! see answers exactly as if it did not exist, on every endpoint: 404 with the same
//! code and message for a contract, tenant, migration or webhook endpoint named in a
//! path or body, and nothing listed for one named in a query filter; visibility is
//! checked before the action. `/healthz` needs no token; it answers `ok`, or 503 with
//! the reason while the tokens file cannot be used or the state store does not
//! answer (a storage failure answers 503 `storage_unavailable` on every endpoint).
//!
//! Ids in paths follow the id grammar (400 `invalid_id` otherwise); a contract or
//! change whose `effective_at` lies more than `api.max_backdate_secs` before the
//! request is refused (422 `effective_at_out_of_range`); a printer already under
//! contract cannot join another (409 `printer_under_contract`).

use crate::http::auth::{Auth, Caller, Scope};
use crate::http::error::ApiError;
use crate::model::Actor;
use crate::model::Decision;
use crate::model::{Plan, Reseller, Tenant};
use crate::ops::migrations::{MigrationRequest, Migrations, Outcome};
use crate::ops::{ChangeRequest, NewContract, Ops};
use crate::plans::catalog::{Catalog, Problem};
use crate::store::{List, OwnerIndex, Page, DEFAULT_PAGE, MAX_PAGE};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use platen_protocol::Id;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The API's state: the operations and how callers are authenticated.
#[derive(Clone)]
pub struct ApiState {
    pub ops: Ops,
    pub migrations: Migrations,
    pub auth: Arc<Auth>,
}

impl FromRef<ApiState> for Ops {
    fn from_ref(s: &ApiState) -> Ops {
        s.ops.clone()
    }
}

impl FromRef<ApiState> for Migrations {
    fn from_ref(s: &ApiState) -> Migrations {
        s.migrations.clone()
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Caller, ApiError> {
        let header = match parts.headers.get(axum::http::header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::new(
                    401,
                    "unauthenticated",
                    "the Authorization header is not text",
                )
            })?),
        };
        s.auth.authenticate(header).map_err(|f| {
            tracing::warn!(path = %parts.uri.path(), failure = ?f, "API request refused: not authenticated");
            ApiError::new(401, "unauthenticated", f.message())
        })
    }
}

fn forbidden(c: &Caller, what: &str) -> ApiError {
    tracing::warn!(token = %c.name, actor = %c.actor, what, "API request refused: forbidden");
    ApiError::new(403, "forbidden", format!("{} may not {what}", c.actor))
}

fn operator_only(c: &Caller, what: &str) -> Result<(), ApiError> {
    if Scope(&c.actor).is_operator() {
        Ok(())
    } else {
        Err(forbidden(c, what))
    }
}

/// Whether the caller may see `tenant`'s data.
fn sees_tenant(o: &Ops, c: &Caller, tenant: &Id) -> Result<bool, ApiError> {
    let scope = Scope(&c.actor);
    if scope.is_operator() {
        return Ok(true);
    }
    let record = o.store().tenant(tenant.as_str())?;
    Ok(scope.sees_tenant(tenant.as_str(), record.as_ref()))
}

/// The items of tenants the caller may see (each tenant's record read once).
fn visible_only<T>(
    o: &Ops,
    c: &Caller,
    items: Vec<T>,
    tenant_of: impl Fn(&T) -> &Id,
) -> Result<Vec<T>, ApiError> {
    if Scope(&c.actor).is_operator() {
        return Ok(items);
    }
    let mut seen: std::collections::HashMap<Id, bool> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for item in items {
        let tenant = tenant_of(&item);
        let visible = match seen.get(tenant) {
            Some(v) => *v,
            None => {
                let v = sees_tenant(o, c, tenant)?;
                seen.insert(tenant.clone(), v);
                v
            }
        };
        if visible {
            out.push(item);
        }
    }
    Ok(out)
}

/// The contract, if the caller may see it; otherwise the same 404 as a missing one.
fn visible_contract(o: &Ops, c: &Caller, id: &str) -> Result<crate::model::Contract, ApiError> {
    let contract = o.contract(id)?;
    if sees_tenant(o, c, &contract.tenant)? {
        Ok(contract)
    } else {
        Err(ApiError::new(
            404,
            "unknown_contract",
            format!("no contract {id}"),
        ))
    }
}

/// An id from the path: the id grammar (`[A-Za-z0-9._-]`, not starting with `.` or
/// `-`; up to 64 characters for contracts, 128 for migrations, whose ids extend their
/// contract's). Anything else is a 400 before it reaches a store or a log line.
struct PathId(String);

fn check_path_id(raw: &str, max: usize) -> Result<String, ApiError> {
    let ok = !raw.is_empty()
        && raw.len() <= max
        && !raw.starts_with(['.', '-'])
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(ApiError::new(
            400,
            "invalid_id",
            format!(
                "the id in the path is not 1-{max} characters of letters, digits, '.', '_' and '-' (not starting with '.' or '-')"
            ),
        ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<PathId, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, s)
            .await
            .map_err(|e| ApiError::new(400, "invalid_id", e.body_text()))?;
        let max = if parts.uri.path().starts_with("/v1/migrations/") {
            128
        } else {
            platen_protocol::ids::MAX_ID_LEN
        };
        check_path_id(&raw, max).map(PathId)
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

/// `?limit=&after=` of every list: at most `limit` items (default 100, at most 1,000)
/// after the cursor `after` (the key of the last item of the page before).
#[derive(Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
}

type PageParams = Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>;

fn page_params(q: PageParams) -> Result<(Option<String>, usize), ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(400, "bad_request", e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(
            400,
            "bad_request",
            format!("limit: between 1 and {MAX_PAGE}"),
        ));
    }
    Ok((q.after, limit))
}

/// The tenant a list is read for: the `tenant` filter if given (what the caller may
/// not see is filtered out after), else a tenant caller's own. Lists of one tenant are
/// read through its index, not by scanning everyone's.
fn scoped_tenant(c: &Caller, asked: Option<&Id>) -> Option<Id> {
    match (asked, &c.actor) {
        (Some(t), _) => Some(t.clone()),
        (None, Actor::Tenant(own)) => Some(own.clone()),
        (None, _) => None,
    }
}

/// Percent-encode a cursor for a query string.
fn encode_query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A page as a JSON array; when there may be more, `Link: <…&after=…>; rel="next"`
/// (RFC 8288) and `Platen-Next-After: <cursor>`.
fn paged<T: Serialize>(uri: &axum::http::Uri, items: Vec<T>, next: Option<String>) -> Response {
    let mut resp = Json(items).into_response();
    if let Some(next) = next {
        let mut query: Vec<String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("after="))
            .map(str::to_string)
            .collect();
        query.push(format!("after={}", encode_query_value(&next)));
        let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.join("&"));
        let headers = resp.headers_mut();
        if let Ok(v) = axum::http::HeaderValue::from_str(&link) {
            headers.insert(axum::http::header::LINK, v);
        }
        if let Ok(v) = axum::http::HeaderValue::from_str(&next) {
            headers.insert("platen-next-after", v);
        }
    }
    resp
}

fn created<T: Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

async fn post_tenant(
    State(o): State<Ops>,
    c: Caller,
    b: Result<Json<Tenant>, JsonRejection>,
) -> Result<Response, ApiError> {
    operator_only(&c, "create tenants")?;
    Ok(created(o.create_tenant(body(b)?)?))
}

async fn get_tenants(
    State(o): State<Ops>,
    c: Caller,
    uri: axum::http::Uri,
    pq: PageParams,
) -> Result<Response, ApiError> {
    let (after, limit) = page_params(pq)?;
    let scope = Scope(&c.actor);
    let page: Page<Tenant> = o.store().page(List::Tenants, after.as_deref(), limit)?;
    let tenants: Vec<Tenant> = page
        .items
        .into_iter()
        .filter(|t| scope.sees_tenant(t.id.as_str(), Some(t)))
        .collect();
    Ok(paged(&uri, tenants, page.next))
}

async fn post_plan(
    State(o): State<Ops>,
    c: Caller,
    b: Result<Json<Plan>, JsonRejection>,
) -> Result<Response, ApiError> {
    operator_only(&c, "create plans")?;
    Ok(created(o.create_plan(body(b)?)?))
}

async fn get_plans(
    State(o): State<Ops>,
    _c: Caller,
    uri: axum::http::Uri,
    pq: PageParams,
) -> Result<Response, ApiError> {
    let (after, limit) = page_params(pq)?;
    let page: Page<Plan> = o.store().page(List::Plans, after.as_deref(), limit)?;
    Ok(paged(&uri, page.items, page.next))
}

async fn post_contract(
    State(o): State<Ops>,
    c: Caller,
    b: Result<Json<NewContract>, JsonRejection>,
) -> Result<Response, ApiError> {
    operator_only(&c, "create contracts")?;
    let (contract, change) = o.create_contract(body(b)?)?;
    Ok(created(
        serde_json::json!({"contract": contract, "change": change}),
    ))
}

#[derive(Deserialize)]
struct ContractQuery {
    tenant: Option<Id>,
    reseller: Option<Id>,
}

/// Contracts, newest state not included (`GET /v1/contracts/{id}` has it): filtered
/// by tenant or reseller, scoped to what the caller sees.
async fn get_contracts(
    State(o): State<Ops>,
    c: Caller,
    uri: axum::http::Uri,
    q: Result<Query<ContractQuery>, axum::extract::rejection::QueryRejection>,
    pq: PageParams,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(400, "bad_request", e.body_text()))?;
    let (after, limit) = page_params(pq)?;
    // A tenant's own contracts are read through its index, whoever asks.
    let tenant = scoped_tenant(&c, q.tenant.as_ref());
    let page: Page<crate::model::Contract> = match &tenant {
        Some(t) => o
            .store()
            .page_of(OwnerIndex::ContractsOfTenant, t, after.as_deref(), limit)?,
        None => o.store().page(List::Contracts, after.as_deref(), limit)?,
    };
    let mut items = visible_only(&o, &c, page.items, |k| &k.tenant)?;
    if let Some(r) = &q.reseller {
        let mut keep = Vec::new();
        for k in items {
            let rec = o.store().tenant(k.tenant.as_str())?;
            if rec.and_then(|t| t.reseller).as_ref() == Some(r) {
                keep.push(k);
            }
        }
        items = keep;
    }
    // The cursor of an index page is the contract id, as on the whole list.
    Ok(paged(&uri, items, page.next))
}

async fn get_contract(
    State(o): State<Ops>,
    c: Caller,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    visible_contract(&o, &c, &id)?;
    Ok(Json(o.contract_status(&id)?).into_response())
}

async fn post_change(
    State(o): State<Ops>,
    c: Caller,
    PathId(id): PathId,
    b: Result<Json<ChangeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    visible_contract(&o, &c, &id)?;
    operator_only(&c, "change contract settings")?;
    Ok(created(o.change_contract(&id, body(b)?)?))
}

async fn get_timeline(
    State(o): State<Ops>,
    c: Caller,
    PathId(id): PathId,
    uri: axum::http::Uri,
    pq: PageParams,
) -> Result<Response, ApiError> {
    visible_contract(&o, &c, &id)?;
    let (after, limit) = page_params(pq)?;
    let after: Option<u64> = match after {
        None => None,
        Some(a) => Some(
            a.parse()
                .map_err(|_| ApiError::new(400, "bad_request", "after: an entry's seq"))?,
        ),
    };
    // Entries in the order they were noted (seq grows); the cursor is the last seq.
    let mut all = o.timeline(&id)?;
    all.sort_by_key(|e| e.seq);
    let mut rest: Vec<_> = all
        .into_iter()
        .filter(|e| after.is_none_or(|a| e.seq > a))
        .collect();
    let next = (rest.len() > limit).then(|| rest[limit - 1].seq.to_string());
    rest.truncate(limit);
    Ok(paged(&uri, rest, next))
}

#[derive(Deserialize)]
struct LedgerQuery {
    contract: Option<Id>,
    tenant: Option<Id>,
}

async fn get_ledger(
    State(o): State<Ops>,
    c: Caller,
    uri: axum::http::Uri,
    q: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
    pq: PageParams,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(400, "bad_request", e.body_text()))?;
    let (after, limit) = page_params(pq)?;
    // A tenant the caller may not see reads as one without entries, as if it did
    // not exist.
    // Read by key: the contract's or the tenant's index (a tenant's own by default).
    let tenant = scoped_tenant(&c, q.tenant.as_ref());
    let after = after.as_deref();
    let page: Page<crate::model::LedgerEntry> = match (&q.contract, &tenant) {
        (Some(k), _) => o
            .store()
            .page_of(OwnerIndex::LedgerOfContract, k, after, limit)?,
        (None, Some(t)) => o
            .store()
            .page_of(OwnerIndex::LedgerOfTenant, t, after, limit)?,
        (None, None) => o.store().page(List::Ledger, after, limit)?,
    };
    let entries: Vec<_> = page
        .items
        .into_iter()
        .filter(|e| tenant.as_ref().is_none_or(|t| &e.tenant == t))
        .collect();
    Ok(paged(
        &uri,
        visible_only(&o, &c, entries, |e| &e.tenant)?,
        page.next,
    ))
}

async fn post_reseller(
    State(o): State<Ops>,
    c: Caller,
    b: Result<Json<Reseller>, JsonRejection>,
) -> Result<Response, ApiError> {
    operator_only(&c, "create resellers")?;
    Ok(created(o.create_reseller(body(b)?)?))
}

async fn get_resellers(
    State(o): State<Ops>,
    c: Caller,
    uri: axum::http::Uri,
    pq: PageParams,
) -> Result<Response, ApiError> {
    if matches!(c.actor, Actor::Tenant(_)) {
        return Err(forbidden(&c, "list resellers"));
    }
    let (after, limit) = page_params(pq)?;
    let scope = Scope(&c.actor);
    let page: Page<Reseller> = o.store().page(List::Resellers, after.as_deref(), limit)?;
    let resellers: Vec<Reseller> = page
        .items
        .into_iter()
        .filter(|r| scope.sees_reseller(r.id.as_str()))
        .collect();
    Ok(paged(&uri, resellers, page.next))
}

/// A rule as the API shows it.
#[derive(Serialize)]
struct RuleView<'a> {
    id: &'a str,
    line: usize,
    from: String,
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<crate::plans::catalog::Direction>,
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
                direction: r.direction,
                when: &r.when_text,
                decision: &r.decision,
            })
            .collect(),
        warnings: &c.warnings,
    })
    .unwrap_or_default()
}

async fn get_catalog(State(o): State<Ops>, _c: Caller) -> Result<Response, ApiError> {
    let c = o
        .catalog()
        .ok_or_else(|| ApiError::new(404, "no_catalog", "no plan catalog is loaded"))?;
    Ok(Json(catalog_json(c)).into_response())
}

async fn get_usage(
    State(o): State<Ops>,
    State(m): State<Migrations>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let c = visible_contract(&o, &caller, &id)?;
    let (seen, detail) = m.usage_of(&c, chrono::Utc::now())?;
    Ok(Json(serde_json::json!({"seen": seen, "detail": detail})).into_response())
}

async fn post_migration(
    State(m): State<Migrations>,
    c: Caller,
    b: Result<Json<MigrationRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    Ok(match m.migrate(&c.actor, body(b)?)? {
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
    c: Caller,
    uri: axum::http::Uri,
    q: Result<Query<MigrationQuery>, axum::extract::rejection::QueryRejection>,
    pq: PageParams,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(400, "bad_request", e.body_text()))?;
    let (after, limit) = page_params(pq)?;
    let tenant = scoped_tenant(&c, q.tenant.as_ref());
    let after = after.as_deref();
    let page: Page<crate::model::Migration> = match (&q.contract, &tenant) {
        (Some(k), _) => o
            .store()
            .page_of(OwnerIndex::MigrationsOfContract, k, after, limit)?,
        (None, Some(t)) => o
            .store()
            .page_of(OwnerIndex::MigrationsOfTenant, t, after, limit)?,
        (None, None) => o.store().page(List::Migrations, after, limit)?,
    };
    let all: Vec<_> = page
        .items
        .into_iter()
        .filter(|m| tenant.as_ref().is_none_or(|t| &m.decision.tenant == t))
        .filter(|m| q.state.as_deref().is_none_or(|s| m.state.name() == s))
        .collect();
    Ok(paged(
        &uri,
        visible_only(&o, &c, all, |m| &m.decision.tenant)?,
        page.next,
    ))
}

/// The migration, if the caller may see it; otherwise the same 404 as a missing one.
fn visible_migration(o: &Ops, c: &Caller, id: &str) -> Result<crate::model::Migration, ApiError> {
    let missing = || ApiError::new(404, "unknown_migration", format!("no migration {id}"));
    let m = o.store().migration(id)?.ok_or_else(missing)?;
    if sees_tenant(o, c, &m.decision.tenant)? {
        Ok(m)
    } else {
        Err(missing())
    }
}

async fn get_migration(
    State(o): State<Ops>,
    c: Caller,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    Ok(Json(visible_migration(&o, &c, &id)?).into_response())
}

async fn delete_migration(
    State(o): State<Ops>,
    State(m): State<Migrations>,
    c: Caller,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    visible_migration(&o, &c, &id)?;
    Ok(Json(m.cancel(&c.actor, &id)?).into_response())
}

/// `ok`, or 503 with what is wrong (a tokens file that cannot be used, a state store
/// that does not answer).
async fn healthz(State(s): State<ApiState>) -> Response {
    let store = s.ops.store().clone();
    let store_problem = match tokio::task::spawn_blocking(move || store.check()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    match s.auth.problem().or(store_problem) {
        None => "ok".into_response(),
        Some(p) => (StatusCode::SERVICE_UNAVAILABLE, format!("degraded: {p}")).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such endpoint")
}

/// The API over `ops` and `migrations`, authenticating callers with `auth`.
async fn post_endpoint(
    State(o): State<Ops>,
    c: Caller,
    b: Result<Json<crate::ops::webhooks::NewEndpoint>, JsonRejection>,
) -> Result<Response, ApiError> {
    Ok(created(o.create_endpoint(&c.actor, body(b)?)?))
}

async fn get_endpoints(State(o): State<Ops>, c: Caller) -> Result<Response, ApiError> {
    Ok(Json(o.endpoints(&c.actor)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// How long the old secrets keep signing (default a day).
    #[serde(default = "default_keep_old")]
    keep_old_secs: i64,
}

fn default_keep_old() -> i64 {
    86_400
}

async fn rotate_endpoint(
    State(o): State<Ops>,
    c: Caller,
    PathId(id): PathId,
    b: Result<Json<Rotate>, JsonRejection>,
) -> Result<Response, ApiError> {
    let keep = body(b)?.keep_old_secs;
    Ok(Json(o.rotate_endpoint(&c.actor, &id, chrono::Duration::seconds(keep))?).into_response())
}

async fn disable_endpoint(
    State(o): State<Ops>,
    c: Caller,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    Ok(Json(o.set_endpoint_disabled(&c.actor, &id, true)?).into_response())
}

async fn enable_endpoint(
    State(o): State<Ops>,
    c: Caller,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    Ok(Json(o.set_endpoint_disabled(&c.actor, &id, false)?).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct NumberedEvent {
    n: u64,
    event: crate::model::WebhookEvent,
}

async fn get_webhook_events(
    State(o): State<Ops>,
    c: Caller,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(400, "bad_request", e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(
            400,
            "bad_request",
            format!("limit: between 1 and {MAX_PAGE}"),
        ));
    }
    let events: Vec<NumberedEvent> = o
        .webhook_events(&c.actor, q.after, limit)?
        .into_iter()
        .map(|(n, event)| NumberedEvent { n, event })
        .collect();
    Ok(Json(events).into_response())
}

async fn get_webhook_event(
    State(o): State<Ops>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if id.len() > 256 {
        return Err(ApiError::new(
            400,
            "invalid_id",
            "an event id is at most 256 characters",
        ));
    }
    Ok(Json(o.webhook_event(&c.actor, &id)?).into_response())
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn get_deliveries(
    State(o): State<Ops>,
    c: Caller,
    q: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use crate::model::DeliveryState;
    let Query(q) = q.map_err(|e| ApiError::new(400, "bad_request", e.body_text()))?;
    let state = match q.state.as_deref().unwrap_or("pending") {
        "pending" => DeliveryState::Pending,
        "delivered" => DeliveryState::Delivered,
        "failed" => DeliveryState::Failed,
        _ => {
            return Err(ApiError::new(
                400,
                "bad_request",
                "state: pending, delivered or failed",
            ))
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    Ok(Json(o.deliveries(&c.actor, state, limit)?).into_response())
}

/// One event, or every event since a time.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replay {
    event: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
}

async fn post_replay(
    State(o): State<Ops>,
    c: Caller,
    b: Result<Json<Replay>, JsonRejection>,
) -> Result<Response, ApiError> {
    let n = match body(b)? {
        Replay {
            event: Some(e),
            since: None,
        } => o.replay_event(&c.actor, &e)?,
        Replay {
            event: None,
            since: Some(t),
        } => o.replay_since(&c.actor, t)?,
        _ => {
            return Err(ApiError::new(
                400,
                "bad_request",
                "give either event (an event id) or since (a time)",
            ))
        }
    };
    Ok(Json(serde_json::json!({ "replayed": n })).into_response())
}

#[derive(Deserialize)]
struct ExportQuery {
    period: String,
    format: Option<String>,
    tenant: Option<Id>,
}

/// The ledger of a billing period for finance: what the caller may see.
async fn get_ledger_export(
    State(o): State<Ops>,
    c: Caller,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(400, "bad_request", e.body_text()))?;
    let ok = q.period.len() == 7
        && q.period.as_bytes()[4] == b'-'
        && q.period[..4].bytes().all(|b| b.is_ascii_digit())
        && q.period[5..]
            .parse::<u32>()
            .is_ok_and(|m| (1..=12).contains(&m));
    if !ok {
        return Err(ApiError::new(400, "bad_request", "period: YYYY-MM"));
    }
    let entries = match scoped_tenant(&c, q.tenant.as_ref()) {
        Some(t) => o.store().ledger_of(crate::store::LedgerOwner::Tenant(&t))?,
        None => o.store().ledger()?,
    };
    let entries = visible_only(&o, &c, entries, |e| &e.tenant)?;
    let x = crate::billing::export::export(&q.period, &entries);
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(x).into_response()),
        "csv" => {
            let text = crate::billing::export::csv(&x)
                .map_err(|e| ApiError::new(500, "export_failed", e))?;
            Ok((
                [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                text,
            )
                .into_response())
        }
        _ => Err(ApiError::new(400, "bad_request", "format: json or csv")),
    }
}

pub fn router(ops: Ops, migrations: Migrations, auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/v1/tenants", post(post_tenant).get(get_tenants))
        .route("/v1/plans", post(post_plan).get(get_plans))
        .route("/v1/contracts", post(post_contract).get(get_contracts))
        .route("/v1/contracts/{id}", get(get_contract))
        .route("/v1/contracts/{id}/changes", post(post_change))
        .route("/v1/contracts/{id}/timeline", get(get_timeline))
        .route("/v1/ledger", get(get_ledger))
        .route("/v1/ledger/export", get(get_ledger_export))
        .route("/v1/resellers", post(post_reseller).get(get_resellers))
        .route("/v1/catalog", get(get_catalog))
        .route("/v1/contracts/{id}/usage", get(get_usage))
        .route("/v1/migrations", post(post_migration).get(get_migrations))
        .route(
            "/v1/migrations/{id}",
            get(get_migration).merge(delete(delete_migration)),
        )
        .route(
            "/v1/webhooks/endpoints",
            post(post_endpoint).get(get_endpoints),
        )
        .route("/v1/webhooks/endpoints/{id}/rotate", post(rotate_endpoint))
        .route(
            "/v1/webhooks/endpoints/{id}/disable",
            post(disable_endpoint),
        )
        .route("/v1/webhooks/endpoints/{id}/enable", post(enable_endpoint))
        .route("/v1/webhooks/events", get(get_webhook_events))
        .route("/v1/webhooks/events/{*id}", get(get_webhook_event))
        .route("/v1/webhooks/deliveries", get(get_deliveries))
        .route("/v1/webhooks/replay", post(post_replay))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(256 * 1024))
        .with_state(ApiState {
            ops,
            migrations,
            auth,
        })
}
