//! Hostile input against real processes (Mosquitto, the agent binary, the simulator,
//! `platen-provider`, `platen-cloud serve`): each test reproduces one attack and
//! asserts that it can neither move money, cross tenants nor starve the cloud.
//! The guide's Security page lists them with their outcomes.

use platen_e2e::*;
use platen_protocol::{codec, ApplyReport, Code, ReportStatus, SettingResult, Signer};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SYS_LOCATION: &str = "1.3.6.1.2.1.1.6.0";

async fn post(api: &str, path: &str, body: Value) -> (u16, Value) {
    http_json("POST", &format!("{api}{path}"), Some(body)).await
}

async fn get(api: &str, path: &str) -> Value {
    let (s, v) = http_json("GET", &format!("{api}{path}"), None).await;
    assert_eq!(s, 200, "GET {path}: {v}");
    v
}

/// Tenants acme and globex, and a plan whose template sets two settings.
async fn setup(api: &str, plan_extra: Value) {
    for t in ["acme", "globex"] {
        let (s, v) = post(api, "/v1/tenants", json!({"id": t, "name": t})).await;
        assert_eq!(s, 201, "{v}");
    }
    let mut plan = json!({
        "id": "flat", "name": "Flat", "service": {"kind": "basic", "monthly_fee": 2_678_400},
        "config_template": {"sysContact": "ops@example.test"}
    });
    if let (Some(p), Some(extra)) = (plan.as_object_mut(), plan_extra.as_object()) {
        p.extend(extra.clone());
    }
    let (s, v) = post(api, "/v1/plans", plan).await;
    assert_eq!(s, 201, "{v}");
}

async fn contract(api: &str, id: &str, tenant: &str, printer: &str, location: &str) -> u16 {
    let (s, v) = post(
        api,
        "/v1/contracts",
        json!({
            "id": id, "tenant": tenant, "printers": [printer], "plan": "flat",
            "effective_at": chrono::Utc::now() - chrono::Duration::hours(1),
            "time_zone": "UTC", "currency": "EUR", "settings": {"sysLocation": location}
        }),
    )
    .await;
    assert!(s == 201 || s == 409, "{v}");
    s
}

/// Wait until change `n` (0-based) of `contract` satisfies `pred`.
async fn wait_change(
    api: &str,
    contract: &str,
    n: usize,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (s, v) = http_json("GET", &format!("{api}/v1/contracts/{contract}"), None).await;
        if s == 200 && pred(&v["changes"][n]) {
            return v;
        }
        if tokio::time::Instant::now() > end {
            let tl = get(api, &format!("/v1/contracts/{contract}/timeline")).await;
            panic!("{contract}: change {n} never {what}\n{v:#}\n{tl:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A broker, the provider and `platen-cloud serve` (with `cloud_args`) on free ports;
/// [`World::with_agent`] adds a simulated printer p1 and an agent for it.
struct World {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    _provider: ProviderProc,
    cloud: CloudProc,
    sim: Option<Sim>,
    agent: Option<AgentProc>,
}

impl World {
    fn start(cloud_args: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let broker = Mosquitto::start(false);
        let provider = ProviderProc::start();
        let cloud = CloudProc::start_with(
            broker.port,
            &dir.path().join("cloud"),
            &provider.url,
            cloud_args,
        );
        World {
            dir,
            broker,
            _provider: provider,
            cloud,
            sim: None,
            agent: None,
        }
    }

    fn with_agent(mut self) -> World {
        let sim = Sim::start(&["p1"]);
        self.agent = Some(AgentProc::one_printer(
            self.dir.path(),
            self.broker.port,
            sim.addr("p1"),
        ));
        self.sim = Some(sim);
        self
    }

    fn location(&self) -> String {
        let sim = self.sim.as_ref().expect("a world with an agent");
        snmpget("private", &sim.addr("p1").to_string(), SYS_LOCATION).unwrap()
    }
}

fn settled(c: &Value) -> bool {
    c["state"] == "settled"
}

fn mosquitto_pub(port: u16, args: &[&str]) {
    let out = Command::new(system_bin("mosquitto_pub", "mosquitto-clients"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("mosquitto_pub");
    assert!(out.status.success(), "{out:?}");
}

/// A report as an agent writes it, for any version.
fn report(agent: &str, printer: &str, version: u64, status: ReportStatus) -> ApplyReport {
    let now = chrono::Utc::now();
    let (agent, printer) = (agent.parse().unwrap(), printer.parse().unwrap());
    ApplyReport {
        report_id: ApplyReport::make_id(&agent, &printer, version),
        agent_id: agent,
        printer_id: printer,
        config_version: version,
        status,
        settings: vec![SettingResult {
            name: "sysLocation".into(),
            desired: t("forged"),
            read_back: None,
            code: Code::NotWritable,
            detail: "forged".into(),
            attempts: 1,
            verified_at: None,
        }],
        received_at: now,
        completed_at: now,
        refused: None,
    }
}

/// Defect 1: a config the cloud never published (version u64::MAX, unsigned, on the
/// printer's desired topic) is refused by the agent; its refusal report is refused by
/// the cloud. A gateway flooding its own report topic with huge versions is refused
/// too. The next genuine change applies at once, with no fault and no credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_versions_never_published_neither_poison_nor_pay() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1"]);
    let provider = ProviderProc::start();
    let pem = Signer::generate_pem().unwrap();
    let signer = Signer::from_pem("cloud-a", &pem).unwrap();
    let key = dir.path().join("signing.key");
    std::fs::write(&key, &pem).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cloud = CloudProc::start_with(
        broker.port,
        &dir.path().join("cloud"),
        &provider.url,
        &[
            "--signing-key",
            &key.display().to_string(),
            "--signing-key-id",
            "cloud-a",
        ],
    );
    let mut cfg = agent_toml(
        "gw-a",
        broker.port,
        &dir.path().join("state"),
        &[PrinterEntry::new("p1", sim.addr("p1"))],
    );
    cfg.push_str(&format!(
        "\n[[signing.trusted_keys]]\nid = \"cloud-a\"\npublic_key = \"{}\"\n",
        signer.public_key_base64()
    ));
    let agent = AgentProc::start(dir.path(), &cfg);
    let api = &cloud.api;
    setup(api, json!({})).await;

    // (a) An unsigned config with the largest version, published by anyone who can.
    let forged = desired("p1", u64::MAX, &[("sysLocation", t("pwned"))]);
    let topic = platen_protocol::Topic::desired(&tenant(), &forged.printer_id).to_string();
    let payload = String::from_utf8(codec::encode(&forged)).unwrap();
    mosquitto_pub(
        broker.port,
        &["-q", "1", "-r", "-t", &topic, "-m", &payload],
    );
    agent.wait_log("refused", Duration::from_secs(10));
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(api, "platen_cloud_reports_unpublished_total").await < 1 {
        assert!(
            tokio::time::Instant::now() < end,
            "the refusal report never reached the cloud"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (b) The gateway floods its own report topic with versions nobody published.
    let flood = dir.path().join("flood.txt");
    let mut f = std::fs::File::create(&flood).unwrap();
    for i in 0..3000u64 {
        let r = report("gw-a", "p1", u64::MAX - i, ReportStatus::NotApplied);
        f.write_all(&codec::encode(&r)).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);
    let report_topic =
        platen_protocol::Topic::report(&tenant(), &"p1".parse().unwrap()).to_string();
    let out = Command::new(system_bin("mosquitto_pub", "mosquitto-clients"))
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", &report_topic, "-l", "-i", "flooder"])
        .stdin(std::fs::File::open(&flood).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // A genuine contract effective an hour ago: applied at once, no fault, no credit.
    assert_eq!(contract(api, "c1", "acme", "p1", "Hall 1").await, 201);
    let v = wait_change(api, "c1", 0, "settled", settled).await;
    let c = &v["changes"][0];
    assert!(c["config_fault"].is_null(), "{c:#}");
    assert_eq!(v["credits_total"], 0, "{v:#}");
    let ledger = get(api, "/v1/ledger?contract=c1").await;
    assert_eq!(ledger.as_array().unwrap().len(), 0, "{ledger:#}");
    let got = snmpget("private", &sim.addr("p1").to_string(), SYS_LOCATION).unwrap();
    assert!(got.contains("\"Hall 1\""), "{got}");
    // Every flooded report was refused (never published) and none reached the
    // timeline.
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let refused = metric(api, "platen_cloud_reports_unpublished_total").await;
        if refused >= 3001 {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "only {refused} refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tl = get(api, "/v1/contracts/c1/timeline").await;
    let entries = tl.as_array().unwrap();
    assert!(entries.len() < 20, "{} timeline entries", entries.len());
    assert!(
        entries.iter().all(|e| e["report_id"]
            .as_str()
            .is_none_or(|id| !id.contains(&u64::MAX.to_string()[..10]))),
        "{tl:#}"
    );
}

/// Defect 2: contract `k` (acme) and `k.globex` (globex): acme sees only its own
/// contract, and a change of `k` carries `k`'s settings to `k`'s printer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_ids_that_extend_each_other_neither_leak_nor_cross() {
    let w = World::start(&[]).with_agent();
    let api = &w.cloud.api;
    setup(api, json!({})).await;
    assert_eq!(contract(api, "k", "acme", "p1", "Acme hall").await, 201);
    assert_eq!(
        contract(api, "k.globex", "globex", "p2", "Globex office").await,
        201
    );
    wait_change(api, "k", 0, "settled", settled).await;
    let (s, v) = post(
        api,
        "/v1/contracts/k/changes",
        json!({"settings": {"sysName": "acme-prn"}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["id"], "k.2");
    let v = wait_change(api, "k", 1, "settled", settled).await;
    // What acme's tenant sees of `k`: its own two changes and settings only.
    let (s, mine) = http_json_as(
        "GET",
        &format!("{api}/v1/contracts/k"),
        None,
        Some("tenant:acme"),
    )
    .await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = mine["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["k.1", "k.2"], "{v:#}");
    assert_eq!(mine["settings"]["sysLocation"], "Acme hall");
    let (_, tl) = http_json_as(
        "GET",
        &format!("{api}/v1/contracts/k/timeline"),
        None,
        Some("tenant:acme"),
    )
    .await;
    for e in tl.as_array().unwrap() {
        let id = e["change_id"].as_str().unwrap();
        assert!(id == "k.1" || id == "k.2", "foreign entry {e}");
    }
    let (s, _) = http_json_as(
        "GET",
        &format!("{api}/v1/contracts/k.globex"),
        None,
        Some("tenant:acme"),
    )
    .await;
    assert_eq!(s, 404);
    // k's printer holds k's settings, never globex's.
    let got = w.location();
    assert!(got.contains("\"Acme hall\""), "{got}");
    let globex = get(api, "/v1/contracts/k.globex").await;
    assert_eq!(globex["changes"].as_array().unwrap().len(), 1, "{globex:#}");
}

/// Raise this process's open-file limit to its hard limit (the attack needs more
/// sockets than the default 1,024).
fn raise_nofile() -> u64 {
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur
    }
}

fn connect_from(local: &str, to: SocketAddr) -> Option<TcpStream> {
    // std cannot bind a client socket to a source address: libc.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return None;
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from(local.parse::<std::net::Ipv4Addr>().ok()?).to_be();
        if libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            libc::close(fd);
            return None;
        }
        let SocketAddr::V4(v4) = to else { return None };
        let mut dst: libc::sockaddr_in = std::mem::zeroed();
        dst.sin_family = libc::AF_INET as u16;
        dst.sin_port = v4.port().to_be();
        dst.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
        if libc::connect(
            fd,
            &dst as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            libc::close(fd);
            return None;
        }
        use std::os::fd::FromRawFd;
        Some(TcpStream::from_raw_fd(fd))
    }
}

/// Defect 3: 1,100 silent and half-sent connections from one address neither hold
/// the API nor stop another caller; the server closes them after its header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_sent_connections_do_not_starve_the_api() {
    let nofile = raise_nofile();
    assert!(nofile >= 2500, "open-file limit {nofile}");
    let w = World::start(&[
        "--api-header-timeout-secs",
        "2",
        "--api-request-timeout-secs",
        "2",
        "--api-max-connections-per-ip",
        "64",
    ]);
    let cloud = &w.cloud;
    let api: SocketAddr = cloud.api.trim_start_matches("http://").parse().unwrap();
    let held: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        for i in 0..1100 {
            if let Some(mut s) = connect_from("127.0.0.2", api) {
                match i % 3 {
                    0 => {}
                    1 => {
                        let _ = s.write_all(b"GET /v1/tenants HTTP/1.1\r\nHost: x\r\n");
                    }
                    _ => {
                        // Authenticated, so the server goes on to read the body.
                        let head = format!(
                            "POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{{\"id\":",
                            test_token("operator")
                        );
                        let _ = s.write_all(head.as_bytes());
                    }
                }
                v.push(s);
            }
        }
        v
    })
    .await
    .unwrap();
    assert!(held.len() >= 1000, "{} connections opened", held.len());
    // Another caller is served while they are held.
    let (s, v) = http_json("GET", &format!("{}/v1/tenants", cloud.api), None).await;
    assert_eq!(s, 200, "{v}");
    // Every held connection is closed by the server: at once beyond the per-address
    // cap, after the header or request timeout otherwise (a half-sent body gets 408).
    let (closed, got_408) = tokio::task::spawn_blocking(move || {
        let (mut closed, mut got_408) = (0, 0);
        for mut s in held {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = Vec::new();
            match s.read_to_end(&mut buf) {
                Ok(_) => {
                    closed += 1;
                    if buf.starts_with(b"HTTP/1.1 408") {
                        got_408 += 1;
                    }
                }
                // Closed with what it sent still unread: a reset.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
                Err(_) => {}
            }
        }
        (closed, got_408)
    })
    .await
    .unwrap();
    assert!(closed >= 1000, "{closed} closed by the server");
    assert!(got_408 >= 1, "no half-sent request was answered 408");
    let (s, _) = http_json("GET", &format!("{}/v1/tenants", cloud.api), None).await;
    assert_eq!(s, 200);
}

/// Defects 4 and 8: a contract backdated to 2000 or to year −262143 is refused (422,
/// nothing stored); a printer already under contract cannot join another (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backdated_contracts_and_shared_printers_are_refused() {
    let w = World::start(&[]);
    let api = &w.cloud.api;
    setup(api, json!({})).await;
    for at in [
        "2000-01-01T00:00:00Z",
        "-262143-01-01T00:00:00Z",
        "+262142-01-01T00:00:00Z",
    ] {
        let (s, v) = post(
            api,
            "/v1/contracts",
            json!({"id": "old", "tenant": "acme", "printers": ["p1"], "plan": "flat",
                   "effective_at": at, "time_zone": "UTC", "currency": "EUR"}),
        )
        .await;
        assert!(s == 422 || s == 400, "{at}: {s} {v}");
        if s == 422 {
            assert_eq!(v["error"]["code"], "effective_at_out_of_range", "{v}");
        }
    }
    let (s, _) = http_json("GET", &format!("{api}/v1/contracts/old"), None).await;
    assert_eq!(s, 404);
    assert_eq!(contract(api, "c1", "acme", "p1", "A").await, 201);
    let (s, v) = post(
        api,
        "/v1/contracts",
        json!({"id": "c2", "tenant": "acme", "printers": ["p1"], "plan": "flat",
               "time_zone": "UTC", "currency": "EUR"}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("printer_under_contract")),
        "{v}"
    );
    let (s, v) = post(
        api,
        "/v1/contracts/c1/changes",
        json!({"settings": {"sysName": "x"}, "effective_at": "2000-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("effective_at_out_of_range")),
        "{v}"
    );
}

/// Defect 5: the tenant's gateway is down when a change is published; the missed
/// deadline is a customer-side fault with the agent's health as evidence, and the
/// plan (default) does not compensate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_by_its_customer_earns_no_compensation() {
    let mut w = World::start(&[]).with_agent();
    let api = &w.cloud.api.clone();
    let agent = w.agent.as_mut().unwrap();
    setup(api, json!({})).await;
    assert_eq!(contract(api, "c1", "acme", "p1", "A").await, 201);
    wait_change(api, "c1", 0, "settled", settled).await;
    // The customer stops its gateway (the broker publishes its last will: down).
    agent.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (s, v) = post(
        api,
        "/v1/contracts/c1/changes",
        json!({"settings": {"sysName": "while-down"}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let v = wait_change(api, "c1", 1, "faulted", |c| !c["config_fault"].is_null()).await;
    let cause = &v["changes"][1]["config_fault_cause"];
    assert_eq!(cause["side"], "customer", "{v:#}");
    assert!(
        cause["evidence"]
            .as_str()
            .unwrap()
            .contains("gw-e2e was down since"),
        "{cause}"
    );
    // Back on: applied, settled, and nothing paid.
    agent.restart();
    let v = wait_change(api, "c1", 1, "settled", settled).await;
    assert_eq!(v["credits_total"], 0, "{v:#}");
    assert_eq!(
        get(api, "/v1/ledger?contract=c1")
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let tl = get(api, "/v1/contracts/c1/timeline").await;
    assert!(
        tl.as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "no_compensation" && e["reason"] == "customer_side"),
        "{tl:#}"
    );
}

/// Defect 6: ids with CR/LF in a path are refused (400) and nothing the attacker
/// sends (path, MQTT topic) starts a line of its own in the cloud's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_never_forge_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let provider = ProviderProc::start();
    let cloud = CloudProc::start_logged(broker.port, &dir.path().join("cloud"), &provider.url, &[]);
    let api = &cloud.api;
    for path in [
        "/v1/contracts/x%0aFORGED%20admin%20logged%20in",
        "/v1/contracts/x%0d%0aFORGED",
        "/v1/contracts/x%00y/timeline",
        "/v1/migrations/m%0aFORGED",
    ] {
        let (s, v) = http_json("GET", &format!("{api}{path}"), None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_id")),
            "{path}: {v}"
        );
    }
    // A report whose field name carries a newline (the broker itself refuses
    // control characters in topics): refused, its error logged escaped.
    mosquitto_pub(
        broker.port,
        &[
            "-q",
            "1",
            "-t",
            "platen/v1/acme/p1/config/report",
            "-m",
            "{\"x\\nFORGED field\":1}",
        ],
    );
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cloud.log().contains("FORGED field") {
        assert!(
            tokio::time::Instant::now() < end,
            "refusal not logged:\n{}",
            cloud.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = cloud.log();
    assert!(log.contains("FORGED"), "{log}");
    for line in log.lines() {
        assert!(!line.starts_with("FORGED"), "forged line: {line:?}");
    }
}

/// Defect 7: a token removed in an edit that also breaks the file stops working;
/// a deleted file refuses every token; health says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_or_missing_tokens_file_never_keeps_a_revoked_token() {
    let w = World::start(&[]);
    let state = w.dir.path().join("cloud");
    let api = &w.cloud.api;
    let tokens = state.join("tokens.toml");
    let plans = format!("{api}/v1/plans");
    let as_ = |actor: &'static str| {
        let url = plans.clone();
        async move { http_json_as("GET", &url, None, Some(actor)).await.0 }
    };
    assert_eq!(as_("tenant:acme").await, 200);
    // Remove acme's token and make a typo elsewhere in the same edit.
    let text = std::fs::read_to_string(&tokens).unwrap();
    let acme_hash = platen_cloud::http::auth::hash_token(&test_token("tenant:acme"));
    let kept: String = text
        .split("[[token]]")
        .filter(|b| !b.trim().is_empty() && !b.contains(&acme_hash))
        .map(|b| format!("[[token]]{b}"))
        .collect();
    std::fs::write(
        &tokens,
        format!("{kept}[[token]]\nname = \"typo\nactor = \"operator\"\n"),
    )
    .unwrap();
    assert_eq!(as_("tenant:acme").await, 401, "revoked token still works");
    assert_eq!(
        as_("operator").await,
        200,
        "a token still in the file keeps working"
    );
    let health = reqwest::get(format!("{api}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let text = health.text().await.unwrap();
    assert!(text.contains("kept 4 of 5 tokens"), "{text}");
    std::fs::remove_file(&tokens).unwrap();
    assert_eq!(
        as_("operator").await,
        401,
        "a deleted tokens file keeps tokens alive"
    );
    let health = reqwest::get(format!("{api}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    assert!(health.text().await.unwrap().contains("cannot be read"));
    std::fs::write(&tokens, test_tokens_file()).unwrap();
    assert_eq!(as_("operator").await, 200);
    let health = reqwest::get(format!("{api}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// Defect 9: one gateway floods 50,000 telemetry messages; they are refused beyond
/// its printer's rate (counted), the broker drops nothing for the cloud, and another
/// gateway's report in that window arrives and settles its change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_gateway_cannot_make_another_gateways_report_be_lost() {
    let dir = tempfile::tempdir().unwrap();
    // The packaged broker's queue limits for the cloud's session.
    let packaged = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/mosquitto/platen.conf"),
    )
    .unwrap();
    let limits: String = packaged
        .lines()
        .filter(|l| {
            l.starts_with("max_queued_messages")
                || l.starts_with("max_inflight_messages")
                || l.starts_with("max_queued_bytes")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(limits.contains("max_queued_messages"), "{packaged}");
    let port = free_tcp_port();
    let broker = Mosquitto::start_conf(
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n{limits}log_dest stderr\n"),
        port,
    );
    let sim = Sim::start(&["p1"]);
    let provider = ProviderProc::start();
    let cloud = CloudProc::start(broker.port, &dir.path().join("cloud"), &provider.url);
    let _agent = AgentProc::one_printer(dir.path(), broker.port, sim.addr("p1"));
    let api = &cloud.api;
    setup(api, json!({})).await;
    let flood = dir.path().join("flood.txt");
    let line = format!(
        "{{\"protocol\":\"1.0\",\"message_id\":\"gw-x:p2:t1\",\"agent_id\":\"gw-x\",\"printer_id\":\"p2\",\"seq\":1,\"sent_at\":\"{}\",\"reasons\":[],\"reachable\":true,\"events\":[]}}\n",
        chrono::Utc::now().to_rfc3339()
    );
    std::fs::write(&flood, line.repeat(50_000)).unwrap();
    let topic = platen_protocol::Topic::telemetry(&tenant(), &"p2".parse().unwrap()).to_string();
    let flooder = std::process::Command::new(system_bin("mosquitto_pub", "mosquitto-clients"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            &topic,
            "-l",
            "-i",
            "flooder",
        ])
        .stdin(std::fs::File::open(&flood).unwrap())
        .spawn()
        .unwrap();
    // Meanwhile the other gateway's printer gets a contract.
    assert_eq!(contract(api, "c1", "acme", "p1", "Hall 9").await, 201);
    let v = wait_change(api, "c1", 0, "settled", settled).await;
    assert!(v["changes"][0]["config_fault"].is_null(), "{v:#}");
    let out = flooder.wait_with_output().unwrap();
    assert!(out.status.success());
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let limited = metric(
            api,
            "platen_cloud_messages_rate_limited_total{kind=\"telemetry\"}",
        )
        .await;
        if limited >= 49_000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "only {limited} rate-limited"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !broker.log().contains("Outgoing messages are being dropped"),
        "{}",
        broker.log()
    );
}
