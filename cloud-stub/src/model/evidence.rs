//! Contract state as data: a change with its setup state, the evidence timeline's
//! events, ledger entries (kept behind the storage port).

use crate::model::Cause;
use crate::model::{ChangeKind, ContractChange};
use crate::model::{NotOwed, Part};
use chrono::{DateTime, Utc};
use platen_protocol::{Id, ReportStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
