//! The cost calculator and price sheets through the real binary: the built-in sheets with
//! their sources, bills that match hand computations from published prices, the break-even
//! rate, a user's own sheet (self-hosted), and bad input (absurd traffic, unknown and
//! malformed sheets).

mod common;

use common::Server;
use serde_json::{Value, json};

fn calc(s: &Server, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json", "cost", "calc"];
    all.extend_from_slice(args);
    serde_json::from_str(&s.ok(&all)).unwrap()
}

fn monthly<'a>(answer: &'a Value, model: &str) -> &'a str {
    answer["estimates"].as_array().unwrap().iter().find(|e| e["model"] == model).unwrap_or_else(|| panic!("no {model} in {answer}"))["monthly"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn the_calculator_prices_traffic_under_each_model_from_the_sheets() {
    let s = Server::start();
    let sheets = s.ok(&["prices", "ls"]);
    for name in ["aws-lambda-x86", "aws-lambda-arm", "aws-fargate", "gcp-cloud-run", "aws-ec2-t4g-medium"] {
        assert!(sheets.contains(name), "{sheets}");
    }
    assert!(sheets.contains("https://aws.amazon.com/lambda/pricing/"), "each sheet names its source: {sheets}");

    // 1 rps for 730 h of 1 s requests at 512 MB on x86 Lambda, by hand: (1,314,000 − 400,000)
    // GB-s × $0.0000166667 + (2,628,000 − 1,000,000) requests × $0.20/M = $15.5589638.
    let a = calc(&s, &["--rps", "1", "--duration", "1s", "--memory", "512"]);
    assert_eq!(monthly(&a, "function"), "15.5589638");
    // Fargate: 1 request in flight at 70 % needs 2 instances of 1 vCPU and 512 MiB all month:
    // 2 × 730 × ($0.04048 + 0.5 × $0.004445).
    assert_eq!(monthly(&a, "service"), "62.34565");
    assert_eq!(a["cheapest"], "function");
    // The break-even against the closed form (S + b) / a = 12.0622… rps (see hangar-cost).
    let a = calc(&s, &["--rps", "1", "--duration", "120ms", "--memory", "512", "--concurrency", "10"]);
    assert_eq!(a["break_even_rps"], "12.063");
    let table = s.ok(&["cost", "calc", "--rps", "20", "--duration", "120ms", "--memory", "512", "--concurrency", "10"]);
    assert!(table.contains("cheapest: service") && table.contains("above 12.063 requests/s"), "{table}");

    // A user's sheet: a machine of 16 vCPUs and 64 GiB at $120 a month.
    let prices = s.dir.path().join("prices");
    std::fs::create_dir_all(&prices).unwrap();
    std::fs::write(prices.join("own.toml"), "name = \"self-hosted\"\ntitle = \"Our rack\"\nsource = \"invoice 42\"\nas_of = \"2026-11-01\"\n[machine]\nmonthly = \"120\"\nvcpus = \"16\"\nmemory_gb = \"64\"\n").unwrap();
    assert!(s.ok(&["prices", "ls"]).contains("self-hosted"));
    let a = calc(&s, &["--rps", "5", "--duration", "120ms", "--memory", "1024", "--service-sheet", "self-hosted"]);
    // One instance of 1 vCPU and 1 GiB is 1/32 + 1/128 of the machine: $4.6875; billed from
    // the hourly prices rounded to 10⁻¹² $: 730 h × ($0.005136986301 + $0.001284246575).
    assert_eq!(monthly(&a, "service"), "4.68749999948");

    // Bad input.
    for (args, field) in [
        (vec!["--rps=0", "--duration", "1s", "--memory", "512"], "rps:"),
        (vec!["--rps=-3", "--duration", "1s", "--memory", "512"], "rps:"),
        (vec!["--rps", "1e12", "--duration", "1s", "--memory", "512"], "rps:"),
        (vec!["--rps", "1", "--duration", "soon", "--memory", "512"], "duration:"),
        (vec!["--rps", "1", "--duration", "1s", "--memory", "0"], "memory_mb:"),
        (vec!["--rps", "1", "--duration", "1s", "--memory", "512", "--sheet", "nope"], "no price sheet `nope`"),
    ] {
        let mut all = vec!["cost", "calc"];
        all.extend(args);
        let err = s.fails(&all, 6);
        assert!(err.contains(field), "{field}: {err}");
    }
    let r = s.http().post(format!("{}/v1/cost/calc", s.url)).json(&json!({"rps": "1", "duration": "1s", "memory_mb": 512})).send().await.unwrap();
    assert_eq!(r.status(), 401, "every call needs a key");
    // A malformed sheet is named with its line, and nothing is priced from a broken set.
    std::fs::write(
        prices.join("broken.toml"),
        "name = \"broken\"\ntitle = \"t\"\nsource = \"s\"\nas_of = \"x\"\n[service]\nper_vcpu_hour = \"1\"\nper_gb_hr = \"2\"\n",
    )
    .unwrap();
    let err = s.fails(&["prices", "ls"], 6);
    assert!(err.contains("broken.toml, line 7") && err.contains("per_gb_hr"), "{err}");
}
