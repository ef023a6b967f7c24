//! Drift detection: re-read the settings the last completed version verified, and
//! report the ones someone changed on the printer (code 203, with the value found).
//!
//! - Runs under the printer's lock, so it never reads a printer mid-apply; skipped
//!   while a newer desired version waits to be applied (the reconciler will set
//!   everything anyway).
//! - [`find_drift`] is pure: verified settings + values read → drifted settings.
//! - Settings listed in the printer's `reapply_on_drift` are SET again through the
//!   normal apply path ([`crate::apply::apply`]: SET, settle, read-back) and the
//!   outcome goes into the report's `reapplied`.
//! - The same drift (same setting, same value found) is reported once, not on
//!   every check; a failed re-apply is not retried until the value changes again; a
//!   setting that returns to its desired value (or was re-applied) is forgotten.

use crate::apply::profile::Profile;
use crate::apply::{apply, discover_device_index, get_values, ApplyParams};
use crate::snmp::{ObjectId, Snmp, SnmpError, SnmpValue};
use crate::store::{OutboxEntry, SeqKind, Store, StoreError, Verified};
use chrono::Utc;
use platen_protocol::{
    codec, Code, DesiredConfig, DriftReport, DriftedSetting, Id, SettingValue, Topic,
};
use std::collections::BTreeMap;
use tracing::{debug, warn};

/// A verified setting found different.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drifted {
    pub name: String,
    pub desired: SettingValue,
    pub found: Option<SettingValue>,
    pub detail: String,
}

/// Compare values read (`values[i]` for `verified` setting `i` in name order) with
/// what was verified. Settings the profile no longer knows are skipped.
pub fn find_drift(
    profile: &Profile,
    verified: &BTreeMap<String, SettingValue>,
    values: &BTreeMap<String, SnmpValue>,
) -> Vec<Drifted> {
    let mut out = Vec::new();
    for (name, desired) in verified {
        let (Some(def), Some(got)) = (profile.get(name), values.get(name)) else {
            continue;
        };
        let Ok(want) = def.prepare(desired) else {
            continue;
        };
        if got.is_exception() {
            out.push(Drifted {
                name: name.clone(),
                desired: desired.clone(),
                found: None,
                detail: format!("no longer readable ({got:?})"),
            });
            continue;
        }
        match def.normalize(got, desired) {
            Ok(n) if def.matches(&n, &want) => {}
            Ok(n) => out.push(Drifted {
                name: name.clone(),
                desired: desired.clone(),
                detail: format!("changed outside Platen: {n} instead of {desired}"),
                found: Some(n),
            }),
            Err(why) => out.push(Drifted {
                name: name.clone(),
                desired: desired.clone(),
                found: None,
                detail: why,
            }),
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error("reading the printer: {0}")]
    Snmp(#[from] SnmpError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One printer's drift checker.
pub struct DriftCheck {
    pub agent: Id,
    pub printer: Id,
    pub tenant: Id,
    pub profile: std::sync::Arc<Profile>,
    pub params: ApplyParams,
    /// Settings re-applied automatically (`*` = all).
    pub reapply: Vec<String>,
    pub lock: crate::apply::reconciler::PrinterLock,
    /// Drift already reported: setting → value found.
    reported: BTreeMap<String, Option<SettingValue>>,
}

impl DriftCheck {
    pub fn new(
        agent: Id,
        printer: Id,
        tenant: Id,
        profile: std::sync::Arc<Profile>,
        params: ApplyParams,
        reapply: Vec<String>,
        lock: crate::apply::reconciler::PrinterLock,
    ) -> DriftCheck {
        DriftCheck {
            agent,
            printer,
            tenant,
            profile,
            params,
            reapply,
            lock,
            reported: BTreeMap::new(),
        }
    }

    fn reapplies(&self, name: &str) -> bool {
        self.reapply.iter().any(|s| s == "*" || s == name)
    }

    /// Check once; queue a drift report when something new drifted. Returns the report.
    pub async fn run<S: Snmp>(
        &mut self,
        snmp: &S,
        device: &mut Option<u32>,
        store: &Store,
    ) -> Result<Option<DriftReport>, DriftError> {
        let _guard = self.lock.lock().await;
        let Some(verified) = store.verified(&self.printer)? else {
            return Ok(None);
        };
        let pending = store
            .desired(&self.printer)?
            .is_some_and(|d| d.config.version > verified.version);
        if pending || verified.settings.is_empty() {
            return Ok(None);
        }
        let values = self.read(snmp, device, &verified).await?;
        let found = find_drift(&self.profile, &verified.settings, &values);
        self.reported
            .retain(|name, _| found.iter().any(|d| &d.name == name));
        let new: Vec<Drifted> = found
            .into_iter()
            .filter(|d| self.reported.get(&d.name) != Some(&d.found))
            .collect();
        if new.is_empty() {
            return Ok(None);
        }
        let mut settings: Vec<DriftedSetting> = new
            .iter()
            .map(|d| DriftedSetting {
                name: d.name.clone(),
                desired: d.desired.clone(),
                found: d.found.clone(),
                code: Code::Drift,
                reapplied: None,
                detail: d.detail.clone(),
            })
            .collect();
        let again: BTreeMap<String, SettingValue> = new
            .iter()
            .filter(|d| self.reapplies(&d.name))
            .map(|d| (d.name.clone(), d.desired.clone()))
            .collect();
        if !again.is_empty() {
            let cfg = DesiredConfig {
                printer_id: self.printer.clone(),
                version: verified.version,
                issued_at: Utc::now(),
                settings: again,
                signature: None,
            };
            let outcome = apply(snmp, &self.profile, &cfg, device, &self.params, || false).await;
            for r in outcome.results {
                if let Some(s) = settings.iter_mut().find(|s| s.name == r.name) {
                    s.reapplied = Some(r.code);
                    if r.code != Code::Verified {
                        s.detail = format!("{}; re-apply: {}", s.detail, r.detail);
                    }
                }
            }
        }
        for s in &settings {
            if s.reapplied == Some(Code::Verified) {
                self.reported.remove(&s.name);
            } else {
                self.reported.insert(s.name.clone(), s.found.clone());
            }
        }
        let seq = store.seq(SeqKind::Drift, &self.printer)? + 1;
        let report = DriftReport {
            report_id: DriftReport::make_id(&self.agent, &self.printer, verified.version, seq),
            agent_id: self.agent.clone(),
            printer_id: self.printer.clone(),
            config_version: verified.version,
            seq,
            detected_at: Utc::now(),
            settings,
        };
        let payload = String::from_utf8(codec::encode(&report)).unwrap_or_default();
        let entry = OutboxEntry::new(
            Topic::drift(&self.tenant, &self.printer).to_string(),
            payload,
        );
        store
            .queue(SeqKind::Drift, &self.printer, seq, &entry)
            .await?;
        let names: Vec<String> = report
            .settings
            .iter()
            .map(|s| match s.reapplied {
                Some(c) => format!("{} (re-applied: {c})", s.name),
                None => s.name.clone(),
            })
            .collect();
        warn!(printer = %self.printer, version = verified.version, settings = ?names, "configuration drift found");
        Ok(Some(report))
    }

    async fn read<S: Snmp>(
        &self,
        snmp: &S,
        device: &mut Option<u32>,
        verified: &Verified,
    ) -> Result<BTreeMap<String, SnmpValue>, SnmpError> {
        let mut names = Vec::new();
        let mut oids: Vec<ObjectId> = Vec::new();
        for name in verified.settings.keys() {
            let Some(def) = self.profile.get(name) else {
                continue;
            };
            if def.oid.needs_device() && device.is_none() {
                *device = Some(discover_device_index(snmp).await?.unwrap_or(1));
            }
            if let Some(o) = def.oid.resolve(*device) {
                names.push(name.clone());
                oids.push(o);
            }
        }
        if oids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let values = get_values(snmp, &oids).await?;
        debug!(printer = %self.printer, settings = names.len(), "drift check read");
        Ok(names.into_iter().zip(values).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_table() {
        let p = Profile::builtin_default();
        let verified: BTreeMap<String, SettingValue> = [
            ("sysLocation", SettingValue::from("Room 1")),
            ("sysContact", SettingValue::from("ops")),
            ("prtConsoleDisable", SettingValue::from("enabled")),
            ("sysName", SettingValue::from("p1")),
            ("gone", SettingValue::from("x")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let values: BTreeMap<String, SnmpValue> = [
            ("sysLocation", SnmpValue::OctetString(b"Room 2".to_vec())),
            // Trailing NUL/space is not drift.
            ("sysContact", SnmpValue::OctetString(b"ops \0".to_vec())),
            // Label 'enabled' = 3; 4 (disabled) is drift, reported as a label.
            ("prtConsoleDisable", SnmpValue::Integer(4)),
            ("sysName", SnmpValue::NoSuchObject),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let d = find_drift(&p, &verified, &values);
        let got: Vec<(&str, Option<SettingValue>)> = d
            .iter()
            .map(|d| (d.name.as_str(), d.found.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("prtConsoleDisable", Some(SettingValue::from("disabled"))),
                ("sysLocation", Some(SettingValue::from("Room 2"))),
                ("sysName", None),
            ]
        );
        assert!(
            d[1].detail.contains("\"Room 2\" instead of \"Room 1\""),
            "{}",
            d[1].detail
        );
    }
}
