//! Durable contract state in sled: tenants, plans, contracts, contract changes with
//! their setup state, the append-only evidence timeline, and the idempotent ledger.
//!
//! Trees (one sled database with the report store):
//! * `tenants`, `plans`, `contracts`: id → JSON;
//! * `changes`: change id → [`ChangeRecord`] JSON (the change and its setup state);
//! * `versions`: `{tenant}/{printer}` → last published config version (u64 BE);
//! * `timeline`: `{change id}/{seq:020}` → [`TimelineEntry`] JSON, never rewritten;
//! * `ledger`: `{change id}/{period}` → [`LedgerEntry`] JSON, inserted only if absent;
//! * `shipments_sent`: ledger key → time the provider accepted the order;
//! * `resellers`: id → JSON; `migrations`: migration id → [`Migration`] JSON;
//! * `scheduled`: migration id → [`Due`], exactly the scheduled migrations;
//! * `readings`: see [`crate::usage::ReadingStore`];
//! * `contract_changes`: `{contract}/{seq:010}` → change id (the changes of one
//!   contract, found by an exact prefix: ids cannot contain `/`);
//! * `printer_contracts`: `{tenant}/{printer}` → the contract that covers the printer;
//! * `due`: `{due ms:020}/{change id}` → nothing: every open change under the time the
//!   engine next needs to look at it (`due_of`: change id → its `due` key). Written in
//!   the same transaction as the change; a settled change leaves it, so the engine's
//!   cost follows the open changes, never the history;
//! * `ledger_by_contract`, `ledger_by_tenant`: `{contract or tenant}/{ledger key}` →
//!   nothing, written with the entry: a contract's or tenant's ledger is read by key.
//!
//! Keys are unambiguous: every key joins ids with `/`, which ids cannot contain, and
//! every prefix scan ends its prefix with that separator (a contract `k` never finds
//! the changes of `k.globex`). Every write is flushed before the call returns.

use crate::attribution::Cause;
use crate::compensation::{NotOwed, Part};
use crate::migration::{Migration, MigrationState};
use crate::model::{ChangeKind, Contract, ContractChange, Plan, Reseller, Tenant};
use crate::usage::ReadingStore;
use chrono::{DateTime, Utc};
use platen_protocol::{Id, ReportStatus};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
}

/// A fault determination, with when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultNote {
    pub at: DateTime<Utc>,
    pub reason: String,
    /// Whose side the fault is on (records written before attribution: provider).
    #[serde(default)]
    pub cause: Cause,
}

/// Device-side setup of one printer for one change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrinterSetup {
    /// The versions published for this change, with their publication times.
    pub published: BTreeMap<u64, DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub confirmed_version: Option<u64>,
    /// Report ids already entered in the timeline.
    pub seen_reports: BTreeSet<String>,
    /// When the latest version was judged failed (a re-publish follows later).
    pub failed_at: Option<DateTime<Utc>>,
    pub deadline_noted: bool,
    /// Publications in a row that got no report by their deadline: each re-publish
    /// waits twice as long, and after [`MAX_UNANSWERED`] the engine waits for a sign
    /// of life from the agent instead.
    #[serde(default)]
    pub unanswered: u32,
    /// Versions published but no longer listed in `published` (it keeps the first
    /// and the last [`KEPT_VERSIONS`]).
    #[serde(default)]
    pub versions_dropped: u32,
}

/// Unanswered publications after which the engine stops re-publishing and waits for
/// the agent's next sign of life (health up, or telemetry of the printer).
pub const MAX_UNANSWERED: u32 = 5;

/// Versions a change keeps listed per printer beyond the first.
pub const KEPT_VERSIONS: usize = 8;

/// Longest wait between two publications of an unanswered change.
pub const MAX_REPUBLISH_WAIT: chrono::Duration = chrono::Duration::hours(1);

impl PrinterSetup {
    /// How long after a failure to publish again: `base` doubled for every unanswered
    /// publication, at most [`MAX_REPUBLISH_WAIT`].
    pub fn republish_wait(&self, base: chrono::Duration) -> chrono::Duration {
        let factor = 1i32 << self.unanswered.saturating_sub(1).min(12);
        (base * factor).min(MAX_REPUBLISH_WAIT.max(base))
    }

    /// Record a publication, keeping the first version and the last [`KEPT_VERSIONS`].
    pub fn add_published(&mut self, version: u64, at: DateTime<Utc>) {
        self.published.insert(version, at);
        while self.published.len() > KEPT_VERSIONS + 1 {
            let second = self.published.keys().nth(1).copied();
            if let Some(v) = second {
                self.published.remove(&v);
                self.versions_dropped = self.versions_dropped.saturating_add(1);
            }
        }
    }

    pub fn latest(&self) -> Option<(u64, DateTime<Utc>)> {
        self.published.iter().next_back().map(|(v, t)| (*v, *t))
    }
}

/// Provider-side setup of one printer's service for one change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSetup {
    pub set_up: bool,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Setup state of a change; advanced by the engine, persisted after every step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupState {
    pub printers: BTreeMap<Id, PrinterSetup>,
    pub services: BTreeMap<Id, ServiceSetup>,
    pub config_fault: Option<FaultNote>,
    pub service_fault: Option<FaultNote>,
    /// T1: the later of the config and the service confirmations.
    pub completed_at: Option<DateTime<Utc>>,
    /// The final decision is recorded and every shipment accepted: nothing left to do.
    pub settled: bool,
    /// When it settled (absent in records written before this was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub change: ContractChange,
    pub setup: SetupState,
}

/// One line of evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ChangeRequested {
        change: ChangeKind,
        plan: Id,
        effective_at: DateTime<Utc>,
    },
    ConfigPublished {
        printer: Id,
        version: u64,
        settings: usize,
    },
    ReportReceived {
        printer: Id,
        version: u64,
        report_id: String,
        status: ReportStatus,
        /// min(report completed_at, received by the cloud), not before publication.
        report_time: DateTime<Utc>,
        codes: BTreeMap<String, u16>,
    },
    ConfigConfirmed {
        printer: Id,
        version: u64,
        confirmed_at: DateTime<Utc>,
    },
    ConfigFault {
        printer: Id,
        reason: String,
        /// Whose side the fault is on, with the evidence.
        #[serde(default)]
        cause: Cause,
    },
    ProviderCall {
        call: String,
        printer: Option<Id>,
        ok: bool,
        result: String,
    },
    ServiceConfirmed {
        printer: Id,
        confirmed_at: DateTime<Utc>,
    },
    ServiceFault {
        printer: Id,
        reason: String,
    },
    SetupCompleted {
        t0: DateTime<Utc>,
        t1: DateTime<Utc>,
        config_confirmed_at: DateTime<Utc>,
        service_confirmed_at: DateTime<Utc>,
    },
    NoCompensation {
        #[serde(flatten)]
        reason: NotOwed,
    },
    Compensation {
        ledger_key: String,
        currency: String,
        part: Box<Part>,
    },
    /// An interim part paid beyond the final one was taken back (`part` is what).
    CompensationReversed {
        ledger_key: String,
        reverses: String,
        currency: String,
        part: Box<Part>,
    },
    ShipmentAccepted {
        ledger_key: String,
        item: String,
        quantity: u64,
    },
    /// This change executes an allowed plan migration.
    MigrationExecuted {
        migration: String,
        rule: String,
        from: Id,
        to: Id,
    },
}

impl Event {
    /// The identity of an observation that happens at most once per change (a report
    /// received, a confirmation, the completion, a ledger entry): appending it again —
    /// as the engine does when it was killed after noting it but before saving the
    /// change's state — leaves the timeline unchanged. `None`: every append is new
    /// (publications, faults and provider calls do recur).
    pub fn once_key(&self) -> Option<String> {
        match self {
            Event::ReportReceived { report_id, .. } => Some(format!("report/{report_id}")),
            Event::ConfigConfirmed { printer, .. } => Some(format!("config_confirmed/{printer}")),
            Event::ServiceConfirmed { printer, .. } => Some(format!("service_confirmed/{printer}")),
            Event::SetupCompleted { .. } => Some("setup_completed".into()),
            Event::NoCompensation { .. } => Some("no_compensation".into()),
            Event::Compensation { ledger_key, .. } => Some(format!("compensation/{ledger_key}")),
            Event::CompensationReversed { ledger_key, .. } => {
                Some(format!("compensation/{ledger_key}"))
            }
            Event::ShipmentAccepted { ledger_key, .. } => Some(format!("shipment/{ledger_key}")),
            Event::MigrationExecuted { migration, .. } => Some(format!("migration/{migration}")),
            Event::ChangeRequested { .. }
            | Event::ConfigPublished { .. }
            | Event::ConfigFault { .. }
            | Event::ProviderCall { .. }
            | Event::ServiceFault { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub change_id: String,
    #[serde(flatten)]
    pub event: Event,
    /// The same event noted again right after this one (a fault each re-publish, a
    /// provider call each retry): counted here instead of a new entry each time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeated: Option<Repeated>,
}

/// How often an entry's event was noted again in a row, and when last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeated {
    pub times: u64,
    pub last_at: DateTime<Utc>,
}

/// One compensation: at most one per (change, period), never rewritten.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// `{change id}/{period}`: deterministic, so a recomputation finds it.
    pub key: String,
    pub tenant: Id,
    pub contract: Id,
    pub change_id: String,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    /// A reversal: this entry takes back its `fee_credit`, extra pages and seconds
    /// from the entry under this key (an interim part that paid beyond the final one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverses: Option<String>,
    #[serde(flatten)]
    pub part: Part,
}

impl LedgerEntry {
    /// The fee credit this entry adds (negative for a reversal), in minor units.
    pub fn signed_credit(&self) -> i128 {
        let v = i128::from(self.part.fee_credit);
        if self.reverses.is_some() {
            -v
        } else {
            v
        }
    }
}

pub fn ledger_key(change_id: &str, period_label: &str) -> String {
    format!("{change_id}/{period_label}")
}

#[derive(Clone)]
pub struct ContractStore {
    db: sled::Db,
    tenants: sled::Tree,
    plans: sled::Tree,
    contracts: sled::Tree,
    changes: sled::Tree,
    versions: sled::Tree,
    timeline: sled::Tree,
    /// `{change id}/{Event::once_key}` → timeline key: observations noted once.
    timeline_once: sled::Tree,
    ledger: sled::Tree,
    shipments_sent: sled::Tree,
    resellers: sled::Tree,
    migrations: sled::Tree,
    scheduled: sled::Tree,
    /// `{contract}/{seq:010}` → change id.
    contract_changes: sled::Tree,
    /// `{tenant}/{printer}` → contract id.
    printer_contracts: sled::Tree,
    /// `{due ms:020}/{change id}` → nothing.
    due: sled::Tree,
    /// change id → its key in `due`.
    due_of: sled::Tree,
    ledger_by_contract: sled::Tree,
    ledger_by_tenant: sled::Tree,
    /// `{tenant}/{contract}` → nothing.
    contracts_by_tenant: sled::Tree,
    /// `{tenant or contract}/{migration id}` → nothing.
    migrations_by_tenant: sled::Tree,
    migrations_by_contract: sled::Tree,
    pub readings: ReadingStore,
}

fn due_key(at: DateTime<Utc>, change_id: &str) -> String {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    format!("{ms:020}/{change_id}")
}

type TxResult<T> = Result<T, sled::transaction::ConflictableTransactionError<()>>;

/// Put `change_id` in the due index at `at` (`None`: take it out), in a transaction.
fn set_due(
    due: &sled::transaction::TransactionalTree,
    due_of: &sled::transaction::TransactionalTree,
    change_id: &str,
    at: Option<DateTime<Utc>>,
) -> TxResult<()> {
    if let Some(old) = due_of.get(change_id.as_bytes())? {
        due.remove(old)?;
    }
    match at {
        Some(at) => {
            let key = due_key(at, change_id);
            due.insert(key.as_bytes(), &[] as &[u8])?;
            due_of.insert(change_id.as_bytes(), key.as_bytes())?;
        }
        None => {
            due_of.remove(change_id.as_bytes())?;
        }
    }
    Ok(())
}

fn contract_change_key(contract: &Id, seq: u32) -> String {
    format!("{contract}/{seq:010}")
}

fn printer_key(tenant: &Id, printer: &Id) -> String {
    format!("{tenant}/{printer}")
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

/// Keys under `prefix` strictly after `prefix + after`, at most `limit`, with the rest
/// of each key after the prefix.
fn page_keys(
    tree: &sled::Tree,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<(String, sled::IVec)>, StoreError> {
    let start = match after {
        Some(a) => {
            let mut k = format!("{prefix}{a}").into_bytes();
            k.push(0); // the first key after it
            k
        }
        None => prefix.as_bytes().to_vec(),
    };
    let mut items = Vec::new();
    let mut more = false;
    for kv in tree.range(start..) {
        let (k, v) = kv?;
        if !k.starts_with(prefix.as_bytes()) {
            break;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push((String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), v));
    }
    let next = if more {
        items.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    Ok(Page { items, next })
}

/// The lists [`ContractStore::page`] reads.
#[derive(Clone, Copy, Debug)]
pub enum List {
    Tenants,
    Plans,
    Resellers,
    Contracts,
    Ledger,
    Migrations,
}

/// The indexes [`ContractStore::page_of`] reads.
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

/// Result of [`ContractStore::create_contract`].
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

/// An entry of the `scheduled` index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due {
    pub id: String,
    pub contract: Id,
    pub effective_at: Option<DateTime<Utc>>,
}

impl Due {
    fn of(m: &Migration) -> Due {
        Due {
            id: m.id.clone(),
            contract: m.decision.contract.clone(),
            effective_at: m.decision.effective_at,
        }
    }
}

fn tx_error(e: sled::transaction::TransactionError<()>, key: &str) -> StoreError {
    match e {
        sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
        sled::transaction::TransactionError::Abort(()) => StoreError::Corrupt {
            key: key.to_string(),
            message: "unreadable record in a transaction".into(),
        },
    }
}

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain data serializes")
}

/// Result of an insert-if-absent.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    New,
    Exists,
}

impl ContractStore {
    pub fn open(db: &sled::Db) -> Result<ContractStore, StoreError> {
        ContractStore {
            db: db.clone(),
            tenants: db.open_tree("tenants")?,
            plans: db.open_tree("plans")?,
            contracts: db.open_tree("contracts")?,
            changes: db.open_tree("changes")?,
            versions: db.open_tree("versions")?,
            timeline: db.open_tree("timeline")?,
            timeline_once: db.open_tree("timeline_once")?,
            ledger: db.open_tree("ledger")?,
            shipments_sent: db.open_tree("shipments_sent")?,
            resellers: db.open_tree("resellers")?,
            migrations: db.open_tree("migrations")?,
            scheduled: db.open_tree("scheduled")?,
            contract_changes: db.open_tree("contract_changes")?,
            printer_contracts: db.open_tree("printer_contracts")?,
            due: db.open_tree("due")?,
            due_of: db.open_tree("due_of")?,
            ledger_by_contract: db.open_tree("ledger_by_contract")?,
            ledger_by_tenant: db.open_tree("ledger_by_tenant")?,
            contracts_by_tenant: db.open_tree("contracts_by_tenant")?,
            migrations_by_tenant: db.open_tree("migrations_by_tenant")?,
            migrations_by_contract: db.open_tree("migrations_by_contract")?,
            readings: ReadingStore::open(db)?,
        }
        .with_indexes(db)?
        .with_due_index(db)?
        .with_owner_indexes(db)
    }

    /// The contracts-by-tenant and migrations-by-owner indexes, once, for a directory
    /// written before they existed.
    fn with_owner_indexes(self, db: &sled::Db) -> Result<ContractStore, StoreError> {
        let meta = db.open_tree("meta")?;
        if meta.get("indexes_v4")?.is_some() {
            return Ok(self);
        }
        for c in Self::all::<Contract>(&self.contracts)? {
            self.contracts_by_tenant
                .insert(format!("{}/{}", c.tenant, c.id).as_bytes(), &[] as &[u8])?;
        }
        for m in Self::all::<Migration>(&self.migrations)? {
            self.migrations_by_tenant.insert(
                format!("{}/{}", m.decision.tenant, m.id).as_bytes(),
                &[] as &[u8],
            )?;
            self.migrations_by_contract.insert(
                format!("{}/{}", m.decision.contract, m.id).as_bytes(),
                &[] as &[u8],
            )?;
        }
        meta.insert("indexes_v4", b"1".as_slice())?;
        db.flush()?;
        Ok(self)
    }

    /// The ids under `{owner}/` in an index whose keys are `{owner}/{id}`.
    fn ids_under(tree: &sled::Tree, owner: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{owner}/");
        tree.scan_prefix(prefix.as_bytes())
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?[prefix.len()..]).into_owned()))
            .collect()
    }

    /// A page of one of the id → record trees (`tenants`, `plans`, `resellers`,
    /// `contracts`, `ledger`, `migrations`) in key order.
    pub fn page<T: DeserializeOwned>(
        &self,
        list: List,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>, StoreError> {
        let tree = match list {
            List::Tenants => &self.tenants,
            List::Plans => &self.plans,
            List::Resellers => &self.resellers,
            List::Contracts => &self.contracts,
            List::Ledger => &self.ledger,
            List::Migrations => &self.migrations,
        };
        let p = page_keys(tree, "", after, limit)?;
        Ok(Page {
            items: p
                .items
                .iter()
                .map(|(k, v)| decode(k.as_bytes(), v))
                .collect::<Result<_, _>>()?,
            next: p.next,
        })
    }

    /// A page of an owner's items through one of the `{owner}/{id}` indexes.
    pub fn page_of<T: DeserializeOwned>(
        &self,
        index: OwnerIndex,
        owner: &Id,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>, StoreError> {
        let (tree, records) = match index {
            OwnerIndex::ContractsOfTenant => (&self.contracts_by_tenant, &self.contracts),
            OwnerIndex::LedgerOfTenant => (&self.ledger_by_tenant, &self.ledger),
            OwnerIndex::LedgerOfContract => (&self.ledger_by_contract, &self.ledger),
            OwnerIndex::MigrationsOfTenant => (&self.migrations_by_tenant, &self.migrations),
            OwnerIndex::MigrationsOfContract => (&self.migrations_by_contract, &self.migrations),
        };
        let p = page_keys(tree, &format!("{owner}/"), after, limit)?;
        let mut items = Vec::with_capacity(p.items.len());
        for (id, _) in &p.items {
            items.extend(Self::get::<T>(records, id)?);
        }
        Ok(Page {
            items,
            next: p.next,
        })
    }

    /// Remove refused migrations decided before `before` (with their index entries),
    /// scanning at most `max_keys` from `from` on. Returns (removed, next batch start).
    pub fn prune_refused_migrations(
        &self,
        before: DateTime<Utc>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<(usize, Option<Vec<u8>>), StoreError> {
        let r = crate::batch::scan(&self.migrations, from, max_keys, |k, v, _| {
            let m: Migration = decode(k, v)?;
            if m.state != MigrationState::Refused || m.decision.decided_at >= before {
                return Ok(false);
            }
            self.migrations.remove(k)?;
            self.migrations_by_tenant
                .remove(format!("{}/{}", m.decision.tenant, m.id).as_bytes())?;
            self.migrations_by_contract
                .remove(format!("{}/{}", m.decision.contract, m.id).as_bytes())?;
            Ok::<bool, StoreError>(true)
        })?;
        self.db.flush()?;
        Ok(r)
    }

    /// Whether a report of change `change_id` may go: the change settled before
    /// `before` and no ledger entry refers to it (a paid change keeps its evidence).
    pub fn report_may_go(
        &self,
        change_id: &str,
        before: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
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

    /// A tenant's contracts, read by key.
    pub fn contracts_of_tenant(&self, tenant: &Id) -> Result<Vec<Contract>, StoreError> {
        let mut out = Vec::new();
        for id in Self::ids_under(&self.contracts_by_tenant, tenant.as_str())? {
            out.extend(Self::get::<Contract>(&self.contracts, &id)?);
        }
        Ok(out)
    }

    /// A tenant's or a contract's migrations, read by key.
    pub fn migrations_of(&self, owner: LedgerOwner<'_>) -> Result<Vec<Migration>, StoreError> {
        let (tree, id) = match owner {
            LedgerOwner::Contract(c) => (&self.migrations_by_contract, c),
            LedgerOwner::Tenant(t) => (&self.migrations_by_tenant, t),
        };
        let mut out = Vec::new();
        for mid in Self::ids_under(tree, id.as_str())? {
            out.extend(Self::get::<Migration>(&self.migrations, &mid)?);
        }
        Ok(out)
    }

    /// Build the `contract_changes` and `printer_contracts` indexes once, from the
    /// records, for a state directory written before they existed (format 1). A flag
    /// in `meta` says they are complete, so a crash during the build builds again.
    fn with_indexes(self, db: &sled::Db) -> Result<ContractStore, StoreError> {
        let meta = db.open_tree("meta")?;
        if meta.get("indexes_v2")?.is_some() {
            return Ok(self);
        }
        for kv in self.changes.iter() {
            let (k, v) = kv?;
            let rec: ChangeRecord = decode(&k, &v)?;
            self.contract_changes.insert(
                contract_change_key(&rec.change.contract, rec.change.seq).as_bytes(),
                rec.change.id.as_bytes(),
            )?;
        }
        let mut contracts: Vec<Contract> = Self::all(&self.contracts)?;
        contracts.sort_by_key(|c| c.created_at);
        for c in contracts {
            for p in &c.printers {
                let key = printer_key(&c.tenant, p);
                // The first contract keeps the printer.
                let _ = self.printer_contracts.compare_and_swap(
                    key.as_bytes(),
                    None as Option<&[u8]>,
                    Some(c.id.as_str().as_bytes()),
                )?;
            }
        }
        meta.insert("indexes_v2", b"1".as_slice())?;
        db.flush()?;
        Ok(self)
    }

    /// The due index (every open change due now) and the ledger indexes, once, for a
    /// directory written before they existed.
    fn with_due_index(self, db: &sled::Db) -> Result<ContractStore, StoreError> {
        let meta = db.open_tree("meta")?;
        if meta.get("indexes_v3")?.is_some() {
            return Ok(self);
        }
        let now = Utc::now();
        for kv in self.changes.iter() {
            let (k, v) = kv?;
            let rec: ChangeRecord = decode(&k, &v)?;
            if !rec.setup.settled && self.due_of.get(rec.change.id.as_bytes())?.is_none() {
                let key = due_key(now, &rec.change.id);
                self.due.insert(key.as_bytes(), &[] as &[u8])?;
                self.due_of
                    .insert(rec.change.id.as_bytes(), key.as_bytes())?;
            }
        }
        for kv in self.ledger.iter() {
            let (k, v) = kv?;
            let e: LedgerEntry = decode(&k, &v)?;
            self.ledger_by_contract
                .insert(format!("{}/{}", e.contract, e.key).as_bytes(), &[] as &[u8])?;
            self.ledger_by_tenant
                .insert(format!("{}/{}", e.tenant, e.key).as_bytes(), &[] as &[u8])?;
        }
        meta.insert("indexes_v3", b"1".as_slice())?;
        db.flush()?;
        Ok(self)
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>, StoreError> {
        match tree.get(key.as_bytes())? {
            Some(v) => Ok(Some(decode(key.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    fn insert_new<T: Serialize>(
        tree: &sled::Tree,
        key: &str,
        v: &T,
    ) -> Result<Inserted, StoreError> {
        let r = tree.compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(encode(v)))?;
        tree.flush()?;
        Ok(if r.is_ok() {
            Inserted::New
        } else {
            Inserted::Exists
        })
    }

    pub fn add_tenant(&self, t: &Tenant) -> Result<Inserted, StoreError> {
        Self::insert_new(&self.tenants, t.id.as_str(), t)
    }
    pub fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        Self::get(&self.tenants, id)
    }
    pub fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        Self::all(&self.tenants)
    }

    pub fn add_plan(&self, p: &Plan) -> Result<Inserted, StoreError> {
        Self::insert_new(&self.plans, p.id.as_str(), p)
    }
    /// Write a plan from the catalog file (the catalog is authoritative).
    pub fn put_plan(&self, p: &Plan) -> Result<(), StoreError> {
        self.plans.insert(p.id.as_str().as_bytes(), encode(p))?;
        self.plans.flush()?;
        Ok(())
    }
    pub fn plan(&self, id: &str) -> Result<Option<Plan>, StoreError> {
        Self::get(&self.plans, id)
    }
    pub fn plans(&self) -> Result<Vec<Plan>, StoreError> {
        Self::all(&self.plans)
    }

    pub fn add_reseller(&self, r: &Reseller) -> Result<Inserted, StoreError> {
        Self::insert_new(&self.resellers, r.id.as_str(), r)
    }
    pub fn reseller(&self, id: &str) -> Result<Option<Reseller>, StoreError> {
        Self::get(&self.resellers, id)
    }
    pub fn resellers(&self) -> Result<Vec<Reseller>, StoreError> {
        Self::all(&self.resellers)
    }

    /// A number never handed out before by this database.
    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// Store a new migration; a scheduled one also goes into the `scheduled` index,
    /// in the same transaction.
    pub fn add_migration(&self, m: &Migration) -> Result<Inserted, StoreError> {
        use sled::Transactional;
        let by_t = format!("{}/{}", m.decision.tenant, m.id);
        let by_c = format!("{}/{}", m.decision.contract, m.id);
        let r = (
            &self.migrations,
            &self.scheduled,
            &self.migrations_by_tenant,
            &self.migrations_by_contract,
        )
            .transaction(|(migrations, scheduled, by_tenant, by_contract)| {
                if migrations.get(m.id.as_bytes())?.is_some() {
                    return Ok(Inserted::Exists);
                }
                migrations.insert(m.id.as_bytes(), encode(m))?;
                by_tenant.insert(by_t.as_bytes(), &[] as &[u8])?;
                by_contract.insert(by_c.as_bytes(), &[] as &[u8])?;
                if m.state == MigrationState::Scheduled {
                    scheduled.insert(m.id.as_bytes(), encode(&Due::of(m)))?;
                }
                Ok(Inserted::New)
            });
        let r = r.map_err(|e| tx_error(e, &m.id))?;
        self.db.flush()?;
        Ok(r)
    }
    pub fn migration(&self, id: &str) -> Result<Option<Migration>, StoreError> {
        Self::get(&self.migrations, id)
    }
    pub fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        Self::all(&self.migrations)
    }

    /// The scheduled migrations only (an index: the scheduler reads this on every
    /// tick, not the whole history).
    pub fn scheduled(&self) -> Result<Vec<Due>, StoreError> {
        Self::all(&self.scheduled)
    }

    /// Move a migration from `scheduled` to `state`, if it is still scheduled.
    /// Returns whether it was.
    pub fn finish_migration(&self, id: &str, state: MigrationState) -> Result<bool, StoreError> {
        self.leave_scheduled(id, state, None)
    }

    /// Execute a scheduled migration: its contract change is added, the migration
    /// marked executed and taken out of the index in one transaction, so a crash
    /// between them cannot run it twice. `Ok(false)`: it was no longer scheduled, or
    /// the change id was taken by a concurrent change (the caller computes a new one
    /// and retries).
    pub fn execute_migration(
        &self,
        migration_id: &str,
        change: &ContractChange,
    ) -> Result<bool, StoreError> {
        let state = MigrationState::Executed {
            change_id: change.id.clone(),
            at: change.requested_at,
        };
        self.leave_scheduled(migration_id, state, Some(change))
    }

    fn leave_scheduled(
        &self,
        id: &str,
        state: MigrationState,
        change: Option<&ContractChange>,
    ) -> Result<bool, StoreError> {
        use sled::transaction::ConflictableTransactionError;
        use sled::Transactional;
        let rec = change.map(|c| ChangeRecord {
            change: c.clone(),
            setup: SetupState::default(),
        });
        let now = Utc::now();
        let r = (
            &self.migrations,
            &self.scheduled,
            &self.changes,
            &self.contract_changes,
            &self.due,
            &self.due_of,
        )
            .transaction(
                |(migrations, scheduled, changes, by_contract, due, due_of)| {
                    let Some(raw) = migrations.get(id.as_bytes())? else {
                        return Ok(false);
                    };
                    let mut m: Migration = serde_json::from_slice(&raw)
                        .map_err(|_| ConflictableTransactionError::Abort(()))?;
                    if m.state != MigrationState::Scheduled {
                        return Ok(false);
                    }
                    if let Some(rec) = &rec {
                        if changes.get(rec.change.id.as_bytes())?.is_some() {
                            return Ok(false);
                        }
                        changes.insert(rec.change.id.as_bytes(), encode(rec))?;
                        by_contract.insert(
                            contract_change_key(&rec.change.contract, rec.change.seq).as_bytes(),
                            rec.change.id.as_bytes(),
                        )?;
                        set_due(due, due_of, &rec.change.id, Some(now))?;
                    }
                    m.state = state.clone();
                    migrations.insert(id.as_bytes(), encode(&m))?;
                    scheduled.remove(id.as_bytes())?;
                    Ok(true)
                },
            );
        let done = r.map_err(|e| tx_error(e, id))?;
        self.db.flush()?;
        Ok(done)
    }

    pub fn contract(&self, id: &str) -> Result<Option<Contract>, StoreError> {
        Self::get(&self.contracts, id)
    }
    pub fn contracts(&self) -> Result<Vec<Contract>, StoreError> {
        Self::all(&self.contracts)
    }

    /// Create a contract and its start change atomically (both or neither), claiming
    /// its printers unless `allow_shared` (a printer covered by another contract is
    /// refused: both would push their settings to it and both would be billed).
    pub fn create_contract(
        &self,
        c: &Contract,
        start: &ContractChange,
        allow_shared: bool,
    ) -> Result<Created, StoreError> {
        use sled::transaction::ConflictableTransactionError as E;
        use sled::Transactional;
        let rec = ChangeRecord {
            change: start.clone(),
            setup: SetupState::default(),
        };
        let now = Utc::now();
        let r = (
            &self.contracts,
            &self.changes,
            &self.contract_changes,
            &self.printer_contracts,
            &self.due,
            &self.due_of,
            &self.contracts_by_tenant,
        )
            .transaction(
                |(contracts, changes, by_contract, printers, due, due_of, by_tenant)| {
                    if contracts.get(c.id.as_str())?.is_some() {
                        return Ok(Created::Exists);
                    }
                    for p in &c.printers {
                        let key = printer_key(&c.tenant, p);
                        match printers.get(key.as_bytes())? {
                            Some(other) if !allow_shared => {
                                return Ok(Created::PrinterTaken {
                                    printer: p.clone(),
                                    contract: String::from_utf8_lossy(&other).into_owned(),
                                })
                            }
                            Some(_) => {}
                            None => {
                                printers.insert(key.as_bytes(), c.id.as_str().as_bytes())?;
                            }
                        }
                    }
                    contracts.insert(c.id.as_str(), encode(c))?;
                    changes.insert(start.id.as_str(), encode(&rec))?;
                    by_contract.insert(
                        contract_change_key(&start.contract, start.seq).as_bytes(),
                        start.id.as_bytes(),
                    )?;
                    set_due(due, due_of, &start.id, Some(now))?;
                    by_tenant.insert(format!("{}/{}", c.tenant, c.id).as_bytes(), &[] as &[u8])?;
                    Ok::<_, E<()>>(Created::New)
                },
            );
        let r = r.map_err(|e| tx_error(e, c.id.as_str()))?;
        self.db.flush()?;
        Ok(r)
    }

    /// Add a change (its id must be new), with its entry in the contract's index.
    pub fn add_change(&self, change: &ContractChange) -> Result<Inserted, StoreError> {
        use sled::transaction::ConflictableTransactionError as E;
        use sled::Transactional;
        let rec = ChangeRecord {
            change: change.clone(),
            setup: SetupState::default(),
        };
        let now = Utc::now();
        let r = (
            &self.changes,
            &self.contract_changes,
            &self.due,
            &self.due_of,
        )
            .transaction(|(changes, by_contract, due, due_of)| {
                if changes.get(change.id.as_bytes())?.is_some() {
                    return Ok(Inserted::Exists);
                }
                changes.insert(change.id.as_bytes(), encode(&rec))?;
                by_contract.insert(
                    contract_change_key(&change.contract, change.seq).as_bytes(),
                    change.id.as_bytes(),
                )?;
                set_due(due, due_of, &change.id, Some(now))?;
                Ok::<_, E<()>>(Inserted::New)
            })
            .map_err(|e| tx_error(e, &change.id))?;
        self.db.flush()?;
        Ok(r)
    }

    /// Save a change's state and when the engine next needs it (`None`, or settled:
    /// out of the due index), in one transaction.
    pub fn save_change(
        &self,
        rec: &ChangeRecord,
        due_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        use sled::Transactional;
        let due_at = if rec.setup.settled { None } else { due_at };
        let value = encode(rec);
        let id = rec.change.id.as_str();
        (&self.changes, &self.due, &self.due_of)
            .transaction(|(changes, due, due_of)| {
                changes.insert(id.as_bytes(), value.as_slice())?;
                set_due(due, due_of, id, due_at)
            })
            .map_err(|e| tx_error(e, id))?;
        self.db.flush()?;
        Ok(())
    }

    /// Open changes due at or before `now`, soonest first, at most `limit`.
    pub fn due_changes(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let end = format!(
            "{:020}0",
            u64::try_from(now.timestamp_millis()).unwrap_or(0)
        );
        let mut out = Vec::new();
        for kv in self.due.range(..end.as_bytes()).keys().take(limit) {
            let k = kv?;
            let Some(id) = k.get(21..) else { continue };
            let id = String::from_utf8_lossy(id).into_owned();
            if let Some(rec) = Self::get::<ChangeRecord>(&self.changes, &id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Make an open change due now (a report for it arrived).
    pub fn wake_change(&self, change_id: &str) -> Result<(), StoreError> {
        use sled::Transactional;
        (&self.due, &self.due_of)
            .transaction(|(due, due_of)| {
                if due_of.get(change_id.as_bytes())?.is_some() {
                    set_due(due, due_of, change_id, Some(Utc::now()))?;
                }
                Ok(())
            })
            .map_err(|e| tx_error(e, change_id))?;
        Ok(())
    }

    pub fn change(&self, id: &str) -> Result<Option<ChangeRecord>, StoreError> {
        Self::get(&self.changes, id)
    }

    /// Changes of one contract in order (through the `contract_changes` index: an
    /// exact `{contract}/` prefix, so no other contract's changes come along).
    pub fn changes_of(&self, contract: &Id) -> Result<Vec<ChangeRecord>, StoreError> {
        let prefix = format!("{contract}/");
        let mut v = Vec::new();
        for kv in self.contract_changes.scan_prefix(prefix.as_bytes()) {
            let (_, id) = kv?;
            let id = String::from_utf8_lossy(&id).into_owned();
            if let Some(rec) = Self::get::<ChangeRecord>(&self.changes, &id)? {
                if rec.change.contract == *contract {
                    v.push(rec);
                }
            }
        }
        v.sort_by_key(|r| r.change.seq);
        Ok(v)
    }

    /// The contract that covers `printer` of `tenant`, if any.
    pub fn contract_of_printer(
        &self,
        tenant: &Id,
        printer: &Id,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .printer_contracts
            .get(printer_key(tenant, printer).as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Every open change (through the due index; settled ones are not read).
    pub fn open_changes(&self) -> Result<Vec<ChangeRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.due_of.iter().keys() {
            let id = String::from_utf8_lossy(&kv?).into_owned();
            if let Some(rec) = Self::get::<ChangeRecord>(&self.changes, &id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Next config version for a printer: max(last + 1, now in Unix milliseconds).
    ///
    /// Monotonic across contracts and restarts, and — because it follows the clock —
    /// also above anything a previous installation published, should this cloud's
    /// state be lost: the agent ignores versions at or below the last it completed.
    pub fn next_version(&self, tenant: &Id, printer: &Id) -> Result<u64, StoreError> {
        let key = format!("{tenant}/{printer}");
        let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        let v = self.versions.update_and_fetch(key.as_bytes(), |old| {
            let n = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some(n.saturating_add(1).max(now_ms).to_be_bytes().to_vec())
        })?;
        self.versions.flush()?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(1))
    }

    /// Append to a change's timeline. An event with a [`Event::once_key`] that the
    /// change's timeline already holds is not appended again (`Ok(None)`); the check
    /// and the insert are one transaction, so a crash cannot split them.
    pub fn append(
        &self,
        change_id: &str,
        event: Event,
    ) -> Result<Option<TimelineEntry>, StoreError> {
        let once = event.once_key().map(|k| format!("{change_id}/{k}"));
        if once.is_none() {
            // A recurring event identical to the change's last entry is counted on
            // that entry: a change nobody answers does not grow its timeline.
            let prefix = format!("{change_id}/");
            if let Some((k, v)) = self
                .timeline
                .scan_prefix(prefix.as_bytes())
                .next_back()
                .transpose()?
            {
                let mut last: TimelineEntry = decode(&k, &v)?;
                if last.event == event {
                    let now = Utc::now();
                    let times = last.repeated.as_ref().map_or(1, |r| r.times + 1);
                    last.repeated = Some(Repeated {
                        times,
                        last_at: now,
                    });
                    self.timeline.insert(k, encode(&last))?;
                    self.timeline.flush()?;
                    return Ok(None);
                }
            }
        }
        let seq = self.db.generate_id()?;
        let entry = TimelineEntry {
            seq,
            at: Utc::now(),
            change_id: change_id.to_string(),
            event,
            repeated: None,
        };
        let key = format!("{change_id}/{seq:020}");
        let value = encode(&entry);
        use sled::transaction::ConflictableTransactionError;
        use sled::Transactional;
        let added = (&self.timeline, &self.timeline_once)
            .transaction(|(timeline, index)| {
                if let Some(once) = &once {
                    if index.get(once.as_bytes())?.is_some() {
                        return Ok(false);
                    }
                    index.insert(once.as_bytes(), key.as_bytes())?;
                }
                timeline.insert(key.as_bytes(), value.as_slice())?;
                Ok::<bool, ConflictableTransactionError<()>>(true)
            })
            .map_err(|e| tx_error(e, &key))?;
        self.timeline.flush()?;
        Ok(added.then_some(entry))
    }

    pub fn timeline(&self, change_id: &str) -> Result<Vec<TimelineEntry>, StoreError> {
        let prefix = format!("{change_id}/");
        self.timeline
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Insert a ledger entry if its key is new, with its contract and tenant index
    /// entries, in one transaction.
    pub fn add_ledger(&self, e: &LedgerEntry) -> Result<Inserted, StoreError> {
        use sled::Transactional;
        let value = encode(e);
        let (by_c, by_t) = (
            format!("{}/{}", e.contract, e.key),
            format!("{}/{}", e.tenant, e.key),
        );
        let r = (
            &self.ledger,
            &self.ledger_by_contract,
            &self.ledger_by_tenant,
        )
            .transaction(|(ledger, by_contract, by_tenant)| {
                if ledger.get(e.key.as_bytes())?.is_some() {
                    return Ok(Inserted::Exists);
                }
                ledger.insert(e.key.as_bytes(), value.as_slice())?;
                by_contract.insert(by_c.as_bytes(), &[] as &[u8])?;
                by_tenant.insert(by_t.as_bytes(), &[] as &[u8])?;
                Ok(Inserted::New)
            })
            .map_err(|x| tx_error(x, &e.key))?;
        self.db.flush()?;
        Ok(r)
    }

    /// The ledger entries of one contract, or of one tenant, read by key.
    pub fn ledger_of(&self, owner: LedgerOwner<'_>) -> Result<Vec<LedgerEntry>, StoreError> {
        let (tree, id) = match owner {
            LedgerOwner::Contract(c) => (&self.ledger_by_contract, c),
            LedgerOwner::Tenant(t) => (&self.ledger_by_tenant, t),
        };
        let prefix = format!("{id}/");
        let mut out = Vec::new();
        for k in tree.scan_prefix(prefix.as_bytes()).keys() {
            let k = k?;
            let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(e) = Self::get::<LedgerEntry>(&self.ledger, &key)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    pub fn ledger_entry(&self, key: &str) -> Result<Option<LedgerEntry>, StoreError> {
        Self::get(&self.ledger, key)
    }

    pub fn ledger(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        Self::all(&self.ledger)
    }

    pub fn shipment_sent(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.shipments_sent.contains_key(key.as_bytes())?)
    }

    pub fn mark_shipment_sent(&self, key: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.shipments_sent.insert(key.as_bytes(), encode(&at))?;
        self.shipments_sent.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_monotonic_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let (t, p): (Id, Id) = ("acme".parse().unwrap(), "p1".parse().unwrap());
        let before = Utc::now().timestamp_millis() as u64;
        let (v1, v2) = {
            let db = sled::open(d.path()).unwrap();
            let s = ContractStore::open(&db).unwrap();
            (
                s.next_version(&t, &p).unwrap(),
                s.next_version(&t, &p).unwrap(),
            )
        };
        assert!(v1 >= before && v2 > v1, "{before} {v1} {v2}");
        // sled's flusher thread may hold the lock for a moment after the drop.
        let mut db = sled::open(d.path());
        for _ in 0..100 {
            if db.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            db = sled::open(d.path());
        }
        let db = db.unwrap();
        let s = ContractStore::open(&db).unwrap();
        // A version far in the future (clock stepped back later) still only grows.
        s.versions
            .insert(b"acme/p1", &(u64::MAX - 5).to_be_bytes())
            .unwrap();
        assert_eq!(s.next_version(&t, &p).unwrap(), u64::MAX - 4);
    }

    /// A state directory written before the indexes existed (format 1) gets them
    /// built at open.
    #[test]
    fn indexes_are_built_for_an_older_directory() {
        let d = tempfile::tempdir().unwrap();
        let db = sled::open(d.path()).unwrap();
        let s = ContractStore::open(&db).unwrap();
        let now = Utc::now();
        let c = Contract {
            id: "k".parse().unwrap(),
            tenant: "acme".parse().unwrap(),
            printers: vec!["p1".parse().unwrap()],
            plan: "flat".parse().unwrap(),
            effective_at: now,
            time_zone: "UTC".into(),
            currency: "EUR".into(),
            term_months: None,
            created_at: now,
        };
        let start = ContractChange {
            id: "k.1".into(),
            contract: c.id.clone(),
            seq: 1,
            change: ChangeKind::Start,
            effective_at: now,
            requested_at: now,
            plan: c.plan.clone(),
            settings: BTreeMap::new(),
        };
        assert_eq!(s.create_contract(&c, &start, false).unwrap(), Created::New);
        // As format 1 left it: no index, no flag.
        s.contract_changes.clear().unwrap();
        s.printer_contracts.clear().unwrap();
        db.open_tree("meta").unwrap().remove("indexes_v2").unwrap();
        assert!(s.changes_of(&c.id).unwrap().is_empty());
        let s = ContractStore::open(&db).unwrap();
        assert_eq!(s.changes_of(&c.id).unwrap().len(), 1);
        assert_eq!(
            s.contract_of_printer(&c.tenant, &c.printers[0]).unwrap(),
            Some("k".into())
        );
    }

    #[test]
    fn every_event_kind_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let db = sled::open(d.path()).unwrap();
        let s = ContractStore::open(&db).unwrap();
        let p: Id = "p1".parse().unwrap();
        let now = Utc::now();
        let events = vec![
            Event::ChangeRequested {
                change: ChangeKind::Start,
                plan: "x".parse().unwrap(),
                effective_at: now,
            },
            Event::ConfigPublished {
                printer: p.clone(),
                version: 1,
                settings: 2,
            },
            Event::ReportReceived {
                printer: p.clone(),
                version: 1,
                report_id: "r".into(),
                status: ReportStatus::Applied,
                report_time: now,
                codes: BTreeMap::new(),
            },
            Event::ConfigConfirmed {
                printer: p.clone(),
                version: 1,
                confirmed_at: now,
            },
            Event::ConfigFault {
                printer: p.clone(),
                reason: "r".into(),
                cause: Cause::Customer {
                    evidence: "agent down".into(),
                },
            },
            Event::ProviderCall {
                call: "setup".into(),
                printer: Some(p.clone()),
                ok: true,
                result: "ok".into(),
            },
            Event::ServiceConfirmed {
                printer: p.clone(),
                confirmed_at: now,
            },
            Event::ServiceFault {
                printer: p.clone(),
                reason: "r".into(),
            },
            Event::SetupCompleted {
                t0: now,
                t1: now,
                config_confirmed_at: now,
                service_confirmed_at: now,
            },
            Event::NoCompensation {
                reason: NotOwed::NoFault,
            },
            Event::ShipmentAccepted {
                ledger_key: "k".into(),
                item: "i".into(),
                quantity: 1,
            },
            Event::MigrationExecuted {
                migration: "m".into(),
                rule: "r".into(),
                from: p.clone(),
                to: p.clone(),
            },
        ];
        for e in &events {
            s.append("c.1", e.clone()).unwrap();
        }
        let back: Vec<Event> = s
            .timeline("c.1")
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(back, events);

        // Noted again (the engine killed after noting, before saving its state): the
        // once-per-change observations stay single, recurring ones are appended.
        for e in &events {
            let added = s.append("c.1", e.clone()).unwrap();
            assert_eq!(added.is_some(), e.once_key().is_none(), "{e:?}");
        }
        let again: Vec<Event> = s
            .timeline("c.1")
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        let recurring: Vec<Event> = events
            .iter()
            .filter(|e| e.once_key().is_none())
            .cloned()
            .collect();
        assert_eq!(again, [events.clone(), recurring].concat());
        // The same report in another change's timeline is that change's evidence.
        assert!(s.append("c.2", events[2].clone()).unwrap().is_some());

        // A recurring event noted again in a row is counted on the last entry.
        let fault = Event::ConfigFault {
            printer: p.clone(),
            reason: "no report for version 9 within 60 s of its publication".into(),
            cause: Cause::Provider,
        };
        let before = s.timeline("c.3").unwrap().len();
        for _ in 0..100 {
            s.append("c.3", fault.clone()).unwrap();
        }
        let tl = s.timeline("c.3").unwrap();
        assert_eq!(tl.len(), before + 1);
        assert_eq!(tl.last().unwrap().repeated.as_ref().unwrap().times, 99);
        // Another event between two faults: both faults stay visible.
        s.append("c.3", events[1].clone()).unwrap();
        s.append("c.3", fault.clone()).unwrap();
        assert_eq!(s.timeline("c.3").unwrap().len(), before + 3);
    }
}
