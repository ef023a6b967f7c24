//! What a migration rule sees and decides, as data.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Whether the period has telemetry: from no printer, some, or every printer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TelemetryState {
    None,
    Partial,
    Complete,
}

/// The worst consumable supply across the contract's printers (last readings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppliesState {
    Ok,
    Low,
    Empty,
    Unknown,
}

/// When an allowed migration takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    Immediate,
    /// At the start of the next billing period.
    NextPeriod,
    /// At the end of the contract's term (see [`crate::model::Contract::term_months`]).
    EndOfTerm,
    /// This long after the request.
    After(Duration),
}

impl FromStr for Timing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "immediate" => Ok(Timing::Immediate),
            "next_period" => Ok(Timing::NextPeriod),
            "end_of_term" => Ok(Timing::EndOfTerm),
            _ => match s.strip_prefix("after ") {
                Some(d) => humantime::parse_duration(d.trim())
                    .map(Timing::After)
                    .map_err(|e| format!("{s:?}: {e} (e.g. \"after 14d\")")),
                None => Err(format!(
                    "{s:?}: timing is immediate, next_period, end_of_term or \"after DURATION\""
                )),
            },
        }
    }
}

impl fmt::Display for Timing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timing::Immediate => f.write_str("immediate"),
            Timing::NextPeriod => f.write_str("next_period"),
            Timing::EndOfTerm => f.write_str("end_of_term"),
            Timing::After(d) => write!(f, "after {}", humantime::format_duration(*d)),
        }
    }
}

impl Serialize for Timing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a rule decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Refuse { code: String, message: String },
    Allow { timing: Timing },
}

/// What the rules see of a tenant's usage in the current billing period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Pages printed in the period, summed over the contract's printers; absent when
    /// no printer sent telemetry for the period.
    pub used: Option<u64>,
    pub telemetry: TelemetryState,
    pub days_left: u32,
    pub supplies: SuppliesState,
}

/// The rule that decided, and its decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub rule: String,
    /// Line of the rule in the catalog file.
    pub rule_line: usize,
    #[serde(flatten)]
    pub decision: Decision,
}
