//! The delivery worker: claims pending deliveries that are due (one instance at a
//! time holds each, as with changes), sends each event signed to its endpoint with a
//! timeout, records the attempt and what follows (delivered on a 2xx; else retried
//! with backoff for three days, then failed and kept for a replay), and marks an
//! endpoint failing after [`FAILING_AFTER`] failed attempts in a row (its events
//! are kept and still tried).
//!
//! Delivery is at least once: a crash after the receiver answered and before the
//! attempt was saved sends the event again under the same `webhook-id`.

use super::sign;
use crate::model::{Attempt, Delivery, Endpoint, WebhookEvent, FAILING_AFTER};
use crate::store::{Claim, DeliveryStats, Store, StoreError};
use chrono::Utc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How deliveries are made.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// How long a receiver has to answer.
    pub timeout: Duration,
    /// The first retry delay; later ones are multiples of it
    /// ([`crate::model::retry_delay`]).
    pub first_retry: Duration,
    /// How often due deliveries are looked for when there was nothing to do.
    pub tick: Duration,
    /// How long a claim on a delivery holds (more than `timeout`).
    pub claim_lease: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            timeout: Duration::from_secs(10),
            first_retry: Duration::from_secs(5),
            tick: Duration::from_secs(1),
            claim_lease: Duration::from_secs(60),
        }
    }
}

/// Deliveries claimed per round.
const BATCH: usize = 16;

/// What this instance's deliverer did since it started (the metrics).
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub gave_up: AtomicU64,
}

impl DeliveryCounters {
    /// Prometheus text: these counters and the outbox figures `stats` (read from the
    /// store by the caller) at `now`.
    pub fn render(&self, stats: &DeliveryStats, now: chrono::DateTime<Utc>) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let oldest = stats
            .oldest_pending
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        format!(
            "# HELP platen_cloud_webhook_attempts_total Webhook delivery attempts by this instance, by outcome.\n\
             # TYPE platen_cloud_webhook_attempts_total counter\n\
             platen_cloud_webhook_attempts_total{{outcome=\"delivered\"}} {}\n\
             platen_cloud_webhook_attempts_total{{outcome=\"failed\"}} {}\n\
             # HELP platen_cloud_webhook_gave_up_total Deliveries this instance marked failed after three days of retries.\n\
             # TYPE platen_cloud_webhook_gave_up_total counter\n\
             platen_cloud_webhook_gave_up_total {}\n\
             # HELP platen_cloud_webhook_deliveries Deliveries in the outbox by state (all instances).\n\
             # TYPE platen_cloud_webhook_deliveries gauge\n\
             platen_cloud_webhook_deliveries{{state=\"pending\"}} {}\n\
             platen_cloud_webhook_deliveries{{state=\"failed\"}} {}\n\
             # HELP platen_cloud_webhook_oldest_pending_seconds Age of the oldest undelivered delivery (0: none).\n\
             # TYPE platen_cloud_webhook_oldest_pending_seconds gauge\n\
             platen_cloud_webhook_oldest_pending_seconds {oldest:.3}\n",
            get(&self.delivered),
            get(&self.failed_attempts),
            get(&self.gave_up),
            stats.pending,
            stats.failed,
        )
    }
}

pub struct Deliverer {
    store: Store,
    client: reqwest::Client,
    cfg: WebhookConfig,
    claim: Claim,
    counters: Arc<DeliveryCounters>,
}

/// What one attempt found.
fn attempt_of(r: Result<u16, reqwest::Error>, started: Instant) -> Attempt {
    let millis = started.elapsed().as_millis() as u64;
    let at = Utc::now();
    match r {
        Ok(s) if (200..300).contains(&s) => Attempt {
            at,
            status: Some(s),
            error: None,
            millis,
        },
        Ok(s) => Attempt {
            at,
            status: Some(s),
            error: Some(format!("HTTP {s}")),
            millis,
        },
        Err(e) => Attempt {
            at,
            status: None,
            // Without the URL: it may carry credentials.
            error: Some(if e.is_timeout() {
                "no answer within the timeout".into()
            } else if e.is_connect() {
                "connection refused or unreachable".into()
            } else {
                "the request failed".into()
            }),
            millis,
        },
    }
}

impl Deliverer {
    pub fn new(store: Store, cfg: WebhookConfig, owner: &str) -> Result<Deliverer, String> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("platen-cloud/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook HTTP client: {e}"))?;
        let claim = Claim {
            owner: owner.to_string(),
            lease: chrono::Duration::from_std(cfg.claim_lease.max(cfg.timeout * 2))
                .unwrap_or_else(|_| chrono::Duration::seconds(60)),
        };
        Ok(Deliverer {
            store,
            client,
            cfg,
            claim,
            counters: Arc::default(),
        })
    }

    /// Its counters, for the metrics endpoint.
    pub fn counters(&self) -> Arc<DeliveryCounters> {
        self.counters.clone()
    }

    pub fn spawn(self, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let worked = match self.round().await {
                    Ok(n) => n > 0,
                    Err(e) => {
                        warn!(error = %e, "webhook deliveries: will retry");
                        false
                    }
                };
                if *stop.borrow() {
                    return;
                }
                if !worked {
                    tokio::select! {
                        _ = tokio::time::sleep(self.cfg.tick) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        })
    }

    /// Claim what is due and send it. Returns how many deliveries were tried.
    pub async fn round(&self) -> Result<usize, StoreError> {
        let (store, claim) = (self.store.clone(), self.claim.clone());
        let due = blocking(move || store.claim_deliveries(&claim, Utc::now(), BATCH)).await?;
        let n = due.len();
        for d in due {
            self.deliver(d).await?;
        }
        Ok(n)
    }

    async fn deliver(&self, mut d: Delivery) -> Result<(), StoreError> {
        let (store, eid, epid) = (
            self.store.clone(),
            d.event_id.clone(),
            d.endpoint.to_string(),
        );
        let (event, endpoint): (Option<WebhookEvent>, Option<Endpoint>) =
            blocking(move || Ok((store.webhook_event(&eid)?, store.endpoint(&epid)?))).await?;
        let first = chrono::Duration::from_std(self.cfg.first_retry)
            .unwrap_or_else(|_| crate::model::first_retry());
        let (Some(event), Some(endpoint)) = (event, endpoint) else {
            // Nothing to send it with: leave it for a replay, an hour from now.
            d.next_at = Some(Utc::now() + chrono::Duration::hours(1));
            return self.save(d).await;
        };
        if endpoint.disabled {
            d.next_at = Some(Utc::now() + chrono::Duration::hours(1));
            return self.save(d).await;
        }
        let now = Utc::now();
        let body = event.body();
        let ts = now.timestamp();
        let attempt = match sign::signature(&endpoint.signing_secrets(now), &event.id, ts, &body) {
            Ok(sig) => {
                let started = Instant::now();
                let r = self
                    .client
                    .post(&endpoint.url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &event.id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                attempt_of(r, started)
            }
            Err(e) => Attempt {
                at: now,
                status: None,
                error: Some(e.to_string()),
                millis: 0,
            },
        };
        let ok = attempt.error.is_none();
        let counter = if ok {
            &self.counters.delivered
        } else {
            &self.counters.failed_attempts
        };
        counter.fetch_add(1, Ordering::Relaxed);
        debug!(event = %event.id, endpoint = %endpoint.id, ok, status = ?attempt.status, "webhook attempt");
        d.record(attempt, first);
        if d.state == crate::model::DeliveryState::Failed {
            self.counters.gave_up.fetch_add(1, Ordering::Relaxed);
            warn!(event = %event.id, endpoint = %endpoint.id, tries = d.tries, "webhook delivery failed for good; replay it once the endpoint works");
        }
        self.save(d).await?;
        self.note_endpoint(&endpoint.id, ok).await
    }

    async fn save(&self, d: Delivery) -> Result<(), StoreError> {
        let (store, claim) = (self.store.clone(), self.claim.clone());
        let saved = blocking(move || store.save_delivery(&claim, &d)).await?;
        if !saved {
            info!("a webhook delivery's claim ran out before its attempt was saved; another instance has it");
        }
        Ok(())
    }

    /// Count failures in a row; mark the endpoint failing after [`FAILING_AFTER`],
    /// and clear the mark on the next success.
    async fn note_endpoint(&self, id: &platen_protocol::Id, ok: bool) -> Result<(), StoreError> {
        let (store, id) = (self.store.clone(), id.to_string());
        blocking(move || {
            let Some(mut e) = store.endpoint(&id)? else {
                return Ok(());
            };
            let before = (e.failures_in_a_row, e.failing_since);
            if ok {
                e.failures_in_a_row = 0;
                e.failing_since = None;
            } else {
                e.failures_in_a_row = e.failures_in_a_row.saturating_add(1);
                if e.failures_in_a_row >= FAILING_AFTER && e.failing_since.is_none() {
                    e.failing_since = Some(Utc::now());
                    warn!(endpoint = %e.id, "webhook endpoint failing: {FAILING_AFTER} attempts in a row failed; its events are kept and retried");
                }
            }
            if (e.failures_in_a_row, e.failing_since) != before {
                store.put_endpoint(&e)?;
            }
            Ok(())
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend {
            backend: "task",
            message: e.to_string(),
        })?
}
