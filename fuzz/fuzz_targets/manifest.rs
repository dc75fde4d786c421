//! `hangar.toml` text planned as `hangar deploy` plans it: a plan or an error that names the
//! file, never a panic (the line numbers of errors come from byte offsets into the text).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = hangar_cli::manifest::plan_text(text, std::path::Path::new("app/hangar.toml")) {
        assert!(format!("{e:#}").starts_with("app/hangar.toml"), "an error that does not name the file: {e:#}");
    }
});
