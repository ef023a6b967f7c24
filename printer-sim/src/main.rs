//! `platen-printer-sim`: serve one or many simulated printers.
//!
//! ```text
//! platen-printer-sim --printer p1 --printer p2,read-only=1.3.6.1.2.1.1.6.0 \
//!     --printer p3,snmprec=tests/fixtures/snmprec/librenms-konica_c250i.snmprec,port=16103
//! ```
//! Prints `printer <id> <address>` per printer, then `ready`. Runs until SIGTERM or
//! Ctrl-C. Reads control commands on standard input, one per line:
//! `reboot <id>`, `read-only <id> <oid>`, `writable <id> <oid>`, `delay <id> <ms>`,
//! `drop <id> <n>` (leave the next n requests unanswered; `drop <id> 0` answers
//! again), `set <id> OID|TAG|VALUE` (snmprec syntax: change a value as if on the
//! printer's panel — supply levels, the page counter, alerts, settings),
//! `unset <id> <oid>` and `trap <id> <host:port>` (send a v2c printerV2Alert
//! notification from the printer's address, as a printer does on a new alert).

use clap::Parser;
use platen_printer_sim::{oid, serve, snmprec, Faults, Running, SimPrinter};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "platen-printer-sim",
    version,
    about = "Simulated SNMP printers for Platen's tests and demo"
)]
struct Cli {
    /// A printer: ID[,port=N][,host=ADDR][,read-only=OID]...[,snmprec=PATH][,delay-ms=N][,drop-first=N][,stale-reads=N][,pages-per-minute=N]
    #[arg(long = "printer", required = true)]
    printers: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: String,
    /// SNMP community (read and write).
    #[arg(long, default_value = "private")]
    community: String,
}

struct Spec {
    id: String,
    port: u16,
    host: Option<String>,
    snmprec: Option<String>,
    faults: Faults,
}

fn parse_spec(s: &str) -> Result<Spec, String> {
    let mut parts = s.split(',');
    let id = parts
        .next()
        .filter(|i| !i.is_empty())
        .ok_or("empty printer id")?
        .to_string();
    let mut spec = Spec {
        id,
        port: 0,
        host: None,
        snmprec: None,
        faults: Faults::default(),
    };
    for kv in parts {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("{kv:?}: expected key=value"))?;
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{k}: {v:?} is not a number"))
        };
        match k {
            "port" => {
                spec.port = v
                    .parse()
                    .map_err(|_| format!("port: {v:?} is not a port"))?
            }
            "read-only" => {
                spec.faults.read_only.insert(oid(v));
            }
            "snmprec" => spec.snmprec = Some(v.to_string()),
            "host" => spec.host = Some(v.to_string()),
            "delay-ms" => spec.faults.delay = Duration::from_millis(u64::from(num(v)?)),
            "drop-first" => spec.faults.drop_first = num(v)?,
            "stale-reads" => spec.faults.stale_reads = num(v)?,
            "pages-per-minute" => spec.faults.pages_per_minute = num(v)?,
            other => return Err(format!("unknown printer option {other:?}")),
        }
    }
    Ok(spec)
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
    let mut running: Vec<Running> = Vec::new();
    for s in &cli.printers {
        let spec = match parse_spec(s) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("--printer {s}: {e}");
                return ExitCode::from(2);
            }
        };
        let printer = match &spec.snmprec {
            None => SimPrinter::standard(&spec.id, spec.faults),
            Some(path) => {
                let text = match std::fs::read_to_string(path) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("--printer {s}: cannot read {path}: {e}");
                        return ExitCode::from(2);
                    }
                };
                let (values, warnings) = snmprec::parse(&text);
                for w in warnings {
                    eprintln!("{path}:{}: {} (line skipped)", w.line, w.message);
                }
                SimPrinter::from_recording(values, spec.faults)
            }
        };
        match serve(
            &spec.id,
            printer,
            &format!(
                "{}:{}",
                spec.host.as_deref().unwrap_or(&cli.listen),
                spec.port
            ),
            &cli.community,
        )
        .await
        {
            Ok(r) => {
                println!("printer {} {}", r.id, r.addr);
                running.push(r);
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();

    let control = async {
        let mut lines = stdin_lines();
        while let Some(line) = lines.recv().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            let find = |id: &str| {
                running
                    .iter()
                    .find(|r| r.id == id)
                    .map(|r| r.printer.clone())
            };
            let outcome = match words.as_slice() {
                ["reboot", id] => find(id).map(|p| p.reboot()),
                ["read-only", id, o] => find(id).map(|p| p.set_read_only(oid(o), true)),
                ["writable", id, o] => find(id).map(|p| p.set_read_only(oid(o), false)),
                ["delay", id, ms] => match ms.parse::<u64>() {
                    Ok(ms) => {
                        find(id).map(|p| p.set_faults(|f| f.delay = Duration::from_millis(ms)))
                    }
                    Err(_) => None,
                },
                ["drop", id, n] => match n.parse::<u32>() {
                    Ok(n) => find(id).map(|p| p.set_faults(|f| f.drop_first = n)),
                    Err(_) => None,
                },
                ["set", id, ..] => {
                    // The rest of the line after "set <id> " is one snmprec line (values may hold spaces).
                    let rest = line.trim_start()[3..].trim_start()[id.len()..].trim_start();
                    match snmprec::parse_line(rest) {
                        Ok((o, v)) => find(id).map(|p| p.put(o, v)),
                        Err(_) => None,
                    }
                }
                ["unset", id, o] => find(id).and_then(|p| p.remove(&oid(o)).then_some(())),
                // An alert trap from the printer's address to host:port.
                ["trap", id, to] => match (running.iter().find(|r| r.id == *id), to.parse()) {
                    (Some(r), Ok(to)) => {
                        platen_printer_sim::send_alert_trap(r.addr.ip(), to, &cli.community, 0)
                            .await
                            .ok()
                    }
                    _ => None,
                },
                [] => Some(()),
                _ => None,
            };
            println!(
                "{}",
                if outcome.is_some() {
                    "ok"
                } else {
                    "error: unknown command or printer"
                }
            );
            let _ = std::io::stdout().flush();
        }
        // Standard input closed: keep serving until a signal.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = control => {}
        _ = shutdown_signal() => {}
    }
    ExitCode::SUCCESS
}

/// Lines of standard input, read on a plain thread: a read blocked in tokio's
/// blocking pool keeps the runtime — and so the process — from ending at SIGTERM
/// (found when the tests stopped waiting 5 s and SIGKILLing it).
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
