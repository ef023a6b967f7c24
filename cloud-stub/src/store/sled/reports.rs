//! [`Reports`] on sled: reports, their index, published versions, seen state.

use super::SledStore;
use crate::model::ReceivedReport;
use crate::model::{AgentSeen, PrinterSeen};
use crate::store::{Batch, Reports, Result, StoreError, Stored};
use chrono::{DateTime, Utc};
use platen_protocol::Id;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;

pub(super) fn published_key(tenant: &Id, printer: &Id, version: u64) -> String {
    format!("{tenant}/{printer}/{version:020}")
}

pub(super) fn index_key(tenant: &Id, printer: &Id, version: u64, report_id: &str) -> String {
    format!("{tenant}/{printer}/{version:020}/{report_id}")
}

/// A `published` entry: when, and for which contract change (none: published by
/// hand, e.g. `platen-cloud publish`). Entries written before the change was noted
/// hold only the time, as a JSON string; they read as `change: None`.
#[derive(Serialize, Deserialize)]
pub(super) struct Published {
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub change: Option<String>,
}

fn get_json<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>> {
    match tree.get(key.as_bytes())? {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: key.to_string(),
                message: e.to_string(),
            }),
        None => Ok(None),
    }
}

fn put_json<T: Serialize>(tree: &sled::Tree, key: &str, v: &T) -> Result<()> {
    tree.insert(
        key.as_bytes(),
        serde_json::to_vec(v).expect("plain data serializes"),
    )?;
    Ok(())
}

impl Reports for SledStore {
    fn record_published(
        &self,
        tenant: &Id,
        printer: &Id,
        versions: &[u64],
        change: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let value = serde_json::to_vec(&Published {
            at,
            change: change.map(str::to_string),
        })
        .expect("plain data serializes");
        for v in versions {
            self.published.insert(
                published_key(tenant, printer, *v).as_bytes(),
                value.as_slice(),
            )?;
        }
        self.published.flush()?;
        Ok(())
    }

    fn was_published(&self, tenant: &Id, printer: &Id, version: u64) -> Result<bool> {
        Ok(self
            .published
            .contains_key(published_key(tenant, printer, version).as_bytes())?)
    }

    fn store_report(
        &self,
        tenant: &Id,
        rec: &ReceivedReport,
        json: &[u8],
        max_per_version: usize,
    ) -> Result<Stored> {
        let r = &rec.report;
        let (printer, version, id) = (&r.printer_id, r.config_version, &r.report_id);
        if !self.was_published(tenant, printer, version)? {
            return Ok(Stored::Unpublished);
        }
        let version_prefix = format!("{}/", published_key(tenant, printer, version));
        let own_key = index_key(tenant, printer, version, id);
        if self.report_index.get(own_key.as_bytes())?.is_none()
            && self
                .report_index
                .scan_prefix(version_prefix.as_bytes())
                .take(max_per_version)
                .count()
                >= max_per_version
        {
            return Ok(Stored::Full);
        }
        // Insert only if absent: the first delivery wins, later ones are duplicates.
        // No sled transaction (it made each report ~6× dearer, measured by
        // `platen-bench`): the index entry is written, then the report with
        // compare-and-swap, and every delivery writes the index entry again (the same
        // bytes). Nothing is acknowledged before the sync that covers both, so a crash
        // that kept one without the other leaves the message unacknowledged: its
        // redelivery writes the index entry and finds the report (or stores it).
        self.report_index
            .insert(own_key.as_bytes(), id.as_bytes())?;
        let inserted = self
            .reports
            .compare_and_swap(id.as_bytes(), None as Option<&[u8]>, Some(json))?
            .is_ok();
        Ok(if inserted {
            Stored::New
        } else {
            Stored::Duplicate
        })
    }

    fn report(&self, report_id: &str) -> Result<Option<ReceivedReport>> {
        get_json(&self.reports, report_id)
    }

    /// Unreadable rows are skipped.
    fn reports(&self) -> Result<Vec<ReceivedReport>> {
        let mut out = Vec::new();
        for kv in self.reports.iter() {
            out.extend(serde_json::from_slice(&kv?.1).ok());
        }
        Ok(out)
    }

    fn reports_for(
        &self,
        tenant: &Id,
        printer: &Id,
        versions: RangeInclusive<u64>,
    ) -> Result<Vec<ReceivedReport>> {
        let prefix = format!("{tenant}/{printer}/");
        let start = index_key(tenant, printer, *versions.start(), "");
        let end = format!("{}0", published_key(tenant, printer, *versions.end()));
        let mut out = Vec::new();
        for kv in self.report_index.range(start.as_bytes()..) {
            let (k, id) = kv?;
            if !k.starts_with(prefix.as_bytes()) || k.as_ref() >= end.as_bytes() {
                break;
            }
            out.extend(self.report(&String::from_utf8_lossy(&id))?);
        }
        Ok(out)
    }

    fn prune_reports(
        &self,
        may_go: &mut dyn FnMut(&str) -> Result<bool>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<Batch> {
        let r = super::scan::scan::<StoreError>(&self.report_index, from, max_keys, |k, id, _| {
            // `{tenant}/{printer}/{version:020}/{report id}`: the published key is the
            // part before the third '/'.
            let cut = k
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'/')
                .nth(2)
                .map(|(i, _)| i);
            let change = cut
                .and_then(|i| self.published.get(&k[..i]).ok().flatten())
                .and_then(|v| serde_json::from_slice::<Published>(&v).ok())
                .and_then(|p| p.change);
            let Some(change) = change else {
                return Ok(false);
            };
            let go = may_go(&change)?;
            if go {
                self.report_index.remove(k)?;
                self.reports.remove(id)?;
            }
            Ok(go)
        })?;
        self.db.flush()?;
        Ok(r)
    }

    fn agent_seen(&self, agent: &Id) -> Result<Option<AgentSeen>> {
        get_json(&self.agents_seen, agent.as_str())
    }

    fn set_agent_seen(&self, agent: &Id, seen: &AgentSeen) -> Result<()> {
        put_json(&self.agents_seen, agent.as_str(), seen)
    }

    fn printer_seen(&self, tenant: &Id, printer: &Id) -> Result<Option<PrinterSeen>> {
        get_json(&self.printers_seen, &format!("{tenant}/{printer}"))
    }

    fn set_printer_seen(&self, tenant: &Id, printer: &Id, seen: &PrinterSeen) -> Result<()> {
        put_json(&self.printers_seen, &format!("{tenant}/{printer}"), seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platen_protocol::{ApplyReport, ReportStatus};

    /// A crash before the sync may keep the report without its index entry or the
    /// entry without its report; the message was not acknowledged, so the broker
    /// redelivers it, and the redelivery completes the pair.
    #[test]
    fn a_redelivery_repairs_what_a_crash_split() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        let (acme, p1): (Id, Id) = ("acme".parse().unwrap(), "p1".parse().unwrap());
        let rec = |v: u64| {
            let agent: Id = "gw".parse().unwrap();
            ReceivedReport {
                report: ApplyReport {
                    report_id: ApplyReport::make_id(&agent, &p1, v),
                    agent_id: agent,
                    printer_id: p1.clone(),
                    config_version: v,
                    status: ReportStatus::Applied,
                    settings: vec![],
                    received_at: Utc::now(),
                    completed_at: Utc::now(),
                    refused: None,
                },
                received_at: Utc::now(),
            }
        };
        let store = |v: u64| {
            let r = rec(v);
            s.store_report(&acme, &r, &serde_json::to_vec(&r).unwrap(), 8)
                .unwrap()
        };
        let versions = || -> Vec<u64> {
            s.reports_for(&acme, &p1, 0..=u64::MAX)
                .unwrap()
                .iter()
                .map(|r| r.report.config_version)
                .collect()
        };
        s.record_published(&acme, &p1, &[1, 2], None, Utc::now())
            .unwrap();
        // Report kept, index entry lost.
        assert_eq!(store(1), Stored::New);
        s.report_index.clear().unwrap();
        assert!(versions().is_empty());
        assert_eq!(store(1), Stored::Duplicate);
        assert_eq!(versions(), vec![1]);
        // Index entry kept, report lost: skipped by readers, then stored.
        assert_eq!(store(2), Stored::New);
        s.reports
            .remove(rec(2).report.report_id.as_bytes())
            .unwrap();
        assert_eq!(versions(), vec![1]);
        assert_eq!(store(2), Stored::New);
        assert_eq!(versions(), vec![1, 2]);
    }
}
