//! Section 7: trap → telemetry. A simulated printer raises an alert and sends its
//! printerV2Alert trap; the agent (its own process, sweeping only hourly) polls that
//! printer at once and publishes the telemetry message with the alert. Measured from
//! the trap's sending to the message at a subscriber of the broker (Mosquitto), each
//! time with a new alert row; against the sweep interval it saves waiting for.

use crate::table::{quantile, sorted_ms, Bound, Results};
use platen_e2e::*;
use platen_protocol::telemetry::Event;
use platen_protocol::Telemetry;
use std::time::{Duration, Instant};

const SECTION: &str = "traps";
const ALERT: &str = "1.3.6.1.2.1.43.18.1.1";
/// The agent's sweep interval in this run: what a printer without traps waits for.
const SWEEP_SECS: u64 = 60;

pub async fn run(r: &mut Results, n: usize) {
    eprintln!("traps: {n} alerts …");
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(false);
    let mut sim = Sim::start(&["p1"]);
    let tap = Tap::start(broker.port, "bench-traps", &["platen/v1/acme/+/telemetry"]).await;
    let trap_port = free_udp_port();
    let cfg = agent_toml(
        "gw-bench-traps",
        broker.port,
        &dir.path().join("state"),
        &[PrinterEntry::new("p1", sim.addr("p1"))],
    ) + &format!(
        "\n[telemetry]\ninterval_secs = {SWEEP_SECS}\nheartbeat_secs = 3600\n\n[drift]\ninterval_secs = 0\n\n[traps]\nlisten = \"127.0.0.1:{trap_port}\"\nmin_interval_ms = 100\n"
    );
    let agent = AgentProc::start(dir.path(), &cfg);
    let log = || agent.log();
    tap.wait_for(
        Duration::from_secs(30),
        "startup telemetry",
        log,
        |m: &[Telemetry]| (!m.is_empty()).then_some(()),
    )
    .await;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let row = 100 + i;
        let raised = |m: &[Telemetry]| {
            m.iter()
                .flat_map(|t| t.events.iter())
                .filter(|e| matches!(e, Event::AlertRaised { .. }))
                .count()
        };
        let before = raised(&tap.decoded::<Telemetry>());
        sim.command(&format!("set p1 {ALERT}.2.1.{row}|2|3"));
        sim.command(&format!("set p1 {ALERT}.7.1.{row}|2|808"));
        sim.command(&format!("set p1 {ALERT}.8.1.{row}|4|bench alert {i}"));
        // Past the agent's per-printer rate limit.
        tokio::time::sleep(Duration::from_millis(120)).await;
        let sent = Instant::now();
        sim.command(&format!("trap p1 127.0.0.1:{trap_port}"));
        tap.wait_for(
            Duration::from_secs(10),
            "the alert after the trap",
            log,
            |m: &[Telemetry]| (raised(m) > before).then_some(()),
        )
        .await;
        took.push(sent.elapsed());
    }
    let ms = sorted_ms(&took);
    let (p50, p95) = (quantile(&ms, 0.5), quantile(&ms, 0.95));
    r.figure(
        SECTION,
        format!("trap → telemetry at the broker, p50 ({n} alerts)"),
        p50,
        "ms",
    );
    r.figure(SECTION, "trap → telemetry at the broker, p95", p95, "ms");
    r.figure(
        SECTION,
        "without the trap: the next sweep, on average half the interval",
        SWEEP_SECS as f64 * 1000.0 / 2.0,
        "ms",
    );
    r.goal(
        SECTION,
        "an alert reaches the cloud in seconds",
        "p95 / 1 s",
        p95 / 1000.0,
        Bound::AtMost,
        1.0,
    );
    let _ = (&broker, &dir);
}
