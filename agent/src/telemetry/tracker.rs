//! Telemetry decisions, free of I/O: from one poll's outcome and the previous state
//! to the events it implies and whether a message is due.
//!
//! [`Tracker::observe`] is called once per poll of a printer with the new
//! [`Reading`] (or the poll error) and the current time. It returns the message to
//! queue, if any. Rules:
//! - **stale**: the first failed poll after a good one (or after start) emits `stale`
//!   with the last good reading's age; while still failing, a message goes out once
//!   per heartbeat; the first good poll afterwards emits `recovered`.
//! - **counter reset**: a counter lower than before emits `counter_reset` (`wrap` when
//!   the old value was in the top 1/16 of Counter32 and the new one is in the bottom
//!   1/16, else `backwards`). Usage is then counted from the new value: never negative.
//! - **reboot**: sysUpTime lower than before.
//! - **supplies**: a state change into low / empty / almost full / full emits the
//!   matching event with the description; a level moving by ≥ `supply_change_pct`
//!   since the last message triggers a message.
//! - **alerts**: rows that appear → `alert_raised`, rows that go → `alert_cleared`
//!   (a row is its index + code + description).
//! - **status**: device status, printer status or error bits changed → `status_changed`.
//! - **pages**: the billing counter advanced by ≥ `pages_step` since the last message.
//! - **heartbeat**: nothing sent for `heartbeat`.

use chrono::{DateTime, Utc};
use platen_protocol::telemetry::{
    Alert, Event, Reading, ResetKind, Supply, SupplyClass, SupplyState, Telemetry, Trigger,
};
use platen_protocol::Id;
use std::collections::BTreeMap;
use std::time::Duration;

/// When to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub heartbeat: Duration,
    pub supply_change_pct: u8,
    pub pages_step: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            heartbeat: Duration::from_secs(15 * 60),
            supply_change_pct: 5,
            pages_step: 100,
        }
    }
}

/// Per-printer telemetry state between polls.
#[derive(Clone, Debug)]
pub struct Tracker {
    agent: Id,
    printer: Id,
    seq: u64,
    /// The last good reading.
    last: Option<Reading>,
    /// What the last message carried (for change thresholds).
    sent_supplies: BTreeMap<u32, Option<u8>>,
    sent_pages: Option<u64>,
    last_sent_at: Option<DateTime<Utc>>,
    /// When the printer became unreachable, while it is.
    stale_since: Option<DateTime<Utc>>,
}

/// How a counter that went down went down (shared with the cloud's usage).
pub fn reset_kind(old: u64, new: u64) -> ResetKind {
    ResetKind::classify(old, new)
}

fn supply_event(s: &Supply) -> Option<Event> {
    let (index, description) = (s.index, s.description.clone());
    match (s.class, s.state) {
        (SupplyClass::Consumed, SupplyState::Low) => Some(Event::SupplyLow {
            index,
            description,
            percent_remaining: s.percent_remaining,
        }),
        (SupplyClass::Consumed, SupplyState::Empty) => {
            Some(Event::SupplyEmpty { index, description })
        }
        (SupplyClass::Receptacle, SupplyState::AlmostFull) => Some(Event::ReceptacleAlmostFull {
            index,
            description,
            percent_full: s.percent_full,
        }),
        (SupplyClass::Receptacle, SupplyState::Full) => {
            Some(Event::ReceptacleFull { index, description })
        }
        _ => None,
    }
}

fn alert_key(a: &Alert) -> (u32, Option<&str>, Option<&str>) {
    (a.index, a.code.as_deref(), a.description.as_deref())
}

impl Tracker {
    /// `seq` continues from the last message sent for this printer (kept in the store).
    pub fn new(agent: Id, printer: Id, seq: u64) -> Tracker {
        Tracker {
            agent,
            printer,
            seq,
            last: None,
            sent_supplies: BTreeMap::new(),
            sent_pages: None,
            last_sent_at: None,
            stale_since: None,
        }
    }

    pub fn last_reading(&self) -> Option<&Reading> {
        self.last.as_ref()
    }

    pub fn is_stale(&self) -> bool {
        self.stale_since.is_some()
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The message numbered `seq` could not be stored: give its number back, so the
    /// sequence stays gapless (its events are lost with it and were logged).
    pub fn unsent(&mut self, seq: u64) {
        if self.seq == seq {
            self.seq -= 1;
        }
    }

    fn heartbeat_due(&self, now: DateTime<Utc>, t: &Thresholds) -> bool {
        match self.last_sent_at {
            None => true,
            Some(at) => (now - at).to_std().unwrap_or_default() >= t.heartbeat,
        }
    }

    /// Take one poll outcome; return the message to queue, if one is due.
    pub fn observe(
        &mut self,
        poll: Result<Reading, String>,
        now: DateTime<Utc>,
        t: &Thresholds,
    ) -> Option<Telemetry> {
        let mut events = Vec::new();
        let mut reasons = Vec::new();
        let reading = match poll {
            Err(error) => {
                if self.stale_since.is_none() {
                    self.stale_since = Some(now);
                    let last_good_at = self.last.as_ref().map(|r| r.read_at);
                    events.push(Event::Stale {
                        since: now,
                        last_good_at,
                        age_secs: last_good_at.map(|at| (now - at).num_seconds().max(0) as u64),
                        error,
                    });
                    reasons.push(Trigger::Events);
                } else if self.heartbeat_due(now, t) {
                    reasons.push(Trigger::Heartbeat);
                }
                if reasons.is_empty() {
                    return None;
                }
                return Some(self.message(false, events, reasons, now));
            }
            Ok(r) => r,
        };
        if let Some(since) = self.stale_since.take() {
            events.push(Event::Recovered {
                stale_secs: (now - since).num_seconds().max(0) as u64,
            });
        }
        if self.last_sent_at.is_none() {
            reasons.push(Trigger::Startup);
        }
        if let Some(prev) = &self.last {
            self.compare(prev, &reading, &mut events);
        } else {
            // First reading: supplies already low or empty are worth an event too.
            events.extend(reading.supplies.iter().filter_map(supply_event));
        }
        if !events.is_empty() {
            reasons.push(Trigger::Events);
        }
        let moved = reading.supplies.iter().any(|s| {
            let now_pct = s.percent_remaining.or(s.percent_full.map(|f| 100 - f));
            match (self.sent_supplies.get(&s.index), now_pct) {
                (Some(Some(before)), Some(p)) => before.abs_diff(p) >= t.supply_change_pct,
                (Some(None), Some(_)) | (Some(Some(_)), None) => true,
                _ => false,
            }
        });
        if moved && self.last_sent_at.is_some() {
            reasons.push(Trigger::SupplyChange);
        }
        if let (Some(before), Some(now_pages)) = (self.sent_pages, reading.billing_value()) {
            if now_pages >= before && now_pages - before >= t.pages_step.max(1) {
                reasons.push(Trigger::Pages);
            }
        }
        if reasons.is_empty() && self.heartbeat_due(now, t) {
            reasons.push(Trigger::Heartbeat);
        }
        // A counter reset moves the page baseline to the new value.
        let reset = events
            .iter()
            .any(|e| matches!(e, Event::CounterReset { .. }));
        self.last = Some(reading);
        if reset {
            self.sent_pages = self.last.as_ref().and_then(Reading::billing_value);
        }
        if reasons.is_empty() {
            return None;
        }
        Some(self.message(true, events, reasons, now))
    }

    fn compare(&self, prev: &Reading, now: &Reading, events: &mut Vec<Event>) {
        for c in &now.counters {
            if let Some(old) = prev.counters.iter().find(|p| p.name == c.name) {
                if c.value < old.value {
                    events.push(Event::CounterReset {
                        counter: c.name.clone(),
                        old: old.value,
                        new: c.value,
                        kind: reset_kind(old.value, c.value),
                    });
                }
            }
        }
        if let (Some(before), Some(after)) = (prev.uptime_cs, now.uptime_cs) {
            if after < before {
                events.push(Event::Reboot {
                    uptime_before_cs: before,
                    uptime_now_cs: after,
                });
            }
        }
        for s in &now.supplies {
            let before = prev.supplies.iter().find(|p| p.index == s.index);
            if before.map(|b| b.state) != Some(s.state) {
                events.extend(supply_event(s));
            }
        }
        for a in &now.alerts {
            if !prev.alerts.iter().any(|p| alert_key(p) == alert_key(a)) {
                events.push(Event::AlertRaised { alert: a.clone() });
            }
        }
        for a in &prev.alerts {
            if !now.alerts.iter().any(|n| alert_key(n) == alert_key(a)) {
                events.push(Event::AlertCleared { alert: a.clone() });
            }
        }
        if prev.status != now.status {
            events.push(Event::StatusChanged {
                from: prev.status.clone(),
                to: now.status.clone(),
            });
        }
    }

    fn message(
        &mut self,
        reachable: bool,
        events: Vec<Event>,
        mut reasons: Vec<Trigger>,
        now: DateTime<Utc>,
    ) -> Telemetry {
        reasons.sort();
        reasons.dedup();
        self.seq += 1;
        self.last_sent_at = Some(now);
        if let Some(r) = self.last.as_ref().filter(|_| reachable) {
            self.sent_supplies = r
                .supplies
                .iter()
                .map(|s| {
                    (
                        s.index,
                        s.percent_remaining.or(s.percent_full.map(|f| 100 - f)),
                    )
                })
                .collect();
            self.sent_pages = r.billing_value();
        }
        Telemetry {
            message_id: Telemetry::make_id(&self.agent, &self.printer, self.seq),
            agent_id: self.agent.clone(),
            printer_id: self.printer.clone(),
            seq: self.seq,
            sent_at: now,
            reasons,
            reachable,
            reading: self.last.clone(),
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use platen_protocol::telemetry::{Counter, Level, Status};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap()
    }
    fn at(secs: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::seconds(secs)
    }

    fn reading(secs: i64, pages: u64, uptime: u64, toner: u32) -> Reading {
        Reading {
            read_at: at(secs),
            uptime_cs: Some(uptime),
            counters: vec![Counter {
                name: "prtMarkerLifeCount.1".into(),
                oid: "1.3.6.1.2.1.43.10.2.1.4.1.1".into(),
                unit: Some("impressions".into()),
                value: pages,
                kind: None,
            }],
            billing_counter: Some("prtMarkerLifeCount.1".into()),
            supplies: vec![toner_supply(toner)],
            ..Default::default()
        }
    }

    fn toner_supply(level: u32) -> Supply {
        let (pct, state) = crate::snmp::printer_mib::judge_supply(
            SupplyClass::Consumed,
            Level::Amount(100),
            Level::Amount(level),
            10,
        );
        Supply {
            index: 1,
            kind: "toner".into(),
            class: SupplyClass::Consumed,
            description: "Black Toner TK-1".into(),
            unit: Some("percent".into()),
            max: Level::Amount(100),
            level: Level::Amount(level),
            percent_remaining: pct,
            percent_full: None,
            state,
        }
    }

    fn tracker() -> Tracker {
        Tracker::new(Id::new("gw").unwrap(), Id::new("p1").unwrap(), 0)
    }

    fn names(m: &Telemetry) -> Vec<&'static str> {
        m.events.iter().map(Event::name).collect()
    }

    #[test]
    fn first_reading_is_sent_then_quiet_until_something_changes() {
        let (mut tr, th) = (tracker(), Thresholds::default());
        let m = tr
            .observe(Ok(reading(0, 1000, 100, 80)), at(0), &th)
            .unwrap();
        assert_eq!(m.reasons, vec![Trigger::Startup]);
        assert_eq!(m.message_id, "gw:p1:t1");
        assert!(m.events.is_empty());
        // Small changes: nothing to send.
        assert!(tr
            .observe(Ok(reading(60, 1050, 6100, 78)), at(60), &th)
            .is_none());
        // 100 pages since the last message.
        let m = tr
            .observe(Ok(reading(120, 1100, 12100, 78)), at(120), &th)
            .unwrap();
        assert_eq!(m.reasons, vec![Trigger::Pages]);
        // Supply moved by 5 points since the last message.
        let m = tr
            .observe(Ok(reading(180, 1110, 18100, 73)), at(180), &th)
            .unwrap();
        assert_eq!(m.reasons, vec![Trigger::SupplyChange]);
        // Heartbeat after 15 minutes of nothing.
        assert!(tr
            .observe(Ok(reading(900, 1110, 90100, 73)), at(900), &th)
            .is_none());
        let m = tr
            .observe(Ok(reading(1080, 1110, 108100, 73)), at(1080), &th)
            .unwrap();
        assert_eq!(m.reasons, vec![Trigger::Heartbeat]);
        assert_eq!(m.seq, 4);
    }

    #[test]
    fn stale_carries_the_last_good_age_then_recovers() {
        let (mut tr, th) = (tracker(), Thresholds::default());
        tr.observe(Ok(reading(0, 1000, 100, 80)), at(0), &th);
        let m = tr.observe(Err("no answer".into()), at(300), &th).unwrap();
        assert!(!m.reachable);
        match &m.events[..] {
            [Event::Stale {
                age_secs,
                last_good_at,
                ..
            }] => {
                assert_eq!(*age_secs, Some(300));
                assert_eq!(*last_good_at, Some(at(0)));
            }
            other => panic!("{other:?}"),
        }
        // The old reading still travels, with its own read_at.
        assert_eq!(m.reading.as_ref().unwrap().read_at, at(0));
        // Still failing: silent until the heartbeat.
        assert!(tr.observe(Err("no answer".into()), at(360), &th).is_none());
        let m = tr.observe(Err("no answer".into()), at(1300), &th).unwrap();
        assert_eq!(m.reasons, vec![Trigger::Heartbeat]);
        assert!(m.events.is_empty());
        let m = tr
            .observe(Ok(reading(1400, 1000, 200, 80)), at(1400), &th)
            .unwrap();
        assert!(m.reachable);
        assert_eq!(names(&m)[0], "recovered");
        assert!(matches!(m.events[0], Event::Recovered { stale_secs: 1100 }));
    }

    #[test]
    fn never_answered_is_stale_without_an_age() {
        let (mut tr, th) = (tracker(), Thresholds::default());
        let m = tr.observe(Err("timeout".into()), at(0), &th).unwrap();
        assert!(matches!(
            &m.events[0],
            Event::Stale {
                age_secs: None,
                last_good_at: None,
                ..
            }
        ));
        assert!(m.reading.is_none());
    }

    #[test]
    fn counter_going_backwards_is_a_reset_and_moves_the_baseline() {
        let (mut tr, th) = (tracker(), Thresholds::default());
        tr.observe(Ok(reading(0, 5000, 100, 80)), at(0), &th);
        let m = tr
            .observe(Ok(reading(60, 20, 6100, 80)), at(60), &th)
            .unwrap();
        assert!(matches!(
            &m.events[..],
            [Event::CounterReset {
                old: 5000,
                new: 20,
                kind: ResetKind::Backwards,
                ..
            }]
        ));
        // 90 pages after the reset are not yet a page trigger: the baseline is 20.
        assert!(tr
            .observe(Ok(reading(120, 110, 12100, 80)), at(120), &th)
            .is_none());
        assert!(tr
            .observe(Ok(reading(180, 120, 18100, 80)), at(180), &th)
            .is_some());
    }

    #[test]
    fn a_message_that_could_not_be_stored_gives_its_number_back() {
        let (mut tr, th) = (tracker(), Thresholds::default());
        let m = tr
            .observe(Ok(reading(0, 1000, 100, 80)), at(0), &th)
            .unwrap();
        tr.unsent(m.seq);
        let m = tr.observe(Err("timeout".into()), at(60), &th).unwrap();
        assert_eq!((m.seq, m.message_id.as_str()), (1, "gw:p1:t1"));
        // Only the latest number can be given back.
        tr.unsent(7);
        assert_eq!(tr.seq(), 1);
    }

    #[test]
    fn wrap_and_backwards_are_told_apart() {
        let top = (1u64 << 32) - 10;
        assert_eq!(reset_kind(top, 5), ResetKind::Wrap);
        assert_eq!(reset_kind(5000, 20), ResetKind::Backwards);
        assert_eq!(reset_kind(top, 1 << 31), ResetKind::Backwards);
    }

    #[test]
    fn reboot_from_uptime() {
        let (mut tr, th) = (tracker(), Thresholds::default());
        tr.observe(Ok(reading(0, 1000, 500_000, 80)), at(0), &th);
        let m = tr
            .observe(Ok(reading(60, 1000, 300, 80)), at(60), &th)
            .unwrap();
        assert!(matches!(
            &m.events[..],
            [Event::Reboot {
                uptime_before_cs: 500_000,
                uptime_now_cs: 300
            }]
        ));
    }

    #[test]
    fn supply_low_and_empty_once_each_with_description() {
        let (mut tr, th) = (tracker(), Thresholds::default());
        tr.observe(Ok(reading(0, 1000, 100, 12)), at(0), &th);
        let m = tr
            .observe(Ok(reading(60, 1000, 6100, 9)), at(60), &th)
            .unwrap();
        match &m.events[..] {
            [Event::SupplyLow {
                description,
                percent_remaining,
                ..
            }] => {
                assert_eq!(description, "Black Toner TK-1");
                assert_eq!(*percent_remaining, Some(9));
            }
            other => panic!("{other:?}"),
        }
        // Still low: no new event (and only 1 point of change).
        assert!(tr
            .observe(Ok(reading(120, 1000, 12100, 8)), at(120), &th)
            .is_none());
        let m = tr
            .observe(Ok(reading(180, 1000, 18100, 0)), at(180), &th)
            .unwrap();
        assert_eq!(names(&m), vec!["supply_empty"]);
    }

    #[test]
    fn alerts_raised_and_cleared_status_changes() {
        let (mut tr, th) = (tracker(), Thresholds::default());
        tr.observe(Ok(reading(0, 1000, 100, 80)), at(0), &th);
        let mut r = reading(60, 1000, 6100, 80);
        r.alerts.push(Alert {
            index: 3,
            severity: Some("critical".into()),
            group: Some("cover".into()),
            group_index: Some(1),
            location: None,
            code: Some("coverOpen".into()),
            description: Some("Front cover open".into()),
            time_cs: Some(6000),
        });
        r.status = Status {
            device: Some("warning".into()),
            printer: Some("other".into()),
            errors: vec!["doorOpen".into()],
        };
        let m = tr.observe(Ok(r), at(60), &th).unwrap();
        assert_eq!(names(&m), vec!["alert_raised", "status_changed"]);
        let m = tr
            .observe(Ok(reading(120, 1000, 12100, 80)), at(120), &th)
            .unwrap();
        assert_eq!(names(&m), vec!["alert_cleared", "status_changed"]);
    }
}
