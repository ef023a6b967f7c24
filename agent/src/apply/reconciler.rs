//! One reconciler task per printer: desired (in sled) versus last completed.
//!
//! Whenever the stored desired version is above the completed one, the reconciler
//! applies it ([`crate::apply`]), builds the [`ApplyReport`], and commits report and
//! completed version together to the store (which wakes the MQTT pump). A newer
//! version arriving mid-apply supersedes the older one: the older is reported
//! `superseded` and the newer is applied next. After a crash, a version that was
//! stored but not completed is applied again (SETs are idempotent) and reported with
//! the same `report_id`.

use crate::apply::profile::Profile;
use crate::apply::{apply, ApplyParams};
use crate::snmp::Snmp;
use crate::store::{OutboxEntry, Store, Verified};
use chrono::Utc;
use platen_protocol::diag::LastReport;
use platen_protocol::{codec, ApplyReport, Id, ReportStatus, Topic};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info, warn};

pub struct PrinterTask<S> {
    pub agent: Id,
    pub printer: Id,
    pub snmp: S,
    pub profile: Arc<Profile>,
    pub params: ApplyParams,
    pub store: Store,
    /// The latest accepted desired version, sent by the inbound handler.
    pub latest: watch::Receiver<u64>,
    /// Held while applying; drift detection takes it too.
    pub lock: PrinterLock,
}

/// One per printer: serialises applying and drift re-reads.
pub type PrinterLock = Arc<tokio::sync::Mutex<()>>;

impl<S: Snmp> PrinterTask<S> {
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut device: Option<u32> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            match self.step(&mut device).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    error!(printer = %self.printer, error = %e, "state store error; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            }
            tokio::select! {
                r = self.latest.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    /// Apply the stored desired config if it is not completed yet. Ok(true) if work was done.
    async fn step(&mut self, device: &mut Option<u32>) -> Result<bool, crate::store::StoreError> {
        let Some(stored) = self.store.desired(&self.printer)? else {
            return Ok(false);
        };
        let version = stored.config.version;
        if version <= self.store.completed(&self.printer)? {
            return Ok(false);
        }
        // Drift checks on this printer wait while it is being configured.
        let guard = self.lock.lock().await;
        info!(printer = %self.printer, version, settings = stored.config.settings.len(), "applying desired config");
        let latest = self.latest.clone();
        let outcome = apply(
            &self.snmp,
            &self.profile,
            &stored.config,
            device,
            &self.params,
            || *latest.borrow() > version,
        )
        .await;
        let status = ReportStatus::from_results(&outcome.results, outcome.superseded);
        let report = ApplyReport {
            report_id: ApplyReport::make_id(&self.agent, &self.printer, version),
            agent_id: self.agent.clone(),
            printer_id: self.printer.clone(),
            config_version: version,
            status,
            settings: outcome.results,
            received_at: stored.received_at,
            completed_at: Utc::now().max(stored.received_at),
            refused: None,
        };
        let payload = String::from_utf8(codec::encode(&report)).unwrap_or_default();
        if payload.len() > platen_protocol::MAX_MESSAGE_BYTES {
            warn!(printer = %self.printer, version, bytes = payload.len(), "report exceeds the message limit");
        }
        let entry = OutboxEntry::new(
            Topic::report(&stored.tenant, &self.printer).to_string(),
            payload,
        );
        let failed: Vec<String> = report
            .settings
            .iter()
            .filter(|s| s.code != platen_protocol::Code::Verified)
            .map(|s| format!("{}={}", s.name, s.code))
            .collect();
        let verified = Verified {
            version,
            settings: report
                .settings
                .iter()
                .filter(|s| s.code == platen_protocol::Code::Verified)
                .map(|s| (s.name.clone(), s.desired.clone()))
                .collect(),
            report: Some(LastReport {
                config_version: version,
                status: status.to_string(),
                completed_at: report.completed_at,
                failed: failed.clone(),
            }),
        };
        self.store
            .complete(&self.printer, version, &entry, &verified)
            .await?;
        drop(guard);
        crate::observe::metrics::get().report(&report);
        info!(printer = %self.printer, version, status = %status, failed = ?failed, "report queued");
        Ok(true)
    }
}
