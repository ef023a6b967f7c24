//! Moving an install between backends: every record of a store as a [`Record`], in
//! an order the target can take (parents before children), and `store copy`, which
//! streams them into an empty target and then checks it: the number of records of
//! each kind and the ledger total per currency must be the same on both sides.

use super::{Result, Store, StoreError};
use crate::model::Migration;
use crate::model::ReceivedReport;
use crate::model::Sample;
use crate::model::{AgentSeen, PrinterSeen};
use crate::model::{ChangeRecord, LedgerEntry, TimelineEntry};
use crate::model::{Contract, Plan, Reseller, Tenant};
use crate::model::{Delivery, Endpoint, WebhookEvent};
use chrono::{DateTime, Utc};
use platen_protocol::Id;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One record of a store, whatever the backend. Exported in this order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Reseller(Reseller),
    Plan(Plan),
    Tenant(Tenant),
    Contract(Contract),
    /// A printer claimed by a contract.
    Claim {
        tenant: Id,
        printer: Id,
        contract: Id,
    },
    /// A change with when the engine next looks at it.
    Change {
        record: ChangeRecord,
        due_at: Option<DateTime<Utc>>,
    },
    Timeline(TimelineEntry),
    /// Reversals after the entries they reverse.
    Ledger(LedgerEntry),
    Shipment {
        key: String,
        at: DateTime<Utc>,
    },
    Migration(Migration),
    /// The last config version published for a printer.
    Version {
        tenant: Id,
        printer: Id,
        last: u64,
    },
    Published {
        tenant: Id,
        printer: Id,
        version: u64,
        at: DateTime<Utc>,
        change: Option<String>,
    },
    Report {
        tenant: Id,
        report: ReceivedReport,
    },
    AgentSeen {
        agent: Id,
        seen: AgentSeen,
    },
    PrinterSeen {
        tenant: Id,
        printer: Id,
        seen: PrinterSeen,
    },
    Sample {
        tenant: Id,
        printer: Id,
        sample: Sample,
    },
    WebhookEndpoint(Endpoint),
    /// An outbox event with its place in the write order.
    WebhookEvent {
        n: u64,
        event: WebhookEvent,
    },
    /// After the events it delivers.
    WebhookDelivery(Delivery),
}

impl Record {
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Reseller(_) => "resellers",
            Record::Plan(_) => "plans",
            Record::Tenant(_) => "tenants",
            Record::Contract(_) => "contracts",
            Record::Claim { .. } => "printer claims",
            Record::Change { .. } => "changes",
            Record::Timeline(_) => "timeline entries",
            Record::Ledger(_) => "ledger entries",
            Record::Shipment { .. } => "shipments",
            Record::Migration(_) => "migrations",
            Record::Version { .. } => "printer versions",
            Record::Published { .. } => "published versions",
            Record::Report { .. } => "reports",
            Record::AgentSeen { .. } => "agents seen",
            Record::PrinterSeen { .. } => "printers seen",
            Record::Sample { .. } => "telemetry samples",
            Record::WebhookEndpoint(_) => "webhook endpoints",
            Record::WebhookEvent { .. } => "webhook events",
            Record::WebhookDelivery(_) => "webhook deliveries",
        }
    }
}

/// Moving records in and out of a backend.
pub trait Portable {
    /// Every record, in [`Record`]'s order, to `out`.
    fn export(&self, out: &mut dyn FnMut(Record) -> Result<()>) -> Result<()>;
    /// Write records exported from another store (in export order) into this one.
    fn import(&self, records: Vec<Record>) -> Result<()>;
    /// Whether the store holds nothing yet.
    fn is_empty(&self) -> Result<bool>;
}

/// What a store holds: records per kind and the ledger total per currency.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub counts: BTreeMap<&'static str, u64>,
    pub ledger_totals: BTreeMap<String, i128>,
}

impl Tally {
    fn add(&mut self, r: &Record) {
        *self.counts.entry(r.kind()).or_default() += 1;
        if let Record::Ledger(e) = r {
            *self.ledger_totals.entry(e.currency.clone()).or_default() += e.signed_credit();
        }
    }
}

/// Count what `store` holds.
pub fn tally(store: &Store) -> Result<Tally> {
    let mut t = Tally::default();
    store.export(&mut |r| {
        t.add(&r);
        Ok(())
    })?;
    Ok(t)
}

/// Records imported per call.
const BATCH: usize = 1000;

/// Copy everything from `from` into the empty `to`, then check that both hold the
/// same: returns what was copied.
pub fn copy(from: &Store, to: &Store) -> Result<Tally> {
    if !to.is_empty()? {
        return Err(StoreError::Invalid {
            key: to.describe(),
            message: "the target already holds data; store copy only fills an empty store".into(),
        });
    }
    let mut copied = Tally::default();
    let mut batch = Vec::with_capacity(BATCH);
    from.export(&mut |r| {
        copied.add(&r);
        batch.push(r);
        if batch.len() == BATCH {
            to.import(std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    to.import(batch)?;
    to.sync()?;
    let there = tally(to)?;
    if there != copied {
        return Err(StoreError::Invalid {
            key: to.describe(),
            message: format!(
                "the copy differs from its source: copied {copied:?}, found {there:?}"
            ),
        });
    }
    Ok(copied)
}
