//! Per-function limits, enforced: timeout, memory, env, no filesystem, outbound allow-list, logs.

mod common;

use common::{Server, error_code};

#[tokio::test]
async fn timeout_memory_env_and_sandbox() {
    let s = Server::start();
    s.deploy("probe", "probe", &["--timeout", "400ms", "--memory", "32", "--env", "COLOR=blue"]);
    let get = |p: &str| s.get(&format!("/fn/default/probe{p}")).send();

    // Env vars, and nothing else from the host's environment.
    assert_eq!(get("/env?name=COLOR").await.unwrap().text().await.unwrap(), "blue");
    assert_eq!(get("/env?name=HOME").await.unwrap().status(), 404);
    assert_eq!(get("/env?name=PATH").await.unwrap().status(), 404);

    // A guest that waits past its timeout, and one that spins: both 504, recorded as timeout.
    let (st, code, msg) = error_code(get("/sleep?ms=5000").await.unwrap()).await;
    assert_eq!((st, code.as_str()), (504, "timeout"));
    assert!(msg.contains("400 ms"), "{msg}");
    let started = std::time::Instant::now();
    let (st, _, _) = error_code(get("/spin").await.unwrap()).await;
    assert_eq!(st, 504);
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "a spinning guest is interrupted");

    // Memory: 8 MiB fits in 32 MiB, 64 MiB does not.
    assert_eq!(get("/alloc?mb=8").await.unwrap().status(), 200);
    let (st, code, msg) = error_code(get("/alloc?mb=64").await.unwrap()).await;
    assert_eq!((st, code.as_str()), (502, "out_of_memory"));
    assert!(msg.contains("memory"), "{msg}");

    // A trap is an error with its cause; a guest that never answers is an error too.
    let (st, code, _) = error_code(get("/trap").await.unwrap()).await;
    assert_eq!((st, code.as_str()), (502, "function_error"));
    let (st, _, msg) = error_code(get("/noresponse").await.unwrap()).await;
    assert_eq!(st, 502);
    assert!(msg.contains("without setting a response"));

    // No filesystem.
    let r = get("/fs").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("no filesystem"));

    // The platform still serves after all of that.
    assert_eq!(get("/env?name=COLOR").await.unwrap().status(), 200);

    let recs = s.invocations("probe").await;
    let outcome_of = |frag: &str| -> Vec<String> {
        recs.iter().filter(|r| r["error"].as_str().unwrap_or("").contains(frag)).map(|r| r["outcome"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(outcome_of("timeout").len(), 2);
    assert!(outcome_of("timeout").iter().all(|o| o == "timeout"));
    assert_eq!(outcome_of("more memory"), ["out_of_memory"]);
    assert_eq!(outcome_of("without setting"), ["error"]);
    let trap = recs.iter().find(|r| r["error"].as_str().unwrap_or("").contains("unreachable")).expect("trap record");
    assert_eq!(trap["outcome"], "error");
    assert!(trap["logs"].as_str().unwrap().contains("the probe was asked to fail"), "panic message in the logs: {trap}");
    let timeouts: Vec<_> = recs.iter().filter(|r| r["outcome"] == "timeout").collect();
    assert!(timeouts.iter().all(|r| r["status"] == 504 && r["billed_ms"].as_u64().unwrap() >= 400), "{timeouts:#?}");
}

#[tokio::test]
async fn outbound_http_only_to_allowed_hosts() {
    // A real HTTP server on loopback for the function to call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let app = axum::Router::new().route("/hi", axum::routing::get(|| async { "hello from upstream" }));
        axum::serve(listener, app).await.unwrap();
    });
    let s = Server::start();
    let allowed = format!("127.0.0.1:{port}");
    s.deploy("open", "probe", &["--allow-outbound", &allowed]);
    s.deploy("closed", "probe", &[]);
    s.deploy("otherport", "probe", &["--allow-outbound", "127.0.0.1:1"]);
    let url = format!("http://127.0.0.1:{port}/hi");

    let r = s.get(&format!("/fn/default/open/fetch?url={url}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello from upstream");
    for name in ["closed", "otherport"] {
        let r = s.get(&format!("/fn/default/{name}/fetch?url={url}")).send().await.unwrap();
        assert_eq!(r.status(), 502, "{name}");
        assert!(r.text().await.unwrap().contains("HttpRequestDenied"), "{name}");
    }
}

#[tokio::test]
async fn logs_are_bounded_with_a_marker() {
    let s = Server::start_with(&["--max-log-bytes", "1000"]);
    s.deploy("probe", "probe", &[]);
    assert_eq!(s.get("/fn/default/probe/log?lines=2").send().await.unwrap().status(), 200);
    assert_eq!(s.get("/fn/default/probe/log?lines=500").send().await.unwrap().status(), 200);
    let recs = s.invocations("probe").await;
    let small = recs.iter().find(|r| r["logs_truncated"] == false).unwrap();
    assert_eq!(small["logs"], "stdout line 0\nstdout line 1\nstderr line\n");
    let big = recs.iter().find(|r| r["logs_truncated"] == true).expect("a truncated record");
    let logs = big["logs"].as_str().unwrap();
    assert!(logs.ends_with("[hangar: logs truncated at 1000 bytes]\n"), "{logs}");
    assert!(logs.len() < 1100);
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance() {
    let s = Server::start();
    s.deploy("probe", "probe", &[]);
    // Sequential and concurrent: pool slots are reused, their state never is.
    for _ in 0..20 {
        let body = s.get("/fn/default/probe/counter").send().await.unwrap().text().await.unwrap();
        assert_eq!(body, "count=1 scratch_before=0");
    }
    let calls = (0..50).map(|_| s.get("/fn/default/probe/counter").send());
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap().text().await.unwrap(), "count=1 scratch_before=0");
    }
}
