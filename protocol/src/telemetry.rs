//! Printer telemetry: page counters, supplies, status, alerts, and the events the
//! agent derives from consecutive readings (stale, counter reset, reboot, low and
//! empty supplies, alerts raised and cleared, status changes).
//!
//! Published with QoS 1 on `platen/v1/{tenant}/{printer}/telemetry` through the
//! agent's durable outbox. `message_id` (`{agent}:{printer}:t{seq}`) is stable across
//! resends, so a consumer can deduplicate.

use crate::ids::Id;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Most rows of any one list (supplies, alerts, counters, events) in a message.
pub const MAX_ROWS: usize = 256;
/// Longest text taken from a printer (descriptions, sysDescr), in bytes.
pub const MAX_TEXT: usize = 512;

/// One telemetry message for one printer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Telemetry {
    pub message_id: String,
    pub agent_id: Id,
    pub printer_id: Id,
    /// Per printer, increasing by one per message the agent queues.
    pub seq: u64,
    pub sent_at: DateTime<Utc>,
    /// Why this message was sent.
    pub reasons: Vec<Trigger>,
    /// Whether the last poll got an answer.
    pub reachable: bool,
    /// The last good reading (absent only when the printer never answered). When
    /// `reachable` is false it is the old reading; `read_at` says how old.
    pub reading: Option<Reading>,
    pub events: Vec<Event>,
}

impl Telemetry {
    pub fn make_id(agent: &Id, printer: &Id, seq: u64) -> String {
        format!("{agent}:{printer}:t{seq}")
    }

    pub fn validate(&self) -> Result<(), String> {
        let expected = Self::make_id(&self.agent_id, &self.printer_id, self.seq);
        if self.message_id != expected {
            return Err(format!(
                "message_id {:?} does not match {expected:?}",
                self.message_id
            ));
        }
        let too_many = |what: &str, n: usize| {
            (n > MAX_ROWS).then(|| format!("{n} {what}; the limit is {MAX_ROWS}"))
        };
        if let Some(e) = too_many("events", self.events.len()) {
            return Err(e);
        }
        if let Some(r) = &self.reading {
            for (what, n) in [
                ("counters", r.counters.len()),
                ("supplies", r.supplies.len()),
                ("alerts", r.alerts.len()),
                ("trays", r.trays.len()),
            ] {
                if let Some(e) = too_many(what, n) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Why a telemetry message was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The first reading since the agent started.
    Startup,
    /// Nothing changed for the heartbeat interval.
    Heartbeat,
    /// One or more events (see `events`).
    Events,
    /// A supply level moved by at least the configured threshold.
    SupplyChange,
    /// The billing counter advanced by at least the configured number of pages.
    Pages,
}

/// What the agent read from a printer in one poll.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    pub read_at: DateTime<Utc>,
    pub identity: Identity,
    /// sysUpTime in hundredths of a second (absent when the printer has none).
    pub uptime_cs: Option<u64>,
    /// Page counters. `billing_counter` names the one usage is computed from.
    pub counters: Vec<Counter>,
    pub billing_counter: Option<String>,
    pub supplies: Vec<Supply>,
    pub status: Status,
    pub alerts: Vec<Alert>,
    /// Paper input trays (prtInputTable); since protocol 1.1, absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trays: Vec<InputTray>,
}

impl Reading {
    /// The value of the billing counter, if it was read.
    pub fn billing_value(&self) -> Option<u64> {
        let name = self.billing_counter.as_ref()?;
        self.counters
            .iter()
            .find(|c| &c.name == name)
            .map(|c| c.value)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// sysDescr (often the network card's firmware, not the printer's model).
    pub sys_descr: Option<String>,
    pub sys_object_id: Option<String>,
    /// hrDeviceDescr of the printer device, falling back to sysDescr.
    pub model: Option<String>,
    /// prtGeneralSerialNumber.
    pub serial: Option<String>,
    /// hrDeviceIndex of the printer (1 when the printer does not say).
    pub device_index: u32,
}

/// One page counter with its source, so usage never mixes sources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// `prtMarkerLifeCount.{marker}` or a vendor counter's name from the profile.
    pub name: String,
    pub oid: String,
    /// prtMarkerCounterUnit by name (`impressions`, `sheets`, …) when known.
    pub unit: Option<String>,
    pub value: u64,
    /// What it counts (since 1.2; absent when the profile does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CounterKind>,
}

/// What a page counter counts, so a contract can bill black and colour, prints and
/// copies apart. Several counters may have one kind (Canon counts black large and
/// small format apart): their sum is the kind's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterKind {
    /// Every page (impression) the printer made.
    Total,
    Black,
    Color,
    /// Pages printed from a computer, in any colour.
    Print,
    Copy,
    PrintBlack,
    PrintColor,
    CopyBlack,
    CopyColor,
    /// Received faxes printed.
    Fax,
    /// Pages scanned (not printed).
    Scan,
    /// Two-sided sheets (not pages).
    Duplex,
    /// Anything else; also what a kind from a newer protocol reads as.
    #[serde(other)]
    Other,
}

impl CounterKind {
    pub const ALL: [CounterKind; 13] = [
        CounterKind::Total,
        CounterKind::Black,
        CounterKind::Color,
        CounterKind::Print,
        CounterKind::Copy,
        CounterKind::PrintBlack,
        CounterKind::PrintColor,
        CounterKind::CopyBlack,
        CounterKind::CopyColor,
        CounterKind::Fax,
        CounterKind::Scan,
        CounterKind::Duplex,
        CounterKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CounterKind::Total => "total",
            CounterKind::Black => "black",
            CounterKind::Color => "color",
            CounterKind::Print => "print",
            CounterKind::Copy => "copy",
            CounterKind::PrintBlack => "print_black",
            CounterKind::PrintColor => "print_color",
            CounterKind::CopyBlack => "copy_black",
            CounterKind::CopyColor => "copy_color",
            CounterKind::Fax => "fax",
            CounterKind::Scan => "scan",
            CounterKind::Duplex => "duplex",
            CounterKind::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<CounterKind> {
        CounterKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// prtMarkerSuppliesLevel / MaxCapacity: an amount or one of the special values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Level {
    Amount(u32),
    Special(SpecialLevel),
}

/// The RFC 3805 special values: −1 other, −2 unknown, −3 "some remaining".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialLevel {
    Other,
    Unknown,
    SomeRemaining,
}

/// Whether a supply is used up or filled up (waste toner counts the other way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupplyClass {
    Consumed,
    Receptacle,
}

/// A supply's condition, derived from level, capacity and class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupplyState {
    Ok,
    Low,
    Empty,
    AlmostFull,
    Full,
    /// Level −3: the printer only knows something is left.
    SomeRemaining,
    /// Level −1/−2 or no capacity to compare with.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supply {
    /// prtMarkerSuppliesIndex.
    pub index: u32,
    /// prtMarkerSuppliesType by name (`toner`, `wasteToner`, `opc`, …).
    pub kind: String,
    pub class: SupplyClass,
    /// prtMarkerSuppliesDescription; often holds the part number.
    pub description: String,
    /// prtMarkerSuppliesSupplyUnit by name, when known.
    pub unit: Option<String>,
    pub max: Level,
    pub level: Level,
    /// Consumed supplies: level / max, only when max > 0 and level >= 0.
    pub percent_remaining: Option<u8>,
    /// Receptacles: how full, 100 − remaining space, only when max > 0.
    pub percent_full: Option<u8>,
    pub state: SupplyState,
}

/// One paper input tray (a row of prtInputTable, RFC 3805).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTray {
    /// prtInputIndex.
    pub index: u32,
    /// prtInputName, else prtInputDescription, else `tray {index}`.
    pub name: String,
    /// prtInputType by name (`sheetFeedAutoRemovableTray`, `sheetFeedManual`, …).
    pub kind: Option<String>,
    /// prtInputMediaName (`A4`, `LETTER`, …).
    pub media: Option<String>,
    /// prtInputCapacityUnit by name (`sheets`, …).
    pub unit: Option<String>,
    /// prtInputMaxCapacity.
    pub max: Level,
    /// prtInputCurrentLevel.
    pub level: Level,
    /// level / max, only when max > 0 and level >= 0.
    pub percent: Option<u8>,
    /// `ok`, `low`, `empty`, `some_remaining` or `unknown`, as for a consumed supply.
    pub state: SupplyState,
    /// A manual feed (bypass) tray, by prtInputType or, when the printer does not
    /// say, by its name: empty is its normal state.
    pub manual: bool,
}

/// hrDeviceStatus, hrPrinterStatus and hrPrinterDetectedErrorState, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub device: Option<String>,
    pub printer: Option<String>,
    /// Named error bits that are set (`lowToner`, `doorOpen`, …).
    pub errors: Vec<String>,
}

/// One row of prtAlertTable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub index: u32,
    pub severity: Option<String>,
    pub group: Option<String>,
    pub group_index: Option<i64>,
    pub location: Option<i64>,
    pub code: Option<String>,
    pub description: Option<String>,
    /// prtAlertTime (sysUpTime at the alert, hundredths of a second).
    pub time_cs: Option<u64>,
}

/// How a counter went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetKind {
    /// Lower than before (engine or mainboard swap, firmware reset).
    Backwards,
    /// A Counter32 near 2^32 came back small: it wrapped.
    Wrap,
}

/// Counter32 wraps at 2^32.
pub const COUNTER32_WRAP: u64 = 1 << 32;

impl ResetKind {
    /// A counter went from `old` down to `new`: a drop from the top sixteenth of the
    /// Counter32 range to the bottom sixteenth is a wrap, anything else a reset.
    pub fn classify(old: u64, new: u64) -> ResetKind {
        let w = COUNTER32_WRAP;
        if (w - w / 16..w).contains(&old) && new < w / 16 {
            ResetKind::Wrap
        } else {
            ResetKind::Backwards
        }
    }

    /// Pages printed across the drop: the way round the wrap, or none for a reset
    /// (usage counts on from `new`; never negative).
    pub fn pages_across(self, old: u64, new: u64) -> u64 {
        match self {
            ResetKind::Wrap => (COUNTER32_WRAP - old).saturating_add(new),
            ResetKind::Backwards => 0,
        }
    }
}

/// Something the agent noticed between readings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The printer stopped answering. `last_good_at` / `age_secs` describe the last
    /// good reading (absent when there never was one).
    Stale {
        since: DateTime<Utc>,
        last_good_at: Option<DateTime<Utc>>,
        age_secs: Option<u64>,
        error: String,
    },
    /// The printer answers again after being stale.
    Recovered {
        stale_secs: u64,
    },
    /// A page counter went backwards or wrapped. Usage for the interval is not
    /// negative: consumers count from `new` onwards.
    CounterReset {
        counter: String,
        old: u64,
        new: u64,
        kind: ResetKind,
    },
    /// sysUpTime went backwards: the printer restarted.
    Reboot {
        uptime_before_cs: u64,
        uptime_now_cs: u64,
    },
    /// A consumed supply reached the low threshold.
    SupplyLow {
        index: u32,
        description: String,
        percent_remaining: Option<u8>,
    },
    SupplyEmpty {
        index: u32,
        description: String,
    },
    /// A receptacle (waste toner) is nearly full.
    ReceptacleAlmostFull {
        index: u32,
        description: String,
        percent_full: Option<u8>,
    },
    ReceptacleFull {
        index: u32,
        description: String,
    },
    AlertRaised {
        alert: Alert,
    },
    AlertCleared {
        alert: Alert,
    },
    StatusChanged {
        from: Status,
        to: Status,
    },
}

impl Event {
    /// The event's name as on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Stale { .. } => "stale",
            Event::Recovered { .. } => "recovered",
            Event::CounterReset { .. } => "counter_reset",
            Event::Reboot { .. } => "reboot",
            Event::SupplyLow { .. } => "supply_low",
            Event::SupplyEmpty { .. } => "supply_empty",
            Event::ReceptacleAlmostFull { .. } => "receptacle_almost_full",
            Event::ReceptacleFull { .. } => "receptacle_full",
            Event::AlertRaised { .. } => "alert_raised",
            Event::AlertCleared { .. } => "alert_cleared",
            Event::StatusChanged { .. } => "status_changed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_kinds_round_trip_and_unknown_ones_read_as_other() {
        for k in CounterKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<CounterKind>(&json).unwrap(), k);
            assert_eq!(CounterKind::parse(k.name()), Some(k));
        }
        // A kind a newer protocol adds: this build reads it as `other`.
        let c: Counter = serde_json::from_str(
            r#"{"name":"x","oid":"1.3.6","unit":null,"value":1,"kind":"scan_color"}"#,
        )
        .unwrap();
        assert_eq!(c.kind, Some(CounterKind::Other));
        // Absent before 1.2, and not written when unknown.
        let c: Counter =
            serde_json::from_str(r#"{"name":"x","oid":"1.3.6","unit":null,"value":1}"#).unwrap();
        assert_eq!(c.kind, None);
        assert!(!serde_json::to_string(&c).unwrap().contains("kind"));
        assert_eq!(CounterKind::parse("pages"), None);
    }
}
