//! The agent's local status: what `platen-agent status` shows without any network.
//!
//! The running agent holds the sled database exclusively, so it also keeps a
//! [`Snapshot`] in memory ([`Board`]) and writes it to `{state_dir}/status.json`
//! every few seconds with an atomic replace ([`write_atomic`]: temp file, fsync,
//! rename, fsync of the directory). `status` and `diag` read that file; when no agent
//! runs they open the database directly for the durable figures.

use chrono::{DateTime, Utc};
use platen_protocol::diag::LastReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const STATUS_FILE: &str = "status.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub agent_id: String,
    pub version: String,
    pub pid: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub written_at: Option<DateTime<Utc>>,
    pub broker_connected: bool,
    pub outbox_depth: usize,
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub printers: BTreeMap<String, PrinterSnapshot>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrinterSnapshot {
    /// None until the first poll.
    pub reachable: Option<bool>,
    pub last_good_at: Option<DateTime<Utc>>,
    pub stale_since: Option<DateTime<Utc>>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub pages: Option<u64>,
    /// Supplies low / empty / almost full / full, as "description: state".
    pub supply_warnings: Vec<String>,
    pub errors: Vec<String>,
    pub telemetry_seq: u64,
    pub desired_version: u64,
    pub completed_version: u64,
    pub last_report: Option<LastReport>,
    pub last_drift_at: Option<DateTime<Utc>>,
}

/// The in-memory snapshot, shared by the agent's tasks.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<Snapshot>>);

impl Board {
    pub fn new(agent_id: &str, pid: u32) -> Board {
        Board(Arc::new(Mutex::new(Snapshot {
            agent_id: agent_id.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid,
            started_at: Some(Utc::now()),
            ..Default::default()
        })))
    }

    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    pub fn printer(&self, id: &str, f: impl FnOnce(&mut PrinterSnapshot)) {
        self.update(|s| f(s.printers.entry(id.to_string()).or_default()));
    }

    pub fn get(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Write `bytes` to `path` so that readers see the old or the new content, never a
/// part: write a temp file beside it, fsync, rename over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn write_snapshot(state_dir: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(snap).map_err(std::io::Error::other)?;
    write_atomic(&state_dir.join(STATUS_FILE), &json)
}

/// Read the snapshot file; `Ok(None)` when there is none.
pub fn read_snapshot(state_dir: &Path) -> Result<Option<Snapshot>, String> {
    let path = state_dir.join(STATUS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Whether process `pid` is alive (Linux: /proc; elsewhere assume it is).
pub fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_through_an_atomic_write() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::new("gw", 42);
        board.printer("p1", |p| {
            p.reachable = Some(false);
            p.pages = Some(1234);
        });
        board.update(|s| s.outbox_depth = 3);
        write_snapshot(dir.path(), &board.get()).unwrap();
        // Overwrite: the temp file does not linger.
        write_snapshot(dir.path(), &board.get()).unwrap();
        let back = read_snapshot(dir.path()).unwrap().unwrap();
        assert_eq!(back, board.get());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![STATUS_FILE.to_string()]);
        assert!(read_snapshot(&dir.path().join("none")).unwrap().is_none());
        std::fs::write(dir.path().join(STATUS_FILE), b"{not json").unwrap();
        assert!(read_snapshot(dir.path())
            .unwrap_err()
            .contains("status.json"));
    }
}
