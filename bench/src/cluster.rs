//! The cluster, side by side in one run: how long a deploy through one node takes to be
//! routable on every other node (three nodes on one PostgreSQL and one nats-server), and how
//! fast the async queue accepts events on PostgreSQL against SQLite on the same machine.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Hangar, median, percentile};

/// Deploys measured for propagation.
const DEPLOYS: usize = 40;
/// Events accepted per store, and how many are sent at once.
const EVENTS: usize = 4000;
const SENDERS: usize = 32;

/// Deploys `hello` with `GREETING` set to `greeting` through `h`'s API; its time.
async fn deploy(client: &reqwest::Client, h: &Hangar, code: &[u8], greeting: &str) -> Result<Duration> {
    let form = reqwest::multipart::Form::new()
        .text("config", serde_json::json!({"runtime": "wasm", "env": {"GREETING": greeting}, "public": true}).to_string())
        .part("code", reqwest::multipart::Part::bytes(code.to_vec()).file_name("hello.wasm"));
    let start = Instant::now();
    let r = client.put(format!("{}/v1/functions/hello", h.url)).bearer_auth(&h.key).multipart(form).send().await?;
    if !r.status().is_success() {
        bail!("deploy through {}: {}", h.url, r.text().await?);
    }
    Ok(start.elapsed())
}

/// Accepted events per second on one node with the given store flags.
async fn accept_rate(bin: &Path, component: &Path, extra: &[&str]) -> Result<f64> {
    let h = Hangar::start_with(bin, extra)?;
    h.cli(&["fn", "deploy", "hello", "--code", component.to_str().context("component path")?])?;
    let client = reqwest::Client::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (client, url, key, next) = (client.clone(), format!("{}/v1/functions/hello/invoke?async=true", h.url), h.key.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < EVENTS {
                let r = client.post(&url).bearer_auth(&key).body("{}").send().await?;
                if r.status() != 202 {
                    bail!("an event was not accepted: {} {}", r.status(), r.text().await?);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for s in senders {
        s.await??;
    }
    Ok(EVENTS as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(bin: &Path, component: &Path) -> Result<String> {
    let pg = hangar_testkit::Postgres::start_durable();
    let nats = hangar_testkit::Nats::start();
    let code = std::fs::read(component)?;
    let client = reqwest::Client::new();

    // Deploy through one node, then poll every other node until it serves the new revision.
    let store = pg.fresh_database();
    let flags = ["--store", store.as_str(), "--bus", &nats.url()];
    let first = Hangar::start_with(bin, &flags)?;
    let nodes = [Hangar::join(bin, &flags, &first.key)?, Hangar::join(bin, &flags, &first.key)?];
    let all: Vec<&Hangar> = std::iter::once(&first).chain(nodes.iter()).collect();
    deploy(&client, &first, &code, "warm-up").await?;
    // The first call on another node fetches the code from the store and compiles it there
    // (once per node); later revisions of the same code need neither.
    let mut first_calls = Vec::new();
    for node in &nodes {
        let start = Instant::now();
        loop {
            let r = client.get(format!("{}/fn/default/hello/", node.url)).send().await?;
            if r.status().is_success() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        first_calls.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let (mut propagation, mut deploys) = (Vec::new(), Vec::new());
    for i in 0..DEPLOYS {
        let through = all[i % all.len()];
        let greeting = format!("r{i}");
        deploys.push(deploy(&client, through, &code, &greeting).await?.as_secs_f64() * 1000.0);
        let answered = Instant::now();
        for node in all.iter().filter(|n| n.url != through.url) {
            loop {
                let body = client.get(format!("{}/fn/default/hello/", node.url)).send().await?.text().await?;
                if body.starts_with(&greeting) {
                    break;
                }
                if answered.elapsed() > Duration::from_secs(10) {
                    bail!("revision {greeting} did not reach {} in 10 s (it answers {body:?})", node.url);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        propagation.push(answered.elapsed().as_secs_f64() * 1000.0);
    }
    drop(nodes);
    drop(first);
    let mut sorted = propagation.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!("deploy → routable elsewhere, ms, sorted: {sorted:.1?}");

    // The async queue: accepted means committed, on each store in turn.
    let pg_store = pg.fresh_database();
    let on_sqlite = accept_rate(bin, component, &[]).await?;
    let on_postgres = accept_rate(bin, component, &["--store", &pg_store]).await?;

    let mut out = String::new();
    writeln!(out, "## Cluster\n")?;
    writeln!(out, "Three nodes of the release binary on one machine, sharing a throwaway PostgreSQL 15 (the store)")?;
    writeln!(out, "and nats-server 2.9 with JetStream (the bus), both on loopback; `./scripts/bench.sh --cluster-only`.\n")?;
    writeln!(out, "| measure | value | goal |")?;
    writeln!(out, "|---|---:|---|")?;
    writeln!(out, "| deploy → routable on every other node (from the deploy's answer), p50 of {DEPLOYS} | {:.1} ms | |", percentile(propagation.clone(), 0.5))?;
    writeln!(out, "| deploy → routable on every other node, p99 | {:.1} ms | ≤ 100 ms |", percentile(propagation.clone(), 0.99))?;
    writeln!(out, "| the deploy itself (upload, compile, store, apply here), median | {:.1} ms | |", median(deploys))?;
    writeln!(
        out,
        "| first call on a node that never ran the code (fetch from the store, compile there), median of {} | {:.1} ms | |",
        first_calls.len(),
        median(first_calls)
    )?;
    writeln!(
        out,
        "| async events accepted per second ({SENDERS} senders, {EVENTS} events), PostgreSQL vs SQLite | {on_postgres:.0} vs {on_sqlite:.0} /s ({:.2}×) | |",
        on_postgres / on_sqlite
    )?;
    writeln!(out, "\nEach accepted event is committed before its 202 on either store: SQLite with `synchronous=FULL`,")?;
    writeln!(out, "PostgreSQL with `fsync=on` (its defaults), on the same disk.")?;
    writeln!(out, "Propagation is polled every millisecond over HTTP, so its numbers include up to ~1 ms of polling.\n")?;
    Ok(out)
}
