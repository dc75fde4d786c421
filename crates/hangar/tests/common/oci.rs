//! Test images built from local files: layers as tars, written as an OCI image layout (the
//! format `skopeo` and `docker save` write) or as an old-style `docker save` archive.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One file of a layer: path, content, mode. A path ending in `/` is a directory; content
/// starting with `->` makes a symlink to the rest.
pub type Entry<'a> = (&'a str, &'a [u8], u32);

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An uncompressed layer tar.
pub fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, path, &[][..]).unwrap();
        } else if let Some(target) = body.strip_prefix(b"->") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, std::str::from_utf8(target).unwrap()).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(body.len() as u64);
            b.append_data(&mut h, path, *body).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// A layer tar made from a directory on disk (e.g. a rootfs).
pub fn layer_from_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An image config for `layers` (uncompressed tars) and a `config` section.
pub fn config(layers: &[Vec<u8>], run: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest(l)).collect::<Vec<_>>()},
    }))
    .unwrap()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let d = digest(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
    d
}

/// Writes an OCI image layout at `dir` holding one image: `layers` uncompressed (each stored
/// gzipped), `run` its config section, `name` its `org.opencontainers.image.ref.name`.
pub fn oci_layout(dir: &Path, layers: &[Vec<u8>], run: Value, name: Option<&str>) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config_bytes = config(layers, run);
    let config_digest = put_blob(dir, &config_bytes);
    let mut descs = Vec::new();
    for l in layers {
        let gz = gzip(l);
        let d = put_blob(dir, &gz);
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()}));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": descs,
    }))
    .unwrap();
    let manifest_digest = put_blob(dir, &manifest);
    let mut desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len()});
    if let Some(n) = name {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": n});
    }
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [desc]})).unwrap()).unwrap();
    config_digest
}

/// A gzipped `docker save` archive (manifest.json with RepoTags) of one image.
pub fn docker_archive(layers: &[Vec<u8>], run: Value, tag: &str) -> Vec<u8> {
    let config_bytes = config(layers, run);
    let config_name = format!("{}.json", &digest(&config_bytes)[7..]);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        b.append_data(&mut h, name, body).unwrap();
    };
    add(&config_name, &config_bytes);
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let n = format!("layer{i}/layer.tar");
        add(&n, l);
        names.push(n);
    }
    add("manifest.json", &serde_json::to_vec(&json!([{"Config": config_name, "RepoTags": [tag], "Layers": names}])).unwrap());
    gzip(&b.into_inner().unwrap())
}

/// An OCI layout at `dir/name` of a one-layer busybox httpd image serving `/www` on port 8080,
/// with `www` (paths under `www/`, e.g. CGI scripts under `www/cgi-bin/`) added. Needs the
/// host's static busybox (`apt-get install busybox-static`, done by scripts/test.sh).
pub fn busybox_httpd(dir: &Path, name: &str, www: &[Entry]) -> String {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is missing: ./scripts/test.sh installs it (apt-get install busybox-static)");
    let mut entries: Vec<Entry> = vec![
        ("bin/", b"", 0o755),
        ("bin/busybox", &busybox, 0o755),
        ("bin/sh", b"->busybox", 0o777),
        ("etc/", b"", 0o755),
        ("etc/passwd", b"root:x:0:0::/:/bin/sh\n", 0o644),
        ("tmp/", b"", 0o1777),
        ("www/", b"", 0o755),
        ("www/cgi-bin/", b"", 0o755),
    ];
    entries.extend_from_slice(www);
    let layout = dir.join(name);
    oci_layout(&layout, &[layer(&entries)], json!({"Entrypoint": ["/bin/busybox"], "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"]}), None);
    layout.to_str().unwrap_or_default().to_string()
}

/// A busybox httpd image whose `/cgi-bin/events` keeps every POSTed body and shows them on GET.
pub fn sink_image(dir: &std::path::Path) -> String {
    let cgi = b"#!/bin/busybox sh\necho Content-Type: text/plain\necho\nif [ \"$REQUEST_METHOD\" = POST ]; then /bin/busybox head -c \"$CONTENT_LENGTH\" >> /tmp/events; echo >> /tmp/events; echo kept; else cat /tmp/events 2>/dev/null; fi\n";
    busybox_httpd(dir, "sink", &[("www/cgi-bin/events", cgi, 0o755)])
}

/// busybox httpd serving `home` at `/` and `script` (a busybox sh CGI) at `/cgi-bin/{cgi}`.
#[allow(dead_code)]
pub fn cgi_image(dir: &Path, name: &str, cgi: &str, script: &str) -> String {
    busybox_httpd(dir, name, &[("www/index.html", b"home", 0o644), (&format!("www/cgi-bin/{cgi}"), script.as_bytes(), 0o755)])
}

/// The test backend (bench/svc-backend), built static for the host by the test.
pub fn backend_image(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/svc-backend/main.rs");
    let bin = dir.join("svc-backend");
    let out = Command::new("rustc").args(["-O", "--edition", "2021", "-C", "target-feature=+crt-static"]).arg(&src).arg("-o").arg(&bin).output().unwrap();
    assert!(out.status.success(), "building the test backend: {}", String::from_utf8_lossy(&out.stderr));
    let body = std::fs::read(&bin).unwrap();
    let layout = dir.join("backend");
    oci_layout(&layout, &[layer(&[("server", &body, 0o755)])], json!({"Entrypoint": ["/server"], "ExposedPorts": {"8080/tcp": {}}}), None);
    layout
}
