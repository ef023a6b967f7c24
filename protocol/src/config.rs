//! The desired configuration of one printer.

use crate::ids::Id;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Most settings one desired config may carry.
pub const MAX_SETTINGS: usize = 256;
/// Longest text value, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Longest setting name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// What the cloud wants one printer's configuration to be.
///
/// Published retained with QoS 1 on `platen/v1/{tenant}/{printer}/config/desired`.
/// `version` is monotonic per printer: an agent never applies a version lower than or
/// equal to the last one it completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredConfig {
    pub printer_id: Id,
    pub version: u64,
    pub issued_at: DateTime<Utc>,
    /// Setting name (from the agent's profile) → value. Ordered, so reports are stable.
    pub settings: BTreeMap<String, SettingValue>,
    /// The cloud's Ed25519 signature ([`crate::signing`]); absent when the cloud
    /// signs nothing. Agents with trusted keys refuse configs without a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signing::ConfigSignature>,
}

/// A setting's value: an integer or a text. Enumerated integers (e.g.
/// `prtConsoleDisable`) may be given by label (`"disabled"`) or number (`4`).
///
/// Deserialized by hand rather than with `#[serde(untagged)]`: untagged buffers every
/// value and tries each variant (a report decoded 2.5× slower), and its error said
/// only "did not match any variant".
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum SettingValue {
    Integer(i64),
    Text(String),
}

impl<'de> serde::Deserialize<'de> for SettingValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SettingValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a text")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SettingValue, E> {
                Ok(SettingValue::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SettingValue, E> {
                i64::try_from(v)
                    .map(SettingValue::Integer)
                    .map_err(|_| E::custom(format!("integer {v} is out of range")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SettingValue, E> {
                Ok(SettingValue::Text(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<SettingValue, E> {
                Ok(SettingValue::Text(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for SettingValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingValue::Integer(i) => write!(f, "{i}"),
            SettingValue::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<&str> for SettingValue {
    fn from(s: &str) -> Self {
        SettingValue::Text(s.to_string())
    }
}
impl From<i64> for SettingValue {
    fn from(i: i64) -> Self {
        SettingValue::Integer(i)
    }
}

/// Check a setting name: 1–64 bytes of `[A-Za-z0-9_.-]`.
pub fn validate_setting_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "setting name must be 1..={MAX_NAME_BYTES} bytes, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!("setting name {name:?} contains {c:?}"));
    }
    Ok(())
}

impl DesiredConfig {
    /// Structural checks beyond the JSON shape. Whether a setting exists on the
    /// printer is the agent's business (it reports 404), not a parse error.
    pub fn validate(&self) -> Result<(), String> {
        if self.version == 0 {
            return Err("version must be at least 1".into());
        }
        if self.settings.len() > MAX_SETTINGS {
            return Err(format!(
                "{} settings; the limit is {MAX_SETTINGS}",
                self.settings.len()
            ));
        }
        for (name, value) in &self.settings {
            validate_setting_name(name)?;
            if let SettingValue::Text(t) = value {
                if t.len() > MAX_TEXT_BYTES {
                    return Err(format!(
                        "setting {name}: text of {} bytes; the limit is {MAX_TEXT_BYTES}",
                        t.len()
                    ));
                }
            }
        }
        Ok(())
    }
}
