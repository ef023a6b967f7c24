//! [`Webhooks`] on sled: endpoints, the event outbox and deliveries.
//!
//! Trees: `wh_endpoints`: endpoint id → JSON; `wh_events`: event id → JSON;
//! `wh_order`: write order (u64 BE) → event id; `wh_seq`: contract → its last event
//! sequence number, and `""` → the last write order (u64 BE); `wh_deliveries`:
//! `{endpoint} {event id}` → JSON; `wh_due`: `{next ms:020} {delivery key}` → nothing,
//! for pending deliveries. Claims on deliveries share the in-memory claims table
//! with changes (delivery keys hold a space, change ids cannot).

use super::contracts::{due_key, encode, tx_error};
use super::{Held, SledStore};
use crate::model::{Delivery, DeliveryState, Endpoint, WebhookEvent};
use crate::store::{decode, Claim, Contracts, Inserted, Result, Webhooks};
use chrono::{DateTime, Utc};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<()>>;

/// The outbox trees of a caller's transaction: events, write order, sequence
/// numbers, deliveries, the deliveries' due index.
pub(super) type OutboxTrees<'a> = (
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
);

/// What a write needs to report its facts, read before its transaction (a plain
/// read inside a sled transaction waits for that transaction forever): the endpoints
/// that may want the events and the tenant's reseller, stamped on each event.
pub(super) struct Outbox {
    endpoints: Vec<Endpoint>,
    reseller: Option<platen_protocol::Id>,
}

fn next(tree: &TransactionalTree, key: &[u8]) -> TxResult<u64> {
    let last = match tree.get(key)? {
        Some(v) => <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .unwrap_or(0),
        None => 0,
    };
    tree.insert(key, &(last + 1).to_be_bytes())?;
    Ok(last + 1)
}

fn due_index_key(d: &Delivery) -> Option<String> {
    d.next_at.map(|t| due_key(t, &d.key()))
}

impl Outbox {
    /// Write `events` in the caller's transaction (numbered there), each with a
    /// pending delivery to every endpoint that wants it; an event stored already is
    /// not written again. Returns how many were written.
    pub fn write(
        &self,
        (events_t, order_t, seq_t, deliveries_t, due_t): OutboxTrees<'_>,
        events: &[WebhookEvent],
        now: DateTime<Utc>,
    ) -> TxResult<usize> {
        let mut written = 0;
        for e in events {
            if events_t.get(e.id.as_bytes())?.is_some() {
                continue;
            }
            let mut e = e.clone();
            e.reseller = self.reseller.clone();
            e.seq = next(seq_t, e.contract.as_str().as_bytes())?;
            let order = next(seq_t, b"")?;
            events_t.insert(e.id.as_bytes(), encode(&e))?;
            order_t.insert(&order.to_be_bytes(), e.id.as_bytes())?;
            for ep in self.endpoints.iter().filter(|ep| ep.wants(&e)) {
                let d = Delivery::new(&ep.id, &e.id, now);
                if let Some(k) = due_index_key(&d) {
                    due_t.insert(k.as_bytes(), &[] as &[u8])?;
                }
                deliveries_t.insert(d.key().as_bytes(), encode(&d))?;
            }
            written += 1;
        }
        Ok(written)
    }
}

impl SledStore {
    fn get_delivery(&self, key: &str) -> Result<Option<Delivery>> {
        match self.wh_deliveries.get(key.as_bytes())? {
            Some(v) => Ok(Some(decode(key, &v)?)),
            None => Ok(None),
        }
    }

    /// Write a delivery, moving its due index entry.
    fn write_delivery(&self, d: &Delivery) -> Result<()> {
        let key = d.key();
        let old = self.get_delivery(&key)?;
        (&self.wh_deliveries, &self.wh_due)
            .transaction(|(deliveries, due)| {
                if let Some(k) = old.as_ref().and_then(due_index_key) {
                    due.remove(k.as_bytes())?;
                }
                if let Some(k) = due_index_key(d) {
                    due.insert(k.as_bytes(), &[] as &[u8])?;
                }
                deliveries.insert(key.as_bytes(), encode(d))?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| tx_error(e, &key))?;
        self.db.flush()?;
        Ok(())
    }

    /// The tenant of a contract (events carry it).
    pub(super) fn tenant_of(
        &self,
        contract: &platen_protocol::Id,
    ) -> Result<Option<platen_protocol::Id>> {
        Ok(self
            .contract(contract.as_str())?
            .map(|c: crate::model::Contract| c.tenant))
    }

    /// The [`Outbox`] of a write that reports facts of `tenant`; `None`: the write
    /// reports nothing, so nothing is read.
    pub(super) fn outbox(&self, tenant: Option<&platen_protocol::Id>) -> Result<Outbox> {
        let Some(tenant) = tenant else {
            return Ok(Outbox {
                endpoints: Vec::new(),
                reseller: None,
            });
        };
        Ok(Outbox {
            endpoints: self.live_endpoints()?,
            reseller: self.tenant(tenant.as_str())?.and_then(|t| t.reseller),
        })
    }

    /// The tenant and contract of a change whose timeline is appended to, only when
    /// the change exists (timelines of changes not yet stored report nothing).
    pub(super) fn owner_of_change(
        &self,
        change_id: &str,
    ) -> Result<Option<(platen_protocol::Id, platen_protocol::Id)>> {
        let Some(rec) = self.change(change_id)? else {
            return Ok(None);
        };
        Ok(self
            .tenant_of(&rec.change.contract)?
            .map(|t| (t, rec.change.contract)))
    }

    /// The endpoints that can take events now (read before a ledger transaction).
    pub(super) fn live_endpoints(&self) -> Result<Vec<Endpoint>> {
        Ok(self
            .endpoints()?
            .into_iter()
            .filter(|e| !e.disabled)
            .collect())
    }
}

use sled::Transactional;

impl Webhooks for SledStore {
    fn add_endpoint(&self, e: &Endpoint) -> Result<Inserted> {
        let r = self.wh_endpoints.compare_and_swap(
            e.id.as_str().as_bytes(),
            None as Option<&[u8]>,
            Some(encode(e)),
        )?;
        self.db.flush()?;
        Ok(match r {
            Ok(()) => Inserted::New,
            Err(_) => Inserted::Exists,
        })
    }
    fn put_endpoint(&self, e: &Endpoint) -> Result<()> {
        self.wh_endpoints
            .insert(e.id.as_str().as_bytes(), encode(e))?;
        self.db.flush()?;
        Ok(())
    }
    fn endpoint(&self, id: &str) -> Result<Option<Endpoint>> {
        match self.wh_endpoints.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode(id, &v)?)),
            None => Ok(None),
        }
    }
    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        self.wh_endpoints
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }
    fn add_events(&self, events: &[WebhookEvent], now: DateTime<Utc>) -> Result<usize> {
        use sled::Transactional;
        let mut written = 0;
        // One transaction per event: each is stamped with its own tenant's reseller.
        for e in events {
            let outbox = self.outbox(Some(&e.tenant))?;
            written += (
                &self.wh_events,
                &self.wh_order,
                &self.wh_seq,
                &self.wh_deliveries,
                &self.wh_due,
            )
                .transaction(|(a, b, c, d, f)| {
                    outbox.write((a, b, c, d, f), std::slice::from_ref(e), now)
                })
                .map_err(|err| tx_error(err, &e.id))?;
        }
        if written > 0 {
            self.db.flush()?;
        }
        Ok(written)
    }

    fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>> {
        match self.wh_events.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode(id, &v)?)),
            None => Ok(None),
        }
    }
    fn webhook_events(&self, after: u64, limit: usize) -> Result<Vec<(u64, WebhookEvent)>> {
        let mut out = Vec::new();
        for kv in self.wh_order.range((after + 1).to_be_bytes()..) {
            if out.len() >= limit {
                break;
            }
            let (k, id) = kv?;
            let n = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let id = String::from_utf8_lossy(&id).into_owned();
            if let Some(e) = self.webhook_event(&id)? {
                out.push((n, e));
            }
        }
        Ok(out)
    }
    fn deliveries_of(&self, event_id: &str) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for ep in self.endpoints()? {
            if let Some(d) = self.get_delivery(&crate::model::delivery_key(&ep.id, event_id))? {
                out.push(d);
            }
        }
        Ok(out)
    }
    fn deliveries(&self, state: DeliveryState, limit: usize) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for kv in self.wh_deliveries.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let d: Delivery = decode(&String::from_utf8_lossy(&k), &v)?;
            if d.state == state {
                out.push(d);
            }
        }
        Ok(out)
    }
    fn claim_deliveries(
        &self,
        claim: &Claim,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let end = due_key(now, "\u{10FFFF}");
        let mut claims = self.claims();
        let mut out = Vec::new();
        for k in self.wh_due.range(..end.as_bytes()).keys() {
            if out.len() >= limit {
                break;
            }
            let k = k?;
            let k = String::from_utf8_lossy(&k);
            let Some((_, key)) = k.split_once('/') else {
                continue;
            };
            if claims
                .get(key)
                .is_some_and(|h| h.owner != claim.owner && h.until >= now)
            {
                continue;
            }
            if let Some(d) = self.get_delivery(key)? {
                if d.state != DeliveryState::Pending {
                    continue;
                }
                claims.insert(
                    key.to_string(),
                    Held {
                        owner: claim.owner.clone(),
                        until: now + claim.lease,
                        rewake: false,
                    },
                );
                out.push(d);
            }
        }
        Ok(out)
    }
    fn save_delivery(&self, claim: &Claim, d: &Delivery) -> Result<bool> {
        let key = d.key();
        let mut claims = self.claims();
        match claims.get(&key) {
            Some(h) if h.owner == claim.owner => {}
            _ => return Ok(false),
        }
        self.write_delivery(d)?;
        claims.remove(&key);
        Ok(true)
    }
    fn delivery_stats(&self) -> Result<crate::store::DeliveryStats> {
        // A scan: the embedded store serves one small site.
        let mut st = crate::store::DeliveryStats::default();
        for kv in self.wh_deliveries.iter() {
            let (k, v) = kv?;
            let d: Delivery = decode(&String::from_utf8_lossy(&k), &v)?;
            match d.state {
                DeliveryState::Pending => {
                    st.pending += 1;
                    st.oldest_pending = Some(
                        st.oldest_pending
                            .map_or(d.created_at, |o| o.min(d.created_at)),
                    );
                }
                DeliveryState::Failed => st.failed += 1,
                DeliveryState::Delivered => {}
            }
        }
        Ok(st)
    }
    fn replay_event(&self, event_id: &str, now: DateTime<Utc>) -> Result<usize> {
        let Some(e) = self.webhook_event(event_id)? else {
            return Ok(0);
        };
        let mut n = 0;
        for ep in self.live_endpoints()?.iter().filter(|ep| ep.wants(&e)) {
            let key = crate::model::delivery_key(&ep.id, event_id);
            let mut d = self
                .get_delivery(&key)?
                .unwrap_or_else(|| Delivery::new(&ep.id, event_id, now));
            d.state = DeliveryState::Pending;
            d.next_at = Some(now);
            d.created_at = now;
            // An attempt in flight no longer owns it: its save must not push the
            // replay back by its own backoff.
            self.claims().remove(&key);
            self.write_delivery(&d)?;
            n += 1;
        }
        Ok(n)
    }
}
