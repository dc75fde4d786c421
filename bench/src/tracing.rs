//! Tracing overhead: throughput of the same WebAssembly function on three servers side by
//! side: tracing off (`--trace-sample off`), at the default sampling, and with every request
//! sampled, kept and exported over OTLP (`--trace-sample 1 --otlp-endpoint`, to a collector
//! that counts the bytes it gets), in rotating wrk runs.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::{Hangar, median, wrk};

pub async fn run(bin: &Path, component: &Path, connections: u32, seconds: u32, runs: usize) -> Result<String> {
    let (collector, received) = collector().await?;
    let off = Hangar::start_with(bin, &["--trace-sample", "off"])?;
    let default = Hangar::start(bin)?;
    let every = Hangar::start_with(bin, &["--trace-sample", "1", "--otlp-endpoint", &collector])?;
    let servers = [&off, &default, &every];
    let mut urls = Vec::new();
    for h in servers {
        h.cli(&["fn", "deploy", "hello", "--code", component.to_str().unwrap_or_default(), "--public"])?;
        let url = format!("{}/fn/default/hello/", h.url);
        wrk(&url, connections, 2)?;
        urls.push(url);
    }
    let mut rps: [Vec<f64>; 3] = Default::default();
    for run in 0..runs {
        eprintln!("tracing run {} of {runs}", run + 1);
        // Rotate which goes first, so drift in the machine's load favours none.
        for k in 0..3 {
            let i = (run + k) % 3;
            rps[i].push(wrk(&urls[i], connections, seconds)?.rps);
        }
    }
    let kept = every.cli(&["-o", "json", "traces", "hello", "--limit", "1000"])?;
    let kept = serde_json::from_str::<serde_json::Value>(&kept)?["items"].as_array().map_or(0, Vec::len);
    let metrics = reqwest::Client::new().get(format!("{}/metrics", every.url)).bearer_auth(&every.key).send().await?.text().await?;
    let counter = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
    let (exported, dropped) = (counter("hangar_otlp_spans_exported_total"), counter("hangar_otlp_spans_dropped_total"));
    let received = received.load(std::sync::atomic::Ordering::Relaxed);
    let [o, d, e] = [median(rps[0].clone()), median(rps[1].clone()), median(rps[2].clone())];
    let mut out = String::new();
    writeln!(out, "## Tracing\n")?;
    writeln!(out, "Throughput of the same WebAssembly function (`hello`, public, through its URL) on three servers side by")?;
    writeln!(out, "side: tracing off (`--trace-sample off`), the default sampling (0.01 of traces by id, every error and slow")?;
    writeln!(out, "trace, one per workload per second) and every request sampled, kept and exported over OTLP/HTTP to a collector")?;
    writeln!(out, "on loopback (`--trace-sample 1 --otlp-endpoint`); {runs} rotating wrk runs of {seconds} s with {connections} connections")?;
    writeln!(out, "each; medians. A traced request records three spans in memory (the gateway's, the invocation's, how its")?;
    writeln!(out, "instance was obtained); none touches the store, and export runs in a task of its own.\n")?;
    writeln!(out, "| measure | tracing off | default sampling | every request kept and exported |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    writeln!(out, "| requests/s | {o:.0} | {d:.0} | {e:.0} |")?;
    writeln!(out, "| vs off | 1.000× | {:.3}× | {:.3}× |", d / o, e / o)?;
    writeln!(
        out,
        "\nLoss at the default sampling: {:.1} % (goal ≤ 3 %); with every request kept and exported: {:.1} % (goal ≤ 10 %).",
        (1.0 - d / o) * 100.0,
        (1.0 - e / o) * 100.0
    )?;
    writeln!(out, "Runs off: {:?}; default: {:?}; every: {:?}.", rounded(&rps[0]), rounded(&rps[1]), rounded(&rps[2]))?;
    writeln!(
        out,
        "The exporting server sent {exported:.0} spans ({dropped:.0} dropped: its queue holds 8,192); the collector received {received} bytes of them. Its store held the newest {kept} traces of `hello` (it is bounded).\n"
    )?;
    Ok(out)
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.round()).collect()
}

/// A collector on loopback that takes OTLP/HTTP trace exports and counts their bytes.
async fn collector() -> Result<(String, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = count.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, count))
}

/// The metric history's memory for 1,000 functions, each with a full day of points, measured
/// by filling a history in this process the way the server's sampler does.
pub fn history_memory() -> Result<String> {
    use hangar_meter::history::{BYTES_PER_WORKLOAD, COARSE_POINTS, FINE_POINTS, FINE_S, History};
    let h = History::default();
    let functions = 1000;
    let t0: u64 = 1_800_000_000;
    let refs: Vec<_> = (0..functions)
        .map(|i| hangar_api::traces::WorkloadRef { kind: hangar_api::WorkloadKind::Function, namespace: "default".into(), name: format!("f{i}") })
        .collect();
    let entries: Vec<_> = refs.iter().map(|w| h.entry(w)).collect();
    let started = std::time::Instant::now();
    // A day of samples, every function called in each.
    let samples = (COARSE_POINTS as u64 * 60 / FINE_S) as usize;
    for n in 0..samples {
        for e in &entries {
            e.observe(1500, false, None);
        }
        h.sample(t0 + n as u64 * FINE_S, &std::collections::HashMap::new());
    }
    let took = started.elapsed();
    let bytes = BYTES_PER_WORKLOAD * functions;
    let mut out = String::new();
    writeln!(out, "## Metric history\n")?;
    writeln!(out, "Memory of the metric history for {functions} functions, each called in every 10 s period of a whole day")?;
    writeln!(out, "({samples} samples filled in this process, {:.1} s; `hangar-bench --tracing-only` measures it too): {FINE_POINTS}", took.as_secs_f64())?;
    writeln!(out, "10 s points and {COARSE_POINTS} 1 min points of 28 bytes per function, with its open periods and its request")?;
    writeln!(out, "window.\n")?;
    writeln!(out, "| measure | value | goal |")?;
    writeln!(out, "|---|---:|---|")?;
    writeln!(out, "| bytes per function | {BYTES_PER_WORKLOAD} | |")?;
    writeln!(out, "| {functions} functions | {:.1} MiB | ≤ 50 MiB |", bytes as f64 / f64::from(1 << 20))?;
    writeln!(out, "| functions with rings after the day | {} | {functions} |", h.with_rings())?;
    writeln!(out, "| a deployed function never called | no rings (a map entry) | |\n")?;
    Ok(out)
}
