//! Printer MIB (RFC 3805) and Host Resources MIB (RFC 2790) decoding: pure functions
//! from the values read off a printer to a [`Reading`].
//!
//! [`decode`] takes every value one poll collected (an OID → value map, exactly what
//! an snmprec recording holds) and is tested against recordings of real printers,
//! quirks included:
//! - no hrDevicePrinter row (Xerox): hrDeviceIndex 1 is assumed;
//! - no prtMarkerSuppliesClass column (all five recordings): waste receptacles are
//!   recognised by supply type (wasteToner, wasteInk, …) and, without a type, by a
//!   description naming "waste";
//! - an empty hrPrinterDetectedErrorState (Epson): no error bits (missing octets are zero);
//! - special levels −1/−2/−3 kept as states; percentages only when max > 0;
//! - no sysUpTime (Konica): reboots cannot be detected, uptime is absent;
//! - no prtMarkerCounterUnit (Konica): the counter's unit is absent, not guessed.

use crate::snmp::{ObjectId, SnmpValue};
use chrono::{DateTime, Utc};
use platen_protocol::telemetry::{
    Alert, Counter, CounterKind, Identity, InputTray, Level, Reading, SpecialLevel, Status, Supply,
    SupplyClass, SupplyState, MAX_ROWS, MAX_TEXT,
};
use std::collections::{BTreeMap, BTreeSet};

pub const SYS_DESCR: &str = "1.3.6.1.2.1.1.1.0";
/// hrDeviceType (HOST-RESOURCES-MIB), walked to find the printer's hrDeviceIndex.
pub const HR_DEVICE_TYPE: &str = "1.3.6.1.2.1.25.3.2.1.2";
/// hrDevicePrinter, the hrDeviceType value of a printer.
pub const HR_DEVICE_PRINTER: &str = "1.3.6.1.2.1.25.3.1.5";
pub const SYS_OBJECT_ID: &str = "1.3.6.1.2.1.1.2.0";
pub const SYS_UPTIME: &str = "1.3.6.1.2.1.1.3.0";
pub const HR_DEVICE_DESCR: &str = "1.3.6.1.2.1.25.3.2.1.3";
pub const HR_DEVICE_STATUS: &str = "1.3.6.1.2.1.25.3.2.1.5";
pub const HR_PRINTER_STATUS: &str = "1.3.6.1.2.1.25.3.5.1.1";
pub const HR_PRINTER_ERRORS: &str = "1.3.6.1.2.1.25.3.5.1.2";
pub const PRT_SERIAL: &str = "1.3.6.1.2.1.43.5.1.1.17";
/// prtMarkerEntry: column 3 is the counter unit, 4 the life count.
pub const PRT_MARKER_ENTRY: &str = "1.3.6.1.2.1.43.10.2.1";
pub const PRT_SUPPLIES_ENTRY: &str = "1.3.6.1.2.1.43.11.1.1";
pub const PRT_ALERT_ENTRY: &str = "1.3.6.1.2.1.43.18.1.1";
pub const PRT_INPUT_ENTRY: &str = "1.3.6.1.2.1.43.8.2.1";
/// The counter name prefix for prtMarkerLifeCount rows: `prtMarkerLifeCount.{marker}`.
pub const LIFE_COUNT: &str = "prtMarkerLifeCount";

fn oid(s: &str) -> ObjectId {
    // The constants above are valid; an invalid one would be an empty OID that matches nothing.
    s.parse().unwrap_or(ObjectId(Vec::new()))
}

/// A vendor page counter named in a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VendorCounter {
    pub name: String,
    /// The object to GET; with `row_of`, the value column of the maker's table.
    pub oid: ObjectId,
    pub unit: Option<String>,
    pub kind: Option<platen_protocol::telemetry::CounterKind>,
    /// For a counter in a table whose rows differ per model (Ricoh): the row is the
    /// one whose `type_column` holds `code`; its value is in `oid`'s column.
    pub row_of: Option<TableRow>,
}

/// Where a table counter's row is found ([`VendorCounter::row_of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRow {
    pub type_column: ObjectId,
    pub code: i64,
}

/// What to read beyond the standard objects, and how to judge supplies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetrySpec {
    pub vendor_counters: Vec<VendorCounter>,
    /// The counter usage is computed from; default `prtMarkerLifeCount.1`, else the
    /// first marker counter found.
    pub billing_counter: Option<String>,
    /// A consumed supply at or below this percentage is low; a receptacle with at
    /// most this much space left is almost full.
    pub low_percent: u8,
}

impl Default for TelemetrySpec {
    fn default() -> Self {
        TelemetrySpec {
            vendor_counters: Vec::new(),
            billing_counter: None,
            low_percent: 10,
        }
    }
}

/// The printer's hrDeviceIndex: the first hrDeviceType row equal to hrDevicePrinter,
/// else 1 (printers without the Host Resources device table use 1 in the Printer MIB).
pub fn device_index(values: &BTreeMap<ObjectId, SnmpValue>) -> u32 {
    let prefix = oid(HR_DEVICE_TYPE);
    let printer = oid(HR_DEVICE_PRINTER);
    values
        .iter()
        .find_map(|(k, v)| match v {
            SnmpValue::ObjectId(t)
                if *t == printer && k.0.len() == prefix.0.len() + 1 && k.starts_with(&prefix) =>
            {
                k.0.last().copied()
            }
            _ => None,
        })
        .unwrap_or(1)
}

/// The scalar objects one poll GETs for a printer at `device`.
pub fn scalar_oids(device: u32, spec: &TelemetrySpec) -> Vec<ObjectId> {
    let mut v = vec![oid(SYS_DESCR), oid(SYS_OBJECT_ID), oid(SYS_UPTIME)];
    for base in [
        HR_DEVICE_DESCR,
        HR_DEVICE_STATUS,
        HR_PRINTER_STATUS,
        HR_PRINTER_ERRORS,
        PRT_SERIAL,
    ] {
        v.push(oid(base).child(device));
    }
    v.extend(
        spec.vendor_counters
            .iter()
            .filter(|c| c.row_of.is_none())
            .map(|c| c.oid.clone()),
    );
    v
}

/// The tables one poll walks (marker counters, supplies, alerts, the input trays'
/// columns that say what is in them, and the columns of table vendor counters).
pub fn table_oids(spec: &TelemetrySpec) -> Vec<ObjectId> {
    let mut v = vec![
        oid(PRT_MARKER_ENTRY).child(3),
        oid(PRT_MARKER_ENTRY).child(4),
        oid(PRT_SUPPLIES_ENTRY),
        oid(PRT_ALERT_ENTRY),
    ];
    v.extend(INPUT_COLUMNS.iter().map(|c| oid(PRT_INPUT_ENTRY).child(*c)));
    for c in &spec.vendor_counters {
        if let Some(row) = &c.row_of {
            for col in [&row.type_column, &c.oid] {
                if !v.contains(col) {
                    v.push(col.clone());
                }
            }
        }
    }
    v
}

/// A table counter's value: the row of `row.type_column` holding `row.code`, read in
/// the `value_column` (rows are matched by their whole index suffix).
fn table_counter(
    values: &BTreeMap<ObjectId, SnmpValue>,
    value_column: &ObjectId,
    row: &TableRow,
) -> Option<(ObjectId, u64)> {
    let n = row.type_column.0.len();
    let index = values
        .range(row.type_column.clone()..)
        .take_while(|(k, _)| k.starts_with(&row.type_column))
        .find(|(_, v)| int(v) == Some(row.code))
        .map(|(k, _)| k.0[n..].to_vec())?;
    let at = ObjectId(value_column.0.iter().chain(index.iter()).copied().collect());
    let value = get(values, &at).and_then(unsigned)?;
    Some((at, value))
}

/// prtInputTable columns read: type, capacity unit, max capacity, current level,
/// media name, name, description.
const INPUT_COLUMNS: [u32; 7] = [2, 8, 9, 10, 12, 13, 18];

/// PrtInputTypeTC names.
pub fn input_type_name(n: i64) -> String {
    match n {
        1 => "other".into(),
        2 => "unknown".into(),
        3 => "sheetFeedAutoRemovableTray".into(),
        4 => "sheetFeedAutoNonRemovableTray".into(),
        5 => "sheetFeedManual".into(),
        6 => "continuousRoll".into(),
        7 => "continuousFanFold".into(),
        n => format!("type{n}"),
    }
}

/// The input trays: any column names a row. A tray is manual (bypass) by its type,
/// or, when the printer does not give one, by its name (Brother's "MANUAL TRAY",
/// Canon's "Multi-Purpose Tray", a "Bypass").
fn input_trays(values: &BTreeMap<ObjectId, SnmpValue>, d: u32, low_percent: u8) -> Vec<InputTray> {
    let entry = oid(PRT_INPUT_ENTRY);
    let cols: BTreeMap<u32, BTreeMap<u32, &SnmpValue>> = INPUT_COLUMNS
        .iter()
        .map(|c| (*c, column(values, &entry, *c, d)))
        .collect();
    let rows: BTreeSet<u32> = cols.values().flat_map(|c| c.keys().copied()).collect();
    let cell = |c: u32, r: u32| cols.get(&c).and_then(|m| m.get(&r)).copied();
    let named = |c: u32, r: u32| cell(c, r).and_then(text).filter(|t| !t.is_empty());
    rows.into_iter()
        .take(MAX_ROWS)
        .map(|r| {
            let kind_n = cell(2, r).and_then(int);
            let name = named(13, r)
                .or_else(|| named(18, r))
                .unwrap_or_else(|| format!("tray {r}"));
            let lower = name.to_lowercase();
            let manual = match kind_n {
                Some(5) => true,
                Some(3 | 4 | 6 | 7) => false,
                _ => ["manual", "bypass", "multi-purpose", "multipurpose"]
                    .iter()
                    .any(|w| lower.contains(w)),
            };
            let max = level(cell(9, r).and_then(int).unwrap_or(-2));
            let lvl = level(cell(10, r).and_then(int).unwrap_or(-2));
            let (percent, state) = judge_supply(SupplyClass::Consumed, max, lvl, low_percent);
            InputTray {
                index: r,
                name,
                kind: kind_n.map(input_type_name),
                media: named(12, r),
                unit: cell(8, r).and_then(int).map(unit_name),
                max,
                level: lvl,
                percent,
                state,
                manual,
            }
        })
        .collect()
}

/// Text from an OCTET STRING: lossy UTF-8, trailing NULs and white space removed,
/// capped at [`MAX_TEXT`] bytes on a character boundary.
pub fn text(v: &SnmpValue) -> Option<String> {
    let SnmpValue::OctetString(b) = v else {
        return None;
    };
    let s = String::from_utf8_lossy(b);
    let s = s.trim_end_matches(|c: char| c == '\0' || c.is_whitespace());
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].to_string())
}

fn int(v: &SnmpValue) -> Option<i64> {
    match v {
        SnmpValue::Integer(i) => Some(*i),
        SnmpValue::Unsigned(u) => i64::try_from(*u).ok(),
        _ => None,
    }
}

fn unsigned(v: &SnmpValue) -> Option<u64> {
    match v {
        SnmpValue::Unsigned(u) => Some(*u),
        SnmpValue::Integer(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

/// How much an error bit matters to the person at the printer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The printer cannot print, or will not for long, until someone acts.
    Problem,
    /// It prints, but something needs doing soon.
    Warning,
}

/// One hrPrinterDetectedErrorState bit, explained for a technician.
#[derive(Clone, Copy, Debug)]
pub struct ErrorBit {
    pub name: &'static str,
    pub severity: Severity,
    /// What the printer says, in a plain sentence.
    pub meaning: &'static str,
    /// What to do about it.
    pub action: &'static str,
}

const fn bit(
    name: &'static str,
    severity: Severity,
    meaning: &'static str,
    action: &'static str,
) -> ErrorBit {
    ErrorBit {
        name,
        severity,
        meaning,
        action,
    }
}

/// hrPrinterDetectedErrorState bits in order (RFC 3805 §2.2.13.4, bit 0 first).
pub const ERROR_BITS: [ErrorBit; 15] = {
    use Severity::{Problem, Warning};
    [
        bit(
            "lowPaper",
            Warning,
            "paper is running low",
            "fill the paper trays",
        ),
        bit(
            "noPaper",
            Problem,
            "it is out of paper",
            "fill the paper trays",
        ),
        bit(
            "lowToner",
            Warning,
            "toner or ink is running low",
            "have a replacement cartridge ready (see the supplies)",
        ),
        bit(
            "noToner",
            Problem,
            "toner or ink is empty",
            "replace the empty cartridge (see the supplies)",
        ),
        bit(
            "doorOpen",
            Problem,
            "a door or cover is open",
            "close every door and cover",
        ),
        bit(
            "jammed",
            Problem,
            "paper is jammed",
            "clear the jam as the panel shows",
        ),
        bit(
            "offline",
            Problem,
            "it is offline",
            "put it online at its panel",
        ),
        bit(
            "serviceRequested",
            Problem,
            "it asks for service",
            "read the message on its panel; call service if it names a part",
        ),
        bit(
            "inputTrayMissing",
            Problem,
            "a paper tray is missing or not pushed in",
            "push every paper tray fully in",
        ),
        bit(
            "outputTrayMissing",
            Problem,
            "an output tray is missing",
            "fit the output tray",
        ),
        bit(
            "markerSupplyMissing",
            Problem,
            "a toner cartridge or drum is missing",
            "fit the missing cartridge or drum (see the supplies)",
        ),
        bit(
            "outputNearFull",
            Warning,
            "an output tray is nearly full",
            "take the printed pages out",
        ),
        bit(
            "outputFull",
            Problem,
            "an output tray is full",
            "take the printed pages out",
        ),
        bit(
            "inputTrayEmpty",
            Warning,
            "a paper tray is empty",
            "fill the empty tray (see the trays)",
        ),
        bit(
            "overduePreventMaint",
            Warning,
            "preventive maintenance is overdue",
            "book the maintenance visit",
        ),
    ]
};

/// The explanation of a bit by name (`None` for unnamed bits, `bit{n}`).
pub fn error_bit(name: &str) -> Option<&'static ErrorBit> {
    ERROR_BITS.iter().find(|b| b.name == name)
}

/// Decode hrPrinterDetectedErrorState: bit 0 is the most significant bit of the
/// first octet; missing octets are zero; set bits without a name are `bit{n}`.
pub fn error_bits(octets: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, byte) in octets.iter().enumerate().take(32) {
        for b in 0..8 {
            if byte & (0x80 >> b) != 0 {
                let n = i * 8 + b;
                out.push(
                    ERROR_BITS
                        .get(n)
                        .map(|b| b.name.to_string())
                        .unwrap_or_else(|| format!("bit{n}")),
                );
            }
        }
    }
    out
}

pub fn device_status_name(n: i64) -> String {
    match n {
        1 => "unknown".into(),
        2 => "running".into(),
        3 => "warning".into(),
        4 => "testing".into(),
        5 => "down".into(),
        n => format!("status{n}"),
    }
}

pub fn printer_status_name(n: i64) -> String {
    match n {
        1 => "other".into(),
        2 => "unknown".into(),
        3 => "idle".into(),
        4 => "printing".into(),
        5 => "warmup".into(),
        n => format!("status{n}"),
    }
}

/// PrtMarkerCounterUnitTC / PrtMarkerSuppliesSupplyUnitTC names.
pub fn unit_name(n: i64) -> String {
    match n {
        1 => "other".into(),
        2 => "unknown".into(),
        3 => "tenThousandthsOfInches".into(),
        4 => "micrometers".into(),
        5 => "characters".into(),
        6 => "lines".into(),
        7 => "impressions".into(),
        8 => "sheets".into(),
        9 => "dotRow".into(),
        11 => "hours".into(),
        12 => "thousandthsOfOunces".into(),
        13 => "tenthsOfGrams".into(),
        14 => "hundrethsOfFluidOunces".into(),
        15 => "tenthsOfMilliliters".into(),
        16 => "feet".into(),
        17 => "meters".into(),
        18 => "items".into(),
        19 => "percent".into(),
        n => format!("unit{n}"),
    }
}

/// PrtMarkerSuppliesTypeTC names.
pub fn supply_type_name(n: i64) -> String {
    const NAMES: [&str; 35] = [
        "",
        "other",
        "unknown",
        "toner",
        "wasteToner",
        "ink",
        "inkCartridge",
        "inkRibbon",
        "wasteInk",
        "opc",
        "developer",
        "fuserOil",
        "solidWax",
        "ribbonWax",
        "wasteWax",
        "fuser",
        "coronaWire",
        "fuserOilWick",
        "cleanerUnit",
        "fuserCleaningPad",
        "transferUnit",
        "tonerCartridge",
        "fuserOiler",
        "water",
        "wasteWater",
        "glueWaterAdditive",
        "wastePaper",
        "bindingSupply",
        "bandingSupply",
        "stitchingWire",
        "shrinkWrap",
        "paperWrap",
        "staples",
        "inserts",
        "covers",
    ];
    usize::try_from(n)
        .ok()
        .and_then(|i| NAMES.get(i))
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("type{n}"))
}

/// Supply types that are receptacles (they fill up).
fn receptacle_type(n: i64) -> bool {
    matches!(n, 4 | 8 | 14 | 24 | 26)
}

pub fn alert_severity_name(n: i64) -> String {
    match n {
        1 => "other".into(),
        3 => "critical".into(),
        4 => "warning".into(),
        5 => "warningBinaryChangeEvent".into(),
        n => format!("severity{n}"),
    }
}

pub fn alert_group_name(n: i64) -> String {
    match n {
        1 => "other".into(),
        3 => "hostResourcesMIBStorageTable".into(),
        4 => "hostResourcesMIBDeviceTable".into(),
        5 => "generalPrinter".into(),
        6 => "cover".into(),
        7 => "localization".into(),
        8 => "input".into(),
        9 => "output".into(),
        10 => "marker".into(),
        11 => "markerSupplies".into(),
        12 => "markerColorant".into(),
        13 => "mediaPath".into(),
        14 => "channel".into(),
        15 => "interpreter".into(),
        16 => "consoleDisplayBuffer".into(),
        17 => "consoleLights".into(),
        18 => "alert".into(),
        30 => "finDevice".into(),
        31 => "finSupply".into(),
        n => format!("group{n}"),
    }
}

/// PrtAlertCodeTC names (the common ones; others are `code{n}`).
pub fn alert_code_name(n: i64) -> String {
    let s = match n {
        1 => "other",
        2 => "unknown",
        3 => "coverOpen",
        4 => "coverClosed",
        5 => "interlockOpen",
        6 => "interlockClosed",
        7 => "configurationChange",
        8 => "jam",
        9 => "subunitMissing",
        10 => "subunitLifeAlmostOver",
        11 => "subunitLifeOver",
        12 => "subunitAlmostEmpty",
        13 => "subunitEmpty",
        14 => "subunitAlmostFull",
        15 => "subunitFull",
        16 => "subunitNearLimit",
        17 => "subunitAtLimit",
        18 => "subunitOpened",
        19 => "subunitClosed",
        20 => "subunitTurnedOn",
        21 => "subunitTurnedOff",
        22 => "subunitOffline",
        23 => "subunitPowerSaver",
        24 => "subunitWarmingUp",
        25 => "subunitAdded",
        26 => "subunitRemoved",
        29 => "subunitRecoverableFailure",
        30 => "subunitUnrecoverableFailure",
        501 => "doorOpen",
        502 => "doorClosed",
        503 => "poweredUp",
        504 => "poweredDown",
        505 => "printerNMSReset",
        506 => "printerManualReset",
        507 => "printerReadyToPrint",
        801 => "inputMediaTrayMissing",
        807 => "inputMediaSupplyLow",
        808 => "inputMediaSupplyEmpty",
        809 => "inputManualInputRequest",
        901 => "outputMediaTrayMissing",
        902 => "outputMediaTrayAlmostFull",
        903 => "outputMediaTrayFull",
        1001 => "markerFuserUnderTemperature",
        1002 => "markerFuserOverTemperature",
        1101 => "markerTonerEmpty",
        1102 => "markerInkEmpty",
        1104 => "markerTonerAlmostEmpty",
        1105 => "markerInkAlmostEmpty",
        1107 => "markerWasteTonerReceptacleAlmostFull",
        1108 => "markerWasteInkReceptacleAlmostFull",
        1109 => "markerWasteTonerReceptacleFull",
        1110 => "markerWasteInkReceptacleFull",
        1111 => "markerOpcLifeAlmostOver",
        1112 => "markerOpcLifeOver",
        1115 => "markerTonerCartridgeMissing",
        1301 => "mediaPathMediaTrayMissing",
        1801 => "alertRemovalOfBinaryChangeEntry",
        n => return format!("code{n}"),
    };
    s.into()
}

/// A supply level or capacity: amounts, or the RFC 3805 special values. Other
/// negative numbers (not allowed by the MIB) count as unknown.
pub fn level(n: i64) -> Level {
    match n {
        -1 => Level::Special(SpecialLevel::Other),
        -3 => Level::Special(SpecialLevel::SomeRemaining),
        n if n >= 0 => Level::Amount(u32::try_from(n).unwrap_or(u32::MAX)),
        _ => Level::Special(SpecialLevel::Unknown),
    }
}

/// Percent, state and class of one supply row.
pub fn judge_supply(
    class: SupplyClass,
    max: Level,
    lvl: Level,
    low: u8,
) -> (Option<u8>, SupplyState) {
    let remaining = match (max, lvl) {
        (Level::Amount(m), Level::Amount(l)) if m > 0 => {
            let pct = (u64::from(l.min(m)) * 100 + u64::from(m) / 2) / u64::from(m);
            Some(pct as u8)
        }
        _ => None,
    };
    let state = match (class, lvl, remaining) {
        (SupplyClass::Consumed, Level::Amount(0), _) => SupplyState::Empty,
        (SupplyClass::Consumed, _, Some(p)) if p <= low => SupplyState::Low,
        (SupplyClass::Receptacle, Level::Amount(0), _) => SupplyState::Full,
        (SupplyClass::Receptacle, _, Some(p)) if p <= low => SupplyState::AlmostFull,
        (_, _, Some(_)) => SupplyState::Ok,
        // Something left, but no capacity to compare it with.
        (_, Level::Amount(_), None) | (_, Level::Special(SpecialLevel::SomeRemaining), _) => {
            SupplyState::SomeRemaining
        }
        _ => SupplyState::Unknown,
    };
    (remaining, state)
}

/// Rows of a table column: `{entry}.{col}.{device}.{row}` → row → value.
fn column<'a>(
    values: &'a BTreeMap<ObjectId, SnmpValue>,
    entry: &ObjectId,
    col: u32,
    device: u32,
) -> BTreeMap<u32, &'a SnmpValue> {
    let prefix = entry.child(col).child(device);
    values
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(k, v)| k.0.len() == prefix.0.len() + 1 && !v.is_exception())
        .filter_map(|(k, v)| k.0.last().map(|r| (*r, v)))
        .collect()
}

fn get<'a>(values: &'a BTreeMap<ObjectId, SnmpValue>, o: &ObjectId) -> Option<&'a SnmpValue> {
    values.get(o).filter(|v| !v.is_exception())
}

/// Build a [`Reading`] from every value one poll collected, for the printer at
/// hrDeviceIndex `d` (see [`device_index`]).
pub fn decode(
    values: &BTreeMap<ObjectId, SnmpValue>,
    d: u32,
    spec: &TelemetrySpec,
    read_at: DateTime<Utc>,
) -> Reading {
    let at = |base: &str| oid(base).child(d);
    let sys_descr = get(values, &oid(SYS_DESCR)).and_then(text);
    let identity = Identity {
        model: get(values, &at(HR_DEVICE_DESCR))
            .and_then(text)
            .filter(|s| !s.is_empty())
            .or_else(|| sys_descr.clone()),
        sys_descr,
        sys_object_id: match get(values, &oid(SYS_OBJECT_ID)) {
            Some(SnmpValue::ObjectId(o)) => Some(o.to_string()),
            _ => None,
        },
        serial: get(values, &at(PRT_SERIAL))
            .and_then(text)
            .filter(|s| !s.is_empty()),
        device_index: d,
    };

    // Page counters: prtMarkerLifeCount per marker, then the profile's vendor counters.
    let marker = oid(PRT_MARKER_ENTRY);
    let units = column(values, &marker, 3, d);
    let mut counters: Vec<Counter> = column(values, &marker, 4, d)
        .into_iter()
        .filter_map(|(m, v)| {
            Some(Counter {
                name: format!("{LIFE_COUNT}.{m}"),
                oid: marker.child(4).child(d).child(m).to_string(),
                unit: units.get(&m).and_then(|u| int(u)).map(unit_name),
                value: unsigned(v)?,
                kind: Some(CounterKind::Total),
            })
        })
        .collect();
    for vc in &spec.vendor_counters {
        let found = match &vc.row_of {
            None => get(values, &vc.oid)
                .and_then(unsigned)
                .map(|v| (vc.oid.clone(), v)),
            Some(row) => table_counter(values, &vc.oid, row),
        };
        if let Some((at, value)) = found {
            counters.push(Counter {
                name: vc.name.clone(),
                oid: at.to_string(),
                unit: vc.unit.clone(),
                value,
                kind: vc.kind,
            });
        }
    }
    counters.truncate(MAX_ROWS);
    let billing_counter = match &spec.billing_counter {
        Some(name) => Some(name.clone()),
        None => counters
            .iter()
            .find(|c| c.name == format!("{LIFE_COUNT}.1"))
            .or_else(|| counters.iter().find(|c| c.name.starts_with(LIFE_COUNT)))
            .map(|c| c.name.clone()),
    };

    // Supplies: any column names a row.
    let sup = oid(PRT_SUPPLIES_ENTRY);
    let cols: BTreeMap<u32, BTreeMap<u32, &SnmpValue>> =
        (4..=9).map(|c| (c, column(values, &sup, c, d))).collect();
    let rows: BTreeSet<u32> = cols.values().flat_map(|c| c.keys().copied()).collect();
    let cell = |c: u32, r: u32| cols.get(&c).and_then(|m| m.get(&r)).copied();
    let supplies = rows
        .into_iter()
        .take(MAX_ROWS)
        .map(|r| {
            let kind_n = cell(5, r).and_then(int);
            let description = cell(6, r).and_then(text).unwrap_or_default();
            let class = match cell(4, r).and_then(int) {
                Some(4) => SupplyClass::Receptacle,
                Some(3) => SupplyClass::Consumed,
                _ if kind_n.is_some_and(receptacle_type) => SupplyClass::Receptacle,
                None if kind_n.is_none() && description.to_lowercase().contains("waste") => {
                    SupplyClass::Receptacle
                }
                _ => SupplyClass::Consumed,
            };
            let max = level(cell(8, r).and_then(int).unwrap_or(-2));
            let lvl = level(cell(9, r).and_then(int).unwrap_or(-2));
            let (remaining, state) = judge_supply(class, max, lvl, spec.low_percent);
            Supply {
                index: r,
                kind: kind_n
                    .map(supply_type_name)
                    .unwrap_or_else(|| "unknown".into()),
                class,
                description,
                unit: cell(7, r).and_then(int).map(unit_name),
                max,
                level: lvl,
                percent_remaining: remaining.filter(|_| class == SupplyClass::Consumed),
                percent_full: remaining
                    .filter(|_| class == SupplyClass::Receptacle)
                    .map(|p| 100 - p),
                state,
            }
        })
        .collect();

    let status = Status {
        device: get(values, &at(HR_DEVICE_STATUS))
            .and_then(int)
            .map(device_status_name),
        printer: get(values, &at(HR_PRINTER_STATUS))
            .and_then(int)
            .map(printer_status_name),
        errors: match get(values, &at(HR_PRINTER_ERRORS)) {
            Some(SnmpValue::OctetString(b)) => error_bits(b),
            _ => Vec::new(),
        },
    };

    // Alerts: column 1 (prtAlertIndex) is often not accessible; rows come from any column.
    let al = oid(PRT_ALERT_ENTRY);
    let acols: BTreeMap<u32, BTreeMap<u32, &SnmpValue>> =
        (2..=9).map(|c| (c, column(values, &al, c, d))).collect();
    let arows: BTreeSet<u32> = acols.values().flat_map(|c| c.keys().copied()).collect();
    let acell = |c: u32, r: u32| acols.get(&c).and_then(|m| m.get(&r)).copied();
    let alerts = arows
        .into_iter()
        .take(MAX_ROWS)
        .map(|r| Alert {
            index: r,
            severity: acell(2, r).and_then(int).map(alert_severity_name),
            group: acell(4, r).and_then(int).map(alert_group_name),
            group_index: acell(5, r).and_then(int),
            location: acell(6, r).and_then(int),
            code: acell(7, r).and_then(int).map(alert_code_name),
            description: acell(8, r).and_then(text),
            time_cs: acell(9, r).and_then(unsigned),
        })
        .collect();

    Reading {
        read_at,
        identity,
        uptime_cs: get(values, &oid(SYS_UPTIME)).and_then(unsigned),
        counters,
        billing_counter,
        supplies,
        status,
        alerts,
        trays: input_trays(values, d, spec.low_percent),
    }
}

#[cfg(test)]
mod tests {
    /// A table counter (Ricoh) is found by the row whose type column holds its code,
    /// wherever the model puts that row; a code no row has gives no counter.
    #[test]
    fn table_counters_are_found_by_their_type_code() {
        let profile = crate::apply::profile::Profile::load("ricoh").unwrap();
        let spec = TelemetrySpec {
            vendor_counters: profile.counters.clone(),
            billing_counter: profile.billing_counter.clone(),
            ..TelemetrySpec::default()
        };
        let types: ObjectId = "1.3.6.1.4.1.367.3.2.1.2.19.5.1.2".parse().unwrap();
        let values_col: ObjectId = "1.3.6.1.4.1.367.3.2.1.2.19.5.1.9".parse().unwrap();
        // Walked once per poll, each column once.
        let tables = table_oids(&spec);
        assert_eq!(tables.iter().filter(|t| **t == types).count(), 1);
        assert_eq!(tables.iter().filter(|t| **t == values_col).count(), 1);
        assert!(!scalar_oids(1, &spec).contains(&values_col));
        // This model's rows, in its own order: (row, type code, value).
        let rows = [
            (1, 400, 700),
            (2, 10, 1000),
            (3, 402, 150),
            (4, 401, 550),
            (7, 403, 0),
        ];
        let mut values = BTreeMap::new();
        for (r, code, v) in rows {
            values.insert(types.child(r), SnmpValue::Integer(code));
            values.insert(values_col.child(r), SnmpValue::Integer(v));
        }
        let reading = decode(&values, 1, &spec, chrono::Utc::now());
        let got: Vec<(&str, &str, u64)> = reading
            .counters
            .iter()
            .map(|c| (c.name.as_str(), c.oid.as_str(), c.value))
            .collect();
        assert_eq!(
            got,
            [
                ("ricohTotal", "1.3.6.1.4.1.367.3.2.1.2.19.5.1.9.2", 1000),
                ("ricohPrintTotal", "1.3.6.1.4.1.367.3.2.1.2.19.5.1.9.1", 700),
                ("ricohPrintBlack", "1.3.6.1.4.1.367.3.2.1.2.19.5.1.9.4", 550),
                ("ricohPrintColor", "1.3.6.1.4.1.367.3.2.1.2.19.5.1.9.3", 150),
                ("ricohPrintColor2", "1.3.6.1.4.1.367.3.2.1.2.19.5.1.9.7", 0),
            ]
        );
        let checks = crate::telemetry::counters::checks(&reading.counters);
        assert!(
            checks
                .iter()
                .any(|c| c.whole == "print" && c.parts_value == 700 && c.adds_up()),
            "{checks:?}"
        );
    }

    use super::*;

    #[test]
    fn error_state_bits_msb_first_missing_octets_zero() {
        let cases: &[(&[u8], &[&str])] = &[
            (&[], &[]),
            (&[0x00], &[]),
            (&[0x80], &["lowPaper"]),
            (&[0x01], &["serviceRequested"]),
            (&[0x10], &["noToner"]),
            (&[0x08], &["doorOpen"]),
            (&[0x20, 0x00], &["lowToner"]),
            (&[0x00, 0x80], &["inputTrayMissing"]),
            (&[0x04, 0x02], &["jammed", "overduePreventMaint"]),
            (&[0x00, 0x01], &["bit15"]),
            (&[0x30], &["lowToner", "noToner"]),
        ];
        for (octets, want) in cases {
            assert_eq!(error_bits(octets), *want, "{octets:02x?}");
        }
    }

    #[test]
    fn special_levels_are_states_not_numbers() {
        use SpecialLevel::*;
        let cases = [
            (-1, Level::Special(Other)),
            (-2, Level::Special(Unknown)),
            (-3, Level::Special(SomeRemaining)),
            (-7, Level::Special(Unknown)),
            (0, Level::Amount(0)),
            (80, Level::Amount(80)),
        ];
        for (n, want) in cases {
            assert_eq!(level(n), want, "{n}");
        }
    }

    #[test]
    fn supply_judgement_table() {
        use SupplyClass::*;
        use SupplyState::*;
        let a = Level::Amount;
        let s = Level::Special;
        let cases = [
            // class, max, level → percent, state
            (Consumed, a(100), a(80), Some(80), Ok),
            (Consumed, a(100), a(10), Some(10), Low),
            (Consumed, a(100), a(0), Some(0), Empty),
            (Consumed, a(3000), a(2100), Some(70), Ok),
            (Consumed, a(12000), a(11501), Some(96), Ok),
            (Consumed, s(SpecialLevel::Unknown), a(0), None, Empty),
            (
                Consumed,
                s(SpecialLevel::Unknown),
                s(SpecialLevel::SomeRemaining),
                None,
                SomeRemaining,
            ),
            (Consumed, a(100), s(SpecialLevel::Unknown), None, Unknown),
            (Consumed, s(SpecialLevel::Other), a(50), None, SomeRemaining),
            (Consumed, a(0), a(0), None, Empty),
            // Receptacles: the level is the space left.
            (Receptacle, a(100), a(5), Some(5), AlmostFull),
            (Receptacle, a(100), a(0), Some(0), Full),
            (Receptacle, a(6700), a(6030), Some(90), Ok),
            (
                Receptacle,
                s(SpecialLevel::Unknown),
                s(SpecialLevel::SomeRemaining),
                None,
                SomeRemaining,
            ),
            // A level above the capacity is capped at 100 %.
            (Consumed, a(100), a(150), Some(100), Ok),
        ];
        for (class, max, lvl, pct, state) in cases {
            assert_eq!(
                judge_supply(class, max, lvl, 10),
                (pct, state),
                "{class:?} {max:?} {lvl:?}"
            );
        }
    }

    #[test]
    fn text_trims_nuls_and_caps_length() {
        assert_eq!(
            text(&SnmpValue::OctetString(b"Toner\0\0 ".to_vec())).as_deref(),
            Some("Toner")
        );
        assert_eq!(text(&SnmpValue::OctetString(vec![])).as_deref(), Some(""));
        let long = "é".repeat(600);
        let t = text(&SnmpValue::OctetString(long.into_bytes())).unwrap();
        assert!(t.len() <= MAX_TEXT && t.chars().all(|c| c == 'é'));
        assert_eq!(text(&SnmpValue::Integer(3)), None);
        // Invalid UTF-8 is replaced, not refused.
        assert!(text(&SnmpValue::OctetString(vec![0xff, b'a']))
            .unwrap()
            .ends_with('a'));
    }

    #[test]
    fn enum_names_fall_back_to_numbers() {
        assert_eq!(supply_type_name(4), "wasteToner");
        assert_eq!(supply_type_name(0), "type0");
        assert_eq!(supply_type_name(99), "type99");
        assert_eq!(unit_name(7), "impressions");
        assert_eq!(alert_code_name(1104), "markerTonerAlmostEmpty");
        assert_eq!(alert_code_name(4242), "code4242");
        assert_eq!(device_status_name(9), "status9");
    }
}
