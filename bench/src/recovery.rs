//! Crash recovery and graceful stop, side by side in one run: a restart after `kill -9` with
//! hundreds of paused Python instances left behind (time to healthy, time until every process of
//! the killed run is gone) against a fresh start of the same binary on an empty data dir; and a
//! graceful stop with ten services against its bound (the grace period + 1 s).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{Hangar, median};

/// Concurrent requests in the burst that leaves paused instances behind.
const BURST: usize = 300;
/// Kills measured.
const KILLS: usize = 3;
/// Services for the graceful stop.
const SERVICES: usize = 10;

const PY_APP: &str = "import time\n\ndef handler(event, context):\n    time.sleep(0.5)\n    return {'ok': True}\n";

/// Pids in the server's cgroups (their names hold the server id, which `sid` is).
fn pids_of(sid: &str) -> BTreeSet<i32> {
    fn walk(dir: &Path, out: &mut BTreeSet<i32>) {
        if let Ok(p) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(p.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/sys/fs/cgroup/pids").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().contains(sid) {
            walk(&e.path(), &mut out);
        }
    }
    out
}

/// Frozen cgroups of the server (v1 freezer).
fn frozen(sid: &str) -> usize {
    let root = Path::new("/sys/fs/cgroup/freezer").join(format!("hangar-{sid}"));
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN"))
        .count()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

/// The server id: the one `hangar-<sid>` process-runtime cgroup a server made that was not there before.
fn sid_of(before: &BTreeSet<String>) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: BTreeSet<String> = std::fs::read_dir("/sys/fs/cgroup/pids")?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("hangar-") && !n.starts_with("hangar-sb-") && !n.ends_with("-svc"))
            .collect();
        if let Some(n) = now.difference(before).next() {
            return Ok(n.trim_start_matches("hangar-").to_string());
        }
        if Instant::now() > deadline {
            bail!("the server made no cgroup");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cgroup_names() -> BTreeSet<String> {
    std::fs::read_dir("/sys/fs/cgroup/pids").into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// Time from spawning `hangar up` to `/healthz` answering 200.
async fn boot_to_healthy(h: &mut Hangar, client: &reqwest::Client) -> Result<Duration> {
    let t = Instant::now();
    h.boot()?;
    loop {
        if client.get(format!("{}/healthz", h.url)).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("not healthy after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn run(bin: &Path) -> Result<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let code = tempfile::tempdir()?;
    std::fs::write(code.path().join("app.py"), PY_APP)?;

    // The peer: a fresh start, nothing left behind.
    let mut fresh = Vec::new();
    for _ in 0..KILLS {
        let mut h = Hangar::start(bin)?;
        h.stop()?;
        let dir = tempfile::tempdir()?;
        h.dir = dir;
        fresh.push(boot_to_healthy(&mut h, &client).await?.as_secs_f64() * 1000.0);
        h.stop()?;
    }

    let before = cgroup_names();
    let mut h = Hangar::start_with(bin, &["--pause-after", "1s"])?;
    let sid = sid_of(&before)?;
    h.cli(&[
        "fn",
        "deploy",
        "p",
        "--runtime",
        "python3",
        "--handler",
        "app.handler",
        "--code",
        code.path().to_str().unwrap_or_default(),
        "--max-instances",
        "400",
    ])?;
    let (mut healthy, mut clean, mut left_frozen) = (Vec::new(), Vec::new(), Vec::new());
    for kill in 0..KILLS {
        eprintln!("recovery: burst of {BURST}, kill -9 ({} of {KILLS})", kill + 1);
        let burst = (0..BURST).map(|_| client.post(format!("{}/v1/functions/p/invoke", h.url)).bearer_auth(&h.key).body("{}").send());
        for r in futures::future::join_all(burst).await {
            let _ = r?;
        }
        // Every instance idle for longer than --pause-after is frozen.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = frozen(&sid);
            if now > 0 && now == n {
                break;
            }
            n = now;
        }
        left_frozen.push(n as f64);
        let pids = pids_of(&sid);
        if let Some(mut c) = h.child.take() {
            c.kill()?;
            c.wait()?;
        }
        let t = Instant::now();
        healthy.push(boot_to_healthy(&mut h, &client).await?.as_secs_f64() * 1000.0);
        while pids.iter().any(|p| alive(*p)) {
            if t.elapsed() > Duration::from_secs(600) {
                bail!("the killed run's processes are still alive after 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        clean.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    h.stop()?;

    // A graceful stop with ten services whose process ignores SIGTERM (pid 1 without a handler):
    // every instance waits its grace period, all of them at once.
    eprintln!("recovery: graceful stop with {SERVICES} services");
    let mut h = Hangar::start(bin)?;
    let server = crate::services::backend(&std::env::current_dir()?)?;
    let layout = tempfile::tempdir()?;
    crate::services::image(layout.path(), &server)?;
    h.cli(&["image", "import", layout.path().to_str().unwrap_or_default(), "--name", "bench/backend:1"])?;
    for i in 0..SERVICES {
        h.cli(&["svc", "deploy", &format!("s{i}"), "--image", "bench/backend:1", "--memory", "16"])?;
    }
    let grace_ms = 10_000.0;
    let t = Instant::now();
    h.stop()?;
    let stop_ms = t.elapsed().as_secs_f64() * 1000.0;

    let (fresh, healthy, clean) = (median(fresh), median(healthy), median(clean));
    let mut out = String::new();
    writeln!(out, "## Crash recovery and graceful stop\n")?;
    writeln!(
        out,
        "A burst of {BURST} concurrent requests to a Python function (each 0.5 s) leaves its instances idle; after\n\
         `--pause-after 1s` they are frozen. Then `kill -9` of the server and `hangar up` again on the same data dir,\n\
         {KILLS} times; medians. The peer is the same binary starting on an empty data dir. \"Clean\" is when every\n\
         process of the killed run has died (its cgroups thawed, killed and removed in the background)."
    )?;
    writeln!(out, "\n| measure | Hangar after kill -9 | fresh start | ratio | goal |")?;
    writeln!(out, "|---|---:|---:|---:|---|")?;
    writeln!(out, "| frozen instances left by the killed run | {:.0} | 0 | | |", median(left_frozen))?;
    writeln!(out, "| start to healthy (`/healthz` 200) | {healthy:.0} ms | {fresh:.0} ms | {:.2}× | ≤ 1 s |", healthy / fresh)?;
    writeln!(out, "| start to clean (no process of the killed run alive) | {clean:.0} ms | | | |")?;
    writeln!(out, "\n| measure | Hangar | bound (grace + 1 s) | ratio |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    writeln!(
        out,
        "| graceful stop (SIGTERM to exit) with {SERVICES} services ignoring SIGTERM | {stop_ms:.0} ms | {:.0} ms | {:.2}× |\n",
        grace_ms + 1000.0,
        stop_ms / (grace_ms + 1000.0)
    )?;
    Ok(out)
}
