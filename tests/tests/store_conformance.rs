//! One conformance suite for the storage port: the same test bodies against the
//! embedded backend (sled) and the production one (PostgreSQL, a server of the
//! test's own), then what only PostgreSQL has: schema versions, a newer schema
//! refused, a wrong URL, a database restart.
//!
//! One test function per backend runs every body (one PostgreSQL for all of them);
//! a failing body is named in the panic.

use chrono::{DateTime, Duration, TimeZone, Utc};
use platen_cloud::billing::period;
use platen_cloud::model::ReceivedReport;
use platen_cloud::model::Sample;
use platen_cloud::model::{printer_stale_event, Quiet};
use platen_cloud::model::{Actor, Migration, MigrationDecision, MigrationState};
use platen_cloud::model::{AgentSeen, Cause, PrinterSeen};
use platen_cloud::model::{Attempt, DeliveryState, Endpoint, SigningSecret, SHIPMENT_ORDERED};
use platen_cloud::model::{ChangeKind, Contract, ContractChange, Reseller, Tenant};
use platen_cloud::model::{ChangeRecord, Event, LedgerEntry};
use platen_cloud::model::{NotOwed, Part, Shipment};
use platen_cloud::model::{SuppliesState, TelemetryState, Usage, Verdict};
use platen_cloud::plans::catalog::Catalog;
use platen_cloud::store::{
    Claim, Created, Inserted, LedgerOwner, List, NewReport, OwnerIndex, Store, StoreError, Stored,
};
use platen_e2e::postgres::{Postgres, PASSWORD};
use platen_protocol::{ApplyReport, Id, ReportStatus};
use std::collections::BTreeMap;

const CATALOG: &str = include_str!("../../packaging/catalog.example.toml");

fn id(s: &str) -> Id {
    s.parse().unwrap()
}

fn t(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
}

fn tenant(s: &Store, name: &str, reseller: Option<&str>) {
    s.add_tenant(&Tenant {
        id: id(name),
        name: name.to_uppercase(),
        reseller: reseller.map(id),
    })
    .unwrap();
}

fn contract(tenant: &str, cid: &str, printers: &[&str]) -> (Contract, ContractChange) {
    let now = Utc::now();
    let c = Contract {
        id: id(cid),
        tenant: id(tenant),
        printers: printers.iter().map(|p| id(p)).collect(),
        plan: id("mono-1000"),
        effective_at: now,
        time_zone: "UTC".into(),
        currency: "EUR".into(),
        term_months: None,
        created_at: now,
    };
    let start = change(&c, 1);
    (c, start)
}

fn change(c: &Contract, seq: u32) -> ContractChange {
    ContractChange {
        id: platen_cloud::model::change_id(&c.id, seq),
        contract: c.id.clone(),
        seq,
        change: if seq == 1 {
            ChangeKind::Start
        } else {
            ChangeKind::PlanChange {
                from: c.plan.clone(),
                to: c.plan.clone(),
            }
        },
        effective_at: c.effective_at,
        requested_at: c.effective_at,
        plan: c.plan.clone(),
        settings: BTreeMap::new(),
    }
}

fn migration(mid: &str, tenant: &str, contract: &str, state: MigrationState) -> Migration {
    Migration {
        id: mid.into(),
        decision: MigrationDecision {
            tenant: id(tenant),
            contract: id(contract),
            from_plan: id("mono-1000"),
            to_plan: id("mono-5000"),
            requested_by: Actor::Operator,
            decided_at: t(1, 0),
            verdict: Verdict {
                rule: "r1".into(),
                rule_line: 1,
                decision: platen_cloud::model::Decision::Refuse {
                    code: "c".into(),
                    message: "m".into(),
                },
            },
            effective_at: Some(t(2, 0)),
            usage: Usage {
                used: Some(10),
                telemetry: TelemetryState::Complete,
                days_left: 3,
                supplies: SuppliesState::Ok,
            },
            period: "2026-03".into(),
            printers: BTreeMap::new(),
        },
        state,
    }
}

fn part(fee: u64) -> Part {
    let p = period::month(chrono_tz::UTC, 2026, 3);
    Part {
        period: p,
        from: t(1, 0),
        to: t(2, 0),
        unavailable_secs: 86_400,
        period_secs: 31 * 86_400,
        up_to_completion: true,
        fee_credit: fee,
        fee_arithmetic: "x".into(),
        extra_pages: None,
        shipment: None,
    }
}

fn ledger_entry(c: &Contract, change_id: &str, period: &str, fee: u64) -> LedgerEntry {
    LedgerEntry {
        key: format!("{change_id}/{period}"),
        tenant: c.tenant.clone(),
        contract: c.id.clone(),
        change_id: change_id.into(),
        currency: "EUR".into(),
        created_at: t(3, 0),
        reverses: None,
        part: part(fee),
    }
}

fn report(printer: &str, agent: &str, version: u64) -> (ReceivedReport, Vec<u8>) {
    let (agent, printer) = (id(agent), id(printer));
    let rec = ReceivedReport {
        report: ApplyReport {
            report_id: ApplyReport::make_id(&agent, &printer, version),
            agent_id: agent,
            printer_id: printer,
            config_version: version,
            status: ReportStatus::Applied,
            settings: vec![],
            received_at: Utc::now(),
            completed_at: Utc::now(),
            refused: None,
        },
        received_at: Utc::now(),
    };
    let json = serde_json::to_vec(&rec).unwrap();
    (rec, json)
}

// ---------------------------------------------------------------------------------
// The bodies

fn catalog_and_parties(s: &Store) {
    let cat = Catalog::parse(CATALOG).unwrap();
    for p in cat.plans.values() {
        assert_eq!(s.add_plan(p).unwrap(), Inserted::New);
        assert_eq!(s.add_plan(p).unwrap(), Inserted::Exists);
    }
    let mut p = s.plan("mono-1000").unwrap().unwrap();
    p.name = "renamed".into();
    s.put_plan(&p).unwrap();
    assert_eq!(s.plan("mono-1000").unwrap().unwrap().name, "renamed");
    let ids: Vec<String> = s
        .plans()
        .unwrap()
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "in key order");
    let r = Reseller {
        id: id("r1"),
        name: "R".into(),
    };
    assert_eq!(s.add_reseller(&r).unwrap(), Inserted::New);
    assert_eq!(s.add_reseller(&r).unwrap(), Inserted::Exists);
    assert_eq!(s.reseller("r1").unwrap(), Some(r));
    tenant(s, "acme", Some("r1"));
    tenant(s, "globex", None);
    assert_eq!(
        s.add_tenant(&Tenant {
            id: id("acme"),
            name: "other".into(),
            reseller: None
        })
        .unwrap(),
        Inserted::Exists
    );
    assert_eq!(
        s.tenant("acme").unwrap().unwrap().name,
        "ACME",
        "first wins"
    );
    assert_eq!(s.tenants().unwrap().len(), 2);
    assert!(s.tenant("nobody").unwrap().is_none());
    let (a, b) = (s.next_id().unwrap(), s.next_id().unwrap());
    assert!(b > a);
}

fn contracts_claims_and_prefix_ids(s: &Store) {
    tenant(s, "acme", None);
    tenant(s, "globex", None);
    let (k, start) = contract("acme", "k", &["p1", "p2"]);
    assert_eq!(s.create_contract(&k, &start, false).unwrap(), Created::New);
    assert_eq!(
        s.create_contract(&k, &start, false).unwrap(),
        Created::Exists
    );
    // Another contract on a claimed printer: refused, and nothing of it stays.
    let (k2, start2) = contract("acme", "k2", &["p3", "p2"]);
    assert_eq!(
        s.create_contract(&k2, &start2, false).unwrap(),
        Created::PrinterTaken {
            printer: id("p2"),
            contract: "k".into()
        }
    );
    assert!(s.contract("k2").unwrap().is_none());
    assert!(s.change(&start2.id).unwrap().is_none());
    assert_eq!(s.contract_of_printer(&id("acme"), &id("p3")).unwrap(), None);
    // Sharing allowed: created, the printer stays with its first contract.
    assert_eq!(s.create_contract(&k2, &start2, true).unwrap(), Created::New);
    assert_eq!(
        s.contract_of_printer(&id("acme"), &id("p2")).unwrap(),
        Some("k".into())
    );
    // The same printer id under another tenant is another printer.
    let (g, gstart) = contract("globex", "k.globex", &["p1"]);
    assert_eq!(s.create_contract(&g, &gstart, false).unwrap(), Created::New);
    for seq in 2..=3 {
        assert_eq!(s.add_change(&change(&k, seq)).unwrap(), Inserted::New);
    }
    assert_eq!(s.add_change(&change(&k, 3)).unwrap(), Inserted::Exists);
    // A change of a contract that does not exist: refused.
    let (ghost, _) = contract("acme", "ghost", &["p9"]);
    assert!(matches!(
        s.add_change(&change(&ghost, 2)),
        Err(StoreError::Invalid { .. })
    ));
    let seqs: Vec<u32> = s
        .changes_of(&id("k"))
        .unwrap()
        .iter()
        .map(|r| r.change.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3], "only k's changes, in order");
    assert_eq!(s.changes_of(&id("k.globex")).unwrap().len(), 1);
    let mine: Vec<String> = s
        .contracts_of_tenant(&id("acme"))
        .unwrap()
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(mine, ["k", "k2"]);
    assert_eq!(s.contracts().unwrap().len(), 3);
}

fn changes_fall_due_and_settle(s: &Store) {
    tenant(s, "acme", None);
    let (k, start) = contract("acme", "k", &["p1"]);
    s.create_contract(&k, &start, false).unwrap();
    s.add_change(&change(&k, 2)).unwrap();
    let now = Utc::now() + Duration::seconds(1);
    // New changes are due now.
    assert_eq!(s.due_changes(now, 10).unwrap().len(), 2);
    assert_eq!(s.due_changes(now, 1).unwrap().len(), 1, "at most the limit");
    let mut one = s.change(&start.id).unwrap().unwrap();
    s.save_change(&one, Some(now + Duration::hours(1))).unwrap();
    let due: Vec<String> = s
        .due_changes(now, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.change.id)
        .collect();
    assert_eq!(due, ["k.2"]);
    // Soonest first.
    let later = s.due_changes(now + Duration::hours(2), 10).unwrap();
    assert_eq!(later[0].change.id, "k.2");
    // A report wakes it.
    s.wake_change(&start.id).unwrap();
    assert_eq!(s.due_changes(now, 10).unwrap().len(), 2);
    // Settled: never due again, not open, and its state reads back.
    one.setup.settled = true;
    one.setup.settled_at = Some(now);
    one.setup.completed_at = Some(now);
    s.save_change(&one, Some(now)).unwrap();
    assert_eq!(s.change(&start.id).unwrap().unwrap(), one);
    assert!(s
        .open_changes()
        .unwrap()
        .iter()
        .all(|r| r.change.id != start.id));
    s.wake_change(&start.id).unwrap();
    assert!(s
        .due_changes(now + Duration::days(1), 10)
        .unwrap()
        .iter()
        .all(|r| r.change.id != start.id));
    // Not due (None) but not settled: out of the due list and of the open ones.
    let two = s.change("k.2").unwrap().unwrap();
    s.save_change(&two, None).unwrap();
    assert!(s
        .due_changes(now + Duration::days(1), 10)
        .unwrap()
        .is_empty());
}

/// Two instances claiming the same due changes: each change goes to one of them; the
/// other's claims are skipped until their lease runs out; a save by an owner that
/// lost its claim writes nothing; a wake while claimed leaves the change due at once;
/// an owner takes its own claims back at once (a restart under the same name).
fn claims_give_each_due_change_to_one_owner(s: &Store) {
    tenant(s, "acme", None);
    let (k, start) = contract("acme", "k", &["p1"]);
    s.create_contract(&k, &start, false).unwrap();
    s.add_change(&change(&k, 2)).unwrap();
    s.add_change(&change(&k, 3)).unwrap();
    let lease = Duration::seconds(30);
    let a = Claim {
        owner: "cloud-a".into(),
        lease,
    };
    let b = Claim {
        owner: "cloud-b".into(),
        lease,
    };
    let now = Utc::now() + Duration::seconds(1);
    let ids = |v: Vec<ChangeRecord>| v.into_iter().map(|r| r.change.id).collect::<Vec<_>>();
    let got_a = ids(s.claim_due(&a, now, 2).unwrap());
    assert_eq!(got_a.len(), 2, "at most the limit");
    let got_b = ids(s.claim_due(&b, now, 10).unwrap());
    assert_eq!(
        got_b.len(),
        1,
        "b gets only what a does not hold: {got_b:?}"
    );
    assert!(got_a.iter().all(|x| !got_b.contains(x)));
    let c = Claim {
        owner: "cloud-c".into(),
        lease,
    };
    assert!(
        s.claim_due(&c, now, 10).unwrap().is_empty(),
        "a and b hold them all"
    );
    // a restarted under its name takes its own claims back at once.
    assert_eq!(ids(s.claim_due(&a, now, 10).unwrap()), got_a);
    // A wake while a holds the first: due at once after a's save, whatever a computed.
    let first = s.change(&got_a[0]).unwrap().unwrap();
    s.wake_change(&first.change.id).unwrap();
    assert!(s
        .save_claimed(&a, &first, Some(now + Duration::hours(5)))
        .unwrap());
    assert_eq!(
        ids(s
            .claim_due(&c, Utc::now() + Duration::seconds(1), 10)
            .unwrap()),
        std::slice::from_ref(&first.change.id),
        "woken while claimed: due now, and free"
    );
    // a's lease on the second runs out: b takes it over; a's late save is refused.
    let second = s.change(&got_a[1]).unwrap().unwrap();
    let after = now + lease + Duration::seconds(1);
    let taken = ids(s.claim_due(&b, after, 10).unwrap());
    assert!(taken.contains(&second.change.id), "{taken:?}");
    let mut late = second.clone();
    late.setup.settled = true;
    assert!(
        !s.save_claimed(&a, &late, None).unwrap(),
        "a lost its claim"
    );
    assert_eq!(s.change(&second.change.id).unwrap().unwrap(), second);
    assert!(s
        .save_claimed(&b, &second, Some(after + Duration::hours(1)))
        .unwrap());
    assert!(
        !s.save_claimed(&b, &second, None).unwrap(),
        "released by the save"
    );
    let due = ids(s.claim_due(&a, after, 10).unwrap());
    assert!(
        !due.contains(&second.change.id),
        "saved with a later due time"
    );
}

fn versions_follow_the_clock_and_only_grow(s: &Store) {
    let before = Utc::now().timestamp_millis() as u64;
    let (t1, p) = (id("acme"), id("p1"));
    let v1 = s.next_version(&t1, &p).unwrap();
    let v2 = s.next_version(&t1, &p).unwrap();
    assert!(v1 >= before && v2 > v1, "{before} {v1} {v2}");
    let other = s.next_version(&id("globex"), &p).unwrap();
    assert!(other >= before);
}

fn every_event_kind_reads_back(s: &Store) {
    tenant(s, "acme", None);
    let (k, start) = contract("acme", "c", &["p1"]);
    s.create_contract(&k, &start, false).unwrap();
    for seq in 2..=3 {
        s.add_change(&change(&k, seq)).unwrap();
    }
    let p = id("p1");
    let now = Utc::now();
    let events = vec![
        Event::ChangeRequested {
            change: ChangeKind::Start,
            plan: id("x"),
            effective_at: now,
        },
        Event::ConfigPublished {
            printer: p.clone(),
            version: 1,
            settings: 2,
        },
        Event::ReportReceived {
            printer: p.clone(),
            version: 1,
            report_id: "r".into(),
            status: ReportStatus::Applied,
            report_time: now,
            codes: BTreeMap::new(),
        },
        Event::ConfigConfirmed {
            printer: p.clone(),
            version: 1,
            confirmed_at: now,
        },
        Event::ConfigFault {
            printer: p.clone(),
            reason: "r".into(),
            cause: Cause::Customer {
                evidence: "agent down".into(),
            },
        },
        Event::ProviderCall {
            call: "setup".into(),
            printer: Some(p.clone()),
            ok: true,
            result: "ok".into(),
        },
        Event::ServiceConfirmed {
            printer: p.clone(),
            confirmed_at: now,
        },
        Event::ServiceFault {
            printer: p.clone(),
            reason: "r".into(),
        },
        Event::SetupCompleted {
            t0: now,
            t1: now,
            config_confirmed_at: now,
            service_confirmed_at: now,
        },
        Event::NoCompensation {
            reason: NotOwed::NoFault,
        },
        Event::ShipmentAccepted {
            ledger_key: "k".into(),
            item: "i".into(),
            quantity: 1,
        },
        Event::MigrationExecuted {
            migration: "m".into(),
            rule: "r".into(),
            from: p.clone(),
            to: p.clone(),
        },
    ];
    for e in &events {
        s.append("c.1", e.clone()).unwrap();
    }
    let back: Vec<Event> = s
        .timeline("c.1")
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(back, events);
    // Noted again (the engine killed after noting, before saving its state): the
    // once-per-change observations stay single, recurring ones are appended.
    for e in &events {
        let added = s.append("c.1", e.clone()).unwrap();
        assert_eq!(added.is_some(), e.once_key().is_none(), "{e:?}");
    }
    let again: Vec<Event> = s
        .timeline("c.1")
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    let recurring: Vec<Event> = events
        .iter()
        .filter(|e| e.once_key().is_none())
        .cloned()
        .collect();
    assert_eq!(again, [events.clone(), recurring].concat());
    // The same report in another change's timeline is that change's evidence.
    assert!(s.append("c.2", events[2].clone()).unwrap().is_some());
    // A recurring event noted again in a row is counted on the last entry.
    let fault = Event::ConfigFault {
        printer: p.clone(),
        reason: "no report for version 9 within 60 s of its publication".into(),
        cause: Cause::Provider,
    };
    for _ in 0..100 {
        s.append("c.3", fault.clone()).unwrap();
    }
    let tl = s.timeline("c.3").unwrap();
    assert_eq!(tl.len(), 1);
    assert_eq!(tl[0].repeated.as_ref().unwrap().times, 99);
    s.append("c.3", events[1].clone()).unwrap();
    s.append("c.3", fault.clone()).unwrap();
    assert_eq!(s.timeline("c.3").unwrap().len(), 3);
    // Sequence numbers only grow.
    let seqs: Vec<u64> = s.timeline("c.1").unwrap().iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

fn ledger_is_insert_once_and_read_by_owner(s: &Store) {
    tenant(s, "acme", None);
    tenant(s, "globex", None);
    let (k, start) = contract("acme", "k", &["p1"]);
    s.create_contract(&k, &start, false).unwrap();
    let (g, gstart) = contract("globex", "g", &["p1"]);
    s.create_contract(&g, &gstart, false).unwrap();
    let e = ledger_entry(&k, "k.1", "2026-03", 1000);
    assert_eq!(s.add_ledger(&e).unwrap(), Inserted::New);
    let mut again = e.clone();
    again.part.fee_credit = 5;
    assert_eq!(s.add_ledger(&again).unwrap(), Inserted::Exists);
    assert_eq!(
        s.ledger_entry(&e.key).unwrap(),
        Some(e.clone()),
        "never rewritten"
    );
    let mut reversal = ledger_entry(&k, "k.1", "2026-03/reversal", 60);
    reversal.reverses = Some(e.key.clone());
    assert_eq!(s.add_ledger(&reversal).unwrap(), Inserted::New);
    s.add_ledger(&ledger_entry(&g, "g.1", "2026-03", 7))
        .unwrap();
    let mine = s.ledger_of(LedgerOwner::Tenant(&id("acme"))).unwrap();
    assert_eq!(mine.len(), 2);
    assert_eq!(mine.iter().map(|e| e.signed_credit()).sum::<i128>(), 940);
    assert_eq!(
        s.ledger_of(LedgerOwner::Contract(&id("g"))).unwrap().len(),
        1
    );
    assert_eq!(s.ledger().unwrap().len(), 3);
    assert!(!s.shipment_sent(&e.key).unwrap());
    s.mark_shipment_sent(&e.key, t(4, 0)).unwrap();
    s.mark_shipment_sent(&e.key, t(5, 0)).unwrap();
    assert!(s.shipment_sent(&e.key).unwrap());
}

fn migrations_execute_once(s: &Store) {
    tenant(s, "acme", None);
    let (k, start) = contract("acme", "k", &["pm"]);
    s.create_contract(&k, &start, false).unwrap();
    let m = migration("m1", "acme", "k", MigrationState::Scheduled);
    assert_eq!(s.add_migration(&m).unwrap(), Inserted::New);
    assert_eq!(s.add_migration(&m).unwrap(), Inserted::Exists);
    s.add_migration(&migration("m2", "acme", "k", MigrationState::Scheduled))
        .unwrap();
    s.add_migration(&migration("m3", "acme", "k", MigrationState::Refused))
        .unwrap();
    let due: Vec<String> = s.scheduled().unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(due, ["m1", "m2"]);
    let ch = change(&k, 2);
    assert!(s.execute_migration("m1", &ch).unwrap());
    assert!(!s.execute_migration("m1", &ch).unwrap(), "once");
    assert!(s.change(&ch.id).unwrap().is_some());
    assert!(matches!(
        s.migration("m1").unwrap().unwrap().state,
        MigrationState::Executed { .. }
    ));
    // A change id already taken: not executed, still scheduled.
    assert!(!s.execute_migration("m2", &ch).unwrap());
    assert_eq!(s.scheduled().unwrap().len(), 1);
    let cancelled = MigrationState::Cancelled {
        by: Actor::Operator,
        at: t(1, 0),
    };
    assert!(s.finish_migration("m2", cancelled.clone()).unwrap());
    assert!(!s.finish_migration("m2", cancelled).unwrap());
    assert!(s.scheduled().unwrap().is_empty());
    assert_eq!(
        s.migrations_of(LedgerOwner::Tenant(&id("acme")))
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        s.migrations_of(LedgerOwner::Contract(&id("k")))
            .unwrap()
            .len(),
        3
    );
    assert!(s
        .migrations_of(LedgerOwner::Tenant(&id("other")))
        .unwrap()
        .is_empty());
    // Retention: refused ones decided before the cutoff go, in batches.
    for i in 0..5 {
        s.add_migration(&migration(
            &format!("r{i}"),
            "acme",
            "k",
            MigrationState::Refused,
        ))
        .unwrap();
    }
    let (mut removed, mut from) = (0, Vec::new());
    loop {
        let (n, next) = s.prune_refused_migrations(t(2, 0), &from, 2).unwrap();
        removed += n;
        match next {
            Some(k) => from = k,
            None => break,
        }
    }
    assert_eq!(removed, 6);
    assert_eq!(s.migrations().unwrap().len(), 2);
}

fn pages_continue_where_they_stopped(s: &Store) {
    for i in 0..7 {
        tenant(s, &format!("t{i}"), None);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = s
            .page::<Tenant>(List::Tenants, after.as_deref(), 3)
            .unwrap();
        assert!(p.items.len() <= 3);
        seen.extend(p.items.iter().map(|t| t.id.to_string()));
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("t{i}")).collect::<Vec<_>>());
    for c in ["a", "b", "c"] {
        let (k, start) = contract("t1", c, &[c]);
        s.create_contract(&k, &start, false).unwrap();
    }
    let (k, start) = contract("t2", "z", &["z"]);
    s.create_contract(&k, &start, false).unwrap();
    let p = s
        .page_of::<Contract>(OwnerIndex::ContractsOfTenant, &id("t1"), None, 2)
        .unwrap();
    assert_eq!(p.items.len(), 2);
    assert_eq!(p.next.as_deref(), Some("b"));
    let p = s
        .page_of::<Contract>(OwnerIndex::ContractsOfTenant, &id("t1"), Some("b"), 2)
        .unwrap();
    assert_eq!(p.items.len(), 1);
    assert!(p.next.is_none());
}

fn reports_are_stored_once_and_bounded(s: &Store) {
    let (acme, p1) = (id("acme"), id("p1"));
    assert!(!s.was_published(&acme, &p1, 5).unwrap());
    assert!(
        !s.was_published(&acme, &p1, u64::MAX).unwrap(),
        "beyond any column"
    );
    s.record_published(&acme, &p1, &[5, 6], None, Utc::now())
        .unwrap();
    assert!(s.was_published(&acme, &p1, 5).unwrap());
    assert!(!s.was_published(&id("globex"), &p1, 5).unwrap());
    let (r, json) = report("p1", "gw", 5);
    assert_eq!(s.store_report(&acme, &r, &json, 3).unwrap(), Stored::New);
    assert_eq!(
        s.store_report(&acme, &r, &json, 3).unwrap(),
        Stored::Duplicate
    );
    for agent in ["gw2", "gw3"] {
        let (r, json) = report("p1", agent, 5);
        assert_eq!(s.store_report(&acme, &r, &json, 3).unwrap(), Stored::New);
    }
    let (r4, json4) = report("p1", "gw4", 5);
    assert_eq!(s.store_report(&acme, &r4, &json4, 3).unwrap(), Stored::Full);
    // A stored one is still a duplicate, not a refusal.
    assert_eq!(
        s.store_report(&acme, &r, &json, 3).unwrap(),
        Stored::Duplicate
    );
    let (r6, json6) = report("p1", "gw", 6);
    s.store_report(&acme, &r6, &json6, 3).unwrap();
    assert_eq!(s.report(&r.report.report_id).unwrap(), Some(r.clone()));
    assert_eq!(s.reports_for(&acme, &p1, 5..=5).unwrap().len(), 3);
    let versions: Vec<u64> = s
        .reports_for(&acme, &p1, 0..=u64::MAX)
        .unwrap()
        .iter()
        .map(|r| r.report.config_version)
        .collect();
    assert_eq!(versions, [5, 5, 5, 6], "oldest version first");
    assert!(s
        .reports_for(&acme, &id("p10"), 0..=u64::MAX)
        .unwrap()
        .is_empty());
    assert_eq!(s.reports().unwrap().len(), 4);
}

/// A batch of reports has exactly the outcomes of storing them one by one.
fn report_batches_match_one_by_one(s: &Store) {
    let (acme, p1) = (id("acme"), id("p1"));
    s.record_published(&acme, &p1, &[1, 2], None, Utc::now())
        .unwrap();
    let (old, old_json) = report("p1", "gw0", 1);
    s.store_report(&acme, &old, &old_json, 3).unwrap();
    let items: Vec<(ReceivedReport, Vec<u8>)> = vec![
        report("p1", "gw0", 1),        // stored before: duplicate
        report("p1", "gw1", 1),        // new (2 of 3)
        report("p1", "gw1", 1),        // the same again in the batch: duplicate
        report("p1", "gw2", 1),        // new (3 of 3)
        report("p1", "gw3", 1),        // full
        report("p1", "gw1", 9),        // never published
        report("p1", "gw1", u64::MAX), // beyond any column: never published
        report("p1", "gw1", 2),        // new
    ];
    let batch: Vec<NewReport<'_>> = items
        .iter()
        .map(|(r, j)| NewReport {
            tenant: &acme,
            report: r,
            json: j,
        })
        .collect();
    use Stored::*;
    assert_eq!(
        s.store_reports(&batch, 3).unwrap(),
        [
            Duplicate,
            New,
            Duplicate,
            New,
            Full,
            Unpublished,
            Unpublished,
            New
        ]
    );
    assert_eq!(s.reports_for(&acme, &p1, 0..=u64::MAX).unwrap().len(), 4);
    assert!(s.store_reports(&[], 3).unwrap().is_empty());
}

fn report_retention_keeps_open_and_paid_changes_evidence(s: &Store) {
    tenant(s, "acme", None);
    let acme = id("acme");
    let now = Utc::now();
    let mut changes = Vec::new();
    for (i, printer) in ["p1", "p2", "p3"].iter().enumerate() {
        let (k, start) = contract("acme", &format!("c{i}"), &[printer]);
        s.create_contract(&k, &start, false).unwrap();
        s.record_published(&acme, &id(printer), &[1], Some(&start.id), now)
            .unwrap();
        let (r, json) = report(printer, "gw", 1);
        s.store_report(&acme, &r, &json, 8).unwrap();
        changes.push((k, start));
    }
    // c0 settled long ago, unpaid; c1 settled long ago, paid; c2 open.
    for (k, start) in &changes[..2] {
        let mut rec = ChangeRecord {
            change: start.clone(),
            setup: Default::default(),
        };
        rec.setup.settled = true;
        rec.setup.settled_at = Some(now - Duration::days(500));
        s.save_change(&rec, None).unwrap();
        let _ = k;
    }
    s.add_ledger(&ledger_entry(&changes[1].0, &changes[1].1.id, "2026-03", 5))
        .unwrap();
    // A report of a version published by hand stays.
    s.record_published(&acme, &id("p9"), &[1], None, now)
        .unwrap();
    let (r9, json9) = report("p9", "gw", 1);
    s.store_report(&acme, &r9, &json9, 8).unwrap();
    let before = now - Duration::days(400);
    let (mut removed, mut from) = (0, Vec::new());
    loop {
        let (n, next) = s.prune_settled_reports(before, &from, 2).unwrap();
        removed += n;
        match next {
            Some(k) => from = k,
            None => break,
        }
    }
    assert_eq!(removed, 1);
    assert!(s.reports_for(&acme, &id("p1"), 0..=9).unwrap().is_empty());
    for p in ["p2", "p3", "p9"] {
        assert_eq!(s.reports_for(&acme, &id(p), 0..=9).unwrap().len(), 1, "{p}");
    }
}

fn seen_state_round_trips(s: &Store) {
    let a = AgentSeen {
        up: false,
        since: t(1, 0),
        reason: Some("stopped".into()),
    };
    assert!(s.agent_seen(&id("gw")).unwrap().is_none());
    s.set_agent_seen(&id("gw"), &a).unwrap();
    assert_eq!(s.agent_seen(&id("gw")).unwrap(), Some(a));
    let p = PrinterSeen {
        agent: id("gw"),
        reachable: true,
        since: t(1, 0),
    };
    s.set_printer_seen(&id("acme"), &id("p1"), &p).unwrap();
    let mut p2 = p.clone();
    p2.reachable = false;
    s.set_printer_seen(&id("acme"), &id("p1"), &p2).unwrap();
    assert_eq!(s.printer_seen(&id("acme"), &id("p1")).unwrap(), Some(p2));
    assert!(s.printer_seen(&id("globex"), &id("p1")).unwrap().is_none());
}

fn sample(read_at: DateTime<Utc>, value: u64) -> Sample {
    Sample {
        read_at,
        message_id: format!("m{}", read_at.timestamp()),
        counter: Some("total".into()),
        value: Some(value),
        supplies: SuppliesState::Ok,
        others: Vec::new(),
    }
}

fn samples_keep_one_per_reading_and_find_the_baseline(s: &Store) {
    let (acme, p1) = (id("acme"), id("p1"));
    let feb = |d| Utc.with_ymd_and_hms(2026, 2, d, 0, 0, 0).unwrap();
    assert!(s.record_sample(&acme, &p1, &sample(feb(20), 1)).unwrap());
    assert!(s.record_sample(&acme, &p1, &sample(feb(27), 2)).unwrap());
    assert!(s.record_sample(&acme, &p1, &sample(t(5, 0), 3)).unwrap());
    assert!(
        !s.record_sample(&acme, &p1, &sample(t(5, 0), 4)).unwrap(),
        "the same reading again"
    );
    let april = Utc.with_ymd_and_hms(2026, 4, 2, 0, 0, 0).unwrap();
    assert!(s.record_sample(&acme, &p1, &sample(april, 5)).unwrap());
    let march = period::month(chrono_tz::UTC, 2026, 3);
    let times: Vec<_> = s
        .samples(&acme, &p1, &march)
        .unwrap()
        .iter()
        .map(|s| s.read_at)
        .collect();
    assert_eq!(times, [feb(27), t(5, 0)]);
    assert!(s.samples(&acme, &id("p10"), &march).unwrap().is_empty());
    assert_eq!(s.latest_sample(&acme, &p1).unwrap(), Some(april));
}

fn pruning_thins_to_daily_maxima_and_resets(s: &Store) {
    let acme = id("acme");
    let put = |printer: &str, at: DateTime<Utc>, value: u64| {
        assert!(s
            .record_sample(&acme, &id(printer), &sample(at, value))
            .unwrap());
    };
    // p1, March 1–3: hourly readings; on March 2 the counter drops (a reset).
    for hour in 0..24 {
        put("p1", t(1, hour), 100 + hour as u64);
        put(
            "p1",
            t(2, hour),
            if hour < 12 {
                200 + hour as u64
            } else {
                hour as u64
            },
        );
    }
    put("p1", t(20, 0), 900);
    put("p1", t(20, 1), 901);
    put("p10", t(1, 5), 7);
    put("p2", t(1, 6), 8);
    let prune_all = |delete_before, thin_before| {
        let mut from = Vec::new();
        loop {
            let (_, next) = s
                .prune_samples(delete_before, thin_before, &from, 7)
                .unwrap();
            match next {
                Some(k) => from = k,
                None => break,
            }
        }
    };
    prune_all(t(1, 0) - Duration::days(1), t(10, 0));
    let all = platen_cloud::model::Period {
        start: t(1, 0) - Duration::days(30),
        end: t(28, 0),
        year: 2026,
        month: 3,
    };
    let values = |p: &str| -> Vec<u64> {
        s.samples(&acme, &id(p), &all)
            .unwrap()
            .iter()
            .filter_map(|s| s.value)
            .collect()
    };
    // March 1: its last (123). March 2: 211 before the drop, 12 after it, 23 last.
    assert_eq!(values("p1"), [123, 211, 12, 23, 900, 901]);
    assert_eq!(values("p10"), [7]);
    assert_eq!(values("p2"), [8]);
    // Past the retention: removed, but for each printer's newest.
    prune_all(t(15, 0), t(15, 0));
    assert_eq!(values("p1"), [900, 901]);
    assert_eq!(values("p10"), [7]);
    assert_eq!(values("p2"), [8]);
}

type Body = fn(&Store);

const BODIES: &[(&str, Body)] = &[
    ("catalog_and_parties", catalog_and_parties),
    (
        "contracts_claims_and_prefix_ids",
        contracts_claims_and_prefix_ids,
    ),
    ("changes_fall_due_and_settle", changes_fall_due_and_settle),
    (
        "versions_follow_the_clock_and_only_grow",
        versions_follow_the_clock_and_only_grow,
    ),
    ("every_event_kind_reads_back", every_event_kind_reads_back),
    (
        "ledger_is_insert_once_and_read_by_owner",
        ledger_is_insert_once_and_read_by_owner,
    ),
    ("migrations_execute_once", migrations_execute_once),
    (
        "pages_continue_where_they_stopped",
        pages_continue_where_they_stopped,
    ),
    (
        "reports_are_stored_once_and_bounded",
        reports_are_stored_once_and_bounded,
    ),
    (
        "report_batches_match_one_by_one",
        report_batches_match_one_by_one,
    ),
    (
        "report_retention_keeps_open_and_paid_changes_evidence",
        report_retention_keeps_open_and_paid_changes_evidence,
    ),
    ("seen_state_round_trips", seen_state_round_trips),
    (
        "claims_give_each_due_change_to_one_owner",
        claims_give_each_due_change_to_one_owner,
    ),
    (
        "samples_keep_one_per_reading_and_find_the_baseline",
        samples_keep_one_per_reading_and_find_the_baseline,
    ),
    (
        "pruning_thins_to_daily_maxima_and_resets",
        pruning_thins_to_daily_maxima_and_resets,
    ),
    (
        "webhook_events_are_written_with_the_ledger",
        webhook_events_are_written_with_the_ledger,
    ),
    (
        "webhook_events_report_faults_settlements_and_migrations",
        webhook_events_report_faults_settlements_and_migrations,
    ),
    (
        "webhook_events_reach_a_resellers_endpoint_for_its_tenants_only",
        webhook_events_reach_a_resellers_endpoint_for_its_tenants_only,
    ),
    (
        "stale_printer_events_are_written_once_per_quiet_spell",
        stale_printer_events_are_written_once_per_quiet_spell,
    ),
];

fn endpoint(name: &str, events: &[&str]) -> Endpoint {
    Endpoint {
        id: id(name),
        reseller: None,
        url: format!("http://127.0.0.1:9/{name}"),
        events: events.iter().map(|e| e.to_string()).collect(),
        secrets: vec![SigningSecret {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            created_at: t(1, 0),
            expires_at: None,
        }],
        disabled: false,
        failing_since: None,
        failures_in_a_row: 0,
        created_at: t(1, 0),
    }
}

/// The outbox: a ledger entry's events are written with it (numbered per contract,
/// never twice), each with a pending delivery to every endpoint that wants it; a
/// delivery is claimed by one owner at a time and saved only by its owner; replay
/// makes a delivered event pending again.
fn webhook_events_are_written_with_the_ledger(s: &Store) {
    tenant(s, "acme", None);
    let (k, start) = contract("acme", "k", &["p1"]);
    s.create_contract(&k, &start, false).unwrap();
    assert_eq!(
        s.add_endpoint(&endpoint("all", &[])).unwrap(),
        Inserted::New
    );
    assert_eq!(
        s.add_endpoint(&endpoint("all", &[])).unwrap(),
        Inserted::Exists
    );
    s.add_endpoint(&endpoint("ships", &[SHIPMENT_ORDERED]))
        .unwrap();
    let mut off = endpoint("off", &[]);
    off.disabled = true;
    s.add_endpoint(&off).unwrap();

    let mut e = ledger_entry(&k, "k.1", "2026-03", 1000);
    e.part.shipment = Some(Shipment {
        item: "toner-k".into(),
        quantity: 1,
        arithmetic: "ceil(86400 s / 604800 s) = 1".into(),
    });
    assert_eq!(s.add_ledger(&e).unwrap(), Inserted::New);
    assert_eq!(s.add_ledger(&e).unwrap(), Inserted::Exists);
    let mut reversal = ledger_entry(&k, "k.1", "2026-03/reversal", 60);
    reversal.reverses = Some(e.key.clone());
    s.add_ledger(&reversal).unwrap();

    let events = s.webhook_events(0, 100).unwrap();
    let seen: Vec<(String, u64)> = events.iter().map(|(_, e)| (e.id.clone(), e.seq)).collect();
    assert_eq!(
        seen,
        vec![
            ("credit.issued/k.1/2026-03".to_string(), 1),
            ("shipment.ordered/k.1/2026-03".to_string(), 2),
            ("credit.corrected/k.1/2026-03/reversal".to_string(), 3),
        ],
        "each once, numbered in the contract's order"
    );
    let (n2, _) = &events[1];
    assert_eq!(s.webhook_events(*n2, 100).unwrap().len(), 1, "paged");
    let credit = s
        .webhook_event("credit.issued/k.1/2026-03")
        .unwrap()
        .unwrap();
    assert_eq!(credit.data["amount_minor"], 1000);
    assert_eq!(credit.data["currency"], "EUR");
    let corrected = &events[2].1;
    assert_eq!(corrected.data["amount_minor"], -60);

    // Deliveries: `all` gets all three, `ships` the shipment, `off` nothing.
    let to = |event: &str| -> Vec<String> {
        let mut v: Vec<String> = s
            .deliveries_of(event)
            .unwrap()
            .into_iter()
            .map(|d| d.endpoint.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(to("credit.issued/k.1/2026-03"), vec!["all"]);
    assert_eq!(to("shipment.ordered/k.1/2026-03"), vec!["all", "ships"]);
    assert_eq!(s.deliveries(DeliveryState::Pending, 100).unwrap().len(), 4);

    // Claims: one owner at a time; the other gets nothing until the lease runs out.
    let now = Utc::now() + Duration::seconds(1);
    let a = Claim {
        owner: "a".into(),
        lease: Duration::seconds(60),
    };
    let b = Claim {
        owner: "b".into(),
        lease: Duration::seconds(60),
    };
    let got = s.claim_deliveries(&a, now, 100).unwrap();
    assert_eq!(got.len(), 4);
    assert!(s.claim_deliveries(&b, now, 100).unwrap().is_empty());
    let mut d = got[0].clone();
    d.record(
        Attempt {
            at: now,
            status: Some(204),
            error: None,
            millis: 3,
        },
        platen_cloud::model::first_retry(),
    );
    assert!(!s.save_delivery(&b, &d).unwrap(), "not b's to save");
    assert!(s.save_delivery(&a, &d).unwrap());
    assert_eq!(
        s.deliveries(DeliveryState::Delivered, 100).unwrap(),
        vec![d.clone()]
    );
    // A failed attempt leaves it pending, due later.
    let mut f = got[1].clone();
    f.record(
        Attempt {
            at: now,
            status: Some(500),
            error: Some("HTTP 500".into()),
            millis: 3,
        },
        platen_cloud::model::first_retry(),
    );
    assert!(s.save_delivery(&a, &f).unwrap());
    let later = now + Duration::seconds(61);
    let again = s.claim_deliveries(&b, later, 100).unwrap();
    assert!(
        again.iter().any(|x| x.key() == f.key()),
        "retried after its delay"
    );
    assert!(
        !again.iter().any(|x| x.key() == d.key()),
        "delivered stays delivered"
    );
    // Replay: the delivered event is pending again, due now.
    assert_eq!(s.replay_event(&d.event_id, later).unwrap(), 1);
    let replayed = s
        .deliveries_of(&d.event_id)
        .unwrap()
        .into_iter()
        .find(|x| x.endpoint == d.endpoint)
        .unwrap();
    assert_eq!(replayed.state, DeliveryState::Pending);
    assert_eq!(s.replay_event("no-such-event", later).unwrap(), 0);
}

/// Facts other than the ledger report themselves in the same call: the first fault
/// of each kind and printer (noted again: the same event), a change that settles, a
/// refused and an executed migration.
fn webhook_events_report_faults_settlements_and_migrations(s: &Store) {
    tenant(s, "acme", None);
    let (k, start) = contract("acme", "k", &["p1"]);
    s.create_contract(&k, &start, false).unwrap();
    s.add_endpoint(&endpoint("all", &[])).unwrap();
    let fault = Event::ConfigFault {
        printer: id("p1"),
        reason: "sysLocation: 403".into(),
        cause: Default::default(),
    };
    s.append(&start.id, fault.clone()).unwrap();
    s.append(
        &start.id,
        Event::ServiceFault {
            printer: id("p1"),
            reason: "down".into(),
        },
    )
    .unwrap();
    s.append(&start.id, fault.clone()).unwrap();
    let mut rec = s.change(&start.id).unwrap().unwrap();
    rec.setup.settled = true;
    rec.setup.settled_at = Some(t(5, 0));
    s.save_change(&rec, None).unwrap();
    s.save_change(&rec, None).unwrap();
    s.add_migration(&migration("m1", "acme", "k", MigrationState::Refused))
        .unwrap();
    s.add_migration(&migration("m2", "acme", "k", MigrationState::Scheduled))
        .unwrap();
    assert!(s.execute_migration("m2", &change(&k, 2)).unwrap());
    let seen: Vec<(String, u64)> = s
        .webhook_events(0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, e)| (e.id, e.seq))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("change.fault/k.1/config/p1".to_string(), 1),
            ("change.fault/k.1/service/p1".to_string(), 2),
            ("change.settled/k.1".to_string(), 3),
            ("migration.refused/m1".to_string(), 4),
            ("migration.executed/m2".to_string(), 5),
        ]
    );
    let settled = s.webhook_event("change.settled/k.1").unwrap().unwrap();
    assert_eq!(settled.data["change_id"], "k.1");
    assert_eq!(settled.tenant, id("acme"));
    let executed = s.webhook_event("migration.executed/m2").unwrap().unwrap();
    assert_eq!(executed.data["change_id"], "k.2");
    assert_eq!(s.deliveries(DeliveryState::Pending, 100).unwrap().len(), 5);
}

/// A reseller's endpoint gets the events of its tenants only; every event carries the
/// tenant's reseller.
fn webhook_events_reach_a_resellers_endpoint_for_its_tenants_only(s: &Store) {
    s.add_reseller(&Reseller {
        id: id("r1"),
        name: "R1".into(),
    })
    .unwrap();
    tenant(s, "acme", None);
    tenant(s, "globex", Some("r1"));
    let (k, start) = contract("acme", "k", &["p1"]);
    s.create_contract(&k, &start, false).unwrap();
    let (g, gstart) = contract("globex", "g", &["p2"]);
    s.create_contract(&g, &gstart, false).unwrap();
    let mut mine = endpoint("r1-billing", &[]);
    mine.reseller = Some(id("r1"));
    s.add_endpoint(&mine).unwrap();
    s.add_endpoint(&endpoint("operator", &[])).unwrap();
    s.add_ledger(&ledger_entry(&k, "k.1", "2026-03", 10))
        .unwrap();
    s.add_ledger(&ledger_entry(&g, "g.1", "2026-03", 20))
        .unwrap();
    let to = |event: &str| -> Vec<String> {
        let mut v: Vec<String> = s
            .deliveries_of(event)
            .unwrap()
            .into_iter()
            .map(|d| d.endpoint.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(to("credit.issued/k.1/2026-03"), vec!["operator"]);
    assert_eq!(
        to("credit.issued/g.1/2026-03"),
        vec!["operator", "r1-billing"]
    );
    let g_event = s
        .webhook_event("credit.issued/g.1/2026-03")
        .unwrap()
        .unwrap();
    assert_eq!(g_event.reseller, Some(id("r1")));
    let k_event = s
        .webhook_event("credit.issued/k.1/2026-03")
        .unwrap()
        .unwrap();
    assert_eq!(k_event.reseller, None);
}

/// An event whose fact is stored already (a printer gone quiet) is written once,
/// whoever writes it how often: numbered after the contract's other events, stamped
/// with the tenant's reseller, delivered to the endpoints that want it.
fn stale_printer_events_are_written_once_per_quiet_spell(s: &Store) {
    s.add_reseller(&Reseller {
        id: id("r1"),
        name: "R1".into(),
    })
    .unwrap();
    tenant(s, "acme", Some("r1"));
    let (k, start) = contract("acme", "k", &["p1"]);
    s.create_contract(&k, &start, false).unwrap();
    s.add_endpoint(&endpoint("stale-only", &["printer.stale"]))
        .unwrap();
    s.add_endpoint(&endpoint("credits-only", &["credit.issued"]))
        .unwrap();
    s.add_ledger(&ledger_entry(&k, "k.1", "2026-03", 10))
        .unwrap();
    let quiet = |last: Option<DateTime<Utc>>| Quiet {
        tenant: id("acme"),
        contract: id("k"),
        printer: id("p1"),
        last_reading: last,
        stale_at: last.unwrap_or(t(1, 0)) + Duration::hours(1),
        stale_after: std::time::Duration::from_secs(3600),
        agent: Some(id("gw")),
        answering: Some(false),
    };
    let first = printer_stale_event(&quiet(Some(t(2, 10))));
    assert_eq!(
        s.add_events(std::slice::from_ref(&first), t(2, 12))
            .unwrap(),
        1
    );
    assert_eq!(
        s.add_events(std::slice::from_ref(&first), t(2, 13))
            .unwrap(),
        0
    );
    let second = printer_stale_event(&quiet(Some(t(3, 10))));
    assert_eq!(
        s.add_events(&[first.clone(), second.clone()], t(3, 12))
            .unwrap(),
        1
    );
    let stored = s.webhook_event(&first.id).unwrap().unwrap();
    assert_eq!(stored.seq, 2, "after the credit's event");
    assert_eq!(stored.reseller, Some(id("r1")));
    assert_eq!(stored.data["cause"], "printer_not_answering");
    assert_eq!(s.webhook_event(&second.id).unwrap().unwrap().seq, 3);
    let to: Vec<String> = s
        .deliveries_of(&first.id)
        .unwrap()
        .into_iter()
        .map(|d| d.endpoint.to_string())
        .collect();
    assert_eq!(to, vec!["stale-only"]);
    let all = s.webhook_events(0, 100).unwrap();
    assert_eq!(all.len(), 3, "one credit, two quiet spells");
}

/// Run every body on a fresh store from `open`; panic naming the failed ones.
fn run_all(backend: &str, open: impl Fn(&str) -> Store) {
    let mut failed = Vec::new();
    for (name, body) in BODIES {
        let store = open(name);
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&store))).is_err() {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "{backend}: failed {failed:?}");
}

#[test]
fn conformance_sled() {
    let dirs = tempfile::tempdir().unwrap();
    run_all("sled", |name| {
        Store::open_sled(&dirs.path().join(name)).unwrap()
    });
}

#[test]
fn conformance_postgres() {
    let pg = Postgres::start();
    run_all("postgres", |name| {
        Store::open_postgres(&pg.fresh_db(name), None).unwrap()
    });
}

/// What only the database backend has: versioned schema applied once under a lock,
/// a newer schema refused naming both versions, a wrong URL refused naming the host
/// and never the password, and a database restart survived without a restart of
/// the cloud.
#[test]
fn postgres_schema_urls_and_restarts() {
    let mut pg = Postgres::start();
    let url = pg.fresh_db("schema");
    // Four instances start at once: the schema is applied once.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Store::open_postgres(&url, None).map(|_| ()))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let db = url.rsplit('/').next().unwrap().to_string();
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM platen_schema"),
        platen_cloud::store::postgres::SCHEMA.len().to_string()
    );
    // A schema from a newer Platen.
    pg.psql(
        &db,
        "INSERT INTO platen_schema (version, name) VALUES (99, 'future')",
    );
    let e = Store::open_postgres(&url, None).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::TooNew {
                found: 99,
                known,
                ..
            } if known as usize == platen_cloud::store::postgres::SCHEMA.len()
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("99")
            && text.contains(&format!(
                "up to {}",
                platen_cloud::store::postgres::SCHEMA.len()
            )),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    pg.psql(&db, "DELETE FROM platen_schema WHERE version = 99");

    // Nobody listens there: a clear error naming the host, never the password.
    let closed = platen_e2e::free_tcp_port();
    let bad = format!("postgres://platen:{PASSWORD}@127.0.0.1:{closed}/x");
    let e = Store::open_postgres(&bad, None).unwrap_err().to_string();
    assert!(e.contains(&format!("127.0.0.1:{closed}")), "{e}");
    assert!(!e.contains(PASSWORD), "{e}");
    // A wrong password: refused by the server, password not repeated.
    let wrong = url.replace(PASSWORD, "not-the-password");
    let e = Store::open_postgres(&wrong, None).unwrap_err().to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-password"), "{e}");
    let e = Store::open_postgres("postgres://db.example:port/x", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("store.url"), "{e}");

    // The database restarts under a running store: calls fail while it is down, and
    // the store recovers by itself.
    let s = Store::open_postgres(&url, None).unwrap();
    tenant(&s, "acme", None);
    pg.stop();
    assert!(
        s.tenant("acme").is_err(),
        "down: an error, not a stale answer"
    );
    pg.restart();
    assert!(pg.wait_ready(std::time::Duration::from_secs(30)));
    let mut back = false;
    for _ in 0..50 {
        if s.tenant("acme").ok().flatten().is_some() {
            back = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(back, "the store did not recover after the restart");
}

/// Every record as JSON, sorted, times cut to microseconds (what PostgreSQL keeps).
fn snapshot(s: &Store) -> Vec<String> {
    fn cut(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(t) => {
                if let Ok(d) = DateTime::parse_from_rfc3339(t) {
                    let d = d.with_timezone(&Utc);
                    let us = DateTime::<Utc>::from_timestamp_micros(d.timestamp_micros()).unwrap();
                    *t = us.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(cut),
            serde_json::Value::Object(o) => o.values_mut().for_each(cut),
            _ => {}
        }
    }
    let mut out = Vec::new();
    s.export(&mut |r| {
        let mut v = serde_json::to_value(&r).unwrap();
        cut(&mut v);
        out.push(v.to_string());
        Ok(())
    })
    .unwrap();
    out.sort();
    out
}

/// A filled sled store copied into PostgreSQL and back holds the same records; a
/// non-empty target is refused; the copied store works on (new timeline entries
/// sort after the copied ones).
#[test]
fn store_copy_sled_to_postgres_and_back() {
    let pg = Postgres::start();
    let dirs = tempfile::tempdir().unwrap();
    let sled = Store::open_sled(&dirs.path().join("a")).unwrap();
    // The conformance bodies that leave a little of everything behind, in one store
    // (each under its own tenant-independent ids where they would clash).
    for body in [
        catalog_and_parties as Body,
        every_event_kind_reads_back,
        migrations_execute_once,
        reports_are_stored_once_and_bounded,
        seen_state_round_trips,
        samples_keep_one_per_reading_and_find_the_baseline,
    ] {
        body(&sled);
    }
    // A webhook endpoint: the ledger below writes events with deliveries to it.
    sled.add_endpoint(&endpoint("billing", &[])).unwrap();
    // A ledger with a reversal, a shipment, versions.
    let (g, gstart) = contract("globex", "g", &["p9"]);
    sled.create_contract(&g, &gstart, false).unwrap();
    let e = ledger_entry(&g, "g.1", "2026-03", 1000);
    sled.add_ledger(&e).unwrap();
    let mut rev = ledger_entry(&g, "g.1", "2026-03/reversal", 60);
    rev.reverses = Some(e.key.clone());
    sled.add_ledger(&rev).unwrap();
    sled.mark_shipment_sent(&e.key, t(4, 0)).unwrap();
    sled.next_version(&id("globex"), &id("p9")).unwrap();
    let before = snapshot(&sled);
    assert!(before.len() > 50, "{}", before.len());

    let pg_store = Store::open_postgres(&pg.fresh_db("copy"), None).unwrap();
    let tally = platen_cloud::store::copy::copy(&sled, &pg_store).unwrap();
    assert_eq!(tally.ledger_totals["EUR"], 940);
    assert_eq!(snapshot(&pg_store), before, "sled → postgres");
    // Refused: the target is not empty.
    let e = platen_cloud::store::copy::copy(&sled, &pg_store).unwrap_err();
    assert!(e.to_string().contains("already holds data"), "{e}");

    let back = Store::open_sled(&dirs.path().join("b")).unwrap();
    platen_cloud::store::copy::copy(&pg_store, &back).unwrap();
    assert_eq!(snapshot(&back), before, "postgres → sled");

    // Both copies work on: a new entry sorts last in its change's timeline.
    for s in [&pg_store, &back] {
        let ev = Event::ConfigPublished {
            printer: id("p1"),
            version: 77,
            settings: 1,
        };
        let added = s.append("c.2", ev.clone()).unwrap().unwrap();
        let tl = s.timeline("c.2").unwrap();
        assert_eq!(tl.last().unwrap().event, ev);
        assert!(tl.iter().all(|e| e.seq <= added.seq));
        assert!(s.next_version(&id("globex"), &id("p9")).unwrap() > 0);
        // The outbox came along, and new events are numbered after the copied ones.
        assert!(s
            .webhook_event("credit.corrected/g.1/2026-03/reversal")
            .unwrap()
            .is_some());
        assert_eq!(
            s.deliveries_of("credit.issued/g.1/2026-03").unwrap().len(),
            1
        );
        let last = s.webhook_events(0, 10_000).unwrap().last().unwrap().0;
        s.add_ledger(&ledger_entry(&g, "g.1", "2026-04", 5))
            .unwrap();
        let after = s.webhook_events(last, 10).unwrap();
        assert_eq!(after.len(), 1, "after the copied ones");
        assert_eq!(after[0].1.seq, 3, "g's third event");
    }
}
