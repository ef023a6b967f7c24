//! Strict decoding and encoding of Platen messages.
//!
//! Decoding refuses, with an error that says what is wrong: payloads over
//! [`MAX_MESSAGE_BYTES`], invalid UTF-8/JSON, unknown fields, wrong types, nesting
//! deeper than serde_json's limit (128), messages of a newer major protocol version,
//! and messages that fail the type's own checks.
//!
//! Every message carries the protocol version as its first field,
//! `"protocol": "1.0"` ([`PROTOCOL_VERSION`]). A message without it is taken as
//! 1.0 (agents and clouds before the field existed). A newer minor version is
//! accepted: minor versions only add optional fields, which a message of a newer
//! minor may carry and this build ignores (a field this build does not know in a
//! message of its own or an older version is refused). A newer major version is
//! refused with [`DecodeError::UnsupportedProtocol`].
//!
//! Versions: 1.0 the first; 1.1 adds `trays` (input trays) to telemetry readings and
//! diagnostics; 1.2 adds `kind` to page counters (what each counts: total, black,
//! colour, print, copy, …).

use crate::{ApplyReport, DesiredConfig, Health};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The protocol version this build speaks: `(major, minor)`.
pub const PROTOCOL: (u16, u16) = (1, 2);
/// [`PROTOCOL`] as it appears on the wire.
pub const PROTOCOL_VERSION: &str = "1.2";
/// The envelope field that carries the protocol version.
pub const PROTOCOL_FIELD: &str = "protocol";

/// Largest message accepted or produced, in bytes. The MQTT clients read packets up
/// to [`MAX_INCOMING_PACKET_BYTES`], so an oversized message is refused by us, with a
/// reason, and acknowledged, rather than by the transport.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Largest MQTT packet the agent and the cloud read. A packet above the client's
/// limit breaks the connection before it can be acknowledged, so the broker delivers
/// it again after every reconnect (a retained or QoS 1 message wedges the link);
/// up to this size it is read, refused by the codec and acknowledged. Larger packets
/// must be stopped by the broker (`max_packet_size` in the packaged Mosquitto conf).
pub const MAX_INCOMING_PACKET_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("invalid {kind} JSON: {source}")]
    Json {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid {kind}: {reason}")]
    Invalid { kind: &'static str, reason: String },
    #[error("{kind} uses protocol {version}; this build speaks {PROTOCOL_VERSION} (upgrade it)")]
    UnsupportedProtocol { kind: &'static str, version: String },
}

/// A message type that can be checked after parsing.
pub trait Message: Serialize + DeserializeOwned {
    const KIND: &'static str;
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Message for DesiredConfig {
    const KIND: &'static str = "desired config";
    fn check(&self) -> Result<(), String> {
        self.validate()
    }
}

impl Message for ApplyReport {
    const KIND: &'static str = "apply report";
    fn check(&self) -> Result<(), String> {
        self.validate()
    }
}

impl Message for Health {
    const KIND: &'static str = "health";
}

impl Message for crate::Telemetry {
    const KIND: &'static str = "telemetry";
    fn check(&self) -> Result<(), String> {
        self.validate()
    }
}

impl Message for crate::DriftReport {
    const KIND: &'static str = "drift report";
    fn check(&self) -> Result<(), String> {
        self.validate()
    }
}

impl Message for crate::DiagRequest {
    const KIND: &'static str = "diag request";
    fn check(&self) -> Result<(), String> {
        self.validate()
    }
}

impl Message for crate::DiagResponse {
    const KIND: &'static str = "diag response";
}

/// Parse a protocol version `"MAJOR.MINOR"`.
pub fn parse_protocol(v: &str) -> Option<(u16, u16)> {
    let (major, minor) = v.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Decode a message strictly: a field this build does not know is refused, unless the
/// message is of a newer minor version (whose additions this build cannot know): then
/// it is ignored.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    // serde's derived structs also accept JSON arrays; the protocol is objects only.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(DecodeError::Invalid {
            kind: T::KIND,
            reason: "expected a JSON object".into(),
        });
    }
    let checked = |msg: T| {
        msg.check()
            .map(|()| msg)
            .map_err(|reason| DecodeError::Invalid {
                kind: T::KIND,
                reason,
            })
    };
    // Fast path: a known envelope as `encode` writes it. Parse the rest directly
    // (half the cost of going through a `Value`); on any error, or a field this build
    // does not know, take the general path, whose messages carry the right positions.
    if let Some(rest) = strip_envelope(bytes) {
        let mut body = Vec::with_capacity(rest.len() + 1);
        body.push(b'{');
        body.extend_from_slice(rest);
        let mut de = serde_json::Deserializer::from_slice(&body);
        if let Ok((msg, None)) = typed::<T, _>(&mut de) {
            if de.end().is_ok() {
                return checked(msg);
            }
        }
    }
    let json = |source| DecodeError::Json {
        kind: T::KIND,
        source,
    };
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(json)?;
    let minor = check_protocol::<T>(object.remove(PROTOCOL_FIELD))?;
    let unknown_field = |field: String| DecodeError::Invalid {
        kind: T::KIND,
        reason: format!("unknown field `{field}`"),
    };
    let strict = minor <= PROTOCOL.1;
    match typed_noting::<T, _>(serde_json::Value::Object(object)) {
        // A field we do not know is the first thing wrong (as serde's strict mode
        // says it), also when the message then lacks a field.
        (_, Some(field)) if strict => Err(unknown_field(field)),
        (Ok(msg), _) => checked(msg),
        (Err(e), _) => Err(json(e)),
    }
}

/// Deserialize, noting the first field `T` does not have (its path, `reading.extra`).
fn typed<'de, T: DeserializeOwned, D: serde::Deserializer<'de>>(
    de: D,
) -> Result<(T, Option<String>), D::Error> {
    let (msg, unknown) = typed_noting::<T, D>(de);
    Ok((msg?, unknown))
}

/// [`typed`], keeping the first unknown field also when deserializing fails.
fn typed_noting<'de, T: DeserializeOwned, D: serde::Deserializer<'de>>(
    de: D,
) -> (Result<T, D::Error>, Option<String>) {
    let mut unknown = None;
    let msg = serde_ignored::deserialize(de, |path| {
        if unknown.is_none() {
            unknown = Some(path.to_string());
        }
    });
    (msg, unknown)
}

/// Envelopes of the versions whose every field this build knows, as [`encode`]
/// writes them.
const KNOWN_ENVELOPES: [&str; 3] = [
    "{\"protocol\":\"1.0\",",
    "{\"protocol\":\"1.1\",",
    "{\"protocol\":\"1.2\",",
];

/// The message after the envelope as [`encode`] writes it (`{"protocol":"1.2",`) for
/// a version this build knows every field of, or `None`. `{` followed by these bytes
/// is the message's own JSON: a receiver that decoded it can store it without
/// serialising it again (a newer minor version may carry fields it would not read
/// back, so it is serialised from what was decoded instead).
pub fn strip_envelope(bytes: &[u8]) -> Option<&[u8]> {
    KNOWN_ENVELOPES
        .iter()
        .find_map(|e| bytes.strip_prefix(e.as_bytes()))
}

/// Check the envelope's version: the same major as ours; its minor (0 when absent).
fn check_protocol<T: Message>(field: Option<serde_json::Value>) -> Result<u16, DecodeError> {
    let Some(field) = field else {
        return Ok(0); // before the field existed: 1.0
    };
    let invalid = || DecodeError::Invalid {
        kind: T::KIND,
        reason: format!("{PROTOCOL_FIELD} must be a \"MAJOR.MINOR\" string"),
    };
    let text = field.as_str().ok_or_else(invalid)?;
    let (major, minor) = parse_protocol(text).ok_or_else(invalid)?;
    if major != PROTOCOL.0 {
        return Err(DecodeError::UnsupportedProtocol {
            kind: T::KIND,
            version: text.chars().take(16).collect(),
        });
    }
    Ok(minor)
}

/// Decode only the envelope's protocol version (`None` when absent or unreadable):
/// lets a receiver tell the sender *why* a message of a newer version was refused.
pub fn peek_protocol(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        protocol: Option<String>,
    }
    if bytes.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    serde_json::from_slice::<Envelope>(bytes).ok()?.protocol
}

/// Encode a message as compact JSON, with the protocol version as its first field.
pub fn encode<T: Message>(msg: &T) -> Vec<u8> {
    // Serialising these plain structs (string keys, no maps with non-string keys)
    // cannot fail; fall back to an empty object rather than panic if it ever did.
    let body = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    with_envelope(body, false)
}

/// [`encode`], indented (golden files, CLI output).
pub fn encode_pretty<T: Message>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec_pretty(msg).unwrap_or_else(|_| b"{}".to_vec());
    with_envelope(body, true)
}

fn with_envelope(body: Vec<u8>, pretty: bool) -> Vec<u8> {
    // `body` is a serialized struct: it starts with '{'.
    let rest = body.get(1..).unwrap_or_default();
    let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
    let mut out = Vec::with_capacity(body.len() + 24);
    out.push(b'{');
    if pretty {
        out.extend_from_slice(b"\n  ");
    }
    out.extend_from_slice(b"\"protocol\":");
    if pretty {
        out.push(b' ');
    }
    out.push(b'"');
    out.extend_from_slice(PROTOCOL_VERSION.as_bytes());
    out.push(b'"');
    if empty {
        out.extend_from_slice(if pretty { b"\n}" } else { b"}" });
    } else {
        out.push(b',');
        out.extend_from_slice(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Code, ReportStatus, SettingValue};

    const GOLDEN_DESIRED: &str = include_str!("../golden/desired_config.json");
    const GOLDEN_REPORT: &str = include_str!("../golden/apply_report.json");
    const GOLDEN_HEALTH_UP: &str = include_str!("../golden/health_up.json");
    const GOLDEN_TELEMETRY: &str = include_str!("../golden/telemetry.json");
    const GOLDEN_DRIFT: &str = include_str!("../golden/drift_report.json");

    #[test]
    fn golden_telemetry_and_drift_round_trip() {
        use crate::telemetry::{Event, Level, SpecialLevel};
        let t: crate::Telemetry = reparse(GOLDEN_TELEMETRY);
        let r = t.reading.as_ref().unwrap();
        assert_eq!(r.billing_value(), Some(33810));
        assert_eq!(
            r.supplies[1].level,
            Level::Special(SpecialLevel::SomeRemaining)
        );
        assert!(matches!(
            t.events[1],
            Event::CounterReset {
                old: 34012,
                new: 33810,
                ..
            }
        ));
        let d: crate::DriftReport = reparse(GOLDEN_DRIFT);
        assert_eq!(d.settings[0].code, Code::Drift);
        // Checks beyond shape: ids must match, drift entries must be 203.
        let bad = GOLDEN_TELEMETRY.replace("\"seq\": 42", "\"seq\": 41");
        assert!(decode::<crate::Telemetry>(bad.as_bytes()).is_err());
        let bad = GOLDEN_DRIFT.replace("\"code\": 203", "\"code\": 200");
        assert!(decode::<crate::DriftReport>(bad.as_bytes()).is_err());
        let unknown_event = GOLDEN_TELEMETRY.replace("\"supply_low\"", "\"coffee_low\"");
        assert!(decode::<crate::Telemetry>(unknown_event.as_bytes()).is_err());
        let req: crate::DiagRequest = decode(br#"{"request_id":"t-1"}"#).unwrap();
        assert!(!req.write_test);
        assert!(decode::<crate::DiagRequest>(br#"{"request_id":""}"#).is_err());
    }

    fn reparse<T: Message + PartialEq + std::fmt::Debug>(golden: &str) -> T {
        let msg: T = decode(golden.as_bytes()).unwrap();
        let again: T = decode(&encode(&msg)).unwrap();
        assert_eq!(msg, again);
        // The golden file is the canonical pretty form of the message.
        let pretty = String::from_utf8(encode_pretty(&msg)).unwrap();
        assert_eq!(pretty.trim(), golden.trim(), "golden file is not canonical");
        msg
    }

    #[test]
    fn golden_desired_config_round_trips() {
        let c: DesiredConfig = reparse(GOLDEN_DESIRED);
        assert_eq!(c.version, 7);
        assert_eq!(
            c.settings["sysLocation"],
            SettingValue::Text("Floor 2, room 214".into())
        );
        assert_eq!(c.settings["prtInputDefaultIndex"], SettingValue::Integer(2));
    }

    #[test]
    fn golden_report_round_trips() {
        let r: ApplyReport = reparse(GOLDEN_REPORT);
        assert_eq!(r.status, ReportStatus::PartiallyApplied);
        assert_eq!(r.settings[1].code, Code::NotWritable);
    }

    #[test]
    fn golden_health_round_trips() {
        let _: Health = reparse(GOLDEN_HEALTH_UP);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let ok = GOLDEN_DESIRED;
        let cases: Vec<(String, &str)> = vec![
            (
                ok.replacen("\"version\"", "\"extra\": 1, \"version\"", 1),
                "unknown field `extra`",
            ),
            (
                ok.replacen("\"version\": 7", "\"version\": \"7\"", 1),
                "invalid type",
            ),
            (
                ok.replacen("\"version\": 7", "\"version\": 0", 1),
                "version must be at least 1",
            ),
            (
                ok.replacen("\"version\": 7", "\"version\": -1", 1),
                "invalid value",
            ),
            (
                ok.replacen("\"printer_id\": \"p1\"", "\"printer_id\": \"p+1\"", 1),
                "'+'",
            ),
            (
                ok.replacen(
                    "\"prtInputDefaultIndex\": 2",
                    "\"prtInputDefaultIndex\": 2.5",
                    1,
                ),
                "invalid type: floating point `2.5`, expected an integer or a text",
            ),
            (
                ok.replacen(
                    "\"prtInputDefaultIndex\": 2",
                    "\"prtInputDefaultIndex\": true",
                    1,
                ),
                "invalid type: boolean `true`, expected an integer or a text",
            ),
            (
                ok.replacen(
                    "\"issued_at\": \"2026-11-22T09:30:00Z\"",
                    "\"issued_at\": \"yesterday\"",
                    1,
                ),
                "input contains invalid characters",
            ),
            (ok[..ok.len() / 2].to_string(), "EOF"),
            ("".to_string(), "expected a JSON object"),
            (
                "[\"p1\", 7, \"2026-11-22T09:30:00Z\", {}]".to_string(),
                "expected a JSON object",
            ),
            ("\u{0}".to_string(), "expected a JSON object"),
        ];
        for (input, want) in cases {
            let err = decode::<DesiredConfig>(input.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want),
                "input {input:?}\n error {err}\n wanted {want}"
            );
        }
    }

    #[test]
    fn protocol_versions() {
        let c: DesiredConfig = decode(GOLDEN_DESIRED.as_bytes()).unwrap();
        let wire = String::from_utf8(encode(&c)).unwrap();
        assert!(
            wire.starts_with("{\"protocol\":\"1.2\",\"printer_id\""),
            "{wire}"
        );
        let bare = wire.replacen("\"protocol\":\"1.2\",", "", 1);
        assert_eq!(
            decode::<DesiredConfig>(bare.as_bytes()).unwrap(),
            c,
            "absent = 1.0"
        );
        let older = wire.replacen("1.2", "1.0", 1);
        assert_eq!(decode::<DesiredConfig>(older.as_bytes()).unwrap(), c);
        let minor = wire.replacen("1.2", "1.7", 1);
        assert_eq!(decode::<DesiredConfig>(minor.as_bytes()).unwrap(), c);
        let major = wire.replacen("1.2", "2.0", 1);
        let err = decode::<DesiredConfig>(major.as_bytes()).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnsupportedProtocol { .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "desired config uses protocol 2.0; this build speaks 1.2 (upgrade it)"
        );
        assert_eq!(peek_protocol(major.as_bytes()).as_deref(), Some("2.0"));
        for bad in ["1", "1.x", "", "1.0.0", "99999999.0", "-1.0"] {
            let text = wire.replacen("\"1.2\"", &format!("{bad:?}"), 1);
            let err = decode::<DesiredConfig>(text.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("MAJOR.MINOR"), "{bad}: {err}");
        }
        let number = wire.replacen("\"1.2\"", "1.2", 1);
        assert!(decode::<DesiredConfig>(number.as_bytes()).is_err());
        assert!(
            KNOWN_ENVELOPES.contains(&format!("{{\"protocol\":\"{PROTOCOL_VERSION}\",").as_str()),
            "add this version's envelope to KNOWN_ENVELOPES"
        );
        // The fast path and the general path agree, errors included.
        let spaced = wire.replacen("{\"protocol\":\"1.2\",", "{ \"protocol\" : \"1.2\" ,", 1);
        assert_eq!(decode::<DesiredConfig>(spaced.as_bytes()).unwrap(), c);
        let bad = wire.replacen("\"version\":7", "\"version\":\"7\"", 1);
        let err = decode::<DesiredConfig>(bad.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid type"), "{err}");
        // An empty struct still gets a well-formed envelope.
        assert_eq!(
            with_envelope(b"{}".to_vec(), false),
            b"{\"protocol\":\"1.2\"}"
        );
    }

    /// A field this build does not know: refused in a message of its own version or
    /// an older one (strict), ignored in a newer minor version (whose additions an
    /// older peer cannot know), wherever it is nested.
    #[test]
    fn unknown_fields_are_refused_unless_the_minor_version_is_newer() {
        let t: crate::Telemetry = decode(GOLDEN_TELEMETRY.as_bytes()).unwrap();
        let wire = String::from_utf8(encode(&t)).unwrap();
        let top = wire.replacen("\"seq\":", "\"mood\":\"calm\",\"seq\":", 1);
        let nested = wire.replacen("\"uptime_cs\":", "\"fan_rpm\":900,\"uptime_cs\":", 1);
        assert_ne!(nested, wire, "the golden reading has uptime_cs");
        for (text, field) in [(&top, "mood"), (&nested, "fan_rpm")] {
            for version in ["1.0", "1.1", "1.2"] {
                let msg = text.replacen("1.2", version, 1);
                let err = decode::<crate::Telemetry>(msg.as_bytes())
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains("unknown field") && err.contains(field),
                    "{version}: {err}"
                );
            }
            let newer = text.replacen("1.2", "1.9", 1);
            assert_eq!(decode::<crate::Telemetry>(newer.as_bytes()).unwrap(), t);
        }
        // An unknown field is named even when the message also lacks a field.
        let err = decode::<crate::ApplyReport>(br#"{"x\nFORGED":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `x\nFORGED`"), "{err}");
        // Only a newer minor's JSON is not stored as received.
        assert!(strip_envelope(wire.as_bytes()).is_some());
        assert!(strip_envelope(wire.replacen("1.2", "1.9", 1).as_bytes()).is_none());
    }

    #[test]
    fn oversized_and_deeply_nested_messages_are_refused() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<DesiredConfig>(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        let deep = GOLDEN_DESIRED.replacen(
            "\"prtInputDefaultIndex\": 2",
            &format!(
                "\"prtInputDefaultIndex\": {}{}",
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
            1,
        );
        let err = decode::<DesiredConfig>(deep.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("recursion limit"), "{err}");
    }

    #[test]
    fn too_many_settings_or_long_text_is_refused() {
        let mut c: DesiredConfig = decode(GOLDEN_DESIRED.as_bytes()).unwrap();
        c.settings
            .insert("x".into(), SettingValue::Text("y".repeat(2000)));
        let err = decode::<DesiredConfig>(&encode(&c))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limit is 1024"), "{err}");
        c.settings.clear();
        for i in 0..300 {
            c.settings.insert(format!("s{i}"), SettingValue::Integer(i));
        }
        let err = decode::<DesiredConfig>(&encode(&c))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limit is 256"), "{err}");
    }

    #[test]
    fn report_id_must_match_its_fields() {
        let mut r: ApplyReport = decode(GOLDEN_REPORT.as_bytes()).unwrap();
        r.config_version += 1;
        let err = decode::<ApplyReport>(&encode(&r)).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep; the fuzz targets go much further.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let seeds = [GOLDEN_DESIRED.as_bytes(), GOLDEN_REPORT.as_bytes()];
        for round in 0..20_000 {
            let seed = seeds[round % 2];
            let mut buf = seed.to_vec();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % buf.len();
                buf[i] = (x >> 32) as u8;
            }
            buf.truncate((x as usize >> 8) % (buf.len() + 1));
            let _ = decode::<DesiredConfig>(&buf);
            let _ = decode::<ApplyReport>(&buf);
        }
    }
}
