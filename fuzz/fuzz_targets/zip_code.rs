//! A process function's code archive: whatever the bytes, unpacking refuses or writes only
//! inside the code directory, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let dest = dir.path().join("sub/code");
    let _ = hangar_runtime_process::code::unpack(data, &dest, hangar_api::RuntimeKind::Python3);
    // Nothing beside the code directory's parent appears.
    let beside: Vec<_> = std::fs::read_dir(dir.path()).expect("listing").flatten().map(|e| e.file_name()).collect();
    assert!(beside.iter().all(|n| n == "sub"), "{beside:?}");
});
