//! Entry names from archives taken apart and reached beneath a directory handle: whatever the
//! name, it resolves inside the tree or is refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let tree = hangar_confine::Tree::open(&root).expect("tree");
    let names: Vec<&[u8]> = data.split(|b| *b == 0).collect();
    for (i, name) in names.iter().enumerate() {
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
        if let Ok(e) = tree.entry(path, true) {
            let _ = if i % 3 == 0 { e.symlink(std::path::Path::new("..")) } else { e.create_file(0o644).map(drop) };
        }
        let _ = tree.read_in_root(&String::from_utf8_lossy(name), 16);
    }
    let beside: Vec<_> = std::fs::read_dir(dir.path()).expect("listing").flatten().map(|e| e.file_name()).collect();
    assert!(beside.iter().all(|n| n == "root"), "{beside:?}");
});
