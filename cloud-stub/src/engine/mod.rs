//! The setup engine: drives every open contract change to completion and settles
//! what is owed.
//!
//! For each open change, on every tick and whenever a report arrives:
//! 1. publish the change's settings to each printer as a new version (retained), and
//!    publish again (a newer version) `republish_after` a failed attempt;
//! 2. read the reports for those versions: a report confirms when every required
//!    setting has code 200; a `not_applied` / `partially_applied` report, or no report
//!    within `report_deadline`, is a fault in config distribution;
//! 3. set the service up at the provider and read its status until it says active; a
//!    status that cannot be obtained (error, timeout, unreachable) is a fault in the
//!    service setting; calls are retried with exponential backoff;
//! 4. T1 = the later of the two confirmations; then [`compensation::decide`] says what
//!    is owed, and each part goes into the ledger under its deterministic key (once),
//!    shipments are ordered from the provider under the same key (idempotent there too).
//!
//! Every observation goes into the change's timeline. State is saved after each step,
//! with the time the change is next due ([`crate::engine::schedule::next_due`]), so a restart
//! continues where it stopped and never pays twice. A pass takes only the changes that
//! are due (settled ones are never read again); a new report makes the open changes of
//! its printer's contract due at once. The engine runs on a thread and runtime of its
//! own, so a long pass never delays the API.
//!
//! A change nobody answers is published again with a doubling wait (at most an hour);
//! after [`crate::model::MAX_UNANSWERED`] unanswered publications it waits for the
//! agent's next sign of life (health up, or telemetry of the printer) before the next;
//! the fault time runs on all the while.

pub mod attribution;
pub mod schedule;

use crate::billing::compensation::{self, Decision};
use crate::model::Cause;
use crate::model::ReceivedReport;
use crate::model::{ledger_key, ChangeRecord, Event, FaultNote, LedgerEntry, SetupState};
use crate::model::{Contract, Plan};
use crate::store::{Claim, Inserted, Store, StoreError};
use crate::Cloud;
use chrono::{DateTime, Utc};
use platen_ops::backoff::{doubled as backoff, Backoff};
use platen_protocol::{Code, DesiredConfig, Id, SettingValue};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How often open changes are re-examined (reports also wake the engine).
    pub tick: Duration,
    /// A published version without a report after this long is a config fault.
    pub report_deadline: Duration,
    /// After a failed attempt, publish the settings again (as a newer version) this much later.
    pub republish_after: Duration,
    /// Base URL of the service provider, e.g. `http://127.0.0.1:8090`.
    pub provider_url: String,
    pub provider_timeout: Duration,
    /// Upper bound of the provider retry backoff.
    pub provider_retry_max: Duration,
    /// How long a claim on a change holds ([`crate::store::Claim`]).
    pub claim_lease: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            tick: Duration::from_millis(500),
            report_deadline: Duration::from_secs(60),
            republish_after: Duration::from_secs(30),
            provider_url: "http://127.0.0.1:8090".into(),
            provider_timeout: Duration::from_secs(5),
            provider_retry_max: Duration::from_secs(30),
            claim_lease: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("change {0} refers to a missing {1}")]
    Missing(String, &'static str),
}

/// How a report bears on a change's required settings.
#[derive(Debug, PartialEq, Eq)]
pub enum ReportVerdict {
    Confirms,
    Fails(String),
}

/// A report confirms when every required setting is present with code 200 and the
/// value it verified is the one this change wants (a report of the same printer that
/// verified other values — another contract's, an older change's — confirms nothing).
pub fn judge_report(
    r: &ReceivedReport,
    required: &BTreeMap<String, SettingValue>,
) -> ReportVerdict {
    if let Some(refusal) = &r.report.refused {
        return ReportVerdict::Fails(format!(
            "report {} refused the whole config: {} {}",
            r.report.report_id,
            refusal.code.as_u16(),
            refusal.detail
        ));
    }
    let mut problems = Vec::new();
    for name in required.keys() {
        match r.report.settings.iter().find(|s| &s.name == name) {
            Some(s) if s.code == Code::Verified && Some(&s.desired) == required.get(name) => {}
            Some(s) if s.code == Code::Verified => problems.push(format!(
                "{name}: verified {} but this change wants {}",
                s.desired,
                required
                    .get(name)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            )),
            Some(s) => problems.push(format!("{name}: {} {}", s.code.as_u16(), s.detail)),
            None => problems.push(format!("{name}: missing from report")),
        }
    }
    if problems.is_empty() {
        ReportVerdict::Confirms
    } else {
        ReportVerdict::Fails(format!(
            "report {} is {}: {}",
            r.report.report_id,
            r.report.status,
            problems.join("; ")
        ))
    }
}

/// A report's time: min(agent's completed_at, cloud's receipt), never before the
/// config was published (agents' clocks drift).
pub fn report_time(r: &ReceivedReport, published_at: DateTime<Utc>) -> DateTime<Utc> {
    r.report.completed_at.min(r.received_at).max(published_at)
}

#[derive(Clone)]
pub struct Engine {
    cloud: Cloud,
    store: Store,
    cfg: EngineConfig,
    http: reqwest::Client,
    wake: Waker,
    /// This instance's claim on the changes it steps.
    claim: Claim,
}

/// A handle that asks the engine for a pass now (after a new contract, change or
/// executed migration). The operations hold this, not the engine: waking is all they
/// need of it. A waker made with [`Waker::default`] and never given to an engine wakes
/// nothing (tools and tests that run no engine).
#[derive(Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// Ask for a pass. Wakes that arrive before the engine waits are kept (one).
    pub fn wake(&self) {
        self.0.notify_one();
    }

    async fn woken(&self) {
        self.0.notified().await
    }
}

/// Wait for the next new report: its tenant and printer (`None` when events were
/// lost: then every open change of any printer may be concerned).
async fn next_report(
    events: &mut tokio::sync::broadcast::Receiver<crate::ReportEvent>,
) -> Option<(Id, Id)> {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            // Only a new report can advance a change: duplicates, refusals, health
            // and telemetry (a flood of them included) do not wake a pass.
            Ok(crate::ReportEvent::New(r, tenant)) => {
                return Some((tenant, r.report.printer_id.clone()))
            }
            Err(RecvError::Lagged(_)) => return None,
            Ok(_) => continue,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Most changes one pass takes (the rest stay due for the next).
const PASS_LIMIT: usize = 256;

/// Changes claimed at a time: few enough that stepping them (each may wait for the
/// broker and the provider) fits well within a claim's lease.
pub const CLAIM_BATCH: usize = 8;

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Engine {
    /// An engine that claims the changes it steps as `owner` (the instance's client
    /// id: unique among the instances that share a store, kept across restarts).
    pub fn new(cloud: Cloud, store: Store, cfg: EngineConfig, owner: &str) -> Engine {
        let http = reqwest::Client::builder()
            .timeout(cfg.provider_timeout)
            .connect_timeout(cfg.provider_timeout)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Engine {
            cloud,
            store,
            http,
            wake: Waker::default(),
            claim: Claim {
                owner: owner.to_string(),
                lease: chrono_dur(cfg.claim_lease),
            },
            cfg,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The handle that wakes this engine.
    pub fn waker(&self) -> Waker {
        self.wake.clone()
    }

    /// Run until `stop` turns true, on a thread and runtime of its own. The returned
    /// task ends when the engine has stopped.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let (done, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("platen-engine".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(self.run(stop)),
                    Err(e) => warn!(error = %e, "engine runtime could not start"),
                }
                let _ = done.send(());
            });
        if let Err(e) = thread {
            warn!(error = %e, "engine thread could not start");
        }
        tokio::spawn(async move {
            let _ = stopped.await;
        })
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut events = self.cloud.subscribe_events();
        // While steps fail (the store does not answer), wait longer between tries, up
        // to a minute, and say so when it starts, once it has lasted, and when it ends
        // — not at every tick.
        let mut failing = Backoff::new(self.cfg.tick, Duration::from_secs(60));
        let mut failures = 0u64;
        loop {
            let wait = match self.step_due().await {
                Ok(()) => {
                    if failures > 0 {
                        info!(failures, "engine steps succeed again");
                    }
                    failures = 0;
                    failing.reset();
                    self.cfg.tick
                }
                Err(e) => {
                    failures += 1;
                    let long = failing.at_max();
                    let wait = failing.next_delay();
                    if failures == 1 {
                        warn!(error = %e, "engine step failed; retrying, backing off");
                    } else if long && failures.is_multiple_of(10) {
                        warn!(error = %e, failures, "engine steps still failing");
                    }
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = next_report(&mut events) => {
                    if let Err(e) = self.wake_for_report(r) {
                        warn!(error = %e, "engine: could not wake the report's change");
                    }
                }
                _ = self.wake.woken() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// A report came for `printer`: its contract's open changes are due now.
    fn wake_for_report(&self, from: Option<(Id, Id)>) -> Result<(), StoreError> {
        let Some((tenant, printer)) = from else {
            // Events were lost: every open change looks at its reports once.
            for rec in self.store.open_changes()? {
                self.store.wake_change(&rec.change.id)?;
            }
            return Ok(());
        };
        let Some(contract) = self.store.contract_of_printer(&tenant, &printer)? else {
            return Ok(());
        };
        let Ok(contract) = contract.parse::<Id>() else {
            return Ok(());
        };
        for rec in self.store.changes_of(&contract)? {
            if !rec.setup.settled {
                self.store.wake_change(&rec.change.id)?;
            }
        }
        Ok(())
    }

    fn timers(&self) -> crate::engine::schedule::Timers {
        crate::engine::schedule::Timers {
            report_deadline: chrono_dur(self.cfg.report_deadline),
            republish_after: chrono_dur(self.cfg.republish_after),
            tick: chrono_dur(self.cfg.tick),
            recheck: chrono::Duration::seconds(60),
        }
    }

    /// One pass over the changes that are due: claimed [`CLAIM_BATCH`] at a time (so
    /// that the lease covers the batch, and other instances take the rest), at most
    /// `PASS_LIMIT` (256) in all, each stepped once.
    pub async fn step_due(&self) -> Result<(), EngineError> {
        let mut stepped = std::collections::HashSet::new();
        while stepped.len() < PASS_LIMIT {
            let batch = self.store.claim_due(&self.claim, Utc::now(), CLAIM_BATCH)?;
            let full = batch.len() == CLAIM_BATCH;
            let mut fresh = 0;
            for rec in batch {
                // A change stepped already in this pass that fell due again at once
                // is saved untouched: the next pass takes it.
                let again = !stepped.insert(rec.change.id.clone());
                if !again {
                    fresh += 1;
                }
                self.step_claimed(rec, again).await?;
            }
            if !full || fresh == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Step one claimed change (unless `skip`) and save it with its next due time,
    /// releasing the claim. A claim lost meanwhile (this instance stalled past its
    /// lease and another took the change over) discards this step's state: every side
    /// effect it had is idempotent by key, and the other instance's step stands.
    async fn step_claimed(&self, mut rec: ChangeRecord, skip: bool) -> Result<(), EngineError> {
        // The contract is read once per step (its printers and zone also give the
        // next due time).
        let contract = self.store.contract(rec.change.contract.as_str())?;
        let r = match (&contract, skip) {
            (_, true) => Ok(()),
            (Some(c), false) => self.step(&mut rec, c).await,
            (None, false) => Err(EngineError::Missing(rec.change.id.clone(), "contract")),
        };
        let (printers, tz) = contract
            .map(|c| {
                let tz = c.tz();
                (c.printers, tz)
            })
            .unwrap_or_default();
        let due = crate::engine::schedule::next_due(
            &rec.setup,
            &printers,
            &self.timers(),
            tz,
            Utc::now(),
        );
        if !self.store.save_claimed(&self.claim, &rec, due)? {
            warn!(change = %rec.change.id, owner = %self.claim.owner, "claim lost while stepping; another instance has the change");
            self.cloud
                .counters
                .claims_lost
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(e) = r {
            warn!(change = %rec.change.id, error = %e, "change step failed");
        }
        Ok(())
    }

    /// Whether the printer's agent showed a sign of life after `since`: health up, or
    /// a telemetry reading of the printer.
    fn sign_of_life(&self, tenant: &Id, printer: &Id, since: DateTime<Utc>) -> bool {
        let health = self
            .cloud
            .printer_evidence(tenant, printer)
            .health
            .is_some_and(|h| h.up && h.since > since);
        health
            || self
                .store
                .latest_sample(tenant, printer)
                .ok()
                .flatten()
                .is_some_and(|t| t > since)
    }

    fn note(&self, rec: &ChangeRecord, event: Event) -> Result<(), StoreError> {
        debug!(change = %rec.change.id, ?event, "timeline");
        self.store.append(&rec.change.id, event).map(|_| ())
    }

    async fn step(&self, rec: &mut ChangeRecord, contract: &Contract) -> Result<(), EngineError> {
        let plan = self
            .store
            .plan(rec.change.plan.as_str())?
            .ok_or_else(|| EngineError::Missing(rec.change.id.clone(), "plan"))?;
        if rec.setup.completed_at.is_none() {
            for printer in &contract.printers {
                self.config_step(rec, contract, printer).await?;
                self.service_step(rec, contract, &plan, printer).await?;
            }
            self.completion_step(rec, contract)?;
        }
        self.compensation_step(rec, contract, &plan).await
    }

    async fn config_step(
        &self,
        rec: &mut ChangeRecord,
        contract: &Contract,
        printer: &Id,
    ) -> Result<(), EngineError> {
        let now = Utc::now();
        let ps = rec.setup.printers.entry(printer.clone()).or_default();
        if ps.confirmed_at.is_some() {
            return Ok(());
        }
        let republish = match ps.failed_at {
            _ if ps.published.is_empty() => true,
            Some(f) => {
                now - f >= ps.republish_wait(chrono_dur(self.cfg.republish_after))
                    && (ps.unanswered < crate::model::MAX_UNANSWERED
                        || ps.latest().is_some_and(|(_, at)| {
                            self.sign_of_life(&contract.tenant, printer, at)
                        }))
            }
            None => false,
        };
        if republish {
            let version = self.store.next_version(&contract.tenant, printer)?;
            let desired = DesiredConfig {
                printer_id: printer.clone(),
                version,
                issued_at: now,
                settings: rec.change.settings.clone(),
                signature: None,
            };
            match self
                .cloud
                .publish_desired_for(&contract.tenant, &desired, Some(&rec.change.id))
                .await
            {
                Ok(()) => {
                    let ps = rec.setup.printers.entry(printer.clone()).or_default();
                    ps.add_published(version, Utc::now());
                    ps.failed_at = None;
                    ps.deadline_noted = false;
                    info!(change = %rec.change.id, %printer, version, "config published");
                    self.note(
                        rec,
                        Event::ConfigPublished {
                            printer: printer.clone(),
                            version,
                            settings: desired.settings.len(),
                        },
                    )?;
                }
                Err(e) => {
                    // The version number is spent; the next attempt takes a newer one.
                    warn!(change = %rec.change.id, %printer, error = %e, "publish failed; will retry");
                    return Ok(());
                }
            }
        }
        let ps = rec.setup.printers.entry(printer.clone()).or_default();
        let Some((first, first_at)) = ps.published.iter().next().map(|(v, t)| (*v, *t)) else {
            return Ok(());
        };
        let (latest, latest_at) = ps.latest().unwrap_or((first, first_at));
        let mut events = Vec::new();
        let mut fault: Option<(String, Cause)> = None;
        // Only the versions this change published count: a report of any other
        // version (never published, or another change's) is not this change's evidence.
        for r in self
            .cloud
            .reports_for(&contract.tenant, printer, first..=latest)
        {
            let v = r.report.config_version;
            if !ps.published.contains_key(&v) {
                continue;
            }
            if !ps.seen_reports.insert(r.report.report_id.clone()) {
                continue;
            }
            // The agent answered: re-publishing goes back to its normal pace.
            ps.unanswered = 0;
            // The publication this report answers (ours, or the latest before it).
            let published_at = ps
                .published
                .range(..=v)
                .next_back()
                .map(|(_, t)| *t)
                .unwrap_or(first_at);
            let at = report_time(&r, published_at);
            events.push(Event::ReportReceived {
                printer: printer.clone(),
                version: v,
                report_id: r.report.report_id.clone(),
                status: r.report.status,
                report_time: at,
                codes: r
                    .report
                    .settings
                    .iter()
                    .map(|s| (s.name.clone(), s.code.as_u16()))
                    .collect(),
            });
            match judge_report(&r, &rec.change.settings) {
                ReportVerdict::Confirms => {
                    if ps.confirmed_at.is_none() {
                        ps.confirmed_at = Some(at);
                        ps.confirmed_version = Some(v);
                        events.push(Event::ConfigConfirmed {
                            printer: printer.clone(),
                            version: v,
                            confirmed_at: at,
                        });
                    }
                }
                ReportVerdict::Fails(reason) => {
                    if v >= latest && ps.confirmed_at.is_none() {
                        ps.failed_at = Some(Utc::now());
                        let failing: Vec<u16> = match &r.report.refused {
                            Some(refusal) => vec![refusal.code.as_u16()],
                            None => r
                                .report
                                .settings
                                .iter()
                                .filter(|s| rec.change.settings.contains_key(&s.name))
                                .map(|s| s.code.as_u16())
                                .filter(|c| *c != 200)
                                .collect(),
                        };
                        let cause = attribution::config_fault(&attribution::Facts {
                            published_at,
                            agent: None,
                            printer: None,
                            failing_codes: &failing,
                        });
                        fault = Some((reason, cause));
                    }
                }
            }
        }
        if ps.confirmed_at.is_none() && ps.failed_at.is_none() && !ps.deadline_noted {
            let answered = ps
                .seen_reports
                .iter()
                .any(|id| id.ends_with(&format!(":v{latest}")));
            if !answered && now - latest_at >= chrono_dur(self.cfg.report_deadline) {
                ps.deadline_noted = true;
                ps.failed_at = Some(now);
                ps.unanswered = ps.unanswered.saturating_add(1);
                let ev = self.cloud.printer_evidence(&contract.tenant, printer);
                let cause = attribution::config_fault(&attribution::Facts {
                    published_at: latest_at,
                    agent: ev.agent.as_ref().map(|a| (a, ev.health.as_ref())),
                    printer: ev.printer.as_ref(),
                    failing_codes: &[],
                });
                fault = Some((
                    format!(
                        "no report for version {latest} within {} s of its publication",
                        self.cfg.report_deadline.as_secs()
                    ),
                    cause,
                ));
            }
        }
        for e in events {
            self.note(rec, e)?;
        }
        if let Some((reason, cause)) = fault {
            warn!(change = %rec.change.id, %printer, %reason, ?cause, "config distribution fault");
            // The first fault is kept, unless a provider-side one follows a
            // customer-side one: the provider's share decides compensation.
            let replace = match &rec.setup.config_fault {
                None => true,
                Some(f) => f.cause.is_customer() && !cause.is_customer(),
            };
            if replace {
                rec.setup.config_fault = Some(FaultNote {
                    at: Utc::now(),
                    reason: reason.clone(),
                    cause: cause.clone(),
                });
            }
            self.note(
                rec,
                Event::ConfigFault {
                    printer: printer.clone(),
                    reason,
                    cause,
                },
            )?;
        }
        Ok(())
    }

    fn provider_fault(
        &self,
        rec: &mut ChangeRecord,
        printer: &Id,
        reason: String,
    ) -> Result<(), StoreError> {
        warn!(change = %rec.change.id, %printer, %reason, "service setting fault");
        // The fault is determined once; later failures are in the provider-call entries.
        if rec.setup.service_fault.is_none() {
            rec.setup.service_fault = Some(FaultNote {
                at: Utc::now(),
                reason: reason.clone(),
                cause: Cause::Provider,
            });
            self.note(
                rec,
                Event::ServiceFault {
                    printer: printer.clone(),
                    reason,
                },
            )?;
        }
        Ok(())
    }

    fn retry_later(&self, rec: &mut ChangeRecord, printer: &Id) {
        let ss = rec.setup.services.entry(printer.clone()).or_default();
        ss.attempts = ss.attempts.saturating_add(1);
        let wait = backoff(self.cfg.tick, ss.attempts, self.cfg.provider_retry_max);
        ss.next_attempt_at = Some(Utc::now() + chrono_dur(wait));
    }

    async fn service_step(
        &self,
        rec: &mut ChangeRecord,
        contract: &Contract,
        plan: &Plan,
        printer: &Id,
    ) -> Result<(), EngineError> {
        let ss = rec.setup.services.entry(printer.clone()).or_default();
        if ss.confirmed_at.is_some() || ss.next_attempt_at.is_some_and(|t| Utc::now() < t) {
            return Ok(());
        }
        let url = format!(
            "{}/v1/services/{}/{}",
            self.cfg.provider_url.trim_end_matches('/'),
            contract.id,
            printer
        );
        if !ss.set_up {
            let body = serde_json::json!({
                "service": plan.service.name(),
                "plan": plan.id,
                "params": plan.service,
            });
            let r = self.http.put(&url).json(&body).send().await;
            match call_result(r).await {
                Ok(_) => {
                    rec.setup
                        .services
                        .entry(printer.clone())
                        .or_default()
                        .set_up = true;
                    self.note(
                        rec,
                        Event::ProviderCall {
                            call: "setup".into(),
                            printer: Some(printer.clone()),
                            ok: true,
                            result: "accepted".into(),
                        },
                    )?;
                }
                Err(reason) => {
                    self.note(
                        rec,
                        Event::ProviderCall {
                            call: "setup".into(),
                            printer: Some(printer.clone()),
                            ok: false,
                            result: reason.clone(),
                        },
                    )?;
                    self.provider_fault(rec, printer, format!("service setup failed: {reason}"))?;
                    self.retry_later(rec, printer);
                    return Ok(());
                }
            }
        }
        let r = self.http.get(&url).send().await;
        match call_result(r).await {
            Ok(v) if v.get("status").and_then(|s| s.as_str()) == Some("active") => {
                let at = Utc::now();
                let ss = rec.setup.services.entry(printer.clone()).or_default();
                ss.confirmed_at = Some(at);
                ss.attempts = 0;
                self.note(
                    rec,
                    Event::ProviderCall {
                        call: "status".into(),
                        printer: Some(printer.clone()),
                        ok: true,
                        result: "active".into(),
                    },
                )?;
                self.note(
                    rec,
                    Event::ServiceConfirmed {
                        printer: printer.clone(),
                        confirmed_at: at,
                    },
                )?;
            }
            Ok(v) => {
                let status = v
                    .get("status")
                    .and_then(|s| s.as_str())
                    .unwrap_or("unknown")
                    .to_string();
                self.note(
                    rec,
                    Event::ProviderCall {
                        call: "status".into(),
                        printer: Some(printer.clone()),
                        ok: true,
                        result: status,
                    },
                )?;
                self.retry_later(rec, printer);
            }
            Err(reason) => {
                self.note(
                    rec,
                    Event::ProviderCall {
                        call: "status".into(),
                        printer: Some(printer.clone()),
                        ok: false,
                        result: reason.clone(),
                    },
                )?;
                self.provider_fault(
                    rec,
                    printer,
                    format!("service status unobtainable: {reason}"),
                )?;
                self.retry_later(rec, printer);
            }
        }
        Ok(())
    }

    fn completion_step(
        &self,
        rec: &mut ChangeRecord,
        contract: &Contract,
    ) -> Result<(), StoreError> {
        let mut config_at: Option<DateTime<Utc>> = None;
        let mut service_at: Option<DateTime<Utc>> = None;
        for p in &contract.printers {
            match rec.setup.printers.get(p).and_then(|s| s.confirmed_at) {
                Some(t) => config_at = Some(config_at.map_or(t, |c| c.max(t))),
                None => return Ok(()),
            }
            match rec.setup.services.get(p).and_then(|s| s.confirmed_at) {
                Some(t) => service_at = Some(service_at.map_or(t, |c| c.max(t))),
                None => return Ok(()),
            }
        }
        let (Some(c), Some(s)) = (config_at, service_at) else {
            return Ok(());
        };
        let t1 = c.max(s);
        rec.setup.completed_at = Some(t1);
        info!(change = %rec.change.id, %t1, "setup completed");
        self.note(
            rec,
            Event::SetupCompleted {
                t0: rec.change.effective_at,
                t1,
                config_confirmed_at: c,
                service_confirmed_at: s,
            },
        )
    }

    async fn compensation_step(
        &self,
        rec: &mut ChangeRecord,
        contract: &Contract,
        plan: &Plan,
    ) -> Result<(), EngineError> {
        let (fault, customer_side) = counted_fault(&rec.setup, plan);
        let decision = compensation::decide(&compensation::Input {
            service: &plan.service,
            tz: contract.tz(),
            t0: rec.change.effective_at,
            t1: rec.setup.completed_at,
            fault,
            now: Utc::now(),
        });
        let (parts, last) = match decision {
            Decision::Pending => return Ok(()),
            Decision::NotOwed(reason) => {
                let reason = match (reason, customer_side) {
                    (crate::model::NotOwed::NoFault, Some(evidence)) => {
                        crate::model::NotOwed::CustomerSide { evidence }
                    }
                    (reason, _) => reason,
                };
                info!(change = %rec.change.id, ?reason, "no compensation");
                self.note(rec, Event::NoCompensation { reason })?;
                rec.setup.settled = true;
                rec.setup.settled_at = Some(Utc::now());
                return Ok(());
            }
            Decision::Interim { parts } => (parts, false),
            Decision::Final { parts } => (parts, true),
        };
        let mut all_shipped = true;
        for part in parts {
            let key = ledger_key(&rec.change.id, &part.period.label());
            let entry = LedgerEntry {
                key: key.clone(),
                tenant: contract.tenant.clone(),
                contract: contract.id.clone(),
                change_id: rec.change.id.clone(),
                currency: contract.currency.clone(),
                created_at: Utc::now(),
                reverses: None,
                part: part.clone(),
            };
            if self.store.add_ledger(&entry)? == Inserted::New {
                info!(change = %rec.change.id, key, credit = part.fee_credit, "compensation recorded");
            }
            // The ledger entry is the truth (a recomputation may differ in `now`).
            let Some(stored) = self.store.ledger_entry(&key)? else {
                continue;
            };
            // Noted once per ledger key, also when a crash came between the two.
            self.note(
                rec,
                Event::Compensation {
                    ledger_key: key.clone(),
                    currency: contract.currency.clone(),
                    part: Box::new(stored.part.clone()),
                },
            )?;
            // The final decision found less than an interim part paid (a confirmation
            // later than the grace): take the difference back, once, under its own key.
            if last {
                if let Some(back) = compensation::reversal(&stored.part, &part) {
                    let rkey = format!("{key}/reversal");
                    let r = LedgerEntry {
                        key: rkey.clone(),
                        reverses: Some(key.clone()),
                        created_at: Utc::now(),
                        part: back,
                        ..entry.clone()
                    };
                    if self.store.add_ledger(&r)? == Inserted::New {
                        warn!(change = %rec.change.id, key, taken_back = r.part.fee_credit, "interim compensation reversed in part");
                    }
                    if let Some(stored_r) = self.store.ledger_entry(&rkey)? {
                        self.note(
                            rec,
                            Event::CompensationReversed {
                                ledger_key: rkey,
                                reverses: key.clone(),
                                currency: contract.currency.clone(),
                                part: Box::new(stored_r.part),
                            },
                        )?;
                    }
                }
            }
            if let Some(s) = &stored.part.shipment {
                if s.quantity > 0
                    && !self.store.shipment_sent(&key)?
                    && !self.order_shipment(rec, contract, &key, s).await?
                {
                    all_shipped = false;
                }
            }
        }
        if last && all_shipped {
            rec.setup.settled = true;
            rec.setup.settled_at = Some(Utc::now());
        }
        Ok(())
    }

    /// Order a shipment under the ledger key; true when the provider accepted it.
    async fn order_shipment(
        &self,
        rec: &ChangeRecord,
        contract: &Contract,
        key: &str,
        s: &crate::model::Shipment,
    ) -> Result<bool, StoreError> {
        let url = format!(
            "{}/v1/shipments",
            self.cfg.provider_url.trim_end_matches('/')
        );
        let body = serde_json::json!({"key": key, "contract": contract.id, "item": s.item, "quantity": s.quantity});
        let r = self.http.post(&url).json(&body).send().await;
        match call_result(r).await {
            Ok(_) => {
                self.store.mark_shipment_sent(key, Utc::now())?;
                self.note(
                    rec,
                    Event::ShipmentAccepted {
                        ledger_key: key.into(),
                        item: s.item.clone(),
                        quantity: s.quantity,
                    },
                )?;
                Ok(true)
            }
            Err(reason) => {
                self.note(
                    rec,
                    Event::ProviderCall {
                        call: "shipment".into(),
                        printer: None,
                        ok: false,
                        result: reason,
                    },
                )?;
                Ok(false)
            }
        }
    }
}

/// Whether a fault counts for compensation, and — when the only fault is on the
/// customer's side and the plan does not compensate those — its evidence.
pub fn counted_fault(setup: &SetupState, plan: &Plan) -> (bool, Option<String>) {
    let provider = setup.service_fault.is_some()
        || setup
            .config_fault
            .as_ref()
            .is_some_and(|f| !f.cause.is_customer());
    let customer = setup.config_fault.as_ref().and_then(|f| match &f.cause {
        Cause::Customer { evidence } => Some(evidence.clone()),
        Cause::Provider => None,
    });
    match customer {
        Some(_) if provider => (true, None),
        Some(_) if plan.compensate_customer_side => (true, None),
        Some(evidence) => (false, Some(evidence)),
        None => (provider, None),
    }
}

/// A provider call's JSON body, or why it failed (error status, timeout, unreachable).
async fn call_result(
    r: Result<reqwest::Response, reqwest::Error>,
) -> Result<serde_json::Value, String> {
    let resp = r.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_string()
        } else if e.is_connect() {
            "unreachable (connection refused)".to_string()
        } else {
            format!("request failed: {e}")
        }
    })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("reading answer: {e}"))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("HTTP {status}: {text}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use platen_protocol::{ApplyReport, ReportStatus, SettingResult};

    /// A wake that arrives while the engine is busy is kept for its next wait; a
    /// clone wakes the same engine; without a wake the engine waits.
    #[tokio::test]
    async fn a_waker_keeps_one_wake_for_the_next_wait() {
        let engine_side = Waker::default();
        let ops_side = engine_side.clone();
        let soon = |w: Waker| async move {
            tokio::time::timeout(Duration::from_millis(50), w.woken())
                .await
                .is_ok()
        };
        assert!(!soon(engine_side.clone()).await, "nothing asked yet");
        ops_side.wake();
        ops_side.wake();
        assert!(soon(engine_side.clone()).await, "the wake was kept");
        assert!(!soon(engine_side.clone()).await, "two wakes make one pass");
    }

    fn report(codes: &[(&str, Code)], completed: &str, received: &str) -> ReceivedReport {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        ReceivedReport {
            report: ApplyReport {
                report_id: "gw:p1:v3".into(),
                agent_id: "gw".parse().unwrap(),
                printer_id: "p1".parse().unwrap(),
                config_version: 3,
                status: ReportStatus::NotApplied,
                settings: codes
                    .iter()
                    .map(|(n, c)| SettingResult {
                        name: n.to_string(),
                        desired: SettingValue::Text("x".into()),
                        read_back: None,
                        code: *c,
                        detail: String::new(),
                        attempts: 1,
                        verified_at: None,
                    })
                    .collect(),
                received_at: t(completed),
                completed_at: t(completed),
                refused: None,
            },
            received_at: t(received),
        }
    }

    fn required(names: &[&str]) -> BTreeMap<String, SettingValue> {
        names
            .iter()
            .map(|n| (n.to_string(), SettingValue::Text("x".into())))
            .collect()
    }

    #[test]
    fn report_verdicts() {
        let t = "2026-01-01T00:00:10Z";
        let all = report(&[("a", Code::Verified), ("b", Code::Verified)], t, t);
        assert_eq!(
            judge_report(&all, &required(&["a", "b"])),
            ReportVerdict::Confirms
        );
        // Settings beyond the required ones do not matter.
        let extra = report(&[("a", Code::Verified), ("z", Code::NotWritable)], t, t);
        assert_eq!(
            judge_report(&extra, &required(&["a"])),
            ReportVerdict::Confirms
        );
        let partial = report(&[("a", Code::Verified), ("b", Code::NotWritable)], t, t);
        let ReportVerdict::Fails(why) = judge_report(&partial, &required(&["a", "b"])) else {
            panic!()
        };
        assert!(why.contains("b: 403"), "{why}");
        let ReportVerdict::Fails(why) = judge_report(&all, &required(&["a", "c"])) else {
            panic!()
        };
        assert!(why.contains("c: missing"), "{why}");
        let mut refused = report(&[], t, t);
        refused.report.refused = Some(platen_protocol::Refusal {
            code: Code::ProtocolUnsupported,
            detail: "desired config uses protocol 2.0".into(),
        });
        let ReportVerdict::Fails(why) = judge_report(&refused, &required(&["a"])) else {
            panic!()
        };
        assert!(
            why.contains("refused the whole config: 505 desired config uses protocol 2.0"),
            "{why}"
        );
    }

    #[test]
    fn a_report_of_other_values_confirms_nothing() {
        let t = "2026-01-01T00:00:10Z";
        let mut r = report(&[("a", Code::Verified)], t, t);
        r.report.settings[0].desired = SettingValue::Text("another contract's".into());
        let ReportVerdict::Fails(why) = judge_report(&r, &required(&["a"])) else {
            panic!()
        };
        assert!(why.contains("a: verified"), "{why}");
    }

    #[test]
    fn customer_side_faults_count_only_where_the_plan_says_so() {
        let plan = |compensate: bool| Plan {
            id: "p".parse().unwrap(),
            name: "P".into(),
            service: crate::model::ServiceKind::Basic { monthly_fee: 100 },
            groups: vec![],
            features: vec![],
            config_template: BTreeMap::new(),
            compensate_customer_side: compensate,
        };
        let note = |cause: Cause| FaultNote {
            at: Utc::now(),
            reason: "r".into(),
            cause,
        };
        let customer = Cause::Customer {
            evidence: "agent gw down".into(),
        };
        let setup = |config: Option<Cause>, service: bool| SetupState {
            config_fault: config.map(note),
            service_fault: service.then(|| note(Cause::Provider)),
            ..Default::default()
        };
        let cases = [
            // (config fault cause, service fault, plan compensates customer side) → counted, evidence
            (None, false, false, (false, None)),
            (Some(Cause::Provider), false, false, (true, None)),
            (
                Some(customer.clone()),
                false,
                false,
                (false, Some("agent gw down")),
            ),
            (Some(customer.clone()), false, true, (true, None)),
            (Some(customer.clone()), true, false, (true, None)),
            (None, true, false, (true, None)),
        ];
        for (config, service, compensate, (counted, evidence)) in cases {
            let got = counted_fault(&setup(config.clone(), service), &plan(compensate));
            assert_eq!(
                (got.0, got.1.as_deref()),
                (counted, evidence),
                "{config:?} {service} {compensate}"
            );
        }
    }

    #[test]
    fn report_time_is_the_earlier_clock_but_not_before_publication() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let published = t("2026-01-01T00:00:00Z");
        let cases = [
            // (agent completed_at, cloud received_at, expected)
            (
                "2026-01-01T00:00:05Z",
                "2026-01-01T00:00:07Z",
                "2026-01-01T00:00:05Z",
            ),
            (
                "2026-01-01T00:00:09Z",
                "2026-01-01T00:00:07Z",
                "2026-01-01T00:00:07Z",
            ),
            // Agent clock far behind: clamped to the publication.
            (
                "2025-12-31T23:00:00Z",
                "2026-01-01T00:00:07Z",
                "2026-01-01T00:00:00Z",
            ),
        ];
        for (c, r, want) in cases {
            assert_eq!(
                report_time(&report(&[], c, r), published),
                t(want),
                "{c} {r}"
            );
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let b = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        assert_eq!(backoff(b, 1, max), Duration::from_millis(200));
        assert_eq!(backoff(b, 3, max), Duration::from_millis(800));
        assert_eq!(backoff(b, 40, max), max);
    }
}
