//! `hangar.toml`: an app's functions and services declared together, applied idempotently by
//! `hangar deploy`.
//!
//! Apply is all-or-nothing up to the server: the file is parsed and validated, build commands
//! run, and every function is checked by the server (`dry_run`) before the first one changes.
//! Services are applied after the functions, each waiting for its rollout; a service's
//! `import` (an OCI layout or archive) is imported under its `image` name first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hangar_api::{DeployResponse, DeployStatus, FunctionConfig, RuntimeKind, validate};
use serde::Deserialize;

use crate::args::Output;
use crate::client::Client;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    /// Namespace to deploy into (default: the key's own, or `default`).
    namespace: Option<String>,
    #[serde(default)]
    functions: BTreeMap<String, FunctionSpec>,
    #[serde(default)]
    services: BTreeMap<String, ServiceSpec>,
    /// Cron schedules and topic subscriptions, applied after the functions and services.
    #[serde(default)]
    triggers: BTreeMap<String, hangar_api::events::TriggerConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    /// Image reference in the namespace's store.
    image: String,
    /// An OCI image layout (directory or tar) or `docker save` archive, relative to the
    /// manifest, imported as `image` before the service deploys.
    import: Option<PathBuf>,
    /// Shell command that produces `import`, run in the manifest's directory first.
    build: Option<String>,
    port: Option<u16>,
    min: Option<u32>,
    max: Option<u32>,
    /// Requests in flight per instance the autoscaler aims at.
    concurrency: Option<u32>,
    /// The autoscaler's stable window, e.g. "60s".
    scale_window: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    volumes: Vec<String>,
    runtime: Option<hangar_api::services::ContainerRuntime>,
    memory: Option<u32>,
    cpus: Option<f64>,
    readiness_path: Option<String>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    #[serde(default)]
    public: bool,
    egress: Option<bool>,
    /// Host names routed to the service, whole path.
    #[serde(default)]
    hosts: Vec<String>,
    /// "auto": the advisor keeps `min` (at least 1) warm or lets it scale to zero.
    #[serde(default)]
    mode: hangar_api::FunctionMode,
}

/// A service ready to deploy.
#[derive(Debug)]
pub struct PlannedService {
    pub name: String,
    pub config: hangar_api::services::ServiceConfig,
    pub import: Option<PathBuf>,
    build: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionSpec {
    runtime: RuntimeKind,
    /// Lambda handler (python3: module.function, nodejs: file.function).
    handler: Option<String>,
    /// Most instances at once (process runtimes).
    max_instances: Option<u32>,
    /// Most invocations running at once; more are throttled.
    reserved_concurrency: Option<u32>,
    /// Instances kept initialized and running (process runtimes).
    #[serde(default)]
    provisioned_instances: u32,
    /// Instances made at deploy and never reaped (process runtimes).
    #[serde(default)]
    min_instances: u32,
    /// Pause idle instances after this long, e.g. "1s" ("0s": never).
    pause_after: Option<String>,
    /// Stop idle instances after this long, e.g. "5m".
    keep_alive: Option<String>,
    /// "auto": the advisor keeps it warm or lets it scale to zero (process runtimes).
    #[serde(default)]
    mode: hangar_api::FunctionMode,
    /// The p99 latency adaptive mode keeps, e.g. "200ms".
    latency_objective: Option<String>,
    /// Path of the code (a file, or a directory that is zipped), relative to the manifest;
    /// none for a sequence.
    code: Option<PathBuf>,
    /// A sequence's functions, in order.
    #[serde(default)]
    steps: Vec<String>,
    /// Shell command that produces `code`, run in the manifest's directory first.
    build: Option<String>,
    memory: Option<u32>,
    /// e.g. "30s", "500ms".
    timeout: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    allow_outbound: Vec<String>,
    #[serde(default)]
    public: bool,
    /// Host names routed to the function, whole path.
    #[serde(default)]
    hosts: Vec<String>,
    /// Retries and on_failure of asynchronous invocations.
    #[serde(default, rename = "async")]
    async_: Option<hangar_api::events::AsyncConfig>,
}

/// A function ready to deploy.
#[derive(Debug)]
pub struct Planned {
    pub name: String,
    pub config: FunctionConfig,
    /// `None` for a sequence.
    pub code_path: Option<PathBuf>,
    build: Option<String>,
}

/// Line (1-based) of `field` inside `[<kind>.<name>]`, or of the section itself.
fn line_of(text: &str, kind: &str, name: &str, field: Option<&str>) -> usize {
    let headers = [format!("[{kind}.{name}]"), format!("[{kind}.\"{name}\"]")];
    let mut in_section = false;
    let mut section_line = 1;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_section = headers.iter().any(|h| t.starts_with(h.as_str()));
            if in_section {
                section_line = i + 1;
            }
            continue;
        }
        if let (true, Some(f)) = (in_section, field)
            && t.split('=').next().map(str::trim) == Some(f)
        {
            return i + 1;
        }
    }
    section_line
}

/// A whole manifest, checked.
#[derive(Debug)]
pub struct Plan {
    pub namespace: Option<String>,
    pub functions: Vec<Planned>,
    pub services: Vec<PlannedService>,
    pub triggers: Vec<(String, hangar_api::events::TriggerConfig)>,
}

/// Parses and validates a manifest; every error names the file, line and field.
pub fn plan(path: &Path) -> Result<Plan> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading manifest {}", path.display()))?;
    plan_text(&text, path)
}

/// Parses and validates the text of a manifest kept at `path` (which names it in errors and is
/// where the code paths are relative to); reads no file.
pub fn plan_text(text: &str, path: &Path) -> Result<Plan> {
    let file = path.display();
    let manifest: Manifest = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1);
        match line {
            Some(l) => anyhow::anyhow!("{file}:{l}: {}", e.message()),
            None => anyhow::anyhow!("{file}: {}", e.message()),
        }
    })?;
    if let Some(ns) = &manifest.namespace {
        validate::name("namespace", ns).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    }
    if manifest.functions.is_empty() && manifest.services.is_empty() && manifest.triggers.is_empty() {
        bail!("{file}: declares nothing; add a [functions.NAME], [services.NAME] or [triggers.NAME] table");
    }
    let mut triggers = Vec::new();
    for (name, config) in manifest.triggers {
        let at = |field: Option<&str>| line_of(text, "triggers", &name, field);
        validate::name("name", &name).map_err(|e| anyhow::anyhow!("{file}:{}: triggers.{name}: {}", at(None), e.message))?;
        config.validate().map_err(|e| anyhow::anyhow!("{file}:{}: triggers.{name}.{}: {}", at(Some(&e.field)), e.field, e.message))?;
        triggers.push((name, config));
    }
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut planned = Vec::new();
    for (name, spec) in manifest.functions {
        let err = |field: Option<&str>, msg: String| {
            anyhow::anyhow!(
                "{file}:{}: functions.{name}{}: {msg}",
                line_of(text, "functions", &name, field),
                field.map(|f| format!(".{f}")).unwrap_or_default()
            )
        };
        validate::name("name", &name).map_err(|e| err(None, e.message))?;
        let mut config = FunctionConfig::new(spec.runtime);
        if let Some(m) = spec.memory {
            config.memory_mb = m;
        }
        if let Some(t) = &spec.timeout {
            let d = humantime::parse_duration(t).map_err(|e| err(Some("timeout"), format!("`{t}` is not a duration like \"30s\" ({e})")))?;
            config.timeout_ms = d.as_millis() as u64;
        }
        config.env = spec.env;
        config.allow_outbound = spec.allow_outbound;
        config.public = spec.public;
        config.hosts = spec.hosts;
        config.handler = spec.handler;
        if let Some(n) = spec.max_instances {
            config.max_instances = n;
        }
        config.async_ = spec.async_.unwrap_or_default();
        config.steps = spec.steps;
        config.reserved_concurrency = spec.reserved_concurrency;
        config.provisioned_instances = spec.provisioned_instances;
        config.min_instances = spec.min_instances;
        config.mode = spec.mode;
        for (field, value, slot) in [
            ("pause_after", &spec.pause_after, &mut config.pause_after_ms),
            ("keep_alive", &spec.keep_alive, &mut config.keep_alive_ms),
            ("latency_objective", &spec.latency_objective, &mut config.latency_objective_ms),
        ] {
            if let Some(v) = value {
                *slot =
                    Some(humantime::parse_duration(v).map_err(|e| err(Some(field), format!("`{v}` is not a duration like \"1s\" ({e})")))?.as_millis() as u64);
            }
        }
        let code_path = match (&spec.code, config.runtime) {
            (None, hangar_api::RuntimeKind::Sequence) => None,
            (Some(_), hangar_api::RuntimeKind::Sequence) => return Err(err(Some("code"), "a sequence has no code: its `steps` run".into())),
            (Some(c), _) => Some(base.join(c)),
            (None, _) => return Err(err(Some("code"), "missing: give the path of the function's code".into())),
        };
        validate::function_config(&config).map_err(|e| {
            let field = match e.field.as_str() {
                "memory_mb" => "memory",
                "timeout_ms" => "timeout",
                "pause_after_ms" => "pause_after",
                "keep_alive_ms" => "keep_alive",
                "latency_objective_ms" => "latency_objective",
                f => f,
            };
            err(Some(field), e.message)
        })?;
        planned.push(Planned { name, config, code_path, build: spec.build });
    }
    // A function's on_failure target must exist when it is deployed: targets go first.
    let depth = |start: &str| -> Result<usize> {
        let mut chain = vec![start.to_string()];
        while let Some(next) = planned.iter().find(|p| Some(&p.name) == chain.last()).and_then(|p| p.config.async_.on_failure.clone()) {
            let cycle = chain.contains(&next);
            chain.push(next);
            if cycle {
                bail!("{file}: functions.{start}.async.on_failure: failures would go round in a cycle ({})", chain.join(" → "));
            }
        }
        Ok(chain.len() - 1)
    };
    for p in &planned {
        depth(&p.name)?;
    }
    // What a function needs deployed before it: its on_failure target and, for a sequence,
    // its steps. Depth-first, so each comes after what it needs.
    fn visit(i: usize, planned: &[Planned], marks: &mut [u8], order: &mut Vec<usize>, path: &mut Vec<String>) -> std::result::Result<(), String> {
        path.push(planned[i].name.clone());
        match marks[i] {
            2 => {}
            1 => return Err(path.join(" → ")),
            _ => {
                marks[i] = 1;
                let c = &planned[i].config;
                for d in c.async_.on_failure.iter().chain(&c.steps) {
                    if let Some(j) = planned.iter().position(|q| &q.name == d) {
                        visit(j, planned, marks, order, path)?;
                    }
                }
                marks[i] = 2;
                order.push(i);
            }
        }
        path.pop();
        Ok(())
    }
    let (mut marks, mut order) = (vec![0u8; planned.len()], Vec::new());
    for i in 0..planned.len() {
        visit(i, &planned, &mut marks, &mut order, &mut Vec::new())
            .map_err(|cycle| anyhow::anyhow!("{file}: functions.{}: sequence steps go round in a cycle ({cycle})", planned[i].name))?;
    }
    let mut slots: Vec<Option<Planned>> = planned.into_iter().map(Some).collect();
    let planned: Vec<Planned> = order.into_iter().filter_map(|i| slots[i].take()).collect();
    let mut services = Vec::new();
    for (name, spec) in manifest.services {
        let err = |field: Option<&str>, msg: String| {
            anyhow::anyhow!("{file}:{}: services.{name}{}: {msg}", line_of(text, "services", &name, field), field.map(|f| format!(".{f}")).unwrap_or_default())
        };
        validate::name("name", &name).map_err(|e| err(None, e.message))?;
        let mut c = hangar_api::services::ServiceConfig::new(spec.image);
        c.port = spec.port;
        c.min_instances = spec.min.unwrap_or(1);
        if let Some(n) = spec.concurrency {
            c.concurrency = n;
        }
        if let Some(w) = &spec.scale_window {
            c.scale_window_ms =
                humantime::parse_duration(w).map_err(|e| err(Some("scale_window"), format!("`{w}` is not a duration like \"60s\" ({e})")))?.as_millis() as u64;
        }
        c.max_instances = spec.max.unwrap_or(c.min_instances.max(1));
        c.env = spec.env;
        c.volumes = spec.volumes;
        c.runtime = spec.runtime.unwrap_or_default();
        if let Some(m) = spec.memory {
            c.memory_mb = m;
        }
        if let Some(n) = spec.cpus {
            c.cpus = n;
        }
        c.readiness.path = spec.readiness_path;
        c.command = spec.command;
        c.args = spec.args;
        c.public = spec.public;
        c.egress = spec.egress.unwrap_or(true);
        c.hosts = spec.hosts;
        c.mode = spec.mode;
        c.validate().map_err(|e| {
            let field = match e.field.as_str() {
                "memory_mb" => "memory",
                "min_instances" => "min",
                "max_instances" => "max",
                "readiness.path" => "readiness_path",
                f => f,
            };
            err(Some(field), e.message)
        })?;
        services.push(PlannedService { name, config: c, import: spec.import.map(|p| base.join(p)), build: spec.build });
    }
    Ok(Plan { namespace: manifest.namespace, functions: planned, services, triggers })
}

/// `hangar deploy [-f FILE]`.
pub async fn deploy(client: &Client, path: &Path, namespace: Option<&str>, output: Output) -> Result<()> {
    let Plan { namespace: manifest_ns, functions: planned, services, triggers } = plan(path)?;
    let ns = namespace.map(str::to_string).or(manifest_ns);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let builds = planned.iter().map(|p| (&p.name, &p.build)).chain(services.iter().map(|s| (&s.name, &s.build)));
    for (name, build) in builds {
        if let Some(cmd) = build {
            eprintln!("building {name}: {cmd}");
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(if base.as_os_str().is_empty() { Path::new(".") } else { &base })
                .status()
                .await
                .with_context(|| format!("running the build command of {name}"))?;
            if !status.success() {
                bail!("the build command of `{name}` failed ({status}); nothing was deployed");
            }
        }
    }
    let mut codes = Vec::new();
    for p in &planned {
        let Some(path) = &p.code_path else {
            codes.push(None);
            continue;
        };
        let code = crate::code::read(path)
            .with_context(|| format!("reading the code of function `{}` at {}; build it first (or give `build`)", p.name, path.display()))?;
        codes.push(Some(code));
    }
    // on_failure targets and sequence steps outside the manifest must exist already (the dry
    // run cannot tell).
    for p in &planned {
        let c = &p.config;
        for t in c.async_.on_failure.iter().chain(&c.steps).filter(|t| !planned.iter().any(|q| &q.name == *t)) {
            let q = crate::util::ns_query(ns.as_deref());
            if let Err(e) = client.send(client.request(reqwest::Method::GET, &format!("/v1/functions/{t}")).query(&q)).await {
                bail!("function `{}` needs function `{t}`, which is not in the manifest and could not be found deployed ({e:#}); nothing was deployed", p.name);
            }
        }
    }
    for (p, code) in planned.iter().zip(&codes) {
        crate::functions::put_function(client, &p.name, ns.as_deref(), &p.config, code.clone(), true)
            .await
            .with_context(|| format!("function `{}` was rejected; nothing was deployed", p.name))?;
    }
    let mut results = Vec::new();
    for (p, code) in planned.iter().zip(codes) {
        let r: DeployResponse = crate::functions::put_function(client, &p.name, ns.as_deref(), &p.config, code, false)
            .await
            .with_context(|| format!("deploying function `{}`", p.name))?;
        results.push(r);
    }
    let mut deployed = Vec::new();
    for s in &services {
        if let Some(import) = &s.import {
            crate::images::import_quiet(client, ns.as_deref(), import, &s.config.image)
                .await
                .with_context(|| format!("importing the image of service `{}` from {}", s.name, import.display()))?;
        }
        let mut rb = client.request(reqwest::Method::PUT, &format!("/v1/services/{}", s.name)).json(&s.config);
        if let Some(n) = &ns {
            rb = rb.query(&[("namespace", n)]);
        }
        let r: hangar_api::services::ServiceDeployed = client.json(rb).await.with_context(|| format!("deploying service `{}`", s.name))?;
        deployed.push(r);
    }
    let mut applied = Vec::new();
    for (name, config) in &triggers {
        let rb = client.request(reqwest::Method::PUT, &format!("/v1/triggers/{name}")).query(&crate::util::ns_query(ns.as_deref())).json(config);
        let t: hangar_api::events::TriggerInfo = client.json(rb).await.with_context(|| format!("applying trigger `{name}`"))?;
        applied.push(t);
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&serde_json::json!({"functions": results, "services": deployed, "triggers": applied}))?),
        Output::Table => {
            for r in &results {
                let word = match r.status {
                    DeployStatus::Created => "created",
                    DeployStatus::Updated => "updated",
                    DeployStatus::Unchanged => "unchanged",
                };
                println!("{:<10} {}/{} (revision {})  {}", word, r.function.namespace, r.function.name, r.function.revision, r.function.url_path);
            }
            for r in &deployed {
                println!("{:<10} {}/{} (revision {})  {}", r.status, r.service.namespace, r.service.name, r.service.revision, r.service.url_path);
            }
            for t in &applied {
                println!(
                    "{:<10} {}/{} (trigger){}",
                    "applied",
                    t.namespace,
                    t.name,
                    t.next_fire_at.as_deref().map(|n| format!("  next at {n}")).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// Parses "30s", "1500ms", "2m" into milliseconds, for the CLI's `--timeout`.
pub fn parse_timeout(s: &str) -> Result<u64> {
    let d: Duration = humantime::parse_duration(s).map_err(|e| anyhow::anyhow!("--timeout `{s}` is not a duration like 30s or 500ms ({e})"))?;
    Ok(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_fns(text: &str) -> Result<(Option<String>, Vec<Planned>)> {
        plan_all(text).map(|p| (p.namespace, p.functions))
    }

    fn plan_all(text: &str) -> Result<Plan> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hangar.toml");
        std::fs::write(&p, text).unwrap();
        plan(&p)
    }

    #[test]
    fn good_manifest() {
        let (ns, fns) = plan_fns(
            "namespace = \"team\"\n[functions.hello]\nruntime = \"wasm\"\ncode = \"a.wasm\"\nmemory = 64\ntimeout = \"2s\"\npublic = true\nenv = { A = \"1\" }\n",
        )
        .unwrap();
        assert_eq!(ns.as_deref(), Some("team"));
        assert_eq!(fns[0].config.memory_mb, 64);
        assert_eq!(fns[0].config.timeout_ms, 2000);
        assert!(fns[0].config.public);
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = plan_fns("[functions.hello]\nruntime = \"wasm\"\ncode = \"a.wasm\"\nmemory = 1\n").unwrap_err().to_string();
        assert!(e.contains(":4: functions.hello.memory:"), "{e}");
        let e = plan_fns("[functions.hello]\nruntime = \"cobol\"\ncode = \"a.wasm\"\n").unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("cobol"), "{e}");
        let e = plan_fns("[functions.hello]\nruntime = \"wasm\"\ncode = \"a.wasm\"\nmemroy = 3\n").unwrap_err().to_string();
        assert!(e.contains(":4:") && e.contains("memroy"), "{e}");
        let e = plan_fns("[functions.Bad_Name]\nruntime = \"wasm\"\ncode = \"a.wasm\"\n").unwrap_err().to_string();
        assert!(e.contains(":1: functions.Bad_Name:"), "{e}");
        let e = plan_fns("[functions.t]\nruntime = \"wasm\"\ncode = \"a.wasm\"\ntimeout = \"soon\"\n").unwrap_err().to_string();
        assert!(e.contains(":4: functions.t.timeout:"), "{e}");
    }

    #[test]
    fn async_policies_are_read_and_failure_targets_deploy_first() {
        let p = plan_all(
            "[functions.a]\nruntime = \"wasm\"\ncode = \"a.wasm\"\nasync = { max_retries = 0, on_failure = \"b\" }\n\
             [functions.b]\nruntime = \"wasm\"\ncode = \"b.wasm\"\n[functions.b.async]\non_failure = \"c\"\nretry_delay_ms = 100\n\
             [functions.c]\nruntime = \"wasm\"\ncode = \"c.wasm\"\n",
        )
        .unwrap();
        let order: Vec<&str> = p.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(order, ["c", "b", "a"]);
        assert_eq!(p.functions[2].config.async_.max_retries, 0);
        assert_eq!(p.functions[1].config.async_.retry_delay_ms, 100);
        let e = plan_all("[functions.a]\nruntime = \"wasm\"\ncode = \"a.wasm\"\nasync = { max_retries = 5 }\n").unwrap_err().to_string();
        assert!(e.contains("functions.a.async.max_retries"), "{e}");
        let e = plan_all(
            "[functions.a]\nruntime = \"wasm\"\ncode = \"a.wasm\"\nasync = { on_failure = \"b\" }\n\
             [functions.b]\nruntime = \"wasm\"\ncode = \"b.wasm\"\nasync = { on_failure = \"a\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a → b → a"), "{e}");
    }

    #[test]
    fn sequences_deploy_after_their_steps() {
        let p = plan_all(
            "[functions.pipe]\nruntime = \"sequence\"\nsteps = [\"b\", \"a\"]\n\
             [functions.a]\nruntime = \"wasm\"\ncode = \"a.wasm\"\n[functions.b]\nruntime = \"wasm\"\ncode = \"b.wasm\"\n",
        )
        .unwrap();
        let order: Vec<&str> = p.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(order.last(), Some(&"pipe"));
        assert!(p.functions.last().unwrap().code_path.is_none());
        let e = plan_all("[functions.s]\nruntime = \"sequence\"\nsteps = [\"t\"]\n[functions.t]\nruntime = \"sequence\"\nsteps = [\"s\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cycle"), "{e}");
        let e = plan_all("[functions.s]\nruntime = \"sequence\"\nsteps = [\"t\"]\ncode = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("functions.s.code"), "{e}");
        let e = plan_all("[functions.w]\nruntime = \"wasm\"\n").unwrap_err().to_string();
        assert!(e.contains("functions.w.code: missing"), "{e}");
    }

    #[test]
    fn services_are_planned_and_checked() {
        let p = plan_all("[services.web]\nimage = \"web:1\"\nimport = \"img\"\nmin = 2\nvolumes = [\"data:/data\"]\npublic = true\n").unwrap();
        assert!(p.functions.is_empty());
        assert_eq!(p.services[0].config.min_instances, 2);
        assert_eq!(p.services[0].config.max_instances, 2);
        assert!(p.services[0].import.as_ref().unwrap().ends_with("img"));
        let e = plan_all("[services.web]\nimage = \"web:1\"\nvolumes = [\"/etc:/etc\"]\n").unwrap_err().to_string();
        assert!(e.contains(":3: services.web.volumes:"), "{e}");
        let e = plan_all("[services.web]\nimage = \"web:1\"\nmin = 101\n").unwrap_err().to_string();
        assert!(e.contains(":3: services.web.min:"), "{e}");
        let e = plan_all("namespace = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("declares nothing"), "{e}");
    }
}
