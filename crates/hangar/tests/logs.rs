//! One log search across functions and services (`GET /v1/logs`, `hangar logs -q`), and its
//! live tail over server-sent events. The service part needs root and runc (scripts/test.sh).

mod common;

use std::time::Duration;

use common::{Server, error_code, eventually, python_fn};
use futures::StreamExt as _;
use serde_json::Value;

async fn search(s: &Server, query: &str) -> Vec<Value> {
    let v: Value = s.get(&format!("/v1/logs?{query}")).send().await.unwrap().json().await.unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn one_search_finds_lines_of_functions_and_services_and_follows_new_ones() {
    let s = Server::start();
    let code = "def handler(event, context):\n    print('needle from a function', event.get('n'))\n    print('hay')\n    return {}\n";
    let _code = python_fn(&s, "writer", code, "handler", &[]);
    let work = tempfile::tempdir().unwrap();
    let cgi = "#!/bin/busybox sh\necho Content-Type: text/plain\necho\necho \"needle from a service $QUERY_STRING\" >&2\necho ok\n";
    let image = common::oci::cgi_image(work.path(), "logger", "log", cgi);
    s.ok(&["image", "import", &image, "--name", "logger:1"]);
    s.ok(&["svc", "deploy", "web", "--image", "logger:1", "--public"]);
    for n in 0..3 {
        invoke(&s, n).await;
        assert_eq!(reqwest::get(format!("{}/svc/default/web/cgi-bin/log?n={n}", s.url)).await.unwrap().status(), 200);
    }

    let found = eventually("the function's and the service's lines", Duration::from_secs(20), || async {
        let items = search(&s, "q=NEEDLE").await;
        let kinds = |k: &str| items.iter().filter(|i| i["kind"] == k).count();
        if kinds("function") == 3 && kinds("service") == 3 { Ok(items) } else { Err(format!("{items:?}")) }
    })
    .await;
    assert!(found.iter().all(|i| i["line"].as_str().unwrap().to_lowercase().contains("needle")));
    let f = found.iter().find(|i| i["kind"] == "function").unwrap();
    assert_eq!(f["workload"], "writer");
    let invocation = f["invocation_id"].as_str().unwrap();
    assert_eq!(s.get(&format!("/v1/invocations/{invocation}")).send().await.unwrap().status(), 200, "each line names its invocation");
    let svc = found.iter().find(|i| i["kind"] == "service").unwrap();
    assert!(svc["instance"].as_str().unwrap().starts_with("web-"), "{svc}");
    assert!(svc["line"].as_str().unwrap().starts_with("needle from a service n="), "{svc}");
    // Newest first.
    let times: Vec<i64> = found.iter().map(|i| hangar_api::parse_rfc3339(i["time"].as_str().unwrap()).unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    // Filters: kind, workload, limit; nothing older than since.
    assert!(search(&s, "q=needle&kind=service").await.iter().all(|i| i["kind"] == "service"));
    // Every line of its three invocations: Lambda's START, END and REPORT lines too.
    let writer = search(&s, "workload=writer").await;
    assert_eq!(writer.len(), 15, "{writer:?}");
    assert_eq!(writer.iter().filter(|i| i["line"].as_str().unwrap().starts_with("START RequestId:")).count(), 3);
    assert_eq!(search(&s, "q=needle&limit=2").await.len(), 2);
    assert!(search(&s, "q=needle&since=2099-01-01T00:00:00Z").await.is_empty());

    // The CLI searches the same way.
    let out = s.ok(&["logs", "-q", "needle", "--kind", "service"]);
    assert_eq!(out.lines().filter(|l| l.contains("needle from a service")).count(), 3, "{out}");

    // Bad queries name the parameter; an unknown workload is a 404.
    for (q, field) in [("kind=vm", "kind"), ("since=soon", "since"), ("limit=0", "limit"), ("q=", "q"), ("until=2000-01-01T00:00:00Z", "until")] {
        let (status, _, message) = error_code(s.get(&format!("/v1/logs?{q}")).send().await.unwrap()).await;
        assert!(status == 400 && message.starts_with(field), "{q}: {status} {message}");
    }
    assert_eq!(s.get("/v1/logs?workload=nope").send().await.unwrap().status(), 404);

    // Following: new lines arrive as server-sent events.
    let resp = s.get("/v1/logs?follow=true&q=needle").send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut events = resp.bytes_stream();
    invoke(&s, 42).await;
    assert_eq!(reqwest::get(format!("{}/svc/default/web/cgi-bin/log?n=43", s.url)).await.unwrap().status(), 200);
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(seen.contains("needle from a function 42") && seen.contains("needle from a service n=43")) {
        let chunk = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(c) => c.unwrap().unwrap(),
            Err(_) => panic!("new lines within 20 s; seen: {seen}"),
        };
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.lines().filter(|l| l.starts_with("data: ")).all(|l| serde_json::from_str::<Value>(&l[6..]).is_ok()), "{seen}");
}

async fn invoke(s: &Server, n: u32) {
    let r = s.http().post(format!("{}/v1/functions/writer/invoke", s.url)).bearer_auth(&s.admin_key).body(format!("{{\"n\": {n}}}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn records_and_their_logs_go_after_the_log_retention() {
    let s = Server::start_with(&["--log-retention", "3s"]);
    s.deploy("hello", "hello", &["--public"]);
    let r = s.http().get(format!("{}/fn/default/hello/", s.url)).send().await.unwrap();
    let id = r.headers()["x-hangar-invocation-id"].to_str().unwrap().to_string();
    assert_eq!(r.status(), 200);
    eventually("the record kept at first", Duration::from_secs(10), || async {
        let status = s.get(&format!("/v1/invocations/{id}")).send().await.unwrap().status();
        if status == 200 { Ok(()) } else { Err(status.to_string()) }
    })
    .await;
    eventually("the record gone after its retention", Duration::from_secs(20), || async {
        let status = s.get(&format!("/v1/invocations/{id}")).send().await.unwrap().status();
        if status == 404 { Ok(()) } else { Err(status.to_string()) }
    })
    .await;
    assert!(search(&s, "workload=hello&since=1h").await.is_empty());
}

#[tokio::test]
async fn a_namespace_follows_at_most_sixteen_tails_at_once() {
    let s = Server::start();
    let mut open = Vec::new();
    for _ in 0..16 {
        let r = s.get("/v1/logs?follow=true&kind=function").send().await.unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let r = s.get("/v1/logs?follow=true&kind=function").send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let (_, code, _) = error_code(r).await;
    assert_eq!(code, "too_many_followers");
    // A search without follow is not limited; a tail closed makes room (once the server sees it).
    assert_eq!(s.get("/v1/logs").send().await.unwrap().status(), 200);
    drop(open.pop());
    eventually("room for a new tail", Duration::from_secs(40), || async {
        let status = s.get("/v1/logs?follow=true&kind=function").send().await.unwrap().status();
        if status == 200 { Ok(()) } else { Err(status.to_string()) }
    })
    .await;
}
