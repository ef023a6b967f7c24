//! Attacks on the broker path, against real Mosquitto, the agent binary and the
//! simulator:
//! - configs that are unsigned, altered, or signed by an unknown key are reported
//!   refused (401) and never reach the printer; a forged config with a huge version
//!   does not block the genuine next one; two trusted keys allow a rotation;
//! - with the packaged Mosquitto configuration and the ACL generated from the agent
//!   registry: an agent cannot read another agent's configs, its publishes to a
//!   foreign printer's topics never arrive, a report claiming another agent is refused
//!   by the cloud, and certificates from another CA cannot connect.

use platen_cloud::link::agents::Registry;
use platen_cloud::{BrokerAuth, Cloud, ReportEvent};
use platen_e2e::pki::{Ca, Issued};
use platen_e2e::SNMPD_V3_USER;
use platen_e2e::*;
use platen_protocol::{Code, ReportStatus, Signer};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

const SYS_LOCATION: &str = "1.3.6.1.2.1.1.6.0";

fn signer(id: &str) -> Arc<Signer> {
    Arc::new(Signer::from_pem(id, &Signer::generate_pem().unwrap()).unwrap())
}

fn trusted_keys_toml(keys: &[&Signer]) -> String {
    keys.iter()
        .map(|k| {
            format!(
                "\n[[signing.trusted_keys]]\nid = \"{}\"\npublic_key = \"{}\"\n",
                k.key_id(),
                k.public_key_base64()
            )
        })
        .collect()
}

fn location(sim: &Sim) -> String {
    snmpget("private", &sim.addr("p1").to_string(), SYS_LOCATION).unwrap()
}

fn mosquitto_pub(args: &[&str]) -> Output {
    Command::new(system_bin("mosquitto_pub", "mosquitto-clients"))
        .args(args)
        .output()
        .expect("mosquitto_pub")
}

/// Publish a desired config straight to the broker (retained, QoS 1), as anyone
/// with access to the broker could.
fn publish_raw(port: u16, config: &platen_protocol::DesiredConfig) {
    let payload = String::from_utf8(platen_protocol::encode(config)).unwrap();
    let topic = platen_protocol::Topic::desired(&tenant(), &config.printer_id).to_string();
    let port = port.to_string();
    let out = mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-q",
        "1",
        "-r",
        "-t",
        &topic,
        "-m",
        &payload,
    ]);
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configs_signed_by_a_trusted_key_reach_the_printer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let sim = Sim::start(&["p1"]);
    let (k1, k2) = (signer("cloud-2026-10"), signer("cloud-2026-11"));
    let cfg = agent_toml(
        "gw-sig",
        broker.port,
        &dir.path().join("state"),
        &[PrinterEntry::new("p1", sim.addr("p1"))],
    ) + &trusted_keys_toml(&[&k1, &k2]);
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    let agent = AgentProc::start(&dir.path().join("a"), &cfg);
    agent.wait_connected(Duration::from_secs(15));
    let plain = start_cloud(broker.port, dir.path()).await;
    let cloud = plain.clone().with_signer(Some(k1.clone()));
    // Reports of configs the cloud never published reach the broker, not the
    // cloud's store: this tap sees them.
    let tap = Tap::start(broker.port, "sec-tap", &["platen/v1/+/+/config/report"]).await;
    let agent_report = |id: String| {
        let (tap, agent, cloud) = (&tap, &agent, &cloud);
        async move {
            let r = tap
                .wait_for::<platen_protocol::ApplyReport, _>(
                    Duration::from_secs(20),
                    &id,
                    || agent.log(),
                    |rs| rs.iter().find(|r| r.report_id == id).cloned(),
                )
                .await;
            assert!(
                cloud.report(&id).is_none(),
                "the cloud stored {id}, a report of a version it never published"
            );
            r
        }
    };

    // Signed with the first key: applied.
    let v1 = desired("p1", 1, &[("sysLocation", t("signed by k1"))]);
    cloud.publish_desired(&tenant(), &v1).await.unwrap();
    let r = wait_report(&cloud, "gw-sig:p1:v1", Duration::from_secs(20), &agent).await;
    assert_eq!(code_of(&r, "sysLocation"), Code::Verified);
    assert!(location(&sim).contains("signed by k1"));

    // Unsigned: refused with 401 under the refusal's own id, printer untouched.
    let v2 = desired("p1", 2, &[("sysLocation", t("unsigned"))]);
    plain.publish_desired(&tenant(), &v2).await.unwrap();
    let r = wait_report(
        &cloud,
        "gw-sig:p1:v2:refused401",
        Duration::from_secs(20),
        &agent,
    )
    .await;
    assert_eq!(r.report.status, ReportStatus::NotApplied);
    let why = r.report.refused.as_ref().unwrap();
    assert_eq!(why.code, Code::SignatureInvalid);
    assert!(why.detail.contains("not signed"), "{}", why.detail);

    // Altered after signing (what a compromised broker would do): refused.
    let mut v3 = desired("p1", 3, &[("sysLocation", t("genuine"))]);
    k1.sign(&tenant(), &mut v3);
    v3.settings
        .insert("sysLocation".into(), t("tampered-value"));
    publish_raw(broker.port, &v3);
    let r = agent_report("gw-sig:p1:v3:refused401".into()).await;
    assert!(
        r.refused
            .as_ref()
            .unwrap()
            .detail
            .contains("does not verify"),
        "{:?}",
        r
    );

    // A forged config with an enormous version, signed by an unknown key: refused,
    // and it does not make the genuine next version look stale.
    let rogue = signer("cloud-2026-11");
    let mut forged = desired(
        "p1",
        9_000_000_000_000,
        &[("sysLocation", t("forged-value"))],
    );
    rogue.sign(&tenant(), &mut forged);
    publish_raw(broker.port, &forged);
    agent_report("gw-sig:p1:v9000000000000:refused401".into()).await;
    assert!(
        location(&sim).contains("signed by k1"),
        "{}",
        location(&sim)
    );

    // Rotation: the cloud switches to the second key; the agent trusts both.
    let rotated = plain.clone().with_signer(Some(k2.clone()));
    let v4 = desired("p1", 4, &[("sysLocation", t("signed by k2"))]);
    rotated.publish_desired(&tenant(), &v4).await.unwrap();
    let r = wait_report(&cloud, "gw-sig:p1:v4", Duration::from_secs(20), &agent).await;
    assert_eq!(r.report.status, ReportStatus::Applied, "{:?}", r.report);
    assert!(location(&sim).contains("signed by k2"));

    // Nothing of the refused configs was written, and the agent says why in its log.
    let log = agent.log();
    assert!(log.contains("desired config refused: signature"), "{log}");
    assert!(
        !log.contains("forged-value") && !log.contains("tampered-value"),
        "{log}"
    );
}

struct Broker {
    dir: tempfile::TempDir,
    ca: Ca,
    rogue: Ca,
    mosquitto: Mosquitto,
    port: u16,
}

/// Mosquitto with `packaging/mosquitto/platen.conf` (paths and port replaced) and
/// the ACL that `platen-cloud broker-acl` makes from `registry`.
fn packaged_broker(registry: &Registry) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = Ca::new(dir.path(), "platen");
    let rogue = Ca::new(dir.path(), "rogue");
    let server = ca.server(dir.path(), "broker");
    let acl = dir.path().join("platen.acl");
    std::fs::write(&acl, registry.mosquitto_acl("platen-cloud")).unwrap();
    let port = free_tcp_port();
    let packaged = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/mosquitto/platen.conf"
    ))
    .unwrap();
    let conf = packaged
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"))
        .replace("/etc/mosquitto/platen.acl", &acl.display().to_string())
        .replace(
            "/etc/mosquitto/certs/platen-ca.pem",
            &ca.cert_file.display().to_string(),
        )
        .replace(
            "/etc/mosquitto/certs/broker.pem",
            &server.cert_file.display().to_string(),
        )
        .replace(
            "/etc/mosquitto/certs/broker.key",
            &server.key_file.display().to_string(),
        );
    assert!(
        !conf
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("/etc/")),
        "a path was not replaced:\n{conf}"
    );
    let mosquitto = Mosquitto::start_conf(conf, port);
    Broker {
        dir,
        ca,
        rogue,
        mosquitto,
        port,
    }
}

fn tls_args<'a>(who: &'a Issued, ca: &'a Path, port: &'a str) -> Vec<&'a str> {
    vec![
        "-h",
        "localhost",
        "-p",
        port,
        "--cafile",
        ca.to_str().unwrap(),
        "--cert",
        who.cert_file.to_str().unwrap(),
        "--key",
        who.key_file.to_str().unwrap(),
        "-q",
        "1",
    ]
}

/// `mosquitto_sub` for one retained message on `topic` within 3 s.
fn read_retained(b: &Broker, who: &Issued, topic: &str) -> Output {
    let port = b.port.to_string();
    let mut args = tls_args(who, &b.ca.cert_file, &port);
    args.extend(["-t", topic, "-C", "1", "-W", "3"]);
    Command::new(system_bin("mosquitto_sub", "mosquitto-clients"))
        .args(&args)
        .output()
        .expect("mosquitto_sub")
}

fn publish_as(b: &Broker, who: &Issued, ca: &Path, topic: &str, payload: &str) -> Output {
    let port = b.port.to_string();
    let mut args = tls_args(who, ca, &port);
    args.extend(["-t", topic, "-m", payload]);
    mosquitto_pub(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_broker_config_keeps_each_agent_to_its_own_printers() {
    let registry =
        Registry::parse("[[agent]]\nid = \"gw-1\"\nprinters = [\"acme/p1\"]\n[[agent]]\nid = \"gw-2\"\nprinters = [\"acme/p2\"]\n")
            .unwrap();
    let b = packaged_broker(&registry);
    let d = b.dir.path();
    let (gw1, gw2) = (b.ca.client(d, "gw-1"), b.ca.client(d, "gw-2"));
    let cloud_cert = b.ca.client(d, "platen-cloud");
    let sim = Sim::start(&["p1", "p2"]);

    // The cloud over TLS with its own certificate, checking reports against the registry.
    let tls = platen_agent::tls::client_config(&platen_agent::tls::TlsConfig {
        ca_file: b.ca.cert_file.clone(),
        cert_file: Some(cloud_cert.cert_file.clone()),
        key_file: Some(cloud_cert.key_file.clone()),
    })
    .unwrap();
    let cloud = Cloud::start_with(
        "localhost",
        b.port,
        "platen-cloud",
        &d.join("cloud"),
        BrokerAuth {
            tls: Some(tls),
            ..Default::default()
        },
        Some(Arc::new(registry)),
    )
    .unwrap();
    assert!(
        cloud.wait_connected(Duration::from_secs(10)).await,
        "cloud could not connect over TLS:\n{}",
        b.mosquitto.log()
    );
    let mut events = cloud.subscribe_events();

    // gw-1 manages p1 over TLS and works end to end through the ACL.
    let cfg = agent_toml(
        "gw-1",
        b.port,
        &d.join("gw1-state"),
        &[PrinterEntry::new("p1", sim.addr("p1"))],
    )
    .replace("host = \"127.0.0.1\"", "host = \"localhost\"")
    .replace(
        "\n[apply]",
        &format!(
            "\n[broker.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[apply]",
            b.ca.cert_file.display(),
            gw1.cert_file.display(),
            gw1.key_file.display()
        ),
    );
    std::fs::create_dir_all(d.join("gw1")).unwrap();
    let agent = AgentProc::start(&d.join("gw1"), &cfg);
    agent.wait_connected(Duration::from_secs(15));
    cloud
        .publish_desired(
            &tenant(),
            &desired("p1", 1, &[("sysLocation", t("ACL ok"))]),
        )
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-1:p1:v1", Duration::from_secs(20), &agent).await;
    assert_eq!(code_of(&r, "sysLocation"), Code::Verified);

    // Reading: gw-1 sees p1's retained config; gw-2 does not.
    let topic_p1 = platen_protocol::Topic::desired(&tenant(), &"p1".parse().unwrap()).to_string();
    let own = read_retained(&b, &gw1, &topic_p1);
    assert!(
        String::from_utf8_lossy(&own.stdout).contains("ACL ok"),
        "{own:?}\n{}",
        b.mosquitto.log()
    );
    let foreign = read_retained(&b, &gw2, &topic_p1);
    // Connected and waited out its 3 s (exit 27), rather than failing to connect.
    assert_eq!(foreign.status.code(), Some(27), "{foreign:?}");
    assert!(
        !String::from_utf8_lossy(&foreign.stdout).contains("ACL ok"),
        "gw-2 read gw-1's config: {foreign:?}"
    );

    // Writing: gw-2 forges a report on p1's topic (as gw-2, and as gw-1): the broker
    // drops both; and on its own p2 topic claiming to be gw-1: the cloud refuses it.
    let forged = |agent: &str, printer: &str| {
        let now = chrono::Utc::now();
        let report = platen_protocol::ApplyReport {
            report_id: format!("{agent}:{printer}:v1"),
            agent_id: agent.parse().unwrap(),
            printer_id: printer.parse().unwrap(),
            config_version: 1,
            status: ReportStatus::Applied,
            settings: vec![],
            received_at: now,
            completed_at: now,
            refused: None,
        };
        String::from_utf8(platen_protocol::encode(&report)).unwrap()
    };
    let report_topic =
        |p: &str| platen_protocol::Topic::report(&tenant(), &p.parse().unwrap()).to_string();
    for claimed in ["gw-2", "gw-1"] {
        let out = publish_as(
            &b,
            &gw2,
            &b.ca.cert_file,
            &report_topic("p1"),
            &forged(claimed, "p1"),
        );
        // Mosquitto acknowledges a denied publish (MQTT 3.1.1 has no way to say no)
        // but delivers it to nobody.
        assert!(out.status.success(), "{out:?}");
    }
    let out = publish_as(
        &b,
        &gw2,
        &b.ca.cert_file,
        &report_topic("p2"),
        &forged("gw-1", "p2"),
    );
    assert!(out.status.success(), "{out:?}");
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(ReportEvent::Refused { topic, reason }) => return (topic, reason),
                Ok(_) => continue,
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the cloud saw no refused report:\n{}", b.mosquitto.log()));
    assert!(refused.0.ends_with("/p2/config/report"), "{refused:?}");
    assert_eq!(refused.1, "printer acme/p2 belongs to agent gw-2, not gw-1");
    // Give a forged p1 report that got through time to arrive, then look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on_p1: Vec<_> = cloud
        .reports()
        .into_iter()
        .filter(|r| r.report.printer_id.as_str() == "p1")
        .map(|r| r.report.report_id)
        .collect();
    assert_eq!(on_p1, ["gw-1:p1:v1"], "a forged report reached the cloud");
    assert!(cloud.report("gw-1:p2:v1").is_none());

    // Connecting: a certificate from another CA, and no certificate at all, fail.
    let intruder = b.rogue.client(d, "gw-1");
    let out = publish_as(&b, &intruder, &b.ca.cert_file, &report_topic("p1"), "x");
    assert!(
        !out.status.success(),
        "a rogue certificate connected: {out:?}"
    );
    let port = b.port.to_string();
    let out = mosquitto_pub(&[
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        b.ca.cert_file.to_str().unwrap(),
        "-t",
        "platen/v1/acme/p1/config/report",
        "-m",
        "x",
    ]);
    assert!(
        !out.status.success(),
        "connected without a certificate: {out:?}"
    );
}

/// Secrets of the next test: none may appear in any log, report or output.
const COMMUNITY: &str = "Comm-S3cret-xyz";
const BROKER_PASSWORD: &str = "Broker-S3cret-pw";
const WRONG_AUTH: &str = "Wrong-S3cret-pw";

fn v3_printer(id: &str, port: u16, auth: &str) -> String {
    let (user, _, privacy) = SNMPD_V3_USER;
    format!(
        "\n[[printer]]\nid = \"{id}\"\naddress = \"127.0.0.1\"\nport = {port}\nsnmp_version = \"v3\"\ntimeout_ms = 500\nretries = 1\n\
         [printer.v3]\nuser = \"{user}\"\nauth_protocol = \"sha256\"\nauth_password = \"{auth}\"\n\
         priv_protocol = \"aes128\"\npriv_password = \"{privacy}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snmpv3_auth_priv_engine_change_and_no_secret_in_a_trace_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let mut snmpd = Snmpd::start_with_engine("platen-eng-1");
    let sim = Sim::start_with_community(&["v2"], COMMUNITY);
    let (_, auth, privacy) = SNMPD_V3_USER;
    let cfg = agent_toml("gw-v3", broker.port, &dir.path().join("state"), &[])
        .replace(
            "reconnect_min_ms",
            &format!("username = \"gw-v3\"\npassword = \"{BROKER_PASSWORD}\"\nreconnect_min_ms"),
        )
        + &v3_printer("v3p", snmpd.port, auth)
        + &v3_printer("badv3", snmpd.port, WRONG_AUTH)
        + &format!(
            "\n[[printer]]\nid = \"v2\"\naddress = \"127.0.0.1\"\nport = {}\ncommunity = \"{COMMUNITY}\"\n",
            sim.addr("v2").port()
        );
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    let agent = AgentProc::start_with(&dir.path().join("a"), &cfg, &[("RUST_LOG", "trace")], &[]);
    agent.wait_connected(Duration::from_secs(15));
    let cloud = start_cloud(broker.port, dir.path()).await;

    // authPriv with SHA-256 / AES-128 against net-snmp: applied and read back.
    let set = |p: &str, v: u64, loc: &str| desired(p, v, &[("sysLocation", t(loc))]);
    cloud
        .publish_desired(&tenant(), &set("v3p", 1, "over v3"))
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-v3:v3p:v1", Duration::from_secs(20), &agent).await;
    assert_eq!(code_of(&r, "sysLocation"), Code::Verified, "{:?}", r.report);
    assert!(snmpd.get_v3(SYS_LOCATION).unwrap().contains("over v3"));

    // A wrong auth password: 403 with a clear SNMPv3 reason, no retry storm.
    cloud
        .publish_desired(&tenant(), &set("badv3", 1, "never"))
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-v3:badv3:v1", Duration::from_secs(20), &agent).await;
    let s = &r.report.settings[0];
    assert_eq!(s.code, Code::NotWritable, "{:?}", r.report);
    assert!(s.detail.contains("SNMPv3"), "{}", s.detail);
    assert!(!snmpd.get_v3(SYS_LOCATION).unwrap().contains("never"));

    // v2c beside v3 in the same agent.
    cloud
        .publish_desired(&tenant(), &set("v2", 1, "over v2c"))
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-v3:v2:v1", Duration::from_secs(20), &agent).await;
    assert_eq!(code_of(&r, "sysLocation"), Code::Verified, "{:?}", r.report);

    // The device at v3p's address is replaced (new engine id): still works, warned.
    snmpd.restart_with_engine("platen-eng-2");
    cloud
        .publish_desired(&tenant(), &set("v3p", 2, "after swap"))
        .await
        .unwrap();
    let r = wait_report(&cloud, "gw-v3:v3p:v2", Duration::from_secs(30), &agent).await;
    assert_eq!(code_of(&r, "sysLocation"), Code::Verified, "{:?}", r.report);
    agent.wait_log("SNMPv3 engine id changed", Duration::from_secs(10));

    // diag at trace level, text and JSON, and `config show`.
    let config = dir.path().join("a").join("agent.toml");
    let mut outputs = vec![agent.log()];
    for args in [
        vec!["diag", "--config", config.to_str().unwrap(), "--no-broker"],
        vec![
            "diag",
            "--config",
            config.to_str().unwrap(),
            "--no-broker",
            "--json",
        ],
        vec!["config", "show", config.to_str().unwrap()],
    ] {
        let o = Command::new(workspace_bin("platen-agent"))
            .args(&args)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        outputs.push(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    assert!(outputs[1].contains("SNMPv3 refused"), "{}", outputs[1]);
    outputs.push(serde_json::to_string(&cloud.reports()).unwrap());
    let log = &outputs[0];
    assert!(log.contains(" TRACE "), "not a trace log");
    assert!(
        log.len() > 20_000,
        "suspiciously short log: {} bytes",
        log.len()
    );
    for secret in [COMMUNITY, BROKER_PASSWORD, WRONG_AUTH, auth, privacy] {
        for (i, out) in outputs.iter().enumerate() {
            assert!(!out.contains(secret), "secret {secret:?} in output {i}");
        }
    }
}

#[test]
fn a_world_readable_config_with_credentials_stops_the_agent_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let text = agent_toml(
        "gw-perm",
        1883,
        &dir.path().join("state"),
        &[PrinterEntry::new("p1", "127.0.0.1:16100".parse().unwrap())],
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(workspace_bin("platen-agent"))
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}: holds SNMP communities", path.display()))
            && err.contains("mode 644"),
        "{err}"
    );
    assert!(!err.contains("private"), "the community was printed: {err}");
}
