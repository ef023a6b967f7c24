//! The cloud's report parser (and the telemetry beside it): any bytes from the
//! broker. Decoding never panics; a decoded report validates without panicking and
//! round-trips; the stored-form splice finds the same report.
#![no_main]
use libfuzzer_sys::fuzz_target;
use platen_protocol::{codec, ApplyReport, Telemetry};

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = codec::decode::<Telemetry>(data) {
        let again: Telemetry = codec::decode(&codec::encode(&t)).expect("telemetry round trip");
        assert_eq!(again, t);
    }
    let Ok(r) = codec::decode::<ApplyReport>(data) else {
        return;
    };
    let _ = r.validate();
    let again: ApplyReport = codec::decode(&codec::encode(&r)).expect("report round trip");
    assert_eq!(again, r);
    if let Some(rest) = codec::strip_envelope(data) {
        let mut v = b"{".to_vec();
        v.extend_from_slice(rest);
        let spliced: ApplyReport = serde_json::from_slice(&v).expect("spliced report parses");
        assert_eq!(spliced, r);
    }
});
