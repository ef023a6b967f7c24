//! Outbound webhooks: the events the cloud reports to the provider's billing system,
//! the endpoints they go to, and each delivery with its attempts.
//!
//! An event is written in the same atomic store call as the fact it reports (the
//! ledger entry), so no fact is without its event and no event without its fact. Its
//! id is derived from what it reports (`credit.issued/{ledger key}`), so it is the
//! same across retries and replays and a receiver can deduplicate on it; `seq` counts
//! a contract's events from 1, so a receiver can put them in order.

use super::evidence::{ChangeRecord, Event, LedgerEntry};
use super::migration::{Migration, MigrationState};
use super::seen::Quiet;
use chrono::{DateTime, Duration, Utc};
use platen_protocol::Id;
use serde::{Deserialize, Serialize};

/// Event types, as they appear in `type`.
pub const CREDIT_ISSUED: &str = "credit.issued";
pub const CREDIT_CORRECTED: &str = "credit.corrected";
pub const PAGES_GRANTED: &str = "pages.granted";
pub const SHIPMENT_ORDERED: &str = "shipment.ordered";
pub const CHANGE_FAULT: &str = "change.fault";
pub const CHANGE_SETTLED: &str = "change.settled";
pub const MIGRATION_EXECUTED: &str = "migration.executed";
pub const MIGRATION_REFUSED: &str = "migration.refused";
pub const PRINTER_STALE: &str = "printer.stale";
/// Every type an endpoint may filter on.
pub const EVENT_TYPES: [&str; 9] = [
    CREDIT_ISSUED,
    CREDIT_CORRECTED,
    PAGES_GRANTED,
    SHIPMENT_ORDERED,
    CHANGE_FAULT,
    CHANGE_SETTLED,
    MIGRATION_EXECUTED,
    MIGRATION_REFUSED,
    PRINTER_STALE,
];

fn event(
    kind: &str,
    subject: &str,
    (tenant, contract): (&Id, &Id),
    at: DateTime<Utc>,
    data: serde_json::Value,
) -> WebhookEvent {
    WebhookEvent {
        id: format!("{kind}/{subject}"),
        kind: kind.into(),
        tenant: tenant.clone(),
        reseller: None,
        contract: contract.clone(),
        seq: 0,
        occurred_at: at,
        data,
    }
}

/// Whether a timeline event reports a webhook event ([`timeline_event`]): only
/// faults, so other appends need not look up their change's owner.
pub fn reported_on_timeline(e: &Event) -> bool {
    matches!(e, Event::ConfigFault { .. } | Event::ServiceFault { .. })
}

/// The event a timeline entry reports, if any: a fault, once per change, kind and
/// printer (the first time it is determined; a fault noted again is the same event).
pub fn timeline_event(
    tenant: &Id,
    contract: &Id,
    change_id: &str,
    e: &Event,
    at: DateTime<Utc>,
) -> Option<WebhookEvent> {
    let (kind, printer, reason, cause) = match e {
        Event::ConfigFault {
            printer,
            reason,
            cause,
        } => (
            "config",
            printer,
            reason,
            serde_json::to_value(cause).unwrap_or_default(),
        ),
        Event::ServiceFault { printer, reason } => {
            ("service", printer, reason, serde_json::Value::Null)
        }
        _ => return None,
    };
    Some(event(
        CHANGE_FAULT,
        &format!("{change_id}/{kind}/{printer}"),
        (tenant, contract),
        at,
        serde_json::json!({
            "tenant": tenant, "contract": contract, "change_id": change_id,
            "fault": kind, "printer": printer, "reason": reason, "cause": cause,
        }),
    ))
}

/// The event of a change that settled: its times and whether a fault was found.
pub fn settled_event(tenant: &Id, rec: &ChangeRecord, at: DateTime<Utc>) -> Option<WebhookEvent> {
    if !rec.setup.settled {
        return None;
    }
    let c = &rec.change;
    Some(event(
        CHANGE_SETTLED,
        &c.id,
        (tenant, &c.contract),
        rec.setup.settled_at.unwrap_or(at),
        serde_json::json!({
            "tenant": tenant, "contract": c.contract, "change_id": c.id, "plan": c.plan,
            "effective_at": c.effective_at, "completed_at": rec.setup.completed_at,
            "config_fault": rec.setup.config_fault.as_ref().map(|f| &f.reason),
            "service_fault": rec.setup.service_fault.as_ref().map(|f| &f.reason),
        }),
    ))
}

/// The event of a migration that was refused or executed.
pub fn migration_event(m: &Migration, at: DateTime<Utc>) -> Option<WebhookEvent> {
    let d = &m.decision;
    let (kind, extra) = match &m.state {
        MigrationState::Refused => (MIGRATION_REFUSED, serde_json::json!({})),
        MigrationState::Executed { change_id, at } => (
            MIGRATION_EXECUTED,
            serde_json::json!({"change_id": change_id, "executed_at": at}),
        ),
        _ => return None,
    };
    let mut data = serde_json::json!({
        "tenant": d.tenant, "contract": d.contract, "migration": m.id,
        "from_plan": d.from_plan, "to_plan": d.to_plan, "requested_by": d.requested_by,
        "rule": d.verdict.rule, "decided_at": d.decided_at,
    });
    if let (Some(o), Some(x)) = (data.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    Some(event(kind, &m.id, (&d.tenant, &d.contract), at, data))
}

/// The event of a printer under contract whose telemetry went quiet
/// ([`crate::fleet::stale`]): once per quiet spell, which its newest reading names
/// (`never` when none came since the contract began), so every instance that sees it
/// writes the same event and a reading after it starts a new spell.
pub fn printer_stale_event(q: &Quiet) -> WebhookEvent {
    let last = q
        .last_reading
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "never".into());
    event(
        PRINTER_STALE,
        &format!("{}/{}/{last}", q.contract, q.printer),
        (&q.tenant, &q.contract),
        q.stale_at,
        serde_json::json!({
            "tenant": q.tenant, "contract": q.contract, "printer": q.printer,
            "last_reading_at": q.last_reading, "stale_after_secs": q.stale_after.as_secs(),
            "agent": q.agent, "printer_answering": q.answering, "cause": q.cause(),
        }),
    )
}

/// One event, as stored and (its `body`) as delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// `{type}/{subject}`: stable across retries; the `webhook-id` header.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub tenant: Id,
    /// The tenant's reseller when the event was written (its endpoints get it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseller: Option<Id>,
    pub contract: Id,
    /// The contract's events counted from 1, in the order they were written.
    pub seq: u64,
    pub occurred_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

impl WebhookEvent {
    /// The request body: `{"type", "timestamp", "data"}` (Standard Webhooks' payload
    /// shape), with the id and the contract's sequence number in `data`.
    pub fn body(&self) -> Vec<u8> {
        let mut data = self.data.clone();
        if let Some(o) = data.as_object_mut() {
            o.insert("event_id".into(), self.id.clone().into());
            o.insert("contract_seq".into(), self.seq.into());
        }
        let body = serde_json::json!({
            "type": self.kind,
            "timestamp": self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// The events a ledger entry reports, without their sequence numbers (the store
/// assigns them in the same transaction): a credit (or its correction), the pages
/// granted, the shipment ordered.
pub fn ledger_events(e: &LedgerEntry) -> Vec<WebhookEvent> {
    let base = serde_json::json!({
        "ledger_key": e.key,
        "tenant": e.tenant,
        "contract": e.contract,
        "change_id": e.change_id,
        "period": e.part.period.label(),
        "currency": e.currency,
        "amount_minor": e.signed_credit(),
        "unavailable_secs": e.part.unavailable_secs,
        "arithmetic": e.part.fee_arithmetic,
    });
    let event = |kind: &str, extra: serde_json::Value| {
        let mut data = base.clone();
        if let (Some(d), Some(x)) = (data.as_object_mut(), extra.as_object()) {
            d.extend(x.clone());
        }
        WebhookEvent {
            id: format!("{kind}/{}", e.key),
            kind: kind.into(),
            tenant: e.tenant.clone(),
            reseller: None,
            contract: e.contract.clone(),
            seq: 0,
            occurred_at: e.created_at,
            data,
        }
    };
    if let Some(original) = &e.reverses {
        let pages = e.part.extra_pages.as_ref().map(|p| p.pages);
        return vec![event(
            CREDIT_CORRECTED,
            serde_json::json!({"reverses": original, "pages_taken_back": pages}),
        )];
    }
    let mut out = vec![event(CREDIT_ISSUED, serde_json::json!({}))];
    if let Some(p) = &e.part.extra_pages {
        out.push(event(
            PAGES_GRANTED,
            serde_json::json!({"pages": p.pages, "cap_period": p.period, "pages_arithmetic": p.arithmetic}),
        ));
    }
    if let Some(s) = &e.part.shipment {
        out.push(event(
            SHIPMENT_ORDERED,
            serde_json::json!({"item": s.item, "quantity": s.quantity, "shipment_arithmetic": s.arithmetic}),
        ));
    }
    out
}

/// A signing secret: `whsec_` and the base64 of its key bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSecret {
    pub secret: String,
    pub created_at: DateTime<Utc>,
    /// After a rotation the old secret still signs until then.
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningSecret(whsec_…, {})", self.created_at)
    }
}

/// Where events go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: Id,
    /// A reseller's endpoint gets only the events of its tenants; none: the
    /// operator's, every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseller: Option<Id>,
    pub url: String,
    /// Event types delivered here; empty: every type.
    pub events: Vec<String>,
    /// Newest first; every unexpired one signs (several during a rotation).
    pub secrets: Vec<SigningSecret>,
    pub disabled: bool,
    /// Since when every attempt failed (set after [`FAILING_AFTER`] in a row).
    pub failing_since: Option<DateTime<Utc>>,
    /// Failed attempts in a row.
    pub failures_in_a_row: u32,
    pub created_at: DateTime<Utc>,
}

/// Failed attempts in a row after which an endpoint is marked failing (its events
/// are kept and still retried).
pub const FAILING_AFTER: u32 = 5;

impl Endpoint {
    /// Whether `e` goes here: enabled, a type it takes, and (a reseller's endpoint)
    /// an event of one of the reseller's tenants.
    pub fn wants(&self, e: &WebhookEvent) -> bool {
        let kind_ok = self.events.is_empty() || self.events.contains(&e.kind);
        let scope_ok = self.reseller.is_none() || self.reseller == e.reseller;
        !self.disabled && kind_ok && scope_ok
    }

    /// The secrets that sign at `now`.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|t| t > now))
            .map(|s| s.secret.as_str())
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Retried for [`GIVE_UP_AFTER`] without success: kept, replayable.
    Failed,
}

impl DeliveryState {
    pub fn name(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

/// One try to deliver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// Why it failed (no answer, a timeout, a status that is not 2xx).
    pub error: Option<String>,
    pub millis: u64,
}

/// Attempts kept per delivery (the first and the latest ones).
pub const ATTEMPTS_KEPT: usize = 20;

/// One event to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub endpoint: Id,
    pub event_id: String,
    pub state: DeliveryState,
    /// When it is next tried (pending only).
    pub next_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Attempts made in all.
    pub tries: u32,
    /// The first few and the latest attempts ([`ATTEMPTS_KEPT`]).
    pub attempts: Vec<Attempt>,
}

/// How long a delivery is retried before it is marked failed.
pub fn give_up_after() -> Duration {
    Duration::days(3)
}

/// Delay before try `n + 1` after `n` failed tries, in multiples of the first delay
/// (5 s by default): 1, 6, 24, 120, 360, 720, 1440, then every 2880 — 5 s, 30 s,
/// 2 min, 10 min, 30 min, 1 h, 2 h, then every 4 h.
pub fn retry_delay(first: Duration, failed_tries: u32) -> Duration {
    let factor = match failed_tries {
        0 | 1 => 1,
        2 => 6,
        3 => 24,
        4 => 120,
        5 => 360,
        6 => 720,
        7 => 1440,
        _ => 2880,
    };
    first * factor
}

/// The default first retry delay.
pub fn first_retry() -> Duration {
    Duration::seconds(5)
}

impl Delivery {
    pub fn new(endpoint: &Id, event_id: &str, now: DateTime<Utc>) -> Delivery {
        Delivery {
            endpoint: endpoint.clone(),
            event_id: event_id.into(),
            state: DeliveryState::Pending,
            next_at: Some(now),
            created_at: now,
            tries: 0,
            attempts: Vec::new(),
        }
    }

    /// The key a delivery is stored under: unambiguous, since neither an endpoint
    /// id nor an event id holds a space.
    pub fn key(&self) -> String {
        delivery_key(&self.endpoint, &self.event_id)
    }

    /// Note an attempt and decide what follows: delivered on a 2xx, else retried
    /// after [`retry_delay`] (from `first`), or failed once [`give_up_after`] has
    /// passed since the delivery was created.
    pub fn record(&mut self, a: Attempt, first: Duration) {
        let ok = a.error.is_none() && a.status.is_some_and(|s| (200..300).contains(&s));
        let at = a.at;
        self.tries += 1;
        if self.attempts.len() >= ATTEMPTS_KEPT {
            self.attempts.remove(ATTEMPTS_KEPT / 2);
        }
        self.attempts.push(a);
        if ok {
            self.state = DeliveryState::Delivered;
            self.next_at = None;
        } else if at - self.created_at >= give_up_after() {
            self.state = DeliveryState::Failed;
            self.next_at = None;
        } else {
            self.next_at = Some(at + retry_delay(first, self.tries));
        }
    }
}

pub fn delivery_key(endpoint: &Id, event_id: &str) -> String {
    format!("{endpoint} {event_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(at: DateTime<Utc>, status: Option<u16>) -> Attempt {
        Attempt {
            at,
            status,
            error: status
                .filter(|s| !(200..300).contains(s))
                .map(|s| format!("HTTP {s}"))
                .or_else(|| status.is_none().then(|| "timeout".into())),
            millis: 1,
        }
    }

    #[test]
    fn retries_back_off_and_give_up_after_three_days() {
        let t0 = Utc::now();
        let mut d = Delivery::new(&"e1".parse().unwrap(), "credit.issued/c1.1/2026-01", t0);
        let mut at = t0;
        let mut delays = Vec::new();
        while d.state == DeliveryState::Pending {
            d.record(attempt(at, Some(503)), first_retry());
            if let Some(next) = d.next_at {
                delays.push((next - at).num_seconds());
                at = next;
            }
        }
        assert_eq!(d.state, DeliveryState::Failed);
        assert_eq!(&delays[..8], &[5, 30, 120, 600, 1800, 3600, 7200, 14400]);
        assert!(
            at - t0 >= give_up_after(),
            "retried for at least three days"
        );
        assert!(d.tries > 20 && d.attempts.len() == ATTEMPTS_KEPT);
        // The first attempts are kept beside the latest ones.
        assert_eq!(d.attempts[0].at, t0);
        // A 2xx delivers; a timeout (no status) does not.
        let mut ok = Delivery::new(&"e1".parse().unwrap(), "x", t0);
        ok.record(attempt(t0, None), first_retry());
        assert_eq!(ok.state, DeliveryState::Pending);
        ok.record(attempt(t0, Some(204)), first_retry());
        assert_eq!((ok.state, ok.next_at), (DeliveryState::Delivered, None));
    }
}
