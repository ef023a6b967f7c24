//! The agent's settings-profile parser: a file a technician wrote.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = platen_agent::apply::profile::Profile::parse(text, "fuzz.toml") {
        let names = p.names();
        let _ = p.apply_order(&names);
    }
});
