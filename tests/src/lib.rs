//! Harness for end-to-end tests: real peers on free loopback ports, stopped on drop.
//!
//! - [`Mosquitto`]: the Debian `mosquitto` broker (persistence on or off).
//! - [`Snmpd`]: net-snmp's `snmpd` with a writable community.
//! - [`Sim`]: the `platen-printer-sim` binary.
//! - [`AgentProc`]: the `platen-agent` binary with a generated config.
//! - [`fault_proxy::FaultProxy`]: SNMP faults between the agent and a printer.
//! - [`postgres::Postgres`]: a PostgreSQL cluster of its own (Debian `postgresql`).
//!
//! A missing peer fails the test with what to install; nothing is skipped silently.
//! Binaries are taken from the same target directory as the test executable; run
//! `cargo build --workspace --bins` first (`scripts/test` does).

pub mod fault_proxy;
pub mod pki;
pub mod postgres;

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

/// A TLS listener for [`Mosquitto::start_tls`].
pub struct TlsListener {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Refuse clients without a certificate signed by `ca_file`.
    pub require_certificate: bool,
}

/// A Mosquitto broker on a free port (plain MQTT on `port`; TLS on `tls_port` if asked).
pub struct Mosquitto {
    pub port: u16,
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
    persistence: bool,
    tls: Option<TlsListener>,
    /// `max_queued_messages` per client (0: no limit).
    max_queued: u32,
    /// A whole configuration given by the test ([`Mosquitto::start_conf`]).
    custom: Option<String>,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(persistence: bool) -> Mosquitto {
        Self::start_with(persistence, None)
    }

    /// No limit on the messages queued per client (benchmarks publish faster than
    /// a subscriber takes them; the test default of 10,000 would drop the excess).
    pub fn start_unbounded() -> Mosquitto {
        let mut m = Self::new(false, None);
        m.max_queued = 0;
        m.launch();
        m
    }

    /// Plain listener on `port` (for the cloud in tests) and a TLS listener on `tls_port`.
    pub fn start_tls(tls: TlsListener) -> Mosquitto {
        Self::start_with(false, Some(tls))
    }

    fn start_with(persistence: bool, tls: Option<TlsListener>) -> Mosquitto {
        let mut m = Self::new(persistence, tls);
        m.launch();
        m
    }

    fn new(persistence: bool, tls: Option<TlsListener>) -> Mosquitto {
        Mosquitto {
            port: free_tcp_port(),
            tls_port: tls.as_ref().map(|_| free_tcp_port()),
            dir: tempfile::tempdir().expect("tempdir"),
            persistence,
            tls,
            max_queued: 10_000,
            custom: None,
            child: None,
        }
    }

    /// A broker with a whole configuration of the caller's (say, the packaged one
    /// with paths replaced), which must listen on `port`.
    pub fn start_conf(conf: String, port: u16) -> Mosquitto {
        let mut m = Self::new(false, None);
        m.port = port;
        m.custom = Some(conf);
        m.launch();
        m
    }

    fn launch(&mut self) {
        let bin = system_bin("mosquitto", "mosquitto");
        let conf = self.dir.path().join("mosquitto.conf");
        if let Some(text) = &self.custom {
            std::fs::write(&conf, text).expect("write mosquitto.conf");
            return self.spawn(&bin, &conf);
        }
        let mut text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_inflight_messages 100\nmax_queued_messages {}\n",
            self.port, self.max_queued
        );
        if let (Some(tls), Some(port)) = (&self.tls, self.tls_port) {
            text.push_str(&format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                tls.ca_file.display(),
                tls.cert_file.display(),
                tls.key_file.display(),
                tls.require_certificate
            ));
        }
        if self.persistence {
            // Started as root, mosquitto drops to its own user: give it a directory it can write.
            let data = self.dir.path().join("data");
            std::fs::create_dir_all(&data).expect("broker data dir");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            text.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                data.display()
            ));
        } else {
            text.push_str("persistence false\n");
        }
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        self.spawn(&bin, &conf);
    }

    fn spawn(&mut self, bin: &Path, conf: &Path) {
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).expect("log file");
        let child = Command::new(bin)
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        for port in std::iter::once(self.port).chain(self.tls_port) {
            assert!(
                wait_tcp(port, Duration::from_secs(10)),
                "mosquitto did not listen on {port}: {}",
                self.log()
            );
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stop (SIGTERM, so a persistent broker saves its state).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, "TERM");
        }
    }

    /// Start again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// net-snmp's snmpd with `rwcommunity private` on a free UDP port, and the SNMPv3
/// user [`SNMPD_V3_USER`] (authPriv, SHA-256 / AES-128) with an engine id of ours.
pub struct Snmpd {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

/// The SNMPv3 user every [`Snmpd`] has: (user, auth password, priv password).
pub const SNMPD_V3_USER: (&str, &str, &str) = ("platen", "Auth-S3cret-pw", "Priv-S3cret-pw");

impl Snmpd {
    pub fn start() -> Snmpd {
        Self::start_with_engine("platen-test-1")
    }

    /// With `engineID` set to `engine_id` (text).
    pub fn start_with_engine(engine_id: &str) -> Snmpd {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_udp_port();
        let child = Self::spawn(dir.path(), port, engine_id);
        let s = Snmpd { port, dir, child };
        s.wait_ready();
        s
    }

    /// Stop and start again on the same port with another engine id (as if the
    /// printer were replaced or reset).
    pub fn restart_with_engine(&mut self, engine_id: &str) {
        kill(&mut self.child, "TERM");
        // Forget the persisted engine state (boots, keys) like a new device.
        self.child = Self::spawn(self.dir.path(), self.port, engine_id);
        self.wait_ready();
    }

    fn spawn(dir: &Path, port: u16, engine_id: &str) -> Child {
        let bin = system_bin("snmpd", "snmpd");
        let conf = dir.join("snmpd.conf");
        let (user, auth, privacy) = SNMPD_V3_USER;
        // sysLocation/sysContact are not set here: a value in snmpd.conf makes them read-only.
        std::fs::write(
            &conf,
            format!(
                "agentAddress udp:127.0.0.1:{port}\nrwcommunity private 127.0.0.1\nrocommunity public 127.0.0.1\n\
                 engineID {engine_id}\ncreateUser {user} SHA-256 \"{auth}\" AES \"{privacy}\"\nrwuser {user} priv\n"
            ),
        )
        .expect("write snmpd.conf");
        // Its persistent state lives in a subdirectory, so a restart can drop it.
        let persist = dir.join("persist");
        let _ = std::fs::remove_dir_all(&persist);
        std::fs::create_dir_all(&persist).expect("snmpd persist dir");
        Command::new(bin)
            .args(["-f", "-C", "-Lf"])
            .arg(dir.join("snmpd.log"))
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.join("snmpd.pid"))
            .env("SNMP_PERSISTENT_DIR", &persist)
            .env("MIBS", "")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start snmpd")
    }

    fn wait_ready(&self) {
        // Ready when it answers a GET.
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if snmpget(
                "public",
                &format!("127.0.0.1:{}", self.port),
                "1.3.6.1.2.1.1.3.0",
            )
            .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("snmpd did not answer on udp/{}", self.port);
    }

    /// `snmpget -v3` as [`SNMPD_V3_USER`]; Ok(stdout) or Err(stderr).
    pub fn get_v3(&self, oid: &str) -> Result<String, String> {
        let (user, auth, privacy) = SNMPD_V3_USER;
        net_snmp(
            "snmpget",
            &[
                "-v3",
                "-l",
                "authPriv",
                "-u",
                user,
                "-a",
                "SHA-256",
                "-A",
                auth,
                "-x",
                "AES",
                "-X",
                privacy,
                "-On",
                "-t",
                "1",
                "-r",
                "1",
                &format!("127.0.0.1:{}", self.port),
                oid,
            ],
        )
    }
}

impl Drop for Snmpd {
    fn drop(&mut self) {
        kill(&mut self.child, "TERM");
    }
}

/// `snmpget -v2c` with numeric output; Ok(stdout) or Err(stderr).
pub fn snmpget(community: &str, target: &str, oid: &str) -> Result<String, String> {
    net_snmp(
        "snmpget",
        &[
            "-v2c", "-c", community, "-On", "-t", "1", "-r", "1", target, oid,
        ],
    )
}

/// `snmpset -v2c`; Ok(stdout) or Err(stderr).
pub fn snmpset(
    community: &str,
    target: &str,
    oid: &str,
    kind: &str,
    value: &str,
) -> Result<String, String> {
    net_snmp(
        "snmpset",
        &[
            "-v2c", "-c", community, "-On", "-t", "1", "-r", "1", target, oid, kind, value,
        ],
    )
}

fn net_snmp(tool: &str, args: &[&str]) -> Result<String, String> {
    let bin = system_bin(tool, "snmp");
    let out = Command::new(bin)
        .args(args)
        .env("MIBS", "")
        .output()
        .expect("run net-snmp tool");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The simulator binary serving one or more printers.
/// A child process that prints lines up to `ready` and takes commands on stdin,
/// each answered by one line (`ok` or `error: …`).
pub struct LineProc {
    /// Lines printed before `ready`.
    pub banner: Vec<String>,
    child: Option<Child>,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl LineProc {
    pub fn spawn(cmd: Command, what: &str) -> LineProc {
        Self::spawn_with_stderr(cmd, what, Stdio::inherit())
    }

    /// [`LineProc::spawn`] with standard error going to `stderr` (say, a log file).
    pub fn spawn_with_stderr(mut cmd: Command, what: &str, stderr: Stdio) -> LineProc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut banner = Vec::new();
        loop {
            let mut line = String::new();
            let n = stdout.read_line(&mut line).expect("read output");
            assert!(n > 0, "{what} exited before it was ready");
            if line.trim() == "ready" {
                break;
            }
            banner.push(line.trim().to_string());
        }
        LineProc {
            banner,
            child: Some(child),
            stdin,
            stdout,
        }
    }

    /// The words after `key` in the banner line that starts with it.
    pub fn banner_value(&self, key: &str) -> Option<String> {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_string))
    }

    /// Send a control command and expect `ok`.
    pub fn command(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write command");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read reply");
        assert_eq!(line.trim(), "ok", "{cmd:?} refused");
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, "KILL");
        }
    }

    /// SIGTERM; the exit status code (None: killed by a signal after 30 s).
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        kill(&mut c, "TERM");
        c.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for LineProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, "TERM");
        }
    }
}

/// The printer simulator process.
pub struct Sim {
    pub printers: Vec<(String, SocketAddr)>,
    proc: LineProc,
}

impl Sim {
    /// `specs` as for `--printer` (e.g. `p2,read-only=1.3.6.1.2.1.1.6.0`).
    pub fn start(specs: &[&str]) -> Sim {
        Self::start_with_community(specs, "private")
    }

    /// [`Sim::start`] with another community (read and write).
    pub fn start_with_community(specs: &[&str], community: &str) -> Sim {
        let mut cmd = Command::new(workspace_bin("platen-printer-sim"));
        cmd.arg("--community").arg(community);
        for s in specs {
            cmd.arg("--printer").arg(s);
        }
        let proc = LineProc::spawn(cmd, "simulator");
        let printers = proc
            .banner
            .iter()
            .filter_map(
                |l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
                    ["printer", id, addr] => Some((id.to_string(), addr.parse().expect("address"))),
                    _ => None,
                },
            )
            .collect();
        Sim { printers, proc }
    }

    pub fn addr(&self, id: &str) -> SocketAddr {
        self.printers
            .iter()
            .find(|(p, _)| p == id)
            .map(|(_, a)| *a)
            .expect("printer id")
    }

    /// Send a control command (`reboot p1`, `writable p1 OID`, …) and expect `ok`.
    pub fn command(&mut self, cmd: &str) {
        self.proc.command(cmd);
    }
}

/// The stand-in service provider (`platen-provider`), with its stdin fault knobs.
pub struct ProviderProc {
    pub url: String,
    proc: LineProc,
}

impl ProviderProc {
    pub fn start() -> ProviderProc {
        let mut cmd = Command::new(workspace_bin("platen-provider"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", free_tcp_port()));
        let proc = LineProc::spawn(cmd, "provider");
        let addr = proc.banner_value("listening").expect("provider address");
        ProviderProc {
            url: format!("http://{addr}"),
            proc,
        }
    }

    /// `down`, `up`, `slow MS`, `errors N`, `status-unobtainable MS`, `activation MS`.
    pub fn command(&mut self, cmd: &str) {
        self.proc.command(cmd);
    }
}

/// `platen-cloud serve` as a process (MQTT, engine, HTTP API), restartable on its state.
pub struct CloudProc {
    pub api: String,
    /// The PostgreSQL database it keeps its state in (`PLATEN_E2E_STORE=postgres`);
    /// none: sled in its state directory.
    pub store_url: Option<String>,
    args: Vec<String>,
    proc: Option<LineProc>,
    /// Where its standard error goes, when the test reads its log.
    log: Option<PathBuf>,
}

impl CloudProc {
    /// Short deadlines for tests: report deadline 5 s, re-publish 2 s after a failure.
    pub fn start(broker_port: u16, state_dir: &Path, provider_url: &str) -> CloudProc {
        Self::start_with(broker_port, state_dir, provider_url, &[])
    }

    /// [`CloudProc::start`] with more `serve` options (e.g. `--catalog FILE`).
    pub fn start_with(
        broker_port: u16,
        state_dir: &Path,
        provider_url: &str,
        extra: &[&str],
    ) -> CloudProc {
        // PLATEN_E2E_STORE=postgres: a database of the test process's own server.
        let store_url = postgres::e2e_store_url("e2e");
        Self::build(
            broker_port,
            state_dir,
            provider_url,
            ("platen-cloud-e2e", store_url),
            extra,
        )
    }

    /// One of several instances on the PostgreSQL database `store_url`, as
    /// `client_id` (each instance its own), sharing the report stream; `extra`
    /// `serve` options.
    pub fn start_instance(
        broker_port: u16,
        state_dir: &Path,
        provider_url: &str,
        (store_url, client_id): (&str, &str),
        extra: &[&str],
    ) -> CloudProc {
        Self::build(
            broker_port,
            state_dir,
            provider_url,
            (client_id, Some(store_url.to_string())),
            extra,
        )
    }

    fn build(
        broker_port: u16,
        state_dir: &Path,
        provider_url: &str,
        (client_id, store_url): (&str, Option<String>),
        extra: &[&str],
    ) -> CloudProc {
        let api_port = free_tcp_port();
        // Every test cloud authenticates its API with the test tokens.
        std::fs::create_dir_all(state_dir).expect("cloud state dir");
        let tokens = state_dir.join("tokens.toml");
        std::fs::write(&tokens, test_tokens_file()).expect("tokens file");
        let mut args = vec![
            "--port".into(),
            broker_port.to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--client-id".into(),
            client_id.into(),
        ];
        if let Some(url) = &store_url {
            args.extend(["--store-url".into(), url.clone()]);
        }
        args.extend([
            "serve".into(),
            "--api-listen".into(),
            format!("127.0.0.1:{api_port}"),
            "--provider-url".into(),
            provider_url.into(),
            "--report-deadline-secs".into(),
            "5".into(),
            "--republish-after-secs".into(),
            "2".into(),
            "--tick-ms".into(),
            "200".into(),
            "--tokens".into(),
            tokens.display().to_string(),
        ]);
        let args = args
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        let mut c = CloudProc {
            api: format!("http://127.0.0.1:{api_port}"),
            store_url,
            args,
            proc: None,
            log: None,
        };
        c.launch();
        c
    }

    /// [`CloudProc::start_with`], its log (standard error) written to `state_dir/cloud.log`.
    pub fn start_logged(
        broker_port: u16,
        state_dir: &Path,
        provider_url: &str,
        extra: &[&str],
    ) -> CloudProc {
        let mut c = Self::start_with(broker_port, state_dir, provider_url, extra);
        c.crash();
        c.log = Some(state_dir.join("cloud.log"));
        c.launch();
        c
    }

    /// What it logged so far ([`CloudProc::start_logged`] only).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(workspace_bin("platen-cloud"));
        cmd.args(&self.args)
            .env("RUST_LOG", "info,sled=warn,rumqttc=warn");
        let stderr = match &self.log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("cloud log"),
            ),
            None => Stdio::inherit(),
        };
        self.proc = Some(LineProc::spawn_with_stderr(cmd, "platen-cloud", stderr));
    }

    /// SIGKILL, then start again on the same state and ports.
    pub fn crash_and_restart(&mut self) {
        self.crash();
        self.launch();
    }

    /// SIGKILL; [`CloudProc::restart`] brings it back on the same state and ports.
    pub fn crash(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn restart(&mut self) {
        self.launch();
    }

    /// SIGTERM (a graceful stop); the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.proc.take()?.terminate()
    }
}

/// Run the `platen-cloud` CLI against `api`: (exit code, stdout, stderr).
pub fn cloud_cli(api: &str, args: &[&str]) -> (i32, String, String) {
    cloud_cli_as(api, "operator", args)
}

/// The actors the test clouds know a token for ([`test_token`]).
pub const TEST_ACTORS: &[&str] = &[
    "operator",
    "tenant:acme",
    "tenant:other",
    "reseller:r1",
    "reseller:r2",
];

/// The bearer token of a test actor (only test clouds know these).
pub fn test_token(actor: &str) -> String {
    format!("plt_test_{}", actor.replace(':', "_"))
}

/// The tokens file every [`CloudProc`] is started with: one token per [`TEST_ACTORS`].
pub fn test_tokens_file() -> String {
    TEST_ACTORS
        .iter()
        .map(|a| {
            format!(
                "[[token]]\nname = \"test {a}\"\nactor = \"{a}\"\nsha256 = \"{}\"\n",
                platen_cloud::http::auth::hash_token(&test_token(a))
            )
        })
        .collect()
}

/// [`cloud_cli`] with the token of `actor` in `PLATEN_TOKEN`.
pub fn cloud_cli_as(api: &str, actor: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(workspace_bin("platen-cloud"))
        .args(args)
        .arg("--api")
        .arg(api)
        .env("PLATEN_TOKEN", test_token(actor))
        .output()
        .expect("run platen-cloud");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A minimal HTTP JSON call for tests, as the operator: (status, body as JSON or Null).
/// One series of a cloud's `/metrics` (a line `<series> <value>`; 0 if absent).
pub async fn metric(api: &str, series: &str) -> u64 {
    let text = match reqwest::get(format!("{api}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub async fn http_json(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    http_json_as(method, url, body, Some("operator")).await
}

/// [`http_json`] with the bearer token of a test actor (`operator`, `tenant:ID`,
/// `reseller:ID`; see [`test_token`]), or none.
pub async fn http_json_as(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
    actor: Option<&str>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut req = client.request(method.parse().expect("method"), url);
    if let Some(a) = actor {
        req = req.bearer_auth(test_token(a));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// One printer entry of an agent config.
pub struct PrinterEntry {
    pub id: String,
    pub addr: SocketAddr,
    pub timeout_ms: u64,
    pub retries: u32,
}

impl PrinterEntry {
    pub fn new(id: &str, addr: SocketAddr) -> PrinterEntry {
        PrinterEntry {
            id: id.into(),
            addr,
            timeout_ms: 500,
            retries: 1,
        }
    }
}

/// An agent config text for tests.
pub fn agent_toml(
    agent_id: &str,
    broker_port: u16,
    state_dir: &Path,
    printers: &[PrinterEntry],
) -> String {
    let mut text = format!(
        "agent_id = \"{agent_id}\"\ntenant = \"acme\"\nstate_dir = \"{}\"\n\n[broker]\nhost = \"127.0.0.1\"\nport = {broker_port}\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n\n[apply]\nsettle_ms = 50\nretry_backoff_ms = 50\n",
        state_dir.display()
    );
    for p in printers {
        text.push_str(&format!(
            "\n[[printer]]\nid = \"{}\"\naddress = \"{}\"\nport = {}\ncommunity = \"private\"\ntimeout_ms = {}\nretries = {}\n",
            p.id,
            p.addr.ip(),
            p.addr.port(),
            p.timeout_ms,
            p.retries
        ));
    }
    text
}

/// The agent binary, running.
pub struct AgentProc {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl AgentProc {
    pub fn start(dir: &Path, config_text: &str) -> AgentProc {
        Self::start_with(dir, config_text, &[], &[])
    }

    /// Agent `gw-e2e` with one printer, `p1` at `printer`, state in `dir/state`.
    pub fn one_printer(dir: &Path, broker_port: u16, printer: SocketAddr) -> AgentProc {
        let p1 = PrinterEntry::new("p1", printer);
        let text = agent_toml("gw-e2e", broker_port, &dir.join("state"), &[p1]);
        Self::start(dir, &text)
    }

    /// Start with extra environment variables and extra `run` arguments.
    pub fn start_with(
        dir: &Path,
        config_text: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> AgentProc {
        let config = dir.join("agent.toml");
        std::fs::write(&config, config_text).expect("write agent.toml");
        // It holds credentials: the agent refuses a world-readable one.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
            .expect("chmod agent.toml");
        let state_dir = dir.join("state");
        let mut a = AgentProc {
            config,
            state_dir,
            log: dir.join("agent.log"),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        a.launch();
        a
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new(workspace_bin("platen-agent"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .env("RUST_LOG", "debug,async_snmp=off,sled=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The running agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Wait until the agent's log contains `needle`; fail with the log otherwise.
    pub fn wait_log(&self, needle: &str, within: Duration) {
        self.wait_log_after(0, needle, within);
    }

    /// The log's length now: a mark for [`AgentProc::wait_log_after`].
    pub fn log_mark(&self) -> usize {
        self.log().len()
    }

    /// Wait until the log written after `mark` contains `needle`.
    pub fn wait_log_after(&self, mark: usize, needle: &str, within: Duration) {
        let end = Instant::now() + within;
        while !self.log().get(mark..).unwrap_or("").contains(needle) {
            assert!(
                Instant::now() < end,
                "agent log never showed {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, "KILL");
        }
    }

    /// The exit code if the agent has exited (without waiting); -1 for a signal.
    pub fn try_exit_code(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status.code().unwrap_or(-1))
            }
            _ => None,
        }
    }

    /// Wait for the agent to exit on its own (a start that must fail); its exit code
    /// (-1 for a signal). Fails with the log if it keeps running.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let end = Instant::now() + within;
        loop {
            if let Some(code) = self.try_exit_code() {
                return code;
            }
            assert!(
                Instant::now() < end,
                "the agent kept running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        kill(&mut c, "TERM");
        c.wait().ok().and_then(|s| s.code())
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---- helpers shared by the end-to-end tests (cloud side) ----

use platen_cloud::model::ReceivedReport;
use platen_cloud::Cloud;
use platen_protocol::{Code, DesiredConfig, Id, SettingValue};
use std::collections::BTreeMap;

pub fn tenant() -> Id {
    "acme".parse().unwrap()
}

pub fn desired(printer: &str, version: u64, settings: &[(&str, SettingValue)]) -> DesiredConfig {
    DesiredConfig {
        printer_id: printer.parse().unwrap(),
        version,
        issued_at: chrono::Utc::now(),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        signature: None,
    }
}

pub fn t(s: &str) -> SettingValue {
    SettingValue::Text(s.into())
}

pub async fn start_cloud(port: u16, dir: &std::path::Path) -> Cloud {
    let cloud = Cloud::start("127.0.0.1", port, "platen-cloud-test", &dir.join("cloud")).unwrap();
    assert!(
        cloud.wait_connected(Duration::from_secs(10)).await,
        "cloud could not connect"
    );
    cloud
}

pub async fn wait_report(
    cloud: &Cloud,
    report_id: &str,
    within: Duration,
    agent: &AgentProc,
) -> ReceivedReport {
    let end = tokio::time::Instant::now() + within;
    loop {
        if let Some(r) = cloud.report(report_id) {
            return r;
        }
        if tokio::time::Instant::now() > end {
            panic!(
                "report {report_id} did not arrive within {within:?}\n--- agent log ---\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn code_of(r: &ReceivedReport, name: &str) -> Code {
    r.report
        .settings
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no setting {name}"))
        .code
}

/// A raw MQTT client that records what arrives on some filters (each distinct
/// payload once) and can publish.
pub struct Tap {
    client: rumqttc::AsyncClient,
    seen: Seen,
}

/// (topic, payload) pairs, in arrival order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

impl Tap {
    pub async fn start(port: u16, client_id: &str, filters: &[&str]) -> Tap {
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        // Large enough to send the oversized messages of the bad-input test.
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
        for f in filters {
            client
                .subscribe(*f, rumqttc::QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let seen: Seen = Default::default();
        let s = seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let mut subacks = 0;
        let wanted = filters.len();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks >= wanted {
                            if let Some(t) = ready_tx.take() {
                                let _ = t.send(());
                            }
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let mut g = s.lock().unwrap();
                        let item = (p.topic.clone(), p.payload.to_vec());
                        if !g.contains(&item) {
                            g.push(item);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("tap subscribed")
            .unwrap();
        Tap { client, seen }
    }

    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Every message decoded as `T` (messages that do not decode are skipped).
    pub fn decoded<T: platen_protocol::codec::Message>(&self) -> Vec<T> {
        self.payloads()
            .iter()
            .filter_map(|p| platen_protocol::decode::<T>(p).ok())
            .collect()
    }

    /// Wait until `pick` finds something in the decoded messages.
    pub async fn wait_for<T: platen_protocol::codec::Message, R>(
        &self,
        within: Duration,
        what: &str,
        log: impl Fn() -> String,
        pick: impl Fn(&[T]) -> Option<R>,
    ) -> R {
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(r) = pick(&self.decoded::<T>()) {
                return r;
            }
            if tokio::time::Instant::now() > end {
                panic!(
                    "{what} did not arrive within {within:?}\n--- log ---\n{}",
                    log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
}
