//! The agent's configuration file (TOML).
//!
//! See `packaging/agent.example.toml` for a commented example. Loading fails with a
//! message that names the file, the line and the field.

use crate::secret::Secret;
use platen_protocol::Id;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
    #[serde(default, rename = "printer")]
    pub printers: Vec<PrinterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

/// Polling printers for counters, supplies, status and alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Time between checks of one printer; 0 turns drift detection off.
    #[serde(default = "default_drift_interval")]
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagnosticsConfig {
    /// Answer diagnostics requests on `…/{printer}/cmd/diag`. Off by default: a
    /// diagnostics run sends SNMP traffic and reveals device details.
    #[serde(default)]
    pub remote: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnmpVersion {
    V1,
    V2c,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The community used for GET and SET (a write community).
    pub community: Secret,
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

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: &str| ConfigError::Invalid {
            path: path.into(),
            field,
            message: message.into(),
        };
        if self.broker.host.trim().is_empty() {
            return Err(invalid("broker.host".into(), "must not be empty"));
        }
        if self.broker.port == 0 {
            return Err(invalid("broker.port".into(), "must not be 0"));
        }
        if self.broker.keep_alive_secs < 5 {
            return Err(invalid(
                "broker.keep_alive_secs".into(),
                "must be at least 5",
            ));
        }
        if self.broker.reconnect_min_ms == 0
            || self.broker.reconnect_min_ms > self.broker.reconnect_max_ms
        {
            return Err(invalid(
                "broker.reconnect_min_ms".into(),
                "must be > 0 and <= reconnect_max_ms",
            ));
        }
        if self.broker.password.is_some() && self.broker.username.is_none() {
            return Err(invalid(
                "broker.password".into(),
                "is set but broker.username is not",
            ));
        }
        if self.apply.max_set_attempts == 0 {
            return Err(invalid(
                "apply.max_set_attempts".into(),
                "must be at least 1",
            ));
        }
        let t = &self.telemetry;
        if t.interval_secs == 0 {
            return Err(invalid(
                "telemetry.interval_secs".into(),
                "must be at least 1",
            ));
        }
        if t.heartbeat_secs < t.interval_secs {
            return Err(invalid(
                "telemetry.heartbeat_secs".into(),
                "must be at least telemetry.interval_secs",
            ));
        }
        if t.concurrency == 0 {
            return Err(invalid(
                "telemetry.concurrency".into(),
                "must be at least 1",
            ));
        }
        if t.low_percent > 100 || t.supply_change_pct == 0 || t.supply_change_pct > 100 {
            return Err(invalid(
                "telemetry.low_percent".into(),
                "low_percent must be 0..=100 and supply_change_pct 1..=100",
            ));
        }
        let mut seen = HashSet::new();
        for (i, p) in self.printers.iter().enumerate() {
            let field = |f: &str| format!("printer[{i}] ({}).{f}", p.id);
            if !seen.insert(p.id.clone()) {
                return Err(invalid(field("id"), "duplicate printer id"));
            }
            if p.address.trim().is_empty() {
                return Err(invalid(field("address"), "must not be empty"));
            }
            if p.port == 0 {
                return Err(invalid(field("port"), "must not be 0"));
            }
            if p.community.expose().is_empty() {
                return Err(invalid(field("community"), "must not be empty"));
            }
            if !(10..=60_000).contains(&p.timeout_ms) {
                return Err(invalid(field("timeout_ms"), "must be between 10 and 60000"));
            }
            if p.retries > 10 {
                return Err(invalid(field("retries"), "must be at most 10"));
            }
        }
        Ok(())
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
    fn errors_name_the_file_and_field() {
        let cases = [
            (
                GOOD.replace("host = \"127.0.0.1\"", "hots = \"x\""),
                "unknown field `hots`",
            ),
            (GOOD.replace("port = 16100", "port = \"x\""), "invalid type"),
            (GOOD.replace("id = \"p1\"", "id = \"p/1\""), "'/'"),
            (
                GOOD.replace("community = \"private\"", "community = \"\""),
                "printer[0] (p1).community: must not be empty",
            ),
            (
                GOOD.replace("port = 16100", "port = 0"),
                "printer[0] (p1).port",
            ),
            (
                format!("{GOOD}\n[[printer]]\nid = \"p1\"\naddress = \"h\"\ncommunity = \"c\"\n"),
                "printer[1] (p1).id: duplicate",
            ),
            (
                GOOD.replace("tenant = \"acme\"\n", ""),
                "missing field `tenant`",
            ),
            (
                GOOD.replace("[broker]", "[broker]\npassword = \"pw\""),
                "broker.password",
            ),
            (
                format!("{GOOD}\n[telemetry]\ninterval_secs = 0\n"),
                "telemetry.interval_secs",
            ),
            (
                format!("{GOOD}\n[telemetry]\ninterval_secs = 120\nheartbeat_secs = 60\n"),
                "telemetry.heartbeat_secs",
            ),
            (
                format!("{GOOD}\n[telemetry]\nconcurrency = 0\n"),
                "telemetry.concurrency",
            ),
            (
                format!("{GOOD}\n[drift]\nevery = 5\n"),
                "unknown field `every`",
            ),
            (
                GOOD.replace("snmp", "x")
                    .replace("port = 16100", "port = 16100\nsnmp_version = \"v3\""),
                "unknown variant `v3`",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.starts_with("agent.toml"), "{err}");
            assert!(err.contains(want), "wanted {want:?} in {err}");
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
        assert!(err.contains("cafile"), "{err}");
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
