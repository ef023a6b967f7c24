//! `platen-provider`: run the stand-in service provider.
//!
//! Prints `listening <address>` then `ready`. Commands on stdin (one per line), for
//! tests and the demo: `down`, `up`, `slow <ms>`, `errors <n>`,
//! `status-unobtainable <ms>`, `activation <ms>`. Each answers `ok` or `error: …`.

use clap::Parser;
use platen_provider::Provider;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    version,
    about = "Stand-in service provider for Platen (HTTP, fault knobs)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

fn ms(arg: Option<&str>) -> Result<Duration, String> {
    arg.ok_or("missing milliseconds")?
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("bad milliseconds: {e}"))
}

async fn command(p: &mut Provider, line: &str) -> Result<(), String> {
    let mut words = line.split_whitespace();
    match words.next() {
        Some("down") => p.go_down().await,
        Some("up") => p.come_up().await.map_err(|e| e.to_string())?,
        Some("slow") => {
            let d = ms(words.next())?;
            p.state.set_faults(|f| f.slow = d);
        }
        Some("errors") => {
            let n = words
                .next()
                .ok_or("missing count")?
                .parse::<u32>()
                .map_err(|e| format!("bad count: {e}"))?;
            p.state.set_faults(|f| f.errors_left = n);
        }
        Some("status-unobtainable") => {
            let d = ms(words.next())?;
            p.state
                .set_faults(|f| f.status_unobtainable_until = Some(Instant::now() + d));
        }
        Some("activation") => {
            let d = ms(words.next())?;
            p.state.set_faults(|f| f.activation = d);
        }
        Some(other) => return Err(format!("unknown command {other:?}")),
        None => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // No colour escapes in files and the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let mut p = match Provider::start(args.listen).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("platen-provider: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::from(2);
        }
    };
    println!("listening {}", p.addr);
    println!("ready");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match command(&mut p, &line).await {
                    Ok(()) => println!("ok"),
                    Err(e) => println!("error: {e}"),
                },
                // stdin closed: keep serving until a signal.
                _ => { let _ = tokio::signal::ctrl_c().await; break; }
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    p.go_down().await;
    std::process::ExitCode::SUCCESS
}
