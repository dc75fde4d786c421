//! `hangar invoke --async` and `hangar async ...`: queue events, list them, show their attempts.

use anyhow::{Context, Result};
use hangar_api::events::{AsyncAccepted, AsyncInvocation, IDEMPOTENCY_KEY_HEADER};
use reqwest::Method;

use crate::cli::{AsyncCommand, Cli, InvokeArgs, Output, client, ns_query, print_json, table};

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
            crate::cli::check_limit(*limit)?;
            let mut q = ns_query(cli.namespace.as_deref());
            q.push(("limit", limit.to_string()));
            if let Some(n) = name {
                q.push(("function", n.clone()));
            }
            if let Some(s) = state {
                q.push(("state", s.clone()));
            }
            let page: serde_json::Value = client.json(client.request(Method::GET, "/v1/async-invocations").query(&q)).await?;
            if cli.output == Output::Json {
                return print_json(&page);
            }
            let items: Vec<AsyncInvocation> = serde_json::from_value(page["items"].clone()).context("reading the listing")?;
            let mut t = table(&["ID", "FUNCTION", "STATE", "ACCEPTED", "ATTEMPTS", "ERROR"]);
            for i in &items {
                t.add_row(vec![
                    i.id.clone(),
                    i.function.clone(),
                    i.state.to_string(),
                    i.accepted_at.clone(),
                    i.attempts.len().to_string(),
                    i.error.clone().unwrap_or_default(),
                ]);
            }
            println!("{t}");
        }
        AsyncCommand::Get { id } => {
            let i: AsyncInvocation = client.json(client.request(Method::GET, &format!("/v1/async-invocations/{id}")).query(&ns_query(cli.namespace.as_deref()))).await?;
            if cli.output == Output::Json {
                return print_json(&i);
            }
            println!("{} {} ({}), accepted {}", i.id, i.function, i.state, i.accepted_at);
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
                    a.invocation_id.clone(),
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
