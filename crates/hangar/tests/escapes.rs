//! Hostile uploads through the real binary, one case per way out: function zips with symlink
//! chains, duplicate names, `..` through linked directories and special files; image layers
//! with links, hard links out, FIFOs and devices; images whose `/etc/passwd` links to the
//! host's files, a device or a FIFO; import archives whose blobs or `index.json` are links.
//! After each: a clear 4xx (or, for inert specials, a clean import), nothing created or
//! changed outside the data dir, and the server still answering other calls at once.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::Server;
use common::oci::{layer, oci_layout};
use serde_json::{Value, json};

/// Modification times of everything in the places an escape would write to: the directories
/// around the data dir, /tmp, /etc, /root and /var/tmp (two levels deep).
fn snapshot(extra: &Path) -> BTreeMap<PathBuf, Option<SystemTime>> {
    let mut out = BTreeMap::new();
    fn walk(dir: &Path, depth: u32, out: &mut BTreeMap<PathBuf, Option<SystemTime>>, skip: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.starts_with(skip) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).ok();
            out.insert(p.clone(), meta.as_ref().and_then(|m| m.modified().ok()));
            if depth > 0 && meta.is_some_and(|m| m.is_dir()) {
                walk(&p, depth - 1, out, skip);
            }
        }
    }
    for d in [Path::new("/etc"), Path::new("/root"), Path::new("/var/tmp"), extra] {
        walk(d, 1, &mut out, Path::new("/nonexistent"));
    }
    out
}

/// What changed between two snapshots, leaving out the data dir and files other processes on
/// the machine touch all the time.
fn changed(before: &BTreeMap<PathBuf, Option<SystemTime>>, after: &BTreeMap<PathBuf, Option<SystemTime>>, data: &Path) -> Vec<String> {
    let noisy = |p: &Path| p.starts_with(data) || p.starts_with("/etc/ld.so.cache") || p.to_string_lossy().contains(".cargo");
    let mut out = Vec::new();
    for (p, t) in after {
        if noisy(p) {
            continue;
        }
        match before.get(p) {
            None => out.push(format!("created {}", p.display())),
            Some(b) if b != t => out.push(format!("modified {}", p.display())),
            _ => {}
        }
    }
    out
}

/// A zip written by Python's zipfile, which (unlike Rust's writer) allows duplicate names:
/// entries are (name, symlink target or file body, is_link, unix file type bits).
fn hostile_zip(entries: &[(&str, &str, u32)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("code.zip");
    let spec: Vec<Value> = entries.iter().map(|(n, body, kind)| json!([n, body, kind])).collect();
    let script = r#"
import json, sys, zipfile, warnings
warnings.simplefilter("ignore")
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, body, kind in json.loads(sys.argv[2]):
        info = zipfile.ZipInfo(name)
        info.external_attr = (kind | 0o755) << 16
        info.create_system = 3
        z.writestr(info, body)
"#;
    let st = Command::new("python3").arg("-c").arg(script).arg(&out).arg(serde_json::to_string(&spec).unwrap()).status().expect("python3 runs");
    assert!(st.success());
    std::fs::read(out).unwrap()
}

/// Zip entries to write: (name, body or link target, file type bits).
type ZipEntries = Vec<(String, String, u32)>;

const LINK: u32 = 0o120000;
const FILE: u32 = 0o100000;
const FIFO: u32 = 0o010000;

async fn healthy(s: &Server) {
    // The API answers other calls at once (no blocking pool pinned, nothing wedged).
    let r = tokio::time::timeout(Duration::from_secs(1), s.get("/v1/functions").send()).await.expect("the API answers within a second").unwrap();
    assert_eq!(r.status(), 200);
}

async fn deploy_zip(s: &Server, zip: Vec<u8>) -> (u16, String, String) {
    let form = reqwest::multipart::Form::new()
        .text("config", json!({"runtime": "python3", "handler": "app.handler"}).to_string())
        .part("code", reqwest::multipart::Part::bytes(zip).file_name("code.zip"));
    let r = s.http().put(format!("{}/v1/functions/evil", s.url)).bearer_auth(&s.admin_key).multipart(form).send().await.unwrap();
    common::error_code(r).await
}

#[tokio::test]
async fn hostile_function_zips_touch_nothing_outside() {
    let s = Server::start();
    let target_dir = tempfile::tempdir().unwrap();
    let victim = target_dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let before = snapshot(target_dir.path());
    // s1 → ., t1 → s1/.., t2 → t1/.., ... each looks inside on its own; f then points through
    // the last at a host path, and a regular entry of the same name follows.
    let mut chain: ZipEntries = vec![("s1".into(), ".".into(), LINK), ("t1".into(), "s1/..".into(), LINK)];
    for i in 2..=12 {
        chain.push((format!("t{i}"), format!("t{}/..", i - 1), LINK));
    }
    let via = format!("t12{}", victim.display());
    let cases: Vec<(&str, ZipEntries)> = vec![
        ("a duplicate name over a symlink chain", [chain.clone(), vec![("f".into(), via.clone(), LINK), ("f".into(), "pwned".into(), FILE)]].concat()),
        (
            "a file under a linked directory",
            [chain.clone(), vec![("d".into(), format!("t12{}", target_dir.path().display()), LINK), ("d/victim".into(), "pwned".into(), FILE)]].concat(),
        ),
        ("`..` through a linked directory", vec![("d".into(), ".".into(), LINK), ("d/../../victim".into(), "pwned".into(), FILE)]),
        ("an absolute symlink", vec![("abs".into(), victim.display().to_string(), LINK)]),
        ("a FIFO", vec![("app.py".into(), "".into(), FIFO)]),
    ];
    for (what, entries) in cases {
        let entries: Vec<(&str, &str, u32)> = entries.iter().map(|(n, b, k)| (n.as_str(), b.as_str(), *k)).collect();
        let (status, code, message) = deploy_zip(&s, hostile_zip(&entries)).await;
        if what.starts_with("a duplicate") && status == 201 {
            // The zip reader keeps one entry per name: the file, written inside the code.
            s.ok(&["fn", "rm", "evil"]);
        } else {
            assert_eq!(status, 400, "{what}: {code} {message}");
            assert_eq!(code, "invalid_code", "{what}: {message}");
        }
        assert!(!message.contains(s.dir.path().to_str().unwrap()), "{what}: the answer shows a host path: {message}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep", "{what}");
        healthy(&s).await;
    }
    assert!(!Path::new("/tmp/x").exists());
    assert_eq!(changed(&before, &snapshot(target_dir.path()), s.dir.path()), Vec::<String>::new());
    let (status, _, _) = common::error_code(s.get("/v1/functions/evil").send().await.unwrap()).await;
    assert_eq!(status, 404, "no function was made");
}

/// A tar with entries of any type: (name, type, body or link target).
fn raw_layer(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(*kind);
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                h.set_size(0);
                b.append_link(&mut h, name, body).unwrap();
            }
            _ => {
                h.set_size(body.len() as u64);
                b.append_data(&mut h, name, body.as_bytes()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn tar_of(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

async fn import(s: &Server, body: Vec<u8>, name: &str) -> (u16, Value) {
    let r = s.http().post(format!("{}/v1/images/import?name={name}", s.url)).bearer_auth(&s.admin_key).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn hostile_layers_and_archives_touch_nothing_outside() {
    use tar::EntryType::{Block, Char, Fifo, Link, Regular, Symlink};
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let victim = target_dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let before = snapshot(target_dir.path());
    let victim_s = victim.display().to_string();
    let out_dir = target_dir.path().display().to_string();
    let chain_out = format!("t2{out_dir}");

    // Refused: each would write outside the layer.
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("a file through an absolute symlink", raw_layer(&[("d", Symlink, &out_dir), ("d/victim", Regular, "pwned")])),
        (
            "a file through a symlink chain",
            raw_layer(&[("s", Symlink, "."), ("t1", Symlink, "s/.."), ("t2", Symlink, "t1/.."), (&chain_out, Regular, "pwned")]),
        ),
        ("a hard link out", raw_layer(&[("h", Link, &victim_s)])),
        ("a hard link through a symlink", raw_layer(&[("d", Symlink, &out_dir), ("h", Link, "d/victim")])),
        ("a hard link to a symlink", raw_layer(&[("l", Symlink, &victim_s), ("h", Link, "l")])),
    ];
    for (what, evil) in refused {
        let layout = work.path().join(format!("evil-{}", what.len()));
        oci_layout(&layout, &[evil], json!({}), None);
        let (status, body) = import(&s, tar_of(&layout), "evil:1").await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_image", "{what}: {body}");
        assert!(!body.to_string().contains(s.dir.path().to_str().unwrap()), "{what}: the answer shows a host path: {body}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep", "{what}");
        healthy(&s).await;
    }

    // Kept inert: FIFOs are made but never opened, devices are skipped; the import finishes.
    let specials =
        raw_layer(&[("etc/", tar::EntryType::Directory, ""), ("etc/fifo", Fifo, ""), ("dev-null", Char, ""), ("disk", Block, ""), ("ok", Regular, "fine")]);
    let layout = work.path().join("specials");
    oci_layout(&layout, &[specials], json!({}), None);
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(30), import(&s, tar_of(&layout), "specials:1")).await.expect("a FIFO in a layer does not hang its import");
    assert_eq!(status, 201, "{body}");
    healthy(&s).await;

    // Outer archives: a blob or index.json that is a link is never followed.
    let linked_blob = work.path().join("linked-blob");
    let config = oci_layout(&linked_blob, &[layer(&[("a", b"b", 0o644)])], json!({}), None);
    let config_blob = linked_blob.join("blobs/sha256").join(&config[7..]);
    std::fs::remove_file(&config_blob).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &config_blob).unwrap();
    let linked_index = work.path().join("linked-index");
    std::fs::create_dir_all(&linked_index).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", linked_index.join("index.json")).unwrap();
    let fifo_index = work.path().join("fifo-index");
    std::fs::create_dir_all(&fifo_index).unwrap();
    nix::unistd::mkfifo(&fifo_index.join("index.json"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    for (what, dir) in [("a linked blob", &linked_blob), ("a linked index.json", &linked_index), ("a FIFO index.json", &fifo_index)] {
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), import(&s, tar_of(dir), "outer:1")).await.expect(what);
        assert_eq!(status, 400, "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.contains("digest"), "{what}: a link was followed: {message}");
        healthy(&s).await;
    }

    assert_eq!(changed(&before, &snapshot(target_dir.path()), s.dir.path()), Vec::<String>::new());
    let ls: Value = serde_json::from_str(&s.ok(&["-o", "json", "image", "ls"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 1, "only the image with inert specials was kept: {ls}");
}

#[tokio::test]
async fn image_accounts_files_resolve_inside_the_image() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is missing: ./scripts/test.sh installs it (apt-get install busybox-static)");
    let base = layer(&[("bin/", b"", 0o755), ("bin/busybox", &busybox, 0o755), ("bin/sh", b"->busybox", 0o777), ("etc/", b"", 0o755), ("tmp/", b"", 0o1777)]);
    let run = json!({"User": "web", "Entrypoint": ["/bin/sh"]});
    for (what, passwd) in [
        ("/etc/passwd → /etc/shadow", raw_layer(&[("etc/passwd", tar::EntryType::Symlink, "/etc/shadow")])),
        ("/etc/passwd → /dev/zero", raw_layer(&[("etc/passwd", tar::EntryType::Symlink, "/dev/zero")])),
        ("/etc/passwd → ../../../../etc/passwd", raw_layer(&[("etc/passwd", tar::EntryType::Symlink, "../../../../etc/passwd")])),
        ("/etc/passwd a FIFO", raw_layer(&[("etc/passwd", tar::EntryType::Fifo, "")])),
        ("a uid that is not a number", raw_layer(&[("etc/passwd", tar::EntryType::Regular, "web:x:zero:0::/:/bin/sh\n")])),
    ] {
        let name = format!("acct/{}:1", what.len());
        let layout = work.path().join(format!("img-{}", what.len()));
        oci_layout(&layout, &[base.clone(), passwd], run.clone(), None);
        let (status, body) = import(&s, tar_of(&layout), &name).await;
        assert_eq!(status, 201, "{what}: {body}");
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            s.http().post(format!("{}/v1/sandboxes", s.url)).bearer_auth(&s.admin_key).json(&json!({"image": name, "memory_mb": 128})).send(),
        )
        .await
        .expect("sandbox create answers")
        .unwrap();
        let (status, code, message) = common::error_code(r).await;
        assert_eq!(status, 400, "{what}: {code} {message}");
        assert!(message.contains("web") || message.contains("passwd"), "{what}: {message}");
        assert!(!message.contains("root:") && !message.contains('$'), "{what}: the host's account files leaked: {message}");
        healthy(&s).await;
    }
}
