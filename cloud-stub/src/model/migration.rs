//! Plan migrations as stored: who asked, what was decided on which usage, what became of it.

use crate::model::{PrinterUsage, Usage, Verdict};
use chrono::{DateTime, Utc};
use platen_protocol::Id;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Who asks: the actor of the caller's API token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    Operator,
    Tenant(Id),
    Reseller(Id),
}

impl FromStr for Actor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("actor {s:?}: write operator, tenant:ID or reseller:ID");
        match s.split_once(':') {
            None if s == "operator" => Ok(Actor::Operator),
            Some(("tenant", id)) => id.parse().map(Actor::Tenant).map_err(|_| bad()),
            Some(("reseller", id)) => id.parse().map(Actor::Reseller).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Operator => f.write_str("operator"),
            Actor::Tenant(t) => write!(f, "tenant:{t}"),
            Actor::Reseller(r) => write!(f, "reseller:{r}"),
        }
    }
}

impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A decision with everything it was based on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationDecision {
    pub tenant: Id,
    pub contract: Id,
    pub from_plan: Id,
    pub to_plan: Id,
    pub requested_by: Actor,
    pub decided_at: DateTime<Utc>,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// When an allowed migration takes effect.
    pub effective_at: Option<DateTime<Utc>>,
    /// The usage figures the rules saw.
    pub usage: Usage,
    /// The period they are from, and each printer's part.
    pub period: String,
    pub printers: BTreeMap<Id, Option<PrinterUsage>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MigrationState {
    Refused,
    Scheduled,
    Executed {
        change_id: String,
        at: DateTime<Utc>,
    },
    Cancelled {
        by: Actor,
        at: DateTime<Utc>,
    },
    /// The contract left the source plan before the migration's time.
    Superseded {
        reason: String,
        at: DateTime<Utc>,
    },
}

impl MigrationState {
    /// The `state` tag as serialized.
    pub fn name(&self) -> &'static str {
        match self {
            MigrationState::Refused => "refused",
            MigrationState::Scheduled => "scheduled",
            MigrationState::Executed { .. } => "executed",
            MigrationState::Cancelled { .. } => "cancelled",
            MigrationState::Superseded { .. } => "superseded",
        }
    }
}

/// A stored migration request and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: String,
    #[serde(flatten)]
    pub decision: MigrationDecision,
    #[serde(flatten)]
    pub state: MigrationState,
}
