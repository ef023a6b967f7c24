//! The agent's desired-config parser: any bytes from the broker. Decoding must
//! never panic; what decodes must validate without panicking, survive a signature
//! check, and re-encode to something that decodes to the same config.
#![no_main]
use libfuzzer_sys::fuzz_target;
use platen_protocol::{codec, DesiredConfig, Id, TrustedKeys};
use std::sync::OnceLock;

fn keys() -> &'static TrustedKeys {
    static K: OnceLock<TrustedKeys> = OnceLock::new();
    K.get_or_init(|| {
        TrustedKeys::new([("k1", "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")]).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(c) = codec::decode::<DesiredConfig>(data) else {
        return;
    };
    let _ = c.validate();
    let _ = keys().verify(&Id::new("acme").unwrap(), &c);
    let again: DesiredConfig =
        codec::decode(&codec::encode(&c)).expect("re-encoded config decodes");
    assert_eq!(again, c);
});
