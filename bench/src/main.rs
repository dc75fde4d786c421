//! `hangar-bench`: measures Hangar side by side with `wasmtime serve` on the same component,
//! with the same load generator (wrk) in the same run, and writes `BENCHMARKS.md`.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

mod cluster;
mod metering;
mod process;
mod recovery;
mod sandboxes;
mod scaling;
mod services;
mod tracing;

#[derive(Parser)]
struct Args {
    /// The hangar binary (a release build)
    #[arg(long, default_value = "target/release/hangar")]
    hangar: PathBuf,
    /// The peer: wasmtime-cli 48.0.8
    #[arg(long, default_value = "target/bench-tools/bin/wasmtime")]
    wasmtime: PathBuf,
    /// The component both serve
    #[arg(long, default_value = "examples/target/wasm32-wasip2/release/hello.wasm")]
    component: PathBuf,
    /// Seconds of load per run
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Concurrent connections of wrk
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Runs per side (medians are reported)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Functions deployed for the memory measurement
    #[arg(long, default_value_t = 1000)]
    functions: usize,
    /// Where to write the report
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Measure only process functions, replacing their sections of the report
    #[arg(long)]
    process_only: bool,
    /// Measure only services, replacing their sections of the report
    #[arg(long)]
    services_only: bool,
    /// Measure only scaling and events, replacing their section of the report
    #[arg(long)]
    scaling_only: bool,
    /// Measure only the metering overhead, replacing its section of the report
    #[arg(long)]
    metering_only: bool,
    /// Measure only the tracing overhead and the metric history, replacing their sections
    #[arg(long)]
    tracing_only: bool,
    /// Measure only the metric history's memory (in process, no server), replacing its section
    #[arg(long)]
    history_only: bool,
    /// Measure only sandboxes, replacing their section of the report
    #[arg(long)]
    sandboxes_only: bool,
    /// Measure only crash recovery and graceful stop, replacing their section of the report
    #[arg(long)]
    recovery_only: bool,
    /// Measure only the cluster (PostgreSQL + NATS), replacing its section of the report
    #[arg(long)]
    cluster_only: bool,
}

/// Where the process-function sections start in the report.
const PROCESS_HEADING: &str = "## Process functions";
/// Where the service sections start in the report.
const SERVICES_HEADING: &str = "## Services";
/// Where the scaling and events section starts in the report.
const SCALING_HEADING: &str = "## Scaling and events";
/// Where the metering section starts in the report.
const METERING_HEADING: &str = "## Metering";
const TRACING_HEADING: &str = "## Tracing";
const HISTORY_HEADING: &str = "## Metric history";
/// Where the sandboxes section starts in the report.
const SANDBOXES_HEADING: &str = "## Sandboxes";
/// Where the fuzzing section (written by hand from `scripts/fuzz.sh`) starts in the report.
const FUZZING_HEADING: &str = "## Fuzzing";
/// Where the crash-recovery section starts in the report.
const RECOVERY_HEADING: &str = "## Crash recovery";
/// Where the cluster section starts in the report.
const CLUSTER_HEADING: &str = "## Cluster";

/// Replaces the sections whose headings start with `heading` (or, if there are none, puts
/// `section` before `## Reproduce`).
fn splice(old: &str, heading: &str, section: &str) -> String {
    let starts: Vec<usize> = old.match_indices("\n## ").map(|(i, _)| i + 1).chain(old.starts_with("## ").then_some(0)).collect();
    let mine: Vec<usize> = starts.iter().copied().filter(|&i| old[i..].starts_with(heading)).collect();
    let (from, to) = match (mine.first(), mine.last()) {
        (Some(&a), Some(&b)) => (a, starts.iter().copied().filter(|&i| i > b).min().unwrap_or(old.len())),
        _ => {
            let at = old.find("## Reproduce").unwrap_or(old.len());
            (at, at)
        }
    };
    format!("{}{section}{}", &old[..from], &old[to..])
}

/// Restarts measured for the first-response-after-restart figures.
const RESTARTS: usize = 5;

struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn parse_latency(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

fn wrk(url: &str, connections: u32, seconds: u32) -> Result<Wrk> {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", url])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors against {url}:\n{text}");
    }
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()));
    let rps = field("Requests/sec:").and_then(|v| v.parse().ok()).context("wrk printed no Requests/sec")?;
    let p50 = field("50%").and_then(|v| parse_latency(&v)).context("no p50")?;
    let p99 = field("99%").and_then(|v| parse_latency(&v)).context("no p99")?;
    Ok(Wrk { rps, p50_ms: p50, p99_ms: p99 })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))))
        .unwrap_or(0)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Hangar {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    url: String,
    key: String,
    extra: Vec<String>,
}

impl Hangar {
    fn start(bin: &Path) -> Result<Hangar> {
        Self::start_with(bin, &[])
    }

    /// Starts with extra `hangar up` flags.
    fn start_with(bin: &Path, extra: &[&str]) -> Result<Hangar> {
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut h = Hangar { bin: bin.to_path_buf(), dir: tempfile::tempdir()?, child: None, url: String::new(), key: String::new(), extra };
        h.boot()?;
        Ok(h)
    }

    fn boot(&mut self) -> Result<()> {
        let url_file = self.dir.path().join("hangar.url");
        let _ = std::fs::remove_file(&url_file);
        let child = Command::new(&self.bin)
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.path())
            .args(&self.extra)
            .env("HANGAR_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting hangar")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Written by the server once it listens (read until whole: it may be caught mid-write).
        self.url = loop {
            match std::fs::read_to_string(&url_file) {
                Ok(u) if u.trim().starts_with("http://") && u.trim().len() > "http://".len() => break u.trim().to_string(),
                _ if Instant::now() > deadline => bail!("hangar did not start"),
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        self.key = std::fs::read_to_string(self.dir.path().join("admin.key"))?.trim().to_string();
        Ok(())
    }

    /// Starts a node joining the cluster of a node started before it (with its admin key).
    fn join(bin: &Path, extra: &[&str], key: &str) -> Result<Hangar> {
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("admin.key"), key)?;
        let mut h = Hangar { bin: bin.to_path_buf(), dir, child: None, url: String::new(), key: String::new(), extra };
        h.boot()?;
        Ok(h)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin).arg("--data-dir").arg(self.dir.path()).args(args).output()?;
        if !out.status.success() {
            bail!("hangar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            Command::new("kill").args(["-TERM", &c.id().to_string()]).status()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for Hangar {
    fn drop(&mut self) {
        // A graceful stop, so the server removes its containers, namespaces and bridge.
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Time until the first successful response, polling.
async fn first_response(client: &reqwest::Client, url: &str, key: Option<&str>) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let mut rb = client.get(url);
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Ok(r) = rb.send().await
            && r.status().is_success()
        {
            r.bytes().await?;
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{url} never answered");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn timed_get(client: &reqwest::Client, url: &str, key: &str) -> Result<f64> {
    let started = Instant::now();
    let r = client.get(url).bearer_auth(key).send().await?;
    if !r.status().is_success() {
        bail!("{url}: {}", r.status());
    }
    r.bytes().await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

async fn metric(client: &reqwest::Client, h: &Hangar, name: &str) -> Result<f64> {
    let text = client.get(format!("{}/metrics", h.url)).bearer_auth(&h.key).send().await?.text().await?;
    Ok(text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok())).unwrap_or(0.0))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_default();
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {:.0} GiB memory, Linux {}", mem_kib / 1048576.0, kernel.trim())
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    if a.history_only {
        let old = std::fs::read_to_string(&a.out).unwrap_or_default();
        let section = tracing::history_memory()?;
        std::fs::write(&a.out, splice(&old, HISTORY_HEADING, &section))?;
        print!("{section}");
        return Ok(());
    }
    if a.process_only || a.services_only || a.scaling_only || a.sandboxes_only || a.metering_only || a.tracing_only || a.recovery_only || a.cluster_only {
        let (heading, section) = if a.cluster_only {
            eprintln!("measuring the cluster");
            (CLUSTER_HEADING, cluster::run(&a.hangar, &a.component).await?)
        } else if a.recovery_only {
            eprintln!("measuring crash recovery and graceful stop");
            (RECOVERY_HEADING, recovery::run(&a.hangar).await?)
        } else if a.tracing_only {
            eprintln!("measuring the tracing overhead");
            let old = std::fs::read_to_string(&a.out).unwrap_or_default();
            std::fs::write(&a.out, splice(&old, HISTORY_HEADING, &tracing::history_memory()?))?;
            (TRACING_HEADING, tracing::run(&a.hangar, &a.component, a.connections, a.duration, a.runs.max(5)).await?)
        } else if a.metering_only {
            eprintln!("measuring the metering overhead");
            (METERING_HEADING, metering::run(&a.hangar, &a.component, a.connections, a.duration, a.runs.max(5)).await?)
        } else if a.sandboxes_only {
            eprintln!("measuring sandboxes");
            (SANDBOXES_HEADING, sandboxes::run(&a.hangar).await?)
        } else if a.process_only {
            eprintln!("measuring process functions");
            (PROCESS_HEADING, process::run(&a.hangar).await?)
        } else if a.scaling_only {
            eprintln!("measuring scaling and events");
            (SCALING_HEADING, scaling::run(&a.hangar, &a.wasmtime, &a.component).await?)
        } else {
            eprintln!("measuring services");
            (SERVICES_HEADING, services::run(&a.hangar, a.connections, a.duration, a.runs).await?)
        };
        let old = std::fs::read_to_string(&a.out).unwrap_or_default();
        std::fs::write(&a.out, splice(&old, heading, &section))?;
        print!("{section}");
        return Ok(());
    }
    for (what, p) in [("hangar", &a.hangar), ("wasmtime", &a.wasmtime), ("component", &a.component)] {
        if !p.exists() {
            bail!("{what} not found at {}; run scripts/bench.sh, which builds everything", p.display());
        }
    }
    let version = String::from_utf8_lossy(&Command::new(&a.wasmtime).arg("--version").output()?.stdout).trim().to_string();
    let client = reqwest::Client::new();
    let mut report = String::new();

    // 1. Instance creation, in process: a fresh store + instantiate from InstancePre (pooling).
    eprintln!("measuring instance creation");
    let inst = {
        let dir = tempfile::tempdir()?;
        let rt = hangar_runtime_wasm::WasmRuntime::new(dir.path().into(), Default::default(), Default::default())?;
        let code = bytes::Bytes::from(std::fs::read(&a.component)?);
        use hangar_runtime::Runtime;
        let info = rt.prepare(code).await?;
        let limits =
            hangar_runtime::Limits { memory_bytes: 128 << 20, timeout: Duration::from_secs(30), env: vec![], allow_outbound: vec![], max_log_bytes: 65536 };
        let f = rt
            .load_function(&hangar_runtime::RevisionSpec {
                namespace: "default".into(),
                name: "bench".into(),
                revision: 1,
                code_digest: info.digest,
                handler: None,
                max_instances: 1,
                provisioned: 0,
                min_instances: 0,
                pause_after: None,
                keep_alive: None,
                limits,
            })
            .await?;
        for _ in 0..200 {
            f.instantiate_once().await?;
        }
        let mut v = Vec::new();
        for _ in 0..5000 {
            v.push(f.instantiate_once().await?.as_secs_f64() * 1e6);
        }
        (percentile(v.clone(), 0.5), percentile(v, 0.99))
    };

    // 2. Hangar: deploy, first response after deploy.
    eprintln!("starting hangar and wasmtime serve");
    let mut h = Hangar::start(&a.hangar)?;
    let idle_rss = rss_kib(h.pid());
    let deploy_started = Instant::now();
    h.cli(&["fn", "deploy", "hello", "--code", a.component.to_str().unwrap_or_default(), "--public"])?;
    let deploy_ms = deploy_started.elapsed().as_secs_f64() * 1000.0;
    let hangar_url = format!("{}/fn/default/hello/", h.url);
    let after_deploy = first_response(&client, &hangar_url, None).await?;
    let mut warm_single = Vec::new();
    for _ in 0..200 {
        warm_single.push(timed_get(&client, &hangar_url, &h.key).await?);
    }

    // 3. The peer, from start to first response (it compiles at start).
    let port = free_port()?;
    let peer_started = Instant::now();
    let mut peer = Command::new(&a.wasmtime)
        .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
        .arg(&a.component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting wasmtime serve")?;
    let peer_url = format!("http://127.0.0.1:{port}/");
    first_response(&client, &peer_url, None).await?;
    let peer_first = peer_started.elapsed();
    let peer_rss = rss_kib(peer.id());
    let mut peer_single = Vec::new();
    for _ in 0..200 {
        peer_single.push(timed_get(&client, &peer_url, "").await?);
    }

    // 4. Warm throughput and latency, alternating sides, same wrk settings.
    let (mut hr, mut pr) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        eprintln!("load run {} of {}", run + 1, a.runs);
        hr.push(wrk(&hangar_url, a.connections, a.duration)?);
        pr.push(wrk(&peer_url, a.connections, a.duration)?);
    }
    let _ = peer.kill();
    let _ = peer.wait();
    let med = |v: &[Wrk], f: fn(&Wrk) -> f64| median(v.iter().map(f).collect());
    let (h_rps, p_rps) = (med(&hr, |w| w.rps), med(&pr, |w| w.rps));
    let (h_p50, p_p50) = (med(&hr, |w| w.p50_ms), med(&pr, |w| w.p50_ms));
    let (h_p99, p_p99) = (med(&hr, |w| w.p99_ms), med(&pr, |w| w.p99_ms));
    let loaded_rss = rss_kib(h.pid());

    // 5. Restarts: the first response comes from the artifact cache, no compilation.
    eprintln!("restarts");
    let (mut boots, mut firsts, mut compilations) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..RESTARTS {
        h.stop()?;
        let restart_started = Instant::now();
        h.boot()?;
        boots.push(restart_started.elapsed().as_secs_f64() * 1000.0);
        let url = format!("{}/fn/default/hello/", h.url); // a new port after each restart
        firsts.push(first_response(&client, &url, None).await?.as_secs_f64() * 1000.0);
        compilations += metric(&client, &h, "hangar_wasm_compilations_total").await?;
    }
    let boot = median(boots);
    let after_restart = (median(firsts.clone()), percentile(firsts, 1.0));

    // 6. Memory with many deployed functions (code loaded lazily), then all loaded.
    eprintln!("deploying {} functions", a.functions);
    let code = std::fs::read(&a.component)?;
    let names: Vec<String> = (0..a.functions).map(|i| format!("f{i}")).collect();
    for chunk in names.chunks(16) {
        let puts = chunk.iter().map(|n| {
            let form = reqwest::multipart::Form::new()
                .part("config", reqwest::multipart::Part::text(r#"{"runtime":"wasm"}"#).mime_str("application/json").unwrap())
                .part("code", reqwest::multipart::Part::bytes(code.clone()));
            client.put(format!("{}/v1/functions/{n}", h.url)).bearer_auth(&h.key).multipart(form).send()
        });
        for r in futures::future::join_all(puts).await {
            let r = r?;
            if !r.status().is_success() {
                bail!("deploy failed: {}", r.text().await?);
            }
        }
    }
    let many_rss = rss_kib(h.pid());
    for n in &names {
        timed_get(&client, &format!("{}/fn/default/{n}/", h.url), &h.key).await?;
    }
    let many_loaded_rss = rss_kib(h.pid());
    h.stop()?;

    let ratio = |a: f64, b: f64| a / b;
    writeln!(report, "# Benchmarks\n")?;
    writeln!(report, "Numbers from one run of `scripts/bench.sh` (release builds; the harness is `bench/`, `hangar-bench`).")?;
    writeln!(report, "This machine is shared and noisy: compare the ratios measured side by side in the same run, not")?;
    writeln!(report, "absolute numbers across runs.\n")?;
    writeln!(report, "- Machine: {}", machine())?;
    writeln!(
        report,
        "- Peer: `{version}` (`wasmtime serve -Scli`: default settings plus the WASI CLI interfaces, as the component reads an env var) on the same component"
    )?;
    writeln!(report, "  (`examples/hello`, {} bytes)", code.len())?;
    writeln!(report, "- Load: `wrk -t2 -c{} -d{}s --latency` on loopback, {} alternating runs per side, medians\n", a.connections, a.duration, a.runs)?;
    writeln!(report, "## Warm path: WebAssembly function through its URL vs `wasmtime serve`\n")?;
    writeln!(report, "| | Hangar `/fn/default/hello/` | wasmtime serve | Hangar / peer |")?;
    writeln!(report, "|---|---:|---:|---:|")?;
    writeln!(report, "| throughput (req/s) | {h_rps:.0} | {p_rps:.0} | {:.2}× |", ratio(h_rps, p_rps))?;
    writeln!(report, "| p50 latency under load | {h_p50:.2} ms | {p_p50:.2} ms | {:.2}× |", ratio(h_p50, p_p50))?;
    writeln!(report, "| p99 latency under load | {h_p99:.2} ms | {p_p99:.2} ms | {:.2}× |", ratio(h_p99, p_p99))?;
    let (hs, ps) = (percentile(warm_single.clone(), 0.5), percentile(peer_single.clone(), 0.5));
    writeln!(report, "| one request at a time, p50 | {hs:.3} ms | {ps:.3} ms | {:.2}× |", ratio(hs, ps))?;
    writeln!(report, "\nGoal: ≥ 1.0× the peer's throughput with no worse p99. Both make a fresh instance per request")?;
    writeln!(report, "from a pre-instantiated component in wasmtime's pooling allocator. Hangar does more per request")?;
    writeln!(report, "(route lookup, memory/time limits with epoch interruption, an invocation record with logs and")?;
    writeln!(report, "metrics written to SQLite) but resets a reused pool slot in place: with `PAGEMAP_SCAN` it rewrites")?;
    writeln!(report, "only the pages the last instance dirtied, where the peer's defaults `madvise` the slot away and")?;
    writeln!(report, "page-fault it back, with a TLB shootdown across cores each time (the top of a `perf` profile).\n")?;
    writeln!(report, "## Cold path\n")?;
    writeln!(report, "| measure | value | goal |")?;
    writeln!(report, "|---|---:|---|")?;
    writeln!(report, "| instance creation (store + instantiate from `InstancePre`, pooling), p50 | {:.1} µs | ≤ 50 µs |", inst.0)?;
    writeln!(report, "| instance creation, p99 | {:.1} µs | |", inst.1)?;
    writeln!(report, "| deploy (upload, validate, compile, store) via CLI | {deploy_ms:.0} ms | |")?;
    writeln!(report, "| first response after deploy (revision loaded on demand) | {:.2} ms | |", after_deploy.as_secs_f64() * 1000.0)?;
    writeln!(report, "| restart: process start to ready, median of {RESTARTS} | {boot:.0} ms | |")?;
    writeln!(report, "| first response after restart (artifact cache, no compile), median of {RESTARTS} | {:.2} ms | ≤ 5 ms |", after_restart.0)?;
    writeln!(report, "| first response after restart, worst of {RESTARTS} | {:.2} ms | |", after_restart.1)?;
    writeln!(report, "| compilations after {RESTARTS} restarts | {compilations:.0} | 0 |")?;
    writeln!(report, "| peer: `wasmtime serve` start to first response (compiles at start) | {:.0} ms | |", peer_first.as_secs_f64() * 1000.0)?;
    writeln!(report, "\n## Memory (RSS)\n")?;
    writeln!(report, "| state | Hangar | wasmtime serve |")?;
    writeln!(report, "|---|---:|---:|")?;
    writeln!(report, "| idle, nothing deployed | {:.1} MiB | |", idle_rss as f64 / 1024.0)?;
    writeln!(
        report,
        "| one function, after the load runs | {:.1} MiB | {:.1} MiB (idle, one component) |",
        loaded_rss as f64 / 1024.0,
        peer_rss as f64 / 1024.0
    )?;
    writeln!(report, "| {} functions deployed (not yet called) | {:.1} MiB | |", a.functions, many_rss as f64 / 1024.0)?;
    writeln!(report, "| {} functions, each called once (all resident) | {:.1} MiB | |", a.functions, many_loaded_rss as f64 / 1024.0)?;
    eprintln!("measuring process functions");
    writeln!(report)?;
    report.push_str(&process::run(&a.hangar).await?);
    eprintln!("measuring services");
    report.push_str(&services::run(&a.hangar, a.connections, a.duration, a.runs).await?);
    eprintln!("measuring scaling and events");
    report.push_str(&scaling::run(&a.hangar, &a.wasmtime, &a.component).await?);
    eprintln!("measuring sandboxes");
    report.push_str(&sandboxes::run(&a.hangar).await?);
    eprintln!("measuring crash recovery and graceful stop");
    report.push_str(&recovery::run(&a.hangar).await?);
    eprintln!("measuring the cluster");
    report.push_str(&cluster::run(&a.hangar, &a.component).await?);
    writeln!(report, "## Reproduce\n\n```sh\n./scripts/bench.sh                  # installs wrk and wasmtime-cli 48.0.8 if missing, builds, runs, rewrites this file\n./scripts/bench.sh --process-only   # only the process-function sections\n./scripts/bench.sh --services-only  # only the service sections
./scripts/bench.sh --scaling-only   # only the scaling and events section\n./scripts/bench.sh --sandboxes-only # only the sandboxes section\n./scripts/bench.sh --metering-only  # only the metering overhead\n./scripts/bench.sh --recovery-only  # only crash recovery and graceful stop\n./scripts/bench.sh --cluster-only   # only the cluster (PostgreSQL + NATS)\n./scripts/fuzz.sh 45                # the fuzzing table (by hand from its output)\n```")?;
    // Sections other tools write (fuzzing, from scripts/fuzz.sh) are kept.
    let old = std::fs::read_to_string(&a.out).unwrap_or_default();
    if let Some(kept) = section(&old, FUZZING_HEADING) {
        report = splice(&report, FUZZING_HEADING, &kept);
    }
    std::fs::write(&a.out, &report)?;
    print!("{report}");
    Ok(())
}

/// The section of `text` whose heading starts with `heading`, up to the next `## ` heading.
fn section(text: &str, heading: &str) -> Option<String> {
    let from = text.find(&format!("\n{heading}")).map(|i| i + 1)?;
    let to = text[from + 3..].find("\n## ").map_or(text.len(), |i| from + 3 + i + 1);
    Some(text[from..to].to_string())
}
