//! The agent's retained health message.

use crate::ids::Id;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Up,
    Down,
}

/// Published retained on `platen/v1/agents/{agent}/health`. The same topic carries
/// the MQTT last will with `status: down`, so a vanished agent shows as down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub agent_id: Id,
    pub status: HealthStatus,
    /// The agent's version: crate version and git commit (`0.1.0+1a2b3c4d5e6f`).
    pub version: String,
    /// When this status was set. For the last will, when the agent connected.
    pub since: DateTime<Utc>,
    /// Seconds since the agent process started (absent in the last will). An `up`
    /// message is republished every minute, so this stays current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    /// Why the agent is not up, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
