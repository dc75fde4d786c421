//! Validation of names and function configurations: one place, used by the server and the CLI.

use crate::{FunctionConfig, MAX_INSTANCES_RANGE, MEMORY_MB_RANGE, TIMEOUT_MS_RANGE};

/// A broken rule: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid { field: field.into(), message: message.into() }
    }
}

/// The rule for names of namespaces and workloads: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn name(field: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && value.as_bytes()[0] != b'-';
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "`{}` is not a valid name: use 1 to 63 lowercase letters, digits and \
                 dashes, starting with a letter or digit (e.g. `hello-world`)",
                shown(value)
            ),
        ))
    }
}

/// At most the first 64 characters of `value`, control characters escaped: how an invalid
/// value is quoted back in an error.
pub fn shown(value: &str) -> String {
    let mut out: String = value.chars().take(64).flat_map(char::escape_debug).collect();
    if value.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Longest free-text label (a key's name).
pub const MAX_LABEL_CHARS: usize = 128;

/// The rule for labels people give things (a key's name): at most [`MAX_LABEL_CHARS`]
/// characters, no control characters.
pub fn label(field: &str, value: &str) -> Result<(), Invalid> {
    if value.chars().count() > MAX_LABEL_CHARS {
        return Err(Invalid::new(field, format!("is {} characters long; at most {MAX_LABEL_CHARS} are allowed", value.chars().count())));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::new(field, format!("`{}` holds a control character; use printable text", shown(value))));
    }
    Ok(())
}

/// Largest total size of a function's environment (names and values), like Lambda's 4 KiB.
pub const MAX_ENV_BYTES: usize = 4096;
/// Largest number of outbound hosts.
pub const MAX_OUTBOUND_HOSTS: usize = 64;

/// Checks every field of a function configuration.
pub fn function_config(cfg: &FunctionConfig) -> Result<(), Invalid> {
    let (lo, hi) = MEMORY_MB_RANGE;
    if !(lo..=hi).contains(&cfg.memory_mb) {
        return Err(Invalid::new("memory_mb", format!("{} MiB is out of range: choose {lo} to {hi} MiB", cfg.memory_mb)));
    }
    let (lo, hi) = TIMEOUT_MS_RANGE;
    if !(lo..=hi).contains(&cfg.timeout_ms) {
        return Err(Invalid::new("timeout_ms", format!("{} ms is out of range: choose {lo} ms to {hi} ms (15 minutes)", cfg.timeout_ms)));
    }
    let (lo, hi) = MAX_INSTANCES_RANGE;
    if !(lo..=hi).contains(&cfg.max_instances) {
        return Err(Invalid::new("max_instances", format!("{} is out of range: choose {lo} to {hi}", cfg.max_instances)));
    }
    handler(cfg)?;
    cfg.async_.validate()?;
    let process = matches!(cfg.runtime, crate::RuntimeKind::Python3 | crate::RuntimeKind::Nodejs | crate::RuntimeKind::Provided);
    let policies = cfg.provisioned_instances > 0 || cfg.min_instances > 0 || cfg.pause_after_ms.is_some() || cfg.keep_alive_ms.is_some();
    if policies && !process {
        return Err(Invalid::new(
            "provisioned_instances",
            format!(
                "provisioned and min instances, pause_after_ms and keep_alive_ms apply to process runtimes; {} functions keep no instances between calls",
                cfg.runtime
            ),
        ));
    }
    if cfg.mode == crate::FunctionMode::Auto && !process {
        return Err(Invalid::new(
            "mode",
            format!("auto mode keeps process functions warm; {} functions start in microseconds and keep no instances", cfg.runtime),
        ));
    }
    if let Some(ms) = cfg.latency_objective_ms.filter(|ms| !(1..=60_000).contains(ms)) {
        return Err(Invalid::new("latency_objective_ms", format!("{ms} is out of range: choose 1 to 60000")));
    }
    if cfg.provisioned_instances > cfg.max_instances {
        return Err(Invalid::new("provisioned_instances", format!("{} is more than max_instances ({})", cfg.provisioned_instances, cfg.max_instances)));
    }
    if cfg.min_instances > cfg.max_instances {
        return Err(Invalid::new("min_instances", format!("{} is more than max_instances ({})", cfg.min_instances, cfg.max_instances)));
    }
    if let Some(ms) = cfg.pause_after_ms.filter(|ms| *ms > 86_400_000) {
        return Err(Invalid::new("pause_after_ms", format!("{ms} is out of range: choose 0 (never) to 86400000 (a day)")));
    }
    if let Some(ms) = cfg.keep_alive_ms.filter(|ms| !(1000..=86_400_000).contains(ms)) {
        return Err(Invalid::new("keep_alive_ms", format!("{ms} is out of range: choose 1000 to 86400000 (a day)")));
    }
    if let Some(n) = cfg.reserved_concurrency.filter(|n| *n > MAX_INSTANCES_RANGE.1) {
        return Err(Invalid::new("reserved_concurrency", format!("{n} is out of range: choose 0 to {}", MAX_INSTANCES_RANGE.1)));
    }
    steps(cfg)?;
    let mut env_bytes = 0;
    for (k, v) in &cfg.env {
        env_var_name(k)?;
        env_bytes += k.len() + v.len();
    }
    if env_bytes > MAX_ENV_BYTES {
        return Err(Invalid::new("env", format!("environment is {env_bytes} bytes; at most {MAX_ENV_BYTES} bytes are allowed")));
    }
    if cfg.allow_outbound.len() > MAX_OUTBOUND_HOSTS {
        return Err(Invalid::new("allow_outbound", format!("{} hosts given; at most {MAX_OUTBOUND_HOSTS}", cfg.allow_outbound.len())));
    }
    for h in &cfg.allow_outbound {
        outbound_host(h)?;
    }
    hosts(&cfg.hosts)?;
    Ok(())
}

/// Most host names one workload claims.
pub const MAX_HOSTS: usize = 16;

/// The host names a function or service claims: lowercase DNS names with a dot, at most
/// [`MAX_HOSTS`].
pub fn hosts(hosts: &[String]) -> Result<(), Invalid> {
    if hosts.len() > MAX_HOSTS {
        return Err(Invalid::new("hosts", format!("{} hosts given; at most {MAX_HOSTS}", hosts.len())));
    }
    for h in hosts {
        let ok = h.len() <= 253
            && h.contains('.')
            && h.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        if !ok {
            return Err(Invalid::new("hosts", format!("`{}` is not a lowercase DNS name with a dot (e.g. `app.example.com`)", shown(h))));
        }
    }
    Ok(())
}

/// Most steps of a sequence.
pub const MAX_STEPS: usize = 50;

/// A sequence names 1 to 50 functions; nothing else has steps.
pub fn steps(cfg: &FunctionConfig) -> Result<(), Invalid> {
    if cfg.runtime != crate::RuntimeKind::Sequence {
        if !cfg.steps.is_empty() {
            return Err(Invalid::new("steps", format!("only sequences have steps; a {} function runs its own code", cfg.runtime)));
        }
        return Ok(());
    }
    if cfg.steps.is_empty() || cfg.steps.len() > MAX_STEPS {
        return Err(Invalid::new("steps", format!("a sequence runs 1 to {MAX_STEPS} functions; {} given", cfg.steps.len())));
    }
    for s in &cfg.steps {
        name("steps", s)?;
    }
    Ok(())
}

/// The handler fits the runtime: required as `module.function` for python3 and
/// `file.function` for nodejs, free text for provided, absent for wasm.
pub fn handler(cfg: &FunctionConfig) -> Result<(), Invalid> {
    use crate::RuntimeKind;
    let h = cfg.handler.as_deref();
    match (cfg.runtime, h) {
        (RuntimeKind::Wasm, Some(_)) => Err(Invalid::new("handler", "wasm functions have no handler: the component's wasi:http handler is called")),
        (RuntimeKind::Sequence, Some(_)) => Err(Invalid::new("handler", "sequences have no handler: their steps run")),
        (RuntimeKind::Wasm | RuntimeKind::Provided | RuntimeKind::Sequence, None) => Ok(()),
        (kind, None) => Err(Invalid::new(
            "handler",
            format!("the {kind} runtime needs a handler, e.g. `{}`", if kind == RuntimeKind::Python3 { "app.handler" } else { "index.handler" }),
        )),
        (kind, Some(h)) => {
            let ok_chars = !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./$".contains(&b));
            if !ok_chars || h.starts_with('/') || h.split('/').any(|p| p == "..") {
                return Err(Invalid::new(
                    "handler",
                    format!("`{h}` is not a valid handler: use letters, digits, `_`, `-`, `.` and `/` inside the code, at most 128 characters"),
                ));
            }
            if kind.needs_handler() && !matches!(h.rsplit_once('.'), Some((m, f)) if !m.is_empty() && !f.is_empty()) {
                let example = if kind == RuntimeKind::Python3 { "app.handler" } else { "index.handler" };
                return Err(Invalid::new(
                    "handler",
                    format!(
                        "`{h}` names no function: write {} like `{example}`",
                        if kind == RuntimeKind::Python3 { "module.function" } else { "file.function" }
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn env_var_name(k: &str) -> Result<(), Invalid> {
    let mut bytes = k.bytes();
    let ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_') && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok { Ok(()) } else { Err(Invalid::new("env", format!("`{k}` is not a valid variable name: use letters, digits and `_`, not starting with a digit"))) }
}

/// An outbound allow-list entry: `host`, `host:port`, `*.domain` or `*.domain:port`.
pub fn outbound_host(entry: &str) -> Result<(), Invalid> {
    let bad = |why: &str| Err(Invalid::new("allow_outbound", format!("`{entry}` {why}; write `host`, `host:port` or `*.domain` (e.g. `api.example.com:443`)")));
    let (host, port) = match entry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (entry, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().map(|p| p == 0).unwrap_or(true)
    {
        return bad("has an invalid port");
    }
    let host = host.strip_prefix("*.").unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return bad("has no host");
    }
    if !host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
        return bad("is not a lowercase host name or IPv4 address");
    }
    Ok(())
}

/// Whether `host` (lowercase) and `port` are allowed by one of the entries.
pub fn outbound_allowed(entries: &[String], host: &str, port: u16) -> bool {
    entries.iter().any(|e| {
        let (pat, want_port) = match e.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().ok()),
            None => (e.as_str(), None),
        };
        if want_port.is_some_and(|p| p != port) {
            return false;
        }
        match pat.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(domain) && host[..host.len() - domain.len()].ends_with('.'),
            None => pat == host,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuntimeKind;

    #[test]
    fn names() {
        for ok in ["a", "hello", "hello-world", "0x", &"a".repeat(63)] {
            assert!(name("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "Hello", "a_b", "a.b", "a b", &"a".repeat(64), "é"] {
            assert!(name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_ranges() {
        let mut c = FunctionConfig::new(RuntimeKind::Wasm);
        assert!(function_config(&c).is_ok());
        c.memory_mb = 8;
        assert_eq!(function_config(&c).unwrap_err().field, "memory_mb");
        c.memory_mb = 128;
        c.timeout_ms = 0;
        assert_eq!(function_config(&c).unwrap_err().field, "timeout_ms");
        c.timeout_ms = 1000;
        c.env.insert("1BAD".into(), "x".into());
        assert_eq!(function_config(&c).unwrap_err().field, "env");
        c.env.clear();
        c.env.insert("BIG".into(), "x".repeat(5000));
        assert_eq!(function_config(&c).unwrap_err().field, "env");
        c.env.clear();
        c.allow_outbound = vec!["http://x".into()];
        assert_eq!(function_config(&c).unwrap_err().field, "allow_outbound");
        c.allow_outbound.clear();
        c.max_instances = 0;
        assert_eq!(function_config(&c).unwrap_err().field, "max_instances");
        c.max_instances = 10;
        c.handler = Some("app.handler".into());
        assert_eq!(function_config(&c).unwrap_err().field, "handler", "wasm has no handler");
        c.runtime = RuntimeKind::Python3;
        assert!(function_config(&c).is_ok());
        for bad in [None, Some("app"), Some("app."), Some("../x.h"), Some("/abs.h"), Some("a b.h")] {
            c.handler = bad.map(String::from);
            assert_eq!(function_config(&c).unwrap_err().field, "handler", "{bad:?}");
        }
        c.runtime = RuntimeKind::Provided;
        c.handler = None;
        assert!(function_config(&c).is_ok());
    }

    #[test]
    fn outbound_matching() {
        let e = vec!["api.example.com".to_string(), "127.0.0.1:8080".into(), "*.svc.local:443".into()];
        assert!(outbound_allowed(&e, "api.example.com", 443));
        assert!(outbound_allowed(&e, "127.0.0.1", 8080));
        assert!(!outbound_allowed(&e, "127.0.0.1", 8081));
        assert!(outbound_allowed(&e, "a.svc.local", 443));
        assert!(!outbound_allowed(&e, "svc.local", 443));
        assert!(!outbound_allowed(&e, "evilsvc.local", 443));
        assert!(!outbound_allowed(&e, "example.com", 80));
        for bad in ["", "a:0", "a:x", "HTTP://a", "a/b"] {
            assert!(outbound_host(bad).is_err(), "{bad}");
        }
    }
}
