//! Telemetry decoded from SNMP recordings of real printers (LibreNMS test data, see
//! `tests/fixtures/snmprec/README.md`), asserted against the recorded values.

use chrono::Utc;
use platen_agent::snmp::printer_mib::{decode, device_index, TelemetrySpec};
use platen_agent::snmp::{from_value, ObjectId, SnmpValue};
use platen_protocol::telemetry::{Level, Reading, SpecialLevel, Supply, SupplyClass, SupplyState};
use std::collections::BTreeMap;

fn load(name: &str) -> BTreeMap<ObjectId, SnmpValue> {
    let path = format!(
        "{}/../tests/fixtures/snmprec/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (values, _warnings) = platen_printer_sim::snmprec::parse(&text);
    values
        .iter()
        .map(|(k, v)| (ObjectId(k.arcs().to_vec()), from_value(v)))
        .collect()
}

fn reading(name: &str, spec: &TelemetrySpec) -> Reading {
    let v = load(name);
    decode(&v, device_index(&v), spec, Utc::now())
}

fn supply(r: &Reading, index: u32) -> &Supply {
    r.supplies.iter().find(|s| s.index == index).unwrap()
}

const A: fn(u32) -> Level = Level::Amount;

#[test]
fn brother_toner_some_remaining_drum_in_units() {
    let r = reading("librenms-brother.snmprec", &TelemetrySpec::default());
    assert_eq!(
        r.identity.model.as_deref(),
        Some("Brother MFC-L2710DW series")
    );
    assert!(r
        .identity
        .sys_descr
        .as_deref()
        .unwrap()
        .starts_with("Brother NC-8300h"));
    assert_eq!(
        r.identity.sys_object_id.as_deref(),
        Some("1.3.6.1.4.1.2435.2.3.9.1")
    );
    assert_eq!(r.uptime_cs, Some(217_539_735));
    // No prtMarkerLifeCount in this recording: no counters, no billing counter.
    assert!(r.counters.is_empty());
    assert_eq!(r.billing_counter, None);
    let toner = supply(&r, 1);
    assert_eq!(
        (toner.kind.as_str(), toner.description.as_str()),
        ("toner", "Black Toner Cartridge")
    );
    assert_eq!(toner.max, Level::Special(SpecialLevel::Unknown));
    assert_eq!(toner.level, Level::Special(SpecialLevel::SomeRemaining));
    assert_eq!(
        (toner.percent_remaining, toner.state),
        (None, SupplyState::SomeRemaining)
    );
    let drum = supply(&r, 2);
    assert_eq!(drum.kind, "opc");
    assert_eq!((drum.max, drum.level), (A(12000), A(11501)));
    assert_eq!(
        (drum.percent_remaining, drum.state),
        (Some(96), SupplyState::Ok)
    );
    assert_eq!(r.status.device.as_deref(), Some("running"));
    assert!(r.status.errors.is_empty());
}

#[test]
fn canon_counter_in_sheets_waste_ink_is_a_receptacle() {
    let r = reading(
        "librenms-canonprinter_tm.snmprec",
        &TelemetrySpec::default(),
    );
    assert_eq!(r.identity.model.as_deref(), Some("Canon TM-5300"));
    assert_eq!(r.billing_counter.as_deref(), Some("prtMarkerLifeCount.1"));
    assert_eq!(r.billing_value(), Some(21588));
    assert_eq!(r.counters[0].unit.as_deref(), Some("sheets"));
    assert_eq!(r.supplies.len(), 6);
    let yellow = supply(&r, 3);
    assert_eq!(
        (yellow.kind.as_str(), yellow.percent_remaining),
        ("inkCartridge", Some(60))
    );
    let waste = supply(&r, 6);
    assert_eq!(waste.description, "CANON Waste Ink Tank");
    assert_eq!(waste.class, SupplyClass::Receptacle);
    // 6030 of 6700 is space left: 10 % full.
    assert_eq!(
        (waste.percent_full, waste.percent_remaining),
        (Some(10), None)
    );
    assert_eq!(waste.state, SupplyState::Ok);
}

#[test]
fn epson_empty_error_state_and_inks_at_one_percent_are_low() {
    let r = reading("librenms-epson.snmprec", &TelemetrySpec::default());
    assert_eq!(r.identity.model.as_deref(), Some("EPSON WF-C5790BA"));
    assert_eq!(r.identity.serial.as_deref(), Some("X3B8022793"));
    // hrPrinterDetectedErrorState is an empty OCTET STRING: no bits set.
    assert!(r.status.errors.is_empty());
    assert_eq!(r.status.device.as_deref(), Some("warning"));
    assert_eq!(r.supplies.len(), 4);
    for s in &r.supplies {
        assert_eq!(
            (s.kind.as_str(), s.percent_remaining, s.state),
            ("ink", Some(1), SupplyState::Low)
        );
    }
    assert_eq!(
        supply(&r, 1).description,
        "Black Ink Supply Unit T9441/T9451/T9461"
    );
}

#[test]
fn konica_service_requested_bit_waste_box_special_values_vendor_counters() {
    let profile = platen_agent::apply::profile::Profile::load("konica-minolta").unwrap();
    let spec = TelemetrySpec {
        vendor_counters: profile.counters.clone(),
        billing_counter: profile.billing_counter.clone(),
        low_percent: 10,
    };
    let r = reading("librenms-konica_c250i.snmprec", &spec);
    assert_eq!(
        r.identity.model.as_deref(),
        Some("KONICA MINOLTA bizhub C250i")
    );
    assert_eq!(r.identity.serial.as_deref(), Some("AA2M021115700"));
    // No sysUpTime in this recording: reboots cannot be told, uptime is absent.
    assert_eq!(r.uptime_cs, None);
    // 4x|0100: octet 0 = 0x01 is bit 7.
    assert_eq!(r.status.errors, vec!["serviceRequested".to_string()]);
    assert_eq!(r.billing_value(), Some(33810));
    // No prtMarkerCounterUnit: the unit is absent, not guessed.
    assert_eq!(r.counters[0].unit, None);
    let vendor: Vec<(&str, Option<&str>, u64)> = r.counters[1..]
        .iter()
        .map(|c| (c.name.as_str(), c.kind.map(|k| k.name()), c.value))
        .collect();
    // The profile's total (…5.7.2.1.1.0) is not in this recording; its duplex count is.
    assert_eq!(
        vendor,
        vec![
            ("copyBlack", Some("copy_black"), 3672),
            ("printBlack", Some("print_black"), 22876),
            ("copyColor", Some("copy_color"), 544),
            ("printColor", Some("print_color"), 6711),
            ("duplex", Some("duplex"), 7357),
        ]
    );
    assert_eq!(r.counters[0].kind.map(|k| k.name()), Some("total"));
    // Black + colour against the life count: 7 pages the split does not count.
    let checks = platen_agent::telemetry::counters::checks(&r.counters);
    assert_eq!(checks.len(), 1, "{checks:?}");
    let c = &checks[0];
    assert_eq!(
        (c.parts_value, c.whole_value, c.whole_source.as_str()),
        (33803, 33810, "prtMarkerLifeCount.1")
    );
    assert!(c.adds_up(), "{c:?}");
    assert_eq!(supply(&r, 4).description, "Toner (Black)");
    assert_eq!(supply(&r, 4).percent_remaining, Some(86));
    let waste = supply(&r, 13);
    assert_eq!(
        (waste.kind.as_str(), waste.class),
        ("wasteToner", SupplyClass::Receptacle)
    );
    assert_eq!(waste.max, Level::Special(SpecialLevel::Unknown));
    assert_eq!(waste.level, Level::Special(SpecialLevel::SomeRemaining));
    assert_eq!(
        (waste.percent_full, waste.state),
        (None, SupplyState::SomeRemaining)
    );
}

#[test]
fn xerox_without_host_resources_or_supply_types() {
    let r = reading("librenms-xerox.snmprec", &TelemetrySpec::default());
    // No hrDevicePrinter row: index 1 is assumed and the model falls back to sysDescr.
    assert_eq!(r.identity.device_index, 1);
    assert!(r
        .identity
        .model
        .as_deref()
        .unwrap()
        .starts_with("Xerox AltaLink C8045"));
    assert_eq!(r.supplies.len(), 12);
    let black = supply(&r, 1);
    assert_eq!(
        black.description,
        "Black Toner, PN 006R01509;SN48178080E0000481"
    );
    assert_eq!(black.kind, "unknown");
    assert_eq!(
        (black.percent_remaining, black.state),
        (Some(20), SupplyState::Ok)
    );
    // No type column: the waste container is recognised by its description; 5 % space left.
    let waste = supply(&r, 10);
    assert_eq!(waste.class, SupplyClass::Receptacle);
    assert_eq!(
        (waste.percent_full, waste.state),
        (Some(95), SupplyState::AlmostFull)
    );
    // The status columns are absent: nothing invented.
    assert_eq!(r.status.device, None);
    assert!(r.status.errors.is_empty());
}

/// Input trays as real printers answer them (only max capacity, level and name are in
/// these recordings; no type, so manual feed trays are told by their names).
#[test]
fn input_trays_of_real_printers() {
    use SpecialLevel::{SomeRemaining, Unknown};
    let trays = |name: &str| {
        reading(name, &TelemetrySpec::default())
            .trays
            .into_iter()
            .map(|t| (t.index, t.name, t.max, t.level, t.state, t.manual))
            .collect::<Vec<_>>()
    };
    let s = Level::Special;
    assert_eq!(
        trays("librenms-brother.snmprec"),
        vec![
            (
                1,
                "AUTO".into(),
                A(250),
                s(SomeRemaining),
                SupplyState::SomeRemaining,
                false
            ),
            (
                2,
                "MANUAL TRAY".into(),
                A(1),
                s(SomeRemaining),
                SupplyState::SomeRemaining,
                true
            ),
            (
                3,
                "TRAY1".into(),
                A(250),
                s(SomeRemaining),
                SupplyState::SomeRemaining,
                false
            ),
        ]
    );
    // Konica Minolta: trays 1 and 2 full; tray 7 (no name recorded) empty.
    let km = trays("librenms-konica_c250i.snmprec");
    assert_eq!(km.len(), 3);
    assert_eq!(
        (km[0].2, km[0].3, km[0].4),
        (A(500), A(500), SupplyState::Ok)
    );
    assert_eq!((km[2].0, km[2].1.as_str()), (7, "tray 7"));
    assert_eq!(
        (km[2].3, km[2].4, km[2].5),
        (A(0), SupplyState::Empty, false)
    );
    // Canon: an empty multi-purpose tray (manual feed) and a roll of unknown length.
    let canon = trays("librenms-canonprinter_tm.snmprec");
    assert_eq!(
        (canon[0].1.as_str(), canon[0].4, canon[0].5),
        ("Multi-Purpose Tray", SupplyState::Empty, true)
    );
    assert_eq!(
        (canon[1].1.as_str(), canon[1].3, canon[1].5),
        ("Roll Unit 1", s(SomeRemaining), false)
    );
    // Epson: levels unknown (−2).
    let epson = trays("librenms-epson.snmprec");
    assert_eq!(epson.len(), 2);
    assert!(epson
        .iter()
        .all(|t| t.3 == s(Unknown) && t.4 == SupplyState::Unknown));
    // Xerox: no prtInputTable in the recording.
    assert!(trays("librenms-xerox.snmprec").is_empty());
}
