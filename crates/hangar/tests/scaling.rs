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
    let s = Server::start_with(&["--namespace-concurrency", "3"]);
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
    let err = s.fails(&["fn", "deploy", "x", "--runtime", "python3", "--handler", "app.handler", "--code", _many.path().to_str().unwrap(), "--reserved-concurrency", "5000"], 1);
    assert!(err.contains("reserved_concurrency"), "{err}");
}

/// A busybox httpd image: `/` answers at once, `/cgi-bin/slow` after 2 seconds.
fn slow_image(dir: &std::path::Path) -> String {
    use common::oci::{layer, oci_layout};
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is missing: ./scripts/test.sh installs it (apt-get install busybox-static)");
    let slow = b"#!/bin/busybox sh\n/bin/busybox sleep 2\necho Content-Type: text/plain\necho\necho slow done\n";
    let root = layer(&[
        ("bin/", b"", 0o755),
        ("bin/busybox", &busybox, 0o755),
        ("bin/sh", b"->busybox", 0o777),
        ("etc/", b"", 0o755),
        ("etc/passwd", b"root:x:0:0::/:/bin/sh\n", 0o644),
        ("www/", b"", 0o755),
        ("www/index.html", b"hello\n", 0o644),
        ("www/cgi-bin/", b"", 0o755),
        ("www/cgi-bin/slow", slow, 0o755),
    ]);
    let layout = dir.join("slow");
    oci_layout(&layout, &[root], json!({"Entrypoint": ["/bin/busybox"], "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"]}), None);
    layout.to_str().unwrap().to_string()
}

async fn instances(s: &Server, name: &str) -> (usize, Value) {
    let v: Value = s.get(&format!("/v1/services/{name}")).send().await.unwrap().json().await.unwrap();
    (v["instances"].as_array().map_or(0, Vec::len), v)
}

/// Polls until the service has `n` instances.
async fn until_instances(s: &Server, name: &str, n: usize, within: std::time::Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (have, v) = instances(s, name).await;
        if have == n {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{name} did not reach {n} instances in {within:?}: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
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
