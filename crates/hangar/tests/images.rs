//! Images through the real binary: import (OCI layout directory, OCI archive, `docker save`
//! archive), pulls from a real registry on loopback (Debian's `docker-registry`, pushed to
//! with `skopeo`; open, behind basic auth, and behind a token server), shared layers unpacked
//! once, removal with garbage collection, and bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use common::oci::{docker_archive, layer, oci_layout};
use serde_json::{Value, json};

fn layers_dir(s: &Server) -> PathBuf {
    s.dir.path().join("images/layers")
}

fn unpacked_layers(s: &Server) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(layers_dir(s)).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn base_layer() -> Vec<u8> {
    layer(&[
        ("etc/", b"", 0o755),
        ("etc/os-release", b"NAME=test\n", 0o644),
        ("bin/", b"", 0o755),
        ("bin/sh", b"#!fake\n", 0o755),
        ("var/cache/", b"", 0o755),
        ("var/cache/junk", b"x", 0o644),
    ])
}

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn import_layouts_and_docker_archives_share_layers_and_remove_cleanly() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let app = layer(&[("app/", b"", 0o755), ("app/run", b"echo hi\n", 0o755), ("var/cache/.wh.junk", b"", 0o644)]);
    let run = json!({"Entrypoint": ["/bin/sh"], "Cmd": ["/app/run"], "Env": ["A=1"], "WorkingDir": "/app", "ExposedPorts": {"8080/tcp": {}}});
    let layout = work.path().join("layout");
    let id = oci_layout(&layout, &[base_layer(), app.clone()], run.clone(), None);

    // A directory (the CLI tars it), named on import.
    let out = s.ok(&["-o", "json", "image", "import", layout.to_str().unwrap(), "--name", "team/app:v1"]);
    let imported = json_of(&out);
    assert_eq!(imported[0]["id"], id);
    assert_eq!(imported[0]["names"], json!(["docker.io/team/app:v1"]));
    let got = json_of(&s.ok(&["-o", "json", "image", "get", "team/app:v1"]));
    assert_eq!(got["entrypoint"], json!(["/bin/sh"]));
    assert_eq!(got["cmd"], json!(["/app/run"]));
    assert_eq!(got["working_dir"], "/app");
    assert_eq!(got["exposed_ports"], json!([8080]));
    assert_eq!(got["layers"], 2);
    // By id prefix too.
    assert_eq!(json_of(&s.ok(&["-o", "json", "image", "get", &id[7..19]]))["id"], id);

    // The layers are unpacked for overlayfs: files, and the whiteout as a 0:0 char device.
    let layers = unpacked_layers(&s);
    assert_eq!(layers.len(), 2, "{layers:?}");
    let top = layers_dir(&s).join(&common::oci::digest(&app)[7..]);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(top.join("var/cache/junk")).unwrap().file_type().is_char_device());
    assert_eq!(std::fs::read_to_string(top.join("app/run")).unwrap(), "echo hi\n");

    // A docker save archive (gzipped) with the same base layer: unpacked once.
    let other = layer(&[("srv/", b"", 0o755), ("srv/index.html", b"hello", 0o644)]);
    let archive = work.path().join("saved.tar.gz");
    std::fs::write(&archive, docker_archive(&[base_layer(), other], json!({"Cmd": ["/bin/sh"]}), "web:2")).unwrap();
    let out = s.ok(&["-o", "json", "image", "import", archive.to_str().unwrap()]);
    assert_eq!(json_of(&out)[0]["names"], json!(["docker.io/library/web:2"]));
    assert_eq!(unpacked_layers(&s).len(), 3, "the shared base layer is unpacked once");
    let table = s.ok(&["image", "ls"]);
    assert!(table.contains("docker.io/team/app:v1") && table.contains("docker.io/library/web:2"), "{table}");

    // Re-importing is harmless; another namespace sees none of these.
    s.ok(&["image", "import", layout.to_str().unwrap(), "--name", "team/app:v1"]);
    assert_eq!(json_of(&s.ok(&["-o", "json", "image", "ls"])).as_array().unwrap().len(), 2);
    s.ok(&["ns", "create", "other"]);
    assert_eq!(json_of(&s.ok(&["-o", "json", "-n", "other", "image", "ls"])), json!([]));
    s.fails(&["-n", "other", "image", "get", "team/app:v1"], 4);
    s.fails(&["-n", "other", "image", "get", &id], 4);

    // Removing one image deletes only the layers nobody else uses.
    s.ok(&["image", "rm", "web:2"]);
    assert_eq!(unpacked_layers(&s).len(), 2);
    s.ok(&["image", "rm", "team/app:v1"]);
    assert!(unpacked_layers(&s).is_empty());
    let err = s.fails(&["image", "rm", "team/app:v1"], 4);
    assert!(err.contains("hangar image ls"), "{err}");
}

#[tokio::test]
async fn bad_archives_are_refused_and_leave_nothing_behind() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let import = |body: Vec<u8>| {
        let s = &s;
        async move {
            let r = s.http().post(format!("{}/v1/images/import", s.url)).bearer_auth(&s.admin_key).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let tar_of = |dir: &Path| {
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all(".", dir).unwrap();
        b.into_inner().unwrap()
    };

    // Not an archive; an archive that is no image; empty.
    let (st, body) = import(b"hello".to_vec()).await;
    assert_eq!(st, 400, "{body}");
    let empty = tempfile::tempdir().unwrap();
    let (st, body) = import(tar_of(empty.path())).await;
    assert_eq!(st, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("neither an OCI image layout"), "{body}");
    let (st, _) = import(Vec::new()).await;
    assert_eq!(st, 400);

    // A layer whose bytes do not match its digest.
    let layout = work.path().join("tampered");
    oci_layout(&layout, &[base_layer()], json!({}), Some("x:1"));
    let blobs = layout.join("blobs/sha256");
    let gz_digest = common::oci::digest(&common::oci::gzip(&base_layer()));
    let blob = blobs.join(&gz_digest[7..]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let (st, body) = import(tar_of(&layout)).await;
    assert_eq!(st, 400, "{body}");
    assert!(["digest_mismatch", "invalid_image"].contains(&body["error"]["code"].as_str().unwrap()), "{body}");

    // A layer escaping the root: through a symlink, and with `..`.
    for evil in [layer(&[("etc", b"->/etc", 0o777), ("etc/hangar-escape", b"pwned", 0o644)]), {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..20].copy_from_slice(b"../../hangar-escape\0");
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend([0u8; 1024]);
        t
    }] {
        let layout = work.path().join(format!("evil-{}", evil.len()));
        oci_layout(&layout, &[evil], json!({}), Some("evil:1"));
        let (st, body) = import(tar_of(&layout)).await;
        assert_eq!(st, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_image", "{body}");
        assert!(!Path::new("/etc/hangar-escape").exists());
    }

    // Another platform.
    let layout = work.path().join("arm");
    oci_layout(&layout, &[base_layer()], json!({}), None);
    let idx: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
    let manifest: Value = serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap()).unwrap();
    let config_path = layout.join("blobs/sha256").join(&manifest["config"]["digest"].as_str().unwrap()[7..]);
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["architecture"] = json!("arm64");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let (st, body) = import(tar_of(&layout)).await;
    assert_eq!(st, 400, "{body}");

    // Nothing was kept: no images, no layers, no scratch files.
    assert_eq!(json_of(&s.ok(&["-o", "json", "image", "ls"])), json!([]));
    assert!(unpacked_layers(&s).is_empty(), "{:?}", unpacked_layers(&s));
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path().join("images/tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.iter().all(|n| n.to_string_lossy().starts_with("index-")), "{leftovers:?}");

    // Bad references.
    let out = s.fails(&["image", "import", "/no/such/file"], 1);
    assert!(out.contains("/no/such/file"), "{out}");
    let r = s.http().post(format!("{}/v1/images/pull", s.url)).bearer_auth(&s.admin_key).json(&json!({"reference": "UPPER/Case::x"})).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

/// A `docker-registry` on a free loopback port (and the token server it trusts, if any),
/// stopped on drop.
struct Registry {
    child: Child,
    tokens: Option<Child>,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for c in std::iter::once(&mut self.child).chain(self.tokens.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `docker-registry` storing under `dir`, with `auth` (a YAML `auth:` section, or
/// nothing) in its config.
fn serve_registry(dir: tempfile::TempDir, auth: &str, tokens: Option<Child>) -> Registry {
    need("docker-registry");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
        dir.path().join("data").display()
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry").arg("serve").arg(dir.path().join("config.yml")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let registry = Registry { child, tokens, addr, _dir: dir };
    wait_for_port(port, "docker-registry");
    registry
}

fn need(tool: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(found, "`{tool}` is missing: ./scripts/test.sh installs it (apt-get install docker-registry skopeo)");
}

fn registry(user: Option<(&str, &str)>) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let mut auth = String::new();
    if let Some((name, password)) = user {
        let hash = Command::new("python3")
            .args(["-W", "ignore", "-c", "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))", password])
            .output()
            .unwrap();
        let hash = String::from_utf8(hash.stdout).unwrap();
        std::fs::write(dir.path().join("htpasswd"), format!("{name}:{}\n", hash.trim())).unwrap();
        auth = format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", dir.path().join("htpasswd").display());
    }
    serve_registry(dir, &auth, None)
}

fn push(layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    need("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--insecure-policy", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--dest-creds", c]);
    }
    let out = cmd.arg(format!("oci:{}:{tag}", layout.display())).arg(format!("docker://{dest}")).output().unwrap();
    assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn pulls_from_a_real_registry_with_and_without_auth() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let app = layer(&[("srv/", b"", 0o755), ("srv/index.html", b"pulled", 0o644)]);
    let id = oci_layout(&layout, &[base_layer(), app], json!({"Cmd": ["/bin/sh"]}), Some("v1"));

    let open = registry(None);
    let reference = format!("{}/team/app:v1", open.addr);
    push(&layout, "v1", &reference, None);
    let out = s.ok(&["-o", "json", "image", "pull", &reference]);
    assert_eq!(json_of(&out)["id"], id);
    assert_eq!(json_of(&out)["names"], json!([reference.clone()]));
    assert_eq!(unpacked_layers(&s).len(), 2);
    // A second pull fetches nothing new and still names the image.
    s.ok(&["image", "pull", &reference]);
    assert_eq!(json_of(&s.ok(&["-o", "json", "image", "get", &reference]))["id"], id);

    // Unknown tag, unknown repository, nothing listening.
    let err = s.fails(&["image", "pull", &format!("{}/team/app:nope", open.addr)], 4);
    assert!(err.contains("not found"), "{err}");
    let err = s.fails(&["image", "pull", &format!("{}/team/nothing:v1", open.addr)], 4);
    assert!(err.contains("not found"), "{err}");
    let dead = free_port();
    let err = s.fails(&["image", "pull", &format!("127.0.0.1:{dead}/x:1")], 7);
    assert!(err.contains("could not reach the registry"), "{err}");

    // A registry with basic auth: no or wrong credentials are refused, right ones work.
    let locked = registry(Some(("alice", "s3cret")));
    let private = format!("{}/private/app:v1", locked.addr);
    push(&layout, "v1", &private, Some("alice:s3cret"));
    let err = s.fails(&["image", "pull", &private], 5);
    assert!(err.contains("refused"), "{err}");
    let err = s.fails(&["image", "pull", &private, "--username", "alice", "--password", "wrong"], 5);
    assert!(err.contains("refused"), "{err}");
    s.ok(&["image", "pull", &private, "--username", "alice", "--password", "s3cret"]);
    assert_eq!(json_of(&s.ok(&["-o", "json", "image", "get", &private]))["id"], id);
}

/// A token server as the distribution spec describes one: `GET /token?service=..&scope=..`
/// with the user's basic credentials answers a JWT (RS256, its certificate in `x5c`) granting
/// the scopes asked for; wrong credentials get 401. Signs with the `openssl` command.
const TOKEN_SERVER: &str = r#"
import base64, http.server, json, subprocess, sys, time, urllib.parse, uuid
port, key, cert, user, password, service = sys.argv[1:7]
der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], capture_output=True, check=True).stdout
b64u = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if url.path != "/token" or self.headers.get("Authorization") != want:
            self.send_response(401); self.end_headers(); return
        access = []
        for scope in q.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        head = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": "hangar-test-issuer", "sub": user, "aud": service, "exp": now + 300, "nbf": now - 10, "iat": now, "jti": str(uuid.uuid4()), "access": access}
        signing = (b64u(json.dumps(head).encode()) + "." + b64u(json.dumps(claims).encode())).encode()
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing, capture_output=True, check=True).stdout
        token = signing.decode() + "." + b64u(sig)
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), H).serve_forever()
"#;

/// A `docker-registry` that wants bearer tokens from [`TOKEN_SERVER`] (for `user`).
fn token_registry(user: (&str, &str)) -> Registry {
    need("openssl");
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hangar-test-token", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl could not make the token signing key");
    std::fs::write(dir.path().join("token.py"), TOKEN_SERVER).unwrap();
    let tport = free_port();
    let tokens = Command::new("python3")
        .arg(dir.path().join("token.py"))
        .args([tport.to_string().as_str(), key.to_str().unwrap(), cert.to_str().unwrap(), user.0, user.1, "hangar-test"])
        .spawn()
        .unwrap();
    wait_for_port(tport, "the token server");
    let auth = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{tport}/token\n    service: hangar-test\n    issuer: hangar-test-issuer\n    rootcertbundle: {}\n",
        cert.display()
    );
    serve_registry(dir, &auth, Some(tokens))
}

#[test]
fn pulls_from_a_registry_with_token_auth() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let app = layer(&[("srv/", b"", 0o755), ("srv/index.html", b"tokens", 0o644)]);
    let id = oci_layout(&layout, &[base_layer(), app], json!({"Cmd": ["/bin/sh"]}), Some("v1"));
    let reg = token_registry(("bob", "t0ken"));
    let reference = format!("{}/secure/app:v1", reg.addr);
    push(&layout, "v1", &reference, Some("bob:t0ken"));
    // Without credentials the token server refuses, so does the registry; with them, it works.
    let err = s.fails(&["image", "pull", &reference], 5);
    assert!(err.contains("refused"), "{err}");
    let err = s.fails(&["image", "pull", &reference, "--username", "bob", "--password", "nope"], 5);
    assert!(err.contains("refused"), "{err}");
    s.ok(&["image", "pull", &reference, "--username", "bob", "--password", "t0ken"]);
    assert_eq!(json_of(&s.ok(&["-o", "json", "image", "get", &reference]))["id"], id);
}
