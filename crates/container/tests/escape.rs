//! The jail against the real `runc`: a Python process inside tries to get out and to exhaust
//! the host, and fails. Needs root and runc (`scripts/test.sh` installs runc).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hangar_container::{Jail, JailSpec, NOBODY, Network};

fn python_prefix() -> PathBuf {
    let out = Command::new("python3").args(["-c", "import sys; print(sys.prefix)"]).output().expect("python3 is needed for this test");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn require_runc() {
    let ok = Command::new("runc").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "runc is needed for the jail tests and was not found; install it with `apt-get install runc` (scripts/test.sh does)");
}

struct Run {
    code: Option<i32>,
    stdout: String,
}

/// Runs `script` with the host's Python inside a jail; the script's directory is /var/task.
async fn run_python(script: &str, args: &[&str], memory_bytes: i64, pids_max: i64) -> Run {
    require_runc();
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!("hangar-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    std::fs::write(code.join("main.py"), script).unwrap();
    std::fs::set_permissions(&code, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(code.join("main.py"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let prefix = python_prefix();
    let mut argv = vec![prefix.join("bin/python3").display().to_string(), "/var/task/main.py".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let spec = JailSpec {
        id,
        user: hangar_container::JailUser::Nobody,
        runc_root: None,
        cgroup_parent: "hangar".into(),
        argv,
        env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("PYTHONDONTWRITEBYTECODE".into(), "1".into())],
        cwd: "/var/task".into(),
        ro_binds: vec![(PathBuf::from("/usr"), "/usr".into()), (prefix.clone(), prefix.display().to_string()), (code, "/var/task".into())],
        memory_bytes,
        pids_max,
        cpu_shares: 256,
        tmp_bytes: 8 << 20,
        max_open_files: 256,
        network: Network::None,
    };
    let bundles = dir.path().join("bundles");
    let jail = Jail::prepare(&bundles, &spec).unwrap();
    let child = jail.spawn(Stdio::piped(), Stdio::inherit()).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.expect("the jailed process ended in time").unwrap();
    jail.destroy().await;
    Run { code: out.status.code(), stdout: String::from_utf8_lossy(&out.stdout).into_owned() }
}

const PROBE: &str = r#"
import json, os, socket, sys
r = {"uid": os.getuid()}
def attempt(name, fn):
    try:
        fn()
        r[name] = "ok"
    except Exception as e:
        r[name] = type(e).__name__
attempt("read_shadow", lambda: open("/etc/shadow").read())
attempt("read_root_home", lambda: os.listdir("/root/.ssh"))
attempt("write_code", lambda: open("/var/task/x", "w").write("x"))
attempt("write_usr", lambda: open("/usr/evil", "w").write("x"))
attempt("write_root", lambda: open("/evil", "w").write("x"))
attempt("write_tmp", lambda: open("/tmp/x", "w").write("x"))
attempt("connect_host", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1))
attempt("setuid_root", lambda: os.setuid(0))
attempt("mount", lambda: os.system("mount -t tmpfs x /tmp 2>/dev/null") == 0 or (_ for _ in ()).throw(PermissionError()))
r["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
r["hostname"] = socket.gethostname()
r["root_entries"] = sorted(os.listdir("/"))
print(json.dumps(r))
"#;

#[tokio::test]
async fn the_jailed_process_cannot_get_out() {
    // Something listening on the host's loopback, which the jail must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let run = run_python(PROBE, &[&port], 128 << 20, 64).await;
    assert_eq!(run.code, Some(0), "probe output: {}", run.stdout);
    let r: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    assert_eq!(r["uid"], NOBODY);
    assert_eq!(r["read_shadow"], "FileNotFoundError", "no host /etc");
    assert_eq!(r["read_root_home"], "FileNotFoundError", "no host /root");
    assert_eq!(r["write_code"], "OSError", "code is read-only");
    assert_eq!(r["write_usr"], "OSError", "system files are read-only");
    assert_eq!(r["write_root"], "OSError", "the root is read-only");
    assert_eq!(r["write_tmp"], "ok", "a private /tmp is writable");
    assert_ne!(r["connect_host"], "ok", "no network: {}", r["connect_host"]);
    assert_eq!(r["setuid_root"], "PermissionError");
    assert_ne!(r["mount"], "ok");
    assert_eq!(r["pids"], serde_json::json!([1]), "only its own process is visible");
    assert_eq!(r["hostname"], "hangar");
    drop(listener);
}

#[tokio::test]
async fn a_memory_bomb_is_killed_at_the_limit() {
    let run = run_python("x = bytearray(300 * 1024 * 1024)\nprint('survived')\n", &[], 64 << 20, 64).await;
    assert_eq!(run.code, Some(137), "killed by the OOM killer (SIGKILL); output: {}", run.stdout);
    assert!(!run.stdout.contains("survived"));
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    let script = "import os, sys\nrefused = False\nfor _ in range(10000):\n    try:\n        pid = os.fork()\n    except OSError:\n        refused = True\n        break\n    if pid == 0:\n        import time; time.sleep(5); os._exit(0)\nprint('refused' if refused else 'unbounded', flush=True)\n";
    let run = run_python(script, &[], 128 << 20, 32).await;
    assert!(run.stdout.contains("refused"), "the pids limit stops the bomb: {:?} {}", run.code, run.stdout);
}
