//! A PostgreSQL server of the tests' own: Debian's `postgresql` package, a fresh
//! cluster in a temporary directory, password authentication, on a free loopback
//! port; stopped (and removed) on drop.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the cluster
//! belongs to the `postgres` system user (created by the Debian package) and its
//! programs run through `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The cluster's superuser and password (tests only).
pub const USER: &str = "platen";
pub const PASSWORD: &str = "pg-test-secret-7c1";

pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    as_postgres: bool,
    running: bool,
}

/// The newest installed server's program directory.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed: install the Debian package `postgresql` (scripts/setup does: apt-get install -y postgresql)"
        ),
    }
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

static SHARED: std::sync::OnceLock<std::sync::Mutex<Postgres>> = std::sync::OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(m) = SHARED.get() {
        if let Ok(mut pg) = m.lock() {
            pg.stop();
            let _ = std::fs::remove_dir_all(pg.dir());
        }
    }
}

/// One server for the whole test process (started on first use, stopped when the
/// process exits): the end-to-end suites under `PLATEN_E2E_STORE=postgres`.
pub fn shared() -> &'static std::sync::Mutex<Postgres> {
    SHARED.get_or_init(|| {
        // SAFETY: registers a plain function without arguments, run at exit.
        unsafe { libc::atexit(stop_shared) };
        std::sync::Mutex::new(Postgres::start())
    })
}

/// The store URL a test cloud should use: a fresh database of the shared server
/// when `PLATEN_E2E_STORE=postgres`, else none (sled in its state directory).
pub fn e2e_store_url(what: &str) -> Option<String> {
    match std::env::var("PLATEN_E2E_STORE").as_deref() {
        Ok("postgres") => {
            let pg = shared().lock().unwrap_or_else(|p| p.into_inner());
            Some(pg.fresh_db(what))
        }
        Ok("sled") | Ok("") | Err(_) => None,
        Ok(other) => panic!("PLATEN_E2E_STORE={other}: expected postgres or sled"),
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = server_bin();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("platen-pg")
            .tempdir()
            .expect("temp dir");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("password file");
        let data = dir.path().join("data");
        let mut pg = Postgres {
            bin,
            dir,
            port: crate::free_tcp_port(),
            as_postgres,
            running: false,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "cannot hand the test cluster to the `postgres` user (is the Debian package `postgresql` installed?)"
            );
        }
        let out = pg
            .cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_server();
        pg
    }

    fn cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        c.stdin(Stdio::null());
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start_server(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &opts, "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.running = true;
    }

    /// Stop the server (fast: open connections are closed).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    /// Start it again on the same port, with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Run SQL with psql as the superuser on `db`; panics with psql's error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-XAtq", "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A new, empty database; returns its URL (with the password).
    pub fn fresh_db(&self, what: &str) -> String {
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let name: String = format!("{what}_{n}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Wait until the server accepts connections.
    pub fn wait_ready(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
