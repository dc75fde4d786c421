//! Sandboxes end to end through the real binary: exec (stdout, stderr, exit codes, stdin, a
//! missing command), files in and out, a process that keeps running between calls, pause,
//! standby and resume with memory state intact, standby across a restart, isolation from the
//! host and from other sandboxes, and the idle policy and TTL. Uses gVisor (runsc) and a
//! busybox image (root, runsc and busybox-static, installed by scripts/test.sh).

mod common;

use std::time::Duration;

use common::Server;
use common::oci::busybox_httpd;
use serde_json::{Value, json};

const IMAGE: &str = "sandbox/busybox:1";

fn import(s: &Server) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_httpd(dir.path(), "img", &[]);
    s.ok(&["image", "import", &layout, "--name", IMAGE]);
    dir
}

fn create(s: &Server, flags: &[&str]) -> String {
    let mut args = vec!["sandbox", "create", "--image", IMAGE];
    if !flags.contains(&"--memory") {
        args.extend(["--memory", "256"]);
    }
    args.extend_from_slice(flags);
    s.ok(&args).trim().to_string()
}

/// Runs a command through the API: (stdout, stderr, exit code).
async fn exec(s: &Server, id: &str, cmd: &[&str], stdin: Option<&str>) -> (String, String, i64) {
    let mut req = json!({"cmd": cmd});
    if let Some(input) = stdin {
        req["stdin"] = json!(input);
    }
    let r = s.http().post(format!("{}/v1/sandboxes/{id}/exec", s.url)).bearer_auth(&s.admin_key).json(&req).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let (mut out, mut err, mut code) = (String::new(), String::new(), None);
    for line in text.lines() {
        let f: Value = serde_json::from_str(line).unwrap();
        if let Some(s) = f["stdout"].as_str() {
            out.push_str(s);
        } else if let Some(s) = f["stderr"].as_str() {
            err.push_str(s);
        } else if let Some(c) = f["exit_code"].as_i64() {
            code = Some(c);
        } else {
            panic!("unexpected frame {f}");
        }
    }
    (out, err, code.unwrap_or_else(|| panic!("no exit code in {text}")))
}

async fn sandbox(s: &Server, id: &str) -> Value {
    s.get(&format!("/v1/sandboxes/{id}")).send().await.unwrap().json().await.unwrap()
}

async fn counter(s: &Server, id: &str) -> u64 {
    // The loop rewrites the file; a read can fall between its truncation and its write.
    for _ in 0..20 {
        let (out, err, code) = exec(s, id, &["busybox", "cat", "/tmp/count"], None).await;
        assert_eq!(code, 0, "{err}");
        if let Ok(n) = out.trim().parse() {
            return n;
        }
    }
    panic!("/tmp/count stayed empty");
}

#[tokio::test]
async fn sandboxes_run_commands_keep_processes_and_files_and_survive_standby_and_restarts() {
    let mut s = Server::start();
    let _img = import(&s);
    let id = create(&s, &[]);
    assert_eq!(sandbox(&s, &id).await["state"], "running");

    // stdout, stderr and exit codes; stdin; a command that does not exist is 127, not a 500.
    assert_eq!(exec(&s, &id, &["sh", "-c", "echo out; echo err >&2; exit 3"], None).await, ("out\n".into(), "err\n".into(), 3));
    assert_eq!(exec(&s, &id, &["busybox", "tr", "a-z", "A-Z"], Some("piped input")).await.0, "PIPED INPUT");
    let (_, err, code) = exec(&s, &id, &["no-such-program", "--flag"], None).await;
    assert_eq!(code, 127);
    assert!(err.contains("no-such-program: command not found"), "{err}");
    // The CLI streams the output and passes the exit code on.
    let out = s.cli(&["sandbox", "exec", &id, "--", "sh", "-c", "echo hi; exit 4"]);
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(4), "hi\n"));

    // Files in and out, through the API and `hangar sandbox cp`.
    let url = |p: &str| format!("{}/v1/sandboxes/{id}/files?path={p}", s.url);
    let r = s.http().put(url("/work/notes.txt")).bearer_auth(&s.admin_key).body("remember this\n").send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = s.http().get(url("/work/notes.txt")).bearer_auth(&s.admin_key).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "remember this\n");
    let listing: Value = s.http().get(url("/work")).bearer_auth(&s.admin_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(listing, json!([{"name": "notes.txt", "kind": "file", "size": 14, "mode": 0o644, "modified_s": listing[0]["modified_s"]}]));
    assert_eq!(exec(&s, &id, &["busybox", "cat", "/work/notes.txt"], None).await.0, "remember this\n", "commands see uploaded files");
    let local = tempfile::tempdir().unwrap();
    let binary: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    std::fs::write(local.path().join("in.bin"), &binary).unwrap();
    s.ok(&["sandbox", "cp", local.path().join("in.bin").to_str().unwrap(), &format!("{id}:/data/deep/in.bin")]);
    s.ok(&["sandbox", "cp", &format!("{id}:/data/deep/in.bin"), local.path().join("out.bin").to_str().unwrap()]);
    assert_eq!(std::fs::read(local.path().join("out.bin")).unwrap(), binary, "binary files round trip");
    // Bad paths and missing files.
    let (status, code, _) = common::error_code(s.http().put(url("/work/../etc/passwd")).bearer_auth(&s.admin_key).body("x").send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));
    let (status, _, _) = common::error_code(s.http().get(url("/nope.txt")).bearer_auth(&s.admin_key).send().await.unwrap()).await;
    assert_eq!(status, 404);

    // A process started by one call keeps running between calls.
    let (_, err, code) =
        exec(&s, &id, &["sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/count; busybox sleep 0.2; done) >/dev/null 2>&1 &"], None).await;
    assert_eq!(code, 0, "{err}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let c1 = counter(&s, &id).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(counter(&s, &id).await > c1, "the background process still runs");

    // Pause: frozen, then resumed with the process where it was.
    let v: Value = s.http().post(format!("{}/v1/sandboxes/{id}/pause", s.url)).bearer_auth(&s.admin_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["state"], "paused");
    assert!(s.ok(&["sandbox", "resume", &id]).contains("is running"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Standby: checkpointed to disk and stopped; the next call restores it with the running
    // process's memory (its counter lives in /tmp, a tmpfs in the sandbox's memory) and files.
    let before = counter(&s, &id).await;
    let v: Value = s.http().post(format!("{}/v1/sandboxes/{id}/standby", s.url)).bearer_auth(&s.admin_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["state"], "standby", "{v}");
    assert!(v["standby_bytes"].as_u64().unwrap() > 0, "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = counter(&s, &id).await;
    assert!(after >= before && after < before + 5, "the counter went on from where it stood: {before} then {after}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(counter(&s, &id).await > after, "and the process runs again");
    assert_eq!(exec(&s, &id, &["busybox", "cat", "/work/notes.txt"], None).await.0, "remember this\n");
    let v = sandbox(&s, &id).await;
    assert_eq!(v["state"], "running");
    assert!(v["timings"]["resume_ms"].as_f64().unwrap() > 0.0 && v["usage"]["standby_ms"].as_u64().unwrap() > 0, "{v}");

    // A graceful stop puts running sandboxes on standby; after the restart they resume.
    let before = counter(&s, &id).await;
    s.restart();
    assert_eq!(sandbox(&s, &id).await["state"], "standby");
    let after = counter(&s, &id).await;
    assert!(after >= before && after < before + 5, "{before} then {after}");
    let listed: Value = s.get("/v1/sandboxes").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // Removed: gone, and calls on it are 404.
    s.ok(&["sandbox", "rm", &id]);
    let (status, _, _) = common::error_code(
        s.http().post(format!("{}/v1/sandboxes/{id}/exec", s.url)).bearer_auth(&s.admin_key).json(&json!({"cmd": ["true"]})).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let err = s.fails(&["sandbox", "exec", &id, "--", "true"], 4);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn sandboxes_are_isolated_and_follow_their_idle_policy_and_ttl() {
    let s = Server::start();
    let _img = import(&s);
    let a = create(&s, &[]);
    let b = create(&s, &[]);

    // gVisor's kernel, not the host's; none of the host's files; no network but loopback.
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let (uname, _, _) = exec(&s, &a, &["busybox", "uname", "-r"], None).await;
    assert_ne!(uname.trim(), host_kernel.trim(), "the sandbox sees gVisor's kernel");
    let (_, _, code) = exec(&s, &a, &["busybox", "cat", "/etc/shadow"], None).await;
    assert_ne!(code, 0, "no host files");
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port().to_string();
    let (_, _, code) = exec(&s, &a, &["busybox", "nc", "-w", "2", "127.0.0.1", &port], Some("hello")).await;
    assert_ne!(code, 0, "the host's loopback is not reachable");
    let (ifaces, _, _) = exec(&s, &a, &["busybox", "cat", "/proc/net/dev"], None).await;
    assert!(!ifaces.contains("eth") && !ifaces.contains("veth"), "only loopback: {ifaces}");
    // One sandbox does not see another's processes or files.
    exec(&s, &a, &["sh", "-c", "busybox sleep 1000 >/dev/null 2>&1 & echo secret > /tmp/mine"], None).await;
    let (ps, _, _) = exec(&s, &b, &["busybox", "ps"], None).await;
    assert!(!ps.contains("sleep 1000"), "{ps}");
    let (_, _, code) = exec(&s, &b, &["busybox", "cat", "/tmp/mine"], None).await;
    assert_ne!(code, 0);
    // Every call needs a key; another namespace's key finds nothing.
    let r = s.http().post(format!("{}/v1/sandboxes/{a}/exec", s.url)).json(&json!({"cmd": ["true"]})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    s.ok(&["ns", "create", "other"]);
    let other = s.ok(&["key", "create", "--namespace", "other"]).lines().last().unwrap().trim().to_string();
    for (method, path) in [("GET", String::new()), ("POST", "/exec".to_string()), ("GET", "/files?path=/tmp".to_string()), ("DELETE", String::new())] {
        let rb = s.http().request(method.parse().unwrap(), format!("{}/v1/sandboxes/{a}{path}", s.url)).bearer_auth(&other);
        let r = if method == "POST" { rb.json(&json!({"cmd": ["true"]})) } else { rb }.send().await.unwrap();
        assert_eq!(r.status(), 404, "{method} {path} with another namespace's key");
    }
    let theirs: Value = s.http().get(format!("{}/v1/sandboxes", s.url)).bearer_auth(&other).send().await.unwrap().json().await.unwrap();
    assert_eq!(theirs["items"], json!([]));

    // Uploads past the disk quota are refused, and nothing of them is left.
    let small = create(&s, &["--disk", "16"]);
    let big = vec![b'x'; 17 << 20];
    let r = s.http().put(format!("{}/v1/sandboxes/{small}/files?path=/big", s.url)).bearer_auth(&s.admin_key).body(big).send().await.unwrap();
    let (status, code, msg) = common::error_code(r).await;
    assert_eq!((status, code.as_str()), (413, "quota_exceeded"), "{msg}");
    assert_ne!(exec(&s, &small, &["busybox", "ls", "/big"], None).await.2, 0);
    // Commands meet the same disk: past it, writes fail inside with ENOSPC, and the host holds
    // no more than the disk's size for it.
    let (_, err, code) = exec(&s, &small, &["busybox", "dd", "if=/dev/zero", "of=/fill", "bs=1M", "count=20"], None).await;
    assert!(code != 0 && err.contains("No space left on device"), "{code} {err}");
    let written = sandbox(&s, &small).await["disk_bytes"].as_u64().unwrap();
    assert!(written > 10 << 20 && written <= 16 << 20, "{written}");
    let r = s.http().put(format!("{}/v1/sandboxes/{small}/files?path=/more", s.url)).bearer_auth(&s.admin_key).body(vec![b'y'; 1 << 20]).send().await.unwrap();
    assert_eq!(r.status(), 413, "a full disk takes no upload");
    exec(&s, &small, &["busybox", "rm", "/fill"], None).await;
    // A flood of output streams through without piling up: all of it arrives.
    let (out, _, code) = exec(&s, &b, &["sh", "-c", "busybox yes 0123456789abcdef | busybox head -c 4000000"], None).await;
    assert_eq!((out.len(), code), (4_000_000, 0));

    // Idle policy: paused after 1 s without calls, on standby after 3 s; a call brings it back.
    let idle = create(&s, &["--pause-after", "1s", "--standby-after", "3s"]);
    common::eventually("paused", Duration::from_secs(20), || async {
        let v = sandbox(&s, &idle).await;
        if v["state"] == "paused" { Ok(()) } else { Err(v.to_string()) }
    })
    .await;
    common::eventually("on standby", Duration::from_secs(20), || async {
        let v = sandbox(&s, &idle).await;
        if v["state"] == "standby" { Ok(()) } else { Err(v.to_string()) }
    })
    .await;
    assert_eq!(exec(&s, &idle, &["sh", "-c", "echo back"], None).await.0, "back\n");
    // TTL: destroyed after it, whatever its state.
    let short = create(&s, &["--ttl", "2s"]);
    common::eventually("destroyed by its TTL", Duration::from_secs(20), || async {
        let r = s.get(&format!("/v1/sandboxes/{short}")).send().await.unwrap();
        if r.status() == 404 { Ok(()) } else { Err(r.status().to_string()) }
    })
    .await;
    // A corrupted standby image: the sandbox is marked failed with the reason; others go on.
    let broken = create(&s, &[]);
    assert_eq!(s.ok(&["sandbox", "standby", &broken]).trim(), format!("{broken} is standby"));
    let image = s.dir.path().join("sandboxes").join(&broken).join("checkpoint/checkpoint.img");
    std::fs::write(&image, b"not a checkpoint").unwrap();
    let (status, code, msg) = common::error_code(
        s.http().post(format!("{}/v1/sandboxes/{broken}/exec", s.url)).bearer_auth(&s.admin_key).json(&json!({"cmd": ["true"]})).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (409, "sandbox_failed"), "{msg}");
    let v = sandbox(&s, &broken).await;
    assert_eq!(v["state"], "failed");
    assert!(v["error"].as_str().unwrap().contains("could not be restored"), "{v}");
    assert_eq!(exec(&s, &b, &["sh", "-c", "echo still fine"], None).await.0, "still fine\n");
    s.ok(&["sandbox", "rm", &broken]);

    // Bad input.
    let err = s.fails(&["sandbox", "create", "--image", "no/such:image"], 6);
    assert!(err.contains("not in namespace"), "{err}");
    let err = s.fails(&["sandbox", "create", "--image", IMAGE, "--memory", "4"], 6);
    assert!(err.contains("memory_mb"), "{err}");
    for id in [a, b, small, idle] {
        s.ok(&["sandbox", "rm", &id]);
    }
}

#[tokio::test]
async fn limits_contain_bombs_and_privileges_do_not_rise() {
    let s = Server::start();
    let _img = import(&s);
    let bystander = create(&s, &[]);

    // A fork bomb meets the sandbox's process limit (one per MiB of memory) inside gVisor;
    // the sandbox survives it.
    let forks = create(&s, &["--memory", "128"]);
    assert_eq!(exec(&s, &forks, &["sh", "-c", "ulimit -u"], None).await.0.trim(), "128");
    let bomb = json!({"cmd": ["sh", "-c", "f(){ f|f& }; f; busybox sleep 2; echo survived"], "timeout_s": 30});
    let r = s.http().post(format!("{}/v1/sandboxes/{forks}/exec", s.url)).bearer_auth(&s.admin_key).json(&bomb).send().await.unwrap();
    let frames = r.text().await.unwrap();
    assert!(frames.contains("survived") && frames.contains("can't fork"), "{}", &frames[frames.len().saturating_sub(2000)..]);
    assert_eq!(sandbox(&s, &forks).await["state"], "running");
    // Even root cannot lift the limit.
    let (_, err, code) = exec(&s, &forks, &["sh", "-c", "ulimit -u 100000"], None).await;
    assert_ne!(code, 0, "{err}");
    s.ok(&["sandbox", "rm", &forks]);

    // A memory bomb: the host stops that sandbox's gVisor at its memory limit; the command
    // and the sandbox say so; its files are kept and `resume` starts it again from them.
    let hog = create(&s, &["--memory", "64"]);
    let (_, err, code) = exec(&s, &hog, &["sh", "-c", "echo kept > /note; busybox tail /dev/zero"], None).await;
    assert_eq!(code, 137, "{err}");
    assert!(err.contains("ran out of memory (its limit is 64 MiB)"), "{err}");
    let v = sandbox(&s, &hog).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("files are kept"), "{v}");
    let (status, code, msg) = common::error_code(
        s.http().post(format!("{}/v1/sandboxes/{hog}/exec", s.url)).bearer_auth(&s.admin_key).json(&json!({"cmd": ["true"]})).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (409, "sandbox_failed"), "{msg}");
    assert!(msg.contains("hangar sandbox resume"), "{msg}");
    assert_eq!(s.ok(&["sandbox", "resume", &hog]).trim(), format!("{hog} is running"));
    assert_eq!(exec(&s, &hog, &["busybox", "cat", "/note"], None).await, ("kept\n".into(), String::new(), 0));
    s.ok(&["sandbox", "rm", &hog]);
    assert_eq!(exec(&s, &bystander, &["sh", "-c", "echo unaffected"], None).await.0, "unaffected\n");

    // Root inside holds only the default container capabilities: no mounts, no kernel
    // modules, no network changes, no host devices, no kernel settings.
    let (caps, _, _) = exec(&s, &bystander, &["busybox", "grep", "CapEff", "/proc/self/status"], None).await;
    assert_eq!(caps.split_whitespace().nth(1), Some("00000000a80405fb"), "{caps}");
    for attempt in [
        "busybox mount -t tmpfs none /mnt",
        "busybox insmod /lib/modules/x.ko",
        "busybox ip link add x0 type dummy",
        "busybox mknod /tmp/disk b 8 0 && busybox head -c 512 /tmp/disk",
        "echo 1 > /proc/sys/kernel/panic",
        "busybox nsenter -t 1 -m -u -n -p busybox cat /etc/shadow",
    ] {
        let (out, err, code) = exec(&s, &bystander, &["sh", "-c", attempt], None).await;
        assert_ne!(code, 0, "`{attempt}` succeeded: {out} {err}");
    }
    // An unprivileged user stays unprivileged: a setuid-root copy of busybox gives nothing,
    // and su to root fails.
    let script = "b=/bin/busybox; echo nobody:x:65534:65534::/:/bin/sh >> /etc/passwd; $b mkdir -p /tmp/x; $b cp $b /tmp/x/busybox; $b chmod 4755 /tmp/x/busybox; \
                  $b su -s /bin/sh nobody -c '/tmp/x/busybox id -u; /tmp/x/busybox sh -c \"echo x > /etc/owned\" || echo denied; $b su -c id root || echo no-su'";
    let (out, err, _) = exec(&s, &bystander, &["sh", "-c", script], None).await;
    assert_eq!(out, "65534\ndenied\nno-su\n", "{err}");
    s.ok(&["sandbox", "rm", &bystander]);
}

#[tokio::test]
async fn interactive_commands_run_on_a_terminal_over_a_websocket() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = Server::start();
    let _img = import(&s);
    let id = create(&s, &[]);
    let ws_url = format!("{}/v1/sandboxes/{id}/tty", s.url.replacen("http://", "ws://", 1));
    let connect = |url: String, key: Option<String>| async move {
        let mut req = url.into_client_request().unwrap();
        if let Some(k) = key {
            req.headers_mut().insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        tokio_tungstenite::connect_async(req).await
    };

    // A shell on a 100 × 30 terminal: it sees that size, then the new one after a resize.
    let (mut ws, _) = connect(ws_url.clone(), Some(s.admin_key.clone())).await.unwrap();
    ws.send(Message::Text(json!({"cmd": ["sh"], "cols": 100, "rows": 30}).to_string().into())).await.unwrap();
    ws.send(Message::Binary(b"stty size; ulimit -u\n".to_vec().into())).await.unwrap();
    common::read_until(&mut ws, "30 100\r\n256").await;
    ws.send(Message::Text(json!({"resize": {"cols": 120, "rows": 40}}).to_string().into())).await.unwrap();
    ws.send(Message::Binary(b"stty size\n".to_vec().into())).await.unwrap();
    common::read_until(&mut ws, "40 120").await;
    // Ctrl-C reaches the foreground command, as on any terminal; the shell goes on.
    ws.send(Message::Binary(b"busybox sleep 1000\n".to_vec().into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws.send(Message::Binary(b"\x03".to_vec().into())).await.unwrap();
    ws.send(Message::Binary(b"echo after-$((6*7))\n".to_vec().into())).await.unwrap();
    common::read_until(&mut ws, "after-42").await;
    ws.send(Message::Binary(b"exit 3\n".to_vec().into())).await.unwrap();
    common::read_until(&mut ws, r#"[{"exit_code":3}]"#).await;

    // Going away kills the command.
    let (mut ws, _) = connect(ws_url.clone(), Some(s.admin_key.clone())).await.unwrap();
    ws.send(Message::Text(json!({"cmd": ["busybox", "sh", "-c", "echo started; exec busybox sleep 4321"]}).to_string().into())).await.unwrap();
    common::read_until(&mut ws, "started").await;
    drop(ws);
    common::eventually("the command killed with its terminal", Duration::from_secs(10), || async {
        let (ps, _, _) = exec(&s, &id, &["busybox", "ps"], None).await;
        if ps.contains("sleep 4321") { Err(ps) } else { Ok(()) }
    })
    .await;

    // Bad input: no key, another sandbox, a first message that is not a command, a missing
    // program.
    assert!(connect(ws_url.clone(), None).await.is_err_and(|e| e.to_string().contains("401")));
    let err = connect(ws_url.replace(&id, "sb-000000000000"), Some(s.admin_key.clone())).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let (mut ws, _) = connect(ws_url.clone(), Some(s.admin_key.clone())).await.unwrap();
    ws.send(Message::Binary(b"ls\n".to_vec().into())).await.unwrap();
    let said = common::read_until(&mut ws, "error").await;
    assert!(said.contains("first message must be the command"), "{said}");
    let (mut ws, _) = connect(ws_url.clone(), Some(s.admin_key.clone())).await.unwrap();
    ws.send(Message::Text(json!({"cmd": ["sh"], "cols": 0}).to_string().into())).await.unwrap();
    let said = common::read_until(&mut ws, "error").await;
    assert!(said.contains("out of range"), "{said}");

    // The CLI: `exec -t` with keys from a pipe, the exit code passed on.
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["--data-dir", s.dir.path().to_str().unwrap(), "sandbox", "exec", "-t", &id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut keys = cli.stdin.take().unwrap();
        keys.write_all(b"echo from-the-cli\nexit 5\n").unwrap();
    }
    let out = cli.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-the-cli"));
    s.ok(&["sandbox", "rm", &id]);
}

/// `GET /` to `addr:port` from inside a sandbox: the reply's last line, or nc's complaint.
async fn fetch(s: &Server, id: &str, addr: &str, port: u16) -> String {
    let script = format!("{{ printf 'GET / HTTP/1.0\\r\\n\\r\\n'; busybox sleep 1; }} | busybox nc -w 2 {addr} {port} 2>&1 | busybox tail -1");
    exec(s, id, &["sh", "-c", &script], None).await.0.trim().to_string()
}

#[tokio::test]
async fn an_allow_list_opens_exactly_the_named_hosts_and_ports() {
    let mut s = Server::start();
    let _img = import(&s);
    let out = common::outside(9);
    // An HTTP server on the host, on every address.
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write;
        for mut c in host.incoming().flatten() {
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhost-secret");
        }
    });

    let open = create(&s, &["--allow", &format!("{}:80", out.addr)]);
    let closed = create(&s, &[]);
    let other = create(&s, &["--allow", &format!("{}:*", out.addr)]);
    assert_eq!(sandbox(&s, &open).await["config"]["network"]["allow"], json!([format!("{}:80", out.addr)]));
    // The allowed host and port answer; another port of it, the host (on any of its
    // addresses), and other sandboxes do not.
    assert_eq!(fetch(&s, &open, &out.addr, 80).await, "outside");
    assert_ne!(fetch(&s, &open, &out.addr, 81).await, "outside");
    let (ifaces, _, _) = exec(&s, &open, &["busybox", "ip", "-4", "addr"], None).await;
    let gateway = ifaces.lines().find_map(|l| l.trim().strip_prefix("inet 10.215.")).and_then(|a| a.split('/').next()).map(|a| {
        let mut o: Vec<u8> = format!("10.215.{a}").split('.').map(|x| x.parse().unwrap()).collect();
        o[3] -= 1;
        o.iter().map(u8::to_string).collect::<Vec<_>>().join(".")
    });
    let gateway = gateway.unwrap_or_else(|| panic!("no 10.215 address: {ifaces}"));
    for addr in [gateway.as_str(), "10.214.9.1", "127.0.0.1"] {
        assert!(!fetch(&s, &open, addr, host_port).await.contains("host-secret"), "the host at {addr} is unreachable");
    }
    let (ifaces, _, _) = exec(&s, &other, &["busybox", "ip", "-4", "addr"], None).await;
    let their_addr = ifaces
        .lines()
        .filter_map(|l| l.trim().strip_prefix("inet "))
        .filter_map(|a| a.split('/').next())
        .find(|a| a.starts_with("10.215."))
        .map(str::to_string);
    let their_addr = their_addr.unwrap_or_else(|| panic!("no 10.215 address: {ifaces}"));
    exec(&s, &other, &["sh", "-c", "echo theirs > /www/index.html && busybox httpd -p 8080 -h /www"], None).await;
    assert_eq!(fetch(&s, &other, "127.0.0.1", 8080).await, "theirs");
    assert_ne!(fetch(&s, &open, &their_addr, 8080).await, "theirs", "another sandbox is unreachable");
    // `*` allows every port of that host; no allow-list, no network at all.
    assert_eq!(fetch(&s, &other, &out.addr, 80).await, "outside");
    assert_ne!(fetch(&s, &closed, &out.addr, 80).await, "outside");
    let (ifaces, _, _) = exec(&s, &closed, &["busybox", "cat", "/proc/net/dev"], None).await;
    assert!(!ifaces.contains("eth0"), "{ifaces}");

    // Pause keeps the network; standby is refused (runsc here does not restore it) and so is
    // an idle policy asking for it.
    s.ok(&["sandbox", "pause", &open]);
    assert_eq!(fetch(&s, &open, &out.addr, 80).await, "outside");
    let err = s.fails(&["sandbox", "standby", &open], 6);
    assert!(err.contains("cannot go on standby"), "{err}");
    let err = s.fails(&["sandbox", "create", "--image", IMAGE, "--allow", &format!("{}:80", out.addr), "--standby-after", "1m"], 6);
    assert!(err.contains("standby"), "{err}");
    for bad in ["nohost", "example.com:99999", "127.0.0.1:80", "[::1]:80"] {
        let err = s.fails(&["sandbox", "create", "--image", IMAGE, "--allow", bad], 6);
        assert!(err.contains("network.allow"), "{bad}: {err}");
    }
    let err = s.fails(&["sandbox", "create", "--image", IMAGE, "--allow", "no-such-host.invalid:443"], 6);
    assert!(err.contains("does not resolve"), "{err}");

    // A restart: a sandbox with a network cannot go on standby, so it is failed with the
    // reason, and resume starts it again from its files, network included.
    exec(&s, &open, &["sh", "-c", "echo kept > /note"], None).await;
    s.restart();
    let v = sandbox(&s, &open).await;
    assert_eq!(v["state"], "failed", "{v}");
    s.ok(&["sandbox", "resume", &open]);
    assert_eq!(exec(&s, &open, &["busybox", "cat", "/note"], None).await.0, "kept\n");
    assert_eq!(fetch(&s, &open, &out.addr, 80).await, "outside");
    for id in [&open, &closed, &other] {
        s.ok(&["sandbox", "rm", id]);
    }
    s.stop();
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("hsb-"))
        .collect();
    assert!(left.iter().all(|n| !n.contains(&s.sid())), "namespaces left: {left:?}");
}

#[tokio::test]
async fn commands_run_as_the_images_user_and_end_at_exit_or_timeout_whatever_they_leave() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static");
    let layer = common::oci::layer(&[
        ("bin/", b"", 0o755),
        ("bin/busybox", &busybox, 0o755),
        ("bin/sh", b"->busybox", 0o777),
        ("etc/", b"", 0o755),
        ("etc/passwd", b"root:x:0:0::/:/bin/sh\nweb:x:1000:1001::/tmp:/bin/sh\n", 0o644),
        ("etc/group", b"root:x:0:\nweb:x:1001:\n", 0o644),
        ("tmp/", b"", 0o1777),
    ]);
    let layout = dir.path().join("user-img");
    common::oci::oci_layout(&layout, &[layer], json!({"User": "web", "Entrypoint": ["/bin/sh"]}), None);
    s.ok(&["image", "import", layout.to_str().unwrap(), "--name", "sandbox/web:1"]);
    let id = s.ok(&["sandbox", "create", "--image", "sandbox/web:1", "--memory", "256"]).trim().to_string();

    // The image's user, unless the call names another.
    assert_eq!(exec(&s, &id, &["busybox", "id", "-u"], None).await.0.trim(), "1000");
    assert_eq!(exec(&s, &id, &["busybox", "id", "-g"], None).await.0.trim(), "1001");
    let r = s
        .http()
        .post(format!("{}/v1/sandboxes/{id}/exec", s.url))
        .bearer_auth(&s.admin_key)
        .json(&json!({"cmd": ["busybox", "id", "-u"], "user": "0"}))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("\"stdout\":\"0\\n\""));
    assert_eq!(s.ok(&["sandbox", "exec", &id, "--user", "root", "--", "busybox", "id", "-u"]).trim(), "0");
    let r = s
        .http()
        .post(format!("{}/v1/sandboxes/{id}/exec", s.url))
        .bearer_auth(&s.admin_key)
        .json(&json!({"cmd": ["true"], "user": "nobody-here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(common::error_code(r).await.0, 400);

    // A command that leaves a child holding its output ends when it exits.
    let t = std::time::Instant::now();
    let (out, _, code) = exec(&s, &id, &["busybox", "sh", "-c", "busybox sleep 300 & echo started"], None).await;
    assert_eq!((out.trim(), code), ("started", 0));
    assert!(t.elapsed() < Duration::from_secs(20), "the exec ended at the command's exit: {:?}", t.elapsed());
    // At its timeout the command and its process group are killed, and the exec ends.
    let t = std::time::Instant::now();
    let r = s
        .http()
        .post(format!("{}/v1/sandboxes/{id}/exec", s.url))
        .bearer_auth(&s.admin_key)
        .json(&json!({"cmd": ["busybox", "sh", "-c", "busybox sleep 301 & busybox sleep 302"], "timeout_s": 2}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("\"exit_code\":137"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(20), "the exec ended at its timeout: {:?}", t.elapsed());
    let (ps, _, _) = exec(&s, &id, &["busybox", "ps", "-o", "args"], None).await;
    assert!(!ps.contains("sleep 301") && !ps.contains("sleep 302"), "the timed-out group is gone: {ps}");
}

#[tokio::test]
async fn standby_is_refused_with_the_reason_while_a_background_job_holds_a_commands_output() {
    let s = Server::start();
    let _img = import(&s);
    let id = create(&s, &[]);
    let (out, _, code) = exec(&s, &id, &["busybox", "sh", "-c", "busybox sleep 300 & echo started"], None).await;
    assert_eq!((out.trim(), code), ("started", 0));
    let r = s.http().post(format!("{}/v1/sandboxes/{id}/standby", s.url)).bearer_auth(&s.admin_key).send().await.unwrap();
    let (status, _, message) = common::error_code(r).await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("still holds that command's output") && message.contains("redirect"), "{message}");
    assert_eq!(sandbox(&s, &id).await["state"], "running", "nothing changed");
    // Once the job is gone, standby works, and so does the way back.
    let (ps, _, _) = exec(&s, &id, &["busybox", "ps", "-o", "pid,args"], None).await;
    let pid = ps.lines().find(|l| l.contains("sleep 300")).and_then(|l| l.split_whitespace().next()).unwrap_or_else(|| panic!("{ps}")).to_string();
    assert_eq!(exec(&s, &id, &["busybox", "kill", "-9", &pid], None).await.2, 0);
    common::eventually("the held output to be let go", Duration::from_secs(20), || async {
        let r = s.http().post(format!("{}/v1/sandboxes/{id}/standby", s.url)).bearer_auth(&s.admin_key).send().await.map_err(|e| e.to_string())?;
        if r.status() == 200 { Ok(()) } else { Err(r.text().await.unwrap_or_default()) }
    })
    .await;
    assert_eq!(sandbox(&s, &id).await["state"], "standby");
    // A job started with its output redirected does not hold it.
    assert_eq!(exec(&s, &id, &["busybox", "sh", "-c", "busybox sleep 300 > /dev/null 2>&1 & echo again"], None).await.0.trim(), "again");
    let r = s.http().post(format!("{}/v1/sandboxes/{id}/standby", s.url)).bearer_auth(&s.admin_key).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(exec(&s, &id, &["busybox", "echo", "back"], None).await.0.trim(), "back");
}
