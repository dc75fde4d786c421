//! Metering through the real binary: a function's requests, billed milliseconds and GB-seconds
//! match its invocation records exactly; the advisor explains its choice from them; a
//! sandbox's running, paused and standby time match its own counters, across a restart, with
//! nothing counted twice; a service's requests are counted at the gateway and the advisor
//! weighs it against its own cost.

mod common;

use std::time::Duration;

use common::Server;
use hangar_cost::Money;
use hangar_cost::money::{div_round, show_fixed};
use serde_json::Value;

async fn usage(s: &Server, query: &str) -> Vec<Value> {
    let v: Value = s.get(&format!("/v1/usage?since=2h&{query}")).send().await.unwrap().json().await.unwrap();
    v["items"].as_array().cloned().unwrap_or_else(|| panic!("{v}"))
}

/// Sums a column over rows (decimal strings with 3 places as thousandths).
fn total(rows: &[Value], field: &str) -> u128 {
    rows.iter().map(|r| r[field].as_str().map_or_else(|| r[field].as_u64().unwrap() as u128, |t| hangar_cost::money::parse_fixed(t, 3).unwrap())).sum()
}

#[tokio::test]
async fn functions_and_sandboxes_are_metered_exactly() {
    let mut s = Server::start_with(&["--meter-every", "1s"]);

    // A function: 7 calls, metered as their records are written.
    s.deploy("hello", "hello", &["--memory", "64"]);
    for i in 0..7 {
        let r = s.http().post(format!("{}/fn/default/hello/", s.url)).bearer_auth(&s.admin_key).body(format!("n{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let records = common::eventually("7 records", Duration::from_secs(20), || async {
        let r = s.invocations("hello").await;
        if r.len() == 7 { Ok(r) } else { Err(r.len().to_string()) }
    })
    .await;
    let billed: u64 = records.iter().map(|r| r["billed_ms"].as_u64().unwrap()).sum();
    let mb_ms: u128 = records.iter().map(|r| u128::from(r["billed_ms"].as_u64().unwrap()) * u128::from(r["memory_mb"].as_u64().unwrap())).sum();
    let rows = usage(&s, "kind=function&name=hello").await;
    let requests: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
    let row_billed: u64 = rows.iter().map(|r| r["billed_ms"].as_u64().unwrap()).sum();
    assert_eq!((requests, row_billed), (7, billed), "{rows:?}");
    // GB-s = MiB-ms / 1,024,000, exactly; and what it cost on Lambda x86, by hand from the
    // records: requests × $0.20/M + GB-s × $0.0000166667 (one half-up rounding each).
    if rows.len() == 1 {
        assert_eq!(rows[0]["gb_seconds"], show_fixed(mb_ms * 9_765_625, 13));
        let price = |p: &str| Money::parse(p).unwrap().pico();
        let by_hand = div_round(7 * price("0.20"), 1_000_000) + div_round(mb_ms * price("0.0000166667"), 1_024_000);
        assert_eq!(
            (rows[0]["cost"].as_str().unwrap(), rows[0]["priced_with"].as_str().unwrap()),
            (Money(by_hand).to_string().as_str(), "aws-lambda-x86"),
            "{rows:?}"
        );
        // On Cloud Run: also 1 vCPU for the billed time, at its prices.
        let v: Value = s.get("/v1/usage?since=2h&kind=function&name=hello&sheet=gcp-cloud-run").send().await.unwrap().json().await.unwrap();
        let by_hand = div_round(7 * price("0.40"), 1_000_000)
            + div_round(mb_ms * price("0.0000025"), 1_024_000)
            + div_round(u128::from(billed) * price("0.000024"), 1000);
        assert_eq!(v["items"][0]["cost"].as_str().unwrap(), Money(by_hand).to_string(), "{v}");
    }
    let (status, code, _) = common::error_code(s.get("/v1/usage?sheet=nope").send().await.unwrap()).await;
    assert_eq!(status, 400, "{code}");
    let cli = s.ok(&["usage", "hello"]);
    assert!(cli.contains("hello") && cli.contains("function"), "{cli}");
    let days = usage(&s, "kind=function&per=day").await;
    assert_eq!(days.iter().map(|r| r["requests"].as_u64().unwrap()).sum::<u64>(), 7);

    // The advisor: light, sparse traffic stays a function, with its reasons.
    let advice = s.ok(&["advise", "hello"]);
    assert!(advice.contains("hello (function): run as function (stays a function)") && advice.contains("traffic: 7 requests"), "{advice}");
    let v: Value = s.get("/v1/advice?name=hello&objective_ms=1").send().await.unwrap().json().await.unwrap();
    let a = &v["items"][0];
    assert_eq!(a["observed"]["requests"], 7);
    assert!(a["reasons"].as_array().unwrap().len() >= 4, "{a}");
    assert_eq!(s.get("/v1/advice?name=nope").send().await.unwrap().status(), 404);
    s.deploy("idle", "hello", &[]);
    let (status, code, msg) = common::error_code(s.get("/v1/advice?name=idle").send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "no_usage"), "{msg}");

    // A function with a provisioned instance: its kept-initialized time is metered (as the
    // row's running time), with no request.
    let _code = common::python_fn(&s, "warm", "def handler(event, context):\n    return 'ok'\n", "handler", &["--provisioned", "1"]);
    common::eventually("provisioned time metered", Duration::from_secs(30), || async {
        let rows = usage(&s, "kind=function&name=warm").await;
        let (kept, requests) = (total(&rows, "running_seconds"), rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum::<u64>());
        if kept >= 2000 && requests == 0 { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .await;

    // A sandbox: running, then paused; the meter follows its own counters.
    let img = tempfile::tempdir().unwrap();
    let layout = common::oci::busybox_httpd(img.path(), "img", &[]);
    s.ok(&["image", "import", &layout, "--name", "sb:1"]);
    let id = s.ok(&["sandbox", "create", "--image", "sb:1", "--memory", "128"]).trim().to_string();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.ok(&["sandbox", "pause", &id]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rows = usage(&s, &format!("kind=sandbox&name={id}")).await;
    assert!(total(&rows, "running_seconds") >= 2000 && total(&rows, "paused_seconds") >= 1000, "{rows:?}");

    // A restart: the sandbox goes on standby; what the meter counted before and after adds
    // up to its own counters exactly (running time stops at the standby).
    s.restart();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let record: Value = s.get(&format!("/v1/sandboxes/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(record["state"], "standby", "{record}");
    let rows = usage(&s, &format!("kind=sandbox&name={id}")).await;
    assert_eq!(total(&rows, "running_seconds"), u128::from(record["usage"]["running_ms"].as_u64().unwrap()), "{rows:?} vs {record}");
    assert_eq!(total(&rows, "paused_seconds"), u128::from(record["usage"]["paused_ms"].as_u64().unwrap()), "{rows:?} vs {record}");
    assert!(total(&rows, "standby_seconds") > 0, "standby time is metered: {rows:?}");
    let gb_s: u128 = rows.iter().map(|r| hangar_cost::money::parse_fixed(r["gb_seconds"].as_str().unwrap(), 13).unwrap()).sum();
    assert_eq!(gb_s, total(&rows, "running_seconds") * 128 * 9_765_625, "memory-time is the running time (ms) × 128 MiB");

    // A service: its instance time is sampled, and its requests are counted at the gateway
    // (the time spent serving them as billed ms); the advisor weighs it against its own cost.
    let page = [("www/index.html", b"hi\n".as_slice(), 0o644)];
    let web = common::oci::busybox_httpd(img.path(), "web", &page);
    s.ok(&["image", "import", &web, "--name", "web:1"]);
    s.ok(&["svc", "deploy", "web", "--image", "web:1", "--memory", "64", "--cpus", "0.25"]);
    for _ in 0..12 {
        let r = s.http().get(format!("{}/svc/default/web/", s.url)).bearer_auth(&s.admin_key).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "hi\n".to_string()));
    }
    let r = s.http().get(format!("{}/svc/default/web/missing", s.url)).bearer_auth(&s.admin_key).send().await.unwrap();
    assert_eq!(r.status(), 404, "a 404 from the service is a request, not a failure");
    let rows = common::eventually("13 service requests metered", Duration::from_secs(20), || async {
        let rows = usage(&s, "kind=service&name=web").await;
        let requests: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
        if requests == 13 { Ok(rows) } else { Err(format!("{rows:?}")) }
    })
    .await;
    assert_eq!(rows.iter().map(|r| r["errors"].as_u64().unwrap()).sum::<u64>(), 0, "{rows:?}");
    assert!(total(&rows, "running_seconds") > 0, "{rows:?}");
    // Its instance time, priced on Fargate: vCPU-time × $0.04048/h + memory-time × $0.004445/h.
    for r in &rows {
        let vcpu_milli_ms = hangar_cost::money::parse_fixed(r["vcpu_seconds"].as_str().unwrap(), 6).unwrap();
        let mb_ms = hangar_cost::money::parse_fixed(r["gb_seconds"].as_str().unwrap(), 13).unwrap() / 9_765_625;
        let price = |p: &str| Money::parse(p).unwrap().pico();
        let by_hand = div_round(vcpu_milli_ms * price("0.04048"), 3_600_000_000) + div_round(mb_ms * price("0.004445"), 1024 * 3_600_000);
        assert_eq!((r["cost"].as_str().unwrap(), r["priced_with"].as_str().unwrap()), (Money(by_hand).to_string().as_str(), "aws-fargate"), "{r}");
    }
    let v: Value = s.get("/v1/advice?kind=service").send().await.unwrap().json().await.unwrap();
    let a = &v["items"][0];
    assert_eq!((a["kind"].as_str(), a["name"].as_str(), a["observed"]["requests"].as_u64()), (Some("service"), Some("web"), Some(13)), "{v}");
    assert_eq!(a["recommendation"], "function", "13 requests an hour cost less as a function than an always-on instance: {a}");
    assert!(!a["monthly_saving"].as_str().unwrap().starts_with('-'), "the saving is against the service: {a}");
    assert!(a["costs"]["estimates"].as_array().unwrap().iter().any(|e| e["model"] == "sandbox"), "{a}");
    let advice = s.ok(&["advise", "web"]);
    assert!(advice.contains("web (service): run as function (saves $"), "{advice}");
    let err = s.fails(&["advise", "--kind", "vm"], 6);
    assert!(err.contains("kind"), "{err}");
    s.ok(&["svc", "rm", "web"]);

    // Bad input.
    for q in ["per=week", "kind=vm", "since=yesterday-ish"] {
        let r = s.get(&format!("/v1/usage?{q}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{q}");
    }
    s.ok(&["sandbox", "rm", &id]);
}
