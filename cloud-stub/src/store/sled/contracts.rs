//! [`Contracts`] on sled: the contract trees, their indexes and transactions.

use super::{Held, SledStore};
use crate::model::{ChangeRecord, Event, LedgerEntry, Repeated, SetupState, TimelineEntry};
use crate::model::{Contract, ContractChange, Plan, Reseller, Tenant};
use crate::model::{Migration, MigrationState};
use crate::store::{
    Batch, Claim, Contracts, Created, Due, Inserted, LedgerOwner, List, OwnerIndex, Page, Result,
    StoreError,
};
use chrono::{DateTime, Utc};
use platen_protocol::Id;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub(super) fn due_key(at: DateTime<Utc>, change_id: &str) -> String {
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

pub(super) fn contract_change_key(contract: &Id, seq: u32) -> String {
    format!("{contract}/{seq:010}")
}

pub(super) fn printer_key(tenant: &Id, printer: &Id) -> String {
    format!("{tenant}/{printer}")
}

/// Keys under `prefix` strictly after `prefix + after`, at most `limit`, with the rest
/// of each key after the prefix.
fn page_keys(
    tree: &sled::Tree,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<(String, sled::IVec)>> {
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

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain data serializes")
}

pub(super) fn tx_error(e: sled::transaction::TransactionError<()>, key: &str) -> StoreError {
    match e {
        sled::transaction::TransactionError::Storage(e) => e.into(),
        sled::transaction::TransactionError::Abort(()) => StoreError::Corrupt {
            key: key.to_string(),
            message: "unreadable record in a transaction".into(),
        },
    }
}

impl SledStore {
    /// Ids of the changes due at or before `now`, soonest first (the `due` index).
    fn due_ids(&self, now: DateTime<Utc>) -> impl Iterator<Item = Result<String>> + '_ {
        let end = format!(
            "{:020}0",
            u64::try_from(now.timestamp_millis()).unwrap_or(0)
        );
        self.due
            .range(..end.as_bytes())
            .keys()
            .filter_map(|kv| match kv {
                Ok(k) => k
                    .get(21..)
                    .map(|id| Ok(String::from_utf8_lossy(id).into_owned())),
                Err(e) => Some(Err(e.into())),
            })
    }

    /// The contracts-by-tenant and migrations-by-owner indexes, once, for a directory
    /// written before they existed.
    pub(super) fn with_owner_indexes(self) -> Result<SledStore> {
        let meta = self.db.open_tree("meta")?;
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
        self.db.flush()?;
        Ok(self)
    }

    /// The ids under `{owner}/` in an index whose keys are `{owner}/{id}`.
    fn ids_under(tree: &sled::Tree, owner: &str) -> Result<Vec<String>> {
        let prefix = format!("{owner}/");
        tree.scan_prefix(prefix.as_bytes())
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?[prefix.len()..]).into_owned()))
            .collect()
    }

    /// Build the `contract_changes` and `printer_contracts` indexes once, from the
    /// records, for a state directory written before they existed (format 1). A flag
    /// in `meta` says they are complete, so a crash during the build builds again.
    pub(super) fn with_indexes(self) -> Result<SledStore> {
        let meta = self.db.open_tree("meta")?;
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
        self.db.flush()?;
        Ok(self)
    }

    /// The due index (every open change due now) and the ledger indexes, once, for a
    /// directory written before they existed.
    pub(super) fn with_due_index(self) -> Result<SledStore> {
        let meta = self.db.open_tree("meta")?;
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
        self.db.flush()?;
        Ok(self)
    }

    fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>> {
        match tree.get(key.as_bytes())? {
            Some(v) => Ok(Some(decode(key.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    fn insert_new<T: Serialize>(tree: &sled::Tree, key: &str, v: &T) -> Result<Inserted> {
        let r = tree.compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(encode(v)))?;
        tree.flush()?;
        Ok(if r.is_ok() {
            Inserted::New
        } else {
            Inserted::Exists
        })
    }

    fn leave_scheduled(
        &self,
        id: &str,
        state: MigrationState,
        change: Option<&ContractChange>,
    ) -> Result<bool> {
        use sled::transaction::ConflictableTransactionError;
        use sled::Transactional;
        let rec = change.map(|c| ChangeRecord {
            change: c.clone(),
            setup: SetupState::default(),
        });
        let now = Utc::now();
        // Only an executed migration reports itself (a cancel or a supersession not).
        let tenant = match (&state, self.migration(id)?) {
            (MigrationState::Executed { .. }, Some(m)) => Some(m.decision.tenant),
            _ => None,
        };
        let outbox = self.outbox(tenant.as_ref())?;
        let r = (
            &self.migrations,
            &self.scheduled,
            &self.changes,
            &self.contract_changes,
            &self.due,
            &self.due_of,
            &self.wh_events,
            &self.wh_order,
            &self.wh_seq,
            &self.wh_deliveries,
            &self.wh_due,
        )
            .transaction(
                |(
                    migrations,
                    scheduled,
                    changes,
                    by_contract,
                    due,
                    due_of,
                    events,
                    order,
                    seq,
                    deliveries,
                    wh_due,
                )| {
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
                    let reported: Vec<_> =
                        crate::model::migration_event(&m, now).into_iter().collect();
                    outbox.write((events, order, seq, deliveries, wh_due), &reported, now)?;
                    Ok(true)
                },
            );
        let done = r.map_err(|e| tx_error(e, id))?;
        self.db.flush()?;
        Ok(done)
    }
}

impl Contracts for SledStore {
    fn prune_refused_migrations(
        &self,
        before: DateTime<Utc>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<Batch> {
        let r = super::scan::scan(&self.migrations, from, max_keys, |k, v, _| {
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

    fn contracts_of_tenant(&self, tenant: &Id) -> Result<Vec<Contract>> {
        let mut out = Vec::new();
        for id in Self::ids_under(&self.contracts_by_tenant, tenant.as_str())? {
            out.extend(Self::get::<Contract>(&self.contracts, &id)?);
        }
        Ok(out)
    }

    fn migrations_of(&self, owner: LedgerOwner<'_>) -> Result<Vec<Migration>> {
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

    fn add_tenant(&self, t: &Tenant) -> Result<Inserted> {
        Self::insert_new(&self.tenants, t.id.as_str(), t)
    }
    fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        Self::get(&self.tenants, id)
    }
    fn tenants(&self) -> Result<Vec<Tenant>> {
        Self::all(&self.tenants)
    }

    fn add_plan(&self, p: &Plan) -> Result<Inserted> {
        Self::insert_new(&self.plans, p.id.as_str(), p)
    }
    fn put_plan(&self, p: &Plan) -> Result<()> {
        self.plans.insert(p.id.as_str().as_bytes(), encode(p))?;
        self.plans.flush()?;
        Ok(())
    }
    fn plan(&self, id: &str) -> Result<Option<Plan>> {
        Self::get(&self.plans, id)
    }
    fn plans(&self) -> Result<Vec<Plan>> {
        Self::all(&self.plans)
    }

    fn add_reseller(&self, r: &Reseller) -> Result<Inserted> {
        Self::insert_new(&self.resellers, r.id.as_str(), r)
    }
    fn reseller(&self, id: &str) -> Result<Option<Reseller>> {
        Self::get(&self.resellers, id)
    }
    fn resellers(&self) -> Result<Vec<Reseller>> {
        Self::all(&self.resellers)
    }

    fn next_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    fn add_migration(&self, m: &Migration) -> Result<Inserted> {
        use sled::Transactional;
        let by_t = format!("{}/{}", m.decision.tenant, m.id);
        let by_c = format!("{}/{}", m.decision.contract, m.id);
        let now = Utc::now();
        let reported: Vec<_> = crate::model::migration_event(m, m.decision.decided_at)
            .into_iter()
            .collect();
        let outbox = self.outbox((!reported.is_empty()).then_some(&m.decision.tenant))?;
        let r = (
            &self.migrations,
            &self.scheduled,
            &self.migrations_by_tenant,
            &self.migrations_by_contract,
            &self.wh_events,
            &self.wh_order,
            &self.wh_seq,
            &self.wh_deliveries,
            &self.wh_due,
        )
            .transaction(
                |(
                    migrations,
                    scheduled,
                    by_tenant,
                    by_contract,
                    events,
                    order,
                    seq,
                    deliveries,
                    due,
                )| {
                    if migrations.get(m.id.as_bytes())?.is_some() {
                        return Ok(Inserted::Exists);
                    }
                    migrations.insert(m.id.as_bytes(), encode(m))?;
                    by_tenant.insert(by_t.as_bytes(), &[] as &[u8])?;
                    by_contract.insert(by_c.as_bytes(), &[] as &[u8])?;
                    if m.state == MigrationState::Scheduled {
                        scheduled.insert(m.id.as_bytes(), encode(&Due::of(m)))?;
                    }
                    outbox.write((events, order, seq, deliveries, due), &reported, now)?;
                    Ok(Inserted::New)
                },
            );
        let r = r.map_err(|e| tx_error(e, &m.id))?;
        self.db.flush()?;
        Ok(r)
    }
    fn migration(&self, id: &str) -> Result<Option<Migration>> {
        Self::get(&self.migrations, id)
    }
    fn migrations(&self) -> Result<Vec<Migration>> {
        Self::all(&self.migrations)
    }

    fn scheduled(&self) -> Result<Vec<Due>> {
        Self::all(&self.scheduled)
    }

    fn finish_migration(&self, id: &str, state: MigrationState) -> Result<bool> {
        self.leave_scheduled(id, state, None)
    }

    fn execute_migration(&self, migration_id: &str, change: &ContractChange) -> Result<bool> {
        let state = MigrationState::Executed {
            change_id: change.id.clone(),
            at: change.requested_at,
        };
        self.leave_scheduled(migration_id, state, Some(change))
    }

    fn contract(&self, id: &str) -> Result<Option<Contract>> {
        Self::get(&self.contracts, id)
    }
    fn contracts(&self) -> Result<Vec<Contract>> {
        Self::all(&self.contracts)
    }

    fn create_contract(
        &self,
        c: &Contract,
        start: &ContractChange,
        allow_shared: bool,
    ) -> Result<Created> {
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
                    // Every printer is checked before any is claimed: a refusal
                    // returns Ok, which commits what the closure wrote so far.
                    let mut free = Vec::new();
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
                            None => free.push(key),
                        }
                    }
                    for key in free {
                        printers.insert(key.as_bytes(), c.id.as_str().as_bytes())?;
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

    fn add_change(&self, change: &ContractChange) -> Result<Inserted> {
        use sled::transaction::ConflictableTransactionError as E;
        use sled::Transactional;
        // (Contracts are never removed: checking before the transaction is enough.)
        if !self.contracts.contains_key(change.contract.as_str())? {
            return Err(StoreError::Invalid {
                key: change.id.clone(),
                message: format!("contract {} does not exist", change.contract),
            });
        }
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

    fn save_change(&self, rec: &ChangeRecord, due_at: Option<DateTime<Utc>>) -> Result<()> {
        use sled::Transactional;
        let due_at = if rec.setup.settled { None } else { due_at };
        let value = encode(rec);
        let id = rec.change.id.as_str();
        let now = Utc::now();
        // A change that settles reports it, in the same transaction.
        let tenant = match rec.setup.settled {
            true => self.tenant_of(&rec.change.contract)?,
            false => None,
        };
        let reported: Vec<_> = tenant
            .as_ref()
            .and_then(|t| crate::model::settled_event(t, rec, now))
            .into_iter()
            .collect();
        let outbox = self.outbox(tenant.as_ref())?;
        (
            &self.changes,
            &self.due,
            &self.due_of,
            &self.wh_events,
            &self.wh_order,
            &self.wh_seq,
            &self.wh_deliveries,
            &self.wh_due,
        )
            .transaction(
                |(changes, due, due_of, events, order, seq, deliveries, wh_due)| {
                    changes.insert(id.as_bytes(), value.as_slice())?;
                    set_due(due, due_of, id, due_at)?;
                    outbox.write((events, order, seq, deliveries, wh_due), &reported, now)
                },
            )
            .map_err(|e| tx_error(e, id))?;
        self.db.flush()?;
        Ok(())
    }

    fn due_changes(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<ChangeRecord>> {
        self.due_ids(now)
            .take(limit)
            .filter_map(|id| {
                id.and_then(|id| Self::get::<ChangeRecord>(&self.changes, &id))
                    .transpose()
            })
            .collect()
    }

    fn claim_due(
        &self,
        claim: &Claim,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>> {
        let mut claims = self.claims();
        let mut out = Vec::new();
        for id in self.due_ids(now) {
            if out.len() >= limit {
                break;
            }
            let id = id?;
            if claims
                .get(&id)
                .is_some_and(|h| h.owner != claim.owner && h.until >= now)
            {
                continue;
            }
            if let Some(rec) = Self::get::<ChangeRecord>(&self.changes, &id)? {
                claims.insert(
                    id,
                    Held {
                        owner: claim.owner.clone(),
                        until: now + claim.lease,
                        rewake: false,
                    },
                );
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn save_claimed(
        &self,
        claim: &Claim,
        rec: &ChangeRecord,
        due_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let mut claims = self.claims();
        let id = rec.change.id.as_str();
        let rewake = match claims.get(id) {
            Some(h) if h.owner == claim.owner => h.rewake,
            _ => return Ok(false),
        };
        let due_at = match (rewake, due_at) {
            (true, Some(d)) => Some(d.min(Utc::now())),
            (true, None) => Some(Utc::now()),
            (false, d) => d,
        };
        self.save_change(rec, due_at)?;
        claims.remove(id);
        Ok(true)
    }

    fn wake_change(&self, change_id: &str) -> Result<()> {
        if let Some(h) = self.claims().get_mut(change_id) {
            h.rewake = true;
        }
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

    fn change(&self, id: &str) -> Result<Option<ChangeRecord>> {
        Self::get(&self.changes, id)
    }

    fn changes_of(&self, contract: &Id) -> Result<Vec<ChangeRecord>> {
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

    fn contract_of_printer(&self, tenant: &Id, printer: &Id) -> Result<Option<String>> {
        Ok(self
            .printer_contracts
            .get(printer_key(tenant, printer).as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn open_changes(&self) -> Result<Vec<ChangeRecord>> {
        let mut out = Vec::new();
        for kv in self.due_of.iter().keys() {
            let id = String::from_utf8_lossy(&kv?).into_owned();
            if let Some(rec) = Self::get::<ChangeRecord>(&self.changes, &id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn next_version(&self, tenant: &Id, printer: &Id) -> Result<u64> {
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

    fn append(&self, change_id: &str, event: Event) -> Result<Option<TimelineEntry>> {
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
        // A fault reports itself, in the same transaction.
        let owner = match crate::model::reported_on_timeline(&entry.event) {
            true => self.owner_of_change(change_id)?,
            false => None,
        };
        let reported: Vec<_> = match owner {
            Some((tenant, contract)) => {
                crate::model::timeline_event(&tenant, &contract, change_id, &entry.event, entry.at)
                    .into_iter()
                    .collect()
            }
            None => Vec::new(),
        };
        let outbox = self.outbox(reported.first().map(|e| &e.tenant))?;
        use sled::transaction::ConflictableTransactionError;
        use sled::Transactional;
        let added = (
            &self.timeline,
            &self.timeline_once,
            &self.wh_events,
            &self.wh_order,
            &self.wh_seq,
            &self.wh_deliveries,
            &self.wh_due,
        )
            .transaction(|(timeline, index, events, order, seq, deliveries, due)| {
                if let Some(once) = &once {
                    if index.get(once.as_bytes())?.is_some() {
                        return Ok(false);
                    }
                    index.insert(once.as_bytes(), key.as_bytes())?;
                }
                timeline.insert(key.as_bytes(), value.as_slice())?;
                outbox.write((events, order, seq, deliveries, due), &reported, entry.at)?;
                Ok::<bool, ConflictableTransactionError<()>>(true)
            })
            .map_err(|e| tx_error(e, &key))?;
        self.timeline.flush()?;
        Ok(added.then_some(entry))
    }

    fn timeline(&self, change_id: &str) -> Result<Vec<TimelineEntry>> {
        let prefix = format!("{change_id}/");
        self.timeline
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    fn add_ledger(&self, e: &LedgerEntry) -> Result<Inserted> {
        use sled::Transactional;
        let value = encode(e);
        let (by_c, by_t) = (
            format!("{}/{}", e.contract, e.key),
            format!("{}/{}", e.tenant, e.key),
        );
        // The events it reports go in the same transaction (the outbox).
        let events = crate::model::ledger_events(e);
        let outbox = self.outbox(Some(&e.tenant))?;
        let now = Utc::now();
        let r = (
            &self.ledger,
            &self.ledger_by_contract,
            &self.ledger_by_tenant,
            &self.wh_events,
            &self.wh_order,
            &self.wh_seq,
            &self.wh_deliveries,
            &self.wh_due,
        )
            .transaction(
                |(ledger, by_contract, by_tenant, events_t, order, seq, deliveries, due)| {
                    if ledger.get(e.key.as_bytes())?.is_some() {
                        return Ok(Inserted::Exists);
                    }
                    ledger.insert(e.key.as_bytes(), value.as_slice())?;
                    by_contract.insert(by_c.as_bytes(), &[] as &[u8])?;
                    by_tenant.insert(by_t.as_bytes(), &[] as &[u8])?;
                    outbox.write((events_t, order, seq, deliveries, due), &events, now)?;
                    Ok(Inserted::New)
                },
            )
            .map_err(|x| tx_error(x, &e.key))?;
        self.db.flush()?;
        Ok(r)
    }

    fn ledger_of(&self, owner: LedgerOwner<'_>) -> Result<Vec<LedgerEntry>> {
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

    fn ledger_entry(&self, key: &str) -> Result<Option<LedgerEntry>> {
        Self::get(&self.ledger, key)
    }

    fn ledger(&self) -> Result<Vec<LedgerEntry>> {
        Self::all(&self.ledger)
    }

    fn shipment_sent(&self, key: &str) -> Result<bool> {
        Ok(self.shipments_sent.contains_key(key.as_bytes())?)
    }

    fn mark_shipment_sent(&self, key: &str, at: DateTime<Utc>) -> Result<()> {
        self.shipments_sent.insert(key.as_bytes(), encode(&at))?;
        self.shipments_sent.flush()?;
        Ok(())
    }

    fn page_json(&self, list: List, after: Option<&str>, limit: usize) -> Result<Page<Vec<u8>>> {
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
            items: p.items.into_iter().map(|(_, v)| v.to_vec()).collect(),
            next: p.next,
        })
    }

    fn page_of_json(
        &self,
        index: OwnerIndex,
        owner: &Id,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Vec<u8>>> {
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
            items.extend(records.get(id.as_bytes())?.map(|v| v.to_vec()));
        }
        Ok(Page {
            items,
            next: p.next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChangeKind;
    use std::collections::BTreeMap;

    #[test]
    fn versions_are_monotonic_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let (t, p): (Id, Id) = ("acme".parse().unwrap(), "p1".parse().unwrap());
        let before = Utc::now().timestamp_millis() as u64;
        let (v1, v2) = {
            let s = SledStore::open(d.path()).unwrap();
            (
                s.next_version(&t, &p).unwrap(),
                s.next_version(&t, &p).unwrap(),
            )
        };
        assert!(v1 >= before && v2 > v1, "{before} {v1} {v2}");
        // sled's flusher thread may hold the lock for a moment after the drop.
        let mut s = SledStore::open(d.path());
        for _ in 0..100 {
            if s.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            s = SledStore::open(d.path());
        }
        let s = s.unwrap();
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
        let s = SledStore::open(d.path()).unwrap();
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
        s.db.open_tree("meta")
            .unwrap()
            .remove("indexes_v2")
            .unwrap();
        assert!(s.changes_of(&c.id).unwrap().is_empty());
        let s = s.with_indexes().unwrap();
        assert_eq!(s.changes_of(&c.id).unwrap().len(), 1);
        assert_eq!(
            s.contract_of_printer(&c.tenant, &c.printers[0]).unwrap(),
            Some("k".into())
        );
    }
}
