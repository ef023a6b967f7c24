//! `platen-cloud serve --config FILE`: the cloud's configuration file (TOML),
//! overridden by `PLATEN_…` environment variables (see [`platen_ops::config`]).
//!
//! The commented example is `packaging/cloud.example.toml`. Without `--config`, `serve`
//! takes its settings from command-line flags (the demo and the tests do).

use crate::engine::EngineConfig;
use crate::server::ServerConfig;
use platen_ops::config::{Check, ConfigFile, FieldPath};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use platen_ops::config::ConfigError;

/// Top-level keys that `PLATEN_…` variables may override.
pub const ENV_ROOTS: &[&str] = &[
    "state_dir",
    "catalog",
    "agents",
    "broker",
    "api",
    "provider",
    "engine",
    "signing",
    "ingest",
    "store",
    "webhooks",
    "fleet",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CloudConfig {
    /// Where the cloud keeps its embedded (sled) database: contracts, reports,
    /// ledger. Not used when `store.url` names a PostgreSQL database.
    pub state_dir: PathBuf,
    /// Plan catalog and migration rules; without one, plans come from the API and
    /// migrations are refused.
    pub catalog: Option<PathBuf>,
    /// Agent registry (which agent manages which printers; see
    /// `packaging/mosquitto/agents.example.toml`): reports and telemetry from any other
    /// agent are refused. Without one, any agent may report for any printer.
    pub agents: Option<PathBuf>,
    pub broker: Broker,
    #[serde(default)]
    pub api: Api,
    #[serde(default)]
    pub provider: Provider,
    #[serde(default)]
    pub engine: Engine,
    /// Sign desired configs (agents with trusted keys apply only signed ones).
    pub signing: Option<Signing>,
    #[serde(default)]
    pub ingest: Ingest,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub webhooks: WebhooksSection,
    #[serde(default)]
    pub fleet: FleetSection,
}

/// `[fleet]`: how the cloud judges its printers from telemetry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// A printer under contract with no reading newer than this is stale and
    /// reported as `printer.stale`; keep it above the agents' `telemetry.heartbeat_secs`.
    #[serde(default = "default_stale_after")]
    pub stale_after_secs: u64,
}

fn default_stale_after() -> u64 {
    crate::fleet::stale::DEFAULT_STALE_AFTER.as_secs()
}

impl Default for FleetSection {
    fn default() -> Self {
        FleetSection {
            stale_after_secs: default_stale_after(),
        }
    }
}

/// `[webhooks]`: how events are delivered to the endpoints (which are managed through
/// the API: `/v1/webhooks/endpoints`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WebhooksSection {
    /// How long a receiver has to answer one delivery.
    #[serde(default = "default_webhook_timeout")]
    pub timeout_secs: u64,
    /// The first retry delay; later ones are multiples of it (5 s, 30 s, 2 min, 10 min,
    /// 30 min, 1 h, 2 h, then every 4 h by default), for three days.
    #[serde(default = "default_first_retry")]
    pub first_retry_ms: u64,
}

fn default_webhook_timeout() -> u64 {
    crate::webhooks::WebhookConfig::default().timeout.as_secs()
}
fn default_first_retry() -> u64 {
    crate::webhooks::WebhookConfig::default()
        .first_retry
        .as_millis() as u64
}

impl Default for WebhooksSection {
    fn default() -> Self {
        WebhooksSection {
            timeout_secs: default_webhook_timeout(),
            first_retry_ms: default_first_retry(),
        }
    }
}

/// `[store]`: the production store. Without `url`, the embedded store in `state_dir`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `postgres://user:password@host:port/database[?sslmode=require]`. Shown as
    /// `[REDACTED]` (it may hold the password); also `PLATEN_STORE__URL`.
    pub url: Option<platen_ops::secret::Secret>,
    /// `[store.tls]`: the CA (and a client certificate) for TLS to the database.
    pub tls: Option<platen_ops::tls::TlsConfig>,
}

impl StoreSection {
    /// The database to use, if any, with its TLS client loaded (files checked now).
    pub fn database(&self) -> Result<Option<crate::store::Database>, String> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let tls = self
            .tls
            .as_ref()
            .map(platen_ops::tls::client_config)
            .transpose()
            .map_err(|e| format!("store.tls: {e}"))?;
        Ok(Some(crate::store::Database {
            url: url.clone(),
            tls,
        }))
    }
}

/// `[ingest]`: the per-printer telemetry rate limit.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    #[serde(default = "default_telemetry_burst")]
    pub telemetry_burst: u32,
    #[serde(default = "default_telemetry_per_minute")]
    pub telemetry_per_minute: u32,
    /// Telemetry samples read longer ago are removed (each printer's newest kept).
    #[serde(default = "default_retention_days")]
    pub telemetry_retention_days: u64,
    /// Reports of changes settled longer ago (unless a ledger entry refers to the
    /// change) and refused migrations decided longer ago are removed.
    #[serde(default = "default_history_retention_days")]
    pub history_retention_days: u64,
}

fn default_history_retention_days() -> u64 {
    crate::server::DEFAULT_HISTORY_RETENTION.as_secs() / 86400
}

fn default_retention_days() -> u64 {
    crate::server::DEFAULT_TELEMETRY_RETENTION.as_secs() / 86400
}

fn default_rate(
    kind: fn(crate::link::limits::IngestLimits) -> Option<crate::link::limits::Rate>,
) -> crate::link::limits::Rate {
    kind(crate::link::limits::IngestLimits::default()).unwrap_or(crate::link::limits::Rate {
        burst: 60,
        per_minute: 60,
    })
}
fn default_telemetry_burst() -> u32 {
    default_rate(|l| l.telemetry).burst
}
fn default_telemetry_per_minute() -> u32 {
    default_rate(|l| l.telemetry).per_minute
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            telemetry_burst: default_telemetry_burst(),
            telemetry_per_minute: default_telemetry_per_minute(),
            telemetry_retention_days: default_retention_days(),
            history_retention_days: default_history_retention_days(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Signing {
    /// Ed25519 private key, PKCS#8 PEM (`platen-cloud keygen` writes one). Must not be
    /// readable by group or others.
    pub key_file: PathBuf,
    /// The id agents know this key by (`[[signing.trusted_keys]] id`).
    pub key_id: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Broker {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Stable client id (the cloud keeps a persistent session). Each instance that
    /// shares a PostgreSQL store needs its own, kept across restarts: it names the
    /// instance's broker session and the work it claims.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// The MQTT shared-subscription group for reports and telemetry
    /// (`$share/<group>/…`). Default: `platen-cloud` with a PostgreSQL store (several
    /// instances share the stream), none with the embedded store; `""`: none.
    #[serde(default)]
    pub share_group: Option<String>,
    pub username: Option<String>,
    pub password: Option<platen_ops::secret::Secret>,
    /// `[broker.tls]`: CA, and a client certificate for brokers that require one.
    pub tls: Option<platen_ops::tls::TlsConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Api {
    /// The HTTP API's address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer tokens (hashed; `platen-cloud token new` makes them). Required unless
    /// `listen` is a loopback address; without it every local caller is the operator.
    pub tokens_file: Option<PathBuf>,
    /// A request's header must arrive within this (also on an idle keep-alive
    /// connection), or the connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// A whole request (body read, answer made) within this, or 408.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Open connections at most; beyond, new ones are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one address at most.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// How far before its request a contract or change may take effect.
    #[serde(default = "default_max_backdate")]
    pub max_backdate_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Provider {
    /// Base URL of the service provider.
    #[serde(default = "default_provider_url")]
    pub url: String,
    #[serde(default = "default_provider_timeout")]
    pub timeout_secs: u64,
    /// Upper bound of the retry backoff towards the provider.
    #[serde(default = "default_provider_retry_max")]
    pub retry_max_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Engine {
    /// How often open changes and scheduled migrations are re-examined.
    #[serde(default = "default_tick")]
    pub tick_ms: u64,
    /// A published config without a report after this long is a fault.
    #[serde(default = "default_deadline")]
    pub report_deadline_secs: u64,
    /// After a failed attempt, publish the settings again after this long.
    #[serde(default = "default_republish")]
    pub republish_after_secs: u64,
    /// How long an instance's claim on a change it steps holds: a change claimed by
    /// an instance that died is taken over by another one after this long.
    #[serde(default = "default_claim_lease")]
    pub claim_lease_secs: u64,
}

fn default_port() -> u16 {
    1883
}
fn default_client_id() -> String {
    "platen-cloud".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_provider_url() -> String {
    EngineConfig::default().provider_url
}
fn default_provider_timeout() -> u64 {
    EngineConfig::default().provider_timeout.as_secs()
}
fn default_provider_retry_max() -> u64 {
    EngineConfig::default().provider_retry_max.as_secs()
}
fn default_tick() -> u64 {
    EngineConfig::default().tick.as_millis() as u64
}
fn default_deadline() -> u64 {
    EngineConfig::default().report_deadline.as_secs()
}
fn default_republish() -> u64 {
    EngineConfig::default().republish_after.as_secs()
}
fn default_claim_lease() -> u64 {
    EngineConfig::default().claim_lease.as_secs()
}

/// The default shared-subscription group of instances on one PostgreSQL store.
pub const DEFAULT_SHARE_GROUP: &str = "platen-cloud";

fn default_header_timeout() -> u64 {
    crate::http::listener::ApiLimits::default()
        .header_timeout
        .as_secs()
}
fn default_request_timeout() -> u64 {
    crate::http::listener::ApiLimits::default()
        .request_timeout
        .as_secs()
}
fn default_max_connections() -> usize {
    crate::http::listener::ApiLimits::default().max_connections
}
fn default_max_connections_per_ip() -> usize {
    crate::http::listener::ApiLimits::default().max_connections_per_ip
}
fn default_max_backdate() -> u64 {
    crate::ops::DEFAULT_MAX_BACKDATE.num_seconds().max(0) as u64
}

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: default_listen(),
            tokens_file: None,
            header_timeout_secs: default_header_timeout(),
            request_timeout_secs: default_request_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_backdate_secs: default_max_backdate(),
        }
    }
}

impl Api {
    pub fn limits(&self) -> crate::http::listener::ApiLimits {
        crate::http::listener::ApiLimits {
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }

    pub fn policy(&self) -> crate::ops::Policy {
        crate::ops::Policy {
            max_backdate: chrono::Duration::seconds(
                i64::try_from(self.max_backdate_secs).unwrap_or(i64::MAX / 1000),
            ),
        }
    }
}

impl Ingest {
    pub fn limits(&self) -> crate::link::limits::IngestLimits {
        use crate::link::limits::Rate;
        crate::link::limits::IngestLimits {
            telemetry: Some(Rate {
                burst: self.telemetry_burst,
                per_minute: self.telemetry_per_minute,
            }),
        }
    }
}
impl Default for Provider {
    fn default() -> Self {
        Provider {
            url: default_provider_url(),
            timeout_secs: default_provider_timeout(),
            retry_max_secs: default_provider_retry_max(),
        }
    }
}
impl Default for Engine {
    fn default() -> Self {
        Engine {
            tick_ms: default_tick(),
            report_deadline_secs: default_deadline(),
            republish_after_secs: default_republish(),
            claim_lease_secs: default_claim_lease(),
        }
    }
}

impl ConfigFile for CloudConfig {
    const ENV_ROOTS: &'static [&'static str] = ENV_ROOTS;

    fn checks(&self) -> Vec<Check> {
        let mut out: Vec<Check> = Vec::new();
        let mut bad = |f: &str, m: &str| out.push((FieldPath::parse(f), m.to_string()));
        if self.broker.host.trim().is_empty() {
            bad("broker.host", "must not be empty");
        }
        if self.broker.port == 0 {
            bad("broker.port", "must not be 0");
        }
        if self.broker.client_id.trim().is_empty() {
            bad("broker.client_id", "must not be empty");
        }
        if let Some(g) = &self.broker.share_group {
            let ok = g.len() <= 64
                && g.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                bad(
                    "broker.share_group",
                    "at most 64 letters, digits, '.', '_' or '-' (\"\" for none)",
                );
            }
        }
        if !(1..=300).contains(&self.webhooks.timeout_secs) {
            bad("webhooks.timeout_secs", "must be 1 to 300");
        }
        if !(100..=3_600_000).contains(&self.webhooks.first_retry_ms) {
            bad("webhooks.first_retry_ms", "must be 100 to 3600000");
        }
        if !(60..=2_592_000).contains(&self.fleet.stale_after_secs) {
            bad("fleet.stale_after_secs", "must be 60 to 2592000 (30 days)");
        }
        if self.engine.claim_lease_secs < 5 {
            bad("engine.claim_lease_secs", "must be at least 5");
        }
        if let Some(url) = &self.store.url {
            let u = url.expose();
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                bad("store.url", "must start with postgres:// or postgresql://");
            }
        }
        if self.store.tls.is_some() && self.store.url.is_none() {
            bad("store.tls", "is set but store.url is not");
        }
        if self.broker.password.is_some() && self.broker.username.is_none() {
            bad("broker.password", "is set but broker.username is not");
        }
        let url = &self.provider.url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bad("provider.url", "must start with http:// or https://");
        }
        if self.provider.timeout_secs == 0 {
            bad("provider.timeout_secs", "must be at least 1");
        }
        if self.api.tokens_file.is_none() && !self.api.listen.ip().is_loopback() {
            bad(
                "api.tokens_file",
                "is required when api.listen is not a loopback address",
            );
        }
        if self.engine.tick_ms < 10 {
            bad("engine.tick_ms", "must be at least 10");
        }
        if self.engine.report_deadline_secs == 0 {
            bad("engine.report_deadline_secs", "must be at least 1");
        }
        if self.api.header_timeout_secs == 0 {
            bad("api.header_timeout_secs", "must be at least 1");
        }
        if self.api.request_timeout_secs == 0 {
            bad("api.request_timeout_secs", "must be at least 1");
        }
        if self.api.max_connections == 0 {
            bad("api.max_connections", "must be at least 1");
        }
        if self.api.max_connections_per_ip == 0 {
            bad("api.max_connections_per_ip", "must be at least 1");
        }
        if self.api.max_backdate_secs > 366 * 86400 {
            bad("api.max_backdate_secs", "must be at most a year (31622400)");
        }
        if self.ingest.history_retention_days < 1 {
            bad("ingest.history_retention_days", "must be at least 1");
        }
        if self.ingest.telemetry_retention_days < 62 {
            bad(
                "ingest.telemetry_retention_days",
                "must be at least 62 (the open and the previous billing period)",
            );
        }
        for (f, v) in [
            ("ingest.telemetry_burst", self.ingest.telemetry_burst),
            (
                "ingest.telemetry_per_minute",
                self.ingest.telemetry_per_minute,
            ),
        ] {
            if v == 0 {
                bad(f, "must be at least 1");
            }
        }
        out
    }
}

impl CloudConfig {
    /// The server's settings; the catalog is loaded by the caller (it has its own
    /// checks and messages).
    pub fn server(
        &self,
        catalog: Option<crate::plans::catalog::Catalog>,
        broker_auth: crate::BrokerAuth,
        signer: Option<std::sync::Arc<platen_protocol::Signer>>,
        registry: Option<std::sync::Arc<crate::link::agents::Registry>>,
        database: Option<crate::store::Database>,
    ) -> ServerConfig {
        let shared_store = database.is_some();
        ServerConfig {
            database,
            broker_auth,
            signer,
            registry,
            broker_host: self.broker.host.clone(),
            broker_port: self.broker.port,
            client_id: self.broker.client_id.clone(),
            share_group: match (&self.broker.share_group, shared_store) {
                (Some(g), _) if g.is_empty() => None,
                (Some(g), _) => Some(g.clone()),
                (None, true) => Some(DEFAULT_SHARE_GROUP.to_string()),
                (None, false) => None,
            },
            state_dir: self.state_dir.clone(),
            api_listen: self.api.listen,
            engine: EngineConfig {
                tick: Duration::from_millis(self.engine.tick_ms),
                report_deadline: Duration::from_secs(self.engine.report_deadline_secs),
                republish_after: Duration::from_secs(self.engine.republish_after_secs),
                provider_url: self.provider.url.clone(),
                provider_timeout: Duration::from_secs(self.provider.timeout_secs),
                provider_retry_max: Duration::from_secs(self.provider.retry_max_secs),
                claim_lease: Duration::from_secs(self.engine.claim_lease_secs),
            },
            webhooks: crate::webhooks::WebhookConfig {
                timeout: Duration::from_secs(self.webhooks.timeout_secs),
                first_retry: Duration::from_millis(self.webhooks.first_retry_ms),
                tick: Duration::from_millis(self.engine.tick_ms).max(Duration::from_millis(200)),
                claim_lease: Duration::from_secs(self.engine.claim_lease_secs),
            },
            stale_after: Duration::from_secs(self.fleet.stale_after_secs),
            catalog,
            tokens_file: self.api.tokens_file.clone(),
            api_limits: self.api.limits(),
            policy: self.api.policy(),
            ingest_limits: self.ingest.limits(),
            telemetry_retention: Duration::from_secs(
                self.ingest.telemetry_retention_days.saturating_mul(86400),
            ),
            history_retention: Duration::from_secs(
                self.ingest.history_retention_days.saturating_mul(86400),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const EXAMPLE: &str = include_str!("../../packaging/cloud.example.toml");

    #[test]
    fn the_example_is_valid_and_documents_every_setting() {
        let (c, _) = CloudConfig::parse_text(EXAMPLE, Path::new("cloud.toml"), &[]).unwrap();
        let s = c.server(None, Default::default(), None, None, None);
        assert_eq!(s.engine.report_deadline, Duration::from_secs(60));
        let shown = toml::to_string(&c).unwrap();
        for line in shown.lines() {
            let Some((key, _)) = line.split_once(" = ") else {
                continue;
            };
            let documented = EXAMPLE.lines().any(|l| {
                l.trim_start()
                    .trim_start_matches('#')
                    .trim_start()
                    .starts_with(&format!("{key} ="))
            });
            assert!(documented, "{key} is not in packaging/cloud.example.toml");
        }
    }

    #[test]
    fn problems_and_overrides() {
        let mut env = vec![("PLATEN_API__LISTEN".to_string(), "0.0.0.0:9000".to_string())];
        // Beyond loopback, the API needs its tokens.
        let err = CloudConfig::parse_text(EXAMPLE, Path::new("cloud.toml"), &env)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("api.tokens_file: is required when api.listen is not a loopback address"),
            "{err}"
        );
        env.push((
            "PLATEN_API__TOKENS_FILE".to_string(),
            "/etc/platen/tokens.toml".to_string(),
        ));
        let (c, _) = CloudConfig::parse_text(EXAMPLE, Path::new("cloud.toml"), &env).unwrap();
        assert_eq!(c.api.listen.port(), 9000);
        let bad = EXAMPLE
            .replace("url = \"http://127.0.0.1:8090\"", "url = \"ftp://x\"")
            .replace("tick_ms = 500", "tick_ms = 1\ntik = 2");
        let err = CloudConfig::parse_text(&bad, Path::new("cloud.toml"), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("engine.tik: unknown key"), "{err}");
        assert!(err.contains("provider.url: must start with"), "{err}");
        assert!(err.contains("engine.tick_ms: must be at least 10"), "{err}");
        assert_eq!(err.lines().count(), 3, "{err}");
    }

    /// Instances on PostgreSQL share the stream as `platen-cloud` unless told
    /// otherwise; the embedded store subscribes plainly; a group that would break
    /// the `$share/<group>/…` filter is refused.
    #[test]
    fn share_group_defaults_by_store_and_is_checked() {
        let parse = |extra: &str| {
            let text = EXAMPLE.replace("[broker]\n", &format!("[broker]\n{extra}"));
            CloudConfig::parse_text(&text, Path::new("cloud.toml"), &[])
        };
        let db = || {
            Some(crate::store::Database {
                url: platen_ops::secret::Secret::new("postgres://x@h/d"),
                tls: None,
            })
        };
        let group = |extra: &str, database| {
            let (c, _) = parse(extra).unwrap();
            c.server(None, Default::default(), None, None, database)
                .share_group
        };
        assert_eq!(group("", db()).as_deref(), Some(DEFAULT_SHARE_GROUP));
        assert_eq!(group("", None), None);
        assert_eq!(group("share_group = \"\"\n", db()), None);
        assert_eq!(
            group("share_group = \"site-a\"\n", None).as_deref(),
            Some("site-a")
        );
        let err = parse("share_group = \"a/#\"\n").err().unwrap().to_string();
        assert!(err.contains("broker.share_group"), "{err}");
    }
}
