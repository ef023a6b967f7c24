//! What a printer's page counters say together: the count of each kind (total,
//! black, colour, print, copy, …) and whether the parts add up to their whole where
//! they should — the check a technician runs before a contract bills from a vendor
//! counter whose OID came from a public source rather than from the maker.
//!
//! Pure: counters in, checks out.

use platen_protocol::diag::CounterCheck;
use platen_protocol::telemetry::{Counter, CounterKind};
use std::collections::BTreeMap;

/// The count of one kind and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Count {
    value: u64,
    /// The counters summed, or `a + b` of derived kinds.
    source: String,
    /// Read from counters of this kind (not derived from others).
    direct: bool,
}

/// The standard life count of marker 1 (the whole when no vendor total is read).
const LIFE_COUNT_1: &str = "prtMarkerLifeCount.1";

fn counts(counters: &[Counter]) -> BTreeMap<CounterKind, Count> {
    let mut out: BTreeMap<CounterKind, Count> = BTreeMap::new();
    // Vendor counters of a kind are summed (Canon counts large and small format apart).
    for c in counters
        .iter()
        .filter(|c| !c.name.starts_with("prtMarkerLifeCount"))
    {
        let Some(kind) = c.kind else { continue };
        let e = out.entry(kind).or_insert(Count {
            value: 0,
            source: String::new(),
            direct: true,
        });
        e.value = e.value.saturating_add(c.value);
        if !e.source.is_empty() {
            e.source.push_str(" + ");
        }
        e.source.push_str(&c.name);
    }
    if let (std::collections::btree_map::Entry::Vacant(e), Some(life)) = (
        out.entry(CounterKind::Total),
        counters.iter().find(|c| c.name == LIFE_COUNT_1),
    ) {
        e.insert(Count {
            value: life.value,
            source: life.name.clone(),
            direct: true,
        });
    }
    // Aggregates a printer does not count itself, from their parts.
    use CounterKind::*;
    for (whole, a, b) in [
        (Black, PrintBlack, CopyBlack),
        (Color, PrintColor, CopyColor),
        (Print, PrintBlack, PrintColor),
        (Copy, CopyBlack, CopyColor),
    ] {
        if out.contains_key(&whole) {
            continue;
        }
        if let (Some(x), Some(y)) = (out.get(&a), out.get(&b)) {
            let derived = Count {
                value: x.value.saturating_add(y.value),
                source: format!("{} + {}", a.name(), b.name()),
                direct: false,
            };
            out.insert(whole, derived);
        }
    }
    out
}

/// Every comparison the counters allow, once each: black + colour and print + copy
/// (+ fax) against the total; each function's black + colour against it; each
/// colour's print + copy against it; a vendor total against the standard life count.
pub fn checks(counters: &[Counter]) -> Vec<CounterCheck> {
    use CounterKind::*;
    let c = counts(counters);
    let mut out = Vec::new();
    let mut seen_parts: Vec<u64> = Vec::new();
    // `counted_whole`: compare only with a whole the printer counts itself (one
    // derived from these very parts would add up by construction).
    let mut check = |whole: CounterKind, parts: &[CounterKind], counted_whole: bool| {
        let Some(w) = c.get(&whole) else { return };
        let got: Vec<&Count> = parts.iter().filter_map(|p| c.get(p)).collect();
        if got.len() != parts.len() || (counted_whole && !w.direct) {
            return;
        }
        let sum = got.iter().fold(0u64, |a, g| a.saturating_add(g.value));
        // Two comparisons of the same derived sum with one whole say the same thing.
        if whole == Total && seen_parts.contains(&sum) && !got.iter().all(|g| g.direct) {
            return;
        }
        if whole == Total {
            seen_parts.push(sum);
        }
        out.push(CounterCheck {
            whole: whole.name().into(),
            whole_source: w.source.clone(),
            whole_value: w.value,
            parts: parts.iter().map(|p| p.name().to_string()).collect(),
            parts_value: sum,
        });
    };
    check(Total, &[Black, Color], false);
    if c.contains_key(&Fax) {
        check(Total, &[Print, Copy, Fax], false);
    } else {
        check(Total, &[Print, Copy], false);
    }
    check(Print, &[PrintBlack, PrintColor], true);
    check(Copy, &[CopyBlack, CopyColor], true);
    check(Black, &[PrintBlack, CopyBlack], true);
    check(Color, &[PrintColor, CopyColor], true);
    let vendor_total = counters
        .iter()
        .any(|x| x.kind == Some(Total) && !x.name.starts_with("prtMarkerLifeCount"));
    if let (true, Some(life), Some(t)) = (
        vendor_total,
        counters.iter().find(|x| x.name == LIFE_COUNT_1),
        c.get(&Total),
    ) {
        out.push(CounterCheck {
            whole: "total".into(),
            whole_source: life.name.clone(),
            whole_value: life.value,
            parts: vec![format!("total ({})", t.source)],
            parts_value: t.value,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(name: &str, kind: Option<CounterKind>, value: u64) -> Counter {
        Counter {
            name: name.into(),
            oid: "1.3.6.1.4.1.99999.1".into(),
            unit: None,
            value,
            kind,
        }
    }

    fn life(value: u64) -> Counter {
        counter(LIFE_COUNT_1, Some(CounterKind::Total), value)
    }

    fn summary(c: &[CounterCheck]) -> Vec<(String, String, u64, u64, bool)> {
        c.iter()
            .map(|c| {
                (
                    c.whole.clone(),
                    c.parts.join("+"),
                    c.whole_value,
                    c.parts_value,
                    c.adds_up(),
                )
            })
            .collect()
    }

    #[test]
    fn counters_add_up_or_say_by_how_much() {
        use CounterKind::*;
        let s = |v: &str| v.to_string();
        // The Konica Minolta bizhub C250i recording: four split counters and the life
        // count, which counts 7 pages more (0.02 %: within the tolerance).
        let konica = [
            life(33810),
            counter("copyBlack", Some(CopyBlack), 3672),
            counter("printBlack", Some(PrintBlack), 22876),
            counter("copyColor", Some(CopyColor), 544),
            counter("printColor", Some(PrintColor), 6711),
        ];
        assert_eq!(
            summary(&checks(&konica)),
            [(s("total"), s("black+color"), 33810, 33803, true)],
            "print + copy is the same sum: said once"
        );
        // A vendor total, black and colour that do not add up, and a vendor total
        // against the life count.
        let hp = [
            life(1000),
            counter("totalEngine", Some(Total), 1000),
            counter("color", Some(Color), 400),
            counter("black", Some(Black), 500),
        ];
        assert_eq!(
            summary(&checks(&hp)),
            [
                (s("total"), s("black+color"), 1000, 900, false),
                (s("total"), s("total (totalEngine)"), 1000, 1000, true),
            ]
        );
        // Parts above the whole never add up; several counters of one kind are summed.
        let canon = [
            life(100),
            counter("blackLarge", Some(Black), 30),
            counter("blackSmall", Some(Black), 50),
            counter("colorLarge", Some(Color), 10),
            counter("colorSmall", Some(Color), 11),
        ];
        assert_eq!(
            summary(&checks(&canon)),
            [(s("total"), s("black+color"), 100, 101, false)]
        );
        // Functions with fax, and a function's own split.
        let kyocera = [
            life(500),
            counter("print", Some(Print), 300),
            counter("copy", Some(Copy), 150),
            counter("fax", Some(Fax), 50),
            counter("printBlack", Some(PrintBlack), 200),
            counter("printColor", Some(PrintColor), 100),
        ];
        assert_eq!(
            summary(&checks(&kyocera)),
            [
                (s("total"), s("print+copy+fax"), 500, 500, true),
                (s("print"), s("print_black+print_color"), 300, 300, true),
            ]
        );
        // Nothing to compare: a life count alone, or kinds that are not parts.
        assert!(checks(&[life(5)]).is_empty());
        assert!(checks(&[life(5), counter("scans", Some(Scan), 9)]).is_empty());
        assert!(checks(&[counter("x", None, 5)]).is_empty());
    }
}
