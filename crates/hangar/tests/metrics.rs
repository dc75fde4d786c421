//! Metric history through `/v1/metrics/series`, and OpenTelemetry's FaaS metric names in
//! `/metrics`. The history takes a point every 10 s, so these tests wait for one (up to 40 s).
//! The service part needs root and runc (scripts/test.sh).

mod common;

use std::time::Duration;

use common::{Server, error_code, eventually};
use serde_json::Value;

/// The values of `metric` of `workload` once one of them passes `ready`.
async fn series_until(s: &Server, query: &str, ready: impl Fn(&[f64]) -> bool) -> Value {
    eventually(&format!("series {query}"), Duration::from_secs(40), || async {
        let v: Value = s.get(&format!("/v1/metrics/series?{query}")).send().await.unwrap().json().await.unwrap();
        let values: Vec<f64> = v["values"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
        if ready(&values) { Ok(v) } else { Err(v.to_string()) }
    })
    .await
}

#[tokio::test]
async fn a_functions_requests_errors_and_durations_have_a_history() {
    let s = Server::start();
    s.deploy("probe", "probe", &["--public"]);
    for _ in 0..30 {
        assert_eq!(s.http().get(format!("{}/fn/default/probe/counter", s.url)).send().await.unwrap().status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(s.http().get(format!("{}/fn/default/probe/trap", s.url)).send().await.unwrap().status(), 502);
    }
    let v = series_until(&s, "workload=probe&metric=requests", |vals| vals.iter().sum::<f64>() >= 33.0).await;
    assert_eq!(v["step_s"], 10);
    assert_eq!(v["timestamps"].as_array().unwrap().len(), v["values"].as_array().unwrap().len());
    assert!(v["timestamps"].as_array().unwrap().iter().all(|t| t.as_u64().unwrap() % 10 == 0));
    assert_eq!(v["values"].as_array().unwrap().iter().filter_map(Value::as_f64).sum::<f64>(), 33.0);
    let errors = series_until(&s, "workload=probe&metric=errors&step=1m", |vals| vals.iter().sum::<f64>() >= 3.0).await;
    assert_eq!(errors["values"].as_array().unwrap().iter().filter_map(Value::as_f64).sum::<f64>(), 3.0);
    let p95 = series_until(&s, "workload=probe&metric=duration_p95_ms", |vals| !vals.is_empty()).await;
    let p95: Vec<f64> = p95["values"].as_array().unwrap().iter().filter_map(Value::as_f64).collect();
    assert!(p95.iter().all(|ms| *ms > 0.0 && *ms < 5000.0), "{p95:?}");

    // OpenTelemetry's FaaS names in /metrics.
    let text = s.get("/metrics").send().await.unwrap().text().await.unwrap();
    for name in ["faas_invocations_total{", "faas_errors_total{", "faas_coldstarts_total{", "faas_invoke_duration_seconds_bucket{", "faas_timeouts_total{"] {
        assert!(text.lines().any(|l| l.starts_with(name) && l.contains("faas_name=\"probe\"")), "{name} missing from /metrics");
    }
    assert!(s.metric("faas_invocations_total{namespace=\"default\",faas_name=\"probe\"}").await >= 33.0);

    // Bad queries name the parameter; others' workloads are 404.
    for (q, field) in [
        ("metric=requests", "workload"),
        ("workload=probe", "metric"),
        ("workload=probe&metric=bogus", "metric"),
        ("workload=probe&metric=cpu_millicores", "metric"),
        ("workload=probe&metric=requests&since=2d", "since"),
        ("workload=probe&metric=requests&since=soon", "since"),
        ("workload=probe&metric=requests&step=5s", "step"),
        ("workload=probe&metric=requests&since=3h&step=10s", "step"),
        ("workload=probe&metric=requests&kind=vm", "kind"),
    ] {
        let (status, _, message) = error_code(s.get(&format!("/v1/metrics/series?{q}")).send().await.unwrap()).await;
        assert!(status == 400 && message.starts_with(field), "{q}: {status} {message}");
    }
    assert_eq!(s.get("/v1/metrics/series?workload=nope&metric=requests").send().await.unwrap().status(), 404);
    s.ok(&["ns", "create", "other"]);
    let key = s.ok(&["key", "create", "--namespace", "other"]).lines().last().unwrap().trim().to_string();
    let r = s.http().get(format!("{}/v1/metrics/series?workload=probe&metric=requests", s.url)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_services_instances_and_memory_have_a_history() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let image = common::oci::busybox_httpd(work.path(), "m", &[("www/index.html", b"home", 0o644)]);
    s.ok(&["image", "import", &image, "--name", "m:1"]);
    s.ok(&["svc", "deploy", "web", "--image", "m:1", "--public", "--min", "2", "--max", "2"]);
    for _ in 0..10 {
        assert_eq!(s.http().get(format!("{}/svc/default/web/", s.url)).send().await.unwrap().status(), 200);
    }
    series_until(&s, "workload=web&kind=service&metric=instances_ready", |vals| vals.contains(&2.0)).await;
    series_until(&s, "workload=web&kind=service&metric=requests", |vals| vals.iter().sum::<f64>() >= 10.0).await;
    // Two busybox instances hold some memory, well under their limit.
    let mem = series_until(&s, "workload=web&kind=service&metric=memory_mb", |vals| vals.iter().any(|m| *m > 0.0)).await;
    assert!(mem["values"].as_array().unwrap().iter().filter_map(Value::as_f64).all(|m| m < 512.0), "{mem}");
    let (status, _, message) = error_code(s.get("/v1/metrics/series?workload=web&kind=service&metric=cold_starts").send().await.unwrap()).await;
    assert!(status == 400 && message.contains("a service has"), "{status} {message}");
}
