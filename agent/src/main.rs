//! `platen-agent` command line.

use clap::{Parser, Subcommand};
use platen_agent::config::AgentConfig;
use platen_ops::config::ConfigFile;
use std::path::PathBuf;
use std::process::ExitCode;

use platen_agent::tools::cli;

#[derive(Parser)]
#[command(
    name = "platen-agent",
    version = platen_ops::version::long(),
    about = "Applies desired printer configuration over SNMP and reports it over MQTT"
)]
struct Cli {
    #[command(flatten)]
    log: platen_ops::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        #[arg(long, short, default_value = "/etc/platen/agent.toml")]
        config: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check printers, the broker and the outbox; exit status 1 when something is wrong.
    Diag {
        /// Printers to check (default: all in the config).
        printers: Vec<String>,
        #[arg(long, short, default_value = "/etc/platen/agent.toml")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Write each setting's current value back to test that it is writable.
        #[arg(long)]
        write_test: bool,
        /// Skip the broker connection test.
        #[arg(long)]
        no_broker: bool,
    },
    /// Local state only, no network: agent running?, outbox, last reports, last readings.
    Status {
        #[arg(long, short, default_value = "/etc/platen/agent.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Find printers in an address range (CIDR, A-B, or one address) by SNMP.
    Discover(cli::DiscoverArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (with PLATEN_… overrides) and the profiles and
    /// certificates it names; list every problem with its line. Exit 0 ok, 2 problems.
    Check {
        #[arg(default_value = "/etc/platen/agent.toml")]
        file: PathBuf,
    },
    /// Print the effective configuration (file + PLATEN_… overrides + defaults), with
    /// secrets redacted.
    Show {
        #[arg(long, short, default_value = "/etc/platen/agent.toml")]
        config: PathBuf,
    },
}

/// Default levels when RUST_LOG is unset.
const LOG_DEFAULT: &str = "info,async_snmp=off,rumqttc=warn,sled=warn";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // `status | head -1`: end quietly (141), never panic on a closed pipe.
        platen_ops::cli::quiet_broken_pipe();
    }
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match check(&file) {
            Ok(n) => {
                let plural = if n == 1 { "" } else { "s" };
                println!("{}: ok ({n} printer{plural})", file.display());
                ExitCode::SUCCESS
            }
            Err((n, e)) => {
                eprintln!("{e}");
                eprintln!(
                    "{}: {n} problem{}",
                    file.display(),
                    if n == 1 { "" } else { "s" }
                );
                ExitCode::from(2)
            }
        },
        Command::Config {
            command: ConfigCommand::Show { config },
        } => AgentConfig::show_command(&config),
        Command::Diag {
            printers,
            config,
            json,
            write_test,
            no_broker,
        } => runtime_then(|| cli::diag(&config, &printers, json, write_test, !no_broker)),
        Command::Status { config, json } => cli::status(&config, json),
        Command::Discover(args) => runtime_then(|| cli::discover(args)),
        Command::Run { config } => {
            platen_ops::logging::init(cli.log.log_format, LOG_DEFAULT);
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = platen_agent::config::check_not_world_readable(&config, &cfg) {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                let agent = match platen_agent::run::start(cfg).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!("{e}");
                        return ExitCode::FAILURE;
                    }
                };
                wait_for_signal().await;
                agent.shutdown().await;
                ExitCode::SUCCESS
            })
        }
    }
}

/// The number of printers, or the number of problems and their listing.
fn check(file: &std::path::Path) -> Result<usize, (usize, String)> {
    let cfg = AgentConfig::load(file).map_err(|e| (e.count(), e.to_string()))?;
    let mut problems = Vec::new();
    if let Some(tls) = &cfg.broker.tls {
        if let Err(e) = platen_agent::tls::client_config(tls) {
            problems.push(format!("{}: broker.tls: {e}", file.display()));
        }
    }
    if let Err(e) = platen_agent::apply::profile::load_all(&cfg) {
        problems.push(format!("{}: {e}", file.display()));
    }
    // The same check `run` makes: a file with credentials that others can read.
    if let Err(e) = platen_agent::config::check_not_world_readable(file, &cfg) {
        problems.push(e);
    }
    if problems.is_empty() {
        Ok(cfg.printers.len())
    } else {
        Err((problems.len(), problems.join("\n")))
    }
}

/// Run an async command on a fresh runtime.
fn runtime_then<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(f()),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
