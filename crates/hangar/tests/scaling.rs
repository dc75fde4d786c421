//! Scaling limits through the real binary: a function's reserved concurrency and the
//! namespace's concurrency limit throttle with 429 and `Retry-After`, and nothing above the
//! limit runs. Uses Python handlers (root, runc and python3, installed by scripts/test.sh).

mod common;

use common::Server;
use serde_json::{Value, json};

const SLOW: &str = r#"
import time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"ok": True}
"#;

/// Sends `n` concurrent invokes of `name` that each sleep `secs`; returns their statuses and
/// `Retry-After` headers.
async fn burst(s: &Server, name: &str, n: usize, secs: f64) -> Vec<(u16, Option<String>)> {
    let calls = (0..n).map(|_| {
        let req = s.http().post(format!("{}/v1/functions/{name}/invoke", s.url)).bearer_auth(&s.admin_key).json(&json!({"sleep": secs}));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()))
        }
    });
    futures::future::join_all(calls).await
}

#[tokio::test]
async fn reserved_concurrency_and_namespace_limits_throttle_with_retry_after() {
    let mut s = Server::start_with(&["--namespace-concurrency", "3"]);
    let _one = common::python_fn(&s, "one", SLOW, "handler", &["--reserved-concurrency", "1"]);
    let _many = common::python_fn(&s, "many", SLOW, "handler", &[]);
    let _off = common::python_fn(&s, "off", SLOW, "handler", &["--reserved-concurrency", "0"]);
    // Warm both, so the burst measures limits, not cold starts.
    assert!(burst(&s, "one", 1, 0.0).await.iter().all(|(st, _)| *st == 200));
    assert!(burst(&s, "many", 1, 0.0).await.iter().all(|(st, _)| *st == 200));

    // Reserved concurrency 1: of 3 at once, one runs and two are throttled.
    let got = burst(&s, "one", 3, 1.0).await;
    assert_eq!(got.iter().filter(|(st, _)| *st == 200).count(), 1, "{got:?}");
    assert!(got.iter().filter(|(st, _)| *st == 429).all(|(_, ra)| ra.as_deref() == Some("1")), "{got:?}");
    let r = s.http().post(format!("{}/v1/functions/off/invoke", s.url)).bearer_auth(&s.admin_key).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 429, "reserved concurrency 0 throttles everything");
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("reserved concurrency of 0"), "{e}");

    // The namespace runs at most 3 at once, whatever the functions.
    let got = burst(&s, "many", 5, 1.0).await;
    assert_eq!(got.iter().filter(|(st, _)| *st == 200).count(), 3, "{got:?}");
    assert_eq!(got.iter().filter(|(st, ra)| *st == 429 && ra.as_deref() == Some("1")).count(), 2, "{got:?}");

    // Throttles are recorded, not billed; nothing above the limits ran.
    let records = s.invocations("many").await;
    let throttled: Vec<&Value> = records.iter().filter(|r| r["outcome"] == "throttled").collect();
    assert_eq!(throttled.len(), 2);
    assert!(throttled.iter().all(|r| r["billed_ms"] == 0 && r["status"] == 429));
    assert!(throttled[0]["error"].as_str().unwrap().contains("namespace `default`"), "{}", throttled[0]);
    assert_eq!(records.iter().filter(|r| r["outcome"] == "ok").count(), 4, "the warm-up and three in the burst");
    let err = s.fails(
        &["fn", "deploy", "x", "--runtime", "python3", "--handler", "app.handler", "--code", _many.path().to_str().unwrap(), "--reserved-concurrency", "5000"],
        1,
    );
    assert!(err.contains("reserved_concurrency"), "{err}");

    // A namespace with its own limit (1), then back to the server's (3).
    s.ok(&["ns", "create", "team", "--max-concurrency", "1"]);
    let _team = common::python_fn(&s, "work", SLOW, "handler", &["-n", "team"]);
    let team_burst = |n: usize| {
        let calls = (0..n)
            .map(|_| s.http().post(format!("{}/v1/functions/work/invoke?namespace=team", s.url)).bearer_auth(&s.admin_key).json(&json!({"sleep": 1.0})).send());
        async move { futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect::<Vec<u16>>() }
    };
    let mut got = team_burst(3).await;
    got.sort();
    assert_eq!(got, [200, 429, 429]);
    let listed = s.ok(&["ns", "ls"]);
    assert!(listed.lines().any(|l| l.contains("team") && l.contains(" 1 ")), "{listed}");
    let out = s.ok(&["ns", "set", "team", "--max-concurrency", "default"]);
    assert!(out.contains("server default"), "{out}");
    let got = team_burst(3).await;
    assert!(got.iter().all(|st| *st == 200), "{got:?}");
    // The namespace's own limit survives a restart.
    s.ok(&["ns", "set", "team", "--max-concurrency", "1"]);
    s.restart();
    let team_burst = |n: usize| {
        let calls = (0..n)
            .map(|_| s.http().post(format!("{}/v1/functions/work/invoke?namespace=team", s.url)).bearer_auth(&s.admin_key).json(&json!({"sleep": 1.0})).send());
        async move { futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect::<Vec<u16>>() }
    };
    let mut got = team_burst(3).await;
    got.sort();
    assert_eq!(got, [200, 429, 429], "after a restart");
    let r = s.http().patch(format!("{}/v1/namespaces/team", s.url)).bearer_auth(&s.admin_key).json(&json!({"max_concurrency": 0})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    s.fails(&["ns", "set", "ghost", "--max-concurrency", "5"], 4);
}

/// A busybox httpd image: `/` answers at once, `/cgi-bin/slow` after 2 seconds.
fn slow_image(dir: &std::path::Path) -> String {
    let slow = b"#!/bin/busybox sh\n/bin/busybox sleep 2\necho Content-Type: text/plain\necho\necho slow done\n";
    common::oci::busybox_httpd(dir, "slow", &[("www/index.html", b"hello\n", 0o644), ("www/cgi-bin/slow", slow, 0o755)])
}

async fn instances(s: &Server, name: &str) -> (usize, Value) {
    let v: Value = s.get(&format!("/v1/services/{name}")).send().await.unwrap().json().await.unwrap();
    (v["instances"].as_array().map_or(0, Vec::len), v)
}

/// Polls until the service has `n` instances.
async fn until_instances(s: &Server, name: &str, n: usize, within: std::time::Duration) -> Value {
    common::eventually(&format!("{name} having {n} instances"), within, || async move {
        let (have, v) = instances(s, name).await;
        if have == n { Ok(v) } else { Err(v.to_string()) }
    })
    .await
}

#[tokio::test]
async fn services_scale_with_load_and_back_and_from_zero() {
    use std::time::Duration;
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    s.ok(&["image", "import", &slow_image(dir.path()), "--name", "slow:1"]);

    // One request per instance: six slow requests at once ask for six, max is three.
    s.ok(&["svc", "deploy", "busy", "--image", "slow:1", "--port", "8080", "--min", "1", "--max", "3", "--concurrency", "1", "--scale-window", "2s"]);
    let load = (0..6).map(|_| s.get("/svc/default/busy/cgi-bin/slow").send());
    let (answers, grown) = tokio::join!(futures::future::join_all(load), until_instances(&s, "busy", 3, Duration::from_secs(10)));
    assert!(answers.into_iter().all(|r| r.unwrap().status() == 200), "no request failed while scaling");
    assert_eq!(grown["scaling"]["desired"], 3, "{grown}");
    assert_eq!(grown["scaling"]["panic"], true, "a burst of 6 on 1 instance is a panic: {grown}");
    // Quiet again: back to min after the panic and a stable window pass.
    let v = until_instances(&s, "busy", 1, Duration::from_secs(20)).await;
    assert_eq!(v["scaling"]["panic"], false, "{v}");
    assert_eq!(s.get("/svc/default/busy/").send().await.unwrap().status(), 200);

    // min 0: idle for a window → no instance; a request waits for one to start and succeeds.
    s.ok(&["svc", "deploy", "lazy", "--image", "slow:1", "--port", "8080", "--min", "0", "--max", "2", "--scale-window", "1s"]);
    until_instances(&s, "lazy", 0, Duration::from_secs(10)).await;
    let t = std::time::Instant::now();
    let r = s.get("/svc/default/lazy/").send().await.unwrap();
    assert_eq!(r.status(), 200, "the request was held until an instance was ready");
    assert_eq!(r.text().await.unwrap(), "hello\n");
    eprintln!("scale from zero answered in {:?}", t.elapsed());
    let (n, _) = instances(&s, "lazy").await;
    assert_eq!(n, 1);
    // Bad scaling settings are refused.
    for args in [&["--min", "0", "--max", "0"][..], &["--concurrency", "0"], &["--scale-window", "10ms"], &["--min", "101"]] {
        let mut all = vec!["svc", "deploy", "bad", "--image", "slow:1"];
        all.extend_from_slice(args);
        let out = s.cli(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
    }
}

const COUNTER: &str = r#"
import os, time
COUNT = 0

def handler(event, context):
    global COUNT
    COUNT += 1
    time.sleep(event.get("sleep", 0))
    return {"count": COUNT, "instance": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"]}
"#;

async fn invoke_json(s: &Server, name: &str, event: Value) -> (String, Value) {
    let r = s.http().post(format!("{}/v1/functions/{name}/invoke", s.url)).bearer_auth(&s.admin_key).json(&event).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-hangar-invocation-id"].to_str().unwrap().to_string();
    (id, r.json().await.unwrap())
}

async fn start_kind(s: &Server, id: &str) -> String {
    let rec: Value = s.get(&format!("/v1/invocations/{id}")).send().await.unwrap().json().await.unwrap();
    rec["start"].as_str().unwrap().to_string()
}

async fn counts(s: &Server, name: &str) -> Value {
    let f: Value = s.get(&format!("/v1/functions/{name}")).send().await.unwrap().json().await.unwrap();
    f["instances"].clone()
}

/// Polls a function's instance counts until `check` holds.
async fn until_counts(s: &Server, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    common::eventually(&format!("{name}'s instance counts matching"), std::time::Duration::from_secs(20), || async {
        let c = counts(s, name).await;
        if check(&c) { Ok(c) } else { Err(c.to_string()) }
    })
    .await
}

#[tokio::test]
async fn paused_instances_keep_their_state_and_provisioned_ones_serve_first_calls() {
    let s = Server::start();
    // Paused after 200 ms idle, resumed by the next call with its memory as it was.
    let _p = common::python_fn(&s, "pausy", COUNTER, "handler", &["--pause-after", "200ms"]);
    let (id, first) = invoke_json(&s, "pausy", json!({})).await;
    assert_eq!(first["count"].as_i64(), Some(1));
    assert!(["cold", "prewarmed"].contains(&start_kind(&s, &id).await.as_str()));
    until_counts(&s, "pausy", |c| c["paused"] == 1 && c["idle"] == 0).await;
    let (id, second) = invoke_json(&s, "pausy", json!({})).await;
    assert_eq!(second["count"], 2, "the resumed instance kept its module state");
    assert_eq!(second["instance"], first["instance"]);
    assert_eq!(start_kind(&s, &id).await, "resumed");
    // Right after a call it is warm, not paused.
    let (id, _) = invoke_json(&s, "pausy", json!({})).await;
    assert_eq!(start_kind(&s, &id).await, "warm");

    // Two provisioned instances exist before any call and serve the first two at once.
    let _q = common::python_fn(&s, "ready", COUNTER, "handler", &["--provisioned", "2", "--pause-after", "100ms"]);
    until_counts(&s, "ready", |c| c["provisioned"] == 2 && c["idle"] == 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(counts(&s, "ready").await["paused"], 0, "provisioned instances are never paused");
    let calls = (0..2).map(|_| invoke_json(&s, "ready", json!({"sleep": 0.3})));
    let done = futures::future::join_all(calls).await;
    for (id, v) in &done {
        assert_eq!(v["count"], 1);
        assert_eq!(start_kind(&s, id).await, "provisioned");
    }
    // `fn scale` changes the policy in a new revision.
    let out = s.ok(&["fn", "scale", "ready", "--provisioned", "0", "--min", "1", "--max", "5"]);
    assert!(out.contains("min 1 max 5 provisioned 0"), "{out}");
    let f: Value = s.get("/v1/functions/ready").send().await.unwrap().json().await.unwrap();
    assert_eq!((f["revision"].as_u64(), f["config"]["min_instances"].as_u64()), (Some(2), Some(1)));
    let err = s.fails(&["fn", "scale", "ready", "--provisioned", "9"], 1);
    assert!(err.contains("more than max_instances"), "{err}");
    let err = s.fails(&["fn", "deploy", "w", "--code", common::guest("hello").to_str().unwrap(), "--provisioned", "1"], 1);
    assert!(err.contains("process runtimes"), "{err}");
}

#[tokio::test]
async fn min_instances_outlive_the_keep_alive() {
    let s = Server::start();
    let _a = common::python_fn(&s, "kept", COUNTER, "handler", &["--min-instances", "2", "--keep-alive", "1s"]);
    let _b = common::python_fn(&s, "gone", COUNTER, "handler", &["--keep-alive", "1s"]);
    until_counts(&s, "kept", |c| c["idle"].as_u64().unwrap_or(0) + c["paused"].as_u64().unwrap_or(0) + c["spare"].as_u64().unwrap_or(0) >= 2).await;
    invoke_json(&s, "gone", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let kept = counts(&s, "kept").await;
    assert!(kept["idle"].as_u64().unwrap() + kept["paused"].as_u64().unwrap() + kept["spare"].as_u64().unwrap() >= 2, "{kept}");
    let gone = counts(&s, "gone").await;
    assert_eq!((gone["idle"].as_u64(), gone["paused"].as_u64()), (Some(0), Some(0)), "{gone}");
}

#[tokio::test]
async fn a_burst_of_500_cold_calls_all_succeed_then_instances_go_back_to_zero() {
    let s = Server::start();
    let _py = common::python_fn(&s, "py", SLOW, "handler", &["--keep-alive", "2s"]);
    let t = std::time::Instant::now();
    let got = burst(&s, "py", 500, 0.05).await;
    let took = t.elapsed();
    assert!(got.iter().all(|(st, _)| *st == 200), "{:?}", got.iter().filter(|(st, _)| *st != 200).collect::<Vec<_>>());
    eprintln!("500 cold python calls answered in {took:?}");
    let records = s.invocations("py").await;
    assert_eq!(records.len(), 500);
    let cold = records.iter().filter(|r| common::new_instance(r)).count();
    assert!((2..=100).contains(&cold), "instances scaled up to at most max_instances (100): {cold} cold starts");
    // After the keep-alive nothing is left running but the spare sandbox.
    until_counts(&s, "py", |c| c["busy"] == 0 && c["idle"] == 0 && c["paused"] == 0).await;

    s.deploy("hello", "hello", &[]);
    let calls = (0..500).map(|_| s.get("/fn/default/hello/").send());
    let answers = futures::future::join_all(calls).await;
    assert!(answers.into_iter().all(|r| r.unwrap().status() == 200));
    let recs: Value = s.get("/v1/invocations?function=hello&limit=1000").send().await.unwrap().json().await.unwrap();
    let recs = recs["items"].as_array().unwrap();
    assert_eq!(recs.len(), 500);
    assert!(recs.iter().filter(|r| r["start"] == "cold").count() >= 1);
    let metrics = s.get("/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "hangar_instances{namespace=\"default\",function=\"hello\"} 0"), "no wasm instance is left:\n{metrics}");
}

const ENV_APP: &str = r#"
import os

def handler(event, context):
    seen = {k: os.environ.get(k) for k in ["AWS_LAMBDA_FUNCTION_NAME", "COLOR", "HANGAR_MODE", "LAMBDA_TASK_ROOT"]}
    seen["files"] = sorted(os.listdir("/var/task"))
    return seen
"#;

const NODE_APP: &str = "exports.handler = async () => ({ name: process.env.AWS_LAMBDA_FUNCTION_NAME, color: process.env.COLOR });\n";

/// Waits until a metric sample has the value.
async fn until_metric(s: &Server, sample: &str, value: f64) {
    common::eventually(&format!("{sample} = {value}"), std::time::Duration::from_secs(20), || async {
        let got = s.metric(sample).await;
        if got == value { Ok(()) } else { Err(format!("{sample} is {got}")) }
    })
    .await
}

#[tokio::test]
async fn prewarmed_zygotes_become_new_functions_and_spares_serve_first_calls() {
    let s = Server::start();
    let ready = |rt: &str| format!("hangar_prewarmed_zygotes{{runtime=\"{rt}\"}}");
    let taken = |rt: &str| format!("hangar_prewarmed_zygotes_taken_total{{runtime=\"{rt}\"}}");
    for rt in ["python3", "nodejs", "provided"] {
        until_metric(&s, &ready(rt), 1.0).await;
    }

    // A new function takes the runtime's prewarmed zygote, which then has the function's code
    // and environment only; the pool is topped up again.
    let _envy = common::python_fn(&s, "envy", ENV_APP, "handler", &["--env", "COLOR=blue"]);
    // The first call is served by the sandbox made ahead of it.
    until_counts(&s, "envy", |c| c["spare"] == 1).await;
    let (id, v) = invoke_json(&s, "envy", json!({})).await;
    assert_eq!(v, json!({"AWS_LAMBDA_FUNCTION_NAME": "envy", "COLOR": "blue", "HANGAR_MODE": null, "LAMBDA_TASK_ROOT": "/var/task", "files": ["app.py"]}));
    assert_eq!(start_kind(&s, &id).await, "prewarmed");
    let rec: Value = s.get(&format!("/v1/invocations/{id}")).send().await.unwrap().json().await.unwrap();
    assert!(rec["logs"].as_str().unwrap().contains("Init Duration: "), "{rec}");
    assert_eq!(s.metric(&taken("python3")).await, 1.0);
    until_metric(&s, &ready("python3"), 1.0).await;

    // A handler that fails to import reports it, whether its zygote was prewarmed or not.
    let _broken = common::python_fn(&s, "broken", "raise RuntimeError('not today')\n", "handler", &[]);
    let r = s.http().post(format!("{}/v1/functions/broken/invoke", s.url)).bearer_auth(&s.admin_key).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert!(e["errorMessage"].as_str().unwrap().contains("not today"), "{e}");
    assert_eq!(s.metric(&taken("python3")).await, 2.0);
    until_metric(&s, &ready("python3"), 1.0).await;

    // PYTHONPATH is read as Python starts: such a function gets a zygote of its own.
    let code = tempfile::tempdir().unwrap();
    std::fs::create_dir(code.path().join("lib")).unwrap();
    std::fs::write(code.path().join("lib/extra.py"), "VALUE = 42\n").unwrap();
    std::fs::write(code.path().join("app.py"), "import extra\n\ndef handler(event, context):\n    return {'extra': extra.VALUE}\n").unwrap();
    s.ok(&[
        "fn",
        "deploy",
        "pathy",
        "--runtime",
        "python3",
        "--handler",
        "app.handler",
        "--code",
        code.path().to_str().unwrap(),
        "--env",
        "PYTHONPATH=/var/task/lib",
    ]);
    assert_eq!(invoke_json(&s, "pathy", json!({})).await.1, json!({"extra": 42}));
    assert_eq!(s.metric(&taken("python3")).await, 2.0);

    // Node.js has its own pool.
    let node = tempfile::tempdir().unwrap();
    std::fs::write(node.path().join("index.js"), NODE_APP).unwrap();
    s.ok(&["fn", "deploy", "nodey", "--runtime", "nodejs", "--handler", "index.handler", "--code", node.path().to_str().unwrap(), "--env", "COLOR=green"]);
    assert_eq!(invoke_json(&s, "nodey", json!({})).await.1, json!({"name": "nodey", "color": "green"}));
    assert_eq!(s.metric(&taken("nodejs")).await, 1.0);
}
