//! Operations on tenants, plans and contracts, with validation and machine-readable
//! errors ([`OpError`]: a [`Kind`], a stable code, a message; the HTTP layer alone
//! maps kinds to status codes). The HTTP API and the CLI are thin layers over these;
//! plan migrations are a service of their own over them ([`migrations::Migrations`]).

pub mod migrations;
pub mod webhooks;

use crate::billing::period;
use crate::engine::Waker;
use crate::model::{
    change_id, check_currency, parse_time_zone, ChangeKind, Contract, ContractChange, Plan,
    Reseller, ServiceKind, Tenant,
};
use crate::model::{ChangeRecord, Event, LedgerEntry, TimelineEntry};
use crate::plans::catalog::Catalog;
use crate::store::{Created, Inserted, Store, StoreError};
use chrono::{DateTime, Utc};
use platen_protocol::{DesiredConfig, Id, SettingValue};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How often a change is built again on top of a concurrent one that took its
/// sequence number before giving up with a conflict.
pub(crate) const SEQ_ATTEMPTS: usize = 5;

/// Most printers one contract may cover.
pub const MAX_PRINTERS: usize = 1000;

/// How far back a contract or change may take effect by default: a day covers a
/// contract that started this morning and is entered this afternoon, and bounds what
/// a mistaken or hostile date can make the setup engine owe.
pub const DEFAULT_MAX_BACKDATE: chrono::Duration = chrono::Duration::hours(24);

/// How far ahead an effective time may lie (longer is a typo, not a contract).
pub const MAX_AHEAD_DAYS: i64 = 3 * 366;

/// Limits on what a request may ask for.
#[derive(Clone, Debug)]
pub struct Policy {
    /// An `effective_at` earlier than its request by more than this is refused
    /// (`effective_at_out_of_range`). Compensation runs from `effective_at`, so this
    /// is the most unavailable time a backdated contract can claim.
    pub max_backdate: chrono::Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_backdate: DEFAULT_MAX_BACKDATE,
        }
    }
}

impl Policy {
    /// `at` (default `now`) if it lies within [now − max_backdate, now + 3 years].
    pub fn effective_at(
        &self,
        at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, OpError> {
        let Some(at) = at else { return Ok(now) };
        let earliest = now - self.max_backdate;
        let latest = now + chrono::Duration::days(MAX_AHEAD_DAYS);
        if at < earliest || at > latest {
            return Err(OpError::new(
                Kind::Invalid,
                "effective_at_out_of_range",
                format!(
                    "effective_at {} is outside [{}, {}]: at most {} s before the request (api.max_backdate_secs) and {MAX_AHEAD_DAYS} days after it",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    earliest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    self.max_backdate.num_seconds()
                ),
            ));
        }
        Ok(at)
    }
}

/// What kind of failure an operation met. The domain says what went wrong; only the
/// HTTP layer ([`crate::http`]) turns a kind into a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request itself is wrong (a value out of range, an unknown plan it names).
    Invalid,
    /// What the request is about does not exist.
    NotFound,
    /// The request clashes with what is stored (exists already, pending, taken).
    Conflict,
    /// The actor may not do this.
    Forbidden,
    /// The store did not answer; the same request may succeed later.
    Unavailable,
    /// Stored data contradicts an invariant, or the catalog lacks a rule.
    Internal,
}

/// An operation's error: its kind, a stable machine-readable code, and a message
/// for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for OpError {}

impl OpError {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> OpError {
        OpError {
            kind,
            code,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> OpError {
        Self::new(Kind::Invalid, "invalid", message)
    }
    fn not_found(code: &'static str, message: impl Into<String>) -> OpError {
        Self::new(Kind::NotFound, code, message)
    }
}

impl From<StoreError> for OpError {
    /// The backend unreachable: `Unavailable` (try again); anything else: `Internal`.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Backend { .. } => {
                OpError::new(Kind::Unavailable, "storage_unavailable", e.to_string())
            }
            _ => OpError::new(Kind::Internal, "storage", e.to_string()),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewContract {
    pub id: Id,
    pub tenant: Id,
    pub printers: Vec<Id>,
    pub plan: Id,
    /// Default: now.
    pub effective_at: Option<DateTime<Utc>>,
    pub time_zone: String,
    pub currency: String,
    /// Overrides on top of the plan's config template.
    #[serde(default)]
    pub settings: BTreeMap<String, SettingValue>,
    /// Minimum term in billing periods (none: month to month).
    #[serde(default)]
    pub term_months: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    /// The contract's current plan, if given; another plan is refused
    /// (`use_migrations`): plan changes are migrations, decided by the catalog.
    pub plan: Option<Id>,
    /// Setting overrides to merge.
    #[serde(default)]
    pub settings: BTreeMap<String, SettingValue>,
    /// Default: now.
    pub effective_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChangeSummary {
    pub id: String,
    pub seq: u32,
    pub change: ChangeKind,
    pub plan: Id,
    pub effective_at: DateTime<Utc>,
    /// `setting_up`, `completed` (compensation may still be pending) or `settled`.
    pub state: String,
    pub completed_at: Option<DateTime<Utc>>,
    pub config_fault: Option<String>,
    /// Whose side the config fault is on (`provider` or `customer`, with evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_fault_cause: Option<crate::model::Cause>,
    pub service_fault: Option<String>,
    pub printers: BTreeMap<Id, PrinterState>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrinterState {
    pub versions: Vec<u64>,
    pub config_confirmed_at: Option<DateTime<Utc>>,
    pub service_confirmed_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PageCap {
    pub period: String,
    pub base: u64,
    pub extra: u64,
    pub total: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContractStatus {
    pub contract: Contract,
    pub plan: Plan,
    pub settings: BTreeMap<String, SettingValue>,
    pub changes: Vec<ChangeSummary>,
    /// Page caps of the periods that have extra pages, and the current one.
    pub page_caps: Vec<PageCap>,
    /// Sum of fee credits in the ledger, in minor units of `contract.currency`.
    pub credits_total: u64,
}

#[derive(Clone)]
pub struct Ops {
    store: Store,
    /// Wakes the engine after a change is requested.
    engine: Waker,
    /// The plan catalog and migration rules, when one is loaded.
    catalog: Option<Arc<Catalog>>,
    policy: Policy,
    /// Held while a change is built on the contract's last one and stored: in one
    /// process, changes (API requests, executed migrations) take their sequence
    /// numbers in turn; between instances the store's unique key decides and the
    /// loser builds again ([`SEQ_ATTEMPTS`]).
    building: Arc<std::sync::Mutex<()>>,
}

fn check_settings(settings: &BTreeMap<String, SettingValue>) -> Result<(), OpError> {
    // The same limits as a desired config on the wire.
    DesiredConfig {
        printer_id: "check".parse().expect("valid id"),
        version: 1,
        issued_at: Utc::now(),
        settings: settings.clone(),
        signature: None,
    }
    .validate()
    .map_err(|e| OpError::invalid(format!("settings: {e}")))
}

impl Ops {
    pub fn new(store: Store, engine: Waker) -> Ops {
        Ops {
            store,
            engine,
            catalog: None,
            policy: Policy::default(),
            building: Arc::default(),
        }
    }

    /// Use `policy` for what requests may ask for.
    pub fn with_policy(mut self, policy: Policy) -> Ops {
        self.policy = policy;
        self
    }

    /// Use a catalog: its plans are written to the store (the file is authoritative
    /// for the plans it defines) and plan migrations follow its rules.
    pub fn with_catalog(mut self, catalog: Catalog) -> Result<Ops, StoreError> {
        for p in catalog.plans.values() {
            self.store.put_plan(p)?;
        }
        self.catalog = Some(Arc::new(catalog));
        Ok(self)
    }

    pub fn catalog(&self) -> Option<&Catalog> {
        self.catalog.as_deref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn create_reseller(&self, r: Reseller) -> Result<Reseller, OpError> {
        if r.name.trim().is_empty() {
            return Err(OpError::invalid("name must not be empty"));
        }
        match self.store.add_reseller(&r)? {
            Inserted::New => Ok(r),
            Inserted::Exists => Err(OpError::new(
                Kind::Conflict,
                "reseller_exists",
                format!("reseller {} exists", r.id),
            )),
        }
    }

    pub fn create_tenant(&self, t: Tenant) -> Result<Tenant, OpError> {
        if t.name.trim().is_empty() {
            return Err(OpError::invalid("name must not be empty"));
        }
        if let Some(r) = &t.reseller {
            if self.store.reseller(r.as_str())?.is_none() {
                return Err(OpError::new(
                    Kind::NotFound,
                    "unknown_reseller",
                    format!("no reseller {r}"),
                ));
            }
        }
        match self.store.add_tenant(&t)? {
            Inserted::New => Ok(t),
            Inserted::Exists => Err(OpError::new(
                Kind::Conflict,
                "tenant_exists",
                format!("tenant {} exists", t.id),
            )),
        }
    }

    pub fn create_plan(&self, p: Plan) -> Result<Plan, OpError> {
        if self.catalog.is_some() {
            return Err(OpError::new(
                Kind::Conflict,
                "catalog_managed",
                "plans come from the catalog file; edit it and restart the cloud",
            ));
        }
        p.validate().map_err(OpError::invalid)?;
        check_settings(&p.config_template)?;
        match self.store.add_plan(&p)? {
            Inserted::New => Ok(p),
            Inserted::Exists => Err(OpError::new(
                Kind::Conflict,
                "plan_exists",
                format!("plan {} exists", p.id),
            )),
        }
    }

    fn plan(&self, id: &Id) -> Result<Plan, OpError> {
        self.store
            .plan(id.as_str())?
            .ok_or_else(|| OpError::not_found("unknown_plan", format!("no plan {id}")))
    }

    pub fn create_contract(&self, n: NewContract) -> Result<(Contract, ContractChange), OpError> {
        if self.store.tenant(n.tenant.as_str())?.is_none() {
            return Err(OpError::new(
                Kind::NotFound,
                "unknown_tenant",
                format!("no tenant {}", n.tenant),
            ));
        }
        let plan = self.plan(&n.plan)?;
        parse_time_zone(&n.time_zone).map_err(OpError::invalid)?;
        check_currency(&n.currency).map_err(OpError::invalid)?;
        if n.term_months.is_some_and(|m| m == 0 || m > 120) {
            return Err(OpError::invalid("term_months: between 1 and 120"));
        }
        if n.printers.is_empty() || n.printers.len() > MAX_PRINTERS {
            return Err(OpError::invalid(format!(
                "printers: between 1 and {MAX_PRINTERS}"
            )));
        }
        if n.printers.iter().collect::<BTreeSet<_>>().len() != n.printers.len() {
            return Err(OpError::invalid("printers: duplicate printer id"));
        }
        let mut settings = plan.config_template.clone();
        settings.extend(n.settings.clone());
        check_settings(&settings)?;
        let now = Utc::now();
        let effective_at = self.policy.effective_at(n.effective_at, now)?;
        let contract = Contract {
            id: n.id.clone(),
            tenant: n.tenant,
            printers: n.printers,
            plan: n.plan.clone(),
            effective_at,
            time_zone: n.time_zone,
            currency: n.currency,
            term_months: n.term_months,
            created_at: now,
        };
        let start = ContractChange {
            id: change_id(&contract.id, 1),
            contract: contract.id.clone(),
            seq: 1,
            change: ChangeKind::Start,
            effective_at: contract.effective_at,
            requested_at: now,
            plan: n.plan,
            settings,
        };
        let shared = self
            .catalog
            .as_ref()
            .is_some_and(|c| c.contracts.allow_shared_printers);
        match self.store.create_contract(&contract, &start, shared)? {
            Created::New => {}
            Created::Exists => {
                return Err(OpError::new(
                    Kind::Conflict,
                    "contract_exists",
                    format!("contract {} exists", contract.id),
                ))
            }
            Created::PrinterTaken { printer, contract } => {
                return Err(OpError::new(
                    Kind::Conflict,
                    "printer_under_contract",
                    format!(
                        "printer {printer} is covered by contract {contract}; one printer takes one contract unless the catalog sets [contracts] allow_shared_printers"
                    ),
                ))
            }
        }
        self.requested(&start)?;
        Ok((contract, start))
    }

    pub fn contract(&self, id: &str) -> Result<Contract, OpError> {
        self.store
            .contract(id)?
            .ok_or_else(|| OpError::not_found("unknown_contract", format!("no contract {id}")))
    }

    /// A settings change. Plan changes go through [`migrations::Migrations::migrate`], where the
    /// catalog's rules decide: there is no other way to change a plan.
    pub fn change_contract(&self, id: &str, req: ChangeRequest) -> Result<ContractChange, OpError> {
        let contract = self.contract(id)?;
        let same_plan = |last: &ChangeRecord| -> Result<(), OpError> {
            let Some(p) = &req.plan else { return Ok(()) };
            self.plan(p)?;
            if *p == last.change.plan {
                return Ok(());
            }
            Err(OpError::new(
                Kind::Invalid,
                "use_migrations",
                format!(
                    "plan changes go through POST /v1/migrations, where the catalog's rules decide whether and when {} may move to {p}",
                    contract.tenant
                ),
            ))
        };
        let mut last = self.last_change(&contract)?;
        same_plan(&last)?;
        if req.settings.is_empty() {
            return Err(OpError::invalid("nothing to change: give settings"));
        }
        let effective_at = self.policy.effective_at(req.effective_at, Utc::now())?;
        // The request names settings, not a sequence number: when another change
        // (an executed migration, another instance's request) takes the next
        // number first, this one goes on top of it.
        let _turn = self.building_turn();
        for attempt in 0..SEQ_ATTEMPTS {
            if attempt > 0 {
                last = self.last_change(&contract)?;
                same_plan(&last)?;
            }
            let mut settings = last.change.settings.clone();
            settings.extend(req.settings.clone());
            let change = self.next_change(
                &contract,
                &last,
                ChangeKind::SettingsChange {
                    settings: req.settings.clone(),
                },
                last.change.plan.clone(),
                settings,
                effective_at,
            )?;
            if self.store.add_change(&change)? == Inserted::New {
                self.requested(&change)?;
                return Ok(change);
            }
        }
        Err(OpError::new(
            Kind::Conflict,
            "conflict",
            "the contract kept changing while this change was made; retry",
        ))
    }

    /// This process's turn to build and store a change (see [`Ops::building`]).
    fn building_turn(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while building leaves nothing half-done in the lock's `()`.
        self.building.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn last_change(&self, contract: &Contract) -> Result<ChangeRecord, OpError> {
        self.store
            .changes_of(&contract.id)?
            .pop()
            .ok_or_else(|| OpError::new(Kind::Internal, "storage", "contract without start"))
    }

    /// The change after `last`, with its settings checked.
    fn next_change(
        &self,
        contract: &Contract,
        last: &ChangeRecord,
        kind: ChangeKind,
        plan: Id,
        settings: BTreeMap<String, SettingValue>,
        effective_at: DateTime<Utc>,
    ) -> Result<ContractChange, OpError> {
        check_settings(&settings)?;
        let seq = last.change.seq + 1;
        Ok(ContractChange {
            id: change_id(&contract.id, seq),
            contract: contract.id.clone(),
            seq,
            change: kind,
            effective_at,
            requested_at: Utc::now(),
            plan,
            settings,
        })
    }

    /// Record that a change was requested and wake the engine.
    fn requested(&self, change: &ContractChange) -> Result<(), OpError> {
        self.store.append(
            &change.id,
            Event::ChangeRequested {
                change: change.change.clone(),
                plan: change.plan.clone(),
                effective_at: change.effective_at,
            },
        )?;
        self.engine.wake();
        Ok(())
    }

    pub fn contract_status(&self, id: &str) -> Result<ContractStatus, OpError> {
        let contract = self.contract(id)?;
        let changes = self.store.changes_of(&contract.id)?;
        let current = changes
            .last()
            .ok_or_else(|| OpError::new(Kind::Internal, "storage", "contract without start"))?;
        let plan = self.plan(&current.change.plan)?;
        let ledger: Vec<LedgerEntry> = self.ledger(Some(&contract.id), None)?;
        let mut extra: BTreeMap<String, u64> = BTreeMap::new();
        for e in &ledger {
            if let Some(x) = &e.part.extra_pages {
                let v = extra.entry(x.period.clone()).or_default();
                // A reversal takes pages back from what its interim entry gave.
                *v = if e.reverses.is_some() {
                    v.saturating_sub(x.pages)
                } else {
                    v.saturating_add(x.pages)
                };
            }
        }
        let mut page_caps = Vec::new();
        if let ServiceKind::FlatRatePrint { page_cap, .. } = plan.service {
            extra
                .entry(period::containing(contract.tz(), Utc::now()).label())
                .or_default();
            for (period, extra) in extra {
                page_caps.push(PageCap {
                    period,
                    base: page_cap,
                    extra,
                    total: page_cap.saturating_add(extra),
                });
            }
        }
        Ok(ContractStatus {
            credits_total: u64::try_from(
                ledger
                    .iter()
                    .map(LedgerEntry::signed_credit)
                    .sum::<i128>()
                    .max(0),
            )
            .unwrap_or(u64::MAX),
            settings: current.change.settings.clone(),
            changes: changes.iter().map(summary).collect(),
            contract,
            plan,
            page_caps,
        })
    }

    pub fn timeline(&self, id: &str) -> Result<Vec<TimelineEntry>, OpError> {
        let contract = self.contract(id)?;
        let mut all = Vec::new();
        for c in self.store.changes_of(&contract.id)? {
            all.extend(self.store.timeline(&c.change.id)?);
        }
        Ok(all)
    }

    pub fn ledger(
        &self,
        contract: Option<&Id>,
        tenant: Option<&Id>,
    ) -> Result<Vec<LedgerEntry>, OpError> {
        use crate::store::LedgerOwner;
        // Read by key when the query names its owner (an index, not the whole ledger).
        let entries = match (contract, tenant) {
            (Some(c), _) => self.store.ledger_of(LedgerOwner::Contract(c))?,
            (None, Some(t)) => self.store.ledger_of(LedgerOwner::Tenant(t))?,
            (None, None) => self.store.ledger()?,
        };
        Ok(entries
            .into_iter()
            .filter(|e| contract.is_none_or(|c| &e.contract == c))
            .filter(|e| tenant.is_none_or(|t| &e.tenant == t))
            .collect())
    }
}

fn summary(r: &ChangeRecord) -> ChangeSummary {
    let s = &r.setup;
    let mut printers: BTreeMap<Id, PrinterState> = BTreeMap::new();
    for (p, ps) in &s.printers {
        let st = printers.entry(p.clone()).or_default();
        st.versions = ps.published.keys().copied().collect();
        st.config_confirmed_at = ps.confirmed_at;
    }
    for (p, ss) in &s.services {
        printers.entry(p.clone()).or_default().service_confirmed_at = ss.confirmed_at;
    }
    ChangeSummary {
        id: r.change.id.clone(),
        seq: r.change.seq,
        change: r.change.change.clone(),
        plan: r.change.plan.clone(),
        effective_at: r.change.effective_at,
        state: if s.settled {
            "settled"
        } else if s.completed_at.is_some() {
            "completed"
        } else {
            "setting_up"
        }
        .into(),
        completed_at: s.completed_at,
        config_fault: s.config_fault.as_ref().map(|f| f.reason.clone()),
        config_fault_cause: s.config_fault.as_ref().map(|f| f.cause.clone()),
        service_fault: s.service_fault.as_ref().map(|f| f.reason.clone()),
        printers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> (tempfile::TempDir, Ops) {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open_sled(d.path()).unwrap();
        (d, Ops::new(store, Waker::default()))
    }

    fn setup(o: &Ops) {
        o.create_tenant(Tenant {
            id: "acme".parse().unwrap(),
            name: "Acme".into(),
            reseller: None,
        })
        .unwrap();
        o.create_plan(serde_json::from_str(r#"{"id":"flat","name":"Flat 1000","service":{"kind":"flat_rate_print","monthly_fee":4900,"page_cap":1000},"config_template":{"sysContact":"billing@acme"}}"#).unwrap()).unwrap();
        o.create_plan(
            serde_json::from_str(
                r#"{"id":"basic","name":"Basic","service":{"kind":"basic","monthly_fee":900}}"#,
            )
            .unwrap(),
        )
        .unwrap();
    }

    fn new_contract(id: &str) -> NewContract {
        serde_json::from_value(serde_json::json!({
            "id": id, "tenant": "acme", "printers": ["p1"], "plan": "flat",
            "time_zone": "Europe/Berlin", "currency": "EUR", "settings": {"sysLocation": "Floor 1"}
        }))
        .unwrap()
    }

    #[test]
    fn errors_have_codes() {
        let (_d, o) = ops();
        setup(&o);
        let cases: Vec<(NewContract, Kind, &str)> = vec![
            (
                NewContract {
                    tenant: "nobody".parse().unwrap(),
                    ..new_contract("c1")
                },
                Kind::NotFound,
                "unknown_tenant",
            ),
            (
                NewContract {
                    plan: "nope".parse().unwrap(),
                    ..new_contract("c1")
                },
                Kind::NotFound,
                "unknown_plan",
            ),
            (
                NewContract {
                    time_zone: "Mars/Base".into(),
                    ..new_contract("c1")
                },
                Kind::Invalid,
                "invalid",
            ),
            (
                NewContract {
                    currency: "euro".into(),
                    ..new_contract("c1")
                },
                Kind::Invalid,
                "invalid",
            ),
            (
                NewContract {
                    printers: vec![],
                    ..new_contract("c1")
                },
                Kind::Invalid,
                "invalid",
            ),
            (
                NewContract {
                    printers: vec!["p1".parse().unwrap(), "p1".parse().unwrap()],
                    ..new_contract("c1")
                },
                Kind::Invalid,
                "invalid",
            ),
        ];
        for (n, kind, code) in cases {
            let e = o.create_contract(n).unwrap_err();
            assert_eq!((e.kind, e.code), (kind, code), "{e}");
        }
        o.create_contract(new_contract("c1")).unwrap();
        let e = o.create_contract(new_contract("c1")).unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Conflict, "contract_exists"));
        let e = o
            .create_tenant(Tenant {
                id: "acme".parse().unwrap(),
                name: "again".into(),
                reseller: None,
            })
            .unwrap_err();
        assert_eq!(e.code, "tenant_exists");
        let e = o
            .change_contract(
                "zzz",
                ChangeRequest {
                    plan: None,
                    settings: BTreeMap::new(),
                    effective_at: None,
                },
            )
            .unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::NotFound, "unknown_contract"));
        let e = o
            .change_contract(
                "c1",
                ChangeRequest {
                    plan: Some("flat".parse().unwrap()),
                    settings: BTreeMap::new(),
                    effective_at: None,
                },
            )
            .unwrap_err();
        assert_eq!(
            e.code, "invalid",
            "same plan, no settings: nothing to change"
        );
    }

    /// Changes requested at once on one contract (several API requests, a migration
    /// executing) each get their own sequence number: none is refused because
    /// another took the number it first read.
    #[test]
    fn concurrent_changes_of_one_contract_all_land() {
        let (_d, o) = ops();
        setup(&o);
        o.create_contract(new_contract("c1")).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let o = o.clone();
                std::thread::spawn(move || {
                    for i in 0..5 {
                        let settings = BTreeMap::from([(
                            "sysContact".to_string(),
                            SettingValue::Text(format!("t{t}-{i}")),
                        )]);
                        let req = ChangeRequest {
                            plan: None,
                            settings,
                            effective_at: None,
                        };
                        o.change_contract("c1", req).expect("change lands");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let seqs: Vec<u32> = o
            .store
            .changes_of(&"c1".parse().unwrap())
            .unwrap()
            .iter()
            .map(|c| c.change.seq)
            .collect();
        assert_eq!(seqs, (1..=21).collect::<Vec<_>>());
    }

    /// Ids that are prefixes, suffixes and dotted variants of each other, across
    /// tenants: each contract sees exactly its own changes, and a change of one never
    /// touches another.
    #[test]
    fn ids_that_extend_each_other_stay_apart() {
        let (_d, o) = ops();
        setup(&o);
        o.create_tenant(Tenant {
            id: "globex".parse().unwrap(),
            name: "Globex".into(),
            reseller: None,
        })
        .unwrap();
        let ids = [
            "k", "k.globex", "k.1", "k.1.1", "k.10", "kk", "k-1", "1", "1.k",
        ];
        for (i, id) in ids.iter().enumerate() {
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            let n: NewContract = serde_json::from_value(serde_json::json!({
                "id": id, "tenant": tenant, "printers": [format!("p{i}")], "plan": "flat",
                "time_zone": "UTC", "currency": "EUR", "settings": {"sysLocation": *id}
            }))
            .unwrap();
            o.create_contract(n).unwrap();
        }
        let mut s = BTreeMap::new();
        s.insert("sysName".to_string(), SettingValue::Text("only k".into()));
        let c2 = o
            .change_contract(
                "k",
                ChangeRequest {
                    plan: None,
                    settings: s,
                    effective_at: None,
                },
            )
            .unwrap();
        assert_eq!((c2.id.as_str(), c2.contract.as_str()), ("k.2", "k"));
        for id in ids {
            let st = o.contract_status(id).unwrap();
            assert!(
                st.changes
                    .iter()
                    .all(|c| c.id.rsplit_once('.').unwrap().0 == id),
                "{id}: {:?}",
                st.changes.iter().map(|c| &c.id).collect::<Vec<_>>()
            );
            assert_eq!(st.changes.len(), if id == "k" { 2 } else { 1 }, "{id}");
            assert_eq!(st.settings["sysLocation"], SettingValue::Text(id.into()));
            for e in o.timeline(id).unwrap() {
                assert_eq!(e.change_id.rsplit_once('.').unwrap().0, id, "{id}");
            }
        }
    }

    #[test]
    fn a_printer_takes_one_contract_and_dates_are_bounded() {
        let (_d, o) = ops();
        setup(&o);
        o.create_contract(new_contract("c1")).unwrap();
        let e = o.create_contract(new_contract("c2")).unwrap_err();
        assert_eq!(
            (e.kind, e.code),
            (Kind::Conflict, "printer_under_contract"),
            "{e}"
        );
        assert!(e.message.contains("p1") && e.message.contains("c1"), "{e}");
        // Nothing of c2 was stored.
        assert_eq!(o.contract("c2").unwrap_err().kind, Kind::NotFound);
        // Effective times: a day back at most by default, three years ahead.
        let now = Utc::now();
        for (days, ok) in [
            (0, true),
            (-1, false),
            (-2, false),
            (-36500, false),
            (365, true),
            (1200, false),
        ] {
            let at = now
                + chrono::Duration::days(days)
                + chrono::Duration::minutes(if days < 0 { 0 } else { 1 });
            let n = NewContract {
                effective_at: Some(at),
                printers: vec![format!("q{}", days.abs()).parse().unwrap()],
                ..new_contract(&format!("d{}", days.abs()))
            };
            match o.create_contract(n) {
                Ok(_) => assert!(ok, "{days} days accepted"),
                Err(e) => {
                    assert!(!ok, "{days} days refused: {e}");
                    assert_eq!(
                        (e.kind, e.code),
                        (Kind::Invalid, "effective_at_out_of_range")
                    );
                }
            }
        }
        let e = o
            .change_contract(
                "c1",
                ChangeRequest {
                    plan: None,
                    settings: [("sysName".to_string(), SettingValue::Text("x".into()))].into(),
                    effective_at: Some(now - chrono::Duration::days(3)),
                },
            )
            .unwrap_err();
        assert_eq!(e.code, "effective_at_out_of_range");
        // A longer window is the operator's choice.
        let o = o.with_policy(Policy {
            max_backdate: chrono::Duration::days(7),
        });
        o.change_contract(
            "c1",
            ChangeRequest {
                plan: None,
                settings: [("sysName".to_string(), SettingValue::Text("x".into()))].into(),
                effective_at: Some(now - chrono::Duration::days(3)),
            },
        )
        .unwrap();
    }

    /// A reversal takes its amount and pages back: the contract's credits and page
    /// caps are interim − reversal.
    #[test]
    fn a_reversal_is_subtracted_from_credits_and_page_caps() {
        let (_d, o) = ops();
        setup(&o);
        o.create_contract(new_contract("c1")).unwrap();
        let s = ServiceKind::FlatRatePrint {
            monthly_fee: 2_678_400,
            page_cap: 3100,
        };
        let t = |x: &str| x.parse::<DateTime<Utc>>().unwrap();
        let decide = |t1: Option<&str>| match crate::billing::compensation::decide(
            &crate::billing::compensation::Input {
                service: &s,
                tz: chrono_tz::UTC,
                t0: t("2026-01-20T00:00:00Z"),
                t1: t1.map(t),
                fault: true,
                now: t("2026-02-03T00:00:00Z"),
            },
        ) {
            crate::billing::compensation::Decision::Final { parts }
            | crate::billing::compensation::Decision::Interim { parts } => parts,
            other => panic!("{other:?}"),
        };
        let interim = decide(None).remove(0);
        let fin = decide(Some("2026-01-31T23:59:00Z")).remove(0);
        let back = crate::billing::compensation::reversal(&interim, &fin).unwrap();
        let entry = |key: &str, reverses: Option<String>, part| LedgerEntry {
            key: key.into(),
            tenant: "acme".parse().unwrap(),
            contract: "c1".parse().unwrap(),
            change_id: "c1.1".into(),
            currency: "EUR".into(),
            created_at: Utc::now(),
            reverses,
            part,
        };
        o.store
            .add_ledger(&entry("c1.1/2026-01", None, interim.clone()))
            .unwrap();
        o.store
            .add_ledger(&entry(
                "c1.1/2026-01/reversal",
                Some("c1.1/2026-01".into()),
                back,
            ))
            .unwrap();
        let st = o.contract_status("c1").unwrap();
        assert_eq!(st.credits_total, fin.fee_credit);
        let pages = fin.extra_pages.as_ref().unwrap();
        let cap = st
            .page_caps
            .iter()
            .find(|c| c.period == pages.period)
            .unwrap();
        assert_eq!(cap.extra, pages.pages);
    }

    #[test]
    fn start_and_changes_derive_settings() {
        let (_d, o) = ops();
        setup(&o);
        let (_, start) = o.create_contract(new_contract("c1")).unwrap();
        assert_eq!(start.id, "c1.1");
        assert_eq!(
            start.settings.len(),
            2,
            "template + override: {:?}",
            start.settings
        );
        let mut s = BTreeMap::new();
        s.insert("sysName".to_string(), SettingValue::Text("PRN-1".into()));
        let c2 = o
            .change_contract(
                "c1",
                ChangeRequest {
                    plan: None,
                    settings: s,
                    effective_at: None,
                },
            )
            .unwrap();
        assert_eq!(c2.seq, 2);
        assert_eq!(c2.settings.len(), 3);
        assert!(matches!(c2.change, ChangeKind::SettingsChange { .. }));
        // A plan change is not a settings change: no path around the migration rules.
        let e = o
            .change_contract(
                "c1",
                ChangeRequest {
                    plan: Some("basic".parse().unwrap()),
                    settings: BTreeMap::new(),
                    effective_at: Some(Utc::now() - chrono::Duration::days(30)),
                },
            )
            .unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Invalid, "use_migrations"));
        let st = o.contract_status("c1").unwrap();
        assert_eq!(st.changes.len(), 2);
        assert_eq!(st.plan.id.as_str(), "flat");
        assert!(st.changes.iter().all(|c| c.state == "setting_up"));
        assert_eq!(
            o.timeline("c1").unwrap().len(),
            2,
            "one change_requested per change"
        );
    }
}
