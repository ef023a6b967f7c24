//! Durable agent state in sled.
//!
//! Trees:
//! - `desired`: printer id → the latest accepted desired config (+ tenant, received_at)
//! - `completed`: printer id → the last config version that reached a final report
//! - `outbox`: sequence number (big-endian u64, so iteration is oldest first) → a
//!   report waiting for the broker's PUBACK
//! - `meta`: `format_version`
//! - `seqs`: `{kind}/{printer}` → the last sequence number used for telemetry (`t`)
//!   and drift reports (`d`), written with the message that used it
//! - `verified`: printer id → the settings verified by the last completed version
//!   (what drift detection re-reads) and a summary of that report
//!
//! Invariants: a desired config is flushed before its MQTT message is acknowledged
//! (the reconciler may start on it while the flush runs: if the agent dies first,
//! the broker redelivers the unacknowledged message); a report and its printer's
//! `completed` version are written in one transaction, which is flushed before the
//! reconciler moves on (the pump may publish the report while that flush runs: if
//! the agent dies first, neither the report nor the completion is on disk, so the
//! version is applied and reported again under the same `report_id`, which the cloud
//! deduplicates); an outbox entry is removed only after the broker acknowledged it.
//! Flushes are group commits ([`GroupCommit`]), so overlapping writers share one.

use chrono::{DateTime, Utc};
use platen_protocol::{DesiredConfig, Id};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Notify;

/// On-disk format written by this version.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state directory {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("state directory {path} has format version {found}; this agent reads up to {FORMAT_VERSION}")]
    TooNew { path: PathBuf, found: u32 },
    #[error("state database error: {0}")]
    Db(#[from] sled::Error),
    #[error("flushing the state database: {0}")]
    Flush(String),
    #[error("corrupt {what} record: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoredDesired {
    pub tenant: Id,
    pub config: DesiredConfig,
    pub received_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboxEntry {
    pub topic: String,
    pub payload: String,
    /// When the entry was queued (absent in entries written before this field existed).
    #[serde(default)]
    pub queued_at: Option<DateTime<Utc>>,
}

impl OutboxEntry {
    pub fn new(topic: String, payload: String) -> OutboxEntry {
        OutboxEntry {
            topic,
            payload,
            queued_at: Some(Utc::now()),
        }
    }
}

/// What a completed version leaves behind for drift detection and `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verified {
    pub version: u64,
    /// Settings that read back equal (code 200): name → desired value.
    pub settings: std::collections::BTreeMap<String, platen_protocol::SettingValue>,
    /// The report's summary.
    pub report: Option<platen_protocol::diag::LastReport>,
}

/// Which per-printer sequence a queued message advances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqKind {
    Telemetry,
    Drift,
}

impl SeqKind {
    fn key(self, printer: &Id) -> String {
        match self {
            SeqKind::Telemetry => format!("t/{printer}"),
            SeqKind::Drift => format!("d/{printer}"),
        }
    }
}

/// The result of offering a newly received desired config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Stored; the reconciler should apply it.
    Accepted,
    /// The same version is already stored (e.g. a retained message after reconnect).
    Duplicate,
    /// Older than what is stored or completed: ignored.
    Stale { latest: u64 },
}

/// Free space [`Store::probe`] asks of the state directory's file system.
pub const PROBE_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    desired: sled::Tree,
    completed: sled::Tree,
    outbox: sled::Tree,
    seqs: sled::Tree,
    verified: sled::Tree,
    meta: sled::Tree,
    dir: PathBuf,
    outbox_wake: Arc<Notify>,
    group: Arc<GroupCommit>,
}

/// Coalesces fsyncs: writers that arrive while a flush runs are covered by the next
/// single flush instead of each starting their own. Found by the fleet benchmark:
/// about a thousand concurrent `flush_async` calls stalled sled for good; one flush
/// at a time, on the blocking pool, covering every write before it, does not.
#[derive(Default)]
struct GroupCommit {
    /// Writes made (a counter, not bytes).
    written: std::sync::atomic::AtomicU64,
    /// The `written` value the last completed flush covered.
    flushed: std::sync::atomic::AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

fn corrupt(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

fn tx_error(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(s) => StoreError::Db(s),
        TransactionError::Abort(()) => StoreError::Corrupt {
            what: "outbox",
            detail: "transaction aborted".into(),
        },
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: dir.into(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .open()
            .map_err(open_err)?;
        let meta = db.open_tree("meta")?;
        match meta.get("format_version")? {
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        what: "format_version",
                        detail: format!("{} bytes", v.len()),
                    })?);
                if found > FORMAT_VERSION {
                    return Err(StoreError::TooNew {
                        path: dir.into(),
                        found,
                    });
                }
            }
            None => {
                meta.insert("format_version", &FORMAT_VERSION.to_be_bytes())?;
            }
        }
        Ok(Store {
            desired: db.open_tree("desired")?,
            completed: db.open_tree("completed")?,
            outbox: db.open_tree("outbox")?,
            seqs: db.open_tree("seqs")?,
            verified: db.open_tree("verified")?,
            meta,
            dir: dir.to_path_buf(),
            db,
            outbox_wake: Arc::new(Notify::new()),
            group: Arc::default(),
        })
    }

    /// Notified whenever a report enters the outbox.
    pub fn outbox_wake(&self) -> Arc<Notify> {
        self.outbox_wake.clone()
    }

    pub fn desired(&self, printer: &Id) -> Result<Option<StoredDesired>, StoreError> {
        match self.desired.get(printer.as_str())? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    what: "desired",
                    detail: e.to_string(),
                }),
        }
    }

    pub fn completed(&self, printer: &Id) -> Result<u64, StoreError> {
        match self.completed.get(printer.as_str())? {
            None => Ok(0),
            Some(b) => Ok(u64::from_be_bytes(b.as_ref().try_into().map_err(|_| {
                StoreError::Corrupt {
                    what: "completed",
                    detail: format!("{} bytes", b.len()),
                }
            })?)),
        }
    }

    /// Store a desired config if it is newer than anything stored or completed for
    /// its printer. Not flushed: the caller wakes the reconciler, then calls
    /// [`Store::flush`] before acknowledging the message (the flush overlaps the apply).
    pub async fn offer_desired(
        &self,
        tenant: &Id,
        config: DesiredConfig,
        received_at: DateTime<Utc>,
    ) -> Result<Offer, StoreError> {
        let printer = config.printer_id.clone();
        let stored = self
            .desired(&printer)?
            .map(|d| d.config.version)
            .unwrap_or(0);
        let completed = self.completed(&printer)?;
        let v = config.version;
        if v == stored {
            return Ok(Offer::Duplicate);
        }
        if v < stored || v <= completed {
            return Ok(Offer::Stale {
                latest: stored.max(completed),
            });
        }
        let rec = StoredDesired {
            tenant: tenant.clone(),
            config,
            received_at,
        };
        let bytes = serde_json::to_vec(&rec).map_err(corrupt("desired"))?;
        self.desired.insert(printer.as_str(), bytes)?;
        Ok(Offer::Accepted)
    }

    /// Record that `version` of `printer` is final and queue its report, atomically,
    /// then flush. `verified` (settings read back equal, and the report summary) is
    /// written in the same transaction. Returns the outbox key.
    pub async fn complete(
        &self,
        printer: &Id,
        version: u64,
        entry: &OutboxEntry,
        verified: &Verified,
    ) -> Result<u64, StoreError> {
        let key = self.db.generate_id()?;
        let value = serde_json::to_vec(entry).map_err(corrupt("outbox"))?;
        let ver = serde_json::to_vec(verified).map_err(corrupt("verified"))?;
        (&self.completed, &self.outbox, &self.verified)
            .transaction(|(completed, outbox, vt)| {
                completed.insert(printer.as_str(), &version.to_be_bytes())?;
                outbox.insert(&key.to_be_bytes(), value.as_slice())?;
                vt.insert(printer.as_str(), ver.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
        // The pump may publish while the flush runs (see the module's invariants).
        self.outbox_wake.notify_one();
        self.durable().await?;
        Ok(key)
    }

    /// Queue a message that advances a per-printer sequence (telemetry, drift), with
    /// the sequence number in the same transaction, then flush.
    pub async fn queue(
        &self,
        kind: SeqKind,
        printer: &Id,
        seq: u64,
        entry: &OutboxEntry,
    ) -> Result<u64, StoreError> {
        let key = self.db.generate_id()?;
        let value = serde_json::to_vec(entry).map_err(corrupt("outbox"))?;
        let seq_key = kind.key(printer);
        (&self.seqs, &self.outbox)
            .transaction(|(seqs, outbox)| {
                seqs.insert(seq_key.as_bytes(), &seq.to_be_bytes())?;
                outbox.insert(&key.to_be_bytes(), value.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
        self.durable().await?;
        self.outbox_wake.notify_one();
        Ok(key)
    }

    /// Queue a message that has no sequence (diagnostics responses), then flush.
    pub async fn enqueue(&self, entry: &OutboxEntry) -> Result<u64, StoreError> {
        let key = self.db.generate_id()?;
        let value = serde_json::to_vec(entry).map_err(corrupt("outbox"))?;
        self.outbox.insert(key.to_be_bytes(), value)?;
        self.durable().await?;
        self.outbox_wake.notify_one();
        Ok(key)
    }

    /// The oldest entry's queue time, if any entry carries one.
    pub fn oldest_pending(&self) -> Option<DateTime<Utc>> {
        self.outbox_peek(1).first().and_then(|(_, e)| e.queued_at)
    }

    /// The last sequence number used (0 if none).
    pub fn seq(&self, kind: SeqKind, printer: &Id) -> Result<u64, StoreError> {
        match self.seqs.get(kind.key(printer))? {
            None => Ok(0),
            Some(b) => Ok(u64::from_be_bytes(b.as_ref().try_into().map_err(|_| {
                StoreError::Corrupt {
                    what: "seqs",
                    detail: format!("{} bytes", b.len()),
                }
            })?)),
        }
    }

    /// What the last completed version verified, if anything completed.
    pub fn verified(&self, printer: &Id) -> Result<Option<Verified>, StoreError> {
        match self.verified.get(printer.as_str())? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(corrupt("verified")),
        }
    }

    /// Up to `limit` outbox entries, oldest first. Undecodable entries are skipped
    /// with a warning and kept (never deleted unread).
    pub fn outbox_peek(&self, limit: usize) -> Vec<(u64, OutboxEntry)> {
        let mut out = Vec::new();
        for item in self.outbox.iter() {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    tracing::error!(error = %e, "reading outbox");
                    break;
                }
            };
            let Ok(key) = <[u8; 8]>::try_from(k.as_ref()).map(u64::from_be_bytes) else {
                tracing::warn!("outbox key of {} bytes skipped", k.len());
                continue;
            };
            match serde_json::from_slice::<OutboxEntry>(&v) {
                Ok(e) => out.push((key, e)),
                Err(e) => tracing::warn!(key, error = %e, "undecodable outbox entry skipped"),
            }
            if out.len() >= limit {
                break;
            }
        }
        out
    }

    /// Remove an acknowledged entry. Not flushed at once: losing a removal in a crash
    /// only causes a resend, which the cloud deduplicates.
    pub fn remove_outbox(&self, key: u64) -> Result<(), StoreError> {
        self.outbox.remove(key.to_be_bytes())?;
        Ok(())
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Make every write made so far durable (group commit; see [`GroupCommit`]).
    async fn durable(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let mine = self.group.written.fetch_add(1, SeqCst) + 1;
        let _turn = self.group.lock.lock().await;
        if self.group.flushed.load(SeqCst) >= mine {
            return Ok(());
        }
        let upto = self.group.written.load(SeqCst);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Flush(e.to_string()))??;
        self.group.flushed.fetch_max(upto, SeqCst);
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await?;
        Ok(())
    }

    /// Can the state directory still be written? A record is written and flushed,
    /// and a [`PROBE_BYTES`] file is written, synced and removed beside the database:
    /// sled writes into log segments it already holds, so a full disk only shows
    /// when it needs a new one — the file shows it now. A file system gone
    /// read-only fails both.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let now = Utc::now().timestamp_millis().to_be_bytes();
        self.meta.insert("probe", &now)?;
        self.flush().await?;
        let path = self.dir.join("space-probe");
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let written = std::fs::File::create(&path).and_then(|mut f| {
                f.write_all(&vec![0u8; PROBE_BYTES])?;
                f.sync_all()
            });
            let _ = std::fs::remove_file(&path);
            written
        })
        .await
        .map_err(|e| StoreError::Flush(e.to_string()))?
        .map_err(|e| StoreError::Db(sled::Error::Io(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cfg(v: u64) -> DesiredConfig {
        DesiredConfig {
            printer_id: "p1".parse().unwrap(),
            version: v,
            issued_at: Utc::now(),
            settings: BTreeMap::new(),
            signature: None,
        }
    }

    /// The state directory of format 1 committed in `tests/fixtures/state-format-1`
    /// (written by [`write_format_1_fixture`]): p1 desired v7 completed, p2 desired
    /// v3 not yet applied, one report in the outbox, telemetry seq 41 for p1.
    fn check_format_1(s: &Store) {
        let (p1, p2): (Id, Id) = ("p1".parse().unwrap(), "p2".parse().unwrap());
        assert_eq!(s.desired(&p1).unwrap().unwrap().config.version, 7);
        assert_eq!(s.completed(&p1).unwrap(), 7);
        assert_eq!(s.desired(&p2).unwrap().unwrap().config.version, 3);
        assert_eq!(s.completed(&p2).unwrap(), 0);
        let outbox = s.outbox_peek(10);
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].1.topic, "platen/v1/acme/p1/config/report");
        assert_eq!(s.seq(SeqKind::Telemetry, &p1).unwrap(), 41);
        assert!(s.verified(&p1).unwrap().is_some());
    }

    /// Regenerate the fixture (only when FORMAT_VERSION changes, as a new directory):
    /// `cargo test -p platen-agent write_format_1_fixture -- --ignored`.
    #[tokio::test]
    #[ignore]
    async fn write_format_1_fixture() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-format-1");
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(&dir).unwrap();
        let tenant: Id = "acme".parse().unwrap();
        let (p1, p2): (Id, Id) = ("p1".parse().unwrap(), "p2".parse().unwrap());
        let mut c = cfg(7);
        c.settings.insert(
            "sysLocation".into(),
            platen_protocol::SettingValue::Text("Hall 7".into()),
        );
        s.offer_desired(&tenant, c, Utc::now()).await.unwrap();
        let mut c = cfg(3);
        c.printer_id = p2.clone();
        s.offer_desired(&tenant, c, Utc::now()).await.unwrap();
        let e = OutboxEntry::new(
            "platen/v1/acme/p1/config/report".into(),
            "{\"report_id\":\"gw:p1:v7\"}".into(),
        );
        s.complete(&p1, 7, &e, &Verified::default()).await.unwrap();
        for n in 1..=41 {
            let e = OutboxEntry::new("t".into(), n.to_string());
            s.queue(SeqKind::Telemetry, &p1, n, &e).await.unwrap();
        }
        for (k, _) in s
            .outbox_peek(100)
            .into_iter()
            .filter(|(_, e)| e.topic == "t")
        {
            s.remove_outbox(k).unwrap();
        }
        s.flush().await.unwrap();
        check_format_1(&s);
    }

    #[tokio::test]
    async fn a_state_directory_of_format_1_opens() {
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-format-1");
        let dir = tempfile::tempdir().unwrap();
        // sled writes to what it opens: work on a copy.
        copy_dir(&fixture, dir.path());
        // git keeps no empty directories: open as a fresh clone has it.
        let _ = std::fs::remove_dir(dir.path().join("db/blobs"));
        let s = Store::open(dir.path()).unwrap();
        check_format_1(&s);
        let meta = s.db.open_tree("meta").unwrap();
        let v = meta.get("format_version").unwrap().unwrap();
        assert_eq!(
            u32::from_be_bytes(v.as_ref().try_into().unwrap()),
            FORMAT_VERSION
        );
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn versions_are_monotonic_and_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let tenant: Id = "acme".parse().unwrap();
        let p1: Id = "p1".parse().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(
                s.offer_desired(&tenant, cfg(2), Utc::now()).await.unwrap(),
                Offer::Accepted
            );
            assert_eq!(
                s.offer_desired(&tenant, cfg(2), Utc::now()).await.unwrap(),
                Offer::Duplicate
            );
            assert_eq!(
                s.offer_desired(&tenant, cfg(1), Utc::now()).await.unwrap(),
                Offer::Stale { latest: 2 }
            );
            let e = OutboxEntry::new("t".into(), "{}".into());
            s.complete(&p1, 2, &e, &Verified::default()).await.unwrap();
            assert_eq!(s.outbox_len(), 1);
        }
        let s = reopen(dir.path());
        assert_eq!(s.completed(&p1).unwrap(), 2);
        assert_eq!(s.desired(&p1).unwrap().unwrap().config.version, 2);
        assert_eq!(
            s.offer_desired(&tenant, cfg(2), Utc::now()).await.unwrap(),
            Offer::Duplicate
        );
        assert_eq!(
            s.offer_desired(&tenant, cfg(3), Utc::now()).await.unwrap(),
            Offer::Accepted
        );
        let peek = s.outbox_peek(10);
        assert_eq!(peek.len(), 1);
        s.remove_outbox(peek[0].0).unwrap();
        assert_eq!(s.outbox_len(), 0);
    }

    #[tokio::test]
    async fn completed_version_is_stale_even_if_desired_was_lost() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let p1: Id = "p1".parse().unwrap();
        s.complete(
            &p1,
            5,
            &OutboxEntry::new("t".into(), "{}".into()),
            &Verified::default(),
        )
        .await
        .unwrap();
        let tenant: Id = "acme".parse().unwrap();
        assert_eq!(
            s.offer_desired(&tenant, cfg(5), Utc::now()).await.unwrap(),
            Offer::Stale { latest: 5 }
        );
    }

    #[tokio::test]
    async fn outbox_is_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let p1: Id = "p1".parse().unwrap();
        for v in 1..=300u64 {
            s.complete(
                &p1,
                v,
                &OutboxEntry::new(format!("t{v}"), "{}".into()),
                &Verified::default(),
            )
            .await
            .unwrap();
        }
        let topics: Vec<String> = s
            .outbox_peek(300)
            .into_iter()
            .map(|(_, e)| e.topic)
            .collect();
        let want: Vec<String> = (1..=300).map(|v| format!("t{v}")).collect();
        assert_eq!(topics, want);
    }

    #[tokio::test]
    async fn sequences_survive_reopen_and_entries_written_before_queued_at_decode() {
        let dir = tempfile::tempdir().unwrap();
        let p1: Id = "p1".parse().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.seq(SeqKind::Telemetry, &p1).unwrap(), 0);
            let e = OutboxEntry::new("t".into(), "{}".into());
            s.queue(SeqKind::Telemetry, &p1, 7, &e).await.unwrap();
            s.queue(SeqKind::Drift, &p1, 2, &e).await.unwrap();
            // An entry in the session-1 format (no queued_at).
            s.outbox
                .insert(
                    99u64.to_be_bytes(),
                    &br#"{"topic":"old","payload":"{}"}"#[..],
                )
                .unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.seq(SeqKind::Telemetry, &p1).unwrap(), 7);
        assert_eq!(s.seq(SeqKind::Drift, &p1).unwrap(), 2);
        let all = s.outbox_peek(10);
        assert_eq!(all.len(), 3);
        assert!(all
            .iter()
            .any(|(_, e)| e.topic == "old" && e.queued_at.is_none()));
    }

    fn reopen(dir: &Path) -> Store {
        for _ in 0..50 {
            if let Ok(s) = Store::open(dir) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Store::open(dir).unwrap()
    }

    #[test]
    fn refuses_a_newer_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("format_version", &99u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("format version 99"), "{err}");
    }
}
