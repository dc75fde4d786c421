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
