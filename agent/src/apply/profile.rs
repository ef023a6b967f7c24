//! The settings catalog: named settings mapped to SNMP objects.
//!
//! A profile (TOML; see `agent/profiles/default.toml`) says, per setting name, which
//! OID to write, its SNMP type, the values allowed, how to compare the read-back, and
//! ordering hints (`disruptive`, `requires`). The built-in `default` profile covers
//! the standard writable objects of SNMPv2-MIB and the Printer MIB (RFC 3805).
//! Everything here is pure: no I/O except [`Profile::load`] reading a file.

use crate::snmp::{ObjectId, SnmpValue};
use platen_protocol::config::validate_setting_name;
use platen_protocol::SettingValue;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// The built-in profile's text.
pub const DEFAULT_PROFILE: &str = include_str!("../../profiles/default.toml");

/// Other built-in profiles, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "konica-minolta",
        include_str!("../../profiles/konica-minolta.toml"),
    ),
    ("hp", include_str!("../../profiles/hp.toml")),
    ("xerox", include_str!("../../profiles/xerox.toml")),
    ("canon", include_str!("../../profiles/canon.toml")),
    ("ricoh", include_str!("../../profiles/ricoh.toml")),
];

/// Printer makers by IANA enterprise number (the arc after 1.3.6.1.4.1 in
/// sysObjectID), with the built-in profile that reads their vendor counters, if any.
pub const MAKERS: &[(u32, &str, Option<&str>)] = &[
    (11, "HP", Some("hp")),
    (1602, "Canon", Some("canon")),
    (367, "Ricoh", Some("ricoh")),
    (1347, "Kyocera", None),
    (253, "Xerox", Some("xerox")),
    (2435, "Brother", None),
    (641, "Lexmark", None),
    (2385, "Sharp", None),
    (1248, "Epson", None),
    (18334, "Konica Minolta", Some("konica-minolta")),
];

/// The maker of a printer by its sysObjectID, with the built-in profile for it.
pub fn maker(sys_object_id: &str) -> Option<(&'static str, Option<&'static str>)> {
    let rest = sys_object_id
        .trim_start_matches('.')
        .strip_prefix("1.3.6.1.4.1.")?;
    let enterprise: u32 = rest.split('.').next()?.parse().ok()?;
    MAKERS
        .iter()
        .find(|(n, _, _)| *n == enterprise)
        .map(|(_, name, profile)| (*name, *profile))
}

/// Objects whose write is destructive, by OID prefix: a profile may name them only
/// with `destructive = true` on the setting and `allow_destructive = true` in its
/// `[profile]` header (an explicit opt-in per profile). The built-in profiles name none.
pub const DESTRUCTIVE: &[(&str, &str)] = &[
    (
        "1.3.6.1.2.1.43.5.1.1.3",
        "prtGeneralReset (power-cycles the printer or resets it to factory defaults)",
    ),
    (
        "1.3.6.1.6.3.12",
        "SNMP-TARGET-MIB (where the printer sends its notifications)",
    ),
    (
        "1.3.6.1.6.3.15",
        "SNMP-USER-BASED-SM-MIB (SNMPv3 users and keys)",
    ),
    (
        "1.3.6.1.6.3.16",
        "SNMP-VIEW-BASED-ACM-MIB (who may read and write what)",
    ),
    ("1.3.6.1.6.3.18", "SNMP-COMMUNITY-MIB (the communities)"),
];

/// What destructive object `oid` falls under, if any.
pub fn destructive(oid: &ObjectId) -> Option<&'static str> {
    DESTRUCTIVE.iter().find_map(|(prefix, what)| {
        let prefix: ObjectId = prefix.parse().ok()?;
        oid.0.starts_with(&prefix.0).then_some(*what)
    })
}

pub use crate::snmp::printer_mib::{HR_DEVICE_PRINTER, HR_DEVICE_TYPE};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("profile {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("printer {printer}: reapply_on_drift names {setting}, which profile {profile} does not have")]
    UnknownReapply {
        printer: platen_protocol::Id,
        setting: String,
        profile: String,
    },
}

/// Load every profile the config names (once each) and check each printer's
/// `reapply_on_drift` against its profile.
pub fn load_all(
    cfg: &crate::config::AgentConfig,
) -> Result<HashMap<String, std::sync::Arc<Profile>>, ProfileError> {
    let mut profiles: HashMap<String, std::sync::Arc<Profile>> = HashMap::new();
    for p in &cfg.printers {
        if !profiles.contains_key(&p.profile) {
            profiles.insert(
                p.profile.clone(),
                std::sync::Arc::new(Profile::load(&p.profile)?),
            );
        }
        let profile = &profiles[&p.profile];
        if let Some(s) = p
            .reapply_on_drift
            .iter()
            .find(|s| *s != "*" && profile.get(s).is_none())
        {
            return Err(ProfileError::UnknownReapply {
                printer: p.id.clone(),
                setting: s.clone(),
                profile: profile.name.clone(),
            });
        }
    }
    Ok(profiles)
}

/// Where a setting lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OidTemplate {
    Fixed(ObjectId),
    /// `prefix.{device}`: the printer's hrDeviceIndex is appended.
    PerDevice(ObjectId),
}

impl OidTemplate {
    pub fn needs_device(&self) -> bool {
        matches!(self, OidTemplate::PerDevice(_))
    }
    pub fn resolve(&self, device: Option<u32>) -> Option<ObjectId> {
        match (self, device) {
            (OidTemplate::Fixed(o), _) => Some(o.clone()),
            (OidTemplate::PerDevice(p), Some(d)) => Some(p.child(d)),
            (OidTemplate::PerDevice(_), None) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Text {
        max_len: usize,
        case_insensitive: bool,
    },
    Integer {
        min: i64,
        max: i64,
        labels: BTreeMap<String, i64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingDef {
    pub name: String,
    pub oid: OidTemplate,
    pub kind: Kind,
    pub disruptive: bool,
    pub requires: Vec<String>,
}

/// A value checked against its definition, ready to SET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    Text(String),
    Integer(i64),
}

impl Prepared {
    pub fn to_snmp(&self) -> SnmpValue {
        match self {
            Prepared::Text(s) => SnmpValue::OctetString(s.as_bytes().to_vec()),
            Prepared::Integer(i) => SnmpValue::Integer(*i),
        }
    }
}

impl SettingDef {
    /// Check a desired value; the error is the report's detail for code 400.
    pub fn prepare(&self, value: &SettingValue) -> Result<Prepared, String> {
        match (&self.kind, value) {
            (Kind::Text { max_len, .. }, SettingValue::Text(s)) => {
                if s.len() > *max_len {
                    return Err(format!(
                        "text of {} bytes; {} allows at most {max_len}",
                        s.len(),
                        self.name
                    ));
                }
                Ok(Prepared::Text(s.clone()))
            }
            (Kind::Text { .. }, SettingValue::Integer(_)) => {
                Err(format!("{} takes a text, not a number", self.name))
            }
            (Kind::Integer { min, max, labels }, v) => {
                let n = match v {
                    SettingValue::Integer(n) => *n,
                    SettingValue::Text(label) => *labels.get(label).ok_or_else(|| {
                        if labels.is_empty() {
                            format!("{} takes a number, not a text", self.name)
                        } else {
                            let names: Vec<&str> = labels.keys().map(String::as_str).collect();
                            format!("{label:?} is not one of {}", names.join(", "))
                        }
                    })?,
                };
                if n < *min || n > *max {
                    return Err(format!("{n} is outside {min}..={max}"));
                }
                Ok(Prepared::Integer(n))
            }
        }
    }

    /// Normalise a read-back into the form of the desired value, or explain why it
    /// cannot be compared (wrong type from the printer).
    pub fn normalize(
        &self,
        got: &SnmpValue,
        desired: &SettingValue,
    ) -> Result<SettingValue, String> {
        match (&self.kind, got) {
            (Kind::Text { .. }, SnmpValue::OctetString(b)) => {
                let s = String::from_utf8_lossy(b);
                Ok(SettingValue::Text(
                    s.trim_end_matches(|c: char| c == '\0' || c.is_whitespace())
                        .to_string(),
                ))
            }
            (Kind::Integer { labels, .. }, SnmpValue::Integer(n)) => {
                // Report in the form the cloud used: a label if it sent a label.
                if matches!(desired, SettingValue::Text(_)) {
                    if let Some((label, _)) = labels.iter().find(|(_, v)| **v == *n) {
                        return Ok(SettingValue::Text(label.clone()));
                    }
                }
                Ok(SettingValue::Integer(*n))
            }
            (_, other) => Err(format!("printer returned an unexpected type: {other:?}")),
        }
    }

    /// Does a normalised read-back equal the prepared desired value?
    pub fn matches(&self, read_back: &SettingValue, want: &Prepared) -> bool {
        match (&self.kind, read_back, want) {
            (
                Kind::Text {
                    case_insensitive, ..
                },
                SettingValue::Text(got),
                Prepared::Text(w),
            ) => {
                let w = w.trim_end_matches(|c: char| c == '\0' || c.is_whitespace());
                if *case_insensitive {
                    got.eq_ignore_ascii_case(w)
                } else {
                    got == w
                }
            }
            (Kind::Integer { labels, .. }, got, Prepared::Integer(w)) => match got {
                SettingValue::Integer(n) => n == w,
                SettingValue::Text(l) => labels.get(l) == Some(w),
            },
            _ => false,
        }
    }
}

/// A named set of settings.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub description: String,
    settings: HashMap<String, SettingDef>,
    /// Vendor page counters read with the telemetry (`[[counter]]`).
    pub counters: Vec<crate::snmp::printer_mib::VendorCounter>,
    /// The counter usage is computed from (`billing_counter` in `[profile]`).
    pub billing_counter: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    profile: RawHeader,
    #[serde(default, rename = "setting")]
    settings: Vec<RawSetting>,
    #[serde(default, rename = "counter")]
    counters: Vec<RawCounter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCounter {
    name: String,
    oid: String,
    unit: Option<String>,
    /// What it counts: a [`platen_protocol::telemetry::CounterKind`] by name.
    kind: Option<String>,
    /// A table counter: the column whose row holds `code` picks the row of `oid`'s
    /// column (`{ type_column = "…", code = 10 }`).
    row: Option<RawRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    type_column: String,
    code: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    #[serde(default)]
    description: String,
    /// `"default"`: start from the built-in profile's settings.
    extends: Option<String>,
    billing_counter: Option<String>,
    /// Opt-in for settings on [`DESTRUCTIVE`] objects.
    #[serde(default)]
    allow_destructive: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSetting {
    name: String,
    oid: String,
    #[serde(rename = "type")]
    kind: String,
    max_len: Option<usize>,
    min: Option<i64>,
    max: Option<i64>,
    #[serde(default)]
    labels: BTreeMap<String, i64>,
    #[serde(default)]
    case_insensitive: bool,
    #[serde(default)]
    disruptive: bool,
    /// Acknowledges a [`DESTRUCTIVE`] object (implies `disruptive`).
    #[serde(default)]
    destructive: bool,
    #[serde(default)]
    requires: Vec<String>,
}

impl Profile {
    pub fn builtin_default() -> Profile {
        // The built-in text is tested; failing here would be a build defect.
        Profile::parse(DEFAULT_PROFILE, "<built-in default>")
            .expect("built-in default profile is valid")
    }

    /// A built-in profile name (`default`, `konica-minolta`) or a path to a profile file.
    pub fn load(spec: &str) -> Result<Profile, ProfileError> {
        if spec == "default" {
            return Ok(Profile::builtin_default());
        }
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
            return Profile::parse(text, &format!("<built-in {spec}>"));
        }
        let text =
            std::fs::read_to_string(Path::new(spec)).map_err(|source| ProfileError::Read {
                path: spec.into(),
                source,
            })?;
        Profile::parse(&text, spec)
    }

    pub fn parse(text: &str, path: &str) -> Result<Profile, ProfileError> {
        let invalid = |message: String| ProfileError::Invalid {
            path: path.into(),
            message,
        };
        let raw: RawProfile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut settings = match raw.profile.extends.as_deref() {
            None => HashMap::new(),
            Some("default") => Profile::builtin_default().settings,
            Some(other) => {
                return Err(invalid(format!(
                    "profile.extends: {other:?}; only \"default\" can be extended"
                )))
            }
        };
        let mut own = HashSet::new();
        let mut counters = Vec::new();
        for (i, c) in raw.counters.into_iter().enumerate() {
            let at = format!("counter[{i}] ({})", c.name);
            validate_setting_name(&c.name).map_err(|m| invalid(format!("{at}: {m}")))?;
            if c.name.starts_with(crate::snmp::printer_mib::LIFE_COUNT) {
                return Err(invalid(format!(
                    "{at}: names starting with {} are the standard counters",
                    crate::snmp::printer_mib::LIFE_COUNT
                )));
            }
            if counters
                .iter()
                .any(|v: &crate::snmp::printer_mib::VendorCounter| v.name == c.name)
            {
                return Err(invalid(format!("{at}: duplicate counter name")));
            }
            let kind = match c.kind.as_deref() {
                None => None,
                Some(k) => Some(
                    platen_protocol::telemetry::CounterKind::parse(k).ok_or_else(|| {
                        invalid(format!(
                            "{at}.kind: {k:?}; one of {}",
                            platen_protocol::telemetry::CounterKind::ALL
                                .map(|k| k.name())
                                .join(", ")
                        ))
                    })?,
                ),
            };
            counters.push(crate::snmp::printer_mib::VendorCounter {
                oid: c
                    .oid
                    .parse()
                    .map_err(|m| invalid(format!("{at}.oid: {m}")))?,
                row_of: match c.row {
                    None => None,
                    Some(r) => Some(crate::snmp::printer_mib::TableRow {
                        type_column: r
                            .type_column
                            .parse()
                            .map_err(|m| invalid(format!("{at}.row.type_column: {m}")))?,
                        code: r.code,
                    }),
                },
                name: c.name,
                unit: c.unit,
                kind,
            });
        }
        if let Some(b) = &raw.profile.billing_counter {
            let standard = b
                .strip_prefix(crate::snmp::printer_mib::LIFE_COUNT)
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|m| m.parse::<u32>().is_ok());
            if !standard && !counters.iter().any(|c| &c.name == b) {
                return Err(invalid(format!(
                    "profile.billing_counter: {b:?} is neither prtMarkerLifeCount.N nor a [[counter]] of this profile"
                )));
            }
        }
        for (i, s) in raw.settings.into_iter().enumerate() {
            let at = format!("setting[{i}] ({})", s.name);
            validate_setting_name(&s.name).map_err(|m| invalid(format!("{at}: {m}")))?;
            let oid = match s.oid.strip_suffix(".{device}") {
                Some(prefix) => OidTemplate::PerDevice(
                    prefix
                        .parse()
                        .map_err(|m| invalid(format!("{at}.oid: {m}")))?,
                ),
                None => OidTemplate::Fixed(
                    s.oid
                        .parse()
                        .map_err(|m| invalid(format!("{at}.oid: {m}")))?,
                ),
            };
            let base = match &oid {
                OidTemplate::Fixed(o) | OidTemplate::PerDevice(o) => o,
            };
            match (destructive(base), s.destructive) {
                (Some(what), false) => {
                    return Err(invalid(format!(
                        "{at}: {} is {what}, a destructive object: mark the setting \
                         destructive = true and opt in with [profile] allow_destructive = true",
                        s.oid
                    )))
                }
                (Some(what), true) if !raw.profile.allow_destructive => {
                    return Err(invalid(format!(
                        "{at}: {what} is destructive and this profile has not opted in: \
                         set allow_destructive = true in [profile]"
                    )))
                }
                (None, true) => {
                    return Err(invalid(format!(
                        "{at}: destructive = true, but {} is not a known destructive object",
                        s.oid
                    )))
                }
                _ => {}
            }
            let kind = match s.kind.as_str() {
                "text" => {
                    if s.min.is_some() || s.max.is_some() || !s.labels.is_empty() {
                        return Err(invalid(format!(
                            "{at}: min, max and labels are for integer settings"
                        )));
                    }
                    Kind::Text {
                        max_len: s.max_len.unwrap_or(255),
                        case_insensitive: s.case_insensitive,
                    }
                }
                "integer" => {
                    if s.max_len.is_some() || s.case_insensitive {
                        return Err(invalid(format!(
                            "{at}: max_len and case_insensitive are for text settings"
                        )));
                    }
                    let (min, max) = (
                        s.min.unwrap_or(i32::MIN.into()),
                        s.max.unwrap_or(i32::MAX.into()),
                    );
                    if min > max || min < i32::MIN.into() || max > i32::MAX.into() {
                        return Err(invalid(format!(
                            "{at}: min..max must be a range within 32-bit INTEGER"
                        )));
                    }
                    if let Some((l, v)) = s.labels.iter().find(|(_, v)| **v < min || **v > max) {
                        return Err(invalid(format!(
                            "{at}: label {l} = {v} is outside min..max"
                        )));
                    }
                    Kind::Integer {
                        min,
                        max,
                        labels: s.labels,
                    }
                }
                other => {
                    return Err(invalid(format!(
                        "{at}.type: {other:?} is not \"text\" or \"integer\""
                    )))
                }
            };
            let def = SettingDef {
                name: s.name.clone(),
                oid,
                kind,
                disruptive: s.disruptive || s.destructive,
                requires: s.requires,
            };
            // With `extends`, a setting may replace an inherited one, but not another of this file.
            if !own.insert(s.name.clone()) {
                return Err(invalid(format!("{at}: duplicate setting name")));
            }
            settings.insert(s.name.clone(), def);
        }
        let profile = Profile {
            name: raw.profile.name,
            description: raw.profile.description,
            settings,
            counters,
            billing_counter: raw.profile.billing_counter,
        };
        profile.check_requires().map_err(invalid)?;
        Ok(profile)
    }

    fn check_requires(&self) -> Result<(), String> {
        for def in self.settings.values() {
            for r in &def.requires {
                if !self.settings.contains_key(r) {
                    return Err(format!("{} requires unknown setting {r}", def.name));
                }
            }
        }
        // Cycle check: depth-first search with colours.
        fn visit<'a>(
            p: &'a Profile,
            n: &'a str,
            grey: &mut HashSet<&'a str>,
            done: &mut HashSet<&'a str>,
        ) -> Result<(), String> {
            if done.contains(n) {
                return Ok(());
            }
            if !grey.insert(n) {
                return Err(format!("requires forms a cycle through {n}"));
            }
            for r in &p.settings[n].requires {
                visit(p, r, grey, done)?;
            }
            grey.remove(n);
            done.insert(n);
            Ok(())
        }
        let (mut grey, mut done) = (HashSet::new(), HashSet::new());
        let mut names: Vec<&str> = self.settings.keys().map(String::as_str).collect();
        names.sort();
        for n in names {
            visit(self, n, &mut grey, &mut done)?;
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&SettingDef> {
        self.settings.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.settings.keys().map(String::as_str).collect();
        v.sort();
        v
    }

    /// The order in which to apply `names` (those in the profile): prerequisites
    /// first, disruptive settings last, otherwise by name. Deterministic.
    pub fn apply_order<'a>(&self, names: &[&'a str]) -> Vec<&'a str> {
        let mut sorted: Vec<&'a str> = names.to_vec();
        sorted.sort_by_key(|n| (self.get(n).map(|d| d.disruptive).unwrap_or(false), *n));
        let wanted: HashSet<&str> = sorted.iter().copied().collect();
        let mut out: Vec<&'a str> = Vec::with_capacity(sorted.len());
        let mut placed: HashSet<&str> = HashSet::new();
        // Repeatedly place the first name whose (wanted) prerequisites are placed.
        // Profiles are acyclic (checked on load), so this terminates.
        while out.len() < sorted.len() {
            let next = sorted.iter().copied().find(|n| {
                !placed.contains(n)
                    && self
                        .get(n)
                        .map(|d| {
                            d.requires.iter().all(|r| {
                                !wanted.contains(r.as_str()) || placed.contains(r.as_str())
                            })
                        })
                        .unwrap_or(true)
            });
            match next {
                Some(n) => {
                    placed.insert(n);
                    out.push(n);
                }
                None => {
                    // Unreachable for a checked profile; keep the rest in name order.
                    out.extend(sorted.iter().copied().filter(|n| !placed.contains(n)));
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reapply_names_must_be_in_the_profile() {
        let base = "agent_id='a'\ntenant='t'\nstate_dir='/tmp/x'\n[broker]\nhost='h'\n[[printer]]\nid='p1'\naddress='h'\ncommunity='c'\n";
        let ok = crate::config::AgentConfig::parse(
            &format!("{base}reapply_on_drift=['sysLocation', '*']\n"),
            std::path::Path::new("a.toml"),
        )
        .unwrap();
        assert!(load_all(&ok).is_ok());
        let bad = crate::config::AgentConfig::parse(
            &format!("{base}reapply_on_drift=['sysLocaton']\n"),
            std::path::Path::new("a.toml"),
        )
        .unwrap();
        let err = load_all(&bad).unwrap_err().to_string();
        assert!(
            err.contains("printer p1: reapply_on_drift names sysLocaton"),
            "{err}"
        );
    }

    fn default() -> Profile {
        Profile::builtin_default()
    }

    #[test]
    fn builtin_profile_has_the_standard_objects_and_no_reset() {
        let p = default();
        assert_eq!(
            p.names(),
            vec![
                "prtAuxiliarySheetStartupPage",
                "prtConsoleDisable",
                "prtGeneralCurrentLocalization",
                "prtGeneralCurrentOperator",
                "prtGeneralPrinterName",
                "prtGeneralServicePerson",
                "prtInputDefaultIndex",
                "sysContact",
                "sysLocation",
                "sysName",
            ]
        );
        assert!(p.get("prtGeneralReset").is_none());
        assert_eq!(
            p.get("sysLocation").unwrap().oid,
            OidTemplate::Fixed("1.3.6.1.2.1.1.6.0".parse().unwrap())
        );
        let name = p.get("prtGeneralPrinterName").unwrap();
        assert_eq!(
            name.oid.resolve(Some(1)).unwrap().to_string(),
            "1.3.6.1.2.1.43.5.1.1.16.1"
        );
        assert_eq!(name.oid.resolve(None), None);
    }

    #[test]
    fn prepare_table() {
        let p = default();
        let t = |s: &str| SettingValue::Text(s.into());
        let i = SettingValue::Integer;
        let cases: Vec<(&str, SettingValue, Result<Prepared, &str>)> = vec![
            (
                "sysLocation",
                t("Room 1"),
                Ok(Prepared::Text("Room 1".into())),
            ),
            ("sysLocation", t(&"x".repeat(256)), Err("at most 255")),
            ("sysLocation", i(5), Err("takes a text")),
            ("prtInputDefaultIndex", i(2), Ok(Prepared::Integer(2))),
            ("prtInputDefaultIndex", i(0), Err("outside 1..=65535")),
            ("prtInputDefaultIndex", i(70000), Err("outside 1..=65535")),
            ("prtInputDefaultIndex", t("2"), Err("takes a number")),
            ("prtConsoleDisable", t("disabled"), Ok(Prepared::Integer(4))),
            ("prtConsoleDisable", i(3), Ok(Prepared::Integer(3))),
            (
                "prtConsoleDisable",
                t("locked"),
                Err("not one of disabled, enabled"),
            ),
            ("prtConsoleDisable", i(5), Err("outside 3..=4")),
        ];
        for (name, v, want) in cases {
            let got = p.get(name).unwrap().prepare(&v);
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{name} {v:?}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{name} {v:?}: {g}"),
                (g, w) => panic!("{name} {v:?}: got {g:?}, wanted {w:?}"),
            }
        }
    }

    #[test]
    fn read_back_normalisation_table() {
        let p = default();
        let loc = p.get("sysLocation").unwrap();
        let console = p.get("prtConsoleDisable").unwrap();
        let t = |s: &str| SettingValue::Text(s.into());
        let os = |s: &[u8]| SnmpValue::OctetString(s.to_vec());
        // (def, read, desired, normalised, equal?)
        type Case<'a> = (
            &'a SettingDef,
            SnmpValue,
            SettingValue,
            Result<SettingValue, ()>,
            bool,
        );
        let cases: Vec<Case> = vec![
            (loc, os(b"Room 1"), t("Room 1"), Ok(t("Room 1")), true),
            (loc, os(b"Room 1\0\0"), t("Room 1"), Ok(t("Room 1")), true),
            (loc, os(b"Room 1  "), t("Room 1"), Ok(t("Room 1")), true),
            (loc, os(b"room 1"), t("Room 1"), Ok(t("room 1")), false),
            (loc, os(b"Room 2"), t("Room 1"), Ok(t("Room 2")), false),
            (
                loc,
                os(b"\xff\xfe"),
                t("Room 1"),
                Ok(t("\u{fffd}\u{fffd}")),
                false,
            ),
            (loc, SnmpValue::Integer(1), t("Room 1"), Err(()), false),
            (
                console,
                SnmpValue::Integer(4),
                t("disabled"),
                Ok(t("disabled")),
                true,
            ),
            (
                console,
                SnmpValue::Integer(4),
                SettingValue::Integer(4),
                Ok(SettingValue::Integer(4)),
                true,
            ),
            (
                console,
                SnmpValue::Integer(3),
                t("disabled"),
                Ok(t("enabled")),
                false,
            ),
            (
                console,
                SnmpValue::Integer(9),
                t("disabled"),
                Ok(SettingValue::Integer(9)),
                false,
            ),
        ];
        for (def, read, desired, want, equal) in cases {
            let prepared = def.prepare(&desired).unwrap();
            match (def.normalize(&read, &desired), want) {
                (Ok(g), Ok(w)) => {
                    assert_eq!(g, w, "{read:?}");
                    assert_eq!(def.matches(&g, &prepared), equal, "{read:?}");
                }
                (Err(_), Err(())) => {}
                (g, w) => panic!("{read:?}: got {g:?}, wanted {w:?}"),
            }
        }
    }

    #[test]
    fn destructive_objects_need_an_opt_in_per_profile() {
        let reset = "[[setting]]\nname='reset'\noid='1.3.6.1.2.1.43.5.1.1.3.{device}'\ntype='integer'\nlabels={powerCycleReset=4}\n";
        let cases = [
            ("[profile]\nname='t'\n".to_string() + reset, Some("destructive object: mark the setting")),
            (
                "[profile]\nname='t'\n".to_string() + &reset.replace("type=", "destructive=true\ntype="),
                Some("has not opted in: set allow_destructive = true"),
            ),
            (
                "[profile]\nname='t'\nallow_destructive=true\n".to_string() + reset,
                Some("destructive object: mark the setting"),
            ),
            (
                "[profile]\nname='t'\n[[setting]]\nname='usm'\noid='1.3.6.1.6.3.15.1.2.2.1.9.1'\ntype='integer'\n".to_string(),
                Some("SNMPv3 users and keys"),
            ),
            (
                "[profile]\nname='t'\n[[setting]]\nname='x'\noid='1.3.6.1.4.1.9.1.0'\ntype='text'\ndestructive=true\n".to_string(),
                Some("not a known destructive object"),
            ),
            (
                "[profile]\nname='t'\nallow_destructive=true\n".to_string() + &reset.replace("type=", "destructive=true\ntype="),
                None,
            ),
        ];
        for (text, want) in cases {
            match (Profile::parse(&text, "t.toml"), want) {
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{e}"),
                (Ok(p), None) => {
                    // Accepted, and ordered like a disruptive setting (its own PDU, last).
                    assert!(p.get("reset").unwrap().disruptive);
                }
                (r, w) => panic!("{text}: {:?} wanted {w:?}", r.map(|_| ())),
            }
        }
        // No built-in profile names a destructive object.
        for (name, text) in
            std::iter::once(("default", DEFAULT_PROFILE)).chain(BUILTIN.iter().copied())
        {
            let p = Profile::parse(text, name).unwrap();
            for n in p.names() {
                let base = match &p.get(n).unwrap().oid {
                    OidTemplate::Fixed(o) | OidTemplate::PerDevice(o) => o.clone(),
                };
                assert_eq!(destructive(&base), None, "{name}: {n}");
            }
        }
    }

    #[test]
    fn case_insensitive_text() {
        let p = Profile::parse(
            "[profile]\nname='t'\n[[setting]]\nname='a'\noid='1.3.6.1.4.1.1.0'\ntype='text'\ncase_insensitive=true\n",
            "t.toml",
        )
        .unwrap();
        let a = p.get("a").unwrap();
        assert!(a.matches(
            &SettingValue::Text("ROOM".into()),
            &Prepared::Text("room".into())
        ));
    }

    #[test]
    fn order_puts_prerequisites_first_and_disruptive_last() {
        let p = Profile::parse(
            r#"
[profile]
name = "t"
[[setting]]
name = "a_ip"
oid = "1.3.6.1.4.1.9.1.0"
type = "text"
disruptive = true
[[setting]]
name = "b"
oid = "1.3.6.1.4.1.9.2.0"
type = "text"
requires = ["c"]
[[setting]]
name = "c"
oid = "1.3.6.1.4.1.9.3.0"
type = "text"
[[setting]]
name = "d"
oid = "1.3.6.1.4.1.9.4.0"
type = "text"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            p.apply_order(&["d", "a_ip", "b", "c"]),
            vec!["c", "b", "d", "a_ip"]
        );
        // A prerequisite not in the config does not hold anything back.
        assert_eq!(p.apply_order(&["b", "d"]), vec!["b", "d"]);
    }

    /// Every maker's built-in profile exists, cites the public source of its OIDs,
    /// gives each counter a kind and bills from the standard life count (one source
    /// per printer; the vendor counters are reported beside it).
    #[test]
    fn built_in_vendor_profiles_cite_their_sources_and_kind_every_counter() {
        for (_, maker, profile) in MAKERS {
            let Some(name) = profile else { continue };
            let (_, text) = BUILTIN
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{maker}: no built-in profile {name}"));
            let p = Profile::parse(text, name).unwrap();
            assert_eq!(p.name, *name);
            assert!(
                text.lines()
                    .any(|l| l.starts_with("#   ") && l.contains('/')),
                "{name}: no source (an indented repository path) in its header"
            );
            assert!(!p.counters.is_empty(), "{name}");
            for c in &p.counters {
                assert!(c.kind.is_some(), "{name}: {} has no kind", c.name);
                assert!(
                    text.contains(&c.oid.to_string()),
                    "{name}: {} not in the text",
                    c.oid
                );
            }
            assert_eq!(p.billing_counter.as_deref(), Some("prtMarkerLifeCount.1"));
        }
        let bad = "[profile]\nname='x'\n[[counter]]\nname='c'\noid='1.3.6'\nkind='pages'\n";
        let err = Profile::parse(bad, "x.toml").unwrap_err().to_string();
        assert!(
            err.contains("counter[0] (c).kind") && err.contains("print_black"),
            "{err}"
        );
    }

    #[test]
    fn a_profile_can_extend_the_default_and_name_vendor_counters() {
        let text = "[profile]\nname='km'\nextends='default'\nbilling_counter='printBlack'\n\
            [[setting]]\nname='sysLocation'\noid='1.3.6.1.2.1.1.6.0'\ntype='text'\nmax_len=64\n\
            [[counter]]\nname='printBlack'\noid='1.3.6.1.4.1.18334.1.1.1.5.7.2.2.1.5.1.2'\nunit='impressions'\n";
        let p = Profile::parse(text, "km.toml").unwrap();
        assert_eq!(p.names().len(), Profile::builtin_default().names().len());
        assert!(matches!(
            p.get("sysLocation").unwrap().kind,
            Kind::Text { max_len: 64, .. }
        ));
        assert_eq!(p.counters.len(), 1);
        assert_eq!(p.billing_counter.as_deref(), Some("printBlack"));
        let bad = "[profile]\nname='x'\nbilling_counter='nope'\n";
        let err = Profile::parse(bad, "x.toml").unwrap_err().to_string();
        assert!(err.contains("billing_counter"), "{err}");
        let std = "[profile]\nname='x'\nbilling_counter='prtMarkerLifeCount.2'\n";
        assert!(Profile::parse(std, "x.toml").is_ok());
        let err = Profile::parse("[profile]\nname='x'\nextends='hp'\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only \"default\""), "{err}");
    }

    #[test]
    fn profile_errors_are_specific() {
        let head = "[profile]\nname='t'\n";
        let cases = [
            ("[[setting]]\nname='a'\noid='1.3.x'\ntype='text'\n", "setting[0] (a).oid"),
            ("[[setting]]\nname='a'\noid='1.3.6'\ntype='float'\n", "is not \"text\" or \"integer\""),
            ("[[setting]]\nname='a'\noid='1.3.6'\ntype='text'\nmin=1\n", "for integer settings"),
            ("[[setting]]\nname='a'\noid='1.3.6'\ntype='integer'\nmin=5\nmax=1\n", "range"),
            ("[[setting]]\nname='a'\noid='1.3.6'\ntype='integer'\nmax=3000000000\n", "range"),
            ("[[setting]]\nname='a'\noid='1.3.6'\ntype='integer'\nmin=1\nmax=2\nlabels={x=3}\n", "label x = 3"),
            ("[[setting]]\nname='a'\noid='1.3.6'\ntype='text'\n[[setting]]\nname='a'\noid='1.3.7'\ntype='text'\n", "duplicate"),
            ("[[setting]]\nname='a'\noid='1.3.6'\ntype='text'\nrequires=['zz']\n", "unknown setting zz"),
            ("[[setting]]\nname='a'\noid='1.3.6'\ntype='text'\nrequires=['b']\n[[setting]]\nname='b'\noid='1.3.7'\ntype='text'\nrequires=['a']\n", "cycle"),
            ("[[setting]]\nname='a b'\noid='1.3.6'\ntype='text'\n", "contains ' '"),
            ("[[setting]]\nname='a'\noid='1.3.6'\ntype='text'\nwritable=true\n", "unknown field `writable`"),
            ("[[counter]]\nname='prtMarkerLifeCount.9'\noid='1.3.6'\n", "standard counters"),
            ("[[counter]]\nname='c'\noid='1.3.x'\n", "counter[0] (c).oid"),
            ("[[counter]]\nname='c'\noid='1.3.6'\n[[counter]]\nname='c'\noid='1.3.7'\n", "duplicate counter"),
        ];
        for (body, want) in cases {
            let err = Profile::parse(&format!("{head}{body}"), "t.toml")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("profile t.toml"), "{err}");
            assert!(err.contains(want), "wanted {want:?}: {err}");
        }
    }
}
