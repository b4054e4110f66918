//! Arbitrary text as a config drop-in: parsing never panics and never fails (DESIGN §7: a
//! boot never fails on configuration); whatever it keeps is applied without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (_fragment, _warnings) = updater::config::parse_fragment(text, std::path::Path::new("fuzz.toml"));
});
