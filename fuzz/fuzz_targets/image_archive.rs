//! An uploaded image archive (OCI layout tar, `docker save`, gzip or not) imported into a
//! fresh image store: an image or an error, never a panic, a hang or a file outside the store.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = hangar_image::ImageStore::open(&dir.path().join("images")).expect("store");
    let upload = store.tmp_dir().join("upload");
    std::fs::write(&upload, data).expect("upload");
    let _ = store.import("default", &upload, None);
    let beside: Vec<_> = std::fs::read_dir(dir.path()).expect("listing").flatten().map(|e| e.file_name()).collect();
    assert!(beside.iter().all(|n| n == "images"), "{beside:?}");
});
