//! Loader for snmpsim `.snmprec` recordings: one `OID|TAG|VALUE` line per object.
//!
//! Tags: 2 INTEGER, 4 OCTET STRING, 4x hex OCTET STRING, 5 NULL, 6 OID, 64 IpAddress,
//! 65 Counter32, 66 Gauge32, 67 TimeTicks, 68 Opaque, 70 Counter64 (an `x` suffix
//! means a hex value). Variation-module tags (`4:writecache`) keep their base type;
//! their `value=…` option is used as the value. Lines that cannot be read become
//! warnings with their line number: the loader never panics and never stops early.

use async_snmp::{Oid, Value};
use bytes::Bytes;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

/// Parse a recording into an ordered map.
pub fn parse(text: &str) -> (BTreeMap<Oid, Value>, Vec<Warning>) {
    let mut map = BTreeMap::new();
    let mut warnings = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok((oid, value)) => {
                map.insert(oid, value);
            }
            Err(message) => warnings.push(Warning {
                line: i + 1,
                message,
            }),
        }
    }
    (map, warnings)
}

fn parse_oid(s: &str) -> Result<Oid, String> {
    let s = s.trim().trim_start_matches('.');
    let arcs: Result<Vec<u32>, _> = s.split('.').map(str::parse::<u32>).collect();
    match arcs {
        Ok(a) if a.len() >= 2 && a.len() <= 128 => Ok(Oid::from(a)),
        _ => Err(format!("bad OID {s:?}")),
    }
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    // Bytes, not a `&str` slice: a multi-byte character between hex digits must be an
    // error, not a slice off a character boundary (found by `scripts/fuzz snmprec`).
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {s:?}"));
    }
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    digits
        .chunks(2)
        .map(|p| match (nibble(p[0]), nibble(p[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(format!("bad hex {s:?}")),
        })
        .collect()
}

/// Parse one `OID|TAG|VALUE` line (also the simulator's `set` command syntax).
pub fn parse_line(line: &str) -> Result<(Oid, Value), String> {
    let mut parts = line.splitn(3, '|');
    let oid = parse_oid(parts.next().unwrap_or(""))?;
    let tag = parts.next().ok_or("missing type tag")?;
    let mut value = parts.next().ok_or("missing value")?.to_string();
    // "4:writecache" → base tag "4"; the value is in "value=…".
    let (tag, variation) = match tag.split_once(':') {
        Some((t, _)) => (t, true),
        None => (tag, false),
    };
    if variation {
        if let Some(v) = value.split(',').find_map(|kv| kv.strip_prefix("value=")) {
            value = v.to_string();
        }
    }
    let (num, is_hex) = match tag.strip_suffix('x') {
        Some(n) => (n, true),
        None => (tag, false),
    };
    let bytes = || {
        if is_hex {
            hex(&value)
        } else {
            Ok(value.clone().into_bytes())
        }
    };
    let int = |s: &str| {
        s.trim()
            .parse::<i64>()
            .map_err(|_| format!("bad number {s:?}"))
    };
    let v = match num {
        "2" => Value::Integer(
            i32::try_from(int(&value)?).map_err(|_| format!("INTEGER out of range: {value}"))?,
        ),
        "4" => Value::OctetString(Bytes::from(bytes()?)),
        "5" => Value::Null,
        "6" => Value::ObjectIdentifier(parse_oid(&value)?),
        "64" => {
            let b = if is_hex {
                hex(&value)?
            } else {
                value
                    .split('.')
                    .map(|p| {
                        p.parse::<u8>()
                            .map_err(|_| format!("bad IpAddress {value:?}"))
                    })
                    .collect::<Result<Vec<u8>, _>>()?
            };
            let arr: [u8; 4] = b
                .try_into()
                .map_err(|_| format!("IpAddress needs 4 octets: {value:?}"))?;
            Value::IpAddress(arr)
        }
        "65" | "66" | "67" => {
            let n = u32::try_from(int(&value)?)
                .map_err(|_| format!("32-bit unsigned out of range: {value}"))?;
            match num {
                "65" => Value::Counter32(n),
                "66" => Value::Gauge32(n),
                _ => Value::TimeTicks(n),
            }
        }
        "68" => Value::Opaque(Bytes::from(bytes()?)),
        "70" => Value::Counter64(
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("bad Counter64 {value:?}"))?,
        ),
        other => return Err(format!("unsupported type tag {other:?}")),
    };
    Ok((oid, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_with_multibyte_characters_is_a_warning_not_a_panic() {
        // Found by `scripts/fuzz snmprec`: the old loader sliced "aé1" at byte 2.
        for bad in ["aé1", "é1", "0é", "ab\u{2003}cd\u{2003}é"] {
            let (map, warnings) = parse(&format!("1.3.6.1.2.1.1.7.0|4x|{bad}\n"));
            assert!(map.is_empty(), "{bad}");
            assert_eq!(warnings.len(), 1, "{bad}");
        }
        assert_eq!(hex("0a FF").unwrap(), vec![0x0a, 0xff]);
    }

    #[test]
    fn reads_every_tag_and_reports_bad_lines() {
        let text = "\
1.3.6.1.2.1.1.1.0|4|Sim Printer
1.3.6.1.2.1.1.3.0|67|123456
1.3.6.1.2.1.1.5.0|4:writecache|value=sim-printer
1.3.6.1.2.1.25.3.5.1.2.1|4x|0100
1.3.6.1.2.1.25.3.2.1.2.1|6|1.3.6.1.2.1.25.3.1.5
1.3.6.1.2.1.4.20.1.1.10.0.0.1|64|10.0.0.1
1.3.6.1.2.1.43.10.2.1.4.1.1|65|33810
1.3.6.1.2.1.43.11.1.1.9.1.1|2|-3
1.3.6.1.2.1.31.1.1.1.6.1|70|18446744073709551615
1.3.6.1.2.1.25.3.5.1.2.2|4|
not-an-oid|4|x
1.3.6.1.2.1.1.9.0|99|x
1.3.6.1.2.1.1.8.0|2|notanumber
1.3.6.1.2.1.1.7.0|4x|abc
1.3.6.1.2.1.1.7.1
";
        let (map, warnings) = parse(text);
        assert_eq!(map.len(), 10);
        assert_eq!(
            map[&parse_oid("1.3.6.1.2.1.1.5.0").unwrap()],
            Value::OctetString(Bytes::from_static(b"sim-printer"))
        );
        assert_eq!(
            map[&parse_oid("1.3.6.1.2.1.25.3.5.1.2.1").unwrap()],
            Value::OctetString(Bytes::from_static(&[1, 0]))
        );
        assert_eq!(
            map[&parse_oid("1.3.6.1.2.1.43.11.1.1.9.1.1").unwrap()],
            Value::Integer(-3)
        );
        assert_eq!(
            map[&parse_oid("1.3.6.1.2.1.25.3.5.1.2.2").unwrap()],
            Value::OctetString(Bytes::new())
        );
        let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, vec![11, 12, 13, 14, 15], "{warnings:?}");
    }

    #[test]
    fn the_real_recordings_load_cleanly() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/snmprec");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("snmprec") {
                continue;
            }
            let (map, warnings) = parse(&std::fs::read_to_string(&path).unwrap());
            assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
            assert!(map.len() > 40, "{}", path.display());
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "|",
            "||",
            "1.3|2|",
            "1.3|4x|zz",
            "1.3|64|1.2.3",
            "1.3|65|-1",
            "\u{0}|\u{0}|\u{0}",
            "1.3.6|2|99999999999",
        ] {
            let _ = parse(s);
        }
    }
}
