//! Function lifecycle end to end: deploy, invoke through the URL and the CLI, records and logs,
//! restart without recompilation, concurrency, and graceful shutdown.

mod common;

use common::{Server, guest};

#[tokio::test]
async fn deploy_invoke_records_and_logs() {
    let s = Server::start();
    assert_eq!(reqwest::get(format!("{}/healthz", s.url)).await.unwrap().status(), 200);
    let out = s.ok(&["fn", "deploy", "hello", "--code", guest("hello").to_str().unwrap(), "--env", "GREETING=Hi", "--public"]);
    assert!(out.contains("created default/hello revision 1"), "{out}");

    // Through the function URL, without a key (public), with a path and query kept.
    let r = reqwest::Client::new().post(format!("{}/fn/default/hello/some/path?x=1", s.url)).body("Ada").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-hangar-invocation-id"].to_str().unwrap().to_string();
    assert_eq!(r.text().await.unwrap(), "Hi, Ada!\n");

    // Through the CLI.
    assert_eq!(s.ok(&["invoke", "hello", "--data", "Bob"]), "Hi, Bob!\n");
    assert_eq!(s.ok(&["invoke", "hello"]), "Hi, world!\n");

    // Through the API's invoke endpoint.
    let r = s.http().post(format!("{}/v1/functions/hello/invoke", s.url)).bearer_auth(&s.admin_key).body("Cy").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "Hi, Cy!\n");

    // Records: one per call, with the cost basis and how the instance was obtained.
    let recs = s.invocations("hello").await;
    assert_eq!(recs.len(), 4, "{recs:#?}");
    let first = recs.iter().find(|r| r["id"] == id.as_str()).expect("record of the URL call");
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["status"], 200);
    assert_eq!(first["trigger"], "http");
    assert_eq!(first["memory_mb"], 128);
    assert_eq!(first["response_bytes"], 9);
    let dur = first["duration_us"].as_u64().unwrap();
    assert_eq!(first["billed_ms"].as_u64().unwrap(), dur.div_ceil(1000).max(1));
    assert!(first["logs"].as_str().unwrap().contains("greeting Ada on /some/path?x=1"), "{first}");
    assert_eq!(recs.iter().filter(|r| r["start"] == "cold").count(), 1, "only the first call loads the revision");
    assert!(recs.iter().any(|r| r["trigger"] == "api"));

    // One record with its logs.
    let one: serde_json::Value = s.get(&format!("/v1/invocations/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["id"], id.as_str());
    assert!(one["logs"].as_str().unwrap().contains("greeting Ada"));

    // CLI listings and logs.
    let table = s.ok(&["invocations", "hello"]);
    assert_eq!(table.matches(" ok ").count(), 4, "{table}");
    let json: serde_json::Value = serde_json::from_str(&s.ok(&["invocations", "hello", "-o", "json", "--status", "ok"])).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 4);
    let logs = s.ok(&["logs", "hello"]);
    assert!(logs.contains("greeting Ada") && logs.contains("greeting Bob"), "{logs}");
    let fns: serde_json::Value = serde_json::from_str(&s.ok(&["fn", "ls", "-o", "json"])).unwrap();
    assert_eq!(fns["items"][0]["name"], "hello");
    assert!(s.ok(&["fn", "get", "hello"]).contains("sha256:"));

    // Pagination: pages of 3 then 1, no overlap.
    let p1: serde_json::Value = s.get("/v1/invocations?function=hello&limit=3").send().await.unwrap().json().await.unwrap();
    let cursor = p1["next_cursor"].as_str().unwrap();
    let p2: serde_json::Value = s.get(&format!("/v1/invocations?function=hello&limit=3&cursor={cursor}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(p1["items"].as_array().unwrap().len(), 3);
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert!(p2["next_cursor"].is_null());

    // Metrics count what happened.
    assert_eq!(s.metric("hangar_invocations_total{namespace=\"default\",function=\"hello\",outcome=\"ok\"}").await, 4.0);
    assert_eq!(s.metric("hangar_cold_starts_total{namespace=\"default\",function=\"hello\"}").await, 1.0);

    // Delete: the function, its URL and its metric series are gone.
    s.ok(&["fn", "rm", "hello"]);
    assert_eq!(s.metric("hangar_invocations_total{namespace=\"default\",function=\"hello\",outcome=\"ok\"}").await, 0.0);
    let r = reqwest::get(format!("{}/fn/default/hello/", s.url)).await.unwrap();
    assert_eq!(r.status(), 401, "a deleted function is no longer public");
    s.fails(&["fn", "get", "hello"], 4);
}

#[tokio::test]
async fn redeploy_is_idempotent_and_streams() {
    let s = Server::start();
    s.deploy("probe", "probe", &[]);
    let out = s.ok(&["fn", "deploy", "probe", "--code", guest("probe").to_str().unwrap()]);
    assert!(out.contains("unchanged default/probe revision 1"), "{out}");
    let out = s.ok(&["fn", "deploy", "probe", "--code", guest("probe").to_str().unwrap(), "--memory", "64"]);
    assert!(out.contains("updated default/probe revision 2"), "{out}");
    let f: serde_json::Value = s.get("/v1/functions/probe").send().await.unwrap().json().await.unwrap();
    assert_eq!(f["config"]["memory_mb"], 64);

    // Streaming both ways: a chunked request body is echoed, a multi-chunk response arrives whole.
    let chunks = futures_body(vec!["a".repeat(10_000), "b".repeat(10_000)]);
    let r = s.http().post(format!("{}/fn/default/probe/echo", s.url)).bearer_auth(&s.admin_key).body(chunks).send().await.unwrap();
    assert_eq!(r.headers()["x-method"], "Method::Post");
    assert_eq!(r.text().await.unwrap().len(), 20_000);
    let body = s.get("/fn/default/probe/stream?chunks=50").send().await.unwrap().text().await.unwrap();
    assert_eq!(body.lines().count(), 50);
    assert_eq!(s.ok(&["invoke", "probe", "--method", "PUT", "--path", "/echo", "--data", "x"]), "x");
}

/// A request body sent in chunks, without a Content-Length.
fn futures_body(parts: Vec<String>) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>)))
}

#[tokio::test]
async fn restart_keeps_everything_without_recompiling() {
    let mut s = Server::start();
    s.deploy("probe", "probe", &["--env", "COLOR=blue"]);
    assert_eq!(s.metric("hangar_wasm_compilations_total").await, 1.0);
    assert_eq!(s.get("/fn/default/probe/env?name=COLOR").send().await.unwrap().text().await.unwrap(), "blue");
    s.ok(&["ns", "create", "team"]);
    s.restart();
    // Same admin key, same functions, namespaces and history; code loaded from the cache.
    assert_eq!(s.get("/fn/default/probe/env?name=COLOR").send().await.unwrap().text().await.unwrap(), "blue");
    assert_eq!(s.metric("hangar_wasm_compilations_total").await, 0.0, "a restart must not recompile");
    assert_eq!(s.metric("hangar_wasm_cache_loads_total").await, 1.0);
    assert!(s.ok(&["ns", "ls"]).contains("team"));
    assert_eq!(s.invocations("probe").await.len(), 2);
}

#[tokio::test]
async fn two_hundred_concurrent_invocations_are_all_correct() {
    let s = Server::start();
    s.deploy("probe", "probe", &[]);
    let client = s.http();
    let calls = (0..200).map(|i| {
        let req = client.post(format!("{}/fn/default/probe/echo", s.url)).bearer_auth(&s.admin_key).body(format!("request {i}"));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap(), i)
        }
    });
    let results = futures::future::join_all(calls).await;
    for (status, body, i) in results {
        assert_eq!(status, 200);
        assert_eq!(body, format!("request {i}"));
    }
    let recs = s.invocations("probe").await;
    assert_eq!(recs.len(), 200);
    assert!(recs.iter().all(|r| r["outcome"] == "ok"));
}

#[tokio::test]
async fn graceful_shutdown_drains_and_loses_no_record() {
    let mut s = Server::start();
    s.deploy("probe", "probe", &[]);
    let client = s.http();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let req = client.get(format!("{}/fn/default/probe/sleep?ms=2000", s.url)).bearer_auth(&s.admin_key);
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // Stop only once all twenty are running inside the server.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.metric("hangar_instances{namespace=\"default\",function=\"probe\"}").await < 20.0 {
        assert!(std::time::Instant::now() < deadline, "the invocations never all started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let st = s.stop();
        (st, s)
    })
    .await
    .unwrap();
    let (exit, mut s) = status;
    assert!(exit.success(), "exit status {exit}");
    for c in calls {
        assert_eq!(c.await.unwrap().expect("in-flight request completed"), 200);
    }
    s.restart_after_stop();
    assert_eq!(s.invocations("probe").await.len(), 20, "every answered invocation is recorded");
}

#[tokio::test]
async fn a_caller_that_goes_away_is_still_recorded_and_does_not_block_shutdown() {
    let mut s = Server::start();
    s.deploy("probe", "probe", &[]);
    let impatient = reqwest::Client::builder().timeout(std::time::Duration::from_millis(150)).build().unwrap();
    let r = impatient.get(format!("{}/fn/default/probe/sleep?ms=500", s.url)).bearer_auth(&s.admin_key).send().await;
    assert!(r.is_err(), "the client gave up");
    // Recorded once the guest has ended, about 500 ms after the start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut recs = s.invocations("probe").await;
    while recs.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        recs = s.invocations("probe").await;
    }
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["status"], 499, "recorded as closed by the client");
    assert!(recs[0]["duration_us"].as_u64().unwrap() >= 500_000);
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
    assert!(status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "nothing left in flight to wait for");
}

/// Concurrent deploys of one function each get a revision of their own, written once: none is
/// lost, none is written twice, and the route serves the newest.
#[tokio::test]
async fn concurrent_deploys_of_one_function_each_get_one_revision() {
    let s = Server::start();
    s.deploy("racy", "hello", &[]);
    let mut deploys = tokio::task::JoinSet::new();
    for memory in 0..8u32 {
        let (url, key) = (s.url.clone(), s.admin_key.clone());
        deploys.spawn(async move {
            let config = serde_json::json!({"runtime": "wasm", "memory_mb": 64 + memory});
            let r = reqwest::Client::new()
                .put(format!("{url}/v1/functions/racy"))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(config.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body)
        });
    }
    let mut revisions = Vec::new();
    while let Some(done) = deploys.join_next().await {
        let (status, body) = done.unwrap();
        // A deploy that loses the store's compare-and-set is a clean 409, never a lost write.
        match status {
            200 => revisions.push(body["function"]["revision"].as_u64().unwrap()),
            409 => assert_eq!(body["error"]["code"], "conflict", "{body}"),
            other => panic!("a concurrent deploy got {other}: {body}"),
        }
    }
    revisions.sort_unstable();
    let mut unique = revisions.clone();
    unique.dedup();
    assert_eq!(revisions, unique, "no revision is written twice");
    let newest = *revisions.last().expect("some deploy won");
    let f: serde_json::Value = s.get("/v1/functions/racy").send().await.unwrap().json().await.unwrap();
    assert_eq!(f["revision"].as_u64(), Some(newest), "the store holds the newest revision: {f}");
    assert_eq!(reqwest::Client::new().post(format!("{}/fn/default/racy/", s.url)).bearer_auth(&s.admin_key).body("x").send().await.unwrap().status(), 200);
}
