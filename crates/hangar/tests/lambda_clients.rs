//! Unmodified Lambda runtime clients on the `provided` runtime: a Rust bootstrap built with the
//! `lambda_runtime` crate from crates.io, and a Python handler run by AWS's `awslambdaric`
//! (installed with pip). Both are built or installed by the test; if that fails, the test
//! fails and says why.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use serde_json::{Value, json};

/// Builds `bench/lambda-bootstrap` (cached under the workspace's target directory) and returns
/// the directory of its binaries (`bootstrap`, `http-bootstrap`).
fn rust_bootstraps() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = root.join("target/lambda-clients");
    let out = Command::new("cargo")
        .args(["build", "--release", "--manifest-path"])
        .arg(root.join("bench/lambda-bootstrap/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("running cargo");
    assert!(out.status.success(), "building a lambda_runtime bootstrap from crates.io failed:\n{}", String::from_utf8_lossy(&out.stderr));
    target.join("release")
}

async fn invoke(s: &Server, name: &str, event: &Value) -> reqwest::Response {
    s.http().post(format!("{}/v1/functions/{name}/invoke", s.url)).bearer_auth(&s.admin_key).json(event).send().await.unwrap()
}

#[tokio::test]
async fn a_lambda_runtime_rust_bootstrap_runs_unchanged() {
    let bin = rust_bootstraps().join("bootstrap");
    let code = tempfile::tempdir().unwrap();
    std::fs::copy(&bin, code.path().join("bootstrap")).unwrap();
    let s = Server::start();
    s.ok(&["fn", "deploy", "rs", "--runtime", "provided", "--code", code.path().to_str().unwrap(), "--timeout", "10s"]);
    for i in 0..3 {
        let r = invoke(&s, "rs", &json!({"n": i})).await;
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-hangar-invocation-id"].to_str().unwrap().to_string();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["echo"], json!({"n": i}));
        assert_eq!(v["request_id"], id);
        assert!(v["arn"].as_str().unwrap().ends_with(":function:default_rs"), "{v}");
        assert!(v["deadline"].as_u64().unwrap() > 0);
    }
    let r = invoke(&s, "rs", &json!({"fail": true})).await;
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert!(e["errorMessage"].as_str().unwrap().contains("asked to fail"), "{e}");
    let recs = s.invocations("rs").await;
    assert_eq!(recs.iter().filter(|r| common::new_instance(r)).count(), 1);
    assert!(recs.iter().any(|r| r["logs"].as_str().unwrap().contains("rust handler got {\"n\":0}")));
}

#[tokio::test]
async fn an_awslambdaric_handler_runs_unchanged() {
    let code = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
        .arg(code.path())
        .arg("awslambdaric")
        .output()
        .expect("running python3 -m pip");
    assert!(
        out.status.success(),
        "installing awslambdaric with pip failed (network or PyPI unreachable?); this test needs it:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        code.path().join("app.py"),
        "import os\ndef handler(event, context):\n    print('ric handler', event)\n    return {'ric': event['x'], 'request_id': context.aws_request_id, 'name': context.function_name, 'trace': os.environ.get('_X_AMZN_TRACE_ID')}\n",
    )
    .unwrap();
    let bootstrap = code.path().join("bootstrap");
    std::fs::write(&bootstrap, "#!/bin/sh\ncd /var/task\nexport PYTHONPATH=/var/task\nexec python3 -m awslambdaric \"$_HANDLER\"\n").unwrap();
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Server::start();
    s.ok(&["fn", "deploy", "ric", "--runtime", "provided", "--handler", "app.handler", "--code", code.path().to_str().unwrap(), "--timeout", "20s"]);
    let r = invoke(&s, "ric", &json!({"x": 42})).await;
    let status = r.status();
    let id = r.headers().get("x-hangar-invocation-id").map(|v| v.to_str().unwrap().to_string());
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}\nlogs: {}", s.invocations("ric").await[0]["logs"]);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ric"], 42);
    assert_eq!(Some(v["request_id"].as_str().unwrap().to_string()), id);
    assert_eq!(v["name"], "ric");
    let v: Value = invoke(&s, "ric", &json!({"x": 7})).await.json().await.unwrap();
    assert_eq!(v["ric"], 7);
    // The caller's trace reaches the handler as X-Ray's header, set by awslambdaric itself
    // from the Runtime API's `Lambda-Runtime-Trace-Id`.
    let r = s
        .http()
        .post(format!("{}/v1/functions/ric/invoke", s.url))
        .bearer_auth(&s.admin_key)
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .json(&json!({"x": 1}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let trace = v["trace"].as_str().unwrap_or_default();
    assert!(trace.starts_with("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=") && trace.ends_with(";Sampled=1"), "{v}");
}

#[tokio::test]
async fn a_lambda_http_adapter_serves_function_urls_unchanged() {
    let bin = rust_bootstraps().join("http-bootstrap");
    let code = tempfile::tempdir().unwrap();
    std::fs::copy(&bin, code.path().join("bootstrap")).unwrap();
    let s = Server::start();
    s.ok(&["fn", "deploy", "web", "--runtime", "provided", "--code", code.path().to_str().unwrap(), "--public"]);
    let r = s.http().put(format!("{}/fn/default/web/items/7?who=Ada", s.url)).header("x-test", "yes").body("payload").send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-adapter"], "lambda_http");
    assert_eq!(r.headers()["set-cookie"], "seen=1; Path=/");
    assert_eq!(r.text().await.unwrap(), "PUT /items/7 who=Ada x-test=yes body=payload");
}
