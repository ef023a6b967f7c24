//! Plan migrations: requested by a tenant, a reseller for its tenants, or an
//! operator; decided by the catalog's rules over the tenant's usage; stored; executed
//! at their time by the scheduler ([`Migrations::run_due`], called by the server
//! on every tick, so scheduled migrations survive restarts).
//!
//! A refusal holds on every path: the request carries no date or policy, the
//! contract-change endpoint refuses plan changes (`use_migrations`), and execution
//! only runs what a rule allowed, at the time the rule gave.
//!
//! Execution creates the contract change (the new plan's config template plus the
//! contract's own setting overrides) and the migration's `executed` state in one
//! transaction; from there the change flows through config publication, read-back
//! verification and, if a fault delays it, compensation. At execution the contract
//! must still be on the migration's source plan, otherwise the migration is
//! `superseded`. The rules are not asked again: the decision stands as given.

use crate::billing::period;
use crate::billing::usage::contract_usage;
use crate::model::Event;
use crate::model::{Actor, Migration, MigrationDecision, MigrationState};
use crate::model::{ChangeKind, Contract, Plan, Tenant};
use crate::model::{Decision, Usage};
use crate::ops::{Kind, OpError, Ops};
use crate::plans::catalog;
use crate::store::{Inserted, StoreError};
use chrono::{DateTime, Utc};
use platen_protocol::{Id, SettingValue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracing::{info, warn};

/// Whether `actor` may act for `tenant`: operators for all, a tenant for itself, a
/// reseller for the tenants assigned to it. Pure.
pub fn may_act_for(actor: &Actor, tenant: &Tenant) -> bool {
    match actor {
        Actor::Operator => true,
        Actor::Tenant(t) => *t == tenant.id,
        Actor::Reseller(r) => tenant.reseller.as_ref() == Some(r),
    }
}

/// The setting overrides of a contract: its settings minus what its plan's template
/// gave (same name and value). They carry over to the new plan.
fn overrides(
    settings: &BTreeMap<String, SettingValue>,
    template: &BTreeMap<String, SettingValue>,
) -> BTreeMap<String, SettingValue> {
    settings
        .iter()
        .filter(|(k, v)| template.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationRequest {
    pub tenant: Id,
    /// Needed only when the tenant has more than one contract.
    pub contract: Option<Id>,
    /// The target plan.
    pub plan: Id,
    /// Decide and explain, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a request.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `dry_run`: nothing was stored.
    DryRun(MigrationDecision),
    Refused(Migration),
    Accepted(Migration),
}

/// The migrations service: decides requests by the catalog's rules, stores them,
/// executes the due ones and cancels on request. It changes contracts only through
/// the contract operations it holds, so a migration's change is checked and requested
/// (and wakes the engine) exactly like any other.
#[derive(Clone)]
pub struct Migrations {
    contracts: Ops,
}

impl Migrations {
    pub fn new(contracts: Ops) -> Migrations {
        Migrations { contracts }
    }

    fn catalog_or_conflict(&self) -> Result<&catalog::Catalog, OpError> {
        self.contracts.catalog.as_deref().ok_or_else(|| {
            OpError::new(
                Kind::Conflict,
                "no_catalog",
                "no plan catalog is loaded (platen-cloud serve --catalog FILE)",
            )
        })
    }

    fn catalog_plan(&self, id: &Id) -> Result<Plan, OpError> {
        match self
            .contracts
            .catalog
            .as_deref()
            .and_then(|c| c.plans.get(id))
        {
            Some(p) => Ok(p.clone()),
            None => self.contracts.plan(id),
        }
    }

    /// The tenant's contract for a request, checking who asks.
    fn migration_target(
        &self,
        actor: &Actor,
        tenant: &Id,
        contract: Option<&Id>,
    ) -> Result<Contract, OpError> {
        // A tenant the actor may not act for answers as one that does not exist.
        self.contracts
            .store
            .tenant(tenant.as_str())?
            .filter(|t| may_act_for(actor, t))
            .ok_or_else(|| {
                OpError::new(
                    Kind::NotFound,
                    "unknown_tenant",
                    format!("no tenant {tenant}"),
                )
            })?;
        let mut own: Vec<Contract> = self.contracts.store.contracts_of_tenant(tenant)?;
        match contract {
            Some(id) => own.into_iter().find(|c| &c.id == id).ok_or_else(|| {
                OpError::new(
                    Kind::NotFound,
                    "unknown_contract",
                    format!("tenant {tenant} has no contract {id}"),
                )
            }),
            None if own.len() == 1 => Ok(own.remove(0)),
            None if own.is_empty() => Err(OpError::new(
                Kind::NotFound,
                "unknown_contract",
                format!("tenant {tenant} has no contract"),
            )),
            None => Err(OpError::new(
                Kind::Invalid,
                "contract_required",
                format!("tenant {tenant} has {} contracts: name one", own.len()),
            )),
        }
    }

    /// The usage the rules see for a contract now.
    pub fn usage_of(
        &self,
        contract: &Contract,
        now: DateTime<Utc>,
    ) -> Result<(Usage, crate::model::ContractUsage), OpError> {
        let tz = contract.tz();
        let p = period::containing(tz, now);
        let samples = contract
            .printers
            .iter()
            .map(|pr| {
                Ok((
                    pr.clone(),
                    self.contracts.store.samples(&contract.tenant, pr, &p)?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let cu = contract_usage(&p, &samples);
        let seen = Usage {
            used: cu.used,
            telemetry: cu.telemetry,
            days_left: catalog::days_left(tz, now),
            supplies: cu.supplies,
        };
        Ok((seen, cu))
    }

    /// Decide a migration request and, unless it is a dry run, store it (refused or
    /// scheduled) and execute it at once if its time has come.
    pub fn migrate(&self, actor: &Actor, req: MigrationRequest) -> Result<Outcome, OpError> {
        self.migrate_at(actor, req, Utc::now())
    }

    /// [`Migrations::migrate`] as if it were `now` (tests; the API passes the clock).
    pub fn migrate_at(
        &self,
        actor: &Actor,
        req: MigrationRequest,
        now: DateTime<Utc>,
    ) -> Result<Outcome, OpError> {
        let catalog = self.catalog_or_conflict()?;
        let contract = self.migration_target(actor, &req.tenant, req.contract.as_ref())?;
        let last = self.contracts.last_change(&contract)?;
        let from = self.catalog_plan(&last.change.plan)?;
        let to = catalog.plans.get(&req.plan).cloned().ok_or_else(|| {
            OpError::new(
                Kind::NotFound,
                "unknown_plan",
                format!("no plan {} in the catalog", req.plan),
            )
        })?;
        if from.id == to.id {
            return Err(OpError::new(
                Kind::Invalid,
                "same_plan",
                format!("contract {} is on plan {} already", contract.id, to.id),
            ));
        }
        // The scheduled migrations are an index of their own: no history is read.
        let pending = match self
            .contracts
            .store
            .scheduled()?
            .into_iter()
            .find(|d| d.contract == contract.id)
        {
            Some(d) => self
                .contracts
                .store
                .migration(&d.id)?
                .filter(|m| m.state == MigrationState::Scheduled),
            None => None,
        };
        if let (Some(p), false) = (&pending, req.dry_run) {
            return Err(OpError::new(
                Kind::Conflict,
                "migration_pending",
                format!(
                    "migration {} to {} is scheduled for {}; cancel it first",
                    p.id,
                    p.decision.to_plan,
                    p.decision
                        .effective_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default()
                ),
            ));
        }
        let (seen, cu) = self.usage_of(&contract, now)?;
        let verdict = catalog.decide(&from, &to, &seen).ok_or_else(|| {
            OpError::new(
                Kind::Internal,
                "no_rule",
                "no rule matched: the catalog lacks a catch-all",
            )
        })?;
        let effective_at = match &verdict.decision {
            Decision::Allow { timing } => Some(catalog::effective_time(
                *timing,
                now,
                contract.tz(),
                (contract.effective_at, contract.term_months),
            )),
            Decision::Refuse { .. } => None,
        };
        let decision = MigrationDecision {
            tenant: contract.tenant.clone(),
            contract: contract.id.clone(),
            from_plan: from.id.clone(),
            to_plan: to.id.clone(),
            requested_by: actor.clone(),
            decided_at: now,
            verdict,
            effective_at,
            usage: seen,
            period: cu.period,
            printers: cu.printers,
        };
        if req.dry_run {
            return Ok(Outcome::DryRun(decision));
        }
        let refused = effective_at.is_none();
        let m = Migration {
            id: format!("{}.m{}", contract.id, self.contracts.store.next_id()?),
            state: if refused {
                MigrationState::Refused
            } else {
                MigrationState::Scheduled
            },
            decision,
        };
        if self.contracts.store.add_migration(&m)? == Inserted::Exists {
            return Err(OpError::new(
                Kind::Conflict,
                "conflict",
                "migration id taken; retry",
            ));
        }
        info!(migration = %m.id, rule = %m.decision.verdict.rule, by = %actor, refused, "migration decided");
        if refused {
            return Ok(Outcome::Refused(m));
        }
        self.run_due(now)?;
        let m = self.contracts.store.migration(&m.id)?.unwrap_or(m);
        Ok(Outcome::Accepted(m))
    }

    /// Execute every scheduled migration whose time has come. Idempotent: each runs
    /// once, even across crashes (see [`crate::store::Contracts::execute_migration`]).
    pub fn run_due(&self, now: DateTime<Utc>) -> Result<usize, OpError> {
        let mut n = 0;
        let scheduled = self.contracts.store.scheduled()?.into_iter();
        for due in scheduled.filter(|d| d.effective_at.is_some_and(|t| t <= now)) {
            // `execute` re-checks the state inside its transaction.
            if let Some(m) = self.contracts.store.migration(&due.id)? {
                if self.execute(&m)? {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn execute(&self, m: &Migration) -> Result<bool, OpError> {
        let d = &m.decision;
        let contract = self.contracts.contract(d.contract.as_str())?;
        let _turn = self.contracts.building_turn();
        for _ in 0..super::SEQ_ATTEMPTS {
            let last = self.contracts.last_change(&contract)?;
            if last.change.plan != d.from_plan {
                let reason = format!(
                    "contract {} is on plan {}, not {}, at the migration's time",
                    contract.id, last.change.plan, d.from_plan
                );
                warn!(migration = %m.id, %reason, "migration superseded");
                self.contracts.store.finish_migration(
                    &m.id,
                    MigrationState::Superseded {
                        reason,
                        at: Utc::now(),
                    },
                )?;
                return Ok(false);
            }
            let from = self.catalog_plan(&d.from_plan)?;
            let to = self.catalog_plan(&d.to_plan)?;
            let mut settings = to.config_template.clone();
            settings.extend(overrides(&last.change.settings, &from.config_template));
            let change = self.contracts.next_change(
                &contract,
                &last,
                ChangeKind::PlanChange {
                    from: d.from_plan.clone(),
                    to: d.to_plan.clone(),
                },
                d.to_plan.clone(),
                settings,
                d.effective_at.unwrap_or_else(Utc::now),
            )?;
            if self.contracts.store.execute_migration(&m.id, &change)? {
                self.contracts.requested(&change)?;
                self.contracts.store.append(
                    &change.id,
                    Event::MigrationExecuted {
                        migration: m.id.clone(),
                        rule: d.verdict.rule.clone(),
                        from: d.from_plan.clone(),
                        to: d.to_plan.clone(),
                    },
                )?;
                info!(migration = %m.id, change = %change.id, "migration executed");
                return Ok(true);
            }
            match self.contracts.store.migration(&m.id)? {
                Some(now) if now.state == MigrationState::Scheduled => continue,
                _ => return Ok(false),
            }
        }
        Err(OpError::new(
            Kind::Conflict,
            "conflict",
            "the contract kept changing while the migration ran; it will be retried",
        ))
    }

    pub fn list(
        &self,
        tenant: Option<&Id>,
        contract: Option<&Id>,
        state: Option<&str>,
    ) -> Result<Vec<Migration>, OpError> {
        use crate::store::LedgerOwner;
        let all = match (contract, tenant) {
            (Some(c), _) => self
                .contracts
                .store
                .migrations_of(LedgerOwner::Contract(c))?,
            (None, Some(t)) => self.contracts.store.migrations_of(LedgerOwner::Tenant(t))?,
            (None, None) => self.contracts.store.migrations()?,
        };
        Ok(all
            .into_iter()
            .filter(|m| tenant.is_none_or(|t| &m.decision.tenant == t))
            .filter(|m| contract.is_none_or(|c| &m.decision.contract == c))
            .filter(|m| state.is_none_or(|s| m.state.name() == s))
            .collect())
    }

    pub fn cancel(&self, actor: &Actor, id: &str) -> Result<Migration, OpError> {
        let missing = || {
            OpError::new(
                Kind::NotFound,
                "unknown_migration",
                format!("no migration {id}"),
            )
        };
        let m = self.contracts.store.migration(id)?.ok_or_else(missing)?;
        let tenant = self
            .contracts
            .store
            .tenant(m.decision.tenant.as_str())?
            .ok_or_else(|| {
                OpError::new(Kind::Internal, "storage", "migration of an unknown tenant")
            })?;
        // Another's migration answers as one that does not exist.
        if !may_act_for(actor, &tenant) {
            return Err(missing());
        }
        let state = MigrationState::Cancelled {
            by: actor.clone(),
            at: Utc::now(),
        };
        if !self.contracts.store.finish_migration(id, state)? {
            return Err(OpError::new(
                Kind::Conflict,
                "not_scheduled",
                format!("migration {id} is not scheduled any more"),
            ));
        }
        Ok(self.contracts.store.migration(id)?.unwrap_or(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TelemetryState;
    use crate::ops::NewContract;
    use crate::plans::catalog::Catalog;
    use crate::store::Store;
    use platen_protocol::Telemetry;

    const EXAMPLE: &str = include_str!("../../../packaging/catalog.example.toml");

    struct World {
        _dir: tempfile::TempDir,
        ops: Ops,
        migrations: Migrations,
        seq: u64,
    }

    impl World {
        /// Tenants acme (reseller r1) and other; contract c1 of acme on `plan`,
        /// printers p1 and p2, started at the beginning of the current period.
        fn new(plan: &str) -> World {
            let dir = tempfile::tempdir().unwrap();
            // The contract starts at the beginning of a period of the tests' clock
            // (March 2026), long before the wall clock.
            let ops = Ops::new(Store::open_sled(dir.path()).unwrap(), Default::default())
                .with_policy(crate::ops::Policy {
                    max_backdate: chrono::Duration::days(3650),
                })
                .with_catalog(Catalog::parse(EXAMPLE).unwrap())
                .unwrap();
            ops.create_reseller(serde_json::from_str(r#"{"id":"r1","name":"R1"}"#).unwrap())
                .unwrap();
            ops.create_reseller(serde_json::from_str(r#"{"id":"r2","name":"R2"}"#).unwrap())
                .unwrap();
            ops.create_tenant(
                serde_json::from_str(r#"{"id":"acme","name":"Acme","reseller":"r1"}"#).unwrap(),
            )
            .unwrap();
            ops.create_tenant(serde_json::from_str(r#"{"id":"other","name":"Other"}"#).unwrap())
                .unwrap();
            let start = period::containing(chrono_tz::UTC, now()).start;
            let n: NewContract = serde_json::from_value(serde_json::json!({
                "id": "c1", "tenant": "acme", "printers": ["p1", "p2"], "plan": plan,
                "effective_at": start, "time_zone": "UTC", "currency": "EUR",
                "settings": {"sysLocation": "Floor 1"}
            }))
            .unwrap();
            ops.create_contract(n).unwrap();
            World {
                _dir: dir,
                migrations: Migrations::new(ops.clone()),
                ops,
                seq: 0,
            }
        }

        /// A telemetry reading of `printer`'s page counter, `ago` before now.
        fn counter(&mut self, printer: &str, value: u64, ago: chrono::Duration) {
            self.counter_at(printer, value, now() - ago);
        }

        /// A telemetry reading of `printer`'s page counter at `at`.
        fn counter_at(&mut self, printer: &str, value: u64, at: DateTime<Utc>) {
            let mut t: Telemetry =
                platen_protocol::decode(include_bytes!("../../../protocol/golden/telemetry.json"))
                    .unwrap();
            self.seq += 1;
            t.printer_id = printer.parse().unwrap();
            t.seq = self.seq;
            t.message_id = Telemetry::make_id(&t.agent_id, &t.printer_id, t.seq);
            let r = t.reading.as_mut().unwrap();
            r.read_at = at;
            r.counters[0].value = value;
            let tenant = "acme".parse().unwrap();
            let sample = crate::model::Sample::of(&t).unwrap();
            assert!(self
                .ops
                .store
                .record_sample(&tenant, &t.printer_id, &sample)
                .unwrap());
        }

        fn ask(&self, actor: &str, plan: &str, dry_run: bool) -> Result<Outcome, OpError> {
            self.ask_at(actor, plan, dry_run, now())
        }

        fn ask_at(
            &self,
            actor: &str,
            plan: &str,
            dry_run: bool,
            at: DateTime<Utc>,
        ) -> Result<Outcome, OpError> {
            self.migrations.migrate_at(
                &actor.parse().unwrap(),
                MigrationRequest {
                    tenant: "acme".parse().unwrap(),
                    contract: None,
                    plan: plan.parse().unwrap(),
                    dry_run,
                },
                at,
            )
        }

        fn plan_now(&self) -> String {
            self.ops.contract_status("c1").unwrap().plan.id.to_string()
        }
    }

    fn minutes(n: i64) -> chrono::Duration {
        chrono::Duration::minutes(n)
    }

    /// The tests' clock: ten days into March 2026 (UTC), 21 days left.
    fn now() -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(2026, 3, 11, 9, 0, 0).unwrap()
    }

    #[test]
    fn downgrade_refused_over_the_target_cap_with_the_rule_and_usage() {
        let mut w = World::new("mono-1000");
        w.counter("p1", 10_000, minutes(20));
        w.counter("p1", 10_400, minutes(10));
        w.counter("p2", 500, minutes(20));
        w.counter("p2", 700, minutes(5));
        let Outcome::Refused(m) = w.ask("tenant:acme", "mono-500", false).unwrap() else {
            panic!("600 pages > 500: refused")
        };
        assert_eq!(m.decision.verdict.rule, "mono_500_over_cap");
        assert!(
            matches!(&m.decision.verdict.decision, Decision::Refuse { code, .. } if code == "usage_over_target_cap")
        );
        assert_eq!(m.decision.usage.used, Some(600));
        assert_eq!(m.decision.usage.telemetry, TelemetryState::Complete);
        assert_eq!(m.state, MigrationState::Refused);
        assert_eq!(w.plan_now(), "mono-1000");
        // The refusal is stored, nothing was scheduled, and the change path is shut.
        assert_eq!(
            w.migrations
                .list(None, None, Some("refused"))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            w.ops
                .store
                .changes_of(&"c1".parse().unwrap())
                .unwrap()
                .len(),
            1
        );
        // Retention: a refusal decided before the cutoff goes, with its index entries.
        let decided = m.decision.decided_at;
        let (n, _) = w
            .ops
            .store
            .prune_refused_migrations(decided, &[], 100)
            .unwrap();
        assert_eq!(n, 0, "decided at the cutoff, not before it");
        let later = decided + chrono::Duration::seconds(1);
        let (n, next) = w
            .ops
            .store
            .prune_refused_migrations(later, &[], 100)
            .unwrap();
        assert_eq!((n, next), (1, None));
        assert!(w.migrations.list(None, None, None).unwrap().is_empty());
        assert!(w
            .migrations
            .list(Some(&"acme".parse().unwrap()), None, None)
            .unwrap()
            .is_empty());
        // Timing by usage: mono-1000 → color-2000 is fine (600 ≤ 2000), at once.
        let Outcome::Accepted(m) = w.ask("tenant:acme", "color-2000", false).unwrap() else {
            panic!("upgrade accepted")
        };
        assert_eq!(m.decision.verdict.rule, "flat_change");
        assert!(matches!(m.state, MigrationState::Executed { .. }), "{m:?}");
        assert_eq!(w.plan_now(), "color-2000");
        // Overrides carry over; the new template replaces the old one.
        let st = w.ops.contract_status("c1").unwrap();
        assert_eq!(
            st.settings["sysLocation"],
            SettingValue::Text("Floor 1".into())
        );
        assert_eq!(
            st.settings["prtConsoleDisable"],
            SettingValue::Text("disabled".into())
        );
        assert!(
            matches!(&st.changes[1].change, ChangeKind::PlanChange { from, to } if from.as_str() == "mono-1000" && to.as_str() == "color-2000")
        );
        let tl = w.ops.timeline("c1").unwrap();
        assert!(tl.iter().any(
            |e| matches!(&e.event, Event::MigrationExecuted { rule, .. } if rule == "flat_change")
        ));
    }

    #[test]
    fn a_refused_downgrade_is_allowed_in_the_next_period() {
        use chrono::TimeZone;
        let mut w = World::new("mono-1000");
        w.counter("p1", 1000, minutes(60));
        w.counter("p1", 1700, minutes(5));
        let Outcome::Refused(m) = w.ask("tenant:acme", "mono-500", false).unwrap() else {
            panic!("700 > 500")
        };
        assert_eq!(m.decision.verdict.rule, "mono_500_over_cap");
        // 2 April: a new period. Before any reading in it, usage is unknown: refused
        // by the rule for that case.
        let april = Utc.with_ymd_and_hms(2026, 4, 2, 9, 0, 0).unwrap();
        let Outcome::Refused(m) = w.ask_at("tenant:acme", "mono-500", false, april).unwrap() else {
            panic!("no telemetry in April")
        };
        assert_eq!(m.decision.verdict.rule, "mono_500_usage_unknown");
        assert_eq!(m.decision.period, "2026-04");
        // Readings in April (from March's last value): 120 pages. Allowed, at once.
        w.counter_at("p1", 1780, april - chrono::Duration::hours(8));
        w.counter_at("p1", 1820, april - chrono::Duration::hours(1));
        let Outcome::Accepted(m) = w.ask_at("tenant:acme", "mono-500", false, april).unwrap()
        else {
            panic!("120 ≤ 500 in April")
        };
        assert_eq!(m.decision.verdict.rule, "mono_500");
        assert_eq!(m.decision.usage.used, Some(120));
        assert_eq!(m.decision.effective_at, Some(april));
        assert!(matches!(m.state, MigrationState::Executed { .. }));
        assert_eq!(w.plan_now(), "mono-500");
    }

    #[test]
    fn the_same_pair_waits_for_the_next_period_when_usage_is_over_the_cap() {
        let mut w = World::new("color-2000");
        w.counter("p1", 0, minutes(20));
        w.counter("p1", 1200, minutes(1));
        // 1200 > 1000: the downgrade to mono-1000 waits for the next period. The
        // plan on the `from` side makes color_to_mono_end_of_term decide: month to
        // month, so also the end of this period.
        let Outcome::Accepted(m) = w.ask("operator", "mono-1000", false).unwrap() else {
            panic!("allowed later")
        };
        let next = period::next(chrono_tz::UTC, &period::containing(chrono_tz::UTC, now())).start;
        assert_eq!(m.decision.usage.days_left, 20);
        assert_eq!(m.decision.verdict.rule, "color_to_mono_end_of_term");
        assert_eq!(m.decision.effective_at, Some(next));
        assert_eq!(m.state, MigrationState::Scheduled);
        assert_eq!(w.plan_now(), "color-2000", "not yet");
        // A second request while one is scheduled: 409.
        let e = w.ask("operator", "mono-500", false).unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Conflict, "migration_pending"));
        // Not before its time…
        assert_eq!(
            w.migrations
                .run_due(next - chrono::Duration::seconds(1))
                .unwrap(),
            0
        );
        // …and once at it, however often the scheduler runs.
        assert_eq!(w.migrations.run_due(next).unwrap(), 1);
        assert_eq!(w.migrations.run_due(next).unwrap(), 0);
        assert_eq!(w.plan_now(), "mono-1000");
        let changes = w.ops.store.changes_of(&"c1".parse().unwrap()).unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(
            changes[1].change.effective_at, next,
            "effective at the rule's time"
        );
        let m = w.ops.store.migration(&m.id).unwrap().unwrap();
        assert!(
            matches!(&m.state, MigrationState::Executed { change_id, .. } if change_id == "c1.2")
        );
    }

    #[test]
    fn a_counter_reset_in_the_period_is_neither_negative_nor_doubled() {
        let mut w = World::new("mono-1000");
        w.counter("p1", 5000, minutes(40));
        w.counter("p1", 5100, minutes(30));
        w.counter("p1", 10, minutes(20)); // mainboard swapped: the counter restarts
        w.counter("p1", 40, minutes(10));
        w.counter("p2", 300, minutes(10)); // first reading ever: counts from here
        let Outcome::DryRun(d) = w.ask("operator", "mono-500", true).unwrap() else {
            panic!()
        };
        assert_eq!(d.usage.used, Some(130), "100 before the reset, 30 after");
        assert_eq!(d.verdict.rule, "mono_500");
        let p1 = d.printers[&"p1".parse::<Id>().unwrap()].clone().unwrap();
        assert_eq!(p1.resets.len(), 1, "flagged: {p1:?}");
    }

    #[test]
    fn no_telemetry_is_its_own_state() {
        let w = World::new("mono-1000");
        let Outcome::DryRun(d) = w.ask("reseller:r1", "mono-500", true).unwrap() else {
            panic!("dry run")
        };
        assert_eq!(d.verdict.rule, "mono_500_usage_unknown");
        assert_eq!(
            (d.usage.used, d.usage.telemetry),
            (None, TelemetryState::None)
        );
        assert!(d.printers.values().all(Option::is_none));
    }

    #[test]
    fn dry_runs_change_nothing_and_resellers_act_only_for_their_tenants() {
        let w = World::new("mono-500");
        let before = w.ops.store.changes_of(&"c1".parse().unwrap()).unwrap();
        let Outcome::DryRun(d) = w.ask("reseller:r1", "color-2000", true).unwrap() else {
            panic!("dry run")
        };
        assert_eq!(d.verdict.rule, "flat_change");
        assert_eq!(d.requested_by.to_string(), "reseller:r1");
        assert!(w.migrations.list(None, None, None).unwrap().is_empty());
        assert_eq!(
            w.ops.store.changes_of(&"c1".parse().unwrap()).unwrap(),
            before
        );
        assert_eq!(w.plan_now(), "mono-500");
        for who in ["reseller:r2", "tenant:other"] {
            // Another's tenant answers as one that does not exist.
            let e = w.ask(who, "color-2000", true).unwrap_err();
            assert_eq!(
                (e.kind, e.code),
                (Kind::NotFound, "unknown_tenant"),
                "{who}"
            );
        }
        let e = w.ask("operator", "mono-500", false).unwrap_err();
        assert_eq!(e.code, "same_plan");
        let e = w.ask("operator", "gold", false).unwrap_err();
        assert_eq!(e.code, "unknown_plan");
    }

    #[test]
    fn cancelled_and_superseded_migrations_do_not_run() {
        let w = World::new("color-2000");
        // No telemetry: color → mono decided by color_to_mono_end_of_term.
        let Outcome::Accepted(m) = w.ask("tenant:acme", "mono-1000", false).unwrap() else {
            panic!()
        };
        let e = w
            .migrations
            .cancel(&"reseller:r2".parse().unwrap(), &m.id)
            .unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::NotFound, "unknown_migration"));
        let c = w
            .migrations
            .cancel(&"reseller:r1".parse().unwrap(), &m.id)
            .unwrap();
        assert!(matches!(c.state, MigrationState::Cancelled { .. }));
        let e = w
            .migrations
            .cancel(&"operator".parse().unwrap(), &m.id)
            .unwrap_err();
        assert_eq!(e.code, "not_scheduled");
        let far = now() + chrono::Duration::days(400);
        assert_eq!(w.migrations.run_due(far).unwrap(), 0);
        assert_eq!(w.plan_now(), "color-2000");
        // Scheduled, then the contract moves on before its time: superseded.
        let Outcome::Accepted(m) = w.ask("operator", "mono-1000", false).unwrap() else {
            panic!()
        };
        let mut m2 = m.clone();
        m2.id = "c1.mx".into();
        m2.decision.to_plan = "toner-auto".parse().unwrap();
        m2.decision.effective_at = Some(now());
        w.ops.store.add_migration(&m2).unwrap();
        assert_eq!(w.migrations.run_due(now()).unwrap(), 1, "the toner one");
        assert_eq!(w.plan_now(), "toner-auto");
        assert_eq!(w.migrations.run_due(far).unwrap(), 0);
        let m = w.ops.store.migration(&m.id).unwrap().unwrap();
        assert!(
            matches!(m.state, MigrationState::Superseded { .. }),
            "{m:?}"
        );
    }

    #[test]
    fn actors_parse_and_authorise() {
        let acme = Tenant {
            id: "acme".parse().unwrap(),
            name: "Acme".into(),
            reseller: Some("r1".parse().unwrap()),
        };
        let cases = [
            ("operator", true),
            ("tenant:acme", true),
            ("tenant:other", false),
            ("reseller:r1", true),
            ("reseller:r2", false),
        ];
        for (s, may) in cases {
            let a: Actor = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
            assert_eq!(may_act_for(&a, &acme), may, "{s}");
        }
        let orphan = Tenant {
            reseller: None,
            ..acme
        };
        assert!(!may_act_for(&"reseller:r1".parse().unwrap(), &orphan));
        for bad in ["", "root", "tenant:", "reseller:Bad Id", "admin:x"] {
            assert!(bad.parse::<Actor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overrides_survive_a_plan_change() {
        let t = |pairs: &[(&str, &str)]| -> BTreeMap<String, SettingValue> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), SettingValue::Text(v.to_string())))
                .collect()
        };
        let template = t(&[("sysContact", "billing"), ("prtConsoleDisable", "enabled")]);
        let settings = t(&[
            ("sysContact", "billing"),
            ("prtConsoleDisable", "disabled"),
            ("sysLocation", "Floor 1"),
        ]);
        assert_eq!(
            overrides(&settings, &template),
            t(&[
                ("prtConsoleDisable", "disabled"),
                ("sysLocation", "Floor 1")
            ])
        );
    }
}
