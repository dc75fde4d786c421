//! `hangar logs -q TEXT [--kind K] [NAME] [-f]`: the log search across functions and services,
//! and its live tail (server-sent events).

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use hangar_api::logs::{LogLine, LogList};
use reqwest::Method;

use crate::args::{Cli, Output};
use crate::util::client;

fn show(cli: &Cli, l: &LogLine) -> Result<()> {
    if cli.output == Output::Json {
        println!("{}", serde_json::to_string(l)?);
        return Ok(());
    }
    let by = match (&l.invocation_id, &l.instance) {
        (Some(id), _) => id.get(..8).unwrap_or(id).to_string(),
        (None, Some(instance)) => instance.clone(),
        (None, None) => "-".into(),
    };
    println!("{}  {} {}  {by}  {}", l.time, l.kind, l.workload, l.line);
    Ok(())
}

pub async fn search(cli: &Cli, name: Option<&str>, query: Option<&str>, kind: Option<&str>, since: Option<&str>, limit: u32, follow: bool) -> Result<()> {
    let client = client(cli);
    let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
    for (k, v) in [("namespace", cli.namespace.as_deref()), ("workload", name), ("q", query), ("kind", kind), ("since", since)] {
        if let Some(v) = v {
            q.push((k, v.to_string()));
        }
    }
    let list: LogList = client.json(client.request(Method::GET, "/v1/logs").query(&q)).await?;
    // Oldest first on a terminal, as logs read.
    for l in list.items.iter().rev() {
        show(cli, l)?;
    }
    if !follow {
        return Ok(());
    }
    q.retain(|(k, _)| *k != "since" && *k != "limit");
    q.push(("follow", "true".into()));
    let resp = client.send(client.request(Method::GET, "/v1/logs").query(&q)).await?;
    let mut body = resp.bytes_stream();
    let mut pending = String::new();
    while let Some(chunk) = body.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk.context("reading the server's events")?));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                show(cli, &serde_json::from_str(data).context("an event that is not a log line")?)?;
            }
        }
    }
    Ok(())
}
