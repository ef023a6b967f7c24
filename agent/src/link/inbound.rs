//! A desired config as it arrives from the broker: checked (topic, printer, protocol
//! version, size, signature) and stored for its printer's reconciler, or refused —
//! with a refusal report when the sender can be told which version was refused.

use crate::store::{Offer, OutboxEntry, Store, StoreError};
use chrono::Utc;
use platen_protocol::{codec, DesiredConfig, Id, Topic};
use std::collections::HashMap;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Validate and persist one inbound desired config. Bad input is logged and dropped
/// (Ok, so it is acknowledged and not redelivered forever); only a storage failure
/// is an error.
pub async fn handle_desired(
    store: &Store,
    agent: &Id,
    routes: &HashMap<(Id, Id), watch::Sender<u64>>,
    trusted: &platen_protocol::TrustedKeys,
    topic: &str,
    payload: &[u8],
) -> Result<(), StoreError> {
    let refused = |reason: &str| crate::observe::metrics::get().refused("desired", reason);
    let (tenant, printer) = match topic.parse::<Topic>() {
        Ok(Topic::DesiredConfig { tenant, printer }) => (tenant, printer),
        Ok(other) => {
            warn!(topic, kind = ?other, "unexpected topic ignored");
            refused("invalid_topic");
            return Ok(());
        }
        Err(e) => {
            warn!(error = %e, "message on an invalid topic ignored");
            refused("invalid_topic");
            return Ok(());
        }
    };
    let Some(route) = routes.get(&(tenant.clone(), printer.clone())) else {
        warn!(
            topic,
            "desired config for a printer this agent does not manage ignored"
        );
        refused("unknown_printer");
        return Ok(());
    };
    if payload.is_empty() {
        debug!(topic, "retained desired config cleared");
        return Ok(());
    }
    let config: DesiredConfig = match codec::decode(payload) {
        Ok(c) => c,
        Err(e @ codec::DecodeError::UnsupportedProtocol { .. }) => {
            warn!(topic, error = %e, "desired config refused");
            refused("protocol");
            let Some(version) = readable_version(payload) else {
                warn!(printer = %printer, "no readable version in the refused config; nothing to report");
                return Ok(());
            };
            let refusal = platen_protocol::Refusal {
                code: platen_protocol::Code::ProtocolUnsupported,
                detail: e.to_string(),
            };
            return refuse(store, agent, &tenant, &printer, version, refusal).await;
        }
        Err(e) => {
            warn!(topic, bytes = payload.len(), error = %e, "desired config refused");
            let oversized = matches!(e, codec::DecodeError::TooLarge { .. });
            refused(if oversized { "oversized" } else { "malformed" });
            // Tell the sender when the version can be read (the config is otherwise
            // broken: wrong types, unknown fields, bad ids…). A refusal has its own
            // report id and never raises the version watermark, so a genuine config
            // of the same version is still applied.
            let Some(version) = readable_version(payload).filter(|_| !oversized) else {
                return Ok(());
            };
            let refusal = platen_protocol::Refusal {
                code: platen_protocol::Code::ValueRejected,
                detail: format!("malformed desired config: {e}"),
            };
            return refuse(store, agent, &tenant, &printer, version, refusal).await;
        }
    };
    if config.printer_id != printer {
        warn!(topic, printer_id = %config.printer_id, "desired config names another printer than its topic; refused");
        refused("wrong_printer");
        return Ok(());
    }
    let version = config.version;
    // Before anything is stored: a forged config must not even raise the version
    // watermark (that would make the genuine next version look stale).
    if !trusted.is_empty() {
        if let Err(e) = trusted.verify(&tenant, &config) {
            warn!(topic, version, error = %e, "desired config refused: signature");
            refused("signature");
            let refusal = platen_protocol::Refusal {
                code: platen_protocol::Code::SignatureInvalid,
                detail: e.to_string(),
            };
            return refuse(store, agent, &tenant, &printer, version, refusal).await;
        }
    }
    match store.offer_desired(&tenant, config, Utc::now()).await? {
        Offer::Accepted => {
            info!(printer = %printer, version, "desired config accepted");
            // Start applying now; the message is acknowledged once the flush is done.
            let _ = route.send(version);
            store.flush().await?;
        }
        Offer::Duplicate => {
            debug!(printer = %printer, version, "desired config already stored");
            // Stored, but maybe not durable yet (an earlier flush may have failed).
            store.flush().await?;
        }
        Offer::Stale { latest } => {
            warn!(printer = %printer, version, latest, "stale desired config ignored");
            refused("stale");
        }
    }
    Ok(())
}

/// The `version` of a config that could not be parsed, if it can be read.
fn readable_version(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        version: u64,
    }
    serde_json::from_slice::<Envelope>(payload)
        .ok()
        .map(|e| e.version)
}

/// A desired config refused as a whole (newer major protocol: 505; signature: 401)
/// is not applied, but its sender must learn why nothing happens: report the
/// version as refused, under a refusal's own report id, without touching the printer.
async fn refuse(
    store: &Store,
    agent: &Id,
    tenant: &Id,
    printer: &Id,
    version: u64,
    refusal: platen_protocol::Refusal,
) -> Result<(), StoreError> {
    if version <= store.completed(printer)? {
        return Ok(());
    }
    let now = Utc::now();
    let report = platen_protocol::ApplyReport {
        report_id: platen_protocol::ApplyReport::make_refusal_id(
            agent,
            printer,
            version,
            refusal.code,
        ),
        agent_id: agent.clone(),
        printer_id: printer.clone(),
        config_version: version,
        status: platen_protocol::ReportStatus::NotApplied,
        settings: Vec::new(),
        received_at: now,
        completed_at: now,
        refused: Some(refusal),
    };
    let payload = String::from_utf8(codec::encode(&report)).unwrap_or_default();
    store
        .enqueue(&OutboxEntry::new(
            Topic::report(tenant, printer).to_string(),
            payload,
        ))
        .await?;
    crate::observe::metrics::get().report(&report);
    Ok(())
}
