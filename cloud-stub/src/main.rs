//! `platen-cloud` command line (stub): publish desired configs, collect reports.

use clap::{Parser, Subcommand};
use platen_cloud::{Cloud, ReportEvent};
use platen_protocol::{DesiredConfig, Id, SettingValue};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "platen-cloud", version, about = "Platen cloud stub")]
struct Cli {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883, global = true)]
    port: u16,
    /// Where reports are stored.
    #[arg(long, default_value = "./platen-cloud-state", global = true)]
    state_dir: PathBuf,
    /// MQTT client id (stable, for a persistent session).
    #[arg(long, default_value = "platen-cloud", global = true)]
    client_id: String,
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

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // No colour escapes in files and the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let cloud = match Cloud::start(&cli.host, cli.port, &cli.client_id, &cli.state_dir) {
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
                    Some(Ok(ReportEvent::New(r))) => {
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
    }
}
