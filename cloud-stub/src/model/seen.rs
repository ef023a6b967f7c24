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
