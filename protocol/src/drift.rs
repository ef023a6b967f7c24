//! Drift: a verified setting that was later changed outside Platen (on the printer's
//! panel, its web page, another tool).
//!
//! The agent re-reads the last verified configuration periodically. Settings found
//! different are reported with [`Code::Drift`] (203) and the value found, on
//! `platen/v1/{tenant}/{printer}/config/drift`, through the durable outbox. Settings
//! configured for automatic re-apply are SET again and read back; `reapplied` then
//! carries the outcome (200 when the desired value is back).

use crate::config::SettingValue;
use crate::ids::Id;
use crate::report::Code;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftReport {
    /// `{agent}:{printer}:v{version}:d{seq}`.
    pub report_id: String,
    pub agent_id: Id,
    pub printer_id: Id,
    /// The desired config version whose verified values drifted.
    pub config_version: u64,
    /// Per printer, increasing by one per drift report.
    pub seq: u64,
    pub detected_at: DateTime<Utc>,
    pub settings: Vec<DriftedSetting>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftedSetting {
    pub name: String,
    pub desired: SettingValue,
    /// The value found on the printer (normalised), absent when it could not be read.
    pub found: Option<SettingValue>,
    /// Always 203 (drift).
    pub code: Code,
    /// The outcome of the automatic re-apply, when the setting has it enabled.
    pub reapplied: Option<Code>,
    pub detail: String,
}

impl DriftReport {
    pub fn make_id(agent: &Id, printer: &Id, version: u64, seq: u64) -> String {
        format!("{agent}:{printer}:v{version}:d{seq}")
    }

    pub fn validate(&self) -> Result<(), String> {
        let expected = Self::make_id(
            &self.agent_id,
            &self.printer_id,
            self.config_version,
            self.seq,
        );
        if self.report_id != expected {
            return Err(format!(
                "report_id {:?} does not match {expected:?}",
                self.report_id
            ));
        }
        if self.settings.is_empty() {
            return Err("a drift report names at least one setting".into());
        }
        if self.settings.len() > crate::config::MAX_SETTINGS {
            return Err(format!(
                "{} settings; the limit is {}",
                self.settings.len(),
                crate::config::MAX_SETTINGS
            ));
        }
        if let Some(s) = self.settings.iter().find(|s| s.code != Code::Drift) {
            return Err(format!("setting {} has code {}, not 203", s.name, s.code));
        }
        Ok(())
    }
}
