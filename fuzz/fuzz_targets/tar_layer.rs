//! One image layer (a tar stream, maybe compressed): unpacking refuses or writes only inside
//! the layer directory, never blocks on a special file, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("layer");
    std::fs::create_dir(&root).expect("layer dir");
    let limits = hangar_image::unpack::Limits::within(std::time::Duration::from_secs(5));
    for specials in [hangar_image::unpack::Specials::Layer, hangar_image::unpack::Specials::Archive] {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir(&root).expect("layer dir");
        let _ = hangar_image::unpack::unpack(data, &root, "fuzz", specials, limits);
        let beside: Vec<_> = std::fs::read_dir(dir.path()).expect("listing").flatten().map(|e| e.file_name()).collect();
        assert!(beside.iter().all(|n| n == "layer"), "{beside:?}");
    }
});
