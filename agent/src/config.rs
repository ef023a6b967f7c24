//! The agent's configuration file (TOML), overridden by `PLATEN_…` environment
//! variables.
//!
//! See `packaging/agent.example.toml` for a commented example of every setting.
//! Loading goes through [`platen_ops::config`]: every problem at once, each with its
//! `FILE:LINE` or the environment variable that set it.

use crate::secret::Secret;
use platen_ops::config::{Check, ConfigFile, FieldPath};
use platen_protocol::Id;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use platen_ops::config::ConfigError;

/// Top-level keys that `PLATEN_…` variables may override.
pub const ENV_ROOTS: &[&str] = &[
    "agent_id",
    "tenant",
    "state_dir",
    "broker",
    "apply",
    "telemetry",
    "drift",
    "diagnostics",
    "metrics",
    "signing",
    "traps",
    "printer",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AgentConfig {
    /// This agent's id: used in topics, report ids and the health topic.
    pub agent_id: Id,
    /// The tenant the printers belong to (a printer may override it).
    pub tenant: Id,
    /// Where the agent keeps its sled database (desired configs, outbox).
    pub state_dir: PathBuf,
    pub broker: BrokerConfig,
    #[serde(default)]
    pub apply: ApplyConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub drift: DriftConfig,
    #[serde(default)]
    pub diagnostics: DiagnosticsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub signing: SigningConfig,
    #[serde(default)]
    pub traps: TrapsConfig,
    #[serde(default, rename = "printer")]
    pub printers: Vec<PrinterConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BrokerConfig {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Stable client id (a persistent session needs one). Default: `platen-agent-{agent_id}`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// First reconnect delay; doubles (with ±50 % jitter) up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// `[broker.tls]`: connect with TLS (and optionally a client certificate).
    pub tls: Option<crate::tls::TlsConfig>,
}

/// How the reconciler applies and verifies settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ApplyConfig {
    /// Wait after the SETs before reading back (some printers answer the old value at once).
    #[serde(default = "default_settle")]
    pub settle_ms: u64,
    /// Extra read-backs when the value read differs (stale read-back), before code 412.
    #[serde(default = "default_readback_retries")]
    pub readback_retries: u32,
    /// Delay before the first retry; doubles on each further retry.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff_ms: u64,
    /// SET attempts for retryable printer errors (genErr, resourceUnavailable).
    #[serde(default = "default_set_attempts")]
    pub max_set_attempts: u32,
    /// Send settings without prerequisites together, up to 10 per SET PDU; a PDU
    /// that fails is sent again one setting per PDU. false: always one per PDU.
    #[serde(default = "yes")]
    pub batch_set: bool,
}

/// Polling printers for counters, supplies, status and alerts.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TelemetryConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Time between the starts of two polls of the fleet.
    #[serde(default = "default_poll_interval")]
    pub interval_secs: u64,
    /// Send a message at least this often per printer, even when nothing changed.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// Send when a supply level moved by this many percentage points.
    #[serde(default = "default_supply_change")]
    pub supply_change_pct: u8,
    /// Send when the billing counter advanced by this many pages.
    #[serde(default = "default_pages_step")]
    pub pages_step: u64,
    /// A supply at or below this percentage is low (a receptacle with this little space is almost full).
    #[serde(default = "default_low_percent")]
    pub low_percent: u8,
    /// Printers polled at the same time (each with at most 2 requests in flight).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// Re-reading verified settings to catch changes made outside Platen.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DriftConfig {
    /// Time between checks of one printer; 0 turns drift detection off.
    #[serde(default = "default_drift_interval")]
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct DiagnosticsConfig {
    /// Answer diagnostics requests on `…/{printer}/cmd/diag`. Off by default: a
    /// diagnostics run sends SNMP traffic and reveals device details.
    #[serde(default)]
    pub remote: bool,
}

/// Which desired configs the agent believes ([`platen_protocol::signing`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// The cloud's public keys. When any is listed, a desired config is applied only
    /// if its signature verifies with one of them; others are reported refused (401).
    /// List two during a key rotation. Empty: signatures are not checked (warned at start).
    #[serde(default)]
    pub trusted_keys: Vec<TrustedKey>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// The key id the cloud puts in its signatures.
    pub id: String,
    /// The Ed25519 public key, standard base64 (`platen-cloud keygen` prints it).
    pub public_key: String,
}

impl SigningConfig {
    /// The keys, checked.
    pub fn trusted(
        &self,
    ) -> Result<platen_protocol::TrustedKeys, platen_protocol::signing::KeyError> {
        platen_protocol::TrustedKeys::new(
            self.trusted_keys
                .iter()
                .map(|k| (k.id.as_str(), k.public_key.as_str())),
        )
    }
}

/// SNMP notifications (traps and informs) from the printers: each one is a reason to
/// poll its printer now, never data (see [`crate::telemetry::traps`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrapsConfig {
    /// Address to listen on (`0.0.0.0:162`, the standard port, needs
    /// CAP_NET_BIND_SERVICE). Absent: no listener.
    pub listen: Option<SocketAddr>,
    /// At most one poll per printer address this often, however many notifications
    /// arrive (a spoofed flood costs one poll per interval).
    #[serde(default = "default_trap_gap")]
    pub min_interval_ms: u64,
}

fn default_trap_gap() -> u64 {
    5000
}

impl Default for TrapsConfig {
    fn default() -> Self {
        TrapsConfig {
            listen: None,
            min_interval_ms: default_trap_gap(),
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`. Off by default.
    #[serde(default)]
    pub enabled: bool,
    /// Address to listen on. Keep it on localhost unless the network is trusted:
    /// the metrics name every printer.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnmpVersion {
    V1,
    V2c,
    /// USM with authentication and privacy (`[printer.v3]`).
    V3,
}

/// SNMPv3 user (authPriv only: authentication SHA-2, privacy AES).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct V3Config {
    /// USM user name.
    pub user: String,
    /// `sha224`, `sha256` (default), `sha384` or `sha512`.
    #[serde(default = "default_v3_auth")]
    pub auth_protocol: V3Auth,
    /// At least 8 characters.
    pub auth_password: Secret,
    /// `aes128` (default), `aes192` or `aes256` (Blumenthal key extension, as net-snmp).
    #[serde(default = "default_v3_priv")]
    pub priv_protocol: V3Priv,
    /// At least 8 characters.
    pub priv_password: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum V3Auth {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum V3Priv {
    Aes128,
    Aes192,
    Aes256,
}

fn default_v3_auth() -> V3Auth {
    V3Auth::Sha256
}
fn default_v3_priv() -> V3Priv {
    V3Priv::Aes128
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PrinterConfig {
    pub id: Id,
    /// Overrides the agent's tenant for this printer.
    pub tenant: Option<Id>,
    /// Host name or IP address of the printer.
    pub address: String,
    #[serde(default = "default_snmp_port")]
    pub port: u16,
    #[serde(default = "default_snmp_version")]
    pub snmp_version: SnmpVersion,
    /// The community used for GET and SET (a write community); v1/v2c only.
    #[serde(default)]
    pub community: Secret,
    /// The SNMPv3 user, for `snmp_version = "v3"`.
    pub v3: Option<V3Config>,
    /// `"default"` (built in) or a path to a profile TOML file.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Time to wait for one SNMP response.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Re-sends of an unanswered request before the printer counts as unreachable (504).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Settings re-applied automatically when drift is found (`["*"]` for all);
    /// the others are only reported.
    #[serde(default)]
    pub reapply_on_drift: Vec<String>,
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn yes() -> bool {
    true
}
fn default_poll_interval() -> u64 {
    60
}
fn default_heartbeat() -> u64 {
    900
}
fn default_supply_change() -> u8 {
    5
}
fn default_pages_step() -> u64 {
    100
}
fn default_low_percent() -> u8 {
    10
}
fn default_concurrency() -> usize {
    128
}
fn default_drift_interval() -> u64 {
    600
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive() -> u64 {
    30
}
fn default_reconnect_min() -> u64 {
    250
}
fn default_reconnect_max() -> u64 {
    30_000
}
fn default_settle() -> u64 {
    200
}
fn default_readback_retries() -> u32 {
    3
}
fn default_retry_backoff() -> u64 {
    200
}
fn default_set_attempts() -> u32 {
    3
}
fn default_snmp_port() -> u16 {
    161
}
fn default_snmp_version() -> SnmpVersion {
    SnmpVersion::V2c
}
fn default_profile() -> String {
    "default".into()
}
fn default_timeout() -> u64 {
    1000
}
fn default_retries() -> u32 {
    2
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            settle_ms: default_settle(),
            readback_retries: default_readback_retries(),
            retry_backoff_ms: default_retry_backoff(),
            max_set_attempts: default_set_attempts(),
            batch_set: true,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            interval_secs: default_poll_interval(),
            heartbeat_secs: default_heartbeat(),
            supply_change_pct: default_supply_change(),
            pages_step: default_pages_step(),
            low_percent: default_low_percent(),
            concurrency: default_concurrency(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            listen: default_metrics_listen(),
        }
    }
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            interval_secs: default_drift_interval(),
        }
    }
}

impl BrokerConfig {
    pub fn client_id(&self, agent: &Id) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("platen-agent-{agent}"))
    }
}

impl PrinterConfig {
    pub fn tenant<'a>(&'a self, agent: &'a AgentConfig) -> &'a Id {
        self.tenant.as_ref().unwrap_or(&agent.tenant)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The config file holds credentials (communities, SNMPv3 or broker passwords):
/// refuse one that every user of the machine can read, naming the file.
pub fn check_not_world_readable(path: &Path, cfg: &AgentConfig) -> Result<(), String> {
    let holds_secret = cfg.broker.password.is_some()
        || cfg
            .printers
            .iter()
            .any(|p| !p.community.expose().is_empty() || p.v3.is_some());
    if holds_secret {
        platen_ops::secret::refuse_world_readable(path, "SNMP communities or passwords")?;
    }
    Ok(())
}

impl AgentConfig {
    /// Read `path` with this process's `PLATEN_…` overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_file(path).map(|(c, _)| c)
    }

    /// Parse and validate text without environment overrides; `path` is only used in
    /// messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_text(text, path, &[]).map(|(c, _)| c)
    }
}

impl ConfigFile for AgentConfig {
    const ENV_ROOTS: &'static [&'static str] = ENV_ROOTS;

    /// Every check beyond the types, each with its field.
    fn checks(&self) -> Vec<Check> {
        let mut out: Vec<Check> = Vec::new();
        let mut bad = |field: &str, message: &str| {
            out.push((FieldPath::parse(field), message.to_string()));
        };
        let b = &self.broker;
        if b.host.trim().is_empty() {
            bad("broker.host", "must not be empty");
        }
        if b.port == 0 {
            bad("broker.port", "must not be 0");
        }
        if b.keep_alive_secs < 5 {
            bad("broker.keep_alive_secs", "must be at least 5");
        }
        if b.reconnect_min_ms == 0 || b.reconnect_min_ms > b.reconnect_max_ms {
            bad(
                "broker.reconnect_min_ms",
                "must be > 0 and <= reconnect_max_ms",
            );
        }
        if b.password.is_some() && b.username.is_none() {
            bad("broker.password", "is set but broker.username is not");
        }
        if self.apply.max_set_attempts == 0 {
            bad("apply.max_set_attempts", "must be at least 1");
        }
        if self.traps.min_interval_ms < 100 {
            bad("traps.min_interval_ms", "must be at least 100");
        }
        let t = &self.telemetry;
        if t.interval_secs == 0 {
            bad("telemetry.interval_secs", "must be at least 1");
        }
        if t.heartbeat_secs < t.interval_secs {
            bad(
                "telemetry.heartbeat_secs",
                "must be at least telemetry.interval_secs",
            );
        }
        if t.concurrency == 0 {
            bad("telemetry.concurrency", "must be at least 1");
        }
        if t.low_percent > 100 {
            bad("telemetry.low_percent", "must be 0..=100");
        }
        if t.supply_change_pct == 0 || t.supply_change_pct > 100 {
            bad("telemetry.supply_change_pct", "must be 1..=100");
        }
        if let Err(e) = self.signing.trusted() {
            bad("signing.trusted_keys", &e.to_string());
        }
        let mut seen = HashSet::new();
        for (i, p) in self.printers.iter().enumerate() {
            let field = |f: &str| format!("printer[{i}].{f}");
            let id = &p.id;
            if !seen.insert(p.id.clone()) {
                bad(&field("id"), &format!("duplicate printer id {id}"));
            }
            if p.address.trim().is_empty() {
                bad(
                    &field("address"),
                    &format!("must not be empty (printer {id})"),
                );
            }
            if p.port == 0 {
                bad(&field("port"), &format!("must not be 0 (printer {id})"));
            }
            match (p.snmp_version, &p.v3) {
                (SnmpVersion::V3, None) => bad(
                    &field("v3"),
                    &format!("snmp_version v3 needs a [printer.v3] section (printer {id})"),
                ),
                (SnmpVersion::V3, Some(v3)) => {
                    if v3.user.is_empty() {
                        bad(
                            &field("v3.user"),
                            &format!("must not be empty (printer {id})"),
                        );
                    }
                    for (name, pw) in [
                        ("v3.auth_password", &v3.auth_password),
                        ("v3.priv_password", &v3.priv_password),
                    ] {
                        if pw.expose().len() < 8 {
                            bad(
                                &field(name),
                                &format!("must be at least 8 characters (printer {id})"),
                            );
                        }
                    }
                }
                (_, Some(_)) => bad(
                    &field("v3"),
                    &format!("is only used with snmp_version = \"v3\" (printer {id})"),
                ),
                (_, None) if p.community.expose().is_empty() => bad(
                    &field("community"),
                    &format!("must not be empty (printer {id})"),
                ),
                (_, None) => {}
            }
            if !(10..=60_000).contains(&p.timeout_ms) {
                bad(
                    &field("timeout_ms"),
                    &format!("must be between 10 and 60000 (printer {id})"),
                );
            }
            if p.retries > 10 {
                bad(
                    &field("retries"),
                    &format!("must be at most 10 (printer {id})"),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
agent_id = "gw-1"
tenant = "acme"
state_dir = "/tmp/x"
[broker]
host = "127.0.0.1"
[[printer]]
id = "p1"
address = "127.0.0.1"
port = 16100
community = "private"
"#;

    fn parse(s: &str) -> Result<AgentConfig, String> {
        AgentConfig::parse(s, Path::new("agent.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.broker.port, 1883);
        assert_eq!(c.broker.client_id(&c.agent_id), "platen-agent-gw-1");
        assert_eq!(c.printers[0].snmp_version, SnmpVersion::V2c);
        assert_eq!(c.printers[0].tenant(&c).as_str(), "acme");
        assert_eq!(c.apply.settle_ms, 200);
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let cases = [
            (
                GOOD.replace("host = \"127.0.0.1\"", "hots = \"x\""),
                "agent.toml:6: broker.hots: unknown key",
            ),
            (
                GOOD.replace("port = 16100", "port = \"x\""),
                "agent.toml:10: printer[0].port: invalid type",
            ),
            (
                GOOD.replace("id = \"p1\"", "id = \"p/1\""),
                "agent.toml:8: printer[0].id: ",
            ),
            (
                GOOD.replace("community = \"private\"", "community = \"\""),
                "agent.toml:11: printer[0].community: must not be empty (printer p1)",
            ),
            (
                GOOD.replace("port = 16100", "port = 0"),
                "agent.toml:10: printer[0].port: must not be 0",
            ),
            (
                format!("{GOOD}\n[[printer]]\nid = \"p1\"\naddress = \"h\"\ncommunity = \"c\"\n"),
                "agent.toml:14: printer[1].id: duplicate printer id p1",
            ),
            (
                GOOD.replace("tenant = \"acme\"\n", ""),
                "agent.toml: tenant: missing (required)",
            ),
            (
                GOOD.replace("[broker]", "[broker]\npassword = \"pw\""),
                "agent.toml:6: broker.password: is set but",
            ),
            (
                format!("{GOOD}\n[telemetry]\ninterval_secs = 0\n"),
                "agent.toml:14: telemetry.interval_secs",
            ),
            (
                format!("{GOOD}\n[telemetry]\ninterval_secs = 120\nheartbeat_secs = 60\n"),
                "agent.toml:15: telemetry.heartbeat_secs",
            ),
            (
                format!("{GOOD}\n[telemetry]\nconcurrency = 0\n"),
                "telemetry.concurrency",
            ),
            (
                format!("{GOOD}\n[drift]\nevery = 5\n"),
                "agent.toml:14: drift.every: unknown key",
            ),
            (
                GOOD.replace("port = 16100", "port = 16100\nsnmp_version = \"v4\""),
                "unknown variant `v4`",
            ),
            (
                GOOD.replace("port = 16100", "port = 16100\nsnmp_version = \"v3\""),
                "agent.toml:7: printer[0].v3: snmp_version v3 needs a [printer.v3] section",
            ),
            (
                GOOD.replace(
                    "port = 16100",
                    "port = 16100\nsnmp_version = \"v3\"\n[printer.v3]\nuser = \"u\"\nauth_password = \"short\"\npriv_password = \"long enough\"\nauth_protocol = \"md5\"",
                ),
                "unknown variant `md5`",
            ),
            (
                format!("{GOOD}\n[metrics]\nlisten = \"localhost\"\n"),
                "agent.toml:14: metrics.listen: invalid socket address",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.starts_with("agent.toml"), "{err}");
            assert!(err.contains(want), "wanted {want:?} in {err}");
        }
    }

    #[test]
    fn all_problems_in_one_run() {
        let text = GOOD
            .replace(
                "host = \"127.0.0.1\"",
                "host = \"127.0.0.1\"\nport = \"x\"\nkeepalive = 3",
            )
            .replace(
                "community = \"private\"",
                "community = \"\"\ntimeout_ms = 5",
            );
        let err = AgentConfig::parse(&text, Path::new("agent.toml")).unwrap_err();
        assert_eq!(err.count(), 4, "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env: Vec<(String, String)> = [
            ("PLATEN_BROKER__HOST", "mqtt.internal"),
            ("PLATEN_BROKER__USERNAME", "gw-1"),
            ("PLATEN_BROKER__PASSWORD", "1234"),
            ("PLATEN_PRINTER__0__COMMUNITY", "from-env"),
            ("PLATEN_TELEMETRY__INTERVAL_SECS", "30"),
            ("PLATEN_METRICS__ENABLED", "true"),
            ("PLATEN_LOG_FORMAT", "json"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (c, source) = AgentConfig::parse_text(GOOD, Path::new("a.toml"), &env).unwrap();
        assert_eq!(c.broker.host, "mqtt.internal");
        assert_eq!(c.broker.password.as_ref().map(|p| p.expose()), Some("1234"));
        assert_eq!(c.printers[0].community.expose(), "from-env");
        assert_eq!(c.telemetry.interval_secs, 30);
        assert!(c.metrics.enabled);
        let shown = platen_ops::config::show(&c, &source).unwrap();
        assert!(
            shown.contains("# printer[0].community from env PLATEN_PRINTER__0__COMMUNITY"),
            "{shown}"
        );
        assert!(
            !shown.contains("from-env") && !shown.contains("1234"),
            "secrets shown:\n{shown}"
        );
        assert!(shown.contains("community = \"[REDACTED]\""), "{shown}");
        // The shown config is itself a valid config (secrets aside).
        let again = AgentConfig::parse(&shown, Path::new("shown.toml")).unwrap();
        assert_eq!(again.telemetry.interval_secs, 30);
        let bad = vec![("PLATEN_BROKER__PORT".to_string(), "eighty".to_string())];
        let err = AgentConfig::parse_text(GOOD, Path::new("a.toml"), &bad)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("a.toml (env PLATEN_BROKER__PORT): broker.port: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn the_example_documents_every_setting() {
        let text = include_str!("../../packaging/agent.example.toml");
        let c = AgentConfig::parse(text, Path::new("example")).unwrap();
        let mut keys = std::collections::BTreeSet::new();
        fn walk(v: &toml::Value, keys: &mut std::collections::BTreeSet<String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        keys.insert(k.clone());
                        walk(v, keys);
                    }
                }
                toml::Value::Array(a) => a.iter().for_each(|v| walk(v, keys)),
                _ => {}
            }
        }
        walk(&toml::Value::try_from(&c).unwrap(), &mut keys);
        // Optional settings that the example leaves unset (commented out).
        keys.extend(
            [
                "client_id",
                "username",
                "password",
                "tls",
                "ca_file",
                "cert_file",
                "key_file",
                "v3",
                "user",
                "auth_protocol",
                "auth_password",
                "priv_protocol",
                "priv_password",
                "id",
                "public_key",
            ]
            .map(String::from),
        );
        for k in keys {
            let documented = text.lines().any(|l| {
                let l = l.trim_start().trim_start_matches('#').trim_start();
                l.starts_with(&format!("{k} ="))
                    || l.starts_with(&format!("[{k}]"))
                    || l.starts_with(&format!("[[{k}]]"))
                    || l.starts_with(&format!("[broker.{k}]"))
                    || l.starts_with(&format!("[printer.{k}]"))
            });
            assert!(
                documented,
                "setting {k} is not in packaging/agent.example.toml"
            );
        }
        for root in ENV_ROOTS {
            assert!(
                text.contains(&format!("{root} ="))
                    || text.contains(&format!("[{root}]"))
                    || text.contains(&format!("[[{root}]]")),
                "{root}"
            );
        }
    }

    #[test]
    fn the_packaged_example_is_valid() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/agent.example.toml"
        ));
        let c = AgentConfig::load(path).unwrap();
        assert_eq!(c.printers.len(), 1);
        assert_eq!(c.apply.settle_ms, ApplyConfig::default().settle_ms);
        assert!(c.broker.tls.is_none());
        // The commented TLS section, switched on, parses as documented.
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace("# [broker.tls]", "[broker.tls]")
            .replace("# ca_file =", "ca_file =")
            .replace("# cert_file =", "cert_file =")
            .replace("# key_file =", "key_file =");
        let tls = parse(&text).unwrap().broker.tls.unwrap();
        assert_eq!(tls.ca_file, Path::new("/etc/platen/ca.pem"));
        assert_eq!(tls.key_file.unwrap(), Path::new("/etc/platen/gw-01.key"));
    }

    #[test]
    fn unknown_tls_field_is_named() {
        let err = parse(&GOOD.replace(
            "[broker]",
            "[broker.tls]\nca_file = \"/x\"\ncafile = \"/y\"\n\n[broker]",
        ))
        .unwrap_err();
        assert!(err.contains("broker.tls.cafile: unknown key"), "{err}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = parse(&GOOD.replace(
            "[broker]",
            "[broker]\nusername = \"u\"\npassword = \"s3cret-pw\"",
        ))
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("s3cret-pw") && !dbg.contains("\"private\""),
            "{dbg}"
        );
    }
}
