//! The agent's broker connection over TLS, against a real Mosquitto with certificates
//! made by the test: mutual TLS works end to end; a client certificate from another
//! CA, a broker the agent does not trust, and a readable private key all fail closed.

use platen_e2e::pki::{Ca, Issued};
use platen_e2e::*;
use platen_protocol::{Code, ReportStatus};
use std::path::Path;
use std::time::Duration;

struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
    rogue: Ca,
    broker: Mosquitto,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    // Mosquitto drops root for its own user and must read its certificate files.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = Ca::new(dir.path(), "platen");
    let rogue = Ca::new(dir.path(), "rogue");
    let server = ca.server(dir.path(), "broker");
    let broker = Mosquitto::start_tls(TlsListener {
        ca_file: ca.cert_file.clone(),
        cert_file: server.cert_file,
        key_file: server.key_file,
        require_certificate: true,
    });
    Setup {
        dir,
        ca,
        rogue,
        broker,
    }
}

/// An agent config that connects to the TLS listener with the given files.
fn tls_agent_toml(s: &Setup, agent: &str, sim: &Sim, trust: &Path, client: &Issued) -> String {
    let state = s.dir.path().join(format!("{agent}-state"));
    agent_toml(
        agent,
        s.broker.tls_port.unwrap(),
        &state,
        &[PrinterEntry::new("p1", sim.addr("p1"))],
    )
    .replace(
        "\n[apply]",
        &format!(
            "\n[broker.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[apply]",
            trust.display(),
            client.cert_file.display(),
            client.key_file.display()
        ),
    )
}

fn agent_dir(s: &Setup, name: &str) -> std::path::PathBuf {
    let d = s.dir.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_applies_config_over_mutual_tls() {
    let s = setup();
    let sim = Sim::start(&["p1"]);
    let client = s.ca.client(s.dir.path(), "gw-tls");
    let cfg = tls_agent_toml(&s, "gw-tls", &sim, &s.ca.cert_file, &client);
    let agent = AgentProc::start(&agent_dir(&s, "a"), &cfg);
    agent.wait_connected(Duration::from_secs(15));

    // The cloud uses the broker's plain loopback listener; the agent only has TLS.
    let cloud = start_cloud(s.broker.port, s.dir.path()).await;
    cloud
        .publish_desired(
            &tenant(),
            &desired("p1", 1, &[("sysLocation", t("TLS floor"))]),
        )
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-tls:p1:v1", Duration::from_secs(20), &agent).await;
    assert_eq!(r.report.status, ReportStatus::Applied, "{:?}", r.report);
    assert_eq!(code_of(&r, "sysLocation"), Code::Verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_cannot_connect() {
    let s = setup();
    let sim = Sim::start(&["p1"]);
    let intruder = s.rogue.client(s.dir.path(), "intruder");
    let cfg = tls_agent_toml(&s, "gw-x", &sim, &s.ca.cert_file, &intruder);
    let agent = AgentProc::start(&agent_dir(&s, "x"), &cfg);
    // It keeps trying (with backoff) and never gets a session.
    agent.wait_log("broker connection lost", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(agent.log().contains("UnknownCA"), "{}", agent.log());
    assert!(
        !agent.log().contains("connected to broker"),
        "an untrusted client certificate connected:\n{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_broker_it_does_not_trust() {
    let s = setup();
    let sim = Sim::start(&["p1"]);
    let client = s.ca.client(s.dir.path(), "gw-y");
    // Trusts only the rogue CA, so the real broker's certificate is not accepted.
    let cfg = tls_agent_toml(&s, "gw-y", &sim, &s.rogue.cert_file, &client);
    let agent = AgentProc::start(&agent_dir(&s, "y"), &cfg);
    agent.wait_log("broker connection lost", Duration::from_secs(15));
    let log = agent.log();
    assert!(
        log.contains("UnknownIssuer") || log.contains("certificate"),
        "the failure should say the certificate is not trusted:\n{log}"
    );
    assert!(!log.contains("connected to broker"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readable_private_key_stops_the_agent_naming_the_file() {
    let s = setup();
    let sim = Sim::start(&["p1"]);
    let client = s.ca.client(s.dir.path(), "gw-z");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&client.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = tls_agent_toml(&s, "gw-z", &sim, &s.ca.cert_file, &client);
    let mut agent = AgentProc::start(&agent_dir(&s, "z"), &cfg);
    assert_ne!(agent.wait_exit(Duration::from_secs(10)), 0);
    let log = agent.log();
    assert!(
        log.contains("gw-z.key") && log.contains("chmod 600"),
        "{log}"
    );
}
