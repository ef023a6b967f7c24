//! Webhook endpoints and the outbox: create an endpoint (its secret is shown once),
//! rotate its secret (the old one keeps signing for a while), disable and enable it,
//! list events and deliveries, replay events. The operator's endpoints get every
//! event; a reseller manages endpoints of its own, which get its tenants' events, and
//! sees only those events and deliveries (anything else answers as if it did not
//! exist). Tenants have no endpoints; replays are the operator's.

use super::{Kind, OpError, Ops};
use crate::model::EVENT_TYPES;
use crate::model::{Actor, Delivery, DeliveryState, Endpoint, SigningSecret, WebhookEvent};
use crate::store::Inserted;
use chrono::{DateTime, Duration, Utc};
use platen_protocol::Id;
use serde::{Deserialize, Serialize};

/// `POST /v1/webhooks/endpoints`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    pub id: Id,
    pub url: String,
    /// Event types to deliver; empty or absent: every type.
    #[serde(default)]
    pub events: Vec<String>,
}

/// An endpoint as the API shows it: never its secrets, only when each was made.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointView {
    pub id: Id,
    pub reseller: Option<Id>,
    pub url: String,
    pub events: Vec<String>,
    pub disabled: bool,
    pub failing_since: Option<DateTime<Utc>>,
    pub failures_in_a_row: u32,
    pub created_at: DateTime<Utc>,
    pub secrets: Vec<SecretView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SecretView {
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<&Endpoint> for EndpointView {
    fn from(e: &Endpoint) -> Self {
        EndpointView {
            id: e.id.clone(),
            reseller: e.reseller.clone(),
            url: e.url.clone(),
            events: e.events.clone(),
            disabled: e.disabled,
            failing_since: e.failing_since,
            failures_in_a_row: e.failures_in_a_row,
            created_at: e.created_at,
            secrets: e
                .secrets
                .iter()
                .map(|s| SecretView {
                    created_at: s.created_at,
                    expires_at: s.expires_at,
                })
                .collect(),
        }
    }
}

/// An endpoint with the secret just made (shown this once).
#[derive(Clone, Debug, Serialize)]
pub struct WithSecret {
    pub endpoint: EndpointView,
    pub secret: String,
}

/// An event with its deliveries.
#[derive(Clone, Debug, Serialize)]
pub struct EventDeliveries {
    pub event: WebhookEvent,
    pub deliveries: Vec<Delivery>,
}

/// Longest URL accepted.
const MAX_URL: usize = 2048;

fn check_url(url: &str) -> Result<(), OpError> {
    let invalid = |why: &str| OpError::new(Kind::Invalid, "invalid_url", why.to_string());
    if url.len() > MAX_URL {
        return Err(invalid("the url is longer than 2048 characters"));
    }
    let u =
        reqwest::Url::parse(url).map_err(|e| invalid(&format!("the url does not parse: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(invalid("the url must be http:// or https:// with a host"));
    }
    Ok(())
}

fn check_events(events: &[String]) -> Result<(), OpError> {
    match events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
        Some(e) => Err(OpError::new(
            Kind::Invalid,
            "unknown_event_type",
            format!(
                "no event type {:?}; the types are {}",
                e.chars().take(64).collect::<String>(),
                EVENT_TYPES.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn new_secret(now: DateTime<Utc>) -> Result<SigningSecret, OpError> {
    let secret = crate::webhooks::sign::new_secret()
        .map_err(|e| OpError::new(Kind::Internal, "no_random", e.to_string()))?;
    Ok(SigningSecret {
        secret,
        created_at: now,
        expires_at: None,
    })
}

/// Whose endpoints and events an actor may manage: `None` the operator (all), a
/// reseller its own; a tenant none.
fn owner(actor: &Actor) -> Result<Option<&Id>, OpError> {
    match actor {
        Actor::Operator => Ok(None),
        Actor::Reseller(r) => Ok(Some(r)),
        Actor::Tenant(_) => Err(OpError::new(
            Kind::Forbidden,
            "forbidden",
            format!("{actor} has no webhook endpoints"),
        )),
    }
}

fn operator(actor: &Actor, what: &str) -> Result<(), OpError> {
    match actor {
        Actor::Operator => Ok(()),
        _ => Err(OpError::new(
            Kind::Forbidden,
            "forbidden",
            format!("{actor} may not {what}"),
        )),
    }
}

impl Ops {
    fn endpoint_or_404(&self, actor: &Actor, id: &str) -> Result<Endpoint, OpError> {
        let scope = owner(actor)?;
        self.store()
            .endpoint(id)?
            .filter(|e| scope.is_none() || e.reseller.as_ref() == scope)
            .ok_or_else(|| {
                OpError::new(
                    Kind::NotFound,
                    "unknown_endpoint",
                    format!("no webhook endpoint {id}"),
                )
            })
    }

    pub fn create_endpoint(&self, actor: &Actor, n: NewEndpoint) -> Result<WithSecret, OpError> {
        let reseller = owner(actor)?.cloned();
        check_url(&n.url)?;
        check_events(&n.events)?;
        let now = Utc::now();
        let secret = new_secret(now)?;
        let shown = secret.secret.clone();
        let e = Endpoint {
            id: n.id,
            reseller,
            url: n.url,
            events: n.events,
            secrets: vec![secret],
            disabled: false,
            failing_since: None,
            failures_in_a_row: 0,
            created_at: now,
        };
        if self.store().add_endpoint(&e)? == Inserted::Exists {
            return Err(OpError::new(
                Kind::Conflict,
                "endpoint_exists",
                format!("webhook endpoint {} exists", e.id),
            ));
        }
        Ok(WithSecret {
            endpoint: (&e).into(),
            secret: shown,
        })
    }

    /// A new secret signs from now on; the others keep signing for `keep_old`
    /// (receivers accept any of the signatures), then stop.
    pub fn rotate_endpoint(
        &self,
        actor: &Actor,
        id: &str,
        keep_old: Duration,
    ) -> Result<WithSecret, OpError> {
        if keep_old < Duration::zero() || keep_old > Duration::days(30) {
            return Err(OpError::new(
                Kind::Invalid,
                "invalid_keep_old",
                "keep_old_secs: between 0 and 30 days",
            ));
        }
        let mut e = self.endpoint_or_404(actor, id)?;
        let now = Utc::now();
        for s in &mut e.secrets {
            let until = now + keep_old;
            s.expires_at = Some(s.expires_at.map_or(until, |t| t.min(until)));
        }
        // Secrets that no longer sign are forgotten.
        e.secrets.retain(|s| s.expires_at.is_none_or(|t| t > now));
        let secret = new_secret(now)?;
        let shown = secret.secret.clone();
        e.secrets.insert(0, secret);
        self.store().put_endpoint(&e)?;
        Ok(WithSecret {
            endpoint: (&e).into(),
            secret: shown,
        })
    }

    pub fn set_endpoint_disabled(
        &self,
        actor: &Actor,
        id: &str,
        disabled: bool,
    ) -> Result<EndpointView, OpError> {
        let mut e = self.endpoint_or_404(actor, id)?;
        e.disabled = disabled;
        self.store().put_endpoint(&e)?;
        Ok((&e).into())
    }

    pub fn endpoints(&self, actor: &Actor) -> Result<Vec<EndpointView>, OpError> {
        let scope = owner(actor)?;
        Ok(self
            .store()
            .endpoints()?
            .iter()
            .filter(|e| scope.is_none() || e.reseller.as_ref() == scope)
            .map(Into::into)
            .collect())
    }

    /// Events in the order written after the `after`-th, those the actor may see.
    pub fn webhook_events(
        &self,
        actor: &Actor,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, WebhookEvent)>, OpError> {
        let scope = owner(actor)?;
        Ok(self
            .store()
            .webhook_events(after, limit)?
            .into_iter()
            .filter(|(_, e)| scope.is_none() || e.reseller.as_ref() == scope)
            .collect())
    }

    pub fn webhook_event(&self, actor: &Actor, id: &str) -> Result<EventDeliveries, OpError> {
        let scope = owner(actor)?;
        let event = self
            .store()
            .webhook_event(id)?
            .filter(|e| scope.is_none() || e.reseller.as_ref() == scope)
            .ok_or_else(|| {
                OpError::new(
                    Kind::NotFound,
                    "unknown_event",
                    format!("no webhook event {id}"),
                )
            })?;
        let mine = self.own_endpoints(scope)?;
        let deliveries = self
            .store()
            .deliveries_of(id)?
            .into_iter()
            .filter(|d| mine.as_ref().is_none_or(|m| m.contains(&d.endpoint)))
            .collect();
        Ok(EventDeliveries { event, deliveries })
    }

    /// A reseller's endpoint ids (`None`: the operator, every endpoint).
    fn own_endpoints(&self, scope: Option<&Id>) -> Result<Option<Vec<Id>>, OpError> {
        Ok(match scope {
            None => None,
            Some(r) => Some(
                self.store()
                    .endpoints()?
                    .into_iter()
                    .filter(|e| e.reseller.as_ref() == Some(r))
                    .map(|e| e.id)
                    .collect(),
            ),
        })
    }

    /// Deliver an event again to every endpoint that wants it now.
    pub fn replay_event(&self, actor: &Actor, id: &str) -> Result<usize, OpError> {
        operator(actor, "replay webhook events")?;
        self.webhook_event(actor, id)?;
        Ok(self.store().replay_event(id, Utc::now())?)
    }

    /// Replay every event that occurred at or after `since`; returns how many
    /// deliveries were made pending.
    pub fn replay_since(&self, actor: &Actor, since: DateTime<Utc>) -> Result<usize, OpError> {
        operator(actor, "replay webhook events")?;
        let now = Utc::now();
        if since > now {
            return Err(OpError::new(
                Kind::Invalid,
                "since_in_the_future",
                "since: a time in the past",
            ));
        }
        let (mut after, mut n) = (0, 0);
        loop {
            let page = self.store().webhook_events(after, 1000)?;
            let Some((last, _)) = page.last() else {
                return Ok(n);
            };
            after = *last;
            for (_, e) in page.iter().filter(|(_, e)| e.occurred_at >= since) {
                n += self.store().replay_event(&e.id, now)?;
            }
        }
    }

    pub fn deliveries(
        &self,
        actor: &Actor,
        state: DeliveryState,
        limit: usize,
    ) -> Result<Vec<Delivery>, OpError> {
        let scope = owner(actor)?;
        let mine = self.own_endpoints(scope)?;
        Ok(self
            .store()
            .deliveries(state, limit)?
            .into_iter()
            .filter(|d| mine.as_ref().is_none_or(|m| m.contains(&d.endpoint)))
            .collect())
    }
}
