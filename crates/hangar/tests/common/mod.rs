//! Test harness: runs the real `hangar` binary on a free port with a temporary data dir, and
//! drives it through its CLI and HTTP like a user.
#![allow(dead_code)]

pub mod oci;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_hangar");

/// Path of an example component, built once per test run (`cargo build --target wasm32-wasip2`).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let out = Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("Cargo.toml"))
            .output()
            .map_err(|e| format!("running cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building the example components failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(root.join("target/wasm32-wasip2/release"))
    });
    match dir {
        Ok(d) => d.join(format!("{name}.wasm")),
        Err(e) => panic!("{e}"),
    }
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub admin_key: String,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts with extra `hangar up` flags.
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Server { dir, url: String::new(), admin_key: String::new(), child: None, extra: extra.iter().map(|s| s.to_string()).collect() };
        s.boot();
        s
    }

    /// Starts a node that joins the cluster of a node started before it, using that node's
    /// admin key (written into this node's data dir, where the CLI looks for it).
    pub fn join(extra: &[&str], admin_key: &str) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("admin.key"), admin_key).expect("writing admin.key");
        let mut s = Server { dir, url: String::new(), admin_key: String::new(), child: None, extra: extra.iter().map(|s| s.to_string()).collect() };
        s.boot();
        s
    }

    fn boot(&mut self) {
        let url_file = self.dir.path().join("hangar.url");
        let _ = std::fs::remove_file(&url_file);
        let child = Command::new(BIN)
            .arg("up")
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(&self.extra)
            .env("HANGAR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning hangar up");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(u) = std::fs::read_to_string(&url_file)
                && !u.is_empty()
            {
                self.url = u.trim().to_string();
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hangar up exited early: {status}");
            }
            assert!(Instant::now() < deadline, "hangar up did not become ready in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.admin_key = std::fs::read_to_string(self.dir.path().join("admin.key")).expect("admin.key").trim().to_string();
    }

    /// Runs the CLI against this server with the admin key (from the data dir).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .env_remove("HANGAR_URL")
            .env_remove("HANGAR_KEY")
            .env_remove("HANGAR_NAMESPACE")
            .output()
            .expect("running the CLI")
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "hangar {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI and asserts failure with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "hangar {args:?}: expected exit {code}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn deploy(&self, name: &str, guest_name: &str, flags: &[&str]) {
        let code = guest(guest_name);
        let mut args = vec!["fn", "deploy", name, "--code", code.to_str().unwrap()];
        args.extend_from_slice(flags);
        self.ok(&args);
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http().get(format!("{}{path}", self.url)).bearer_auth(&self.admin_key)
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        wait_with_timeout(&mut child, Duration::from_secs(60))
    }

    /// SIGKILL: the server gets no chance to clean up.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Boots again after [`Server::stop`] or [`Server::kill`].
    pub fn restart_after_stop(&mut self) {
        self.boot();
    }

    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "graceful stop exited with {status}");
        self.boot();
    }

    /// The id this server's containers, cgroups and namespaces are named after on the machine.
    pub fn sid(&self) -> String {
        use sha2::Digest;
        let canonical = std::fs::canonicalize(self.dir.path()).unwrap();
        hex::encode(&sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes())[..5])
    }

    /// The cgroup under which this server's service instances run (one child per instance).
    pub fn services_cgroup(&self) -> PathBuf {
        let v1 = Path::new("/sys/fs/cgroup/pids").join(format!("hangar-{}-svc", self.sid()));
        if Path::new("/sys/fs/cgroup/pids").is_dir() { v1 } else { Path::new("/sys/fs/cgroup").join(format!("hangar-{}-svc", self.sid())) }
    }

    /// Value of a metric sample line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").send().await.unwrap().text().await.unwrap();
        text.lines().find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().split(' ').next()).and_then(|v| v.parse().ok())).unwrap_or(0.0)
    }

    /// Invocation records of a function, newest first, with logs.
    pub async fn invocations(&self, function: &str) -> Vec<serde_json::Value> {
        let v: serde_json::Value = self.get(&format!("/v1/invocations?function={function}&logs=true&limit=1000")).send().await.unwrap().json().await.unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hangar did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A graceful stop, so the server removes its containers and cgroups.
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The API's error code of a response body.
pub async fn error_code(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    (status, v["error"]["code"].as_str().unwrap_or("").to_string(), v["error"]["message"].as_str().unwrap_or("").to_string())
}

/// Deploys `source` as `app.py` of a python3 function with handler `app.<handler>`; the
/// returned directory holds the code and must live as long as the test uses it.
pub fn python_fn(s: &Server, name: &str, source: &str, handler: &str, flags: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), source).unwrap();
    let h = format!("app.{handler}");
    let mut args = vec!["fn", "deploy", name, "--runtime", "python3", "--handler", &h, "--code", dir.path().to_str().unwrap()];
    args.extend_from_slice(flags);
    s.ok(&args);
    dir
}

/// Polls `probe` every 100 ms until it returns `Some`, failing after `within` with `what` and
/// the last thing it saw.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(seen) => assert!(Instant::now() < deadline, "{what} did not happen within {within:?}; last seen: {seen}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether an invocation record's instance was made for it or ahead of it (`cold` or
/// `prewarmed`), rather than reused (`warm`, `resumed`, `provisioned`).
#[allow(dead_code)]
pub fn new_instance(record: &serde_json::Value) -> bool {
    record["start"] == "cold" || record["start"] == "prewarmed"
}

/// A network namespace standing for "the outside": reachable from the host through its own
/// veth and route, serving `outside` on port 80. Removed on drop.
pub struct Outside {
    pub ns: String,
    pub addr: String,
    server: std::process::Child,
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

pub fn outside(tag: u8) -> Outside {
    let ns = format!("hgt-out-{}-{tag}", std::process::id());
    let (host_if, addr) = (format!("hgto{}{tag}", std::process::id() % 100000), format!("10.214.{tag}.2"));
    let sh = |cmd: &str| {
        let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
        assert!(st.success(), "{cmd}");
    };
    sh(&format!(
        "ip netns add {ns} && ip link add {host_if} type veth peer name eth0 netns {ns} && ip addr add 10.214.{tag}.1/24 dev {host_if} && ip link set {host_if} up"
    ));
    sh(&format!(
        "ip -n {ns} addr add {addr}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up && ip -n {ns} route add default via 10.214.{tag}.1"
    ));
    let www = tempfile::tempdir().unwrap().keep();
    std::fs::write(www.join("index.html"), "outside").unwrap();
    let server = Command::new("ip").args(["netns", "exec", &ns, "/bin/busybox", "httpd", "-f", "-p", "80", "-h"]).arg(&www).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    Outside { ns, addr, server }
}

/// Reads a terminal's output until it holds `want` (or fails after 20 s); returns all of it.
pub async fn read_until<S>(ws: &mut S, want: &str) -> String
where
    S: futures::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains(want) {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(Message::Text(t)))) => seen.push_str(&format!("[{t}]")),
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for {want:?}: {other:?}; the terminal showed {seen:?}"),
        }
    }
    seen
}

/// Asks for an upgrade at `path` (the `echo` protocol of bench/svc-backend) with a raw
/// connection: the answer must be 101, then every byte sent comes back.
pub async fn upgrade_echoes(url: &str, key: &str, path: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(conn.read(&mut b).await.unwrap(), 1, "the connection closed: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in ["ping", "and more bytes"] {
        conn.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
}
