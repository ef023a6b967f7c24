//! The embedded backend: one sled database in the state directory (`{state_dir}/db`).
//!
//! Trees (the on-disk format 1, unchanged since the cloud kept its state in sled):
//! * `tenants`, `plans`, `resellers`, `contracts`: id → JSON;
//! * `changes`: change id → [`ChangeRecord`](crate::model::ChangeRecord) JSON;
//! * `versions`: `{tenant}/{printer}` → last published config version (u64 BE);
//! * `timeline`: `{change id}/{seq:020}` → timeline entry JSON, never rewritten but
//!   for its repeat count; `timeline_once`: `{change id}/{once key}` → timeline key;
//! * `ledger`: `{change id}/{period}` → ledger entry JSON, inserted only if absent;
//!   `ledger_by_contract`, `ledger_by_tenant`: `{owner}/{ledger key}` → nothing;
//! * `shipments_sent`: ledger key → time the provider accepted the order;
//! * `migrations`: id → JSON; `scheduled`: id → [`Due`](super::Due);
//!   `migrations_by_tenant`, `migrations_by_contract`: `{owner}/{id}` → nothing;
//! * `contract_changes`: `{contract}/{seq:010}` → change id;
//!   `contracts_by_tenant`: `{tenant}/{contract}` → nothing;
//! * `printer_contracts`: `{tenant}/{printer}` → the contract that covers the printer;
//! * `due`: `{due ms:020}/{change id}` → nothing, `due_of`: change id → its `due` key;
//! * `reports`: report id → stored report; `report_index`:
//!   `{tenant}/{printer}/{version:020}/{report id}` → report id;
//! * `published`: `{tenant}/{printer}/{version:020}` → when and for which change;
//! * `agents_seen`: agent → last health; `printers_seen`: `{tenant}/{printer}` → seen;
//! * `readings`: `{tenant}/{printer}/{read_at ms:020}` → sample;
//! * `wh_*`: outbound webhooks (endpoints, events, deliveries; see `webhooks.rs`);
//! * `meta`: `format_version` and the flags of indexes built for older directories.
//!
//! Keys are unambiguous: every key joins ids with `/`, which ids cannot contain, and
//! every prefix scan ends its prefix with that separator. Contract-side writes are
//! flushed before the call returns; report-side writes at [`Backend::sync`].

mod contracts;
mod copy;
mod readings;
mod reports;
pub(crate) mod scan;
mod webhooks;

use super::{Backend, Result, StoreError};
use std::path::{Path, PathBuf};

/// Version of the on-disk format (`meta/format_version`). A directory without one
/// (written before the cloud recorded it) is format 1. A newer version is refused.
pub const FORMAT_VERSION: u32 = 1;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend {
            backend: "sled",
            message: e.to_string(),
        }
    }
}

/// The sled backend.
#[derive(Clone)]
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    tenants: sled::Tree,
    plans: sled::Tree,
    contracts: sled::Tree,
    changes: sled::Tree,
    versions: sled::Tree,
    timeline: sled::Tree,
    timeline_once: sled::Tree,
    ledger: sled::Tree,
    shipments_sent: sled::Tree,
    resellers: sled::Tree,
    migrations: sled::Tree,
    scheduled: sled::Tree,
    contract_changes: sled::Tree,
    printer_contracts: sled::Tree,
    due: sled::Tree,
    due_of: sled::Tree,
    ledger_by_contract: sled::Tree,
    ledger_by_tenant: sled::Tree,
    contracts_by_tenant: sled::Tree,
    migrations_by_tenant: sled::Tree,
    migrations_by_contract: sled::Tree,
    reports: sled::Tree,
    report_index: sled::Tree,
    published: sled::Tree,
    agents_seen: sled::Tree,
    printers_seen: sled::Tree,
    readings: sled::Tree,
    wh_endpoints: sled::Tree,
    wh_events: sled::Tree,
    wh_order: sled::Tree,
    wh_seq: sled::Tree,
    wh_deliveries: sled::Tree,
    wh_due: sled::Tree,
    /// Claims on changes ([`crate::store::Contracts::claim_due`]). In memory: one
    /// process holds the directory, so a claim dies with the process that held it.
    claims: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Held>>>,
}

/// A claim held on a change.
pub(super) struct Held {
    pub(super) owner: String,
    pub(super) until: chrono::DateTime<chrono::Utc>,
    /// Woken while held: due at once when saved.
    pub(super) rewake: bool,
}

/// Check (and record) the format version of the database in `path`.
pub fn check_format(db: &sled::Db, path: &Path) -> Result<u32> {
    let meta = db.open_tree("meta")?;
    let found = match meta.get("format_version")? {
        Some(v) => match <[u8; 4]>::try_from(v.as_ref()) {
            Ok(b) => u32::from_be_bytes(b),
            Err(_) => u32::MAX,
        },
        None => 1,
    };
    if found > FORMAT_VERSION {
        return Err(StoreError::TooNew {
            what: format!("state directory {}", path.display()),
            found,
            known: FORMAT_VERSION,
        });
    }
    // Migrations from older formats go here (none yet: 1 is the first).
    meta.insert("format_version", &FORMAT_VERSION.to_be_bytes())?;
    db.flush()?;
    Ok(found)
}

impl SledStore {
    /// The claims table (a panic elsewhere while it was held leaves it usable).
    fn claims(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Held>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open (or create) the database under `state_dir`. A second process on the same
    /// directory is refused (sled locks it): one embedded store, one cloud.
    pub fn open(state_dir: &Path) -> Result<SledStore> {
        std::fs::create_dir_all(state_dir).map_err(|e| StoreError::Backend {
            backend: "sled",
            message: format!("cannot create {}: {e}", state_dir.display()),
        })?;
        let db = sled::open(state_dir.join("db")).map_err(|e| match e {
            // sled wraps the lock's EWOULDBLOCK in an error of its own words.
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                StoreError::Backend {
                    backend: "sled",
                    message: format!(
                        "{} is in use by another platen-cloud (the embedded store serves one instance; several instances need store.url = \"postgres://…\")",
                        state_dir.display()
                    ),
                }
            }
            e => e.into(),
        })?;
        check_format(&db, state_dir)?;
        let t = |name: &str| db.open_tree(name);
        let s = SledStore {
            path: state_dir.to_path_buf(),
            tenants: t("tenants")?,
            plans: t("plans")?,
            contracts: t("contracts")?,
            changes: t("changes")?,
            versions: t("versions")?,
            timeline: t("timeline")?,
            timeline_once: t("timeline_once")?,
            ledger: t("ledger")?,
            shipments_sent: t("shipments_sent")?,
            resellers: t("resellers")?,
            migrations: t("migrations")?,
            scheduled: t("scheduled")?,
            contract_changes: t("contract_changes")?,
            printer_contracts: t("printer_contracts")?,
            due: t("due")?,
            due_of: t("due_of")?,
            ledger_by_contract: t("ledger_by_contract")?,
            ledger_by_tenant: t("ledger_by_tenant")?,
            contracts_by_tenant: t("contracts_by_tenant")?,
            migrations_by_tenant: t("migrations_by_tenant")?,
            migrations_by_contract: t("migrations_by_contract")?,
            reports: t("reports")?,
            report_index: t("report_index")?,
            published: t("published")?,
            agents_seen: t("agents_seen")?,
            printers_seen: t("printers_seen")?,
            readings: t("readings")?,
            wh_endpoints: t("wh_endpoints")?,
            wh_events: t("wh_events")?,
            wh_order: t("wh_order")?,
            wh_seq: t("wh_seq")?,
            wh_deliveries: t("wh_deliveries")?,
            wh_due: t("wh_due")?,
            claims: Default::default(),
            db,
        };
        s.with_indexes()?.with_due_index()?.with_owner_indexes()
    }
}

impl Backend for SledStore {
    fn sync(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
    fn check(&self) -> Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        format!("sled in {}", self.path.display())
    }
    fn kind(&self) -> &'static str {
        "sled"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_version_recorded_older_opens_newer_refused() {
        let d = tempfile::tempdir().unwrap();
        let db = sled::open(d.path().join("db")).unwrap();
        // Written before the cloud recorded a version: format 1, now recorded.
        db.open_tree("reports").unwrap().insert("r", "x").unwrap();
        assert_eq!(check_format(&db, d.path()).unwrap(), 1);
        assert_eq!(check_format(&db, d.path()).unwrap(), FORMAT_VERSION);
        assert!(db.open_tree("reports").unwrap().get("r").unwrap().is_some());
        db.open_tree("meta")
            .unwrap()
            .insert("format_version", &(FORMAT_VERSION + 1).to_be_bytes())
            .unwrap();
        let e = check_format(&db, d.path()).unwrap_err();
        assert!(
            matches!(e, StoreError::TooNew { found, .. } if found == FORMAT_VERSION + 1),
            "{e}"
        );
        assert!(e.to_string().contains("upgrade platen-cloud"), "{e}");
    }

    /// The embedded store serves one process: a second open of the same directory is
    /// refused with a message that says what to do.
    #[test]
    fn a_second_cloud_on_the_same_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _first = SledStore::open(d.path()).unwrap();
        let e = SledStore::open(d.path()).err().expect("refused");
        assert!(
            e.to_string().contains("in use by another platen-cloud"),
            "{e}"
        );
    }
}
