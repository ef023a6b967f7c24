//! The storage port: everything the cloud keeps, behind traits that name neither sled
//! nor SQL, and the two backends that implement them.
//!
//! * [`Contracts`]: tenants, plans, resellers, contracts, changes with their setup
//!   state and due time, the evidence timeline, the ledger, shipments, migrations;
//! * [`Reports`]: published versions, apply reports and their index, what the cloud
//!   last heard of agents and printers;
//! * [`Readings`]: the telemetry samples usage is computed from;
//! * [`Webhooks`]: endpoints, the event outbox (written with the ledger) and
//!   deliveries;
//! * [`copy::Portable`]: every record out, records in (`store copy`);
//! * [`Backend`]: all of them, plus [`Backend::sync`] (the durability barrier).
//!
//! Writes that must be atomic are one call (a contract with its start change and
//! printer claims; a ledger entry with its indexes; a migration with its change), so
//! each backend makes them atomic its own way. Contract-side writes are durable when
//! the call returns. Report, reading and seen-state writes are durable after the next
//! [`Backend::sync`] at the latest: the broker link acknowledges a batch of messages
//! only after it (sled flushes once per batch; PostgreSQL commits every statement).
//!
//! Backends: [`sled`] (the embedded default, a state directory) and [`postgres`]
//! (production: `store.url = "postgres://…"`). [`Store`] is the handle the rest of
//! the cloud holds.

pub mod copy;
pub mod postgres;
pub mod sled;
pub mod thinning;

use crate::model::Period;
use crate::model::ReceivedReport;
use crate::model::Sample;
use crate::model::{AgentSeen, PrinterSeen};
use crate::model::{ChangeRecord, Event, LedgerEntry, TimelineEntry};
use crate::model::{Contract, ContractChange, Plan, Reseller, Tenant};
use crate::model::{Delivery, DeliveryState, Endpoint, WebhookEvent};
use crate::model::{Migration, MigrationState};
use chrono::{DateTime, Utc};
use platen_protocol::Id;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;
use std::sync::Arc;

/// A storage failure, whatever the backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, a lost connection, a refused statement).
    #[error("state store ({backend}): {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    #[error("stored record {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// The store was written by a newer Platen.
    #[error("{what} has schema version {found}; this platen-cloud knows up to {known}: upgrade platen-cloud")]
    TooNew {
        what: String,
        found: u32,
        known: u32,
    },
    /// A value cannot be stored as it is (e.g. an amount beyond the column's range).
    #[error("cannot store {key}: {message}")]
    Invalid { key: String, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Result of an insert-if-absent.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    New,
    Exists,
}

/// Who steps claimed changes, and how long a claim holds. Every cloud instance that
/// shares a store has its own owner name (its MQTT client id); a claim whose lease
/// has run out may be taken by another instance, and the first owner's save of that
/// change is then refused ([`Contracts::save_claimed`] returns `false`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub owner: String,
    pub lease: chrono::Duration,
}

/// Result of [`Contracts::create_contract`].
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    New,
    Exists,
    /// The printer is already covered by another contract (and sharing is not allowed).
    PrinterTaken {
        printer: Id,
        contract: String,
    },
}

/// A report to store ([`Reports::store_reports`]): its tenant, the report, its JSON.
pub struct NewReport<'a> {
    pub tenant: &'a Id,
    pub report: &'a ReceivedReport,
    pub json: &'a [u8],
}

/// Result of [`Reports::store_report`].
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    New,
    /// The report id was stored before: the first delivery wins.
    Duplicate,
    /// The version already has `max_per_version` other reports.
    Full,
    /// The version was never published for the printer.
    Unpublished,
}

/// One page of a list in key order: the items and, when there may be more, the key to
/// continue after (a cursor that stays valid when items are inserted).
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Most items a page may hold, and how many it holds by default.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 100;

/// The lists [`Store::page`] reads.
#[derive(Clone, Copy, Debug)]
pub enum List {
    Tenants,
    Plans,
    Resellers,
    Contracts,
    Ledger,
    Migrations,
}

/// The per-owner lists [`Store::page_of`] reads.
#[derive(Clone, Copy, Debug)]
pub enum OwnerIndex {
    ContractsOfTenant,
    LedgerOfTenant,
    LedgerOfContract,
    MigrationsOfTenant,
    MigrationsOfContract,
}

/// Whose ledger or migrations to read.
#[derive(Clone, Copy, Debug)]
pub enum LedgerOwner<'a> {
    Contract(&'a Id),
    Tenant(&'a Id),
}

/// A scheduled migration: what the scheduler reads on every tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due {
    pub id: String,
    pub contract: Id,
    pub effective_at: Option<DateTime<Utc>>,
}

impl Due {
    pub fn of(m: &Migration) -> Due {
        Due {
            id: m.id.clone(),
            contract: m.decision.contract.clone(),
            effective_at: m.decision.effective_at,
        }
    }
}

/// A bounded retention pass: (removed, where the next batch starts; `None` at the end).
/// The cursor is opaque and belongs to the backend that returned it.
pub type Batch = (usize, Option<Vec<u8>>);

/// Contract state.
pub trait Contracts {
    fn add_tenant(&self, t: &Tenant) -> Result<Inserted>;
    fn tenant(&self, id: &str) -> Result<Option<Tenant>>;
    fn tenants(&self) -> Result<Vec<Tenant>>;
    fn add_plan(&self, p: &Plan) -> Result<Inserted>;
    /// Write a plan from the catalog file (the catalog is authoritative).
    fn put_plan(&self, p: &Plan) -> Result<()>;
    fn plan(&self, id: &str) -> Result<Option<Plan>>;
    fn plans(&self) -> Result<Vec<Plan>>;
    fn add_reseller(&self, r: &Reseller) -> Result<Inserted>;
    fn reseller(&self, id: &str) -> Result<Option<Reseller>>;
    fn resellers(&self) -> Result<Vec<Reseller>>;
    /// A number never handed out before by this store.
    fn next_id(&self) -> Result<u64>;

    /// Store a new migration (a scheduled one is also in [`Contracts::scheduled`]).
    fn add_migration(&self, m: &Migration) -> Result<Inserted>;
    fn migration(&self, id: &str) -> Result<Option<Migration>>;
    fn migrations(&self) -> Result<Vec<Migration>>;
    /// A tenant's or a contract's migrations, read by key.
    fn migrations_of(&self, owner: LedgerOwner<'_>) -> Result<Vec<Migration>>;
    /// The scheduled migrations only.
    fn scheduled(&self) -> Result<Vec<Due>>;
    /// Move a migration from scheduled to `state`, if it is still scheduled.
    fn finish_migration(&self, id: &str, state: MigrationState) -> Result<bool>;
    /// Execute a scheduled migration: its change is added, the migration marked
    /// executed and no longer scheduled, atomically. `false`: it was no longer
    /// scheduled, or the change id was taken (the caller computes another).
    fn execute_migration(&self, migration_id: &str, change: &ContractChange) -> Result<bool>;
    /// Remove refused migrations decided before `before`, at most `max_keys` looked at.
    fn prune_refused_migrations(
        &self,
        before: DateTime<Utc>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<Batch>;

    fn contract(&self, id: &str) -> Result<Option<Contract>>;
    fn contracts(&self) -> Result<Vec<Contract>>;
    fn contracts_of_tenant(&self, tenant: &Id) -> Result<Vec<Contract>>;
    /// Create a contract and its start change atomically, claiming its printers
    /// unless `allow_shared`.
    fn create_contract(
        &self,
        c: &Contract,
        start: &ContractChange,
        allow_shared: bool,
    ) -> Result<Created>;
    /// Add a change (its id must be new), due now.
    fn add_change(&self, change: &ContractChange) -> Result<Inserted>;
    /// Save a change's state and when the engine next needs it (`None`, or settled:
    /// not due at all), atomically.
    fn save_change(&self, rec: &ChangeRecord, due_at: Option<DateTime<Utc>>) -> Result<()>;
    /// Open changes due at or before `now`, soonest first, at most `limit`.
    fn due_changes(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<ChangeRecord>>;
    /// Claim up to `limit` changes due at or before `now` for `claim.owner` until
    /// `now + claim.lease`, soonest first: those nobody holds, those whose lease ran
    /// out, and the owner's own (an instance restarted under the same name takes its
    /// work back at once). Claims of other owners are skipped, not waited for.
    fn claim_due(
        &self,
        claim: &Claim,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>>;
    /// [`Contracts::save_change`] for a change claimed by `claim.owner`, releasing the
    /// claim; `false` (nothing written) if the claim is no longer the owner's. A wake
    /// ([`Contracts::wake_change`]) that came while the change was claimed leaves it
    /// due now.
    fn save_claimed(
        &self,
        claim: &Claim,
        rec: &ChangeRecord,
        due_at: Option<DateTime<Utc>>,
    ) -> Result<bool>;
    /// Make a change that has a due time due now.
    fn wake_change(&self, change_id: &str) -> Result<()>;
    fn change(&self, id: &str) -> Result<Option<ChangeRecord>>;
    /// Changes of one contract, in order.
    fn changes_of(&self, contract: &Id) -> Result<Vec<ChangeRecord>>;
    /// The contract that covers `printer` of `tenant`, if any.
    fn contract_of_printer(&self, tenant: &Id, printer: &Id) -> Result<Option<String>>;
    /// Every change with a due time.
    fn open_changes(&self) -> Result<Vec<ChangeRecord>>;
    /// Next config version for a printer: max(last + 1, now in Unix milliseconds).
    fn next_version(&self, tenant: &Id, printer: &Id) -> Result<u64>;

    /// Append to a change's timeline. An event with an [`Event::once_key`] the
    /// timeline already holds is not appended (`None`); a recurring event equal to
    /// the last entry is counted on it (`None`).
    fn append(&self, change_id: &str, event: Event) -> Result<Option<TimelineEntry>>;
    fn timeline(&self, change_id: &str) -> Result<Vec<TimelineEntry>>;

    /// Insert a ledger entry if its key is new.
    fn add_ledger(&self, e: &LedgerEntry) -> Result<Inserted>;
    fn ledger_of(&self, owner: LedgerOwner<'_>) -> Result<Vec<LedgerEntry>>;
    fn ledger_entry(&self, key: &str) -> Result<Option<LedgerEntry>>;
    fn ledger(&self) -> Result<Vec<LedgerEntry>>;
    fn shipment_sent(&self, key: &str) -> Result<bool>;
    fn mark_shipment_sent(&self, key: &str, at: DateTime<Utc>) -> Result<()>;

    /// A page of a list, as JSON records ([`Store::page`] decodes them).
    fn page_json(&self, list: List, after: Option<&str>, limit: usize) -> Result<Page<Vec<u8>>>;
    /// A page of an owner's items, as JSON records.
    fn page_of_json(
        &self,
        index: OwnerIndex,
        owner: &Id,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Vec<u8>>>;
}

/// Apply reports and what the cloud heard of agents and printers.
pub trait Reports {
    /// Note versions of a printer as published (for `change`, if any), before they are.
    fn record_published(
        &self,
        tenant: &Id,
        printer: &Id,
        versions: &[u64],
        change: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<()>;
    fn was_published(&self, tenant: &Id, printer: &Id, version: u64) -> Result<bool>;
    /// Store a report under its id if its version was published for its printer, the
    /// id is new and the version has fewer than `max_per_version` other reports.
    /// `json` is its stored form.
    fn store_report(
        &self,
        tenant: &Id,
        rec: &ReceivedReport,
        json: &[u8],
        max_per_version: usize,
    ) -> Result<Stored>;
    /// [`Reports::store_report`] for each of `reports` in order (a batch: a backend
    /// may do it in a few statements), with the same outcomes.
    fn store_reports(
        &self,
        reports: &[NewReport<'_>],
        max_per_version: usize,
    ) -> Result<Vec<Stored>> {
        reports
            .iter()
            .map(|r| self.store_report(r.tenant, r.report, r.json, max_per_version))
            .collect()
    }
    fn report(&self, report_id: &str) -> Result<Option<ReceivedReport>>;
    /// Every stored report, ordered by report id.
    fn reports(&self) -> Result<Vec<ReceivedReport>>;
    /// Reports of a printer with a version in `versions`, oldest version first.
    fn reports_for(
        &self,
        tenant: &Id,
        printer: &Id,
        versions: RangeInclusive<u64>,
    ) -> Result<Vec<ReceivedReport>>;
    /// Remove reports whose version was published for a change that `may_go`
    /// (reports of versions published by hand stay), at most `max_keys` looked at.
    fn prune_reports(
        &self,
        may_go: &mut dyn FnMut(&str) -> Result<bool>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<Batch>;
    fn agent_seen(&self, agent: &Id) -> Result<Option<AgentSeen>>;
    fn set_agent_seen(&self, agent: &Id, seen: &AgentSeen) -> Result<()>;
    fn printer_seen(&self, tenant: &Id, printer: &Id) -> Result<Option<PrinterSeen>>;
    fn set_printer_seen(&self, tenant: &Id, printer: &Id, seen: &PrinterSeen) -> Result<()>;
}

/// Telemetry samples.
pub trait Readings {
    /// Keep a sample if none is stored for its reading time. Returns whether it was new.
    fn record_sample(&self, tenant: &Id, printer: &Id, s: &Sample) -> Result<bool>;
    /// The last sample before `period.start` and every one inside it, oldest first.
    fn samples(&self, tenant: &Id, printer: &Id, period: &Period) -> Result<Vec<Sample>>;
    /// When the printer's newest sample was read.
    fn latest_sample(&self, tenant: &Id, printer: &Id) -> Result<Option<DateTime<Utc>>>;
    /// Thin and prune old samples ([`thinning`]), at most `max_keys` looked at.
    fn prune_samples(
        &self,
        delete_before: DateTime<Utc>,
        thin_before: DateTime<Utc>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<Batch>;
}

/// Outbound webhooks: endpoints, the event outbox and deliveries. Events are written
/// by [`Contracts::add_ledger`] in the same atomic call as their ledger entry
/// ([`crate::model::ledger_events`]), each with the contract's next sequence number
/// and a pending delivery to every endpoint that wants it.
pub trait Webhooks {
    fn add_endpoint(&self, e: &Endpoint) -> Result<Inserted>;
    /// Replace an endpoint (rotation, disabling, failure marks).
    fn put_endpoint(&self, e: &Endpoint) -> Result<()>;
    fn endpoint(&self, id: &str) -> Result<Option<Endpoint>>;
    fn endpoints(&self) -> Result<Vec<Endpoint>>;
    /// Write events whose fact is stored already — a printer gone quiet: the time of
    /// its newest reading — each with its sequence number and deliveries; an event
    /// stored already is not written again. Returns how many were new.
    fn add_events(&self, events: &[WebhookEvent], now: DateTime<Utc>) -> Result<usize>;
    fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>>;
    /// Events in the order they were written, after the `after`-th, at most `limit`.
    fn webhook_events(&self, after: u64, limit: usize) -> Result<Vec<(u64, WebhookEvent)>>;
    fn deliveries_of(&self, event_id: &str) -> Result<Vec<Delivery>>;
    /// Deliveries in a state, at most `limit`.
    fn deliveries(&self, state: DeliveryState, limit: usize) -> Result<Vec<Delivery>>;
    /// Claim up to `limit` pending deliveries due at or before `now` for
    /// `claim.owner` until `now + claim.lease` (as [`Contracts::claim_due`]).
    fn claim_deliveries(
        &self,
        claim: &Claim,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Delivery>>;
    /// Save a claimed delivery and release it; `false` (nothing written) when the
    /// claim is no longer the owner's.
    fn save_delivery(&self, claim: &Claim, d: &Delivery) -> Result<bool>;
    /// How many deliveries are pending and failed, and when the oldest pending one was
    /// made (the metrics).
    fn delivery_stats(&self) -> Result<DeliveryStats>;
    /// Deliver an event again to every endpoint that wants it now: existing
    /// deliveries become pending and due now (released from any claim, so an attempt
    /// in flight cannot push them back), missing ones are added. Returns how many.
    fn replay_event(&self, event_id: &str, now: DateTime<Utc>) -> Result<usize>;
}

/// Deliveries by state, for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    pub pending: u64,
    pub failed: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// A whole backend.
pub trait Backend:
    Contracts + Reports + Readings + Webhooks + copy::Portable + Send + Sync
{
    /// Make every write so far durable (and end the batch [`Backend::begin_batch`]
    /// began on this thread).
    fn sync(&self) -> Result<()>;
    /// Writes from this thread until its next [`Backend::sync`] may form one
    /// transaction (PostgreSQL: one commit for a batch of messages, and none of them
    /// if any failed). Sled: nothing to do (it syncs once per batch anyway).
    fn begin_batch(&self) -> Result<()> {
        Ok(())
    }
    /// Whether the store answers now (`/healthz`).
    fn check(&self) -> Result<()>;
    /// Where the state is, for logs: never a password.
    fn describe(&self) -> String;
    /// `"sled"` or `"postgres"`.
    fn kind(&self) -> &'static str;
}

/// Where the production store is: `store.url` (a secret: it may hold the password)
/// and the TLS client for `sslmode=prefer|require`.
#[derive(Clone, Debug)]
pub struct Database {
    pub url: platen_ops::secret::Secret,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The handle the cloud holds: cheap to clone, shared by the broker link, the engine,
/// the operations and the HTTP API.
#[derive(Clone)]
pub struct Store(Arc<dyn Backend>);

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.0.describe())
    }
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

impl Store {
    pub fn new(backend: impl Backend + 'static) -> Store {
        Store(Arc::new(backend))
    }

    /// The embedded default: a sled database under `state_dir`.
    pub fn open_sled(state_dir: &std::path::Path) -> Result<Store> {
        Ok(Store::new(sled::SledStore::open(state_dir)?))
    }

    /// PostgreSQL when `database` is given, else sled in `state_dir`.
    pub fn open(state_dir: &std::path::Path, database: Option<&Database>) -> Result<Store> {
        match database {
            Some(db) => Self::open_postgres(db.url.expose(), db.tls.clone()),
            None => Self::open_sled(state_dir),
        }
    }

    /// The production store: PostgreSQL at `url`, its schema migrated to this binary's.
    /// `tls`: the TLS client for `sslmode=prefer|require` (none: plain connections).
    pub fn open_postgres(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Store> {
        Ok(Store::new(postgres::PgStore::open(url, tls)?))
    }

    /// A page of one of the lists, decoded.
    pub fn page<T: DeserializeOwned>(
        &self,
        list: List,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>> {
        let p = self.page_json(list, after, limit)?;
        Ok(Page {
            items: p
                .items
                .iter()
                .map(|v| decode(&format!("{list:?}"), v))
                .collect::<Result<_>>()?,
            next: p.next,
        })
    }

    /// A page of an owner's items, decoded.
    pub fn page_of<T: DeserializeOwned>(
        &self,
        index: OwnerIndex,
        owner: &Id,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>> {
        let p = self.page_of_json(index, owner, after, limit)?;
        Ok(Page {
            items: p
                .items
                .iter()
                .map(|v| decode(&format!("{index:?}/{owner}"), v))
                .collect::<Result<_>>()?,
            next: p.next,
        })
    }

    /// Whether the reports of change `change_id` may go: it settled before `before`
    /// and no ledger entry refers to it (a paid change keeps its evidence).
    pub fn report_may_go(&self, change_id: &str, before: DateTime<Utc>) -> Result<bool> {
        let Some(rec) = self.change(change_id)? else {
            return Ok(false);
        };
        if !rec.setup.settled || rec.setup.settled_at.is_none_or(|t| t >= before) {
            return Ok(false);
        }
        let owner = LedgerOwner::Contract(&rec.change.contract);
        Ok(!self
            .ledger_of(owner)?
            .iter()
            .any(|e| e.change_id == rec.change.id))
    }

    /// Remove the reports of changes that settled before `before` and that no ledger
    /// entry refers to (one decision per change per batch).
    pub fn prune_settled_reports(
        &self,
        before: DateTime<Utc>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<Batch> {
        let mut decided: std::collections::HashMap<String, bool> = Default::default();
        let mut may_go = |change: &str| -> Result<bool> {
            if let Some(g) = decided.get(change) {
                return Ok(*g);
            }
            let g = self.report_may_go(change, before)?;
            decided.insert(change.to_string(), g);
            Ok(g)
        };
        self.0.prune_reports(&mut may_go, from, max_keys)
    }
}
