//! Scaling and events, side by side in one run: a burst of 500 concurrent first requests to a
//! cold function (Python against 500 plain `python3` processes running the same handler; WASM
//! against `wasmtime serve` of the same component); a call that resumes a paused instance
//! against a new instance of the same function; deploy to first answer of a new function with
//! the runtime's prewarmed zygote against without one; the time a service's autoscaler takes to settle
//! after a 10× step in load; and asynchronous invocations accepted and completed per second
//! with durability on, against synchronous calls of the same function.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{Hangar, free_port, median, percentile};

/// Concurrent first requests of the burst.
const BURST: usize = 500;
/// Samples of the resume and cold figures.
const SAMPLES: usize = 12;
/// Events of the async throughput figure.
const EVENTS: usize = 2000;
/// Concurrent clients sending them.
const CLIENTS: usize = 32;

const PY_APP: &str = "def handler(event, context):\n    return {'ok': True}\n";

/// New functions per runtime and server in the prewarm figure.
const FIRSTS: usize = 8;

/// Deploy-to-first-answer times (ms) per runtime: on a server with prewarmed zygotes, and on
/// one without, in the same run.
#[allow(clippy::type_complexity)]
async fn first_answers(bin: &Path, client: &reqwest::Client, work: &Path) -> Result<(Vec<(&'static str, Vec<f64>)>, Vec<(&'static str, Vec<f64>)>)> {
    let pooled = Hangar::start(bin)?;
    let bare = Hangar::start_with(bin, &["--prewarm", "0"])?;
    let node_dir = work.join("node");
    std::fs::create_dir_all(&node_dir)?;
    std::fs::write(node_dir.join("index.js"), "exports.handler = async () => ({ ok: true });\n")?;
    let py_dir = work.join("py");
    let runtimes: [(&'static str, &Path, &str); 2] = [("python3", &py_dir, "app.handler"), ("nodejs", &node_dir, "index.handler")];
    let (mut with_pool, mut without): (Vec<(&'static str, Vec<f64>)>, Vec<(&'static str, Vec<f64>)>) = (Vec::new(), Vec::new());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (rt, dir, handler) in runtimes {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..FIRSTS {
            for (h, times) in [(&pooled, &mut a), (&bare, &mut b)] {
                let name = format!("first-{rt}-{i}");
                let t = Instant::now();
                h.cli(&["fn", "deploy", &name, "--runtime", rt, "--handler", handler, "--code", dir.to_str().unwrap_or_default()])?;
                invoke(client, h, &name).await?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        with_pool.push((rt, a));
        without.push((rt, b));
    }
    Ok((with_pool, without))
}

/// Fires `n` requests at once; returns each one's latency in ms and the time until all were
/// answered, failing if any was not a success.
async fn burst(n: usize, make: impl Fn() -> reqwest::RequestBuilder) -> Result<(Vec<f64>, f64)> {
    let t0 = Instant::now();
    let calls = (0..n).map(|_| {
        let rb = make();
        async move {
            let t = Instant::now();
            let r = rb.send().await?;
            let ok = r.status().is_success();
            let _ = r.bytes().await;
            anyhow::ensure!(ok, "a burst request failed");
            Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64() * 1000.0)
        }
    });
    let lat = futures::future::join_all(calls).await.into_iter().collect::<Result<Vec<f64>>>()?;
    Ok((lat, t0.elapsed().as_secs_f64() * 1000.0))
}

/// The peer of the Python burst: `n` plain python3 processes at once, each importing the
/// handler and calling it once; per-process time from spawn to exit, and the total.
async fn python_processes(n: usize, dir: &Path) -> Result<(Vec<f64>, f64)> {
    let t0 = Instant::now();
    let runs = (0..n).map(|_| async move {
        let t = Instant::now();
        let st = tokio::process::Command::new("python3")
            .args(["-c", "import app, json; print(json.dumps(app.handler({}, None)))"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(st.success(), "python3 failed");
        Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64() * 1000.0)
    });
    let lat = futures::future::join_all(runs).await.into_iter().collect::<Result<Vec<f64>>>()?;
    Ok((lat, t0.elapsed().as_secs_f64() * 1000.0))
}

fn row(out: &mut String, what: &str, (lat, total): &(Vec<f64>, f64)) {
    let _ = writeln!(out, "| {what} | {total:.0} ms | {:.0} ms | {:.0} ms |", median(lat.clone()), percentile(lat.clone(), 0.99));
}

async fn invoke(client: &reqwest::Client, h: &Hangar, name: &str) -> Result<(f64, String)> {
    let t = Instant::now();
    let r = client.post(format!("{}/v1/functions/{name}/invoke", h.url)).bearer_auth(&h.key).json(&json!({})).send().await?;
    let id = r.headers().get("x-hangar-invocation-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    anyhow::ensure!(r.status().is_success(), "invoking {name}: {}", r.status());
    let _ = r.bytes().await?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, id))
}

async fn start_kind(client: &reqwest::Client, h: &Hangar, id: &str) -> Result<String> {
    let v: Value = client.get(format!("{}/v1/invocations/{id}", h.url)).bearer_auth(&h.key).send().await?.json().await?;
    Ok(v["start"].as_str().unwrap_or_default().to_string())
}

async fn service_instances(client: &reqwest::Client, h: &Hangar, name: &str) -> Result<usize> {
    let v: Value = client.get(format!("{}/v1/services/{name}", h.url)).bearer_auth(&h.key).send().await?.json().await?;
    Ok(v["instances"].as_array().map_or(0, |i| i.iter().filter(|i| i["state"] == "ready").count()))
}

async fn metric(client: &reqwest::Client, h: &Hangar, sample: &str) -> Result<f64> {
    let text = client.get(format!("{}/metrics", h.url)).bearer_auth(&h.key).send().await?.text().await?;
    Ok(text.lines().find_map(|l| l.strip_prefix(sample).and_then(|r| r.trim().parse().ok())).unwrap_or(0.0))
}

/// Runs everything and returns the markdown section.
pub async fn run(bin: &Path, wasmtime: &Path, component: &Path) -> Result<String> {
    let root = std::env::current_dir()?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(BURST).build()?;
    let work = tempfile::tempdir()?;
    let code = work.path().join("py");
    std::fs::create_dir_all(&code)?;
    std::fs::write(code.join("app.py"), PY_APP)?;
    let code_s = code.to_str().context("temp path")?;
    let mut out = String::new();
    let h = Hangar::start(bin)?;

    eprintln!("scaling: bursts of {BURST}");
    h.cli(&["fn", "deploy", "burst", "--runtime", "python3", "--handler", "app.handler", "--code", code_s])?;
    let py = burst(BURST, || client.post(format!("{}/v1/functions/burst/invoke", h.url)).bearer_auth(&h.key).json(&json!({}))).await?;
    let plain = python_processes(BURST, &code).await?;
    h.cli(&["fn", "deploy", "wburst", "--code", component.to_str().unwrap_or_default(), "--public"])?;
    let wasm = burst(BURST, || client.get(format!("{}/fn/default/wburst/", h.url))).await?;
    let port = free_port()?;
    let mut serve = Command::new(wasmtime)
        .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting wasmtime serve")?;
    let up = Instant::now();
    while client.get(format!("http://127.0.0.1:{port}/")).send().await.is_err() {
        if up.elapsed() > Duration::from_secs(30) {
            bail!("wasmtime serve did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peer = burst(BURST, || client.get(format!("http://127.0.0.1:{port}/"))).await;
    let _ = serve.kill();
    let _ = serve.wait();
    let peer = peer?;

    eprintln!("scaling: resume against cold");
    h.cli(&["fn", "deploy", "pausy", "--runtime", "python3", "--handler", "app.handler", "--code", code_s, "--pause-after", "100ms"])?;
    h.cli(&["fn", "deploy", "coldy", "--runtime", "python3", "--handler", "app.handler", "--code", code_s, "--pause-after", "0s", "--keep-alive", "1s"])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    invoke(&client, &h, "pausy").await?;
    let (mut resumed, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        // Long enough for `pausy`'s instance to be paused and `coldy`'s to be reaped.
        tokio::time::sleep(Duration::from_millis(1800)).await;
        let (ms, id) = invoke(&client, &h, "pausy").await?;
        if start_kind(&client, &h, &id).await? == "resumed" {
            resumed.push(ms);
        }
        let (ms, id) = invoke(&client, &h, "coldy").await?;
        if start_kind(&client, &h, &id).await? == "prewarmed" {
            cold.push(ms);
        }
    }

    eprintln!("scaling: deploy to first answer, with and without prewarmed zygotes");
    drop(h);
    let (with_pool, without) = first_answers(bin, &client, work.path()).await?;
    let h = Hangar::start(bin)?;

    eprintln!("scaling: the autoscaler after a 10x step");
    let server = crate::services::backend(&root)?;
    let layout = work.path().join("image");
    crate::services::image(&layout, &server)?;
    h.cli(&["image", "import", layout.to_str().unwrap_or_default(), "--name", "bench/backend:1"])?;
    h.cli(&[
        "svc",
        "deploy",
        "step",
        "--image",
        "bench/backend:1",
        "--public",
        "--memory",
        "32",
        "--min",
        "1",
        "--max",
        "40",
        "--concurrency",
        "1",
        "--scale-window",
        "6s",
    ])?;
    let url = format!("{}/svc/default/step/sleep/50", h.url);
    let wrk = |c: u32, secs: u32| {
        Command::new("wrk")
            .args(["-t1", &format!("-c{c}"), &format!("-d{secs}s"), &url])
            .stdout(Stdio::null())
            .spawn()
            .context("running wrk (apt-get install wrk)")
    };
    let mut base = wrk(2, 28)?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let before = service_instances(&client, &h, "step").await?;
    let mut more = wrk(18, 20)?;
    let t0 = Instant::now();
    let mut series = Vec::new();
    while t0.elapsed() < Duration::from_secs(18) {
        series.push((t0.elapsed().as_secs_f64(), service_instances(&client, &h, "step").await?));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = more.wait();
    let _ = base.wait();
    let settled = series.last().map_or(0, |s| s.1);
    let peak = series.iter().map(|s| s.1).max().unwrap_or(0);
    // Steady: from the first sample after which the count stays within one of where it settled.
    let steady_at = series.iter().enumerate().find(|(i, _)| series[*i..].iter().all(|s| s.1.abs_diff(settled) <= 1)).map_or(f64::NAN, |(_, s)| s.0);
    h.cli(&["svc", "rm", "step"])?;

    eprintln!("scaling: async throughput");
    h.cli(&["fn", "deploy", "sink", "--code", component.to_str().unwrap_or_default()])?;
    let ok_metric = "hangar_invocations_total{namespace=\"default\",function=\"sink\",outcome=\"ok\"}";
    let t0 = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(CLIENTS));
    let sends = (0..EVENTS).map(|i| {
        let (client, sem, url, key) = (client.clone(), sem.clone(), format!("{}/v1/functions/sink/invoke?async=true", h.url), h.key.clone());
        async move {
            let _p = sem.acquire().await?;
            let r = client.post(url).bearer_auth(key).body(format!("event {i}")).send().await?;
            anyhow::ensure!(r.status() == 202, "async invoke: {}", r.status());
            Ok::<(), anyhow::Error>(())
        }
    });
    futures::future::join_all(sends).await.into_iter().collect::<Result<Vec<()>>>()?;
    let accepted_s = t0.elapsed().as_secs_f64();
    while metric(&client, &h, ok_metric).await? < EVENTS as f64 {
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("the asynchronous invocations did not complete");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let completed_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let syncs = (0..EVENTS).map(|i| {
        let (client, sem, url, key) = (client.clone(), sem.clone(), format!("{}/v1/functions/sink/invoke", h.url), h.key.clone());
        async move {
            let _p = sem.acquire().await?;
            let r = client.post(url).bearer_auth(key).body(format!("event {i}")).send().await?;
            anyhow::ensure!(r.status().is_success(), "invoke: {}", r.status());
            let _ = r.bytes().await;
            Ok::<(), anyhow::Error>(())
        }
    });
    futures::future::join_all(syncs).await.into_iter().collect::<Result<Vec<()>>>()?;
    let sync_s = t1.elapsed().as_secs_f64();
    drop(h);

    let _ = writeln!(out, "## Scaling and events\n");
    let _ = writeln!(
        out,
        "### A burst of {BURST} first requests\n\n{BURST} requests sent at once to a function nobody called yet, until every one is answered\n\
         (all must succeed). Python: Hangar forks instances from the function's zygote, up to\n\
         `max_instances` (100), and the rest wait for a free instance; the peer starts {BURST} plain\n\
         `python3` processes at once, each importing the same handler and calling it once. WASM:\n\
         Hangar's first requests to a deployed component against `wasmtime serve` of the same\n\
         component (its first {BURST} requests after it started).\n"
    );
    let _ = writeln!(out, "| burst of {BURST} | all answered | p50 | p99 |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    row(&mut out, "Hangar, python3 function (cold)", &py);
    row(&mut out, "500 plain python3 processes", &plain);
    row(&mut out, "Hangar, wasm function (cold)", &wasm);
    row(&mut out, "wasmtime serve", &peer);
    let _ = writeln!(out, "\nPython: {:.2}× the plain processes' time; WASM: {:.2}× wasmtime serve's.\n", py.1 / plain.1, wasm.1 / peer.1);
    let (r50, c50) = (median(resumed.clone()), median(cold.clone()));
    let _ = writeln!(
        out,
        "### Resume from pause against a cold start\n\nThe same Python function, called through `POST /v1/functions/NAME/invoke` once its idle\n\
         instance was paused by the cgroup freezer (`--pause-after 100ms`; the record says\n\
         `resumed`), and once its instances were reaped (`--keep-alive 1s`; the record says\n\
         `prewarmed`: the spare sandbox made ahead of demand is let go). {} and {} samples, alternating; medians.\n",
        resumed.len(),
        cold.len()
    );
    let _ = writeln!(out, "| call | p50 | p90 |");
    let _ = writeln!(out, "|---|---:|---:|");
    let _ = writeln!(out, "| resumed (paused instance thawed) | {r50:.2} ms | {:.2} ms |", percentile(resumed, 0.9));
    let _ = writeln!(out, "| new instance (the spare sandbox let go: `prewarmed`) | {c50:.2} ms | {:.2} ms |", percentile(cold, 0.9));
    let _ = writeln!(out, "\nResume is {:.2}× a new instance.\n", r50 / c50);
    let _ = writeln!(
        out,
        "### Deploy to first answer: prewarmed zygotes\n\nA new function deployed (`hangar fn deploy`, code from a directory) and called at once\n\
         (`POST /v1/functions/NAME/invoke`), timed from the deploy's start to the answer; one server\n\
         keeps a prewarmed zygote per runtime (`--prewarm 1`, the default), the other none\n\
         (`--prewarm 0`), so its new function's zygote starts its interpreter first. {FIRSTS}\n\
         functions per runtime on each server, alternating, 1.5 s apart (the pool refills); medians.\n"
    );
    let _ = writeln!(out, "| runtime | prewarmed zygote | no pool | ratio |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for ((rt, a), (_, b)) in with_pool.iter().zip(&without) {
        let (a, b) = (median(a.clone()), median(b.clone()));
        let _ = writeln!(out, "| {rt} | {a:.1} ms | {b:.1} ms | {:.2}× |", a / b);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "### The autoscaler after a 10× step\n\nA service of `bench/svc-backend` (`/sleep/50` answers after 50 ms) with `--concurrency 1\n\
         --min 1 --max 40 --scale-window 6s`, loaded by wrk with 2 connections for 8 s, then 20\n\
         (another wrk with 18 joins). Ready instances polled every 100 ms for 18 s after the step.\n"
    );
    let _ = writeln!(out, "| measure | value |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| ready instances before the step (2 connections) | {before} |");
    let _ = writeln!(out, "| ready instances where it settled (20 connections) | {settled} |");
    let _ = writeln!(out, "| most ready instances at once (overshoot) | {peak} |");
    let _ = writeln!(out, "| **time from the step until steady** (within one of where it settled, for good) | **{steady_at:.1} s** |");
    let _ = writeln!(
        out,
        "\n### Asynchronous invocations\n\n{EVENTS} events from {CLIENTS} concurrent clients to a WASM function (`POST ...?async=true`, each\n\
         answered 202 only once it is committed to SQLite with `synchronous=FULL`), until all of\n\
         them ran; and the same {EVENTS} calls made synchronously by the same clients.\n"
    );
    let _ = writeln!(out, "| measure | per second |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| async accepted (persisted) | {:.0} |", EVENTS as f64 / accepted_s);
    let _ = writeln!(out, "| async completed (accepted to run, end to end) | {:.0} |", EVENTS as f64 / completed_s);
    let _ = writeln!(out, "| synchronous calls of the same function | {:.0} |", EVENTS as f64 / sync_s);
    let _ = writeln!(out, "\nAccepting durably runs at {:.2}× the synchronous call rate.\n", (EVENTS as f64 / accepted_s) / (EVENTS as f64 / sync_s));
    Ok(out)
}
