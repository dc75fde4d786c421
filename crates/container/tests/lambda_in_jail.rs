//! A Lambda handler in a jail, end to end: Hangar's Python shim runs inside the container and
//! talks to a Runtime API that Hangar serves inside the container's own network namespace; the
//! handler reaches that and nothing else. Needs root, runc and iproute2.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use hangar_container::{Jail, JailSpec, NetNs, Network};
use hangar_lambda::runtime_api::{Answer, Invocation, RuntimeApi};

const APP: &str = r#"
import json, socket, sys
def handler(event, context):
    try:
        socket.create_connection(("127.0.0.1", int(event["host_port"])), timeout=1)
        host = "reachable"
    except OSError as e:
        host = type(e).__name__
    return {"hello": event["name"], "request_id": context.aws_request_id, "host_loopback": host}
"#;

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn a_python_handler_in_a_jail_serves_invocations_through_the_runtime_api() {
    let ok = Command::new("runc").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "runc is needed; install it with `apt-get install runc` (scripts/test.sh does)");
    let prefix = {
        let out = Command::new("python3").args(["-c", "import sys; print(sys.prefix)"]).output().expect("python3 is needed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    };
    // A service on the host's loopback that the handler must not reach.
    let host_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();

    let id = format!("hangar-lambda-{}", std::process::id());
    let netns = NetNs::create(&id).await.unwrap();
    let api = RuntimeApi::start_on(netns.bind_tcp("127.0.0.1:9001".parse().unwrap()).unwrap()).unwrap();
    assert_eq!(api.address(), "127.0.0.1:9001");

    let dir = tempfile::tempdir().unwrap();
    let (task, runtime) = (dir.path().join("task"), dir.path().join("runtime"));
    mkdir(&task);
    mkdir(&runtime);
    write(&task.join("app.py"), APP, 0o644);
    write(&runtime.join("bootstrap.py"), hangar_lambda::PYTHON_SHIM, 0o644);
    let spec = JailSpec {
        id: id.clone(),
        user: hangar_container::JailUser::Nobody,
        runc_root: None,
        cgroup_parent: "hangar".into(),
        argv: vec![prefix.join("bin/python3").display().to_string(), "/opt/hangar/bootstrap.py".into()],
        env: [
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
            ("_HANDLER", "app.handler"),
            ("LAMBDA_TASK_ROOT", "/var/task"),
            ("AWS_LAMBDA_FUNCTION_NAME", "jailed"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec(),
        cwd: "/var/task".into(),
        ro_binds: vec![
            (PathBuf::from("/usr"), "/usr".into()),
            (prefix.clone(), prefix.display().to_string()),
            (task, "/var/task".into()),
            (runtime, "/opt/hangar".into()),
        ],
        memory_bytes: 128 << 20,
        pids_max: 64,
        cpu_shares: 256,
        tmp_bytes: 8 << 20,
        max_open_files: 256,
        network: Network::Join(netns.path().to_path_buf()),
    };
    let jail = Jail::prepare(&dir.path().join("bundles"), &spec).unwrap();
    let mut child = jail.spawn(Stdio::null(), Stdio::inherit()).unwrap();

    for i in 0..3 {
        let inv = Invocation {
            request_id: format!("req-{i}"),
            payload: Bytes::from(format!(r#"{{"name":"Ada","host_port":{host_port}}}"#)),
            deadline_ms: 4_102_444_800_000,
            function_arn: "arn:aws:lambda:local:000000000000:function:jailed".into(),
            trace_id: "Root=1-0-0".into(),
            client_context: None,
            cognito_identity: None,
        };
        let answer = tokio::time::timeout(Duration::from_secs(30), api.invoke(inv)).await.expect("answered in time").unwrap();
        let Answer::Response(body) = answer else { panic!("{answer:?}") };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["hello"], "Ada");
        assert_eq!(v["request_id"], format!("req-{i}"));
        assert_eq!(v["host_loopback"], "ConnectionRefusedError", "the host's loopback service is not reachable");
    }

    let _ = child.start_kill();
    jail.destroy().await;
    let _ = child.wait().await;
    drop(api);
    netns.delete().await;
    drop(host_listener);
}
