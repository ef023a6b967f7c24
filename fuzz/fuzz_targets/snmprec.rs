//! The snmprec recording loader: bad lines become warnings, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (values, warnings) = platen_printer_sim::snmprec::parse(&text);
    assert!(values.len() + warnings.len() <= text.lines().count());
});
