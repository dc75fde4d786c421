//! A user's price sheet (TOML): a sheet or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hangar_cost::sheet::parse(text, "fuzz.toml");
    }
});
