//! SNMP fault matrix (#6): the agent binary manages two simulated printers; one sits
//! behind a [`FaultProxy`] (or has a fault knob turned in the simulator), the other is
//! healthy. For each fault a new config version goes to both: the faulty printer's
//! report carries the documented code for each setting (docs/src/protocol.md), the
//! number of requests stays bounded, the healthy printer is applied as usual, and
//! the agent keeps running. At the end the faulty printer is healthy again and its
//! next version applies.

use platen_cloud::model::ReceivedReport;
use platen_cloud::Cloud;
use platen_e2e::fault_proxy::{Fault, FaultProxy};
use platen_e2e::*;
use platen_printer_sim::{oid, SimPrinter};
use platen_protocol::{Code, SettingValue};
use std::time::Duration;

const SYS_LOCATION: &str = "1.3.6.1.2.1.1.6.0";
const SYS_CONTACT: &str = "1.3.6.1.2.1.1.4.0";

/// The codes the faulty printer's report must carry, per setting.
enum Expect {
    All(Code),
    Each(&'static [(&'static str, Code)]),
}

type TurnOn = Box<dyn Fn(&FaultProxy, &SimPrinter)>;

struct Case {
    name: &'static str,
    /// Turn the fault on (proxy mode and/or simulator knob)…
    on: TurnOn,
    expect: Expect,
    /// …the most requests the agent may send the faulty printer for this version.
    max_requests: u64,
}

/// Publish `version` to each printer; each one's report, in the same order.
async fn round(
    cloud: &Cloud,
    agent: &AgentProc,
    printers: &[&str],
    version: u64,
    settings: &[(&str, SettingValue)],
) -> Vec<ReceivedReport> {
    for p in printers {
        cloud
            .publish_desired(&tenant(), &desired(p, version, settings))
            .await
            .unwrap();
    }
    let mut out = Vec::new();
    for p in printers {
        let id = format!("gw-f:{p}:v{version}");
        out.push(wait_report(cloud, &id, Duration::from_secs(30), agent).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_snmp_fault_ends_in_its_code_and_the_other_printer_is_served() {
    let broker = Mosquitto::start(false);
    let dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(broker.port, dir.path()).await;
    let bad = SimPrinter::standard("bad", Default::default());
    let good = SimPrinter::standard("good", Default::default());
    let bad_run = platen_printer_sim::serve("bad", bad.clone(), "127.0.0.1:0", "private")
        .await
        .unwrap();
    let good_run = platen_printer_sim::serve("good", good.clone(), "127.0.0.1:0", "private")
        .await
        .unwrap();
    let rebooting = bad.clone();
    let proxy = FaultProxy::start(bad_run.addr, move || rebooting.reboot()).await;
    let mut cfg = agent_toml(
        "gw-f",
        broker.port,
        &dir.path().join("state"),
        &[
            PrinterEntry {
                timeout_ms: 300,
                ..PrinterEntry::new("bad", proxy.addr)
            },
            PrinterEntry::new("good", good_run.addr),
        ],
    );
    // Telemetry and drift checks would add their own requests to the counts.
    cfg.push_str("\n[telemetry]\ninterval_secs = 3600\nheartbeat_secs = 3600\n\n[drift]\ninterval_secs = 0\n");
    let mut agent = AgentProc::start(dir.path(), &cfg);

    use Code::*;
    let cases: Vec<Case> = vec![
        Case {
            name: "timeout (no answer)",
            on: Box::new(|p, _| p.set(Fault::Drop)),
            expect: Expect::All(Unreachable),
            max_requests: 2,
        },
        Case {
            name: "answer from the wrong source address",
            on: Box::new(|p, _| p.set(Fault::WrongSource)),
            expect: Expect::All(Unreachable),
            max_requests: 2,
        },
        Case {
            name: "answer with the wrong request id",
            on: Box::new(|p, _| p.set(Fault::WrongRequestId)),
            expect: Expect::All(Unreachable),
            max_requests: 2,
        },
        Case {
            name: "notWritable (simulator: read-only object)",
            on: Box::new(|_, s| s.set_read_only(oid(SYS_LOCATION), true)),
            expect: Expect::Each(&[("sysLocation", NotWritable), ("sysContact", Verified)]),
            max_requests: 8,
        },
        Case {
            name: "notWritable (every SET refused)",
            on: Box::new(|p, _| p.set(Fault::RefuseSet(17))),
            expect: Expect::All(NotWritable),
            max_requests: 8,
        },
        Case {
            name: "wrongValue",
            on: Box::new(|p, _| p.set(Fault::RefuseSet(10))),
            expect: Expect::All(ValueRejected),
            max_requests: 8,
        },
        Case {
            name: "wrongType",
            on: Box::new(|p, _| p.set(Fault::RefuseSet(7))),
            expect: Expect::All(ValueRejected),
            max_requests: 8,
        },
        Case {
            name: "noSuchObject",
            on: Box::new(|_, s| {
                s.remove(&oid(SYS_LOCATION));
            }),
            expect: Expect::Each(&[("sysLocation", NotSupported), ("sysContact", Verified)]),
            max_requests: 8,
        },
        Case {
            name: "stale read-back",
            on: Box::new(|_, s| s.set_faults(|f| f.stale_reads = 1000)),
            expect: Expect::All(ReadBackMismatch),
            max_requests: 12,
        },
        Case {
            name: "reboot between SET and read-back",
            on: Box::new(|p, _| p.set(Fault::RebootAfterSet)),
            expect: Expect::All(ReadBackMismatch),
            max_requests: 12,
        },
        Case {
            name: "answers some OIDs, not others (sysContact never answered)",
            on: Box::new(|p, _| p.set(Fault::Silent(oid(SYS_CONTACT)))),
            expect: Expect::All(Unreachable),
            max_requests: 2,
        },
    ];

    // Warm-up: v1 applied on both, and the start-up telemetry poll is over.
    let mut version = 1;
    for r in round(
        &cloud,
        &agent,
        &["bad", "good"],
        version,
        &[("sysLocation", t("Start"))],
    )
    .await
    {
        assert_eq!(code_of(&r, "sysLocation"), Verified);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut table = Vec::new();
    for case in &cases {
        version += 1;
        // A fresh printer state for each case: healthy, original values.
        proxy.set(Fault::None);
        bad.reboot();
        bad.set_read_only(oid(SYS_LOCATION), false);
        bad.set_faults(|f| f.stale_reads = 0);
        if bad.value(&oid(SYS_LOCATION)).is_none() {
            bad.put(oid(SYS_LOCATION), platen_printer_sim::text("restored"));
        }
        (case.on)(&proxy, &bad);
        proxy.take_counts();
        let settings = [
            ("sysLocation", t(&format!("Hall {version}"))),
            ("sysContact", t(&format!("ops-{version}@acme.example"))),
        ];
        let reports = round(&cloud, &agent, &["bad", "good"], version, &settings).await;
        let (r, g) = (&reports[0], &reports[1]);
        let counts = proxy.take_counts();
        for (name, _) in &settings {
            let want = match &case.expect {
                Expect::All(c) => *c,
                Expect::Each(list) => list
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, c)| *c)
                    .unwrap(),
            };
            assert_eq!(
                code_of(r, name),
                want,
                "{}: {name}\n{:#?}",
                case.name,
                r.report
            );
        }
        assert!(
            counts.requests <= case.max_requests,
            "{}: {} requests (bound {})",
            case.name,
            counts.requests,
            case.max_requests
        );
        for (name, _) in &settings {
            assert_eq!(
                code_of(g, name),
                Verified,
                "{}: the healthy printer",
                case.name
            );
        }
        assert_eq!(
            agent.try_exit_code(),
            None,
            "{}: the agent exited",
            case.name
        );
        table.push(format!(
            "| {} | {} | {} requests |",
            case.name,
            r.report
                .settings
                .iter()
                .map(|s| format!("{} {}", s.name, s.code.as_u16()))
                .collect::<Vec<_>>()
                .join(", "),
            counts.requests
        ));
    }
    // Healthy again: the next version applies.
    proxy.set(Fault::None);
    bad.reboot();
    bad.set_faults(|f| f.stale_reads = 0);
    version += 1;
    let settings = [
        ("sysLocation", t("Recovered")),
        ("sysContact", t("ops@acme.example")),
    ];
    let r = &round(&cloud, &agent, &["bad"], version, &settings).await[0];
    assert_eq!(code_of(r, "sysLocation"), Verified, "{:#?}", r.report);
    let log = agent.log();
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    eprintln!("{}", table.join("\n"));
}
