//! Process functions end to end through the real binary: Python and Node.js handlers with
//! Lambda's event, context, environment and error shapes; function URLs; init errors; limits;
//! the sandbox; concurrency and keep-alive. Needs root, runc, python3 and node (scripts/test.sh).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Server, error_code};
use serde_json::{Value, json};

/// Writes `files` (path, contents) into a new directory and returns it.
fn code_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        if path.ends_with("bootstrap") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    dir
}

fn deploy(s: &Server, name: &str, runtime: &str, handler: Option<&str>, code: &Path, flags: &[&str]) {
    let mut args = vec!["fn", "deploy", name, "--runtime", runtime, "--code", code.to_str().unwrap()];
    if let Some(h) = handler {
        args.extend(["--handler", h]);
    }
    args.extend_from_slice(flags);
    s.ok(&args);
}

async fn invoke(s: &Server, name: &str, event: &Value) -> reqwest::Response {
    s.http().post(format!("{}/v1/functions/{name}/invoke", s.url)).bearer_auth(&s.admin_key).json(event).send().await.unwrap()
}

const PY_APP: &str = r#"
import json, os, time
COUNT = 0
print("module imported once per zygote")

def handler(event, context):
    global COUNT
    COUNT += 1
    print("handling", json.dumps(event))
    if event.get("raise"):
        raise ValueError("asked to raise")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("unserializable"):
        return {"when": object()}
    if event.get("big"):
        return "x" * (7 * 1024 * 1024)
    env = {k: os.environ.get(k) for k in ["AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
        "_HANDLER", "LAMBDA_TASK_ROOT", "AWS_REGION", "TZ", "AWS_LAMBDA_RUNTIME_API", "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME", "COLOR"]}
    return {
        "event": event,
        "count": COUNT,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "remaining": context.get_remaining_time_in_millis(),
        "env": env,
        "instance": os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME"),
    }

def url(event, context):
    if event["rawPath"] == "/raise":
        raise RuntimeError("url handler failed")
    if event["rawPath"] == "/plain":
        return {"just": "json"}
    return {
        "statusCode": 201,
        "headers": {"x-echo-method": event["requestContext"]["http"]["method"], "content-type": "application/json"},
        "cookies": ["a=1; Path=/"],
        "body": json.dumps({"rawPath": event["rawPath"], "rawQueryString": event["rawQueryString"],
            "query": event.get("queryStringParameters"), "body": event.get("body"), "cookies": event.get("cookies"),
            "header": event["headers"].get("x-test"), "version": event["version"], "b64": event["isBase64Encoded"]}),
    }
"#;

#[tokio::test]
async fn python_handlers_get_lambdas_event_context_environment_and_logs() {
    let s = Server::start();
    let code = code_dir(&[("app.py", PY_APP)]);
    deploy(&s, "py", "python3", Some("app.handler"), code.path(), &["--memory", "256", "--timeout", "5s", "--env", "COLOR=blue"]);

    let r = invoke(&s, "py", &json!({"name": "Ada"})).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-hangar-invocation-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["event"], json!({"name": "Ada"}));
    assert_eq!(v["request_id"], id, "the Lambda request id is the invocation id");
    assert_eq!(v["function_name"], "py");
    assert_eq!(v["memory_limit_in_mb"], "256");
    assert!(v["arn"].as_str().unwrap().starts_with("arn:aws:lambda:local:"), "{}", v["arn"]);
    let remaining = v["remaining"].as_i64().unwrap();
    assert!(remaining > 3000 && remaining <= 5000, "remaining {remaining}");
    let env = &v["env"];
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "py");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "1");
    assert_eq!(env["_HANDLER"], "app.handler");
    assert_eq!(env["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(env["AWS_REGION"], "local");
    assert_eq!(env["TZ"], ":UTC");
    assert_eq!(env["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/hangar/default/py");
    assert_eq!(env["COLOR"], "blue");

    // The second call is warm: same instance, module state kept.
    let v2: Value = invoke(&s, "py", &json!({})).await.json().await.unwrap();
    assert_eq!(v2["count"], 2);
    assert_eq!(v2["instance"], v["instance"]);

    // A raising handler: Lambda's error shape, 502, recorded as an error with the traceback.
    let r = invoke(&s, "py", &json!({"raise": true})).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-hangar-function-error"], "Unhandled");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["errorType"], "ValueError");
    assert_eq!(e["errorMessage"], "asked to raise");
    assert!(e["stackTrace"].as_array().is_some_and(|t| !t.is_empty()));
    // Results that cannot be sent back.
    let e: Value = invoke(&s, "py", &json!({"unserializable": true})).await.json().await.unwrap();
    assert_eq!(e["errorType"], "Runtime.MarshalError");
    let e: Value = invoke(&s, "py", &json!({"big": true})).await.json().await.unwrap();
    assert_eq!(e["errorType"], "Function.ResponseSizeTooLarge");
    // A payload that is not JSON is refused before it reaches the function.
    let r = s.http().post(format!("{}/v1/functions/py/invoke", s.url)).bearer_auth(&s.admin_key).body("not json").send().await.unwrap();
    assert_eq!(error_code(r).await.1, "invalid_payload");
    // The instance survived all of it.
    let v3: Value = invoke(&s, "py", &json!({})).await.json().await.unwrap();
    assert_eq!(v3["instance"], v["instance"]);

    let recs = s.invocations("py").await;
    let first = recs.iter().find(|r| r["id"] == id).unwrap();
    assert!(common::new_instance(first), "{first}");
    assert_eq!(first["outcome"], "ok");
    let logs = first["logs"].as_str().unwrap();
    assert!(logs.starts_with(&format!("START RequestId: {id} Version: 1\n")), "{logs}");
    assert!(logs.contains("handling {\"name\": \"Ada\"}"), "{logs}");
    assert!(logs.contains(&format!("END RequestId: {id}\nREPORT RequestId: {id}\tDuration: ")), "{logs}");
    assert!(logs.contains("Memory Size: 256 MB") && logs.contains("Init Duration: "), "{logs}");
    let raised = recs.iter().find(|r| r["error"].as_str().is_some_and(|e| e.contains("asked to raise"))).unwrap();
    assert_eq!(raised["outcome"], "error");
    assert_eq!(raised["status"], 502);
    assert!(raised["logs"].as_str().unwrap().contains("Traceback"), "{}", raised["logs"]);
    assert_eq!(recs.iter().filter(|r| common::new_instance(r)).count(), 1, "one instance served everything");

    // The same code as a function URL handler: payload format 2.0 in, structured result out.
    deploy(&s, "web", "python3", Some("app.url"), code.path(), &[]);
    let r = s
        .http()
        .post(format!("{}/fn/default/web/items/7?x=1&y=a%20b", s.url))
        .bearer_auth(&s.admin_key)
        .header("x-test", "yes")
        .header("cookie", "c1=v1; c2=v2")
        .body("hello body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-echo-method"], "POST");
    assert_eq!(r.headers()["set-cookie"], "a=1; Path=/");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["rawPath"], "/items/7");
    assert_eq!(v["rawQueryString"], "x=1&y=a%20b");
    assert_eq!(v["query"], json!({"x": "1", "y": "a b"}));
    assert_eq!(v["body"], "hello body");
    assert_eq!(v["cookies"], json!(["c1=v1", "c2=v2"]));
    assert_eq!(v["header"], "yes");
    assert_eq!((v["version"].as_str(), v["b64"].as_bool()), (Some("2.0"), Some(false)));
    let r = s.get("/fn/default/web/plain").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"just": "json"}));
    let r = s.get("/fn/default/web/raise").send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.json::<Value>().await.unwrap()["errorType"], "RuntimeError");
}

const NODE_APP: &str = r#"
let count = 0;
exports.handler = async (event, context) => {
  count += 1;
  console.log("node got", JSON.stringify(event));
  if (event.raise) throw new TypeError("node was asked to raise");
  return { event, count, requestId: context.awsRequestId, name: context.functionName,
           remaining: context.getRemainingTimeInMillis(), region: process.env.AWS_REGION };
};
exports.callback = (event, context, callback) => { callback(null, { style: "callback", n: event.n }); };
exports.url = async (event) => ({ statusCode: 200, headers: { "content-type": "text/plain" }, body: `node saw ${event.rawPath}` });
"#;

#[tokio::test]
async fn node_handlers_work_async_callback_and_url_style() {
    let s = Server::start();
    let code = code_dir(&[("index.js", NODE_APP)]);
    deploy(&s, "nd", "nodejs", Some("index.handler"), code.path(), &[]);
    let r = invoke(&s, "nd", &json!({"who": "node"})).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-hangar-invocation-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["event"], json!({"who": "node"}));
    assert_eq!(v["requestId"], id);
    assert_eq!(v["name"], "nd");
    assert_eq!(v["region"], "local");
    assert!(v["remaining"].as_i64().unwrap() > 0);
    let v: Value = invoke(&s, "nd", &json!({})).await.json().await.unwrap();
    assert_eq!(v["count"], 2, "warm instance keeps module state");
    let r = invoke(&s, "nd", &json!({"raise": true})).await;
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert_eq!((e["errorType"].as_str(), e["errorMessage"].as_str()), (Some("TypeError"), Some("node was asked to raise")));
    let logs = s.invocations("nd").await.iter().find(|r| r["id"] == id).unwrap()["logs"].as_str().unwrap().to_string();
    assert!(logs.contains("node got {\"who\":\"node\"}") && logs.contains("REPORT RequestId:"), "{logs}");

    deploy(&s, "ndcb", "nodejs", Some("index.callback"), code.path(), &[]);
    let v: Value = invoke(&s, "ndcb", &json!({"n": 3})).await.json().await.unwrap();
    assert_eq!(v, json!({"style": "callback", "n": 3}));
    deploy(&s, "ndurl", "nodejs", Some("index.url"), code.path(), &["--public"]);
    let r = reqwest::get(format!("{}/fn/default/ndurl/some/where", s.url)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "node saw /some/where");
}

#[tokio::test]
async fn init_errors_are_reported_with_their_logs_never_a_hang() {
    let s = Server::start();
    let started = std::time::Instant::now();
    // Python: a missing module, a missing function, a module that raises on import.
    let code = code_dir(&[("app.py", "def handler(e, c):\n    return 1\n"), ("broken.py", "print('about to fail')\nraise KeyError('boom at import')\n")]);
    for (name, handler, kind, message) in [
        ("nomod", "missing.handler", "Runtime.ImportModuleError", "No module named 'missing'"),
        ("nofn", "app.nothere", "Runtime.HandlerNotFound", "nothere"),
        ("raises", "broken.handler", "Runtime.ImportModuleError", "boom at import"),
    ] {
        deploy(&s, name, "python3", Some(handler), code.path(), &[]);
        let r = invoke(&s, name, &json!({})).await;
        assert_eq!(r.status(), 502, "{name}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["errorType"], kind, "{name}: {e}");
        assert!(e["errorMessage"].as_str().unwrap().contains(message), "{name}: {e}");
        let rec = &s.invocations(name).await[0];
        assert_eq!(rec["outcome"], "error");
        assert!(rec["error"].as_str().unwrap().starts_with("init error"), "{rec}");
    }
    let raises = &s.invocations("raises").await[0];
    let err = raises["error"].as_str().unwrap();
    assert!(err.contains("about to fail") && err.contains("Traceback"), "the import's output and traceback: {err}");

    // Node: a missing file.
    let js = code_dir(&[("index.js", "exports.handler = async () => 1;\n")]);
    deploy(&s, "nomodjs", "nodejs", Some("nope.handler"), js.path(), &[]);
    let e: Value = invoke(&s, "nomodjs", &json!({})).await.json().await.unwrap();
    assert_eq!(e["errorType"], "Runtime.ImportModuleError", "{e}");

    // provided: a bootstrap that exits at once, and one that never polls.
    let quits = code_dir(&[("bootstrap", "#!/bin/sh\necho 'bootstrap giving up' >&2\nexit 3\n")]);
    deploy(&s, "quits", "provided", None, quits.path(), &[]);
    let e: Value = invoke(&s, "quits", &json!({})).await.json().await.unwrap();
    assert_eq!(e["errorType"], "Runtime.ExitError", "{e}");
    assert!(e["errorMessage"].as_str().unwrap().contains("status 3"), "{e}");
    assert!(s.invocations("quits").await[0]["logs"].as_str().unwrap().contains("bootstrap giving up"));
    let idle = code_dir(&[("bootstrap", "#!/bin/sh\nexec sleep 600\n")]);
    deploy(&s, "idle", "provided", None, idle.path(), &["--timeout", "2s"]);
    let e: Value = invoke(&s, "idle", &json!({})).await.json().await.unwrap();
    assert_eq!(e["errorType"], "Runtime.InitTimeout", "{e}");
    assert!(started.elapsed() < Duration::from_secs(60));

    // Deploy-time checks: no handler, unknown runtime, a provided zip without bootstrap.
    let err = s.fails(&["fn", "deploy", "x", "--runtime", "python3", "--code", code.path().to_str().unwrap()], 1);
    assert!(err.contains("handler"), "{err}");
    let err = s.fails(&["fn", "deploy", "x", "--runtime", "cobol", "--code", code.path().to_str().unwrap()], 1);
    assert!(err.contains("unknown runtime"), "{err}");
    let err = s.fails(&["fn", "deploy", "x", "--runtime", "provided", "--code", code.path().to_str().unwrap()], 6);
    assert!(err.contains("bootstrap"), "{err}");
}

#[tokio::test]
async fn zips_that_escape_are_rejected_at_deploy() {
    use std::io::Write;
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let opts = zip::write::SimpleFileOptions::default();
    for (i, (name, link)) in
        [("../evil.py", None), ("/abs.py", None), ("ok/../../evil.py", None), ("app.py", Some("/etc/shadow")), ("d/app.py", Some("../../x"))]
            .into_iter()
            .enumerate()
    {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        match link {
            Some(target) => w.add_symlink(name, target, opts).unwrap(),
            None => {
                w.start_file(name, opts).unwrap();
                w.write_all(b"def handler(e, c): return 1\n").unwrap();
            }
        }
        let path = dir.path().join(format!("bad{i}.zip"));
        std::fs::write(&path, w.finish().unwrap().into_inner()).unwrap();
        let err = s.fails(&["fn", "deploy", "bad", "--runtime", "python3", "--handler", "app.handler", "--code", path.to_str().unwrap()], 6);
        assert!(err.contains("outside the code directory"), "{name}: {err}");
    }
    let garbage = dir.path().join("garbage.zip");
    std::fs::write(&garbage, b"PK not really").unwrap();
    let err = s.fails(&["fn", "deploy", "bad", "--runtime", "python3", "--handler", "app.handler", "--code", garbage.to_str().unwrap()], 6);
    assert!(err.contains("zip archive"), "{err}");
    s.fails(&["fn", "get", "bad"], 4);
}

const LIMITS_APP: &str = r#"
import os, time
STATE = {"n": 0}
def handler(event, context):
    STATE["n"] += 1
    what = event.get("do")
    if what == "sleep":
        time.sleep(event["s"])
    elif what == "alloc":
        blocks = [bytearray(1 << 20) for _ in range(event["mb"])]
        return {"allocated": len(blocks)}
    elif what == "forkbomb":
        children, refused = [], False
        for _ in range(2000):
            try:
                pid = os.fork()
            except OSError:
                refused = True
                break
            if pid == 0:
                time.sleep(3)
                os._exit(0)
            children.append(pid)
        return {"refused": refused, "forked": len(children)}
    return {"n": STATE["n"], "instance": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"]}
"#;

#[tokio::test]
async fn timeout_memory_and_fork_bombs_are_contained() {
    let s = Server::start();
    let code = code_dir(&[("app.py", LIMITS_APP)]);
    deploy(&s, "lim", "python3", Some("app.handler"), code.path(), &["--timeout", "1s", "--memory", "64"]);
    let first: Value = invoke(&s, "lim", &json!({})).await.json().await.unwrap();

    let (st, code_, msg) = error_code(invoke(&s, "lim", &json!({"do": "sleep", "s": 10})).await).await;
    assert_eq!((st, code_.as_str()), (504, "timeout"), "{msg}");
    // The timed-out instance was killed: the next request gets a fresh one.
    let after: Value = invoke(&s, "lim", &json!({})).await.json().await.unwrap();
    assert_eq!(after["n"], 1, "fresh module state");
    assert_ne!(after["instance"], first["instance"]);

    let ok: Value = invoke(&s, "lim", &json!({"do": "alloc", "mb": 8})).await.json().await.unwrap();
    assert_eq!(ok["allocated"], 8);
    let (st, code_, msg) = error_code(invoke(&s, "lim", &json!({"do": "alloc", "mb": 200})).await).await;
    assert_eq!((st, code_.as_str()), (502, "out_of_memory"), "{msg}");

    // With room in memory, the pids limit is what stops a fork bomb.
    deploy(&s, "bomb", "python3", Some("app.handler"), code.path(), &["--memory", "1024"]);
    let bomb: Value = invoke(&s, "bomb", &json!({"do": "forkbomb"})).await.json().await.unwrap();
    assert_eq!(bomb["refused"], true, "the pids limit stops a fork bomb: {bomb}");

    let recs = s.invocations("lim").await;
    let outcomes: Vec<&str> = recs.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert!(outcomes.contains(&"timeout") && outcomes.contains(&"out_of_memory"), "{outcomes:?}");
    let timed_out = recs.iter().find(|r| r["outcome"] == "timeout").unwrap();
    assert!(timed_out["logs"].as_str().unwrap().contains("Task timed out after 1000 ms"));
    // The platform still serves.
    assert_eq!(invoke(&s, "lim", &json!({})).await.status(), 200);
}

const ESCAPE_APP: &str = r#"
import ctypes, os, socket
def attempt(fn):
    try:
        fn()
        return "ok"
    except Exception as e:
        return type(e).__name__
def handler(event, context):
    libc = ctypes.CDLL(None, use_errno=True)
    return {
        "uid": os.getuid(),
        "read_shadow": attempt(lambda: open("/etc/shadow").read()),
        "read_host_files": attempt(lambda: open("/etc/passwd").read()),
        "host_home": os.path.exists("/root/.cargo") or os.path.exists("/home"),
        "write_code": attempt(lambda: open("/var/task/x", "w").write("x")),
        "write_root": attempt(lambda: open("/x", "w").write("x")),
        "write_usr": attempt(lambda: open("/usr/x", "w").write("x")),
        "write_tmp": attempt(lambda: open("/tmp/x", "w").write("x")),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "connect_host": attempt(lambda: socket.create_connection(("127.0.0.1", event["port"]), timeout=1)),
        "connect_outside": attempt(lambda: socket.create_connection(("1.1.1.1", 53), timeout=1)),
        "setuid_root": attempt(lambda: os.setuid(0)),
        "unshare_user": libc.unshare(0x10000000),
        "mount": libc.mount(b"tmpfs", b"/mnt", b"tmpfs", 0, None),
        "caps": {l.split(":")[0]: l.split(":")[1].strip() for l in open("/proc/self/status") if l.startswith("Cap")},
    }
"#;

#[tokio::test]
async fn instances_cannot_reach_the_host_or_each_other() {
    let s = Server::start();
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let code = code_dir(&[("app.py", ESCAPE_APP)]);
    deploy(&s, "esc", "python3", Some("app.handler"), code.path(), &[]);
    let r: Value = invoke(&s, "esc", &json!({"port": port})).await.json().await.unwrap();
    assert_eq!(r["uid"], 65534, "{r}");
    assert_eq!(r["read_shadow"], "FileNotFoundError", "{r}");
    assert_eq!(r["read_host_files"], "FileNotFoundError", "{r}");
    assert_eq!(r["host_home"], false, "{r}");
    assert_eq!(r["write_code"], "OSError", "{r}");
    assert_eq!(r["write_root"], "OSError", "{r}");
    assert_eq!(r["write_usr"], "OSError", "{r}");
    assert_eq!(r["write_tmp"], "ok", "{r}");
    assert_eq!(r["pids"], json!([1]), "only its own process: {r}");
    assert_eq!(r["connect_host"], "ConnectionRefusedError", "the host's loopback is another network: {r}");
    assert_ne!(r["connect_outside"], "ok", "no network: {r}");
    assert_eq!(r["setuid_root"], "PermissionError", "{r}");
    assert_eq!(r["unshare_user"], -1, "no new user namespaces: {r}");
    assert_eq!(r["mount"], -1, "{r}");
    // Every capability set is empty: nothing to regain through an exec or a setuid binary.
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(r["caps"][set], "0000000000000000", "{set}: {r}");
    }
    drop(host);
}

const CONCURRENT_APP: &str = r#"
import os, time
def handler(event, context):
    mine = "/tmp/" + context.aws_request_id
    open(mine, "w").close()
    time.sleep(event.get("s", 0.3))
    others = [f for f in os.listdir("/tmp") if f != os.path.basename(mine)]
    os.remove(mine)
    return {"instance": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"], "others_in_tmp": others}
"#;

#[tokio::test]
async fn concurrent_requests_spread_over_instances_and_idle_ones_are_reaped() {
    let s = Server::start_with(&["--keep-alive", "2s"]);
    let code = code_dir(&[("app.py", CONCURRENT_APP)]);
    deploy(&s, "conc", "python3", Some("app.handler"), code.path(), &[]);
    let event = json!({"s": 0.3});
    let calls = (0..100).map(|_| invoke(&s, "conc", &event));
    let results = futures::future::join_all(calls).await;
    let mut instances = std::collections::HashSet::new();
    for r in results {
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["others_in_tmp"], json!([]), "an instance's /tmp is its own: {v}");
        instances.insert(v["instance"].as_str().unwrap().to_string());
    }
    assert!(instances.len() >= 10, "100 concurrent calls of 300 ms ran on {} instances", instances.len());
    let recs = s.invocations("conc").await;
    assert_eq!(recs.len(), 100);
    assert_eq!(recs.iter().filter(|r| common::new_instance(r)).count(), instances.len());

    // After the keep-alive, idle instances are gone: the next call gets a new one again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(invoke(&s, "conc", &json!({"s": 0})).await.status(), 200);
    assert!(common::new_instance(&s.invocations("conc").await[0]));

    // Beyond max_instances, requests wait for an instance to come free, up to the function's
    // timeout (1.5 s): the second of these 1 s calls gets the instance after the first, the
    // last two give up with 429.
    deploy(&s, "one", "python3", Some("app.handler"), code.path(), &["--max-instances", "1", "--timeout", "1500ms"]);
    let event = json!({"s": 1});
    let calls = (0..4).map(|_| invoke(&s, "one", &event));
    let mut statuses: Vec<u16> = futures::future::join_all(calls).await.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429, 429], "{statuses:?}");
    assert!(s.invocations("one").await.iter().any(|r| r["outcome"] == "throttled"));
}

#[tokio::test]
async fn the_example_manifest_deploys_wasm_python_and_node_functions_and_a_service() {
    let s = Server::start();
    common::guest("hello"); // the wasm example is built once per test run
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hangar.toml");
    let out = s.ok(&["deploy", "-f", manifest.to_str().unwrap()]);
    assert!(out.contains("py-greeter") && out.contains("node-counter"), "{out}");
    let r: Value = reqwest::get(format!("{}/fn/default/py-greeter/?name=Ada", s.url)).await.unwrap().json().await.unwrap();
    assert_eq!(r["message"], "Hello, Ada!");
    let r: Value = reqwest::get(format!("{}/fn/default/node-counter/x", s.url)).await.unwrap().json().await.unwrap();
    assert_eq!((r["served"].as_u64(), r["path"].as_str()), (Some(1), Some("/x")));
    // The service: its image built and imported by the manifest, public, with a volume.
    let page = reqwest::get(format!("{}/svc/default/web/", s.url)).await.unwrap().text().await.unwrap();
    assert!(page.contains("Hello from a Hangar service"), "{page}");
    let visit = reqwest::get(format!("{}/svc/default/web/cgi-bin/visits", s.url)).await.unwrap().text().await.unwrap();
    assert!(visit.starts_with("visit 1, served by web on port 8080"), "{visit}");
    let again = s.ok(&["deploy", "-f", manifest.to_str().unwrap()]);
    assert_eq!(again.matches("unchanged").count(), 4, "a second apply changes nothing:\n{again}");
}

const FETCH_APP: &str = r#"
import urllib.request, urllib.error
def handler(event, context):
    out = {}
    for name, url in event["urls"].items():
        try:
            out[name] = urllib.request.urlopen(url, timeout=5).read().decode()
        except urllib.error.HTTPError as e:
            out[name] = e.code
        except Exception as e:
            out[name] = type(e).__name__
    return out
"#;

/// Node's built-in clients (http, fetch), which ignore HTTP_PROXY unless the shim routes them.
const NODE_FETCH_APP: &str = r#"
const http = require("node:http");
const get = (url) => new Promise((resolve) => {
  http.get(url, (res) => {
    let body = "";
    res.on("data", (c) => (body += c));
    res.on("end", () => resolve(body));
  }).on("error", (e) => resolve("error: " + e.message));
});
exports.handler = async (event) => {
  const out = {};
  for (const [name, url] of Object.entries(event.urls)) {
    out["http_" + name] = await get(url);
    out["fetch_" + name] = await fetch(url).then((r) => r.text(), (e) => "error: " + (e.cause ? e.cause.message : e.message));
  }
  return out;
};
"#;

/// A plain HTTP server on the host's loopback answering `hello from the host`.
fn host_http_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 19\r\nconnection: close\r\n\r\nhello from the host");
        }
    });
    port
}

#[tokio::test]
async fn outbound_access_is_only_what_the_function_was_granted() {
    let s = Server::start();
    let allowed = host_http_server();
    let other = host_http_server();
    let code = code_dir(&[("app.py", FETCH_APP)]);
    let urls = json!({"urls": {"allowed": format!("http://127.0.0.1:{allowed}/"), "other": format!("http://127.0.0.1:{other}/")}});
    deploy(&s, "granted", "python3", Some("app.handler"), code.path(), &["--allow-outbound", &format!("127.0.0.1:{allowed}")]);
    let v: Value = invoke(&s, "granted", &urls).await.json().await.unwrap();
    assert_eq!(v["allowed"], "hello from the host", "{v}");
    assert_eq!(v["other"], 403, "hosts outside allow_outbound are refused: {v}");
    deploy(&s, "closed", "python3", Some("app.handler"), code.path(), &[]);
    let v: Value = invoke(&s, "closed", &urls).await.json().await.unwrap();
    assert_eq!(v["allowed"], "URLError", "no grant, no network: {v}");

    // Node's own http and fetch go through the same grant.
    let js = code_dir(&[("index.js", NODE_FETCH_APP)]);
    deploy(&s, "js-granted", "nodejs", Some("index.handler"), js.path(), &["--allow-outbound", &format!("127.0.0.1:{allowed}")]);
    let v: Value = invoke(&s, "js-granted", &urls).await.json().await.unwrap();
    assert_eq!(v["http_allowed"], "hello from the host", "{v}");
    assert_eq!(v["fetch_allowed"], "hello from the host", "{v}");
    for k in ["http_other", "fetch_other"] {
        let text = v[k].as_str().unwrap_or_default();
        assert!(text.starts_with("error: ") && text.contains("refused"), "{k}: hosts outside allow_outbound are refused: {v}");
    }
    deploy(&s, "js-closed", "nodejs", Some("index.handler"), js.path(), &[]);
    let v: Value = invoke(&s, "js-closed", &urls).await.json().await.unwrap();
    for k in ["http_allowed", "fetch_allowed"] {
        assert!(v[k].as_str().unwrap_or_default().starts_with("error: "), "{k}: no grant, no network: {v}");
    }
}

/// The cgroups (pids controller) this server made for a function: `(name, pids)`.
fn cgroups_of(s: &Server, function: &str) -> Vec<(String, Vec<i32>)> {
    use sha2::Digest;
    let canonical = std::fs::canonicalize(s.dir.path()).unwrap();
    let sid = hex::encode(&sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes())[..5]);
    let base = Path::new("/sys/fs/cgroup/pids").join(format!("hangar-{sid}"));
    let base = if base.exists() { base } else { Path::new("/sys/fs/cgroup").join(format!("hangar-{sid}")) };
    let mut out = Vec::new();
    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.split('-').nth(1) == Some(function) {
            let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
            out.push((name, procs.lines().filter_map(|l| l.trim().parse().ok()).collect()));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_crashed_zygote_restarts_and_a_killed_server_leaves_nothing_behind() {
    // Without prewarmed zygotes, every cgroup of the function is named after it (a prewarmed
    // zygote's is named after its runtime), so the test can find them all.
    let mut s = Server::start_with(&["--prewarm", "0"]);
    let code = code_dir(&[("app.py", CONCURRENT_APP)]);
    deploy(&s, "rec", "python3", Some("app.handler"), code.path(), &[]);
    let event = json!({"s": 0.3});
    for r in futures::future::join_all((0..3).map(|_| invoke(&s, "rec", &event))).await {
        assert_eq!(r.status(), 200);
    }
    // Kill the zygote and every instance parent (the pod's cgroup): the next call still works.
    let groups = cgroups_of(&s, "rec");
    let (_, zygote_pids) = groups.iter().find(|(n, _)| n.matches('-').count() == 1).expect("the zygote's cgroup").clone();
    assert!(!zygote_pids.is_empty());
    for pid in zygote_pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = invoke(&s, "rec", &json!({"s": 0})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // SIGKILL the server: its next start removes what the last run left.
    s.kill();
    let stale = cgroups_of(&s, "rec");
    let stale_instance = stale.iter().map(|(n, _)| n.clone()).find(|n| n.rsplit('-').next().and_then(|k| k.parse::<u32>().ok()).is_some_and(|k| k >= 2));
    let stale_pids: Vec<i32> = stale.iter().flat_map(|(_, p)| p.clone()).collect();
    assert!(stale_instance.is_some() && !stale_pids.is_empty(), "a killed server leaves its cgroups and processes: {stale:?}");
    s.restart_after_stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = cgroups_of(&s, "rec");
    assert!(!fresh.iter().any(|(n, _)| Some(n) == stale_instance.as_ref()), "the last run's instance cgroup is gone: {fresh:?}");
    assert!(fresh.len() <= 2, "only the new zygote and its spare: {fresh:?}");
    for pid in stale_pids {
        // Gone, or dead and waiting for the host's init to reap it (runc's detached containers
        // are reparented to it).
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let state = status.lines().find(|l| l.starts_with("State:")).unwrap_or("");
        assert!(status.is_empty() || state.contains("zombie"), "process {pid} of the last run still runs: {status}");
    }
    assert_eq!(invoke(&s, "rec", &json!({"s": 0})).await.status(), 200);
}
