//! `hangar.toml`: an app's functions declared together, applied idempotently by `hangar deploy`.
//!
//! Apply is all-or-nothing up to the server: the file is parsed and validated, build commands
//! run, and every function is checked by the server (`dry_run`) before the first one changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hangar_api::{DeployResponse, DeployStatus, FunctionConfig, RuntimeKind, validate};
use serde::Deserialize;

use crate::cli::Output;
use crate::client::Client;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    /// Namespace to deploy into (default: the key's own, or `default`).
    namespace: Option<String>,
    #[serde(default)]
    functions: BTreeMap<String, FunctionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionSpec {
    runtime: RuntimeKind,
    /// Lambda handler (python3: module.function, nodejs: file.function).
    handler: Option<String>,
    /// Most instances at once (process runtimes).
    max_instances: Option<u32>,
    /// Path of the code (a file, or a directory that is zipped), relative to the manifest.
    code: PathBuf,
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
}

/// A function ready to deploy.
#[derive(Debug)]
pub struct Planned {
    pub name: String,
    pub config: FunctionConfig,
    pub code_path: PathBuf,
    build: Option<String>,
}

/// Line (1-based) of `field` inside `[functions.<name>]`, or of the section itself.
fn line_of(text: &str, name: &str, field: Option<&str>) -> usize {
    let headers = [format!("[functions.{name}]"), format!("[functions.\"{name}\"]")];
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
            && t.split('=').next().map(str::trim) == Some(f) {
                return i + 1;
            }
    }
    section_line
}

/// Parses and validates a manifest; every error names the file, line and field.
pub fn plan(path: &Path) -> Result<(Option<String>, Vec<Planned>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading manifest {}", path.display()))?;
    let file = path.display();
    let manifest: Manifest = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(l) => anyhow::anyhow!("{file}:{l}: {}", e.message()),
            None => anyhow::anyhow!("{file}: {}", e.message()),
        }
    })?;
    if let Some(ns) = &manifest.namespace {
        validate::name("namespace", ns).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    }
    if manifest.functions.is_empty() {
        bail!("{file}: declares no functions; add a [functions.NAME] table");
    }
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut planned = Vec::new();
    for (name, spec) in manifest.functions {
        let err = |field: Option<&str>, msg: String| {
            anyhow::anyhow!("{file}:{}: functions.{name}{}: {msg}", line_of(&text, &name, field), field.map(|f| format!(".{f}")).unwrap_or_default())
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
        config.handler = spec.handler;
        if let Some(n) = spec.max_instances {
            config.max_instances = n;
        }
        validate::function_config(&config).map_err(|e| {
            let field = match e.field.as_str() {
                "memory_mb" => "memory",
                "timeout_ms" => "timeout",
                f => f,
            };
            err(Some(field), e.message)
        })?;
        planned.push(Planned { name, config, code_path: base.join(spec.code), build: spec.build });
    }
    Ok((manifest.namespace, planned))
}

/// `hangar deploy [-f FILE]`.
pub async fn deploy(client: &Client, path: &Path, namespace: Option<&str>, output: Output) -> Result<()> {
    let (manifest_ns, planned) = plan(path)?;
    let ns = namespace.map(str::to_string).or(manifest_ns);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    for p in &planned {
        if let Some(cmd) = &p.build {
            eprintln!("building {}: {cmd}", p.name);
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(if base.as_os_str().is_empty() { Path::new(".") } else { &base })
                .status()
                .await
                .with_context(|| format!("running the build command of {}", p.name))?;
            if !status.success() {
                bail!("the build command of function `{}` failed ({status}); nothing was deployed", p.name);
            }
        }
    }
    let mut codes = Vec::new();
    for p in &planned {
        let code = crate::code::read(&p.code_path).with_context(|| {
            format!("reading the code of function `{}` at {}; build it first (or give `build`)", p.name, p.code_path.display())
        })?;
        codes.push(code);
    }
    for (p, code) in planned.iter().zip(&codes) {
        crate::cli::put_function(client, &p.name, ns.as_deref(), &p.config, Some(code.clone()), true)
            .await
            .with_context(|| format!("function `{}` was rejected; nothing was deployed", p.name))?;
    }
    let mut results = Vec::new();
    for (p, code) in planned.iter().zip(codes) {
        let r: DeployResponse = crate::cli::put_function(client, &p.name, ns.as_deref(), &p.config, Some(code), false)
            .await
            .with_context(|| format!("deploying function `{}`", p.name))?;
        results.push(r);
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        Output::Table => {
            for r in &results {
                let word = match r.status {
                    DeployStatus::Created => "created",
                    DeployStatus::Updated => "updated",
                    DeployStatus::Unchanged => "unchanged",
                };
                println!("{:<10} {}/{} (revision {})  {}", word, r.function.namespace, r.function.name, r.function.revision, r.function.url_path);
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

    fn plan_text(text: &str) -> Result<(Option<String>, Vec<Planned>)> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hangar.toml");
        std::fs::write(&p, text).unwrap();
        plan(&p)
    }

    #[test]
    fn good_manifest() {
        let (ns, fns) = plan_text(
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
        let e = plan_text("[functions.hello]\nruntime = \"wasm\"\ncode = \"a.wasm\"\nmemory = 1\n").unwrap_err().to_string();
        assert!(e.contains(":4: functions.hello.memory:"), "{e}");
        let e = plan_text("[functions.hello]\nruntime = \"cobol\"\ncode = \"a.wasm\"\n").unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("cobol"), "{e}");
        let e = plan_text("[functions.hello]\nruntime = \"wasm\"\ncode = \"a.wasm\"\nmemroy = 3\n").unwrap_err().to_string();
        assert!(e.contains(":4:") && e.contains("memroy"), "{e}");
        let e = plan_text("[functions.Bad_Name]\nruntime = \"wasm\"\ncode = \"a.wasm\"\n").unwrap_err().to_string();
        assert!(e.contains(":1: functions.Bad_Name:"), "{e}");
        let e = plan_text("[functions.t]\nruntime = \"wasm\"\ncode = \"a.wasm\"\ntimeout = \"soon\"\n").unwrap_err().to_string();
        assert!(e.contains(":4: functions.t.timeout:"), "{e}");
    }
}
