//! The agent's per-setting report on one desired config version.

use crate::config::SettingValue;
use crate::ids::Id;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Per-setting reason code (HTTP-like, documented in `docs/src/protocol.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// 200: the value was read back from the printer and equals the desired value.
    Verified,
    /// 202: the printer accepted the SET, but the read-back could not be made yet.
    AcceptedPending,
    /// 203: the value on the printer changed outside Platen (drift).
    Drift,
    /// 400: the value was rejected (wrongValue, wrongType, badValue, or outside the profile's constraints).
    ValueRejected,
    /// 401: the whole desired config was refused: it is unsigned, or its signature
    /// does not verify against a key this agent trusts (report-level, see
    /// [`ApplyReport::refused`] and [`crate::signing`]).
    SignatureInvalid,
    /// 403: not writable, or not permitted with these credentials.
    NotWritable,
    /// 404: not supported by this printer (noSuchObject/noSuchInstance) or unknown setting name.
    NotSupported,
    /// 409: superseded by a newer desired version before it was applied.
    Superseded,
    /// 412: the read-back still differs from the desired value after the settle delay and retries.
    ReadBackMismatch,
    /// 424: skipped because a prerequisite setting failed.
    PrerequisiteFailed,
    /// 500: an error inside the agent or an unclassified printer error (genErr).
    AgentError,
    /// 504: the printer did not answer (timeout after bounded retries).
    Unreachable,
    /// 505: the whole desired config was refused: it uses a newer major protocol
    /// version than this agent speaks (report-level, see [`ApplyReport::refused`]).
    ProtocolUnsupported,
}

impl Code {
    pub const ALL: [Code; 13] = [
        Code::Verified,
        Code::AcceptedPending,
        Code::Drift,
        Code::ValueRejected,
        Code::SignatureInvalid,
        Code::NotWritable,
        Code::NotSupported,
        Code::Superseded,
        Code::ReadBackMismatch,
        Code::PrerequisiteFailed,
        Code::AgentError,
        Code::Unreachable,
        Code::ProtocolUnsupported,
    ];

    pub fn as_u16(self) -> u16 {
        match self {
            Code::Verified => 200,
            Code::AcceptedPending => 202,
            Code::Drift => 203,
            Code::ValueRejected => 400,
            Code::SignatureInvalid => 401,
            Code::NotWritable => 403,
            Code::NotSupported => 404,
            Code::Superseded => 409,
            Code::ReadBackMismatch => 412,
            Code::PrerequisiteFailed => 424,
            Code::AgentError => 500,
            Code::Unreachable => 504,
            Code::ProtocolUnsupported => 505,
        }
    }

    pub fn from_u16(n: u16) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_u16() == n)
    }

    /// A short name, for tables and logs.
    pub fn label(self) -> &'static str {
        match self {
            Code::Verified => "verified",
            Code::AcceptedPending => "accepted, read-back pending",
            Code::Drift => "drift",
            Code::ValueRejected => "value rejected",
            Code::SignatureInvalid => "signature not valid",
            Code::NotWritable => "not writable",
            Code::NotSupported => "not supported",
            Code::Superseded => "superseded",
            Code::ReadBackMismatch => "read-back differs",
            Code::PrerequisiteFailed => "prerequisite failed",
            Code::AgentError => "agent error",
            Code::Unreachable => "printer unreachable",
            Code::ProtocolUnsupported => "protocol version not supported",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u16::deserialize(d)?;
        Code::from_u16(n).ok_or_else(|| serde::de::Error::custom(format!("unknown code {n}")))
    }
}

/// The outcome of a whole desired config version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    /// Every setting verified (200).
    Applied,
    /// Some settings verified, some not.
    PartiallyApplied,
    /// No setting verified.
    NotApplied,
    /// A newer version arrived before this one finished; unfinished settings carry 409.
    Superseded,
}

impl ReportStatus {
    /// Derive the document status from the per-setting codes. Never claims atomicity:
    /// a config with no settings at all is trivially applied.
    pub fn from_results(results: &[SettingResult], superseded: bool) -> ReportStatus {
        if superseded {
            return ReportStatus::Superseded;
        }
        let verified = results.iter().filter(|r| r.code == Code::Verified).count();
        if verified == results.len() {
            ReportStatus::Applied
        } else if verified == 0 {
            ReportStatus::NotApplied
        } else {
            ReportStatus::PartiallyApplied
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Applied => "applied",
            ReportStatus::PartiallyApplied => "partially_applied",
            ReportStatus::NotApplied => "not_applied",
            ReportStatus::Superseded => "superseded",
        }
    }
}

impl fmt::Display for ReportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One setting's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingResult {
    pub name: String,
    pub desired: SettingValue,
    /// The value last read from the printer, normalised; absent when none could be read.
    pub read_back: Option<SettingValue>,
    pub code: Code,
    /// Human-readable reason, e.g. "notWritable from 127.0.0.1:16100". Never holds secrets.
    pub detail: String,
    /// SET PDUs that carried the setting to its result (0 when the printer already had
    /// the value; a shared PDU the printer refused is not counted).
    pub attempts: u32,
    pub verified_at: Option<DateTime<Utc>>,
}

/// The agent's report on one desired config version of one printer.
///
/// `report_id` is `{agent_id}:{printer_id}:v{config_version}`: stable across
/// resends and re-applies after a crash, so the cloud can deduplicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub report_id: String,
    pub agent_id: Id,
    pub printer_id: Id,
    pub config_version: u64,
    pub status: ReportStatus,
    pub settings: Vec<SettingResult>,
    /// When the agent received (and persisted) the desired config.
    pub received_at: DateTime<Utc>,
    /// When the agent finished with it.
    pub completed_at: DateTime<Utc>,
    /// Set when the agent refused the whole config without touching the printer
    /// (then `status` is `not_applied` and `settings` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

/// Why a desired config was refused as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: Code,
    /// Human-readable reason. Never holds secrets.
    pub detail: String,
}

impl ApplyReport {
    pub fn make_id(agent: &Id, printer: &Id, version: u64) -> String {
        format!("{agent}:{printer}:v{version}")
    }

    /// The id of a report that refuses a whole config: its own id, so a refusal
    /// (say, of a forged config carrying the next version number) can never be
    /// mistaken for, or deduplicate away, the report of the genuine config.
    pub fn make_refusal_id(agent: &Id, printer: &Id, version: u64, code: Code) -> String {
        format!("{agent}:{printer}:v{version}:refused{}", code.as_u16())
    }

    /// Structural checks beyond the JSON shape.
    pub fn validate(&self) -> Result<(), String> {
        let expected = match &self.refused {
            None => Self::make_id(&self.agent_id, &self.printer_id, self.config_version),
            Some(r) => Self::make_refusal_id(
                &self.agent_id,
                &self.printer_id,
                self.config_version,
                r.code,
            ),
        };
        if self.report_id != expected {
            return Err(format!(
                "report_id {:?} does not match {expected:?}",
                self.report_id
            ));
        }
        if self.settings.len() > crate::config::MAX_SETTINGS {
            return Err(format!(
                "{} settings; the limit is {}",
                self.settings.len(),
                crate::config::MAX_SETTINGS
            ));
        }
        if self.completed_at < self.received_at {
            return Err("completed_at is before received_at".into());
        }
        if self.refused.is_some()
            && (self.status != ReportStatus::NotApplied || !self.settings.is_empty())
        {
            return Err("a refused config is not_applied and has no settings".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(code: Code) -> SettingResult {
        SettingResult {
            name: "x".into(),
            desired: SettingValue::Integer(1),
            read_back: None,
            code,
            detail: String::new(),
            attempts: 1,
            verified_at: None,
        }
    }

    #[test]
    fn codes_round_trip_as_numbers() {
        for c in Code::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, c.as_u16().to_string());
            assert_eq!(serde_json::from_str::<Code>(&json).unwrap(), c);
        }
        assert!(serde_json::from_str::<Code>("201").is_err());
        assert!(serde_json::from_str::<Code>("\"200\"").is_err());
    }

    #[test]
    fn status_table() {
        use Code::*;
        let cases: &[(&[Code], bool, ReportStatus)] = &[
            (&[], false, ReportStatus::Applied),
            (&[Verified], false, ReportStatus::Applied),
            (&[Verified, Verified], false, ReportStatus::Applied),
            (
                &[Verified, NotWritable],
                false,
                ReportStatus::PartiallyApplied,
            ),
            (
                &[ReadBackMismatch, Verified, Unreachable],
                false,
                ReportStatus::PartiallyApplied,
            ),
            (&[NotWritable], false, ReportStatus::NotApplied),
            (&[Unreachable, Unreachable], false, ReportStatus::NotApplied),
            (&[AcceptedPending], false, ReportStatus::NotApplied),
            (&[Verified, Superseded], true, ReportStatus::Superseded),
            (&[Verified], true, ReportStatus::Superseded),
        ];
        for (codes, superseded, want) in cases {
            let rs: Vec<_> = codes.iter().map(|c| result(*c)).collect();
            assert_eq!(
                ReportStatus::from_results(&rs, *superseded),
                *want,
                "{codes:?}"
            );
        }
    }
}
