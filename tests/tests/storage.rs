//! Storage faults (#6): an unwritable state directory or a full disk stops the agent
//! at start (non-zero exit, the reason in its log); a disk that fills while it runs
//! turns health `down` with the reason and desired configs are refused (not
//! acknowledged), and when space is back health is `up` again and the refused config
//! is applied. Full and read-only disks are small tmpfs mounts: these tests need
//! root (or CAP_SYS_ADMIN), as CI has; without it they fail saying so.

use platen_e2e::*;
use platen_protocol::{Health, HealthStatus};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root or CAP_SYS_ADMIN: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the file system holding `dir` until a write fails; returns the filler.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

fn config(port: u16, state: &Path, sim: &Sim) -> String {
    agent_toml(
        "gw-s",
        port,
        state,
        &[PrinterEntry::new("p1", sim.addr("p1"))],
    )
}

#[test]
fn an_unwritable_state_directory_stops_the_agent_at_start() {
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1"]);
    // A path that cannot be a directory: a regular file where the parent should be.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "not a directory").unwrap();
    let bad = dir.path().join("file").join("state");
    let mut agent = AgentProc::start(dir.path(), &config(broker.port, &bad, &sim));
    assert_ne!(agent.wait_exit(Duration::from_secs(20)), 0);
    let log = agent.log();
    assert!(log.contains(&bad.display().to_string()), "{log}");

    // A read-only file system.
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    let _m = Tmpfs::mount(&ro, "size=8m,ro");
    let mut agent = AgentProc::start(dir.path(), &config(broker.port, &ro.join("state"), &sim));
    assert_ne!(agent.wait_exit(Duration::from_secs(20)), 0);
    let log = agent.log();
    assert!(log.contains("Read-only file system"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_health_down_refuses_configs_and_recovers() {
    // A small in-flight window: unacknowledged configs fill it, so nothing more (not
    // even the retained configs on a new subscription) comes through until they are
    // taken up — which the agent must do itself, without a reconnect.
    let port = free_tcp_port();
    let broker = Mosquitto::start_conf(
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 2\n"),
        port,
    );
    let sim = Sim::start(&["p1"]);
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let _m = Tmpfs::mount(&disk, "size=32m");
    let state = disk.join("state");
    let cloud = start_cloud(broker.port, dir.path()).await;
    let health = Tap::start(
        broker.port,
        "storage-health",
        &["platen/v1/agents/gw-s/health"],
    )
    .await;
    let mut agent = AgentProc::start(dir.path(), &config(broker.port, &state, &sim));
    cloud
        .publish_desired(&tenant(), &desired("p1", 1, &[("sysLocation", t("One"))]))
        .await
        .unwrap();
    wait_report(&cloud, "gw-s:p1:v1", Duration::from_secs(20), &agent).await;

    // The disk fills up.
    let filler = fill(&disk);
    let down = health
        .wait_for::<Health, _>(
            Duration::from_secs(20),
            "health down",
            || agent.log(),
            |h| {
                h.iter()
                    .rev()
                    .find(|h| h.status == HealthStatus::Down)
                    .cloned()
            },
        )
        .await;
    let reason = down.reason.unwrap_or_default();
    assert!(
        reason.contains("cannot be written") && reason.contains("No space left"),
        "{reason}"
    );
    // Configs arriving now are refused, not applied, not acknowledged.
    for v in 2..=4 {
        let c = desired("p1", v, &[("sysLocation", t(&format!("Version {v}")))]);
        cloud.publish_desired(&tenant(), &c).await.unwrap();
    }
    agent.wait_log(
        "desired config refused: the state store cannot be written",
        Duration::from_secs(10),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for v in 2..=4 {
        let id = format!("gw-s:p1:v{v}");
        assert!(
            cloud.report(&id).is_none(),
            "applied a config it could not keep"
        );
    }
    assert_eq!(
        agent.try_exit_code(),
        None,
        "the agent exited:\n{}",
        agent.log()
    );

    // Space again: health up, the refused configs are taken up in order; the newest
    // is applied.
    std::fs::remove_file(&filler).unwrap();
    let r = wait_report(&cloud, "gw-s:p1:v4", Duration::from_secs(30), &agent).await;
    assert_eq!(r.report.status, platen_protocol::ReportStatus::Applied);
    let location = snmpget("private", &sim.addr("p1").to_string(), "1.3.6.1.2.1.1.6.0").unwrap();
    assert!(location.contains("\"Version 4\""), "{location}");
    health
        .wait_for::<Health, _>(
            Duration::from_secs(20),
            "health up again",
            || agent.log(),
            |h| h.last().filter(|h| h.status == HealthStatus::Up).cloned(),
        )
        .await;

    // Stopped, the disk full again: it does not start.
    assert_eq!(agent.terminate(), Some(0));
    let _filler = fill(&disk);
    agent.restart();
    assert_ne!(agent.wait_exit(Duration::from_secs(20)), 0);
    let log = agent.log();
    assert!(log.contains("cannot be written"), "{log}");
}
