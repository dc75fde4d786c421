//! Hangar's Python and Node.js shims, run by the real interpreters against the Runtime API.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use hangar_lambda::runtime_api::{Answer, Invocation, RuntimeApi};
use serde_json::{Value, json};

fn interpreter(name: &str) -> String {
    let ok = Command::new(name).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "`{name}` is needed for this test and was not found on PATH; install it (python3, nodejs)");
    name.to_string()
}

fn invocation(id: &str, event: Value) -> Invocation {
    Invocation {
        request_id: id.into(),
        payload: Bytes::from(event.to_string()),
        deadline_ms: hangar_api_now_ms() + 30_000,
        function_arn: "arn:aws:lambda:local:000000000000:function:shimtest".into(),
        trace_id: "Root=1-5759e988-bd862e3fe1be46a994272793".into(),
        client_context: None,
        cognito_identity: None,
    }
}

fn hangar_api_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

struct Instance {
    api: RuntimeApi,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `interp shim` with the handler files in a task root.
async fn start(interp: &str, shim: &str, shim_name: &str, files: &[(&str, &str)], handler: &str) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("task");
    std::fs::create_dir(&root).unwrap();
    for (name, text) in files {
        std::fs::write(root.join(name), text).unwrap();
    }
    let shim_path = dir.path().join(shim_name);
    std::fs::write(&shim_path, shim).unwrap();
    let api = RuntimeApi::start().await.unwrap();
    let child = Command::new(interpreter(interp))
        .arg(&shim_path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", api.address())
        .env("_HANDLER", handler)
        .env("LAMBDA_TASK_ROOT", &root)
        .env("AWS_LAMBDA_FUNCTION_NAME", "shimtest")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .current_dir(Path::new(&root))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Instance { api, child, _dir: dir }
}

async fn ask(i: &Instance, id: &str, event: Value) -> Answer {
    tokio::time::timeout(Duration::from_secs(20), i.api.invoke(invocation(id, event))).await.expect("the shim answered in time").expect("the shim is running")
}

fn json_of(a: Answer) -> Value {
    match a {
        Answer::Response(b) => serde_json::from_slice(&b).unwrap(),
        other => panic!("expected a response, got {other:?}"),
    }
}

fn error_of(a: Answer) -> Value {
    match a {
        Answer::Error(e) | Answer::InitError(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Each case (handler, task files, expected `errorType`) must answer its first invocation with
/// an `init/error` of that type.
async fn assert_init_errors(interp: &str, shim: &str, shim_name: &str, cases: impl IntoIterator<Item = (&str, Vec<(&str, &str)>, &str)>) {
    for (handler, files, want) in cases {
        let i = start(interp, shim, shim_name, &files, handler).await;
        let a = ask(&i, "r1", json!({})).await;
        assert!(matches!(a, Answer::InitError(_)), "{interp} {handler}: {a:?}");
        assert_eq!(error_of(a)["errorType"], want, "{interp} {handler}");
    }
}

const PY_APP: &str = r#"
import os
calls = 0
def handler(event, context):
    global calls
    calls += 1
    if event.get("fail"):
        raise ValueError("asked to fail")
    if event.get("unserializable"):
        return {1, 2}
    if event.get("huge"):
        return "x" * (7 * 1024 * 1024)
    print("handling", context.aws_request_id)
    return {
        "event": event, "request_id": context.aws_request_id, "function_name": context.function_name,
        "memory": context.memory_limit_in_mb, "arn": context.invoked_function_arn,
        "remaining_ok": 0 < context.get_remaining_time_in_millis() <= 30000, "calls": calls,
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
    }
"#;

#[tokio::test]
async fn python_handler_gets_event_and_context() {
    let i = start("python3", hangar_lambda::PYTHON_SHIM, "bootstrap.py", &[("app.py", PY_APP)], "app.handler").await;
    let v = json_of(ask(&i, "r1", json!({"name": "Ada"})).await);
    assert_eq!(v["event"], json!({"name": "Ada"}));
    assert_eq!(v["request_id"], "r1");
    assert_eq!(v["function_name"], "shimtest");
    assert_eq!(v["memory"], "256");
    assert_eq!(v["arn"], "arn:aws:lambda:local:000000000000:function:shimtest");
    assert_eq!(v["remaining_ok"], true);
    assert_eq!(v["trace"], "Root=1-5759e988-bd862e3fe1be46a994272793");
    // The module is imported once: state survives between invocations on one instance.
    assert_eq!(json_of(ask(&i, "r2", json!({})).await)["calls"], 2);

    let e = error_of(ask(&i, "r3", json!({"fail": true})).await);
    assert_eq!(e["errorType"], "ValueError");
    assert_eq!(e["errorMessage"], "asked to fail");
    assert!(!e["stackTrace"].as_array().unwrap().is_empty());
    let e = error_of(ask(&i, "r4", json!({"unserializable": true})).await);
    assert_eq!(e["errorType"], "Runtime.MarshalError");
    let e = error_of(ask(&i, "r5", json!({"huge": true})).await);
    assert_eq!(e["errorType"], "Function.ResponseSizeTooLarge");
    // Still serving after errors.
    assert_eq!(json_of(ask(&i, "r6", json!({})).await)["request_id"], "r6");
}

#[tokio::test]
async fn python_init_errors_are_reported() {
    let cases = [
        ("app.handler", vec![("other.py", "x = 1\n")], "Runtime.ImportModuleError"),
        ("app.nothere", vec![("app.py", "def handler(e, c):\n    return 1\n")], "Runtime.HandlerNotFound"),
        ("app.handler", vec![("app.py", "raise RuntimeError('boom at import')\n")], "Runtime.ImportModuleError"),
        ("app.handler", vec![("app.py", "def handler(:\n")], "Runtime.UserCodeSyntaxError"),
        ("nodot", vec![("app.py", "")], "Runtime.MalformedHandlerName"),
    ];
    assert_init_errors("python3", hangar_lambda::PYTHON_SHIM, "bootstrap.py", cases).await;
}

const NODE_CJS: &str = r#"
let calls = 0;
exports.handler = async (event, context) => {
  calls += 1;
  if (event.fail) throw new TypeError("asked to fail");
  if (event.bigint) return { n: 10n };
  return { event, requestId: context.awsRequestId, functionName: context.functionName,
           memory: context.memoryLimitInMB, remainingOk: context.getRemainingTimeInMillis() > 0, calls };
};
exports.callback = (event, context, cb) => setTimeout(() => cb(null, { via: "callback", event }), 5);
exports.plain = (event) => ({ via: "plain", event });
"#;

#[tokio::test]
async fn node_handler_gets_event_and_context() {
    let i = start("node", hangar_lambda::NODE_SHIM, "bootstrap.js", &[("index.js", NODE_CJS)], "index.handler").await;
    let v = json_of(ask(&i, "r1", json!({"name": "Ada"})).await);
    assert_eq!(v["event"], json!({"name": "Ada"}));
    assert_eq!(v["requestId"], "r1");
    assert_eq!(v["functionName"], "shimtest");
    assert_eq!(v["memory"], "256");
    assert_eq!(v["remainingOk"], true);
    assert_eq!(json_of(ask(&i, "r2", json!({})).await)["calls"], 2);
    let e = error_of(ask(&i, "r3", json!({"fail": true})).await);
    assert_eq!(e["errorType"], "TypeError");
    assert_eq!(e["errorMessage"], "asked to fail");
    let e = error_of(ask(&i, "r4", json!({"bigint": true})).await);
    assert_eq!(e["errorType"], "Runtime.MarshalError");

    for (handler, via) in [("index.callback", "callback"), ("index.plain", "plain")] {
        let i = start("node", hangar_lambda::NODE_SHIM, "bootstrap.js", &[("index.js", NODE_CJS)], handler).await;
        assert_eq!(json_of(ask(&i, "r1", json!({"k": 1})).await), json!({"via": via, "event": {"k": 1}}));
    }
    let esm = "export const handler = async (event) => ({ esm: true, event });\n";
    let i = start("node", hangar_lambda::NODE_SHIM, "bootstrap.js", &[("index.mjs", esm)], "index.handler").await;
    assert_eq!(json_of(ask(&i, "r1", json!(1)).await), json!({"esm": true, "event": 1}));
}

#[tokio::test]
async fn node_init_errors_are_reported() {
    let cases = [
        ("index.handler", vec![("other.js", "")], "Runtime.ImportModuleError"),
        ("index.nothere", vec![("index.js", "exports.handler = () => 1;")], "Runtime.HandlerNotFound"),
        ("index.handler", vec![("index.js", "exports.handler = (;")], "Runtime.UserCodeSyntaxError"),
        ("index.handler", vec![("index.js", "throw new Error('boom at load');")], "Runtime.ImportModuleError"),
    ];
    assert_init_errors("node", hangar_lambda::NODE_SHIM, "bootstrap.js", cases).await;
}
