//! The cluster, side by side in one run: how long a deploy through one node takes to be
//! routable on every other node (three nodes on one PostgreSQL and one nats-server), what a hop
//! through a gateway node costs a function call and a service request, how long a killed
//! worker's service instances take to run elsewhere, and how fast the async queue accepts
//! events on PostgreSQL against SQLite on the same machine; and a
//! scale model past this machine: the real placement code against 1,000 simulated workers and
//! 100,000 functions, in process.

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
/// Runs per store of the accept measurement (medians are reported).
const ACCEPT_RUNS: usize = 3;
/// Sequential calls timed per path for the forwarding overhead (after 200 to warm up).
const LATENCY_CALLS: usize = 2000;

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

/// The times of [`LATENCY_CALLS`] sequential GETs of `url` (after 200 to warm up), in ms.
async fn sequential_ms(client: &reqwest::Client, url: &str) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(LATENCY_CALLS);
    for i in 0..(LATENCY_CALLS + 200) {
        let start = Instant::now();
        let r = client.get(url).send().await?;
        if !r.status().is_success() {
            bail!("GET {url} failed: {}", r.status());
        }
        r.bytes().await?;
        if i >= 200 {
            out.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(out)
}

/// Kills of a worker timed until its service instances run elsewhere.
const KILLS: usize = 5;

/// Waits until service `web`, as `seen_by` reports it, has three ready instances spread over
/// `nodes` nodes.
async fn spread(client: &reqwest::Client, seen_by: &Hangar, nodes: usize, within: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let v: serde_json::Value = client.get(format!("{}/v1/services/web", seen_by.url)).bearer_auth(&seen_by.key).send().await?.json().await?;
        let ready: Vec<u64> = v["nodes"].as_array().into_iter().flatten().filter_map(|n| n["ready"].as_u64()).filter(|r| *r > 0).collect();
        if ready.iter().sum::<u64>() == 3 && ready.len() == nodes {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!("service web is not at 3 ready instances over {nodes} nodes after {within:?}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

/// Simulated workers and functions of the scale model, and the decisions timed.
const SIM_WORKERS: usize = 1000;
const SIM_FUNCTIONS: usize = 100_000;
const SIM_DECISIONS: usize = 200_000;

/// A small deterministic generator (xorshift), so every run models the same cluster.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The scale model: placement decision p50/p99 (µs) and bytes per warm revision.
fn simulate() -> (f64, f64, f64, usize) {
    use hangar_scheduler::placement::{Needs, Placement, Worker, revision_key};
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let workers: Vec<Worker> = (0..SIM_WORKERS)
        .map(|i| Worker {
            id: format!("node-{i}"),
            address: format!("10.0.{}.{}:7070", i / 250, i % 250),
            accepting: rng.below(50) != 0,
            free_cpu_milli: rng.below(16_000),
            free_memory_mb: rng.below(64 * 1024),
            instances: rng.below(1000) as u32,
            max_instances: 1000,
        })
        .collect();
    let mut placement = Placement::new(workers, "node-0");
    let keys: Vec<u64> = (0..SIM_FUNCTIONS).map(|f| revision_key("ns", &format!("fn-{f}"), 1)).collect();
    // Each function warm on one to three workers.
    for key in &keys {
        for _ in 0..=rng.below(3) {
            placement.add_warm(*key, rng.below(SIM_WORKERS as u64) as usize);
        }
    }
    let mut times = Vec::with_capacity(SIM_DECISIONS);
    let mut placed = 0usize;
    for i in 0..SIM_DECISIONS {
        // One call in five is of a revision warm nowhere (a new deploy).
        let key = if i % 5 == 0 { revision_key("ns", &format!("new-{i}"), 1) } else { keys[rng.below(SIM_FUNCTIONS as u64) as usize] };
        let needs = Needs { memory_mb: 128 << rng.below(4), cpu_milli: 0 };
        let start = Instant::now();
        let at = std::hint::black_box(placement.place(key, needs));
        times.push(start.elapsed().as_secs_f64() * 1e6);
        placed += usize::from(at.is_some());
    }
    let per_revision = placement.index_bytes() as f64 / placement.revisions() as f64;
    (percentile(times.clone(), 0.5), percentile(times, 0.99), per_revision, placed)
}

pub async fn run(bin: &Path, component: &Path) -> Result<String> {
    let pg = hangar_testkit::Postgres::start_durable();
    let nats = hangar_testkit::Nats::start();
    let code = std::fs::read(component)?;
    let client = reqwest::Client::new();

    // Deploy through one node, then poll every other node until it serves the new revision.
    let store = pg.fresh_database();
    let flags = ["--store", store.as_str(), "--bus", &nats.url(), "--cluster-secret", "bench-cluster-secret-0123456789"];
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
    // A request served on another node than the one it arrived at, against one served where it
    // arrived: a gateway node forwards every call to a worker.
    let gateway_flags: Vec<&str> = flags.iter().copied().chain(["--role", "gateway"]).collect();
    let gateway = Hangar::join(bin, &gateway_flags, &first.key)?;
    let local = sequential_ms(&client, &format!("{}/fn/default/hello/", first.url)).await?;
    let remote = sequential_ms(&client, &format!("{}/fn/default/hello/", gateway.url)).await?;
    // Services: three instances over the three workers (the gateway runs none); a request
    // through the gateway, forwarded to a worker, against one served where it arrived; and
    // kill -9 of a worker until the service is back at three ready instances.
    let server = crate::services::backend(&std::env::current_dir()?)?;
    let layout = tempfile::tempdir()?;
    crate::services::image(layout.path(), &server)?;
    first.cli(&["image", "import", layout.path().to_str().unwrap_or_default(), "--name", "bench/backend:1"])?;
    first.cli(&["svc", "deploy", "web", "--image", "bench/backend:1", "--min", "3", "--max", "3", "--memory", "32", "--public"])?;
    spread(&client, &first, 3, Duration::from_secs(60)).await?;
    let svc_local = sequential_ms(&client, &format!("{}/svc/default/web/", first.url)).await?;
    let svc_remote = sequential_ms(&client, &format!("{}/svc/default/web/", gateway.url)).await?;
    let mut nodes = nodes;
    let mut restored = Vec::new();
    for _ in 0..KILLS {
        let victim = &mut nodes[1];
        if let Some(mut c) = victim.child.take() {
            c.kill()?;
            c.wait()?;
        }
        let start = Instant::now();
        spread(&client, &first, 2, Duration::from_secs(60)).await?;
        restored.push(start.elapsed().as_secs_f64() * 1000.0);
        eprintln!("kill -9 of a worker → 3 ready again in {:.0} ms", start.elapsed().as_secs_f64() * 1000.0);
        // Back (its leftovers removed at start), it takes its part again.
        victim.boot()?;
        spread(&client, &first, 3, Duration::from_secs(60)).await?;
    }
    drop(gateway);
    drop(nodes);
    drop(first);
    let mut sorted = propagation.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!("deploy → routable elsewhere, ms, sorted: {sorted:.1?}");

    // The async queue: accepted means committed, on each store in turn.
    // Alternating runs, medians: PostgreSQL's commits wait on fsync of a shared disk, and vary.
    let (mut on_sqlite, mut on_postgres) = (Vec::new(), Vec::new());
    for _ in 0..ACCEPT_RUNS {
        let pg_store = pg.fresh_database();
        on_sqlite.push(accept_rate(bin, component, &[]).await?);
        on_postgres.push(accept_rate(bin, component, &["--store", &pg_store]).await?);
    }
    let (on_sqlite, on_postgres) = (median(on_sqlite), median(on_postgres));

    let (sim_p50, sim_p99, per_revision, placed) = simulate();

    let mut out = String::new();
    writeln!(out, "## Cluster\n")?;
    writeln!(out, "Three nodes of the release binary on one machine, sharing a throwaway PostgreSQL 15 (the store)")?;
    writeln!(out, "and nats-server 2.9 with JetStream (the bus), both on loopback; `./scripts/bench.sh --cluster-only`.\n")?;
    writeln!(out, "| measure | value | goal |")?;
    writeln!(out, "|---|---:|---|")?;
    writeln!(out, "| deploy → routable on every other node (from the deploy's answer), p50 of {DEPLOYS} | {:.1} ms | |", percentile(propagation.clone(), 0.5))?;
    writeln!(out, "| deploy → routable on every other node, p99 | {:.1} ms | ≤ 100 ms |", percentile(propagation.clone(), 0.99))?;
    writeln!(out, "| the deploy itself (upload, compile, store, apply here), median | {:.1} ms | |", median(deploys))?;
    let (l50, r50) = (percentile(local.clone(), 0.5), percentile(remote.clone(), 0.5));
    writeln!(out, "| a call served where it arrived, p50 of {LATENCY_CALLS} sequential | {l50:.3} ms | |")?;
    writeln!(out, "| a call through a gateway node, served on a worker, p50 | {r50:.3} ms (+{:.3} ms) | ≤ +0.3 ms |", r50 - l50)?;
    writeln!(out, "| the same, p99: where it arrived vs through a gateway | {:.3} vs {:.3} ms | |", percentile(local, 0.99), percentile(remote, 0.99))?;
    let (sl50, sr50) = (percentile(svc_local.clone(), 0.5), percentile(svc_remote.clone(), 0.5));
    writeln!(out, "| a service request served where it arrived, p50 of {LATENCY_CALLS} sequential | {sl50:.3} ms | |")?;
    writeln!(out, "| a service request through a gateway node, served on a worker, p50 | {sr50:.3} ms (+{:.3} ms) | ≤ +0.3 ms |", sr50 - sl50)?;
    writeln!(
        out,
        "| kill -9 of a worker → a 3-instance service back at 3 ready (1 s heartbeats), median of {KILLS} (max) | {:.0} ms ({:.0} ms) | ≤ 10,000 ms |",
        median(restored.clone()),
        restored.iter().copied().fold(0.0, f64::max)
    )?;
    writeln!(
        out,
        "| first call on a node that never ran the code (fetch from the store, compile there), median of {} | {:.1} ms | |",
        first_calls.len(),
        median(first_calls)
    )?;
    writeln!(
        out,
        "| async events accepted per second ({SENDERS} senders, {EVENTS} events, median of {ACCEPT_RUNS}), PostgreSQL vs SQLite | {on_postgres:.0} vs {on_sqlite:.0} /s ({:.2}×) | |",
        on_postgres / on_sqlite
    )?;
    writeln!(out, "\nEach accepted event is committed before its 202 on either store: SQLite with `synchronous=FULL`,")?;
    writeln!(out, "PostgreSQL with `fsync=on` (its defaults), on the same disk.")?;
    writeln!(out, "Propagation is polled every millisecond over HTTP, so its numbers include up to ~1 ms of polling.\n")?;
    writeln!(out, "### Scale model: placement at {SIM_WORKERS} workers and {SIM_FUNCTIONS} functions\n")?;
    writeln!(out, "The real placement code (`hangar_scheduler::placement`) against simulated workers (random free memory,")?;
    writeln!(out, "CPU and instances, 1 in 50 not taking work) and functions warm on one to three workers each; {SIM_DECISIONS}")?;
    writeln!(out, "decisions, one in five for a revision warm nowhere (the least-loaded scan), in process.\n")?;
    writeln!(out, "| measure | value | goal |")?;
    writeln!(out, "|---|---:|---|")?;
    writeln!(out, "| placement decision, p50 | {sim_p50:.2} µs | |")?;
    writeln!(out, "| placement decision, p99 | {sim_p99:.2} µs | ≤ 1,000 µs |")?;
    writeln!(out, "| memory per warm revision in the placement index | {per_revision:.0} bytes | |")?;
    writeln!(out, "| calls placed (the rest found no worker with room) | {placed} of {SIM_DECISIONS} | |\n")?;
    Ok(out)
}
