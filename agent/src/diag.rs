//! Diagnostics for the technician on site: `platen-agent diag`, `status`, and the
//! remote diagnostics request.
//!
//! [`diagnose`] checks one printer (reachability and credentials with timings,
//! identity, profile settings with current values, optional write test, supplies,
//! counters, status) and returns a [`PrinterDiag`] whose `problems` each carry a
//! one-line hint. [`broker_check`] connects to the broker with a separate client id
//! and publishes and receives on the agent's own echo topic. Rendering is in
//! [`render_table`]; the JSON form is the serde form of [`DiagOutput`].

use crate::apply::get_values;
use crate::catalog::Profile;
use crate::config::AgentConfig;
use crate::poll::collect;
use crate::printer_mib::{decode, TelemetrySpec};
use crate::snmp::{ErrorStatus, Snmp, SnmpError, SnmpValue};
use chrono::Utc;
use platen_protocol::diag::{LastReport, PrinterDiag, Problem, SettingCheck};
use platen_protocol::telemetry::{Level, SupplyClass, SupplyState};
use platen_protocol::{Id, SettingValue, Topic};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The whole `diag` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagOutput {
    pub agent_id: String,
    pub at: chrono::DateTime<Utc>,
    pub broker: Option<BrokerCheck>,
    pub outbox: OutboxCheck,
    pub printers: Vec<PrinterDiag>,
    /// Problems not tied to a printer (broker, outbox).
    pub problems: Vec<Problem>,
}

impl DiagOutput {
    pub fn problem_count(&self) -> usize {
        self.problems.len()
            + self
                .printers
                .iter()
                .map(|p| p.problems.len())
                .sum::<usize>()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrokerCheck {
    pub target: String,
    pub tls: bool,
    pub connected: bool,
    pub connect_ms: Option<f64>,
    pub echo_ms: Option<f64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxCheck {
    /// Where the figures come from: `store` (agent stopped) or `agent` (its status file).
    pub source: String,
    pub depth: usize,
    pub oldest_pending_at: Option<chrono::DateTime<Utc>>,
    pub agent_running: bool,
}

fn problem(check: &str, message: String, hint: String) -> Problem {
    Problem {
        check: check.into(),
        message,
        hint,
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// What to check on one printer.
pub struct DiagParams<'a> {
    pub printer: &'a Id,
    /// `address:port`
    pub target: String,
    pub snmp_version: &'a str,
    pub profile: &'a Profile,
    pub spec: &'a TelemetrySpec,
    pub write_test: bool,
    pub last_report: Option<LastReport>,
    /// The default community the printer is written with, if so (a warning).
    pub default_community: Option<&'static str>,
}

/// Check one printer. Never fails: every failure becomes a problem with a hint.
pub async fn diagnose<S: Snmp>(snmp: &S, p: DiagParams<'_>) -> PrinterDiag {
    let id = p.printer;
    let mut out = PrinterDiag {
        printer_id: id.clone(),
        target: p.target.clone(),
        snmp_version: p.snmp_version.into(),
        reachable: false,
        round_trip_ms: None,
        identity: None,
        status: None,
        settings: Vec::new(),
        counters: Vec::new(),
        supplies: Vec::new(),
        alerts: Vec::new(),
        last_report: p.last_report.clone(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    if p.default_community.is_some() {
        // Which one is not said: communities are never printed, not even the
        // well-known ones.
        out.warnings.push(problem(
            "security",
            format!("printer {id} is written with a factory-default community"),
            format!(
                "anyone on its network can reconfigure it: set a write community of your own \
                 on the printer and in `community` for printer {id}, or use SNMPv3"
            ),
        ));
    }
    // 1. Reachability and credentials.
    let probe: Vec<_> = [
        crate::printer_mib::SYS_UPTIME,
        crate::printer_mib::SYS_DESCR,
    ]
    .iter()
    .filter_map(|o| o.parse().ok())
    .collect();
    let started = Instant::now();
    match get_values(snmp, &probe).await {
        Ok(_) => {
            out.reachable = true;
            out.round_trip_ms = Some(ms(started.elapsed()));
        }
        Err(e) => {
            out.problems
                .push(unreachable_problem(id, &p.target, &e, started.elapsed()));
            return out;
        }
    }
    // 2. Identity, status, counters, supplies, alerts: the telemetry poll.
    let mut device = None;
    match collect(snmp, p.spec, &mut device).await {
        Ok((d, values)) => {
            let r = decode(&values, d, p.spec, Utc::now());
            supply_problems(id, &r, &mut out.problems);
            status_problems(id, &r.status, &mut out.problems);
            out.identity = Some(r.identity);
            out.status = Some(r.status);
            out.counters = r.counters;
            out.supplies = r.supplies;
            out.alerts = r.alerts;
        }
        Err(e) => out.problems.push(problem(
            "snmp",
            format!("printer {id} stopped answering during the check: {e}"),
            "the printer answers slowly or intermittently: raise `timeout_ms` or check the network"
                .into(),
        )),
    }
    // 3. Settings of the profile, with their current values.
    settings(snmp, &p, &mut device, &mut out).await;
    // 4. The last report.
    if let Some(r) = &p.last_report {
        if !r.failed.is_empty() {
            out.problems.push(problem(
                "report",
                format!(
                    "last report (version {}) was {}: {}",
                    r.config_version,
                    r.status,
                    r.failed.join(", ")
                ),
                format!("see the settings table for printer {id}; codes are explained in the guide: docs/src/protocol.md"),
            ));
        }
    }
    out
}

fn unreachable_problem(id: &Id, target: &str, e: &SnmpError, took: Duration) -> Problem {
    match e {
        SnmpError::Status {
            status: ErrorStatus::AuthorizationError | ErrorStatus::NoAccess,
            ..
        } => problem(
            "snmp",
            format!("community rejected by {target}"),
            format!("community rejected: check `community` for printer {id}"),
        ),
        SnmpError::Security(why) => problem(
            "snmp",
            format!("{target}: SNMPv3 refused: {why}"),
            format!(
                "check [printer.v3] user, auth_protocol/priv_protocol and both passwords for \
                 printer {id} against the printer's SNMPv3 user"
            ),
        ),
        SnmpError::Timeout { retries, .. } => problem(
            "snmp",
            format!(
                "no answer from {target} after {} attempts ({} ms)",
                retries + 1,
                took.as_millis()
            ),
            format!(
                "check that printer {id} is on and reachable (address, port, firewall); \
                 SNMPv2c printers ignore a wrong community: check `community` for printer {id}"
            ),
        ),
        other => problem(
            "snmp",
            format!("{target}: {other}"),
            format!("check `address` and `port` for printer {id}"),
        ),
    }
}

fn supply_problems(id: &Id, r: &platen_protocol::telemetry::Reading, out: &mut Vec<Problem>) {
    for s in &r.supplies {
        let msg = match (s.class, s.state) {
            (SupplyClass::Consumed, SupplyState::Empty) => "is empty",
            (SupplyClass::Consumed, SupplyState::Low) => "is low",
            (SupplyClass::Receptacle, SupplyState::Full) => "is full",
            (SupplyClass::Receptacle, SupplyState::AlmostFull) => "is almost full",
            _ => continue,
        };
        out.push(problem(
            "supplies",
            format!("{} {msg} ({})", s.description, level_text(s)),
            format!("replace \"{}\" on printer {id}", s.description),
        ));
    }
}

fn status_problems(id: &Id, st: &platen_protocol::telemetry::Status, out: &mut Vec<Problem>) {
    // Low paper/toner are covered by the supplies; these need a person at the printer.
    const SERIOUS: [&str; 8] = [
        "noPaper",
        "noToner",
        "doorOpen",
        "jammed",
        "offline",
        "serviceRequested",
        "inputTrayMissing",
        "outputFull",
    ];
    let serious: Vec<&str> = st
        .errors
        .iter()
        .map(String::as_str)
        .filter(|e| SERIOUS.contains(e))
        .collect();
    if !serious.is_empty() {
        out.push(problem(
            "status",
            format!("printer reports {}", serious.join(", ")),
            format!("look at printer {id}'s panel"),
        ));
    }
    if st.device.as_deref() == Some("down") {
        out.push(problem(
            "status",
            "hrDeviceStatus is down".into(),
            format!("printer {id} says it cannot print: look at its panel"),
        ));
    }
}

async fn settings<S: Snmp>(
    snmp: &S,
    p: &DiagParams<'_>,
    device: &mut Option<u32>,
    out: &mut PrinterDiag,
) {
    let names = p.profile.names();
    let mut oids = Vec::new();
    let mut rows = Vec::new();
    for name in names {
        let Some(def) = p.profile.get(name) else {
            continue;
        };
        let Some(oid) = def.oid.resolve(device.or(Some(1))) else {
            continue;
        };
        oids.push(oid.clone());
        rows.push((name.to_string(), def, oid));
    }
    let values = match get_values(snmp, &oids).await {
        Ok(v) => v,
        Err(e) => {
            out.problems.push(problem(
                "settings",
                format!("reading the profile's settings failed: {e}"),
                "run the check again; if it persists, the printer drops large requests".into(),
            ));
            return;
        }
    };
    let mut refused_for_access = 0;
    let mut tested = 0;
    for ((name, def, oid), v) in rows.into_iter().zip(values) {
        let mut check = SettingCheck {
            name: name.clone(),
            oid: oid.to_string(),
            value: None,
            writable: None,
            detail: String::new(),
        };
        if v.is_exception() {
            check.detail = "not implemented by this printer".into();
            out.settings.push(check);
            continue;
        }
        // A text "desired" makes enumerated integers come back as their labels.
        check.value = def.normalize(&v, &SettingValue::Text(String::new())).ok();
        if p.write_test {
            tested += 1;
            match write_back(snmp, &oid, &v).await {
                Ok(()) => check.writable = Some(true),
                Err(e) => {
                    check.writable = Some(false);
                    check.detail = format!("write refused: {e}");
                    let access = matches!(
                        e,
                        SnmpError::Status {
                            status: ErrorStatus::NoAccess | ErrorStatus::AuthorizationError,
                            ..
                        }
                    );
                    if access {
                        refused_for_access += 1;
                    } else {
                        out.problems.push(problem(
                            "write",
                            format!("{name} is not writable ({e})"),
                            format!(
                                "enable SNMP write access for {name} on printer {} (its web page), or leave {name} out of its configuration",
                                p.printer
                            ),
                        ));
                    }
                }
            }
        }
        out.settings.push(check);
    }
    if refused_for_access > 0 {
        out.problems.push(problem(
            "write",
            format!("{refused_for_access} of {tested} settings refused with noAccess"),
            format!(
                "the community is read-only: set a write community in `community` for printer {}",
                p.printer
            ),
        ));
    }
}

/// Write the value just read back to the same object (changes nothing when it works).
async fn write_back<S: Snmp>(
    snmp: &S,
    oid: &crate::snmp::ObjectId,
    v: &SnmpValue,
) -> Result<(), SnmpError> {
    let back = snmp.set(oid, v.clone()).await?;
    if back.is_exception() {
        return Err(SnmpError::Other(format!(
            "the printer answered {back:?} without an error status"
        )));
    }
    Ok(())
}

/// Level as text for tables: `80%`, `11501/12000`, `some remaining`, `unknown`.
pub fn level_text(s: &platen_protocol::telemetry::Supply) -> String {
    if let Some(p) = s.percent_remaining {
        return format!("{p}%");
    }
    if let Some(p) = s.percent_full {
        return format!("{p}% full");
    }
    match s.level {
        Level::Amount(n) => match s.max {
            Level::Amount(m) => format!("{n}/{m}"),
            _ => format!("{n}"),
        },
        Level::Special(platen_protocol::telemetry::SpecialLevel::SomeRemaining) => {
            "some remaining".into()
        }
        Level::Special(platen_protocol::telemetry::SpecialLevel::Other) => "other".into(),
        Level::Special(platen_protocol::telemetry::SpecialLevel::Unknown) => "unknown".into(),
    }
}

/// Connect to the broker with `{client_id}-diag` (the agent's own session is left
/// alone), subscribe to the agent's echo topic, publish a nonce and wait for it.
pub async fn broker_check(cfg: &AgentConfig, timeout: Duration) -> BrokerCheck {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let b = &cfg.broker;
    let mut check = BrokerCheck {
        target: format!("{}:{}", b.host, b.port),
        tls: b.tls.is_some(),
        connected: false,
        connect_ms: None,
        echo_ms: None,
        error: None,
    };
    let mut opts = MqttOptions::new(
        format!("{}-diag", b.client_id(&cfg.agent_id)),
        b.host.clone(),
        b.port,
    );
    opts.set_keep_alive(Duration::from_secs(10))
        .set_clean_session(true);
    if let Some(u) = &b.username {
        let pw = b
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        opts.set_credentials(u.clone(), pw);
    }
    if let Some(tls) = &b.tls {
        match crate::tls::client_config(tls) {
            Ok(c) => {
                opts.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(c),
                ));
            }
            Err(e) => {
                check.error = Some(format!("TLS setup: {e}"));
                return check;
            }
        }
    }
    let (client, mut el) = AsyncClient::new(opts, 10);
    let topic = Topic::echo(&cfg.agent_id).to_string();
    let nonce = format!("diag-{}", rand::random::<u64>());
    let started = Instant::now();
    let mut sent_at = None;
    let result = tokio::time::timeout(timeout, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    check.connected = true;
                    check.connect_ms = Some(ms(started.elapsed()));
                    client
                        .subscribe(&topic, QoS::AtLeastOnce)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    sent_at = Some(Instant::now());
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, nonce.clone().into_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(Event::Incoming(Packet::Publish(p)))
                    if p.payload.as_ref() == nonce.as_bytes() =>
                {
                    return Ok(sent_at.map(|t| t.elapsed()));
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    match result {
        Ok(Ok(echo)) => check.echo_ms = echo.map(ms),
        Ok(Err(e)) => check.error = Some(e),
        Err(_) => {
            check.error = Some(format!(
                "no {} within {} s",
                if check.connected {
                    "echo"
                } else {
                    "connection"
                },
                timeout.as_secs()
            ))
        }
    }
    let _ = client.try_disconnect();
    check
}

/// The problem (with hint) for a failed broker check.
pub fn broker_problem(c: &BrokerCheck) -> Option<Problem> {
    let e = c.error.as_ref()?;
    let lower = e.to_lowercase();
    let hint = if lower.contains("tls") || lower.contains("certificate") {
        "check the files in [broker.tls] and that the broker's certificate names broker.host"
    } else if lower.contains("refused")
        && (lower.contains("auth") || lower.contains("password") || lower.contains("notauthorized"))
    {
        "check [broker] username and password"
    } else if c.connected {
        "the broker refused the echo topic: check its ACL for platen/v1/agents/<agent_id>/#"
    } else {
        "check [broker] host and port, and that the broker runs and the firewall lets the gateway out"
    };
    Some(problem(
        "broker",
        format!("broker {}: {e}", c.target),
        hint.into(),
    ))
}

/// The problem for an outbox that is not draining.
pub fn outbox_problem(o: &OutboxCheck, now: chrono::DateTime<Utc>) -> Option<Problem> {
    let oldest = o.oldest_pending_at?;
    let age = (now - oldest).num_seconds();
    (age > 600).then(|| {
        problem(
            "outbox",
            format!(
                "{} reports waiting, the oldest for {} min",
                o.depth,
                age / 60
            ),
            "reports are not leaving the gateway: check the broker connection (diag's broker line)"
                .into(),
        )
    })
}

/// The STATUS column: hrDeviceStatus/hrPrinterStatus and the error bits; a printer
/// that does not answer hrPrinterStatus shows the device status alone (not
/// "warning/?").
pub fn status_text(st: &platen_protocol::telemetry::Status) -> String {
    let mut t = st.device.as_deref().unwrap_or("-").to_string();
    if let Some(p) = st.printer.as_deref() {
        t.push('/');
        t.push_str(p);
    }
    if !st.errors.is_empty() {
        t.push_str(&format!(" [{}]", st.errors.join(",")));
    }
    t
}

/// The readable form of a diag run.
pub fn render_table(d: &DiagOutput) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "platen-agent diag: agent {} at {}",
        d.agent_id,
        d.at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<14} {:<22} {:<5} {:>8}  {:<28} {:<16} {:>9}  STATUS",
        "PRINTER", "TARGET", "SNMP", "RTT", "MODEL", "SERIAL", "PAGES"
    );
    for p in &d.printers {
        let id = p.identity.as_ref();
        let pages = p
            .counters
            .iter()
            .find(|c| c.name.starts_with(crate::printer_mib::LIFE_COUNT))
            .map(|c| c.value.to_string())
            .unwrap_or_else(|| "-".into());
        let status = p
            .status
            .as_ref()
            .map(status_text)
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:<14} {:<22} {:<5} {:>8}  {:<28} {:<16} {:>9}  {}",
            p.printer_id.as_str(),
            p.target,
            if p.reachable { "ok" } else { "FAIL" },
            p.round_trip_ms
                .map(|m| format!("{m:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            truncate(id.and_then(|i| i.model.as_deref()).unwrap_or("-"), 28),
            truncate(id.and_then(|i| i.serial.as_deref()).unwrap_or("-"), 16),
            pages,
            status
        );
    }
    for p in d.printers.iter().filter(|p| p.reachable) {
        let _ = writeln!(s);
        if let Some(d) = p.identity.as_ref().and_then(|i| i.sys_descr.as_deref()) {
            // Firmware versions live here on most printers (there is no standard object).
            let _ = writeln!(s, "{}: sysDescr (firmware): {d}", p.printer_id.as_str());
        }
        let _ = writeln!(s, "{}: settings", p.printer_id.as_str());
        for c in &p.settings {
            let w = match c.writable {
                Some(true) => "writable",
                Some(false) => "NOT writable",
                None => "",
            };
            let v = c
                .value
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "  {:<32} {:<36} {:<13} {}",
                c.name,
                truncate(&v, 36),
                w,
                c.detail
            );
        }
        if !p.supplies.is_empty() {
            let _ = writeln!(s, "{}: supplies", p.printer_id.as_str());
            for x in &p.supplies {
                let _ = writeln!(
                    s,
                    "  {:>3} {:<44} {:<12} {:>16}  {}",
                    x.index,
                    truncate(&x.description, 44),
                    x.kind,
                    level_text(x),
                    crate::fleet::state_name(x.state)
                );
            }
        }
        if !p.counters.is_empty() {
            let _ = writeln!(s, "{}: counters", p.printer_id.as_str());
            for c in &p.counters {
                let _ = writeln!(
                    s,
                    "  {:<28} {:>12} {}",
                    c.name,
                    c.value,
                    c.unit.as_deref().unwrap_or("")
                );
            }
        }
        if let Some(r) = &p.last_report {
            let _ = writeln!(
                s,
                "{}: last report: version {} {} at {}",
                p.printer_id.as_str(),
                r.config_version,
                r.status,
                r.completed_at.format("%Y-%m-%d %H:%M:%S UTC")
            );
        }
    }
    let _ = writeln!(s);
    match &d.broker {
        Some(b) if b.error.is_none() => {
            let _ = writeln!(
                s,
                "broker {}{}: ok (connect {:.1} ms, echo {:.1} ms)",
                b.target,
                if b.tls { " (TLS)" } else { "" },
                b.connect_ms.unwrap_or_default(),
                b.echo_ms.unwrap_or_default()
            );
        }
        Some(b) => {
            let _ = writeln!(
                s,
                "broker {}: FAIL: {}",
                b.target,
                b.error.as_deref().unwrap_or("")
            );
        }
        None => {
            let _ = writeln!(s, "broker: not checked");
        }
    }
    let _ = writeln!(
        s,
        "outbox: {} pending{} ({})",
        d.outbox.depth,
        d.outbox
            .oldest_pending_at
            .map(|t| format!(", oldest queued {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
            .unwrap_or_default(),
        if d.outbox.agent_running {
            "agent running"
        } else {
            "agent not running"
        }
    );
    let _ = writeln!(s);
    let n = d.problem_count();
    if n == 0 {
        let _ = writeln!(s, "no problems found");
    } else {
        let _ = writeln!(s, "{n} problem{}:", if n == 1 { "" } else { "s" });
        for p in &d.problems {
            let _ = writeln!(s, "  [{}] {}\n      hint: {}", p.check, p.message, p.hint);
        }
        for pd in &d.printers {
            for p in &pd.problems {
                write_printer_item(&mut s, pd, p);
            }
        }
    }
    let warnings: Vec<_> = d
        .printers
        .iter()
        .flat_map(|pd| pd.warnings.iter().map(move |w| (pd, w)))
        .collect();
    if !warnings.is_empty() {
        let n = warnings.len();
        let _ = writeln!(s, "{n} warning{}:", if n == 1 { "" } else { "s" });
        for (pd, w) in warnings {
            write_printer_item(&mut s, pd, w);
        }
    }
    // Padded columns leave trailing blanks; drop them.
    s.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

/// One problem or warning of a printer, with its hint.
fn write_printer_item(s: &mut String, pd: &PrinterDiag, p: &Problem) {
    let _ = writeln!(
        s,
        "  {} [{}] {}\n      hint: {}",
        pd.printer_id.as_str(),
        p.check,
        p.message,
        p.hint
    );
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platen_protocol::telemetry::Status;

    #[test]
    fn status_column() {
        let st = |d: Option<&str>, p: Option<&str>, e: &[&str]| Status {
            device: d.map(str::to_string),
            printer: p.map(str::to_string),
            errors: e.iter().map(|x| x.to_string()).collect(),
        };
        let cases = [
            (st(Some("running"), Some("idle"), &[]), "running/idle"),
            // No hrPrinterStatus (some models): the device status alone.
            (
                st(Some("warning"), None, &["lowToner"]),
                "warning [lowToner]",
            ),
            (st(None, None, &[]), "-"),
            (
                st(Some("down"), Some("other"), &["jammed", "doorOpen"]),
                "down/other [jammed,doorOpen]",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(status_text(&s), want);
        }
    }
}
