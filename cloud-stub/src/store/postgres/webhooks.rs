//! [`Webhooks`] on PostgreSQL (schema `0003_webhooks.sql`): endpoints, the event
//! outbox written in the ledger entry's transaction, and deliveries claimed with
//! `FOR UPDATE SKIP LOCKED` like changes.

use super::{decode, json, PgStore};
use crate::model::{Delivery, DeliveryState, Endpoint, WebhookEvent};
use crate::store::{Claim, Inserted, Result, Webhooks};
use chrono::{DateTime, Utc};

type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;

/// Write `events` in `tx`: each numbered in its contract, with a pending delivery to
/// each endpoint that wants it (the endpoints are read in the same transaction). An
/// event whose id is stored already is not written again. An endpoint whose record
/// cannot be read is skipped with a warning: it must not stop the fact being written.
pub(super) async fn write_outbox(
    tx: &tokio_postgres::Transaction<'_>,
    events: &[WebhookEvent],
    now: DateTime<Utc>,
) -> PgResult<usize> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut written = 0;
    let mut endpoints = Vec::new();
    for row in tx
        .query("SELECT id, doc::text FROM webhook_endpoints", &[])
        .await?
    {
        let (id, doc): (String, String) = (row.get(0), row.get(1));
        match serde_json::from_str::<Endpoint>(&doc) {
            Ok(e) => endpoints.push(e),
            Err(e) => {
                tracing::warn!(endpoint = %id, error = %e, "webhook endpoint unreadable: skipped")
            }
        }
    }
    for e in events {
        if tx
            .query_opt("SELECT 1 FROM webhook_events WHERE id = $1", &[&e.id])
            .await?
            .is_some()
        {
            continue;
        }
        let seq: i64 = tx
            .query_one(
                "INSERT INTO webhook_seq (contract, last) VALUES ($1, 1)
                 ON CONFLICT (contract) DO UPDATE SET last = webhook_seq.last + 1
                 RETURNING last",
                &[&e.contract.as_str()],
            )
            .await?
            .get(0);
        let mut e = e.clone();
        e.seq = seq as u64;
        e.reseller = tx
            .query_opt(
                "SELECT reseller FROM tenants WHERE id = $1",
                &[&e.tenant.as_str()],
            )
            .await?
            .and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|r| r.parse().ok());
        tx.execute(
            "INSERT INTO webhook_events (id, contract, seq, doc) VALUES ($1, $2, $3, $4::text::jsonb)",
            &[&e.id, &e.contract.as_str(), &seq, &json(&e)],
        )
        .await?;
        for ep in endpoints.iter().filter(|ep| ep.wants(&e)) {
            let d = Delivery::new(&ep.id, &e.id, now);
            tx.execute(
                "INSERT INTO webhook_deliveries (endpoint, event_id, state, next_at, doc)
                 VALUES ($1, $2, 'pending', $3, $4::text::jsonb)",
                &[&ep.id.as_str(), &e.id, &now, &json(&d)],
            )
            .await?;
        }
        written += 1;
    }
    Ok(written)
}

impl PgStore {
    fn texts(
        &self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<String>> {
        self.pool()
            .with(async |c| super::contracts::texts(c, sql, params).await)
    }

    fn upsert_delivery(&self, d: &Delivery, release: Option<&str>) -> Result<u64> {
        let doc = json(d);
        let state = d.state.name();
        self.pool().with(async |c| match release {
            Some(owner) => {
                c.client
                    .execute(
                        "UPDATE webhook_deliveries
                                SET state = $3, next_at = $4, doc = $5::text::jsonb,
                                    claimed_by = NULL, claim_until = NULL
                              WHERE endpoint = $1 AND event_id = $2 AND claimed_by = $6",
                        &[
                            &d.endpoint.as_str(),
                            &d.event_id,
                            &state,
                            &d.next_at,
                            &doc,
                            &owner,
                        ],
                    )
                    .await
            }
            None => {
                c.client
                    .execute(
                        "INSERT INTO webhook_deliveries (endpoint, event_id, state, next_at, doc)
                             VALUES ($1, $2, $3, $4, $5::text::jsonb)
                             ON CONFLICT (endpoint, event_id) DO UPDATE
                                SET state = $3, next_at = $4, doc = $5::text::jsonb,
                                    claimed_by = NULL, claim_until = NULL",
                        &[&d.endpoint.as_str(), &d.event_id, &state, &d.next_at, &doc],
                    )
                    .await
            }
        })
    }
}

impl Webhooks for PgStore {
    fn add_endpoint(&self, e: &Endpoint) -> Result<Inserted> {
        let doc = json(e);
        let n = self.pool().with(async |c| {
            c.client
                .execute(
                    "INSERT INTO webhook_endpoints (id, doc) VALUES ($1, $2::text::jsonb)
                     ON CONFLICT DO NOTHING",
                    &[&e.id.as_str(), &doc],
                )
                .await
        })?;
        Ok(if n == 1 {
            Inserted::New
        } else {
            Inserted::Exists
        })
    }
    fn put_endpoint(&self, e: &Endpoint) -> Result<()> {
        let doc = json(e);
        self.pool().with(async |c| {
            c.client
                .execute(
                    "INSERT INTO webhook_endpoints (id, doc) VALUES ($1, $2::text::jsonb)
                     ON CONFLICT (id) DO UPDATE SET doc = $2::text::jsonb",
                    &[&e.id.as_str(), &doc],
                )
                .await
        })?;
        Ok(())
    }
    fn endpoint(&self, id: &str) -> Result<Option<Endpoint>> {
        let rows = self.texts(
            "SELECT doc::text FROM webhook_endpoints WHERE id = $1",
            &[&id],
        )?;
        Ok(super::contracts::decode_all(id, rows)?.pop())
    }
    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        super::contracts::decode_all(
            "webhook endpoints",
            self.texts("SELECT doc::text FROM webhook_endpoints ORDER BY id", &[])?,
        )
    }
    fn add_events(&self, events: &[WebhookEvent], now: DateTime<Utc>) -> Result<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        self.pool().with(async |c| {
            let tx = c.client.transaction().await?;
            let n = write_outbox(&tx, events, now).await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>> {
        let rows = self.texts("SELECT doc::text FROM webhook_events WHERE id = $1", &[&id])?;
        Ok(super::contracts::decode_all(id, rows)?.pop())
    }
    fn webhook_events(&self, after: u64, limit: usize) -> Result<Vec<(u64, WebhookEvent)>> {
        let (after, limit) = (after as i64, limit as i64);
        let rows: Vec<(i64, String)> = self.pool().with(async |c| {
            Ok(c.client
                .query(
                    "SELECT n, doc::text FROM webhook_events WHERE n > $1 ORDER BY n LIMIT $2",
                    &[&after, &limit],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })?;
        rows.into_iter()
            .map(|(n, doc)| Ok((n as u64, decode("webhook event", &doc)?)))
            .collect()
    }
    fn deliveries_of(&self, event_id: &str) -> Result<Vec<Delivery>> {
        super::contracts::decode_all(
            event_id,
            self.texts(
                "SELECT doc::text FROM webhook_deliveries WHERE event_id = $1 ORDER BY endpoint",
                &[&event_id],
            )?,
        )
    }
    fn deliveries(&self, state: DeliveryState, limit: usize) -> Result<Vec<Delivery>> {
        let limit = limit as i64;
        super::contracts::decode_all(
            "webhook deliveries",
            self.texts(
                "SELECT doc::text FROM webhook_deliveries WHERE state = $1
                  ORDER BY endpoint, event_id LIMIT $2",
                &[&state.name(), &limit],
            )?,
        )
    }
    fn claim_deliveries(
        &self,
        claim: &Claim,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let n = limit as i64;
        let until = now + claim.lease;
        let rows = self.pool().with(async |c| {
            Ok(c.client
                .query(
                    "WITH free AS (
                       SELECT endpoint, event_id FROM webhook_deliveries
                        WHERE state = 'pending' AND next_at <= $2
                          AND (claimed_by IS NULL OR claimed_by = $1 OR claim_until < $2)
                        ORDER BY next_at LIMIT $4
                          FOR UPDATE SKIP LOCKED)
                     UPDATE webhook_deliveries d SET claimed_by = $1, claim_until = $3
                       FROM free WHERE d.endpoint = free.endpoint AND d.event_id = free.event_id
                     RETURNING d.doc::text",
                    &[&claim.owner, &now, &until, &n],
                )
                .await?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>())
        })?;
        super::contracts::decode_all("claimed deliveries", rows)
    }
    fn save_delivery(&self, claim: &Claim, d: &Delivery) -> Result<bool> {
        Ok(self.upsert_delivery(d, Some(&claim.owner))? == 1)
    }
    fn delivery_stats(&self) -> Result<crate::store::DeliveryStats> {
        let (pending, failed, oldest): (i64, i64, Option<DateTime<Utc>>) =
            self.pool().with(async |c| {
                let r = c
                    .client
                    .query_one(
                        "SELECT count(*) FILTER (WHERE state = 'pending'),
                            count(*) FILTER (WHERE state = 'failed'),
                            min((doc->>'created_at')::timestamptz) FILTER (WHERE state = 'pending')
                       FROM webhook_deliveries",
                        &[],
                    )
                    .await?;
                Ok((r.get(0), r.get(1), r.get(2)))
            })?;
        Ok(crate::store::DeliveryStats {
            pending: pending.max(0) as u64,
            failed: failed.max(0) as u64,
            oldest_pending: oldest,
        })
    }
    fn replay_event(&self, event_id: &str, now: DateTime<Utc>) -> Result<usize> {
        let Some(e) = self.webhook_event(event_id)? else {
            return Ok(0);
        };
        let mut n = 0;
        for ep in self.endpoints()?.iter().filter(|ep| ep.wants(&e)) {
            let existing = self.texts(
                "SELECT doc::text FROM webhook_deliveries WHERE endpoint = $1 AND event_id = $2",
                &[&ep.id.as_str(), &event_id],
            )?;
            let mut d = super::contracts::decode_all::<Delivery>(event_id, existing)?
                .pop()
                .unwrap_or_else(|| Delivery::new(&ep.id, event_id, now));
            d.state = DeliveryState::Pending;
            d.next_at = Some(now);
            d.created_at = now;
            self.upsert_delivery(&d, None)?;
            n += 1;
        }
        Ok(n)
    }
}
