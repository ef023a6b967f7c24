//! What the cloud last heard of agents and printers, and whose side a fault is on.

use chrono::{DateTime, Utc};
use platen_protocol::Id;
use serde::{Deserialize, Serialize};

/// What the cloud last heard from an agent on its health topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSeen {
    pub up: bool,
    /// Since when it is in that state, as far as the cloud can tell: the arrival of a
    /// live message, or the agent's own `since` for a retained one (read at start).
    pub since: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the cloud last heard of a printer in telemetry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrinterSeen {
    pub agent: Id,
    pub reachable: bool,
    /// Since when reachability is what it is (first message that said so).
    pub since: DateTime<Utc>,
}

/// A printer under contract whose telemetry has gone quiet: no reading newer than
/// `stale_after` (see `fleet::stale`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quiet {
    pub tenant: Id,
    pub contract: Id,
    pub printer: Id,
    /// When its newest stored reading was taken; none since the contract began.
    pub last_reading: Option<DateTime<Utc>>,
    /// When it became stale: the newest reading (or the contract's start) plus
    /// `stale_after`.
    pub stale_at: DateTime<Utc>,
    pub stale_after: std::time::Duration,
    /// The agent that last reported it, and whether that agent's last word was that
    /// the printer answers (none: never heard of).
    pub agent: Option<Id>,
    pub answering: Option<bool>,
}

impl Quiet {
    /// Which side went quiet, as far as the cloud can tell.
    pub fn cause(&self) -> &'static str {
        match (self.last_reading, self.answering) {
            (None, _) => "never_reported",
            (Some(_), Some(false)) => "printer_not_answering",
            (Some(_), _) => "agent_silent",
        }
    }
}

/// The cause of a fault, with its evidence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "side", rename_all = "snake_case")]
pub enum Cause {
    #[default]
    Provider,
    Customer {
        evidence: String,
    },
}

impl Cause {
    pub fn is_customer(&self) -> bool {
        matches!(self, Cause::Customer { .. })
    }
}
