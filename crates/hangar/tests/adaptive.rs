//! Adaptive mode through the real binary, on a fast clock: a function deployed with
//! `--mode auto` whose cold starts break its latency objective is warmed (a provisioned
//! instance) after the advisor said so three looks in a row; it stays warm while its traffic
//! holds (no flapping, though warm instances hide the cold starts); it goes back to scale to
//! zero once idle; every change is recorded with its reason. A service deployed with
//! `--mode auto` scales to zero when idle and is kept warm again under steady, busy traffic.

mod common;

use std::time::Duration;

use common::Server;
use serde_json::Value;

async fn switches(s: &Server, name: &str) -> Vec<Value> {
    let v: Value = s.get(&format!("/v1/functions/{name}/switches")).send().await.unwrap().json().await.unwrap();
    v["items"].as_array().cloned().unwrap_or_else(|| panic!("{v}"))
}

async fn provisioned(s: &Server, name: &str) -> u64 {
    let v: Value = s.get(&format!("/v1/functions/{name}")).send().await.unwrap().json().await.unwrap();
    v["instances"]["provisioned"].as_u64().unwrap_or(0)
}

async fn call(s: &Server) {
    let r = s.http().post(format!("{}/fn/default/auto/", s.url)).bearer_auth(&s.admin_key).body("x").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn auto_mode_warms_a_function_for_its_latency_and_lets_it_go_when_idle() {
    let s = Server::start_with(&["--adapt-every", "1s", "--adapt-window", "5s"]);
    // Each call finds its instance reaped (keep-alive 1 s, no pausing): every start is cold,
    // and a cold call takes longer than the 1 ms objective.
    let source = "import time\ndef handler(event, context):\n    time.sleep(0.02)\n    return 'ok'\n";
    let _code =
        common::python_fn(&s, "auto", source, "handler", &["--mode", "auto", "--latency-objective", "1ms", "--keep-alive", "1s", "--pause-after", "0s"]);
    assert!(s.ok(&["fn", "get", "auto"]).contains("mode: auto (latency objective 1 ms"));

    // Cold traffic: warmed once the advisor agreed three looks in a row.
    let warmed = common::eventually("a switch to warm", Duration::from_secs(40), || async {
        call(&s).await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let sw = switches(&s, "auto").await;
        if sw.is_empty() { Err("no switch yet".to_string()) } else { Ok(sw) }
    })
    .await;
    assert_eq!(warmed.len(), 1, "{warmed:?}");
    assert_eq!((warmed[0]["from_warm"].as_u64(), warmed[0]["to_warm"].as_u64()), (Some(0), Some(1)), "{warmed:?}");
    let reason = warmed[0]["reason"].as_str().unwrap();
    assert!(reason.contains("latency") && reason.contains("objective of 1 ms") && reason.contains("3 looks in a row"), "{reason}");
    common::eventually("a provisioned instance", Duration::from_secs(10), || async {
        let n = provisioned(&s, "auto").await;
        if n == 1 { Ok(()) } else { Err(n.to_string()) }
    })
    .await;

    // The same traffic goes on: warm, its calls see no cold start, and it stays warm.
    for _ in 0..5 {
        call(&s).await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    assert_eq!(switches(&s, "auto").await.len(), 1, "no flapping while the traffic holds");
    let recent = s.invocations("auto").await;
    assert_eq!(recent[0]["start"], "provisioned", "{:?}", recent[0]);

    // Idle: back to scale to zero, with the reason.
    let cooled = common::eventually("a switch back to zero", Duration::from_secs(30), || async {
        let sw = switches(&s, "auto").await;
        if sw.len() == 2 { Ok(sw) } else { Err(format!("{sw:?}")) }
    })
    .await;
    assert_eq!((cooled[1]["from_warm"].as_u64(), cooled[1]["to_warm"].as_u64()), (Some(1), Some(0)), "{cooled:?}");
    assert!(cooled[1]["reason"].as_str().unwrap().contains("no request in the last 5s"), "{cooled:?}");
    common::eventually("no provisioned instance", Duration::from_secs(10), || async {
        let n = provisioned(&s, "auto").await;
        if n == 0 { Ok(()) } else { Err(n.to_string()) }
    })
    .await;
    let table = s.ok(&["fn", "switches", "auto"]);
    assert!(table.contains("1 → 0") && table.contains("0 → 1"), "{table}");

    // Bad input: auto mode is for process functions; objectives have a range (the CLI checks
    // before sending, as the server does).
    let refused = |args: &[&str]| {
        let out = s.cli(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let hello = common::guest("hello");
    let err = refused(&["fn", "deploy", "wasm-auto", "--code", hello.to_str().unwrap(), "--mode", "auto"]);
    assert!(err.contains("mode") && err.contains("process functions"), "{err}");
    let err = refused(&[
        "fn",
        "deploy",
        "auto",
        "--runtime",
        "python3",
        "--handler",
        "app.handler",
        "--code",
        _code.path().to_str().unwrap(),
        "--latency-objective",
        "2m",
    ]);
    assert!(err.contains("latency_objective_ms"), "{err}");
    assert_eq!(s.get("/v1/functions/nope/switches").send().await.unwrap().status(), 404);
}

async fn service_switches(s: &Server) -> Vec<Value> {
    let v: Value = s.get("/v1/services/web/switches").send().await.unwrap().json().await.unwrap();
    v["items"].as_array().cloned().unwrap_or_else(|| panic!("{v}"))
}

#[tokio::test]
async fn auto_mode_lets_an_idle_service_scale_to_zero_and_warms_it_under_steady_traffic() {
    let s = Server::start_with(&["--adapt-every", "1s", "--adapt-window", "3s"]);
    let img = tempfile::tempdir().unwrap();
    let layout = common::oci::busybox_httpd(img.path(), "web", &[("www/index.html", b"hi\n".as_slice(), 0o644)]);
    s.ok(&["image", "import", &layout, "--name", "web:1"]);
    s.ok(&["svc", "deploy", "web", "--image", "web:1", "--mode", "auto", "--memory", "64", "--cpus", "0.25", "--max", "2", "--scale-window", "2s"]);
    let instances = || async {
        let v: Value = s.get("/v1/services/web").send().await.unwrap().json().await.unwrap();
        v["instances"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(instances().await, 1, "warm as deployed (min 1)");

    // Idle for a whole window, three looks in a row: its minimum goes to zero, and the
    // autoscaler stops its instance after a quiet scale window.
    let cooled = common::eventually("a switch to zero", Duration::from_secs(40), || async {
        let sw = service_switches(&s).await;
        if sw.is_empty() { Err("no switch yet".to_string()) } else { Ok(sw) }
    })
    .await;
    assert_eq!((cooled[0]["kind"].as_str(), cooled[0]["from_warm"].as_u64(), cooled[0]["to_warm"].as_u64()), (Some("service"), Some(1), Some(0)), "{cooled:?}");
    // The span is what the looks covered: the 3 s window, or a little more when a look is late.
    assert!(cooled[0]["reason"].as_str().unwrap().contains("no request in the last "), "{cooled:?}");
    common::eventually("no instance", Duration::from_secs(20), || async {
        let n = instances().await;
        if n == 0 { Ok(()) } else { Err(n.to_string()) }
    })
    .await;

    // Steady, busy traffic: as an always-on service it costs less than as a function, so it
    // is warmed again (the first request started an instance from zero).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (http, url, key, stop) = (s.http(), format!("{}/svc/default/web/", s.url), s.admin_key.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http.get(&url).bearer_auth(&key).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    let warmed = common::eventually("a switch back to warm", Duration::from_secs(40), || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sw = service_switches(&s).await;
        if sw.len() == 2 { Ok(sw) } else { Err(format!("{sw:?}")) }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!((warmed[1]["from_warm"].as_u64(), warmed[1]["to_warm"].as_u64()), (Some(0), Some(1)), "{warmed:?}");
    assert!(warmed[1]["reason"].as_str().unwrap().contains("always-on service costs"), "{warmed:?}");
    let table = s.ok(&["svc", "switches", "web"]);
    assert!(table.contains("1 → 0") && table.contains("0 → 1"), "{table}");
    // A function of the same name would not see the service's switches, and unknown services
    // are 404.
    assert_eq!(s.get("/v1/functions/web/switches").send().await.unwrap().status(), 404);
    assert_eq!(s.get("/v1/services/nope/switches").send().await.unwrap().status(), 404);
}
