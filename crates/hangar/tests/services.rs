//! Services through the real binary: images built here from busybox-static (httpd) and
//! imported, deployed with runc, served through `/svc/...`, restarted when their process is
//! killed, rolled out to a new revision under load without a failed request, kept across a
//! `kill -9` of Hangar with nothing leaked, volumes surviving redeploys, crash loops reported.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use common::oci::{layer, oci_layout};
use serde_json::{Value, json};

/// A busybox httpd image: `/www/index.html` says `text`; `/cgi-bin/` scripts run with `sh`.
fn httpd_image(dir: &Path, text: &str) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is missing: ./scripts/test.sh installs it (apt-get install busybox-static)");
    let count = "#!/bin/busybox sh\necho Content-Type: text/plain\necho\ncat /data/count 2>/dev/null || echo none\n";
    let write = "#!/bin/busybox sh\necho Content-Type: text/plain\necho\necho \"$QUERY_STRING\" > /data/count\necho stored\n".to_string();
    let env = "#!/bin/busybox sh\necho Content-Type: text/plain\necho\necho \"PORT=$PORT GREETING=$GREETING HOST=$(hostname)\"\n".to_string();
    let base = layer(&[
        ("bin/", b"", 0o755),
        ("bin/busybox", &busybox, 0o755),
        ("bin/sh", b"->busybox", 0o777),
        ("etc/", b"", 0o755),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/sh\n", 0o644),
        ("etc/group", b"root:x:0:\nwww:x:33:\n", 0o644),
        ("tmp/", b"", 0o1777),
    ]);
    let site = layer(&[
        ("www/", b"", 0o755),
        ("www/index.html", text.as_bytes(), 0o644),
        ("www/cgi-bin/", b"", 0o755),
        ("www/cgi-bin/count", count.as_bytes(), 0o755),
        ("www/cgi-bin/write", write.as_bytes(), 0o755),
        ("www/cgi-bin/env", env.as_bytes(), 0o755),
    ]);
    let run = json!({"Entrypoint": ["/bin/busybox"], "Cmd": ["httpd", "-f", "-v", "-p", "8080", "-h", "/www"], "ExposedPorts": {"8080/tcp": {}}, "Env": ["GREETING=from-image"]});
    let layout = dir.join(format!("httpd-{}", text.len()));
    oci_layout(&layout, &[base, site], run, None);
    layout
}

async fn get(s: &Server, path: &str) -> (u16, String) {
    let r = s.get(path).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn service(s: &Server, name: &str) -> Value {
    serde_json::from_str(&s.ok(&["-o", "json", "svc", "get", name])).unwrap()
}

fn container_pids(s: &Server) -> Vec<i32> {
    let cgroup = s.services_cgroup();
    let mut pids = Vec::new();
    for e in std::fs::read_dir(&cgroup).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    pids
}

/// What this server owns on the machine: containers' cgroups, mounts, network namespaces, its bridge.
fn owned(s: &Server) -> (usize, usize, usize, bool) {
    let sid = s.sid();
    let cgroups = std::fs::read_dir(s.services_cgroup()).into_iter().flatten().flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).count();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&format!("hangar-svc-{sid}"))).count();
    let netns =
        std::fs::read_dir("/run/netns").into_iter().flatten().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&format!("hgr-{sid}-"))).count();
    let bridge = Path::new("/sys/class/net").join(format!("hgr{sid}")).exists();
    (cgroups, mounts, netns, bridge)
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_service_runs_restarts_rolls_out_and_survives_a_killed_server() {
    let mut s = Server::start();
    let work = tempfile::tempdir().unwrap();
    s.ok(&["image", "import", httpd_image(work.path(), "v1").to_str().unwrap(), "--name", "web:v1"]);
    s.ok(&["image", "import", httpd_image(work.path(), "v2!").to_str().unwrap(), "--name", "web:v2"]);

    // Deploy: ready before the command returns, served under /svc/default/web/.
    let out = s.ok(&["svc", "deploy", "web", "--image", "web:v1", "--env", "GREETING=hello", "--volume", "data:/data", "--min", "2"]);
    assert!(out.contains("created default/web revision 1"), "{out}");
    assert_eq!(get(&s, "/svc/default/web/").await, (200, "v1".into()));
    let (st, env) = get(&s, "/svc/default/web/cgi-bin/env").await;
    assert_eq!(st, 200, "{env}");
    assert!(env.contains("PORT=8080 GREETING=hello HOST=web"), "{env}");
    let v = service(&s, "web");
    let instances = v["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    assert!(instances.iter().all(|i| i["state"] == "ready"), "{v}");
    // Each instance has its own address on the bridge.
    assert_ne!(instances[0]["address"], instances[1]["address"]);
    // Without a key: as if it did not exist.
    let r = reqwest::get(format!("{}/svc/default/web/", s.url)).await.unwrap();
    assert_eq!(r.status(), 401);

    // Volume data written by one revision is there for the next.
    assert_eq!(get(&s, "/svc/default/web/cgi-bin/write?41").await.1.trim(), "stored");

    // Killing the container's process: the instance restarts.
    let before = container_pids(&s);
    assert!(!before.is_empty(), "no container processes found");
    for pid in &before {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    wait_for("the instances to restart", Duration::from_secs(30), async || {
        let v = service(&s, "web");
        v["instances"].as_array().unwrap().iter().all(|i| i["state"] == "ready" && i["restarts"].as_u64() >= Some(1))
    })
    .await;
    assert_eq!(get(&s, "/svc/default/web/").await, (200, "v1".into()));

    // Rolling update under load: no failed request, and the new revision serves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, key, stop) = (s.url.clone(), s.admin_key.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut failed, mut seen_v2) = (0, Vec::new(), false);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http.get(format!("{url}/svc/default/web/")).bearer_auth(&key).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok += 1;
                        seen_v2 |= r.text().await.unwrap_or_default() == "v2!";
                    }
                    Ok(r) => failed.push(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed, seen_v2)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = s.ok(&["svc", "deploy", "web", "--image", "web:v2", "--env", "GREETING=hello", "--volume", "data:/data", "--min", "2"]);
    assert!(out.contains("updated default/web revision 2"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, seen_v2) = load.await.unwrap();
    assert!(failed.is_empty(), "{} of {} requests failed during the rollout: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(5)]);
    assert!(ok > 20 && seen_v2, "ok={ok} seen_v2={seen_v2}");
    assert_eq!(get(&s, "/svc/default/web/").await, (200, "v2!".into()));
    assert_eq!(get(&s, "/svc/default/web/cgi-bin/count").await.1.trim(), "41", "the volume outlives the revision");
    let v = service(&s, "web");
    assert!(v["instances"].as_array().unwrap().iter().all(|i| i["revision"] == 2), "{v}");

    // kill -9 of Hangar: the next start removes what was left and brings the service back.
    s.kill();
    let (_, _, netns_left, _) = owned(&s);
    assert!(netns_left > 0, "a killed server leaves its instances running");
    s.restart_after_stop();
    wait_for("the service to come back", Duration::from_secs(60), async || get(&s, "/svc/default/web/").await == (200, "v2!".into())).await;
    let (cgroups, mounts, netns, bridge) = owned(&s);
    assert_eq!((cgroups, mounts, netns, bridge), (2, 2, 2, true), "exactly the two new instances");
    assert_eq!(get(&s, "/svc/default/web/cgi-bin/count").await.1.trim(), "41");

    // Removing the service leaves nothing, even while a restart is still bringing it back; a
    // graceful stop leaves nothing either.
    s.kill();
    s.restart_after_stop();
    s.ok(&["svc", "rm", "web"]);
    assert_eq!(get(&s, "/svc/default/web/").await.0, 404);
    let (cgroups, mounts, netns, _) = owned(&s);
    assert_eq!((cgroups, mounts, netns), (0, 0, 0));
    s.ok(&["svc", "deploy", "again", "--image", "web:v1"]);
    s.stop();
    assert_eq!(owned(&s), (0, 0, 0, false), "a stopped server leaves nothing behind");
}

/// Deploys of one service sent at the same time are ordered by the store alone: each
/// revision is written by exactly one of them, none is lost, and the service runs what the
/// store holds last.
#[tokio::test]
async fn concurrent_deploys_of_one_service_each_win_one_revision() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    s.ok(&["image", "import", httpd_image(work.path(), "v1").to_str().unwrap(), "--name", "web:v1"]);
    let deploys = ["a", "b", "c"].map(|greeting| {
        let (http, url, key) = (s.http(), format!("{}/v1/services/web", s.url), s.admin_key.clone());
        tokio::spawn(async move {
            let r = http.put(url).bearer_auth(key).json(&json!({"image": "web:v1", "env": {"GREETING": greeting}})).send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        })
    });
    let mut revisions = Vec::new();
    for d in deploys {
        let (status, body) = d.await.unwrap();
        assert!(status == 200 || status == 201, "{status} {body}");
        assert_ne!(body["status"], "unchanged", "{body}");
        revisions.push(body["service"]["revision"].as_u64().unwrap());
    }
    revisions.sort();
    assert_eq!(revisions, [1, 2, 3], "each revision won once");
    let v = service(&s, "web");
    assert_eq!(v["revision"], 3);
    let stored = v["config"]["env"]["GREETING"].as_str().unwrap().to_string();
    // The instances run the stored revision's configuration.
    let (st, env) = get(&s, "/svc/default/web/cgi-bin/env").await;
    assert_eq!(st, 200, "{env}");
    assert!(env.contains(&format!("GREETING={stored} ")), "stored {stored}, served {env}");
    let ready: Vec<_> = v["instances"].as_array().unwrap().iter().filter(|i| i["state"] == "ready").collect();
    assert!(!ready.is_empty() && ready.iter().all(|i| i["revision"] == 3), "{v}");
}

#[tokio::test]
async fn bad_services_are_refused_or_reported_as_crash_loops() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    s.ok(&["image", "import", httpd_image(work.path(), "ok").to_str().unwrap(), "--name", "web:1"]);

    // Unknown image, volume escaping to a host path, bad runtime: refused before anything runs.
    let err = s.fails(&["svc", "deploy", "x", "--image", "nope:1"], 6);
    assert!(err.contains("hangar image pull"), "{err}");
    let r = s
        .http()
        .put(format!("{}/v1/services/x", s.url))
        .bearer_auth(&s.admin_key)
        .json(&json!({"image": "web:1", "volumes": ["/etc:/x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .http()
        .put(format!("{}/v1/services/x", s.url))
        .bearer_auth(&s.admin_key)
        .json(&json!({"image": "web:1", "volumes": ["data:/../etc"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r =
        s.http().put(format!("{}/v1/services/x", s.url)).bearer_auth(&s.admin_key).json(&json!({"image": "web:1", "runtime": "docker"})).send().await.unwrap();
    assert_eq!(r.status(), 400);

    // A process that exits at once: a crash loop, reported with its last output; nothing kept.
    let err = s.fails(
        &["svc", "deploy", "crash", "--image", "web:1", "--command", "/bin/sh", "--arg", "-c", "--arg", "echo cannot start: missing config >&2; exit 3"],
        6,
    );
    assert!(err.contains("crash loop") && err.contains("cannot start: missing config") && err.contains("code 3"), "{err}");
    s.fails(&["svc", "get", "crash"], 4);
    let (cgroups, mounts, netns, _) = owned(&s);
    assert_eq!((cgroups, mounts, netns), (0, 0, 0), "nothing half-created is left");

    // A process that outgrows its memory limit: told as such.
    let err = s.fails(
        &[
            "svc",
            "deploy",
            "hog",
            "--image",
            "web:1",
            "--memory",
            "16",
            "--command",
            "/bin/busybox",
            "--arg",
            "dd",
            "--arg",
            "if=/dev/zero",
            "--arg",
            "of=/dev/null",
            "--arg",
            "bs=64M",
            "--arg",
            "count=1",
        ],
        6,
    );
    assert!(err.contains("ran out of memory (limit 16 MiB)"), "{err}");

    // A working service keeps serving when its update crash-loops.
    s.ok(&["svc", "deploy", "web", "--image", "web:1"]);
    s.fails(&["svc", "deploy", "web", "--image", "web:1", "--command", "/bin/false"], 6);
    assert_eq!(get(&s, "/svc/default/web/").await, (200, "ok".into()));
    assert_eq!(service(&s, "web")["revision"], 1);
    let logs = s.ok(&["svc", "logs", "web"]);
    assert!(logs.contains("[web-1-"), "{logs}");
}

#[tokio::test]
async fn a_gvisor_service_runs_under_runsc() {
    assert!(Path::new("/usr/bin/runsc").exists(), "runsc (gVisor) is missing: ./scripts/test.sh installs it (apt-get install runsc)");
    let mut s = Server::start();
    let work = tempfile::tempdir().unwrap();
    s.ok(&["image", "import", httpd_image(work.path(), "in gvisor").to_str().unwrap(), "--name", "web:g"]);
    let out = s.ok(&["svc", "deploy", "sandboxed", "--image", "web:g", "--runtime", "gvisor", "--volume", "data:/data"]);
    assert!(out.contains("created"), "{out}");
    assert_eq!(get(&s, "/svc/default/sandboxed/").await, (200, "in gvisor".into()));
    assert_eq!(get(&s, "/svc/default/sandboxed/cgi-bin/write?7").await.1.trim(), "stored");
    assert_eq!(get(&s, "/svc/default/sandboxed/cgi-bin/count").await.1.trim(), "7");
    // The kernel it sees is gVisor's, not the host's.
    let v = service(&s, "sandboxed");
    assert_eq!(v["config"]["runtime"], "gvisor");
    s.stop();
    assert_eq!(owned(&s), (0, 0, 0, false), "a stopped server leaves nothing behind");
}

/// A CGI that sends `GET /` to `host:port` (its query) from inside the instance; a host that
/// is a name is looked up in /etc/hosts (static busybox has no resolver) and sent as `Host`.
/// The request side stays open a moment: HTTP servers may drop a half-closed connection.
const FETCH_CGI: &[u8] = b"#!/bin/busybox sh\necho Content-Type: text/plain\necho\nhost=${QUERY_STRING%:*}\nport=${QUERY_STRING##*:}\naddr=$(/bin/busybox awk -v n=\"$host\" '$2 == n { print $1; exit }' /etc/hosts)\nout=$({ printf 'GET / HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n' \"$host\"; /bin/busybox sleep 1; } | /bin/busybox timeout 3 /bin/busybox nc \"${addr:-$host}\" \"$port\" 2>&1)\necho \"${out:-unreachable}\"\n";

#[tokio::test]
async fn instances_reach_neither_the_host_nor_beyond_unless_granted() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    // A CGI that fetches a URL from inside the instance.
    let fetch = layer(&[("www/", b"", 0o755), ("www/cgi-bin/", b"", 0o755), ("www/cgi-bin/fetch", FETCH_CGI, 0o755)]);
    let with_fetch = work.path().join("fetch");
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let root = layer(&[
        ("bin/", b"", 0o755),
        ("bin/busybox", &busybox, 0o755),
        ("bin/sh", b"->busybox", 0o777),
        ("etc/", b"", 0o755),
        ("etc/passwd", b"root:x:0:0::/:/bin/sh\n", 0o644),
    ]);
    oci_layout(&with_fetch, &[root, fetch], json!({"Entrypoint": ["/bin/busybox"], "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"]}), None);
    s.ok(&["image", "import", with_fetch.to_str().unwrap(), "--name", "fetch:1"]);
    s.ok(&["svc", "deploy", "open", "--image", "fetch:1"]);
    s.ok(&["svc", "deploy", "closed", "--image", "fetch:1", "--no-egress"]);

    // A server on the host, on every address: instances cannot open connections to it.
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write;
        for mut c in host_listener.incoming().flatten() {
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhost-secret");
        }
    });
    let gateway = service(&s, "open")["instances"][0]["address"].as_str().unwrap().rsplit_once('.').unwrap().0.to_string() + ".1";
    for svc in ["open", "closed"] {
        let (_, body) = get(&s, &format!("/svc/default/{svc}/cgi-bin/fetch?{gateway}:{host_port}")).await;
        assert!(!body.contains("host-secret"), "{svc} reached the host: {body}");
    }

    // Beyond the host: only the service with egress gets there.
    let out = common::outside(7);
    let (_, body) = get(&s, &format!("/svc/default/open/cgi-bin/fetch?{}:80", out.addr)).await;
    assert!(body.contains("200 OK") && body.trim_end().ends_with("outside"), "egress allowed: {body}");
    let (_, body) = get(&s, &format!("/svc/default/closed/cgi-bin/fetch?{}:80", out.addr)).await;
    assert!(!body.contains("outside"), "egress denied: {body}");

    // Services of a namespace call each other by name (even one deployed after the caller
    // started), without a key; other namespaces' services are not there.
    s.ok(&["image", "import", httpd_image(work.path(), "by name").to_str().unwrap(), "--name", "named:1"]);
    s.ok(&["svc", "deploy", "target", "--image", "named:1"]);
    let (_, body) = get(&s, "/svc/default/open/cgi-bin/fetch?target:80").await;
    assert!(body.contains("200 OK") && body.trim_end().ends_with("by name"), "by name: {body}");
    s.ok(&["ns", "create", "other"]);
    s.ok(&["-n", "other", "image", "import", httpd_image(work.path(), "other ns").to_str().unwrap(), "--name", "named:1"]);
    s.ok(&["-n", "other", "svc", "deploy", "secret", "--image", "named:1"]);
    let (_, body) = get(&s, "/svc/default/open/cgi-bin/fetch?secret:80").await;
    assert!(!body.contains("other ns"), "another namespace's service: {body}");

    // Host routes: requests for a declared host go to the service, whole path.
    s.ok(&["svc", "deploy", "target", "--image", "named:1", "--host", "app.example.test", "--public"]);
    let r = reqwest::Client::new().get(format!("{}/", s.url)).header("host", "app.example.test").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "by name");
    // Another namespace cannot take the host over.
    let err = s.fails(&["-n", "other", "svc", "deploy", "thief", "--image", "named:1", "--host", "app.example.test"], 6);
    assert!(err.contains("already routed"), "{err}");
    let r = reqwest::Client::new().get(format!("{}/healthz", s.url)).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok\n", "other hosts are Hangar's own routes");
}

#[tokio::test]
async fn an_instance_failing_its_liveness_checks_is_replaced() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let health =
        b"#!/bin/busybox sh\nif [ -e /tmp/sick ]; then echo Status: 500 Sick; echo; echo sick; else echo Content-Type: text/plain; echo; echo healthy; fi\n";
    let sicken = b"#!/bin/busybox sh\ntouch /tmp/sick\necho Content-Type: text/plain\necho\necho now sick\n";
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let root = layer(&[
        ("bin/", b"", 0o755),
        ("bin/busybox", &busybox, 0o755),
        ("bin/sh", b"->busybox", 0o777),
        ("bin/touch", b"->busybox", 0o777),
        ("tmp/", b"", 0o1777),
    ]);
    let site = layer(&[("www/", b"", 0o755), ("www/cgi-bin/", b"", 0o755), ("www/cgi-bin/health", health, 0o755), ("www/cgi-bin/sicken", sicken, 0o755)]);
    let layout = work.path().join("health");
    oci_layout(&layout, &[root, site], json!({"Entrypoint": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]}), None);
    s.ok(&["image", "import", layout.to_str().unwrap(), "--name", "health:1"]);
    s.ok(&["svc", "deploy", "h", "--image", "health:1", "--readiness-path", "/cgi-bin/health"]);
    assert_eq!(get(&s, "/svc/default/h/cgi-bin/health").await, (200, "healthy\n".into()));
    assert_eq!(get(&s, "/svc/default/h/cgi-bin/sicken").await.1, "now sick\n");
    wait_for("the sick instance to be replaced", Duration::from_secs(30), async || {
        let v = service(&s, "h");
        let i = &v["instances"][0];
        i["restarts"].as_u64() >= Some(1) && i["state"] == "ready"
    })
    .await;
    let v = service(&s, "h");
    assert!(v["instances"][0]["last_exit"].as_str().unwrap_or("").contains("liveness"), "{v}");
    assert_eq!(get(&s, "/svc/default/h/cgi-bin/health").await, (200, "healthy\n".into()));
}

#[tokio::test]
async fn responses_stream_and_upgrades_pass_through() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    s.ok(&["image", "import", common::oci::backend_image(work.path()).to_str().unwrap(), "--name", "backend:1"]);
    s.ok(&["svc", "deploy", "echo", "--image", "backend:1"]);

    // Streaming: the first chunk arrives while the backend is still writing the others.
    let r = s.get("/svc/default/echo/stream").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let mut stream = r.bytes_stream();
    use futures::StreamExt;
    let first = stream.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    let mut rest = Vec::new();
    while let Some(c) = stream.next().await {
        rest.extend_from_slice(&c.unwrap());
    }
    let all_at = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&first), "chunk 1\n");
    assert_eq!(String::from_utf8_lossy(&rest), "chunk 2\nchunk 3\n");
    assert!(all_at >= first_at + Duration::from_millis(400), "the response was buffered: first chunk at {first_at:?}, end at {all_at:?}");

    // An upgrade (as WebSocket uses): 101 through the gateway, then bytes both ways.
    common::upgrade_echoes(&s.url, &s.admin_key, "/svc/default/echo/").await;
}

#[tokio::test]
async fn the_reconcile_loop_removes_what_no_instance_owns() {
    let s = Server::start_with(&["--reconcile-every", "300ms"]);
    let work = tempfile::tempdir().unwrap();
    s.ok(&["image", "import", httpd_image(work.path(), "kept").to_str().unwrap(), "--name", "web:1"]);
    s.ok(&["svc", "deploy", "web", "--image", "web:1"]);
    // Things named like this server's but owned by no instance: a network namespace, a root.
    let sid = s.sid();
    let stray_ns = format!("hgr-{sid}-9999");
    // `ip netns add` can lose a race with another process mounting /run/netns at the same
    // moment (the servers of parallel tests make namespaces too): a few tries, then its error.
    let mut made = None;
    for _ in 0..5 {
        let out = Command::new("ip").args(["netns", "add", &stray_ns]).output().unwrap();
        if out.status.success() {
            made = None;
            break;
        }
        made = Some(String::from_utf8_lossy(&out.stderr).into_owned());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(made.is_none(), "ip netns add {stray_ns}: {}", made.unwrap_or_default());
    let stray_dir = PathBuf::from(format!("/run/hangar-svc-{sid}/hs-{sid}-9999"));
    std::fs::create_dir_all(stray_dir.join("rootfs")).unwrap();
    wait_for("the reconcile loop", Duration::from_secs(20), async || !Path::new("/run/netns").join(&stray_ns).exists() && !stray_dir.exists()).await;
    // The service's own instance is untouched.
    assert_eq!(get(&s, "/svc/default/web/").await, (200, "kept".into()));
    assert_eq!(owned(&s).2, 1);
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_refuses_to_start_and_harms_nothing() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    s.ok(&["image", "import", httpd_image(work.path(), "first").to_str().unwrap(), "--name", "web:1"]);
    s.ok(&["svc", "deploy", "web", "--image", "web:1"]);
    let out = Command::new(common::BIN).arg("up").arg("--data-dir").arg(s.dir.path()).args(["--listen", "127.0.0.1:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another Hangar") && err.contains("is running with the data dir"), "{err}");
    // The first server's instances were not cleaned up by the second.
    assert_eq!(get(&s, "/svc/default/web/").await, (200, "first".into()));
    assert_eq!(owned(&s).2, 1);
}
