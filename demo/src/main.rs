//! `platen-demo`: the whole apply → verify → report loop on one machine, with no setup.
//!
//! Starts, on free loopback ports: an embedded MQTT broker (rumqttd; demo only —
//! production uses Mosquitto), the cloud stub, three simulated printers (p3 has a
//! read-only sysLocation) and an agent. The cloud publishes one desired config per
//! printer; the demo prints each report as it arrives and exits 0 once all three
//! are in (non-zero if they are not within 30 s).

use platen_agent::config::AgentConfig;
use platen_cloud::engine::EngineConfig;
use platen_cloud::model::Decision;
use platen_cloud::model::{Actor, MigrationDecision, MigrationState};
use platen_cloud::model::{Event, TimelineEntry};
use platen_cloud::ops::migrations::{MigrationRequest, Outcome};
use platen_cloud::server::{Server, ServerConfig};
use platen_cloud::{Cloud, ReportEvent};
use platen_printer_sim::{oid, serve, Faults, SimPrinter};
use platen_protocol::{ApplyReport, DesiredConfig, Id, ReportStatus, SettingValue, Signer};
use platen_provider::Provider;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18830)
}

/// Start rumqttd on a free port, in its own thread (its `start` blocks).
fn start_broker() -> Result<u16, String> {
    let port = free_port();
    let text = format!(
        r#"
id = 0
[router]
max_connections = 64
max_outgoing_packet_count = 512
max_segment_size = 10485760
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 256
dynamic_filters = true
"#
    );
    let config: rumqttd::Config =
        toml::from_str(&text).map_err(|e| format!("broker config: {e}"))?;
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(e) = broker.start() {
            eprintln!("embedded broker stopped: {e}");
        }
    });
    // Wait until it accepts connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("embedded broker did not listen on port {port}"))
}

fn agent_config(
    broker_port: u16,
    state: &Path,
    printers: &[(String, std::net::SocketAddr)],
    signer: &Signer,
) -> Result<AgentConfig, String> {
    let mut text = format!(
        "agent_id = \"gw-demo\"\ntenant = \"acme\"\nstate_dir = {:?}\n[broker]\nhost = \"127.0.0.1\"\nport = {broker_port}\n[apply]\nsettle_ms = 50\nretry_backoff_ms = 50\n[telemetry]\ninterval_secs = 1\nheartbeat_secs = 60\n[[signing.trusted_keys]]\nid = \"{}\"\npublic_key = \"{}\"\n",
        state.display().to_string(),
        signer.key_id(),
        signer.public_key_base64()
    );
    for (id, addr) in printers {
        text.push_str(&format!(
            "[[printer]]\nid = \"{id}\"\naddress = \"{}\"\nport = {}\ncommunity = \"private\"\ntimeout_ms = 500\nretries = 1\n",
            addr.ip(),
            addr.port()
        ));
    }
    AgentConfig::parse(&text, Path::new("<demo>")).map_err(|e| e.to_string())
}

fn show(v: &Option<SettingValue>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_report(r: &ApplyReport, latency: Duration) {
    println!();
    println!(
        "printer {}  version {}  {}  ({} ms from publish to report)",
        r.printer_id,
        r.config_version,
        r.status.as_str().to_uppercase(),
        latency.as_millis()
    );
    println!(
        "  {:<30} {:<26} {:<26} {:>4}  {:>8}  detail",
        "setting", "desired", "read back", "code", "attempts"
    );
    for s in &r.settings {
        println!(
            "  {:<30} {:<26} {:<26} {:>4}  {:>8}  {}",
            s.name,
            s.desired.to_string(),
            show(&s.read_back),
            s.code.as_u16(),
            s.attempts,
            s.detail
        );
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,rumqttd=off,async_snmp=off".into()),
        )
        .with_writer(std::io::stderr)
        // No colour escapes in files and the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<(), String> {
    let broker_port = start_broker()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;

    // Three printers; p3 refuses writes to sysLocation.
    let mut sims = Vec::new();
    for id in ["p1", "p2", "p3"] {
        let mut faults = Faults::default();
        if id == "p3" {
            faults.read_only.insert(oid("1.3.6.1.2.1.1.6.0"));
        }
        sims.push(
            serve(
                id,
                SimPrinter::standard(id, faults),
                "127.0.0.1:0",
                "private",
            )
            .await
            .map_err(|e| e.to_string())?,
        );
    }
    let printers: Vec<(String, std::net::SocketAddr)> =
        sims.iter().map(|s| (s.id.clone(), s.addr)).collect();

    // The clouds sign every desired config; the agent applies only signed ones.
    let signer = Arc::new(
        Signer::generate_pem()
            .and_then(|pem| Signer::from_pem("demo-key", &pem))
            .map_err(|e| e.to_string())?,
    );
    let cloud = Cloud::start(
        "127.0.0.1",
        broker_port,
        "platen-cloud-demo",
        &dir.path().join("cloud"),
    )
    .map_err(|e| e.to_string())?
    .with_signer(Some(signer.clone()));
    let mut events = cloud.subscribe_events();
    let (server, mut provider) =
        start_contract_cloud(broker_port, dir.path(), signer.clone()).await?;
    let agent = platen_agent::run::start(agent_config(
        broker_port,
        &dir.path().join("agent"),
        &printers,
        &signer,
    )?)
    .await
    .map_err(|e| e.to_string())?;
    if !cloud.wait_connected(Duration::from_secs(10)).await {
        return Err("cloud could not connect to the embedded broker".into());
    }

    println!(
        "Platen demo: embedded MQTT broker on 127.0.0.1:{broker_port}, cloud stub, agent gw-demo,"
    );
    println!(
        "three simulated printers: {}",
        printers
            .iter()
            .map(|(id, a)| format!("{id} at {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("(p3 is configured with a read-only sysLocation)");

    let tenant: Id = "acme"
        .parse()
        .map_err(|e: platen_protocol::IdError| e.to_string())?;
    let mut published = BTreeMap::new();
    for (id, _) in &printers {
        let mut settings = BTreeMap::new();
        settings.insert(
            "sysLocation".to_string(),
            SettingValue::Text(format!("Building A, floor 2, {id}")),
        );
        settings.insert(
            "sysContact".to_string(),
            SettingValue::Text("helpdesk@acme.example".into()),
        );
        settings.insert(
            "prtGeneralPrinterName".to_string(),
            SettingValue::Text(format!("ACME-{}", id.to_uppercase())),
        );
        settings.insert("prtInputDefaultIndex".to_string(), SettingValue::Integer(2));
        settings.insert(
            "prtConsoleDisable".to_string(),
            SettingValue::Text("disabled".into()),
        );
        let config = DesiredConfig {
            printer_id: id
                .parse()
                .map_err(|e: platen_protocol::IdError| e.to_string())?,
            version: 1,
            issued_at: chrono::Utc::now(),
            settings,
            signature: None,
        };
        cloud
            .publish_desired(&tenant, &config)
            .await
            .map_err(|e| e.to_string())?;
        published.insert(id.clone(), Instant::now());
    }
    println!(
        "cloud: published desired config version 1 (5 settings) for acme/p1, acme/p2, acme/p3"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut reports = Vec::new();
    while reports.len() < printers.len() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => {
                return Err(format!(
                    "only {} of {} reports arrived within 30 s",
                    reports.len(),
                    printers.len()
                ))
            }
            Ok(Ok(ReportEvent::New(r, _))) => {
                let latency = published
                    .get(r.report.printer_id.as_str())
                    .map(|t| t.elapsed())
                    .unwrap_or_default();
                print_report(&r.report, latency);
                reports.push(r.report.clone());
            }
            Ok(Ok(_)) | Ok(Err(_)) => {}
        }
    }
    let count = |s: ReportStatus| reports.iter().filter(|r| r.status == s).count();
    println!();
    println!(
        "summary: {} applied, {} partially_applied, {} not_applied; {} duplicate deliveries dropped by the cloud",
        count(ReportStatus::Applied),
        count(ReportStatus::PartiallyApplied),
        count(ReportStatus::NotApplied),
        cloud.counters.duplicates.load(std::sync::atomic::Ordering::Relaxed)
    );
    let p3 = sims
        .iter()
        .find(|s| s.id == "p3")
        .map(|s| s.printer.clone())
        .ok_or("no p3")?;
    contract_demo(&server, &mut provider, p3).await?;
    server.shutdown().await;
    provider.go_down().await;
    agent.shutdown().await;
    cloud.shutdown().await;
    Ok(())
}

fn money(minor: u64, currency: &str) -> String {
    format!("{}.{:02} {currency}", minor / 100, minor % 100)
}

/// One timeline entry as a line of the demo's output.
fn describe(e: &TimelineEntry) -> String {
    match &e.event {
        Event::ChangeRequested {
            change,
            plan,
            effective_at,
        } => {
            format!(
                "contract change requested: {} to plan {plan}, effective {effective_at}",
                match change {
                    platen_cloud::model::ChangeKind::Start => "start",
                    platen_cloud::model::ChangeKind::PlanChange { .. } => "plan change",
                    platen_cloud::model::ChangeKind::SettingsChange { .. } => "settings change",
                }
            )
        }
        Event::ConfigPublished {
            printer,
            version,
            settings,
        } => format!("config v{version} published to {printer} ({settings} settings)"),
        Event::ReportReceived {
            printer,
            version,
            status,
            codes,
            ..
        } => format!(
            "report from {printer} for v{version}: {status} [{}]",
            codes
                .iter()
                .map(|(k, c)| format!("{k} {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::ConfigConfirmed {
            printer, version, ..
        } => format!("config confirmed on {printer} (v{version}, every setting read back)"),
        Event::ConfigFault { reason, .. } => format!("FAULT in config distribution: {reason}"),
        Event::ProviderCall {
            call, ok, result, ..
        } => format!(
            "provider {call}: {}{result}",
            if *ok { "" } else { "failed: " }
        ),
        Event::ServiceConfirmed { printer, .. } => format!("provider service active for {printer}"),
        Event::ServiceFault { reason, .. } => format!("FAULT in service setting: {reason}"),
        Event::SetupCompleted { t0, t1, .. } => format!(
            "setup complete: T1 = {t1}, T0 = {t0}, unavailable {} s",
            (*t1 - *t0).num_seconds()
        ),
        Event::NoCompensation { reason } => format!("no compensation: {reason:?}"),
        Event::Compensation {
            ledger_key,
            currency,
            part,
        } => {
            let mut s = format!(
                "COMPENSATION {ledger_key}: period {} ({} s), unavailable {} s\n             fee credit {} = {}",
                part.period.label(), part.period_secs, part.unavailable_secs, money(part.fee_credit, currency), part.fee_arithmetic
            );
            if let Some(x) = &part.extra_pages {
                s.push_str(&format!(
                    "\n             +{} pages on the {} page cap = {}",
                    x.pages, x.period, x.arithmetic
                ));
            }
            if let Some(x) = &part.shipment {
                s.push_str(&format!(
                    "\n             shipment {} × {} = {}",
                    x.quantity, x.item, x.arithmetic
                ));
            }
            s
        }
        Event::CompensationReversed {
            ledger_key,
            reverses,
            currency,
            part,
        } => format!(
            "REVERSAL {ledger_key} of {reverses}: {} taken back ({})",
            money(part.fee_credit, currency),
            part.fee_arithmetic
        ),
        Event::ShipmentAccepted { item, quantity, .. } => {
            format!("provider accepted shipment {quantity} × {item}")
        }
        Event::MigrationExecuted {
            migration,
            rule,
            from,
            to,
        } => format!("migration {migration} executed ({from} → {to}, allowed by rule {rule})"),
    }
}

/// A contract on p3: its sysLocation is refused for a while and the service provider
/// is down at first, so setup completes late and the engine compensates.
/// The contract cloud (engine, scheduler, API, example catalog) and the service
/// provider, down at first. Started before the agent, so it sees every telemetry
/// message from the first.
async fn start_contract_cloud(
    broker_port: u16,
    dir: &Path,
    signer: Arc<Signer>,
) -> Result<(Server, Provider), String> {
    let mut provider = Provider::start("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| e.to_string())?;
    provider.go_down().await;
    let server = Server::start(ServerConfig {
        broker_host: "127.0.0.1".into(),
        broker_port,
        client_id: "platen-cloud-contracts-demo".into(),
        share_group: None,
        broker_auth: Default::default(),
        signer: Some(signer),
        registry: None,
        tokens_file: None,
        state_dir: dir.join("contracts"),
        database: None,
        api_listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        engine: EngineConfig {
            tick: Duration::from_millis(200),
            report_deadline: Duration::from_secs(10),
            republish_after: Duration::from_secs(2),
            provider_url: format!("http://{}", provider.addr),
            ..Default::default()
        },
        webhooks: Default::default(),
        stale_after: platen_cloud::fleet::stale::DEFAULT_STALE_AFTER,
        catalog: Some(
            platen_cloud::plans::catalog::Catalog::parse(CATALOG)
                .map_err(|e| format!("example catalog: {e}"))?,
        ),
        api_limits: Default::default(),
        policy: Default::default(),
        ingest_limits: Default::default(),
        telemetry_retention: platen_cloud::server::DEFAULT_TELEMETRY_RETENTION,
        history_retention: platen_cloud::server::DEFAULT_HISTORY_RETENTION,
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok((server, provider))
}

async fn contract_demo(
    server: &Server,
    provider: &mut Provider,
    p3: SimPrinter,
) -> Result<(), String> {
    if !server.cloud.wait_connected(Duration::from_secs(10)).await {
        return Err("contract engine could not connect".into());
    }
    let api = |e: platen_cloud::ops::OpError| e.to_string();
    let ops = &server.ops;
    let json = |v: serde_json::Value| v;
    ops.create_reseller(
        serde_json::from_value(json(
            serde_json::json!({"id": "r1", "name": "PrintPartner GmbH"}),
        ))
        .map_err(|e| e.to_string())?,
    )
    .map_err(api)?;
    ops.create_tenant(
        serde_json::from_value(json(
            serde_json::json!({"id": "acme", "name": "ACME Ltd", "reseller": "r1"}),
        ))
        .map_err(|e| e.to_string())?,
    )
    .map_err(api)?;
    // The contract took effect six hours ago; its setup is only requested now.
    let t0 = chrono::Utc::now() - chrono::Duration::hours(6);
    ops.create_contract(
        serde_json::from_value(json(serde_json::json!({
            "id": "acme-2026-001", "tenant": "acme", "printers": ["p3"], "plan": "mono-1000",
            "effective_at": t0, "time_zone": "Europe/Berlin", "currency": "EUR",
            "settings": {"sysLocation": "Print room, 3rd floor", "sysContact": "billing@acme.example"}
        })))
        .map_err(|e| e.to_string())?,
    )
    .map_err(api)?;
    println!();
    println!(
        "Contract demo: acme-2026-001, plan mono-1000 (49.00 EUR/month, 1000 pages), printer p3,"
    );
    println!("effective 6 h ago. p3 still refuses sysLocation; the service provider is down.");
    let start = Instant::now();
    let mut shown = 0;
    let mut cleared = false;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let tl = ops.timeline("acme-2026-001").map_err(api)?;
        for e in &tl[shown..] {
            println!(
                "  +{:>5.1}s  {}",
                start.elapsed().as_secs_f64(),
                describe(e)
            );
        }
        shown = tl.len();
        if !cleared && start.elapsed() > Duration::from_secs(2) {
            p3.set_read_only(oid("1.3.6.1.2.1.1.6.0"), false);
            provider.come_up().await.map_err(|e| e.to_string())?;
            println!(
                "  +{:>5.1}s  (faults cleared: p3 accepts sysLocation, provider is back)",
                start.elapsed().as_secs_f64()
            );
            cleared = true;
        }
        let status = ops.contract_status("acme-2026-001").map_err(api)?;
        if status.changes.first().is_some_and(|c| c.state == "settled") {
            let cap = status.page_caps.last();
            println!();
            println!(
                "ledger: {} credited; page cap {}: {}",
                money(status.credits_total, &status.contract.currency),
                cap.map(|c| c.period.clone()).unwrap_or_default(),
                cap.map(|c| format!("{} + {} = {} pages", c.base, c.extra, c.total))
                    .unwrap_or_default()
            );
            break;
        }
        if Instant::now() > deadline {
            return Err("the contract was not settled within 40 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    migration_demo(server, &p3).await
}

/// The example catalog (packaging/catalog.example.toml): plans and migration rules.
const CATALOG: &str = include_str!("../../packaging/catalog.example.toml");

fn describe_decision(m: &MigrationDecision) -> String {
    let u = &m.usage;
    let verdict = match &m.verdict.decision {
        Decision::Refuse { code, message } => format!("REFUSED ({code}): {message}"),
        Decision::Allow { timing } => format!(
            "ALLOWED, {timing}, effective {}",
            m.effective_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        ),
    };
    format!(
        "{} → {}: {verdict}\n    deciding rule: {} (catalog line {})\n    usage it saw: {} pages in {} (telemetry {}), {} days left, supplies {}",
        m.from_plan,
        m.to_plan,
        m.verdict.rule,
        m.verdict.rule_line,
        u.used.map(|n| n.to_string()).unwrap_or_else(|| "no".into()),
        m.period,
        u.telemetry,
        u.days_left,
        u.supplies
    )
}

/// p3 prints 600 pages; the agent's telemetry carries the counter to the cloud. The
/// reseller's downgrade to mono-500 is refused (600 > 500), the tenant's upgrade to
/// color-2000 is allowed at once and flows through config publication and read-back.
async fn migration_demo(server: &Server, p3: &SimPrinter) -> Result<(), String> {
    let ops = &server.ops;
    let api = |e: platen_cloud::ops::OpError| e.to_string();
    let before = p3.page_counter();
    p3.set_page_counter(before + 600);
    println!();
    println!("Migration demo: rules from packaging/catalog.example.toml; p3 prints 600 pages");
    println!("(page counter {before} → {}).", before + 600);
    let contract = ops.contract("acme-2026-001").map_err(api)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (seen, _) = server
            .migrations
            .usage_of(&contract, chrono::Utc::now())
            .map_err(api)?;
        if seen.used >= Some(600) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the cloud saw {:?} pages after 20 s", seen.used));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ask = |who: &str, plan: &str| -> Result<Outcome, String> {
        server
            .migrations
            .migrate(
                &who.parse::<Actor>()?,
                MigrationRequest {
                    tenant: "acme"
                        .parse()
                        .map_err(|e: platen_protocol::IdError| e.to_string())?,
                    contract: None,
                    plan: plan
                        .parse()
                        .map_err(|e: platen_protocol::IdError| e.to_string())?,
                    dry_run: false,
                },
            )
            .map_err(api)
    };
    println!();
    println!("reseller:r1 asks to move acme to mono-500:");
    match ask("reseller:r1", "mono-500")? {
        Outcome::Refused(m) => println!("  {}", describe_decision(&m.decision)),
        other => return Err(format!("expected a refusal, got {other:?}")),
    }
    println!();
    println!("tenant:acme asks to move to color-2000:");
    let m = match ask("tenant:acme", "color-2000")? {
        Outcome::Accepted(m) => m,
        other => return Err(format!("expected acceptance, got {other:?}")),
    };
    println!("  {}", describe_decision(&m.decision));
    let MigrationState::Executed { change_id, .. } = &m.state else {
        return Err(format!("an immediate migration is executed at once: {m:?}"));
    };
    let start = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut shown = 0;
    loop {
        let tl: Vec<TimelineEntry> = ops
            .timeline("acme-2026-001")
            .map_err(api)?
            .into_iter()
            .filter(|e| &e.change_id == change_id)
            .collect();
        for e in &tl[shown..] {
            println!(
                "  +{:>5.1}s  {}",
                start.elapsed().as_secs_f64(),
                describe(e)
            );
        }
        shown = tl.len();
        let status = ops.contract_status("acme-2026-001").map_err(api)?;
        if status.changes.last().is_some_and(|c| c.state == "settled") {
            println!();
            println!(
                "contract acme-2026-001 is now on plan {} ({}); p3 prtConsoleDisable = {}",
                status.plan.id,
                status.plan.name,
                status
                    .settings
                    .get("prtConsoleDisable")
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the migration's change was not settled within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
