//! Platen's own processes as the tests run them: the printer simulator, the stand-in
//! provider, `platen-cloud serve` (restartable on its state) with the test tokens and
//! its CLI, and the agent with a generated config.

use super::*;
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

    /// The agent's status file (`{state_dir}/status.json`, what `platen-agent status`
    /// reads), if written yet.
    pub fn status(&self) -> Option<serde_json::Value> {
        // The config's own state_dir (tests write it where they like).
        let cfg = std::fs::read_to_string(&self.config).ok()?;
        let dir = cfg
            .lines()
            .find_map(|l| l.trim().strip_prefix("state_dir"))
            .and_then(|rest| rest.split('"').nth(1))
            .map(PathBuf::from)
            .unwrap_or_else(|| self.state_dir.clone());
        let text = std::fs::read_to_string(dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Wait until the agent's status file says it is connected to the broker (state
    /// the agent exposes, not its log's wording; the file is refreshed every 2 s).
    pub fn wait_connected(&self, within: Duration) {
        let end = Instant::now() + within;
        while !self
            .status()
            .is_some_and(|s| s["broker_connected"] == true && s["pid"] == self.pid().unwrap_or(0))
        {
            assert!(
                Instant::now() < end,
                "the agent's status never said connected:\n{:?}\n{}",
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
