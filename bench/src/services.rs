//! Services, side by side in one run: a service's cold start on Hangar (deploy of an imported
//! image to the first successful response through the gateway) against a raw `runc run` of the
//! same program to the same readiness; the gateway's `/svc/...` proxy against requests straight
//! to the instance and against nginx proxying to the same instance (same wrk); and Hangar's
//! memory per running instance.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{Hangar, Wrk, free_port, median, percentile, rss_kib, wrk};

/// Cold starts measured per side.
const COLD: usize = 10;
/// Instances for the memory figure.
const INSTANCES: u32 = 10;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Builds the static backend (bench/svc-backend, std only) for musl.
pub fn backend(root: &Path) -> Result<PathBuf> {
    let out = root.join("target/bench-tools/svc-backend");
    std::fs::create_dir_all(out.parent().unwrap_or(root))?;
    let st = Command::new("rustc")
        .args(["-O", "--edition", "2021", "--target", "x86_64-unknown-linux-musl"])
        .arg(root.join("bench/svc-backend/main.rs"))
        .arg("-o")
        .arg(&out)
        .status()?;
    if !st.success() {
        bail!("building bench/svc-backend failed (rustup target add x86_64-unknown-linux-musl)");
    }
    Ok(out)
}

/// An OCI layout holding one image: `/server`, run with $PORT.
pub fn image(dir: &Path, server: &Path) -> Result<()> {
    let bin = std::fs::read(server)?;
    layout(dir, &[("server", &bin, 0o755)], json!({"Entrypoint": ["/server"], "ExposedPorts": {"8080/tcp": {}}}))
}

/// An OCI layout holding one image of one layer with `files` (path, bytes, mode; bytes
/// `->target` make a symlink) and the run `config`.
pub fn layout(dir: &Path, files: &[(&str, &[u8], u32)], config: serde_json::Value) -> Result<()> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, bytes, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        if let Some(target) = bytes.strip_prefix(b"->") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, std::str::from_utf8(target)?)?;
        } else if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, path, &[][..])?;
        } else {
            h.set_size(bytes.len() as u64);
            b.append_data(&mut h, path, *bytes)?;
        }
    }
    let layer = b.into_inner()?;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    }))?;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<String> {
        let d = digest(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes)?;
        Ok(d)
    };
    let (ld, cd) = (put(&layer)?, put(&config)?);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
    }))?;
    let md = put(&manifest)?;
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len()}]}),
        )?,
    )?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

async fn until_ok(client: &reqwest::Client, url: &str, key: Option<&str>, deadline: Duration) -> Result<()> {
    let end = Instant::now() + deadline;
    loop {
        let mut rb = client.get(url);
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Ok(r) = rb.send().await
            && r.status() == 200
        {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{url} did not answer 200 within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Hangar: PUT the service (returns once an instance is ready), then the first 200 through
/// the gateway; the service is removed between samples.
async fn hangar_cold(client: &reqwest::Client, h: &Hangar) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for i in 0..COLD + 1 {
        let t = Instant::now();
        let r = client
            .put(format!("{}/v1/services/cold", h.url))
            .bearer_auth(&h.key)
            // The backend is pid 1 without a SIGTERM handler: no grace period to wait out.
            .json(&json!({"image": "bench/backend:1", "memory_mb": 64, "stop_grace_ms": 0}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("deploying the bench service: {}", r.text().await?);
        }
        until_ok(client, &format!("{}/svc/default/cold/", h.url), Some(&h.key), Duration::from_secs(30)).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if i > 0 {
            v.push(ms); // the first one warms the page cache
        }
        client.delete(format!("{}/v1/services/cold", h.url)).bearer_auth(&h.key).send().await?;
    }
    Ok(v)
}

/// A raw `runc run --detach` of a bundle whose root holds the same program (host network,
/// nothing else set up), to its first 200.
async fn runc_cold(client: &reqwest::Client, server: &Path) -> Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::copy(server, rootfs.join("server"))?;
    let st = Command::new("runc").arg("spec").arg("--bundle").arg(&bundle).status()?;
    if !st.success() {
        bail!("runc spec failed");
    }
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let port = free_port()?;
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["/server"]);
    spec["process"]["env"] = json!([format!("PORT={port}")]);
    spec["root"]["readonly"] = json!(true);
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
    }
    std::fs::write(&path, serde_json::to_vec(&spec)?)?;
    let root = dir.path().join("state");
    let url = format!("http://127.0.0.1:{port}/");
    let mut v = Vec::new();
    for i in 0..COLD + 1 {
        let id = format!("hangar-bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let st = tokio::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["run", "--detach", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !st.success() {
            bail!("runc run failed");
        }
        until_ok(client, &url, None, Duration::from_secs(30)).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if i > 0 {
            v.push(ms);
        }
        let _ = Command::new("runc").arg("--root").arg(&root).args(["delete", "--force", &id]).status();
    }
    Ok(v)
}

fn nginx(upstream: &str) -> Result<(std::process::Child, u16, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let conf = format!(
        "worker_processes 2;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  upstream backend {{ server {upstream}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
        d = dir.path().display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf)?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install nginx)")?;
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > end {
            bail!("nginx did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, port, dir))
}

fn uss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Hangar's own memory for its instances, in KiB: the server's resident memory, and the
/// resident (RSS) and unique (USS) memory of its `runc run` children.
fn hangar_memory(pid: u32) -> (u64, u64, u64) {
    let (mut rss, mut uss) = (0, 0);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) && stat.contains("(runc)") {
            rss += rss_kib(p);
            uss += uss_kib(p);
        }
    }
    (rss_kib(pid), rss, uss)
}

/// Runs everything and returns the markdown sections.
pub async fn run(bin: &Path, connections: u32, seconds: u32, runs: usize) -> Result<String> {
    let root = std::env::current_dir()?;
    let server = backend(&root)?;
    let work = tempfile::tempdir()?;
    let layout = work.path().join("image");
    image(&layout, &server)?;
    let client = reqwest::Client::new();
    let h = Hangar::start(bin)?;
    h.cli(&["image", "import", layout.to_str().unwrap_or_default(), "--name", "bench/backend:1"])?;

    eprintln!("services: cold starts");
    let mut hangar = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..2 {
        hangar.extend(hangar_cold(&client, &h).await?);
        raw.extend(runc_cold(&client, &server).await?);
    }

    eprintln!("services: proxy throughput");
    h.cli(&["svc", "deploy", "web", "--image", "bench/backend:1", "--public", "--memory", "64"])?;
    let svc: serde_json::Value = client.get(format!("{}/v1/services/web", h.url)).bearer_auth(&h.key).send().await?.json().await?;
    let addr = svc["instances"][0]["address"].as_str().context("the service has no instance address")?.to_string();
    let (mut nginx_child, nginx_port, _nginx_dir) = nginx(&addr)?;
    let (via, direct, proxied) = (format!("{}/svc/default/web/", h.url), format!("http://{addr}/"), format!("http://127.0.0.1:{nginx_port}/"));
    let (mut hv, mut dv, mut nv): (Vec<Wrk>, Vec<Wrk>, Vec<Wrk>) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        hv.push(wrk(&via, connections, seconds)?);
        dv.push(wrk(&direct, connections, seconds)?);
        nv.push(wrk(&proxied, connections, seconds)?);
    }
    // SIGQUIT: the master stops its workers too (SIGKILL would leave them running).
    let _ = Command::new("kill").arg("-QUIT").arg(nginx_child.id().to_string()).status();
    let _ = nginx_child.wait();
    h.cli(&["svc", "rm", "web"])?;

    eprintln!("services: memory per instance");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = hangar_memory(h.pid());
    h.cli(&["svc", "deploy", "many", "--image", "bench/backend:1", "--min", &INSTANCES.to_string(), "--memory", "16"])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = hangar_memory(h.pid());
    h.cli(&["svc", "rm", "many"])?;
    drop(h);

    let m = |v: &[Wrk], f: fn(&Wrk) -> f64| median(v.iter().map(f).collect());
    let (h_rps, d_rps, n_rps) = (m(&hv, |w| w.rps), m(&dv, |w| w.rps), m(&nv, |w| w.rps));
    let (h_p50, d_p50, n_p50) = (m(&hv, |w| w.p50_ms), m(&dv, |w| w.p50_ms), m(&nv, |w| w.p50_ms));
    let (h_p99, d_p99, n_p99) = (m(&hv, |w| w.p99_ms), m(&dv, |w| w.p99_ms), m(&nv, |w| w.p99_ms));
    let mut out = String::new();
    let _ = writeln!(out, "## Services: cold start\n");
    let _ = writeln!(
        out,
        "A service cold start on Hangar is `PUT /v1/services/NAME` of an imported image (layers\n\
         already unpacked) until the first `200` through `/svc/...`: overlay root, network\n\
         namespace and veth, nftables, cgroup, `runc run`, the readiness probe, the proxy. The peer\n\
         is a raw `runc run --detach` of a bundle holding the same program (host network, nothing\n\
         else set up) until its first `200`. The program is `bench/svc-backend` (a static keep-alive\n\
         HTTP server). {} samples per side, alternating in two rounds; medians.\n",
        hangar.len()
    );
    let _ = writeln!(out, "| measure | Hangar | raw `runc run` | Hangar / runc |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let (hc, rc) = (median(hangar.clone()), median(raw.clone()));
    let _ = writeln!(out, "| deploy → first 200, p50 | {hc:.1} ms | {rc:.1} ms | {:.2}× |", hc / rc);
    let _ = writeln!(out, "| deploy → first 200, p90 | {:.1} ms | {:.1} ms | |", percentile(hangar, 0.9), percentile(raw, 0.9));
    let _ = writeln!(out, "\n## Services: gateway overhead\n");
    let _ = writeln!(
        out,
        "wrk, {connections} connections, {seconds} s per run, {runs} runs per side (medians), against one\n\
         instance of the same backend: through Hangar's `/svc/default/web/`, straight to the\n\
         instance's address on the bridge, and through nginx (`proxy_pass` with an upstream\n\
         keep-alive pool) to the same address. Goal: Hangar ≥ 0.8× direct throughput and p50 at most\n\
         0.3 ms above direct.\n"
    );
    let _ = writeln!(out, "| path | requests/s | p50 | p99 | vs direct |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    let _ = writeln!(out, "| direct to the instance | {d_rps:.0} | {d_p50:.3} ms | {d_p99:.3} ms | 1.00× |");
    let _ =
        writeln!(out, "| Hangar `/svc/...` | {h_rps:.0} | {h_p50:.3} ms | {h_p99:.3} ms | {:.2}× throughput, p50 {:+.3} ms |", h_rps / d_rps, h_p50 - d_p50);
    let _ =
        writeln!(out, "| nginx reverse proxy | {n_rps:.0} | {n_p50:.3} ms | {n_p99:.3} ms | {:.2}× throughput, p50 {:+.3} ms |", n_rps / d_rps, n_p50 - d_p50);
    if h_rps / d_rps < 0.8 || h_p50 - d_p50 > 0.3 {
        let _ = writeln!(
            out,
            "\nThe goal is missed here. Direct requests spend no CPU on a proxy, and this machine has\n\
             two cores shared by wrk, the proxy and the backend, so any proxy in the path takes a large\n\
             share of them: nginx, the reference reverse proxy, reaches {:.2}× of direct under the same\n\
             conditions, and Hangar {:.2}× of nginx's throughput.",
            n_rps / d_rps,
            h_rps / n_rps
        );
    }
    let _ = writeln!(out, "\n## Services: memory per instance\n");
    let n = f64::from(INSTANCES) * 1024.0;
    let server = after.0.saturating_sub(before.0) as f64 / n;
    let (runc_rss, runc_uss) = (after.1.saturating_sub(before.1) as f64 / n, after.2.saturating_sub(before.2) as f64 / n);
    let _ = writeln!(
        out,
        "Memory of Hangar's own processes per running instance, with {INSTANCES} instances of the backend\n\
         running, minus without them: the server's resident growth, and the `runc run` process that\n\
         supervises each container (it reports the exit status and forwards signals). Its resident\n\
         size is mostly the runc binary's pages, shared by every runc process; its unique memory (USS)\n\
         is what each instance really adds. The containers' own memory is not counted.\n"
    );
    let _ = writeln!(out, "| measure | per instance |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| server (resident growth) | {server:.2} MiB |");
    let _ = writeln!(out, "| `runc run` supervisor, unique (USS) | {runc_uss:.2} MiB |");
    let _ = writeln!(out, "| `runc run` supervisor, resident (RSS, shared pages counted each time) | {runc_rss:.2} MiB |");
    let _ = writeln!(out, "| **Hangar memory per running instance** (server + supervisor USS) | **{:.2} MiB** |", server + runc_uss);
    let _ = writeln!(out);
    Ok(out)
}
