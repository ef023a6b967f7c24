//! [`Portable`] on sled: every tree out as records, records in with their indexes.

use super::contracts::{contract_change_key, due_key, encode, printer_key};
use super::reports::{index_key, published_key, Published};
use super::SledStore;
use crate::model::{Migration, MigrationState};
use crate::store::copy::{Portable, Record};
use crate::store::{Due, Result, StoreError};
use chrono::{DateTime, Utc};
use platen_protocol::Id;
use serde::de::DeserializeOwned;

fn decode<T: DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        message: e.to_string(),
    })
}

/// The parts of a key joined with `/` (ids cannot contain it), as ids.
fn ids<const N: usize>(k: &[u8]) -> Result<[Id; N]> {
    let text = String::from_utf8_lossy(k);
    let parts: Vec<&str> = text.split('/').collect();
    let bad = || StoreError::Corrupt {
        key: text.to_string(),
        message: format!("expected {N} ids joined with /"),
    };
    if parts.len() != N {
        return Err(bad());
    }
    let v: Vec<Id> = parts
        .iter()
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    v.try_into().map_err(|_| bad())
}

fn ms_time(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

impl Portable for SledStore {
    fn export(&self, out: &mut dyn FnMut(Record) -> Result<()>) -> Result<()> {
        for kv in self.resellers.iter() {
            let (k, v) = kv?;
            out(Record::Reseller(decode(&k, &v)?))?;
        }
        for kv in self.plans.iter() {
            let (k, v) = kv?;
            out(Record::Plan(decode(&k, &v)?))?;
        }
        for kv in self.tenants.iter() {
            let (k, v) = kv?;
            out(Record::Tenant(decode(&k, &v)?))?;
        }
        for kv in self.contracts.iter() {
            let (k, v) = kv?;
            out(Record::Contract(decode(&k, &v)?))?;
        }
        for kv in self.printer_contracts.iter() {
            let (k, v) = kv?;
            let [tenant, printer] = ids::<2>(&k)?;
            let [contract] = ids::<1>(&v)?;
            out(Record::Claim {
                tenant,
                printer,
                contract,
            })?;
        }
        for kv in self.changes.iter() {
            let (k, v) = kv?;
            let due_at = match self.due_of.get(&k)? {
                Some(due) => std::str::from_utf8(&due)
                    .ok()
                    .and_then(|d| d.get(..20))
                    .and_then(|ms| ms.parse().ok())
                    .and_then(ms_time),
                None => None,
            };
            out(Record::Change {
                record: decode(&k, &v)?,
                due_at,
            })?;
        }
        for kv in self.timeline.iter() {
            let (k, v) = kv?;
            out(Record::Timeline(decode(&k, &v)?))?;
        }
        for kv in self.ledger.iter() {
            let (k, v) = kv?;
            out(Record::Ledger(decode(&k, &v)?))?;
        }
        for kv in self.shipments_sent.iter() {
            let (k, v) = kv?;
            out(Record::Shipment {
                key: String::from_utf8_lossy(&k).into_owned(),
                at: decode(&k, &v)?,
            })?;
        }
        for kv in self.migrations.iter() {
            let (k, v) = kv?;
            out(Record::Migration(decode(&k, &v)?))?;
        }
        for kv in self.versions.iter() {
            let (k, v) = kv?;
            let [tenant, printer] = ids::<2>(&k)?;
            let last = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    message: "not a version".into(),
                })?;
            out(Record::Version {
                tenant,
                printer,
                last,
            })?;
        }
        for kv in self.published.iter() {
            let (k, v) = kv?;
            let text = String::from_utf8_lossy(&k).into_owned();
            let (head, version) = text.rsplit_once('/').unwrap_or_default();
            let [tenant, printer] = ids::<2>(head.as_bytes())?;
            let version = version.parse().map_err(|_| StoreError::Corrupt {
                key: text.clone(),
                message: "not a version".into(),
            })?;
            // Entries written before the change was noted hold only the time.
            let p = match serde_json::from_slice::<Published>(&v) {
                Ok(p) => p,
                Err(_) => Published {
                    at: decode(&k, &v)?,
                    change: None,
                },
            };
            out(Record::Published {
                tenant,
                printer,
                version,
                at: p.at,
                change: p.change,
            })?;
        }
        for kv in self.report_index.iter() {
            let (k, id) = kv?;
            let text = String::from_utf8_lossy(&k).into_owned();
            let Some((tenant, _)) = text.split_once('/') else {
                continue;
            };
            let [tenant] = ids::<1>(tenant.as_bytes())?;
            if let Some(v) = self.reports.get(&id)? {
                out(Record::Report {
                    tenant,
                    report: decode(&id, &v)?,
                })?;
            }
        }
        for kv in self.agents_seen.iter() {
            let (k, v) = kv?;
            let [agent] = ids::<1>(&k)?;
            out(Record::AgentSeen {
                agent,
                seen: decode(&k, &v)?,
            })?;
        }
        for kv in self.printers_seen.iter() {
            let (k, v) = kv?;
            let [tenant, printer] = ids::<2>(&k)?;
            out(Record::PrinterSeen {
                tenant,
                printer,
                seen: decode(&k, &v)?,
            })?;
        }
        for kv in self.readings.iter() {
            let (k, v) = kv?;
            let text = String::from_utf8_lossy(&k).into_owned();
            let (head, _) = text.rsplit_once('/').unwrap_or_default();
            let [tenant, printer] = ids::<2>(head.as_bytes())?;
            out(Record::Sample {
                tenant,
                printer,
                sample: decode(&k, &v)?,
            })?;
        }
        for kv in self.wh_endpoints.iter() {
            let (k, v) = kv?;
            out(Record::WebhookEndpoint(decode(&k, &v)?))?;
        }
        for kv in self.wh_order.iter() {
            let (k, id) = kv?;
            let n = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if let Some(v) = self.wh_events.get(&id)? {
                out(Record::WebhookEvent {
                    n,
                    event: decode(&id, &v)?,
                })?;
            }
        }
        for kv in self.wh_deliveries.iter() {
            let (k, v) = kv?;
            out(Record::WebhookDelivery(decode(&k, &v)?))?;
        }
        Ok(())
    }

    fn import(&self, records: Vec<Record>) -> Result<()> {
        let mut max_seq = 0;
        for r in records {
            match r {
                Record::Reseller(x) => {
                    self.resellers.insert(x.id.as_str(), encode(&x))?;
                }
                Record::Plan(x) => {
                    self.plans.insert(x.id.as_str(), encode(&x))?;
                }
                Record::Tenant(x) => {
                    self.tenants.insert(x.id.as_str(), encode(&x))?;
                }
                Record::Contract(c) => {
                    self.contracts.insert(c.id.as_str(), encode(&c))?;
                    self.contracts_by_tenant
                        .insert(format!("{}/{}", c.tenant, c.id), &[] as &[u8])?;
                }
                Record::Claim {
                    tenant,
                    printer,
                    contract,
                } => {
                    self.printer_contracts
                        .insert(printer_key(&tenant, &printer), contract.as_str())?;
                }
                Record::Change { record, due_at } => {
                    let c = &record.change;
                    self.changes.insert(c.id.as_str(), encode(&record))?;
                    self.contract_changes
                        .insert(contract_change_key(&c.contract, c.seq), c.id.as_str())?;
                    if let Some(at) = due_at {
                        let key = due_key(at, &c.id);
                        self.due.insert(key.as_str(), &[] as &[u8])?;
                        self.due_of.insert(c.id.as_str(), key.as_str())?;
                    }
                }
                Record::Timeline(e) => {
                    let key = format!("{}/{:020}", e.change_id, e.seq);
                    if let Some(once) = e.event.once_key() {
                        self.timeline_once
                            .insert(format!("{}/{once}", e.change_id), key.as_str())?;
                    }
                    max_seq = max_seq.max(e.seq);
                    self.timeline.insert(key, encode(&e))?;
                }
                Record::Ledger(e) => {
                    self.ledger.insert(e.key.as_str(), encode(&e))?;
                    self.ledger_by_contract
                        .insert(format!("{}/{}", e.contract, e.key), &[] as &[u8])?;
                    self.ledger_by_tenant
                        .insert(format!("{}/{}", e.tenant, e.key), &[] as &[u8])?;
                }
                Record::Shipment { key, at } => {
                    self.shipments_sent.insert(key, encode(&at))?;
                }
                Record::Migration(m) => self.import_migration(&m)?,
                Record::Version {
                    tenant,
                    printer,
                    last,
                } => {
                    self.versions
                        .insert(printer_key(&tenant, &printer), &last.to_be_bytes())?;
                }
                Record::Published {
                    tenant,
                    printer,
                    version,
                    at,
                    change,
                } => {
                    self.published.insert(
                        published_key(&tenant, &printer, version),
                        encode(&Published { at, change }),
                    )?;
                }
                Record::Report { tenant, report } => {
                    let r = &report.report;
                    self.report_index.insert(
                        index_key(&tenant, &r.printer_id, r.config_version, &r.report_id),
                        r.report_id.as_str(),
                    )?;
                    self.reports.insert(r.report_id.as_str(), encode(&report))?;
                }
                Record::AgentSeen { agent, seen } => {
                    self.agents_seen.insert(agent.as_str(), encode(&seen))?;
                }
                Record::PrinterSeen {
                    tenant,
                    printer,
                    seen,
                } => {
                    self.printers_seen
                        .insert(printer_key(&tenant, &printer), encode(&seen))?;
                }
                Record::Sample {
                    tenant,
                    printer,
                    sample,
                } => {
                    self.readings.insert(
                        super::readings::key(&tenant, &printer, sample.read_at),
                        encode(&sample),
                    )?;
                }
                Record::WebhookEndpoint(e) => {
                    self.wh_endpoints.insert(e.id.as_str(), encode(&e))?;
                }
                Record::WebhookEvent { n, event } => {
                    self.import_webhook_event(n, &event)?;
                }
                Record::WebhookDelivery(d) => {
                    if let Some(at) = d.next_at {
                        self.wh_due
                            .insert(super::contracts::due_key(at, &d.key()), &[] as &[u8])?;
                    }
                    self.wh_deliveries.insert(d.key(), encode(&d))?;
                }
            }
        }
        // New timeline entries must sort after the imported ones.
        while self.db.generate_id()? < max_seq {}
        self.db.flush()?;
        Ok(())
    }

    fn is_empty(&self) -> Result<bool> {
        Ok([
            &self.tenants,
            &self.plans,
            &self.resellers,
            &self.reports,
            &self.readings,
            &self.published,
        ]
        .iter()
        .all(|t| t.is_empty()))
    }
}

impl SledStore {
    /// An event as it was, its sequence numbers carried on (`wh_seq` keeps the
    /// highest of the contract's and of the write order).
    fn import_webhook_event(&self, n: u64, e: &crate::model::WebhookEvent) -> Result<()> {
        let keep_max = |key: &[u8], v: u64| -> Result<()> {
            let old = self
                .wh_seq
                .get(key)?
                .and_then(|o| <[u8; 8]>::try_from(o.as_ref()).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            self.wh_seq.insert(key, &old.max(v).to_be_bytes())?;
            Ok(())
        };
        self.wh_events.insert(e.id.as_str(), encode(e))?;
        self.wh_order.insert(n.to_be_bytes(), e.id.as_str())?;
        keep_max(e.contract.as_str().as_bytes(), e.seq)?;
        keep_max(b"", n)
    }

    fn import_migration(&self, m: &Migration) -> Result<()> {
        self.migrations.insert(m.id.as_str(), encode(m))?;
        self.migrations_by_tenant
            .insert(format!("{}/{}", m.decision.tenant, m.id), &[] as &[u8])?;
        self.migrations_by_contract
            .insert(format!("{}/{}", m.decision.contract, m.id), &[] as &[u8])?;
        if m.state == MigrationState::Scheduled {
            self.scheduled.insert(m.id.as_str(), encode(&Due::of(m)))?;
        }
        Ok(())
    }
}
