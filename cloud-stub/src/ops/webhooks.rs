//! Webhook endpoints and the outbox, for the operator: create an endpoint (its
//! secret is shown once), rotate its secret (the old one keeps signing for a while),
//! disable and enable it, list events and deliveries, replay an event.

use super::{Kind, OpError, Ops};
use crate::model::{Delivery, DeliveryState, Endpoint, SigningSecret, WebhookEvent, EVENT_TYPES};
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

impl Ops {
    fn endpoint_or_404(&self, id: &str) -> Result<Endpoint, OpError> {
        self.store().endpoint(id)?.ok_or_else(|| {
            OpError::new(
                Kind::NotFound,
                "unknown_endpoint",
                format!("no webhook endpoint {id}"),
            )
        })
    }

    pub fn create_endpoint(&self, n: NewEndpoint) -> Result<WithSecret, OpError> {
        check_url(&n.url)?;
        check_events(&n.events)?;
        let now = Utc::now();
        let secret = new_secret(now)?;
        let shown = secret.secret.clone();
        let e = Endpoint {
            id: n.id,
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
    pub fn rotate_endpoint(&self, id: &str, keep_old: Duration) -> Result<WithSecret, OpError> {
        if keep_old < Duration::zero() || keep_old > Duration::days(30) {
            return Err(OpError::new(
                Kind::Invalid,
                "invalid_keep_old",
                "keep_old_secs: between 0 and 30 days",
            ));
        }
        let mut e = self.endpoint_or_404(id)?;
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

    pub fn set_endpoint_disabled(&self, id: &str, disabled: bool) -> Result<EndpointView, OpError> {
        let mut e = self.endpoint_or_404(id)?;
        e.disabled = disabled;
        self.store().put_endpoint(&e)?;
        Ok((&e).into())
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointView>, OpError> {
        Ok(self.store().endpoints()?.iter().map(Into::into).collect())
    }

    pub fn webhook_event(&self, id: &str) -> Result<EventDeliveries, OpError> {
        let event = self.store().webhook_event(id)?.ok_or_else(|| {
            OpError::new(
                Kind::NotFound,
                "unknown_event",
                format!("no webhook event {id}"),
            )
        })?;
        let deliveries = self.store().deliveries_of(id)?;
        Ok(EventDeliveries { event, deliveries })
    }

    /// Deliver an event again to every endpoint that wants it now.
    pub fn replay_event(&self, id: &str) -> Result<usize, OpError> {
        self.webhook_event(id)?;
        Ok(self.store().replay_event(id, Utc::now())?)
    }

    /// Replay every event that occurred at or after `since`; returns how many
    /// deliveries were made pending.
    pub fn replay_since(&self, since: DateTime<Utc>) -> Result<usize, OpError> {
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

    pub fn deliveries(&self, state: DeliveryState, limit: usize) -> Result<Vec<Delivery>, OpError> {
        Ok(self.store().deliveries(state, limit)?)
    }
}
