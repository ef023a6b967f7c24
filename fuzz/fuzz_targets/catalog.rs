//! The cloud's plan catalog parser and its exhaustive validation: a file an
//! operator wrote.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = platen_cloud::plans::catalog::Catalog::parse(text);
});
