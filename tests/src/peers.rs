//! Peers that are not Platen: the Debian `mosquitto` broker (plain or TLS) and
//! net-snmp's `snmpd`, each on a free loopback port and stopped on drop; net-snmp's
//! command-line tools.

use super::*;
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
