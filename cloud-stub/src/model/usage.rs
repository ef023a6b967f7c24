//! Telemetry samples and the usage computed from them, as data.

use crate::model::{SuppliesState, TelemetryState};
use chrono::{DateTime, Utc};
use platen_protocol::telemetry::CounterKind;
use platen_protocol::Id;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the cloud keeps of one reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub read_at: DateTime<Utc>,
    /// The agent's message that first carried this reading.
    pub message_id: String,
    /// Name of the billing counter and its value, when it was read.
    pub counter: Option<String>,
    pub value: Option<u64>,
    pub supplies: SuppliesState,
    /// The reading's other page counters (vendor counters with their kinds), kept
    /// beside the billing one for contracts that bill black and colour or prints and
    /// copies apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<OtherCounter>,
}

/// A page counter read beside the billing one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherCounter {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CounterKind>,
    pub value: u64,
}

/// Why usage did not simply follow the counter between two samples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reset {
    /// The counter went down: nothing counted for the step.
    Backwards {
        old: u64,
        new: u64,
        at: DateTime<Utc>,
    },
    /// The Counter32 wrapped: the pages round the wrap were counted.
    Wrap {
        old: u64,
        new: u64,
        at: DateTime<Utc>,
        pages: u64,
    },
    /// A reading below the counter that later readings climbed back above: ignored,
    /// usage counts as if it had not been there.
    Outlier { value: u64, at: DateTime<Utc> },
    /// The billing counter changed (another profile): nothing counted for the step.
    SourceChanged {
        old: String,
        new: String,
        at: DateTime<Utc>,
    },
}

/// One printer's usage in one period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrinterUsage {
    pub pages: u64,
    /// Samples inside the period.
    pub samples: usize,
    /// The counter value usage counts from (the last sample before the period, or
    /// the first inside it), and the last value.
    pub from_value: Option<u64>,
    pub to_value: Option<u64>,
    pub resets: Vec<Reset>,
    /// Worst consumable supply state in the last sample.
    pub supplies: SuppliesState,
    /// Pages per counter kind in the period, from the other counters
    /// ([`crate::billing::usage::pages_by_kind`]); informational — usage is `pages`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_kind: BTreeMap<CounterKind, u64>,
}

/// A contract's usage in one period: every printer's, and what the rules see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractUsage {
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Sum over the printers with telemetry; absent when none has any.
    pub used: Option<u64>,
    pub telemetry: TelemetryState,
    pub supplies: SuppliesState,
    /// Per printer; `null` for a printer without telemetry in the period.
    pub printers: BTreeMap<Id, Option<PrinterUsage>>,
}
