//! `platen-cloud` command line.
//!
//! `serve` runs the cloud: MQTT (reports and telemetry in, desired configs out), the
//! setup and compensation engine, the migration scheduler, and the HTTP API.
//! `catalog check` validates a catalog file locally. `reseller`, `tenant`, `plan`,
//! `contract`, `ledger`, `catalog show`, `migrate` and `migrations` are clients of the
//! API (`--api`). `publish`, `collect` and `reports` talk MQTT directly (diagnostics).

use clap::{Parser, Subcommand};
use platen_cloud::{Cloud, ReportEvent};
use platen_protocol::{DesiredConfig, Id, SettingValue};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "platen-cloud", version = platen_ops::version::long(), about = "Platen cloud stub")]
struct Cli {
    #[command(flatten)]
    log: platen_ops::logging::LogArgs,
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883, global = true)]
    port: u16,
    /// Where reports are stored.
    #[arg(long, default_value = "./platen-cloud-state", global = true)]
    state_dir: PathBuf,
    /// The production store: `postgres://user:password@host:port/database` (better in
    /// the environment than on the command line). Without it: sled in --state-dir.
    /// `serve --config` takes `store.url` from its file (or this variable) instead.
    #[arg(long, env = "PLATEN_STORE__URL", hide_env_values = true, global = true)]
    store_url: Option<String>,
    /// MQTT client id (stable, for a persistent session).
    #[arg(long, default_value = "platen-cloud", global = true)]
    client_id: String,
    /// The HTTP API, for the tenant, plan, contract and ledger commands.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    api: String,
    /// API bearer token (better in the environment than on the command line, where
    /// other local users can see it). Its actor decides what the commands may do.
    #[arg(long, env = "PLATEN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a desired config (retained) for one printer.
    Publish {
        #[arg(long)]
        tenant: Id,
        #[arg(long)]
        printer: Id,
        #[arg(long)]
        version: u64,
        /// NAME=VALUE; a value that parses as an integer is sent as one.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        settings: Vec<String>,
    },
    /// Collect reports and print each new one as a JSON line.
    Collect {
        /// Exit after this many new reports.
        #[arg(long)]
        count: Option<u64>,
        /// Exit (status 1) if they have not arrived within this many seconds.
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
    /// Print every stored report as a JSON line.
    Reports,
    /// Run the cloud: report collection, setup engine, compensation, HTTP API.
    /// Prints `api <address>` then `ready`; SIGTERM or Ctrl-C stops it.
    /// With --config, every setting comes from that file (and PLATEN_… variables)
    /// and the other flags are ignored.
    Serve {
        /// Configuration file (see packaging/cloud.example.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        api_listen: std::net::SocketAddr,
        /// Base URL of the service provider.
        #[arg(long, default_value = "http://127.0.0.1:8090")]
        provider_url: String,
        /// A published config without a report after this long is a fault.
        #[arg(long, default_value_t = 60)]
        report_deadline_secs: u64,
        /// After a failed attempt, publish the settings again after this long.
        #[arg(long, default_value_t = 30)]
        republish_after_secs: u64,
        /// How often open changes and scheduled migrations are re-examined.
        #[arg(long, default_value_t = 500)]
        tick_ms: u64,
        /// How long this instance's claim on a change holds: another instance takes
        /// over the changes of one that died this long after.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        claim_lease_secs: u64,
        /// How long a webhook receiver has to answer one delivery.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        webhook_timeout_secs: u64,
        /// The first webhook retry delay; later ones are multiples of it (5 s, 30 s,
        /// 2 min, … every 4 h by default), for three days.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
        webhook_first_retry_ms: u64,
        /// A printer under contract with no reading newer than this is stale
        /// (`printer.stale`); keep it above the agents' telemetry heartbeat.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
        stale_after_secs: u64,
        /// Plan catalog and migration rules (TOML; see packaging/catalog.example.toml).
        /// Without one, plans are created through the API and migrations are refused.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Sign desired configs with this Ed25519 key (PKCS#8 PEM, mode 600).
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// The id agents know the signing key by.
        #[arg(long, default_value = "cloud-1")]
        signing_key_id: String,
        /// Agent registry: reports and telemetry only from each printer's own agent.
        #[arg(long)]
        agents: Option<PathBuf>,
        /// API bearer tokens (hashed; `platen-cloud token new`). Without it the API is
        /// open to local callers and refuses to listen beyond loopback.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// How far before its request a contract or change may take effect.
        #[arg(long, default_value_t = 86400)]
        max_backdate_secs: u64,
        /// A request's header must arrive within this, or the connection is closed.
        #[arg(long, default_value_t = 10)]
        api_header_timeout_secs: u64,
        /// Open API connections from one address at most.
        #[arg(long, default_value_t = 256)]
        api_max_connections_per_ip: usize,
        /// A whole request (body read, answer made) within this, or 408.
        #[arg(long, default_value_t = 30)]
        api_request_timeout_secs: u64,
        /// Retire this instance from its shared-subscription group: start, take in
        /// what the broker kept in its session, unsubscribe, take in the rest, exit.
        /// With --config too.
        #[arg(long)]
        leave_group: bool,
    },
    /// Move an install between stores.
    Store {
        #[command(subcommand)]
        command: StoreCmd,
    },
    /// The PostgreSQL store's schema.
    Db {
        #[command(subcommand)]
        command: DbCmd,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Print Mosquitto's ACL file for the agent registry (see packaging/mosquitto/).
    BrokerAcl {
        /// The agent registry (packaging/mosquitto/agents.example.toml).
        #[arg(long)]
        agents: PathBuf,
        /// The cloud's MQTT user name (its client certificate's CN).
        #[arg(long, default_value = "platen-cloud")]
        cloud_user: String,
    },
    /// Make a new Ed25519 signing key: writes the private key to FILE (mode 600,
    /// refuses to overwrite) and prints the `[[signing.trusted_keys]]` entry for agents.
    Keygen {
        /// Where to write the private key.
        file: PathBuf,
        /// The key's id (say, the month it was made: cloud-2026-11).
        #[arg(long)]
        id: String,
    },
    /// The configuration file: check it, or show the effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// The plan catalog: check a file (locally), or show the loaded one (API).
    Catalog {
        #[command(subcommand)]
        command: CatalogCmd,
    },
    /// Resellers (HTTP API client).
    Reseller {
        #[command(subcommand)]
        command: ResellerCmd,
    },
    /// Request a plan migration; the catalog's rules decide (HTTP API client).
    /// Exit 0 accepted (or a dry run), 1 refused or an error, 2 no API.
    Migrate {
        #[arg(long)]
        tenant: Id,
        /// Needed when the tenant has more than one contract.
        #[arg(long)]
        contract: Option<Id>,
        /// The target plan.
        #[arg(long)]
        plan: Id,
        /// Show the decision, the rule and the usage; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Scheduled, executed, refused and cancelled migrations (HTTP API client).
    Migrations {
        #[command(subcommand)]
        command: MigrationsCmd,
    },
    /// Tenants (HTTP API client).
    Tenant {
        #[command(subcommand)]
        command: TenantCmd,
    },
    /// Plans (HTTP API client).
    Plan {
        #[command(subcommand)]
        command: PlanCmd,
    },
    /// Contracts (HTTP API client).
    Contract {
        #[command(subcommand)]
        command: ContractCmd,
    },
    /// List the compensation ledger (HTTP API client); with --period, the finance
    /// export of that billing period (decimal amounts, totals per currency).
    Ledger {
        #[arg(long)]
        contract: Option<Id>,
        #[arg(long)]
        tenant: Option<Id>,
        /// A billing period, YYYY-MM: export it instead of listing.
        #[arg(long)]
        period: Option<String>,
        /// The export's format: json or csv.
        #[arg(long, default_value = "json", requires = "period")]
        format: String,
    },
    /// Webhook endpoints, events and deliveries (HTTP API client; the operator's).
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCmd,
    },
}

#[derive(Subcommand)]
enum WebhooksCmd {
    /// Create an endpoint; prints it with its secret (shown this once).
    Create {
        #[arg(long)]
        id: Id,
        #[arg(long)]
        url: String,
        /// Event types to deliver (repeat or comma-separate); none: every type.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
    },
    /// List the endpoints (without secrets).
    List,
    /// A new secret for an endpoint; the old ones keep signing for --keep-old-secs.
    Rotate {
        id: Id,
        #[arg(long, default_value_t = 86400)]
        keep_old_secs: i64,
    },
    /// Stop delivering to an endpoint (its events are kept).
    Disable { id: Id },
    /// Deliver to an endpoint again.
    Enable { id: Id },
    /// Events in the order written, after the N-th.
    Events {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One event with its deliveries and their attempts.
    Event { id: String },
    /// Deliveries in a state: pending, delivered or failed.
    Deliveries {
        #[arg(long, default_value = "pending")]
        state: String,
    },
    /// Deliver one event again (--event), or every event since a time (--since).
    Replay {
        #[arg(long, conflicts_with = "since", required_unless_present = "since")]
        event: Option<String>,
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(Subcommand)]
enum TenantCmd {
    Create {
        #[arg(long)]
        id: Id,
        #[arg(long)]
        name: String,
        /// The reseller that may order migrations for this tenant.
        #[arg(long)]
        reseller: Option<Id>,
    },
    List,
}

#[derive(Subcommand)]
enum ResellerCmd {
    Create {
        #[arg(long)]
        id: Id,
        #[arg(long)]
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum CatalogCmd {
    /// Validate a catalog file: every problem with its line. Exit 0 valid (warnings
    /// allowed), 1 invalid, 2 unreadable.
    Check { file: PathBuf },
    /// The catalog the running cloud loaded.
    Show,
}

#[derive(Subcommand)]
enum MigrationsCmd {
    List {
        #[arg(long)]
        tenant: Option<Id>,
        #[arg(long)]
        contract: Option<Id>,
        /// refused, scheduled, executed, cancelled or superseded.
        #[arg(long)]
        state: Option<String>,
    },
    Show {
        id: String,
    },
    /// Cancel a scheduled migration.
    Cancel {
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a token: prints it once (give it to its holder) and the `[[token]]` block
    /// (only its hash) to append to the tokens file.
    New {
        /// A name for logs (who holds it).
        #[arg(long)]
        name: String,
        /// operator, tenant:ID or reseller:ID.
        #[arg(long)]
        actor: String,
    },
}

#[derive(Subcommand)]
enum PlanCmd {
    /// Create a plan from a JSON or TOML file (see packaging/plan.example.toml).
    Create {
        file: PathBuf,
    },
    List,
}

#[derive(Subcommand)]
enum ContractCmd {
    /// List contracts (every page), optionally of one tenant or reseller.
    List {
        #[arg(long)]
        tenant: Option<Id>,
        #[arg(long)]
        reseller: Option<Id>,
    },
    Create {
        #[arg(long)]
        id: Id,
        #[arg(long)]
        tenant: Id,
        #[arg(long = "printer", required = true)]
        printers: Vec<Id>,
        #[arg(long)]
        plan: Id,
        /// RFC 3339; default now.
        #[arg(long)]
        effective_at: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        #[arg(long)]
        currency: String,
        /// NAME=VALUE overrides on the plan's config template.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        settings: Vec<String>,
        /// Minimum term in billing periods (default: month to month).
        #[arg(long)]
        term_months: Option<u32>,
    },
    /// Change settings (plan changes: `platen-cloud migrate`).
    Change {
        id: Id,
        #[arg(long = "set", value_name = "NAME=VALUE", required = true)]
        settings: Vec<String>,
        #[arg(long)]
        effective_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Status: plan, changes, faults, page caps, credits.
    Show { id: Id },
    /// Pages used this period, from telemetry, as the migration rules see them.
    Usage { id: Id },
    /// The evidence timeline.
    Timeline { id: Id },
}

fn settings_map(list: &[String]) -> Result<BTreeMap<String, SettingValue>, String> {
    list.iter()
        .map(|s| parse_setting(s).map_err(|e| format!("--set {e}")))
        .collect()
}

/// The API token (`--token` / `PLATEN_TOKEN`), set once in `main`.
static TOKEN: std::sync::OnceLock<Option<platen_ops::secret::Secret>> = std::sync::OnceLock::new();

/// Call the API with the token; print the JSON answer (pretty) or the error.
/// Exit 0 / 1 / 2.
async fn call(method: reqwest::Method, url: String, body: Option<serde_json::Value>) -> ExitCode {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Lists come in pages: follow `Link: <…>; rel="next"` and print them as one.
    let origin = url.find("/v1/").map(|i| url[..i].to_string());
    let mut next_url = Some(url);
    let mut pages: Vec<serde_json::Value> = Vec::new();
    while let Some(url) = next_url.take() {
        let mut req = client.request(method.clone(), &url);
        if let Some(Some(t)) = TOKEN.get() {
            req = req.bearer_auth(t.expose());
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cannot reach the API at {url}: {e}");
                return ExitCode::from(2);
            }
        };
        let status = resp.status();
        let next = resp
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.strip_prefix('<')?.split_once(">; rel=\"next\""))
            .map(|(path, _)| path.to_string());
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str::<serde_json::Value>(&text).ok();
        if !status.is_success() {
            let pretty = value
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(text);
            eprintln!("HTTP {status}\n{pretty}");
            return ExitCode::FAILURE;
        }
        match (value, next, &origin) {
            (Some(serde_json::Value::Array(items)), Some(path), Some(origin)) => {
                pages.extend(items);
                next_url = Some(format!("{origin}{path}"));
            }
            (Some(serde_json::Value::Array(items)), _, _) => pages.extend(items),
            (Some(v), _, _) => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return ExitCode::SUCCESS;
            }
            (None, _, _) => {
                // Text as it came (a CSV export ends with its own newline).
                if text.ends_with('\n') {
                    print!("{text}");
                } else {
                    println!("{text}");
                }
                return ExitCode::SUCCESS;
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::Value::Array(pages)).unwrap_or_default()
    );
    ExitCode::SUCCESS
}

fn read_plan(file: &std::path::Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if file.extension().is_some_and(|e| e == "toml") {
        let v: toml::Value =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        serde_json::to_value(v).map_err(|e| format!("{}: {e}", file.display()))
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
    }
}

async fn client(api: String, command: Command) -> ExitCode {
    let api = api.trim_end_matches('/').to_string();
    use reqwest::Method;
    let fail = |e: String| {
        eprintln!("{e}");
        ExitCode::from(2)
    };
    match command {
        Command::Tenant {
            command: TenantCmd::Create { id, name, reseller },
        } => {
            let mut body = serde_json::json!({"id": id, "name": name});
            if let Some(r) = reseller {
                body["reseller"] = serde_json::json!(r);
            }
            call(Method::POST, format!("{api}/v1/tenants"), Some(body)).await
        }
        Command::Reseller {
            command: ResellerCmd::Create { id, name },
        } => {
            call(
                Method::POST,
                format!("{api}/v1/resellers"),
                Some(serde_json::json!({"id": id, "name": name})),
            )
            .await
        }
        Command::Reseller {
            command: ResellerCmd::List,
        } => call(Method::GET, format!("{api}/v1/resellers"), None).await,
        Command::Catalog {
            command: CatalogCmd::Show,
        } => call(Method::GET, format!("{api}/v1/catalog"), None).await,
        Command::Migrate {
            tenant,
            contract,
            plan,
            dry_run,
        } => {
            let body = serde_json::json!({"tenant": tenant, "contract": contract, "plan": plan, "dry_run": dry_run});
            call(Method::POST, format!("{api}/v1/migrations"), Some(body)).await
        }
        Command::Migrations {
            command:
                MigrationsCmd::List {
                    tenant,
                    contract,
                    state,
                },
        } => {
            let q: Vec<String> = [
                ("tenant", tenant.map(|t| t.to_string())),
                ("contract", contract.map(|c| c.to_string())),
                ("state", state),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
            .collect();
            call(
                Method::GET,
                format!("{api}/v1/migrations?{}", q.join("&")),
                None,
            )
            .await
        }
        Command::Migrations {
            command: MigrationsCmd::Show { id },
        } => call(Method::GET, format!("{api}/v1/migrations/{id}"), None).await,
        Command::Migrations {
            command: MigrationsCmd::Cancel { id },
        } => call(Method::DELETE, format!("{api}/v1/migrations/{id}"), None).await,
        Command::Contract {
            command: ContractCmd::List { tenant, reseller },
        } => {
            let mut q = Vec::new();
            if let Some(t) = tenant {
                q.push(format!("tenant={t}"));
            }
            if let Some(r) = reseller {
                q.push(format!("reseller={r}"));
            }
            call(
                Method::GET,
                format!("{api}/v1/contracts?{}", q.join("&")),
                None,
            )
            .await
        }
        Command::Contract {
            command: ContractCmd::Usage { id },
        } => call(Method::GET, format!("{api}/v1/contracts/{id}/usage"), None).await,
        Command::Tenant {
            command: TenantCmd::List,
        } => call(Method::GET, format!("{api}/v1/tenants"), None).await,
        Command::Plan {
            command: PlanCmd::Create { file },
        } => match read_plan(&file) {
            Ok(v) => call(Method::POST, format!("{api}/v1/plans"), Some(v)).await,
            Err(e) => fail(e),
        },
        Command::Plan {
            command: PlanCmd::List,
        } => call(Method::GET, format!("{api}/v1/plans"), None).await,
        Command::Contract {
            command:
                ContractCmd::Create {
                    id,
                    tenant,
                    printers,
                    plan,
                    effective_at,
                    time_zone,
                    currency,
                    settings,
                    term_months,
                },
        } => {
            let settings = match settings_map(&settings) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let body = serde_json::json!({
                "id": id, "tenant": tenant, "printers": printers, "plan": plan,
                "effective_at": effective_at, "time_zone": time_zone, "currency": currency, "settings": settings,
                "term_months": term_months,
            });
            call(Method::POST, format!("{api}/v1/contracts"), Some(body)).await
        }
        Command::Contract {
            command:
                ContractCmd::Change {
                    id,
                    settings,
                    effective_at,
                },
        } => {
            let settings = match settings_map(&settings) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let body = serde_json::json!({"settings": settings, "effective_at": effective_at});
            call(
                Method::POST,
                format!("{api}/v1/contracts/{id}/changes"),
                Some(body),
            )
            .await
        }
        Command::Contract {
            command: ContractCmd::Show { id },
        } => call(Method::GET, format!("{api}/v1/contracts/{id}"), None).await,
        Command::Contract {
            command: ContractCmd::Timeline { id },
        } => {
            call(
                Method::GET,
                format!("{api}/v1/contracts/{id}/timeline"),
                None,
            )
            .await
        }
        Command::Ledger {
            tenant,
            period: Some(period),
            format,
            ..
        } => {
            let mut q = vec![format!("period={period}"), format!("format={format}")];
            if let Some(t) = tenant {
                q.push(format!("tenant={t}"));
            }
            call(
                Method::GET,
                format!("{api}/v1/ledger/export?{}", q.join("&")),
                None,
            )
            .await
        }
        Command::Ledger {
            contract, tenant, ..
        } => {
            let mut q = Vec::new();
            if let Some(c) = contract {
                q.push(format!("contract={c}"));
            }
            if let Some(t) = tenant {
                q.push(format!("tenant={t}"));
            }
            call(
                Method::GET,
                format!("{api}/v1/ledger?{}", q.join("&")),
                None,
            )
            .await
        }
        Command::Webhooks { command } => {
            let url = |p: &str| format!("{api}/v1/webhooks/{p}");
            match command {
                WebhooksCmd::Create {
                    id,
                    url: to,
                    events,
                } => {
                    let body = serde_json::json!({"id": id, "url": to, "events": events});
                    call(Method::POST, url("endpoints"), Some(body)).await
                }
                WebhooksCmd::List => call(Method::GET, url("endpoints"), None).await,
                WebhooksCmd::Rotate { id, keep_old_secs } => {
                    let body = serde_json::json!({ "keep_old_secs": keep_old_secs });
                    call(
                        Method::POST,
                        url(&format!("endpoints/{id}/rotate")),
                        Some(body),
                    )
                    .await
                }
                WebhooksCmd::Disable { id } => {
                    call(Method::POST, url(&format!("endpoints/{id}/disable")), None).await
                }
                WebhooksCmd::Enable { id } => {
                    call(Method::POST, url(&format!("endpoints/{id}/enable")), None).await
                }
                WebhooksCmd::Events { after, limit } => {
                    call(
                        Method::GET,
                        url(&format!("events?after={after}&limit={limit}")),
                        None,
                    )
                    .await
                }
                WebhooksCmd::Event { id } => {
                    call(Method::GET, url(&format!("events/{id}")), None).await
                }
                WebhooksCmd::Deliveries { state } => {
                    call(Method::GET, url(&format!("deliveries?state={state}")), None).await
                }
                WebhooksCmd::Replay { event, since } => {
                    let body = match (event, since) {
                        (Some(e), _) => serde_json::json!({ "event": e }),
                        (None, Some(t)) => serde_json::json!({ "since": t }),
                        (None, None) => return fail("give --event or --since".into()),
                    };
                    call(Method::POST, url("replay"), Some(body)).await
                }
            }
        }
        _ => fail("not an API command".into()),
    }
}

/// TLS and credentials for the broker from `[broker]`.
fn broker_auth(b: &platen_cloud::config::Broker) -> Result<platen_cloud::BrokerAuth, String> {
    let tls = b
        .tls
        .as_ref()
        .map(platen_ops::tls::client_config)
        .transpose()
        .map_err(|e| format!("broker.tls: {e}"))?;
    Ok(platen_cloud::BrokerAuth {
        tls,
        username: b.username.clone(),
        password: b.password.clone(),
    })
}

fn load_registry(
    file: &std::path::Path,
) -> Result<std::sync::Arc<platen_cloud::link::agents::Registry>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("agent registry {}: cannot read: {e}", file.display()))?;
    platen_cloud::link::agents::Registry::parse(&text)
        .map(std::sync::Arc::new)
        .map_err(|e| format!("agent registry {}: {e}", file.display()))
}

/// The signing key, refusing a file others can read.
fn load_signer(
    file: &std::path::Path,
    key_id: &str,
) -> Result<std::sync::Arc<platen_protocol::Signer>, String> {
    platen_ops::tls::check_private(file).map_err(|e| format!("signing key: {e}"))?;
    let pem = std::fs::read_to_string(file)
        .map_err(|e| format!("signing key {}: cannot read: {e}", file.display()))?;
    platen_protocol::Signer::from_pem(key_id, &pem)
        .map(std::sync::Arc::new)
        .map_err(|e| format!("signing key {}: {e}", file.display()))
}

fn token_new(name: &str, actor: &str) -> ExitCode {
    if let Err(e) = actor.parse::<platen_cloud::model::Actor>() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let token = match platen_cloud::http::auth::new_token() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("token: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("# the token (shown once; the cloud keeps only its hash):");
    println!("{token}");
    println!("# append to the tokens file:");
    println!("[[token]]");
    println!("name = {name:?}");
    println!("actor = {actor:?}");
    println!(
        "sha256 = \"{}\"",
        platen_cloud::http::auth::hash_token(&token)
    );
    ExitCode::SUCCESS
}

fn keygen(file: &std::path::Path, id: &str) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let made = platen_protocol::Signer::generate_pem()
        .and_then(|pem| platen_protocol::Signer::from_pem(id, &pem).map(|s| (pem, s)));
    let (pem, signer) = match made {
        Ok(x) => x,
        Err(e) => {
            eprintln!("keygen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(pem.as_bytes()).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        eprintln!("keygen: {}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    println!("# private key written to {} (mode 600)", file.display());
    println!("# for each agent's config:");
    println!("[[signing.trusted_keys]]");
    println!("id = \"{}\"", signer.key_id());
    println!("public_key = \"{}\"", signer.public_key_base64());
    ExitCode::SUCCESS
}

/// `serve`'s security settings from flags.
struct ServeExtras {
    signer: Option<std::sync::Arc<platen_protocol::Signer>>,
    registry: Option<std::sync::Arc<platen_cloud::link::agents::Registry>>,
    tokens_file: Option<PathBuf>,
    /// Limits and policy (the listen address and tokens come from their own flags).
    api: platen_cloud::config::Api,
    /// `--leave-group`: retire the instance instead of serving.
    leave_group: bool,
    webhooks: platen_cloud::webhooks::WebhookConfig,
    stale_after: Duration,
}

async fn serve(
    cli: &Cli,
    api_listen: std::net::SocketAddr,
    engine: platen_cloud::engine::EngineConfig,
    catalog: Option<&std::path::Path>,
    extras: ServeExtras,
) -> ExitCode {
    let catalog = match catalog.map(load_catalog).transpose() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let database = cli_database(cli);
    let cfg = platen_cloud::server::ServerConfig {
        broker_host: cli.host.clone(),
        broker_port: cli.port,
        client_id: cli.client_id.clone(),
        // Instances on one database share the report stream.
        share_group: database
            .is_some()
            .then(|| platen_cloud::config::DEFAULT_SHARE_GROUP.to_string()),
        broker_auth: Default::default(),
        database,
        signer: extras.signer,
        registry: extras.registry,
        tokens_file: extras.tokens_file,
        state_dir: cli.state_dir.clone(),
        api_listen,
        engine,
        webhooks: extras.webhooks,
        stale_after: extras.stale_after,
        catalog,
        api_limits: extras.api.limits(),
        policy: extras.api.policy(),
        ingest_limits: Default::default(),
        telemetry_retention: platen_cloud::server::DEFAULT_TELEMETRY_RETENTION,
        history_retention: platen_cloud::server::DEFAULT_HISTORY_RETENTION,
    };
    run_server(cfg, extras.leave_group).await
}

async fn run_server(cfg: platen_cloud::server::ServerConfig, leave_group: bool) -> ExitCode {
    let server = match platen_cloud::server::Server::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("platen-cloud: {e}");
            return ExitCode::FAILURE;
        }
    };
    if leave_group {
        if !server.cloud.wait_connected(Duration::from_secs(30)).await {
            eprintln!("platen-cloud: --leave-group: the broker did not answer within 30 s");
            server.shutdown().await;
            return ExitCode::FAILURE;
        }
        let left = server.cloud.leave_group(Duration::from_secs(3)).await;
        server.shutdown().await;
        return match left {
            Some(n) => {
                println!("left the shared-subscription group: {n} messages taken in");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("platen-cloud: --leave-group: this instance is in no shared-subscription group (no store.url, or broker.share_group = \"\")");
                ExitCode::from(2)
            }
        };
    }
    println!("api {}", server.api_addr());
    println!("ready");
    platen_ops::systemd::ready(&format!("API on {}", server.api_addr()));
    // The watchdog proves the runtime still schedules tasks.
    let watchdog = platen_ops::systemd::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            loop {
                platen_ops::systemd::watchdog();
                tokio::time::sleep(every).await;
            }
        })
    });
    wait_for_signal().await;
    platen_ops::systemd::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// The database of the global --store-url (or PLATEN_STORE__URL), if any.
fn cli_database(cli: &Cli) -> Option<platen_cloud::store::Database> {
    cli.store_url
        .as_ref()
        .map(|u| platen_cloud::store::Database {
            url: platen_ops::secret::Secret::new(u.clone()),
            tls: None,
        })
}

/// The database a config file names (store.url, or PLATEN_STORE__URL), its TLS
/// loaded; a file holding the URL must not be readable by every user.
fn config_database(
    cfg: &platen_cloud::config::CloudConfig,
    file: &std::path::Path,
) -> Result<Option<platen_cloud::store::Database>, String> {
    if cfg.store.url.is_some() && std::env::var_os("PLATEN_STORE__URL").is_none() {
        platen_ops::secret::refuse_world_readable(file, "the database URL")?;
    }
    cfg.store.database()
}

/// A state directory, or a PostgreSQL database by URL.
fn open_store(place: &str) -> Result<platen_cloud::store::Store, platen_cloud::store::StoreError> {
    use platen_cloud::store::Store;
    if place.starts_with("postgres://") || place.starts_with("postgresql://") {
        Store::open_postgres(place, None)
    } else {
        Store::open_sled(std::path::Path::new(place))
    }
}

/// `store copy`.
fn store_copy(from: &str, to: &str) -> ExitCode {
    let open = |place: &str| {
        open_store(place).map_err(|e| {
            eprintln!("platen-cloud: {e}");
            ExitCode::FAILURE
        })
    };
    let (source, target) = match (open(from), open(to)) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    eprintln!("copying {} → {}", source.describe(), target.describe());
    match platen_cloud::store::copy::copy(&source, &target) {
        Ok(tally) => {
            for (kind, n) in &tally.counts {
                println!("{kind}: {n}");
            }
            for (currency, total) in &tally.ledger_totals {
                println!("ledger total {currency}: {total}");
            }
            println!("copied and checked: {}", target.describe());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("platen-cloud: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `db migrate`: exit 0 migrated (or already current), 1 the database refused or
/// is unreachable or newer, 2 no database named.
fn db_migrate(cli: &Cli, config: Option<&std::path::Path>) -> ExitCode {
    use platen_ops::config::ConfigFile;
    let db = match config {
        Some(file) => match platen_cloud::config::CloudConfig::load_file(file) {
            Ok((c, _)) => config_database(&c, file),
            Err(e) => Err(e.to_string()),
        },
        None => Ok(cli_database(cli)),
    };
    let db = match db {
        Ok(Some(db)) => db,
        Ok(None) => {
            eprintln!("platen-cloud: no database: set --store-url, PLATEN_STORE__URL or store.url");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("platen-cloud: {e}");
            return ExitCode::from(2);
        }
    };
    let store = match platen_cloud::store::postgres::PgStore::connect(db.url.expose(), db.tls) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("platen-cloud: {e}");
            return ExitCode::FAILURE;
        }
    };
    match store.migrate() {
        Ok((from, to)) if from == to => {
            println!(
                "{}: schema version {to}, current",
                platen_cloud::store::Backend::describe(&store)
            );
            ExitCode::SUCCESS
        }
        Ok((from, to)) => {
            println!(
                "{}: schema version {from} → {to}",
                platen_cloud::store::Backend::describe(&store)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("platen-cloud: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config_cmd(cmd: &ConfigCmd) -> ExitCode {
    use platen_cloud::config::CloudConfig;
    use platen_ops::config::ConfigFile;
    match cmd {
        ConfigCmd::Check { file } => {
            let cfg = match CloudConfig::load_file(file) {
                Ok((c, _)) => c,
                Err(e) => {
                    eprintln!("{e}");
                    let n = e.count();
                    eprintln!(
                        "{}: {n} problem{}",
                        file.display(),
                        if n == 1 { "" } else { "s" }
                    );
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = config_database(&cfg, file) {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            if let Some(catalog) = &cfg.catalog {
                if load_catalog(catalog).is_err() {
                    eprintln!(
                        "{}: catalog {} is not valid",
                        file.display(),
                        catalog.display()
                    );
                    return ExitCode::from(2);
                }
            }
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        ConfigCmd::Show { config } => CloudConfig::show_command(config),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Read and validate a catalog file. Prints every problem as `FILE:LINE: error: …`
/// (warnings too) on stderr; the error is the exit code (1 invalid, 2 unreadable).
fn load_catalog(file: &std::path::Path) -> Result<platen_cloud::plans::catalog::Catalog, ExitCode> {
    use platen_cloud::plans::catalog::{Catalog, Problem};
    let text = std::fs::read(file).map_err(|e| {
        eprintln!("{}: {e}", file.display());
        ExitCode::from(2)
    })?;
    let text = String::from_utf8(text).map_err(|_| {
        eprintln!("{}: not UTF-8 text", file.display());
        ExitCode::from(2)
    })?;
    let show = |kind: &str, p: &Problem| match p.line {
        0 => eprintln!("{}: {kind}: {}", file.display(), p.message),
        n => eprintln!("{}:{n}: {kind}: {}", file.display(), p.message),
    };
    match Catalog::parse(&text) {
        Ok(c) => {
            c.warnings.iter().for_each(|p| show("warning", p));
            Ok(c)
        }
        Err(e) => {
            e.errors.iter().for_each(|p| show("error", p));
            e.warnings.iter().for_each(|p| show("warning", p));
            eprintln!("{}: {} errors", file.display(), e.errors.len());
            Err(ExitCode::FAILURE)
        }
    }
}

fn parse_setting(s: &str) -> Result<(String, SettingValue), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    let value = v
        .parse::<i64>()
        .map(SettingValue::Integer)
        .unwrap_or_else(|_| SettingValue::Text(v.to_string()));
    Ok((k.to_string(), value))
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy everything from one store into another, empty one (sled → PostgreSQL or
    /// back), then check that both hold the same number of records of each kind and
    /// the same ledger total per currency. Stop the cloud first: a state directory in
    /// use is refused. Each side is a state directory or a postgres:// URL (better
    /// given as PLATEN_COPY_FROM / PLATEN_COPY_TO when it holds a password).
    /// Exit 0 copied and checked, 1 refused or failed.
    Copy {
        #[arg(long, env = "PLATEN_COPY_FROM", hide_env_values = true)]
        from: String,
        #[arg(long, env = "PLATEN_COPY_TO", hide_env_values = true)]
        to: String,
    },
}

#[derive(Subcommand)]
enum DbCmd {
    /// Apply the schema versions the database lacks (under an advisory lock; `serve`
    /// does this at start too), for operators who migrate as a separate step. The
    /// database is --store-url / PLATEN_STORE__URL, or store.url of --config.
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file (with PLATEN_… overrides) and the catalog it
    /// names; list every problem with its line. Exit 0 ok, 2 problems.
    Check {
        #[arg(default_value = "/etc/platen/cloud.toml")]
        file: PathBuf,
    },
    /// Print the effective configuration (file + PLATEN_… overrides + defaults).
    Show {
        #[arg(long, short, default_value = "/etc/platen/cloud.toml")]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // `platen-cloud reports | head -1`: end quietly (141), never panic.
        platen_ops::cli::quiet_broken_pipe();
    }
    let _ = TOKEN.set(cli.token.clone().map(platen_ops::secret::Secret::new));
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info,rumqttc=warn,sled=warn"
    } else {
        "warn"
    };
    platen_ops::logging::init(cli.log.log_format, default_level);
    match &cli.command {
        Command::Config { command } => return config_cmd(command),
        Command::Db {
            command: DbCmd::Migrate { config },
        } => return db_migrate(&cli, config.as_deref()),
        Command::Store {
            command: StoreCmd::Copy { from, to },
        } => {
            let (from, to) = (from.clone(), to.clone());
            // Blocking work (both stores are synchronous): off the runtime.
            return tokio::task::spawn_blocking(move || store_copy(&from, &to))
                .await
                .unwrap_or(ExitCode::FAILURE);
        }
        Command::Keygen { file, id } => return keygen(file, id),
        Command::Token {
            command: TokenCmd::New { name, actor },
        } => return token_new(name, actor),
        Command::BrokerAcl { agents, cloud_user } => {
            return match load_registry(agents) {
                Ok(r) => {
                    print!("{}", r.mosquitto_acl(cloud_user));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Serve {
            config: Some(file),
            leave_group,
            ..
        } => {
            let cfg = match <platen_cloud::config::CloudConfig as platen_ops::config::ConfigFile>::load_file(file) {
                Ok((c, _)) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let catalog = match cfg.catalog.as_deref().map(load_catalog).transpose() {
                Ok(c) => c,
                Err(code) => return code,
            };
            if cfg.broker.password.is_some() {
                if let Err(e) =
                    platen_ops::secret::refuse_world_readable(file, "the broker password")
                {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            }
            let auth = match broker_auth(&cfg.broker) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let signer = match cfg
                .signing
                .as_ref()
                .map(|s| load_signer(&s.key_file, &s.key_id))
                .transpose()
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let registry = match cfg.agents.as_deref().map(load_registry).transpose() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let database = match config_database(&cfg, file) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            return run_server(
                cfg.server(catalog, auth, signer, registry, database),
                *leave_group,
            )
            .await;
        }
        Command::Serve {
            config: None,
            api_listen,
            provider_url,
            report_deadline_secs,
            republish_after_secs,
            tick_ms,
            claim_lease_secs,
            webhook_timeout_secs,
            webhook_first_retry_ms,
            stale_after_secs,
            catalog,
            signing_key,
            signing_key_id,
            agents,
            tokens,
            max_backdate_secs,
            api_header_timeout_secs,
            api_max_connections_per_ip,
            api_request_timeout_secs,
            leave_group,
        } => {
            let registry = match agents.as_deref().map(load_registry).transpose() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let signer = match signing_key
                .as_ref()
                .map(|k| load_signer(k, signing_key_id))
                .transpose()
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let engine = platen_cloud::engine::EngineConfig {
                tick: Duration::from_millis(*tick_ms),
                report_deadline: Duration::from_secs(*report_deadline_secs),
                republish_after: Duration::from_secs(*republish_after_secs),
                provider_url: provider_url.clone(),
                claim_lease: Duration::from_secs(*claim_lease_secs),
                ..Default::default()
            };
            let extras = ServeExtras {
                signer,
                registry,
                tokens_file: tokens.clone(),
                api: platen_cloud::config::Api {
                    max_backdate_secs: *max_backdate_secs,
                    header_timeout_secs: *api_header_timeout_secs,
                    max_connections_per_ip: *api_max_connections_per_ip,
                    request_timeout_secs: *api_request_timeout_secs,
                    ..Default::default()
                },
                leave_group: *leave_group,
                webhooks: platen_cloud::webhooks::WebhookConfig {
                    timeout: Duration::from_secs(*webhook_timeout_secs),
                    first_retry: Duration::from_millis(*webhook_first_retry_ms),
                    tick: Duration::from_millis(*tick_ms).max(Duration::from_millis(200)),
                    claim_lease: Duration::from_secs(*claim_lease_secs),
                },
                stale_after: Duration::from_secs(*stale_after_secs),
            };
            return serve(&cli, *api_listen, engine, catalog.as_deref(), extras).await;
        }
        Command::Catalog {
            command: CatalogCmd::Check { file },
        } => {
            return match load_catalog(file) {
                Ok(c) => {
                    println!(
                        "{}: valid: {} plans, {} rules, {} warnings",
                        file.display(),
                        c.plans.len(),
                        c.rules.len(),
                        c.warnings.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            };
        }
        Command::Tenant { .. }
        | Command::Reseller { .. }
        | Command::Catalog { .. }
        | Command::Migrate { .. }
        | Command::Migrations { .. }
        | Command::Plan { .. }
        | Command::Contract { .. }
        | Command::Ledger { .. }
        | Command::Webhooks { .. } => {
            return client(cli.api, cli.command).await;
        }
        _ => {}
    }
    let store = match platen_cloud::store::Store::open(&cli.state_dir, cli_database(&cli).as_ref())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("platen-cloud: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cloud = match Cloud::connect(
        &cli.host,
        cli.port,
        &cli.client_id,
        store,
        Default::default(),
        None,
        None,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Reports => {
            for r in cloud.reports() {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Command::Publish {
            tenant,
            printer,
            version,
            settings,
        } => {
            let mut map = BTreeMap::new();
            for s in &settings {
                match parse_setting(s) {
                    Ok((k, v)) => {
                        map.insert(k, v);
                    }
                    Err(e) => {
                        eprintln!("--set {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let config = DesiredConfig {
                printer_id: printer,
                version,
                issued_at: chrono::Utc::now(),
                settings: map,
                signature: None,
            };
            if !cloud.wait_connected(Duration::from_secs(10)).await {
                eprintln!("cannot connect to the broker at {}:{}", cli.host, cli.port);
                return ExitCode::FAILURE;
            }
            match cloud.publish_desired(&tenant, &config).await {
                Ok(()) => {
                    println!(
                        "published version {version} for {tenant}/{}",
                        config.printer_id
                    );
                    cloud.shutdown().await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Collect {
            count,
            timeout_secs,
        } => {
            let mut events = cloud.subscribe_events();
            let mut seen = 0u64;
            let deadline =
                timeout_secs.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
            loop {
                let next = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, events.recv()).await.ok(),
                        None => Some(events.recv().await),
                    }
                };
                match next.await {
                    None => {
                        eprintln!("timed out after {seen} reports");
                        return ExitCode::FAILURE;
                    }
                    Some(Ok(ReportEvent::New(r, _))) => {
                        println!("{}", serde_json::to_string(&*r).unwrap_or_default());
                        seen += 1;
                        if count.is_some_and(|c| seen >= c) {
                            cloud.shutdown().await;
                            return ExitCode::SUCCESS;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) => {}
                }
            }
        }
        _ => ExitCode::from(2),
    }
}
