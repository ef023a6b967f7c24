//! Remote diagnostics: a request on `platen/v1/{tenant}/{printer}/cmd/diag`, answered
//! on `…/cmd/diag/response` with the same [`PrinterDiag`] that `platen-agent diag
//! --json` prints for the printer. Off unless the agent's config enables it.

use crate::config::SettingValue;
use crate::ids::Id;
use crate::telemetry::{Alert, Counter, Identity, InputTray, Status, Supply};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagRequest {
    /// Echoed in the response; 1–64 characters chosen by the requester.
    pub request_id: String,
    /// Write each setting's current value back to test writability.
    #[serde(default)]
    pub write_test: bool,
}

impl DiagRequest {
    pub fn validate(&self) -> Result<(), String> {
        if self.request_id.is_empty() || self.request_id.len() > 64 {
            return Err("request_id must be 1..=64 characters".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagResponse {
    pub request_id: String,
    pub agent_id: Id,
    pub at: DateTime<Utc>,
    pub result: PrinterDiag,
}

/// Everything a technician needs to know about one printer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrinterDiag {
    pub printer_id: Id,
    /// `address:port`, SNMP version. Never the community.
    pub target: String,
    pub snmp_version: String,
    pub reachable: bool,
    /// Round trip of the first GET, in milliseconds.
    pub round_trip_ms: Option<f64>,
    pub identity: Option<Identity>,
    pub status: Option<Status>,
    pub settings: Vec<SettingCheck>,
    pub counters: Vec<Counter>,
    pub supplies: Vec<Supply>,
    pub alerts: Vec<Alert>,
    /// Paper input trays; since protocol 1.1, absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trays: Vec<InputTray>,
    /// Whether the page counters add up where they should (black + colour = total…);
    /// since protocol 1.2, absent when there is nothing to compare.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counter_checks: Vec<CounterCheck>,
    pub last_report: Option<LastReport>,
    pub problems: Vec<Problem>,
    /// Things to fix that do not stop the printer from working (say, a default
    /// write community); `diag` still exits 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Problem>,
}

impl PrinterDiag {
    /// A diagnosis of `printer` at `target` with nothing found yet (not reachable, no
    /// readings, no problems): what a check fills in.
    pub fn new(printer_id: Id, target: String, snmp_version: String) -> PrinterDiag {
        PrinterDiag {
            printer_id,
            target,
            snmp_version,
            reachable: false,
            round_trip_ms: None,
            identity: None,
            status: None,
            settings: Vec::new(),
            counters: Vec::new(),
            counter_checks: Vec::new(),
            supplies: Vec::new(),
            alerts: Vec::new(),
            trays: Vec::new(),
            last_report: None,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Parts of a count against their whole, as read in one poll: `black + color` against
/// `total`, say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterCheck {
    /// The whole's kind (`total`, `print`, …) and where its value came from.
    pub whole: String,
    pub whole_source: String,
    pub whole_value: u64,
    /// The parts' kinds and their sum.
    pub parts: Vec<String>,
    pub parts_value: u64,
}

impl CounterCheck {
    /// How far the parts are from the whole: positive when the whole counts more.
    pub fn difference(&self) -> i128 {
        i128::from(self.whole_value) - i128::from(self.parts_value)
    }

    /// Equal, or the parts a little below the whole (within 1 %: pages the split
    /// does not count, such as reports, or counters read a moment apart).
    pub fn adds_up(&self) -> bool {
        let d = self.difference();
        d == 0 || (d > 0 && d * 100 <= i128::from(self.whole_value))
    }
}

/// One profile setting as found on the printer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingCheck {
    pub name: String,
    pub oid: String,
    /// The current value, normalised; absent when the printer does not have it.
    pub value: Option<SettingValue>,
    /// Only with the write test: whether writing the current value back worked.
    pub writable: Option<bool>,
    pub detail: String,
}

/// The last final report the agent made for a printer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReport {
    pub config_version: u64,
    pub status: String,
    pub completed_at: DateTime<Utc>,
    /// Settings not verified, as `name=code`.
    pub failed: Vec<String>,
}

/// Something wrong, with a one-line hint for the technician.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Which check found it: `snmp`, `identity`, `write`, `supplies`, `status`, `broker`, `outbox`.
    pub check: String,
    pub message: String,
    pub hint: String,
}
