//! `hangar invoke --async`, `hangar async ...` (events and their attempts), `hangar triggers ...`
//! (cron schedules and topic subscriptions) and `hangar events publish`.

use anyhow::{Context, Result};
use hangar_api::events::{AsyncAccepted, AsyncInvocation, IDEMPOTENCY_KEY_HEADER, Published, TriggerConfig, TriggerInfo};
use reqwest::Method;

use crate::args::{AsyncCommand, Cli, EventsCommand, InvokeArgs, Output, TriggerArgs, TriggerCommand};
use crate::util::{client, ns_query, print_json, table};

/// `POST /v1/functions/{name}/invoke?async=true`; prints the id once the event is persisted.
pub async fn invoke_async(cli: &Cli, a: &InvokeArgs) -> Result<i32> {
    let client = client(cli);
    let body = match &a.data {
        Some(d) if d.starts_with('@') => std::fs::read(&d[1..]).with_context(|| format!("reading --data file {}", &d[1..]))?,
        Some(d) => d.clone().into_bytes(),
        None => Vec::new(),
    };
    let mut q = ns_query(cli.namespace.as_deref());
    q.push(("async", "true".into()));
    let mut rb = client.request(Method::POST, &format!("/v1/functions/{}/invoke", a.name)).query(&q).body(body);
    for h in &a.headers {
        let (k, v) = h.split_once(':').with_context(|| format!("--header `{h}` is not `Name: value`"))?;
        rb = rb.header(k.trim(), v.trim());
    }
    if let Some(k) = &a.idempotency_key {
        rb = rb.header(IDEMPOTENCY_KEY_HEADER, k);
    }
    let accepted: AsyncAccepted = client.json(rb).await?;
    match cli.output {
        Output::Json => print_json(&accepted)?,
        Output::Table if accepted.duplicate => println!("{} (already queued with this idempotency key; {})", accepted.id, accepted.state),
        Output::Table => println!("{}", accepted.id),
    }
    Ok(0)
}

pub async fn run(cli: &Cli, cmd: &AsyncCommand) -> Result<()> {
    let client = client(cli);
    match cmd {
        AsyncCommand::Ls { name, state, limit } => {
            crate::util::check_limit(*limit)?;
            let mut q = ns_query(cli.namespace.as_deref());
            q.push(("limit", limit.to_string()));
            if let Some(n) = name {
                q.push(("target", n.clone()));
            }
            if let Some(s) = state {
                q.push(("state", s.clone()));
            }
            let page: serde_json::Value = client.json(client.request(Method::GET, "/v1/async-invocations").query(&q)).await?;
            if cli.output == Output::Json {
                return print_json(&page);
            }
            let items: Vec<AsyncInvocation> = serde_json::from_value(page["items"].clone()).context("reading the listing")?;
            let mut t = table(&["ID", "TARGET", "STATE", "ACCEPTED", "ATTEMPTS", "ERROR"]);
            for i in &items {
                t.add_row(vec![
                    i.id.clone(),
                    format!("{} {}", i.kind, i.target),
                    i.state.to_string(),
                    i.accepted_at.clone(),
                    i.attempts.len().to_string(),
                    i.error.clone().unwrap_or_default(),
                ]);
            }
            println!("{t}");
        }
        AsyncCommand::Get { id } => {
            let i: AsyncInvocation =
                client.json(client.request(Method::GET, &format!("/v1/async-invocations/{id}")).query(&ns_query(cli.namespace.as_deref()))).await?;
            if cli.output == Output::Json {
                return print_json(&i);
            }
            println!("{} {} {}{} ({}), accepted {}", i.id, i.kind, i.target, i.path.as_deref().unwrap_or(""), i.state, i.accepted_at);
            if let Some(k) = &i.idempotency_key {
                println!("idempotency key: {k}");
            }
            if let Some(n) = &i.next_attempt_at {
                println!("next attempt: {n}");
            }
            if let Some(e) = &i.error {
                println!("error: {e}");
            }
            if let Some(d) = &i.destination_id {
                println!("sent to on_failure as {d}");
            }
            let mut t = table(&["#", "INVOCATION", "STARTED", "OUTCOME", "STATUS", "ERROR"]);
            for (n, a) in i.attempts.iter().enumerate() {
                t.add_row(vec![
                    (n + 1).to_string(),
                    a.invocation_id.clone().unwrap_or_default(),
                    hangar_api::rfc3339(a.started_ms),
                    a.outcome.to_string(),
                    a.status.to_string(),
                    a.error.clone().unwrap_or_default(),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

/// The trigger `a` describes, checked.
pub fn trigger_config(a: &TriggerArgs) -> Result<TriggerConfig> {
    let data = match &a.data {
        Some(d) => Some(serde_json::from_str(d).with_context(|| format!("--data `{d}` is not JSON"))?),
        None => None,
    };
    let c = TriggerConfig {
        cron: a.cron.clone(),
        timezone: a.timezone.clone(),
        topic: a.topic.clone(),
        function: a.function.clone(),
        service: a.service.clone(),
        path: a.path.clone(),
        data,
    };
    c.validate().map_err(|e| anyhow::anyhow!("invalid {e}"))?;
    hangar_api::validate::name("name", &a.name).map_err(|e| anyhow::anyhow!("invalid {e}"))?;
    Ok(c)
}

fn describe(t: &TriggerInfo) -> (String, String) {
    let c = &t.config;
    let source = match (&c.cron, &c.topic) {
        (Some(cron), _) => format!("cron {cron}{}", c.timezone.as_deref().map(|z| format!(" ({z})")).unwrap_or_default()),
        (None, Some(topic)) => format!("topic {topic}"),
        (None, None) => String::new(),
    };
    let target = match (&c.function, &c.service) {
        (Some(f), _) => format!("function {f}"),
        (None, Some(s)) => format!("service {s}{}", c.path.as_deref().unwrap_or("/")),
        (None, None) => String::new(),
    };
    (source, target)
}

pub async fn run_triggers(cli: &Cli, cmd: &TriggerCommand) -> Result<()> {
    let client = client(cli);
    let q = ns_query(cli.namespace.as_deref());
    match cmd {
        TriggerCommand::Ls => {
            let list: Vec<TriggerInfo> = client.json(client.request(Method::GET, "/v1/triggers").query(&q)).await?;
            if cli.output == Output::Json {
                return print_json(&list);
            }
            let mut t = table(&["NAME", "SOURCE", "TARGET", "LAST FIRED", "NEXT"]);
            for tr in &list {
                let (source, target) = describe(tr);
                t.add_row(vec![tr.name.clone(), source, target, tr.last_fired_at.clone().unwrap_or_default(), tr.next_fire_at.clone().unwrap_or_default()]);
            }
            println!("{t}");
        }
        TriggerCommand::Add(a) => {
            let config = trigger_config(a)?;
            let tr: TriggerInfo = client.json(client.request(Method::PUT, &format!("/v1/triggers/{}", a.name)).query(&q).json(&config)).await?;
            match cli.output {
                Output::Json => print_json(&tr)?,
                Output::Table => {
                    let (source, target) = describe(&tr);
                    println!("trigger {}: {source} → {target}{}", tr.name, tr.next_fire_at.map(|n| format!(", next at {n}")).unwrap_or_default());
                }
            }
        }
        TriggerCommand::Rm { name } => {
            client.send(client.request(Method::DELETE, &format!("/v1/triggers/{name}")).query(&q)).await?;
            if cli.output == Output::Table {
                println!("removed trigger {name}");
            }
        }
    }
    Ok(())
}

pub async fn run_events(cli: &Cli, cmd: &EventsCommand) -> Result<()> {
    let client = client(cli);
    let EventsCommand::Publish { topic, data, kind, source, id } = cmd;
    let body = match data.strip_prefix('@') {
        Some(f) => std::fs::read(f).with_context(|| format!("reading {f}"))?,
        None => data.clone().into_bytes(),
    };
    let json = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
    let mut rb = client
        .request(Method::POST, &format!("/v1/topics/{topic}/events"))
        .query(&ns_query(cli.namespace.as_deref()))
        .header("content-type", if json { "application/json" } else { "text/plain; charset=utf-8" })
        .body(body);
    for (h, v) in [("ce-type", kind), ("ce-source", source), ("ce-id", id)] {
        if let Some(v) = v {
            rb = rb.header(h, v);
        }
    }
    let p: Published = client.json(rb).await?;
    match cli.output {
        Output::Json => print_json(&p)?,
        Output::Table => {
            println!("event {} delivered to {} subscription(s)", p.id, p.deliveries.len());
            for d in &p.deliveries {
                println!("  {} → {} {} ({})", d.trigger, d.kind, d.target, d.id);
            }
        }
    }
    Ok(())
}
