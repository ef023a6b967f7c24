//! Harness for end-to-end tests: real peers on free loopback ports, stopped on drop.
//!
//! - [`Mosquitto`]: the Debian `mosquitto` broker (persistence on or off).
//! - [`Snmpd`]: net-snmp's `snmpd` with a writable community.
//! - [`Sim`]: the `platen-printer-sim` binary.
//! - [`AgentProc`]: the `platen-agent` binary with a generated config.
//! - [`fault_proxy::FaultProxy`]: SNMP faults between the agent and a printer.
//! - [`postgres::Postgres`]: a PostgreSQL cluster of its own (Debian `postgresql`).
//!
//! By what they start: [`peers`] (Mosquitto, snmpd), [`platen`] (the simulator, the
//! provider, the cloud, the agent), [`tap`] (an MQTT recorder), [`fixtures`] (ids,
//! configs, waiting for a report); here the free ports, binary paths and the
//! signal-then-kill every process handle uses. Everything is re-exported at the root.
//!
//! A missing peer fails the test with what to install; nothing is skipped silently.
//! Binaries are taken from the same target directory as the test executable; run
//! `cargo build --workspace --bins` first (`scripts/test` does).

pub mod fault_proxy;
mod fixtures;
mod peers;
pub mod pki;
mod platen;
pub mod postgres;
mod tap;

pub use fixtures::*;
pub use peers::*;
pub use platen::*;
pub use tap::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .expect("local addr")
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Path of a binary from this workspace, next to the test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from target/<profile>/deps; bench binaries from target/<profile>.
    let here = exe.parent().expect("exe dir");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target dir")
    } else {
        here
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// Path of a system program, or a failure saying which Debian package provides it.
pub fn system_bin(name: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("`{name}` is not installed: install the Debian package `{package}` (scripts/test installs it: apt-get install -y {package})");
}

fn wait_tcp(port: u16, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Send `signal`, wait for the exit, SIGKILL if it does not come: after 30 s for
/// SIGTERM (longer than the agent's bounded graceful stop, ~10 s), else 5 s.
fn kill(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
    let grace = if signal == "TERM" { 30 } else { 5 };
    let end = Instant::now() + Duration::from_secs(grace);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}
