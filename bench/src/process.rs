//! Process functions, side by side in one run: a cold start on Hangar (a request to a function
//! with no warm instance, through the gateway, into a fresh sandboxed instance) against the
//! same handler started as a plain process on the host (`python3` with Hangar's shim,
//! `awslambdaric`, `node`, a bare exec of a `lambda_runtime` bootstrap) answering one
//! invocation through a Runtime API; the warm path; and an idle instance's unique memory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hangar_lambda::runtime_api::{Answer, Invocation, RuntimeApi};

use crate::{Hangar, median, percentile};

/// Samples per cold-start figure.
const COLD: usize = 15;
/// Sequential requests for the warm figures.
const WARM: usize = 300;

const PY_APP: &str = "import json\n\ndef handler(event, context):\n    return {'ok': True, 'id': context.aws_request_id}\n";
const NODE_APP: &str = "exports.handler = async (event, context) => ({ ok: true, id: context.awsRequestId });\n";

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), text)?;
    Ok(())
}

/// The lambda_runtime bootstrap and the awslambdaric install, built once under target/.
fn tools(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let target = root.join("target/lambda-clients");
    let st = Command::new("cargo")
        .args(["build", "--release", "--manifest-path"])
        .arg(root.join("bench/lambda-bootstrap/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()?;
    if !st.success() {
        bail!("building bench/lambda-bootstrap failed");
    }
    let ric = target.join("awslambdaric");
    if !ric.join("awslambdaric").is_dir() {
        let st = Command::new("python3").args(["-m", "pip", "install", "--quiet", "--target"]).arg(&ric).arg("awslambdaric").status()?;
        if !st.success() {
            bail!("pip install awslambdaric failed");
        }
    }
    Ok((target.join("release/bootstrap"), ric))
}

fn invocation(n: usize) -> Invocation {
    Invocation {
        request_id: format!("bench-{n}"),
        payload: Bytes::from_static(b"{}"),
        deadline_ms: hangar_api::now_ms() + 60_000,
        function_arn: "arn:aws:lambda:local:000000000000:function:bench".into(),
        trace_id: "Root=1-0-0".into(),
        client_context: None,
        cognito_identity: None,
    }
}

/// The pause before each cold sample, on both sides: Hangar's keep-alive (1 s) must have reaped
/// the last instance, and the plain process starts from the same idle machine.
const IDLE: Duration = Duration::from_millis(2300);

/// The handler as a plain process on the host, talking to `api`.
fn spawn_plain(argv: &[String], env: &[(&str, String)], cwd: &Path, api: &RuntimeApi) -> Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AWS_LAMBDA_RUNTIME_API", api.address())
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

/// Start of a plain process on the host to its first answer through a Runtime API, in ms.
async fn plain_start(argv: &[String], env: &[(&str, String)], cwd: &Path) -> Result<f64> {
    let api = RuntimeApi::start().await?;
    tokio::time::sleep(IDLE).await;
    let started = Instant::now();
    let mut child = spawn_plain(argv, env, cwd, &api)?;
    let answer =
        tokio::time::timeout(Duration::from_secs(30), api.invoke(invocation(0))).await.with_context(|| format!("{argv:?} did not answer within 30 s"))??;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let _ = child.kill().await;
    match answer {
        Answer::Response(_) => Ok(ms),
        other => bail!("{argv:?} answered {other:?}"),
    }
}

/// A plain process kept running: p50 of sequential invocations through the Runtime API.
async fn plain_warm(argv: &[String], env: &[(&str, String)], cwd: &Path) -> Result<f64> {
    let api = RuntimeApi::start().await?;
    let mut child = spawn_plain(argv, env, cwd, &api)?;
    api.invoke(invocation(0)).await?;
    let mut v = Vec::new();
    for n in 0..WARM {
        let t = Instant::now();
        api.invoke(invocation(n + 1)).await?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = child.kill().await;
    Ok(median(v))
}

async fn hangar_invoke(client: &reqwest::Client, h: &Hangar, name: &str) -> Result<f64> {
    let t = Instant::now();
    let r = client.post(format!("{}/v1/functions/{name}/invoke", h.url)).bearer_auth(&h.key).body("{}").send().await?;
    if !r.status().is_success() {
        bail!("{name}: {} {}", r.status(), r.text().await?);
    }
    r.bytes().await?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Cold starts on Hangar: each request comes after the keep-alive reaped the last instance.
/// Returns the request times and the `Init Duration`s of their REPORT lines, in ms.
async fn hangar_cold(client: &reqwest::Client, h: &Hangar, name: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    hangar_invoke(client, h, name).await?; // the zygote is up, as after a deploy
    let mut v = Vec::new();
    for _ in 0..COLD {
        tokio::time::sleep(IDLE).await;
        v.push(hangar_invoke(client, h, name).await?);
    }
    let recs: serde_json::Value = client.get(format!("{}/v1/invocations?function={name}&limit={COLD}", h.url)).bearer_auth(&h.key).send().await?.json().await?;
    let items = recs["items"].as_array().cloned().unwrap_or_default();
    // A new instance served it: made on the request (`cold`) or ahead of it (`prewarmed`, the
    // revision's spare); never a warm, resumed or provisioned one.
    let cold = items.iter().filter(|r| r["start"] == "cold" || r["start"] == "prewarmed").count();
    if cold != COLD {
        let starts: Vec<&str> = items.iter().filter_map(|r| r["start"].as_str()).collect();
        bail!("{name}: only {cold} of {COLD} measured requests were served by a new instance: {starts:?}");
    }
    let mut inits = Vec::new();
    for r in &items {
        let id = r["id"].as_str().unwrap_or_default();
        let full: serde_json::Value = client.get(format!("{}/v1/invocations/{id}", h.url)).bearer_auth(&h.key).send().await?.json().await?;
        let logs = full["logs"].as_str().unwrap_or_default();
        if let Some(ms) = logs.split("Init Duration: ").nth(1).and_then(|t| t.split(' ').next()).and_then(|t| t.parse().ok()) {
            inits.push(ms);
        }
    }
    Ok((v, inits))
}

fn uss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Unique memory of each idle instance of `function` (by its cgroups), in KiB.
fn instance_uss(function: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let Ok(servers) = std::fs::read_dir("/sys/fs/cgroup/pids") else { return out };
    for server in servers.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("hangar-")) {
        for inst in std::fs::read_dir(server.path()).into_iter().flatten().flatten() {
            let name = inst.file_name().to_string_lossy().into_owned();
            // Instance cgroups are `<n>-<function>-<k>`; the zygote's is `<n>-<function>`.
            if name.rsplit_once('-').is_some_and(|(pod, k)| pod.ends_with(&format!("-{function}")) && k.parse::<u64>().is_ok()) {
                let procs = std::fs::read_to_string(inst.path().join("cgroup.procs")).unwrap_or_default();
                out.push(procs.lines().filter_map(|p| p.trim().parse().ok()).map(uss_kib).sum());
            }
        }
    }
    out
}

fn row(out: &mut String, label: &str, hangar: &[f64], peer: &[f64], peer_label: &str, goal: &str) {
    let (h, p) = (median(hangar.to_vec()), median(peer.to_vec()));
    let _ = writeln!(
        out,
        "| {label} | {h:.1} ms (p90 {:.1}) | {peer_label}: {p:.1} ms (p90 {:.1}) | {:.2}× | {goal} |",
        percentile(hangar.to_vec(), 0.9),
        percentile(peer.to_vec(), 0.9),
        h / p
    );
}

/// Runs everything and returns the markdown section.
pub async fn run(bin: &Path) -> Result<String> {
    let root = std::env::current_dir()?;
    let (rust_bootstrap, ric) = tools(&root)?;
    let work = tempfile::tempdir()?;
    let (py, js, prov) = (work.path().join("py"), work.path().join("js"), work.path().join("prov"));
    write(&py, "app.py", PY_APP)?;
    write(&js, "index.js", NODE_APP)?;
    std::fs::create_dir_all(&prov)?;
    std::fs::copy(&rust_bootstrap, prov.join("bootstrap"))?;
    let shims = work.path().join("shims");
    write(&shims, "bootstrap.py", hangar_lambda::PYTHON_SHIM)?;
    write(&shims, "bootstrap.js", hangar_lambda::NODE_SHIM)?;

    let mut h = Hangar::start_with(bin, &["--keep-alive", "1s"])?;
    for (name, runtime, handler, code) in [("pyb", "python3", "app.handler", &py), ("jsb", "nodejs", "index.handler", &js), ("rsb", "provided", "", &prov)] {
        let mut args = vec!["fn", "deploy", name, "--runtime", runtime, "--code", code.to_str().unwrap_or_default()];
        if !handler.is_empty() {
            args.extend(["--handler", handler]);
        }
        h.cli(&args)?;
    }
    let client = reqwest::Client::new();
    let lambda_env = |handler: &str, root: &Path| {
        vec![
            ("_HANDLER", handler.to_string()),
            ("LAMBDA_TASK_ROOT", root.display().to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", "bench".to_string()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_string()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "1".to_string()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/bench".to_string()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".to_string()),
        ]
    };

    // Cold starts, alternating Hangar and the plain process per runtime.
    let (py_cold, _) = hangar_cold(&client, &h, "pyb").await?;
    let py_argv = vec!["python3".to_string(), shims.join("bootstrap.py").display().to_string()];
    let mut py_plain = Vec::new();
    let mut ric_plain = Vec::new();
    let mut ric_env = lambda_env("app.handler", &py);
    ric_env.push(("PYTHONPATH", format!("{}:{}", ric.display(), py.display())));
    let ric_argv: Vec<String> = ["python3", "-m", "awslambdaric", "app.handler"].map(String::from).to_vec();
    for _ in 0..COLD {
        py_plain.push(plain_start(&py_argv, &lambda_env("app.handler", &py), &py).await?);
        ric_plain.push(plain_start(&ric_argv, &ric_env, &py).await?);
    }
    let (js_cold, _) = hangar_cold(&client, &h, "jsb").await?;
    let js_argv = vec!["node".to_string(), shims.join("bootstrap.js").display().to_string()];
    let mut js_plain = Vec::new();
    for _ in 0..COLD {
        js_plain.push(plain_start(&js_argv, &lambda_env("index.handler", &js), &js).await?);
    }
    let (rs_cold, rs_init) = hangar_cold(&client, &h, "rsb").await?;
    let rs_argv = vec![prov.join("bootstrap").display().to_string()];
    let mut rs_plain = Vec::new();
    for _ in 0..COLD {
        rs_plain.push(plain_start(&rs_argv, &lambda_env("", &prov), &prov).await?);
    }

    // Warm: sequential requests through the gateway vs straight to a plain process's Runtime API.
    let mut py_warm = Vec::new();
    hangar_invoke(&client, &h, "pyb").await?;
    for _ in 0..WARM {
        py_warm.push(hangar_invoke(&client, &h, "pyb").await?);
    }
    let py_warm_plain = plain_warm(&py_argv, &lambda_env("app.handler", &py), &py).await?;
    hangar_invoke(&client, &h, "pyb").await?;
    let uss = instance_uss("pyb");
    h.stop()?;

    let mut out = String::new();
    let _ = writeln!(out, "## Process functions: cold starts\n");
    let _ = writeln!(
        out,
        "A cold start on Hangar is a request (`POST /v1/functions/NAME/invoke`, through the gateway)\n\
         to a function with no warm instance, the zygote running (as after a deploy); it includes\n\
         forking the instance, its namespaces, cgroup and Runtime API, and the first invocation.\n\
         The plain peer is the same handler started on the host as an ordinary process answering one\n\
         invocation through a Runtime API, timed from spawn to answer (no sandbox at all). Both sides\n\
         idle {:.1} s before each sample (Hangar's keep-alive of 1 s reaps the last instance).\n\
         {COLD} samples each, medians; each Hangar sample is checked in its record to be served by a new\n\
         instance (`cold`, or `prewarmed`: the revision's spare made ahead of demand).\n\n\
         How: each revision's zygote has started the interpreter (python3: and imported the handler)\n\
         once, and one spare sandbox (namespaces, cgroup, Runtime API, privileges dropped) is made\n\
         ahead of demand and after each cold start; a cold start forks nothing on the request path and\n\
         only lets the spare's runtime go. For nodejs and provided the spare's runtime is also started\n\
         ahead (a prewarmed instance, like Lambda's proactive initialization): their rows are the time\n\
         to serve from it, and the runtime's own start is off the request path.\n",
        IDLE.as_secs_f64()
    );
    let _ = writeln!(out, "| runtime | Hangar cold start | plain process | Hangar / plain | goal |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    row(&mut out, "python3 (zygote fork)", &py_cold, &py_plain, "`python3` + shim", "≤ 0.10×, p50 ≤ 15 ms");
    row(&mut out, "python3 vs awslambdaric", &py_cold, &ric_plain, "`python3 -m awslambdaric`", "");
    row(&mut out, "nodejs (fork + exec)", &js_cold, &js_plain, "`node` + shim", "≤ 0.33×");
    row(&mut out, "provided (`lambda_runtime`)", &rs_cold, &rs_plain, "bare exec", "≤ 1.2×");
    if !rs_init.is_empty() {
        let _ = writeln!(
            out,
            "\nThe `provided` bootstrap's own start inside the sandbox, off the request path (release to its\n\
             first poll, the `Init Duration` of the same samples' REPORT lines): {:.1} ms (p90 {:.1}),\n\
             against {:.1} ms for the bare exec's spawn to answer above.",
            median(rs_init.clone()),
            percentile(rs_init, 0.9),
            median(rs_plain.clone())
        );
    }
    let _ = writeln!(out, "\n## Process functions: warm path and memory\n");
    let _ = writeln!(out, "| measure | value | goal |");
    let _ = writeln!(out, "|---|---:|---|");
    let hw = median(py_warm.clone());
    let _ = writeln!(out, "| python3 warm invoke through Hangar, p50 ({WARM} sequential) | {hw:.3} ms | |");
    let _ = writeln!(out, "| same handler, plain process, Runtime API only, p50 | {py_warm_plain:.3} ms | |");
    let _ = writeln!(out, "| warm invoke overhead of Hangar (difference of p50s) | {:.3} ms | ≤ 1 ms |", hw - py_warm_plain);
    let _ = writeln!(out, "| python3 warm invoke through Hangar, p99 | {:.3} ms | |", percentile(py_warm, 0.99));
    let uss_text = if uss.is_empty() { "not found".to_string() } else { format!("{:.2} MiB", *uss.iter().max().unwrap_or(&0) as f64 / 1024.0) };
    let _ = writeln!(out, "| unique memory (USS) of an idle warm python3 instance | {uss_text} | ≤ 5 MiB |");
    let _ = writeln!(out);
    Ok(out)
}
