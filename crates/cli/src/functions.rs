//! `hangar fn`, `invoke`, `logs` and `invocations`: functions and their invocations.

use std::time::Duration;

use anyhow::{Context, Result};
use comfy_table::Table;
use hangar_api::{DeployResponse, Function, FunctionConfig, FunctionList, InvocationPage, RuntimeKind};
use reqwest::Method;

use crate::args::{Cli, FnCommand, InvokeArgs, Output, ScaleArgs};
use crate::client::{Client, Failure};
use crate::util::{client, delete, env_flags, ns_query, print_json, table};

/// PUT a function: multipart with config and code, or JSON config alone.
pub async fn put_function(
    client: &Client,
    name: &str,
    ns: Option<&str>,
    config: &FunctionConfig,
    code: Option<Vec<u8>>,
    dry_run: bool,
) -> Result<DeployResponse> {
    let mut query = ns_query(ns);
    if dry_run {
        query.push(("dry_run", "true".into()));
    }
    let rb = client.request(Method::PUT, &format!("/v1/functions/{name}")).query(&query);
    let config_json = serde_json::to_string(config)?;
    let rb = match code {
        Some(code) => {
            let form = reqwest::multipart::Form::new()
                .part("config", reqwest::multipart::Part::text(config_json).mime_str("application/json")?)
                .part("code", reqwest::multipart::Part::bytes(code).file_name("code").mime_str("application/octet-stream")?);
            rb.multipart(form)
        }
        None => rb.header("content-type", "application/json").body(config_json),
    };
    client.json(rb).await
}

fn function_rows(fns: &[Function]) -> Table {
    let mut t = table(&["NAME", "NAMESPACE", "RUNTIME", "REVISION", "MEMORY", "TIMEOUT", "PUBLIC", "URL"]);
    for f in fns {
        t.add_row(vec![
            f.name.clone(),
            f.namespace.clone(),
            f.config.runtime.to_string(),
            f.revision.to_string(),
            format!("{} MiB", f.config.memory_mb),
            humantime::format_duration(Duration::from_millis(f.config.timeout_ms)).to_string(),
            f.config.public.to_string(),
            f.url_path.clone(),
        ]);
    }
    t
}

pub async fn run_fn(cli: &Cli, cmd: &FnCommand) -> Result<()> {
    let client = client(cli);
    let ns = cli.namespace.as_deref();
    match cmd {
        FnCommand::Deploy(a) => {
            let runtime: RuntimeKind = match a.sequence.is_empty() {
                true => a.runtime.parse().map_err(|e: String| anyhow::anyhow!("--runtime: {e}"))?,
                false => RuntimeKind::Sequence,
            };
            let mut config = FunctionConfig::new(runtime);
            config.steps = a.sequence.clone();
            if let Some(m) = a.memory {
                config.memory_mb = m;
            }
            if let Some(t) = &a.timeout {
                config.timeout_ms = crate::manifest::parse_timeout(t)?;
            }
            config.env.extend(env_flags(&a.env)?);
            config.allow_outbound = a.allow_outbound.clone();
            config.public = a.public;
            config.hosts = a.hosts.clone();
            config.handler = a.handler.clone();
            if let Some(n) = a.max_instances {
                config.max_instances = n;
            }
            config.reserved_concurrency = a.reserved_concurrency;
            apply_scale(
                &mut config,
                &ScaleArgs {
                    name: a.name.clone(),
                    min: a.min_instances,
                    max: None,
                    provisioned: a.provisioned,
                    reserved_concurrency: None,
                    pause_after: a.pause_after.clone(),
                    keep_alive: a.keep_alive.clone(),
                },
            )?;
            if let Some(m) = &a.mode {
                config.mode = if m == "auto" { hangar_api::FunctionMode::Auto } else { hangar_api::FunctionMode::Fixed };
            }
            if let Some(o) = &a.latency_objective {
                config.latency_objective_ms = Some(flag_ms("--latency-objective", o)?);
            }
            if let Some(n) = a.retries {
                config.async_.max_retries = n;
            }
            let duration = |flag: &str, v: &str| humantime::parse_duration(v).with_context(|| format!("{flag} `{v}` is not a duration like 500ms or 1m"));
            if let Some(d) = &a.retry_delay {
                config.async_.retry_delay_ms = duration("--retry-delay", d)?.as_millis() as u64;
            }
            if let Some(d) = &a.max_event_age {
                config.async_.max_event_age_s = duration("--max-event-age", d)?.as_secs();
            }
            config.async_.on_failure = a.on_failure.clone();
            hangar_api::validate::function_config(&config).map_err(|e| anyhow::anyhow!("invalid {e}"))?;
            hangar_api::validate::name("name", &a.name).map_err(|e| anyhow::anyhow!("invalid {e}"))?;
            let code = match &a.code {
                Some(path) => Some(crate::code::read(path).context("--code")?),
                None => None,
            };
            let r = put_function(&client, &a.name, ns, &config, code, false).await?;
            match cli.output {
                Output::Json => print_json(&r)?,
                Output::Table => {
                    let f = &r.function;
                    println!("{} {}/{} revision {}", serde_json::to_value(r.status)?.as_str().unwrap_or("deployed"), f.namespace, f.name, f.revision);
                    match f.urls.is_empty() {
                        true => println!("URL: {}{}", client.base, f.url_path),
                        false => f.urls.iter().for_each(|u| println!("URL: {u}")),
                    }
                }
            }
        }
        FnCommand::Ls => {
            let list: FunctionList = client.json(client.request(Method::GET, "/v1/functions").query(&ns_query(ns))).await?;
            match cli.output {
                Output::Json => print_json(&list)?,
                Output::Table if list.items.is_empty() => println!("no functions; deploy one with `hangar fn deploy NAME --code FILE.wasm`"),
                Output::Table => println!("{}", function_rows(&list.items)),
            }
        }
        FnCommand::Get { name } => {
            let f: Function = client.json(client.request(Method::GET, &format!("/v1/functions/{name}")).query(&ns_query(ns))).await?;
            match cli.output {
                Output::Json => print_json(&f)?,
                Output::Table => {
                    println!("{}", function_rows(std::slice::from_ref(&f)));
                    for u in &f.urls {
                        println!("url: {u}");
                    }
                    println!("code: {} ({} bytes)  updated: {}", f.code_digest, f.code_size, f.updated_at);
                    if !f.config.env.is_empty() {
                        println!("env: {}", f.config.env.keys().cloned().collect::<Vec<_>>().join(", "));
                    }
                    if !f.config.allow_outbound.is_empty() {
                        println!("outbound: {}", f.config.allow_outbound.join(", "));
                    }
                    let c = &f.config;
                    let ms = |v: Option<u64>| v.map_or("server default".to_string(), |v| format!("{v} ms"));
                    println!(
                        "scaling: min {} max {} provisioned {} reserved concurrency {} pause after {} keep alive {}",
                        c.min_instances,
                        c.max_instances,
                        c.provisioned_instances,
                        c.reserved_concurrency.map_or("none".to_string(), |n| n.to_string()),
                        ms(c.pause_after_ms),
                        ms(c.keep_alive_ms)
                    );
                    if let Some(i) = &f.instances {
                        println!("instances: {} busy, {} idle, {} paused, {} provisioned, {} spare", i.busy, i.idle, i.paused, i.provisioned, i.spare);
                    }
                    if c.mode == hangar_api::FunctionMode::Auto {
                        println!(
                            "mode: auto (latency objective {}; `hangar fn switches {}` lists its changes)",
                            c.latency_objective_ms.map_or("none".to_string(), |v| format!("{v} ms")),
                            f.name
                        );
                    }
                }
            }
        }
        FnCommand::Switches { name } => {
            let list: hangar_api::ModeSwitchList =
                client.json(client.request(Method::GET, &format!("/v1/functions/{name}/switches")).query(&ns_query(ns))).await?;
            match cli.output {
                Output::Json => print_json(&list)?,
                Output::Table => {
                    let mut t = table(&["AT", "REVISION", "WARM", "REASON"]);
                    for sw in &list.items {
                        t.add_row(vec![sw.at.clone(), sw.revision.to_string(), format!("{} → {}", sw.from_warm, sw.to_warm), sw.reason.clone()]);
                    }
                    println!("{t}");
                }
            }
        }
        FnCommand::Rm { name } => {
            delete(cli, &client, client.request(Method::DELETE, &format!("/v1/functions/{name}")).query(&ns_query(ns)), name).await?;
        }
        FnCommand::Scale(a) => {
            let f: Function = client.json(client.request(Method::GET, &format!("/v1/functions/{}", a.name)).query(&ns_query(ns))).await?;
            let mut config = f.config;
            apply_scale(&mut config, a)?;
            hangar_api::validate::function_config(&config).map_err(|e| anyhow::anyhow!("invalid {e}"))?;
            let r = put_function(&client, &a.name, ns, &config, None, false).await?;
            match cli.output {
                Output::Json => print_json(&r)?,
                Output::Table => {
                    let c = &r.function.config;
                    println!(
                        "{}/{} revision {}: min {} max {} provisioned {}{}",
                        r.function.namespace,
                        r.function.name,
                        r.function.revision,
                        c.min_instances,
                        c.max_instances,
                        c.provisioned_instances,
                        c.reserved_concurrency.map(|n| format!(" reserved concurrency {n}")).unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

/// A duration flag in milliseconds.
fn flag_ms(flag: &str, v: &str) -> Result<u64> {
    Ok(humantime::parse_duration(v).with_context(|| format!("{flag} `{v}` is not a duration like 1s or 5m"))?.as_millis() as u64)
}

fn apply_scale(config: &mut FunctionConfig, a: &ScaleArgs) -> Result<()> {
    if let Some(n) = a.min {
        config.min_instances = n;
    }
    if let Some(n) = a.max {
        config.max_instances = n;
    }
    if let Some(n) = a.provisioned {
        config.provisioned_instances = n;
    }
    if let Some(n) = a.reserved_concurrency {
        config.reserved_concurrency = Some(n);
    }
    if let Some(d) = &a.pause_after {
        config.pause_after_ms = Some(flag_ms("--pause-after", d)?);
    }
    if let Some(d) = &a.keep_alive {
        config.keep_alive_ms = Some(flag_ms("--keep-alive", d)?);
    }
    Ok(())
}

pub async fn run_invoke(cli: &Cli, a: &InvokeArgs) -> Result<i32> {
    if a.asynchronous {
        return crate::events::invoke_async(cli, a).await;
    }
    let client = client(cli);
    let ns = match cli.namespace.clone() {
        Some(n) => n,
        None => {
            // The function URL names its namespace; ask the API which one the key acts in.
            let f: Function = client.json(client.request(Method::GET, &format!("/v1/functions/{}", a.name))).await?;
            f.namespace
        }
    };
    let body = match &a.data {
        Some(d) if d.starts_with('@') => Some(std::fs::read(&d[1..]).with_context(|| format!("reading --data file {}", &d[1..]))?),
        Some(d) => Some(d.clone().into_bytes()),
        None => None,
    };
    let method = match &a.method {
        Some(m) => Method::from_bytes(m.to_uppercase().as_bytes()).with_context(|| format!("--method `{m}` is not an HTTP method"))?,
        None if body.is_some() => Method::POST,
        None => Method::GET,
    };
    let path = if a.path.starts_with('/') { a.path.clone() } else { format!("/{}", a.path) };
    let mut rb = client.request(method, &format!("/fn/{ns}/{}{path}", a.name));
    for h in &a.headers {
        let (k, v) = h.split_once(':').with_context(|| format!("--header `{h}` is not `Name: value`"))?;
        rb = rb.header(k.trim(), v.trim());
    }
    if let Some(b) = body {
        rb = rb.body(b);
    }
    let resp = rb.send().await.map_err(|e| Failure::Unreachable { url: client.base.clone(), reason: e.to_string() })?;
    let status = resp.status();
    let id = resp.headers().get(hangar_api::INVOCATION_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    if !status.is_success() {
        let f = crate::client::failure_of(resp).await;
        if let Some(id) = id {
            eprintln!("invocation {id}");
        }
        return Err(f.into());
    }
    let bytes = resp.bytes().await?;
    use std::io::Write;
    std::io::stdout().write_all(&bytes)?;
    if !bytes.ends_with(b"\n") && !bytes.is_empty() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!();
    }
    Ok(0)
}

fn since_param(s: &str) -> Result<String> {
    if hangar_api::parse_rfc3339(s).is_some() {
        return Ok(s.to_string());
    }
    let d = humantime::parse_duration(s).map_err(|_| anyhow::anyhow!("--since `{s}` is neither an RFC 3339 time nor a duration like 1h"))?;
    Ok(hangar_api::rfc3339(hangar_api::now_ms() - d.as_millis() as i64))
}

pub async fn run_invocations(cli: &Cli, name: Option<&str>, status: Option<&str>, since: Option<&str>, limit: u32) -> Result<()> {
    let client = client(cli);
    let mut q = ns_query(cli.namespace.as_deref());
    q.push(("limit", limit.to_string()));
    if let Some(n) = name {
        q.push(("function", n.to_string()));
    }
    if let Some(s) = status {
        q.push(("status", s.to_string()));
    }
    if let Some(s) = since {
        q.push(("since", since_param(s)?));
    }
    let page: InvocationPage = client.json(client.request(Method::GET, "/v1/invocations").query(&q)).await?;
    match cli.output {
        Output::Json => print_json(&page)?,
        Output::Table => {
            let mut t = table(&["ID", "FUNCTION", "STARTED", "DURATION", "BILLED", "MEMORY", "START", "OUTCOME", "STATUS"]);
            for i in &page.items {
                t.add_row(vec![
                    i.id.clone(),
                    i.function.clone(),
                    i.started_at.clone(),
                    format!("{:.3} ms", i.duration_us as f64 / 1000.0),
                    format!("{} ms", i.billed_ms),
                    format!("{} MiB", i.memory_mb),
                    i.start.as_str().to_string(),
                    i.outcome.to_string(),
                    i.status.to_string(),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

fn print_logs(i: &hangar_api::Invocation) {
    println!("── {} {} {} {:.3} ms ({})", i.started_at, i.id, i.outcome, i.duration_us as f64 / 1000.0, i.start.as_str());
    if let Some(l) = &i.logs {
        print!("{l}");
        if !l.is_empty() && !l.ends_with('\n') {
            println!();
        }
    }
    if let Some(e) = &i.error {
        println!("error: {e}");
    }
}

/// How long after its start a record may still reach the store beyond the function's
/// timeout: nodes write records in batches.
const LATE_RECORDS: Duration = Duration::from_secs(10);

pub async fn run_logs(cli: &Cli, name: &str, follow: bool, limit: u32) -> Result<()> {
    let client = client(cli);
    let ns = ns_query(cli.namespace.as_deref());
    // The function must exist (a clear error instead of an empty listing).
    let function: Function = client.json(client.request(Method::GET, &format!("/v1/functions/{name}")).query(&ns)).await?;
    let mut q = ns.clone();
    q.extend([("function", name.to_string()), ("logs", "true".into()), ("limit", limit.to_string())]);
    let page: InvocationPage = client.json(client.request(Method::GET, "/v1/invocations").query(&q)).await?;
    let show = |i: &hangar_api::Invocation| -> Result<()> {
        if cli.output == Output::Json {
            println!("{}", serde_json::to_string(i)?);
        } else {
            print_logs(i);
        }
        Ok(())
    };
    for i in page.items.iter().rev() {
        show(i)?;
    }
    if !follow {
        return Ok(());
    }
    // Records reach the store when their call ends, from whichever node ran it, in batches:
    // each poll reads every record started within the function's timeout (and a margin) of
    // the newest one seen, and shows those not shown yet (as `aws logs tail --follow` does).
    let lookback = i64::try_from(function.config.timeout_ms).unwrap_or(i64::MAX).saturating_add(LATE_RECORDS.as_millis() as i64);
    let started = |i: &hangar_api::Invocation| hangar_api::parse_rfc3339(&i.started_at).unwrap_or(0);
    // With no record yet, from now by this machine's clock (the window absorbs a small skew).
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let mut newest = page.items.iter().map(started).max().unwrap_or_else(now_ms);
    let mut shown: std::collections::HashMap<String, i64> = page.items.iter().map(|i| (i.id.clone(), started(i))).collect();
    let mut q = ns;
    q.extend([("function", name.to_string()), ("logs", "true".into()), ("limit", "1000".into()), ("order", "asc".into())]);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let from = newest.saturating_sub(lookback);
        let mut cursor: Option<String> = None;
        loop {
            let mut q = q.clone();
            q.push(("since", hangar_api::rfc3339(from)));
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page: InvocationPage = client.json(client.request(Method::GET, "/v1/invocations").query(&q)).await?;
            for i in &page.items {
                if !shown.contains_key(&i.id) {
                    show(i)?;
                    shown.insert(i.id.clone(), started(i));
                    newest = newest.max(started(i));
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        shown.retain(|_, t| *t >= from);
    }
}
