//! `hangar svc ...`: deploy (waits for the rollout), list, show with instances, remove, logs.

use anyhow::{Context, Result};
use futures::StreamExt as _;
use hangar_api::services::{ContainerRuntime, Service, ServiceConfig, ServiceDeployed};
use reqwest::Method;

use crate::args::{Cli, Output, SvcCommand, SvcDeployArgs};
use crate::util::{client, ns_query, print_json, table};

fn config(a: &SvcDeployArgs) -> Result<ServiceConfig> {
    let mut c = ServiceConfig::new(a.image.clone());
    c.port = a.port;
    c.min_instances = a.min;
    c.max_instances = a.max.unwrap_or(a.min.max(1));
    if let Some(n) = a.concurrency {
        c.concurrency = n;
    }
    if let Some(w) = &a.scale_window {
        c.scale_window_ms = humantime::parse_duration(w).with_context(|| format!("--scale-window `{w}` is not a duration like 60s"))?.as_millis() as u64;
    }
    c.env.extend(crate::util::env_flags(&a.env)?);
    c.volumes = a.volumes.clone();
    c.runtime = match a.runtime.as_str() {
        "runc" => ContainerRuntime::Runc,
        "gvisor" | "runsc" => ContainerRuntime::Gvisor,
        other => anyhow::bail!("--runtime `{other}`: use runc or gvisor"),
    };
    if let Some(m) = a.memory {
        c.memory_mb = m;
    }
    if let Some(n) = a.cpus {
        c.cpus = n;
    }
    c.readiness.path = a.readiness_path.clone();
    c.command = (!a.command.is_empty()).then(|| a.command.clone());
    c.args = (!a.args.is_empty()).then(|| a.args.clone());
    c.public = a.public;
    c.hosts = a.hosts.clone();
    c.egress = !a.no_egress;
    if a.mode.as_deref() == Some("auto") {
        c.mode = hangar_api::FunctionMode::Auto;
    }
    c.validate().map_err(|e| anyhow::anyhow!("invalid {e}"))?;
    hangar_api::validate::name("name", &a.name).map_err(|e| anyhow::anyhow!("invalid {e}"))?;
    Ok(c)
}

fn rows(list: &[Service]) -> comfy_table::Table {
    let mut t = table(&["NAME", "NAMESPACE", "REVISION", "IMAGE", "READY", "URL"]);
    for s in list {
        let ready = s.instances.iter().filter(|i| i.state == hangar_api::services::InstanceState::Ready).count();
        t.add_row(vec![
            s.name.clone(),
            s.namespace.clone(),
            s.revision.to_string(),
            s.config.image.clone(),
            format!("{ready}/{}", s.config.min_instances),
            s.url_path.clone(),
        ]);
    }
    t
}

pub async fn run(cli: &Cli, cmd: &SvcCommand) -> Result<()> {
    let client = client(cli);
    let ns = ns_query(cli.namespace.as_deref());
    match cmd {
        SvcCommand::Deploy(a) => {
            let c = config(a)?;
            let r: ServiceDeployed = client.json(client.request(Method::PUT, &format!("/v1/services/{}", a.name)).query(&ns).json(&c)).await?;
            match cli.output {
                Output::Json => print_json(&r)?,
                Output::Table => {
                    let v = &r.service;
                    let ready = v.instances.iter().filter(|i| i.state == hangar_api::services::InstanceState::Ready).count();
                    println!("{} {}/{} revision {} ({ready} instance(s) ready)", r.status, v.namespace, v.name, v.revision);
                    match v.urls.is_empty() {
                        true => println!("URL: {}{}", client.base, v.url_path),
                        false => v.urls.iter().for_each(|u| println!("URL: {u}")),
                    }
                }
            }
        }
        SvcCommand::Ls => {
            let list: Vec<Service> = client.json(client.request(Method::GET, "/v1/services").query(&ns)).await?;
            match cli.output {
                Output::Json => print_json(&list)?,
                Output::Table if list.is_empty() => println!("no services; deploy one with `hangar svc deploy NAME --image REF`"),
                Output::Table => println!("{}", rows(&list)),
            }
        }
        SvcCommand::Get { name } => {
            let s: Service = client.json(client.request(Method::GET, &format!("/v1/services/{name}")).query(&ns)).await?;
            match cli.output {
                Output::Json => print_json(&s)?,
                Output::Table => {
                    println!("{}", rows(std::slice::from_ref(&s)));
                    for u in &s.urls {
                        println!("url: {u}");
                    }
                    let mut t = table(&["INSTANCE", "REVISION", "STATE", "ADDRESS", "RESTARTS", "STARTED"]);
                    for i in &s.instances {
                        t.add_row(vec![
                            i.id.clone(),
                            i.revision.to_string(),
                            serde_json::to_value(i.state)?.as_str().unwrap_or("").to_string(),
                            i.address.clone(),
                            i.restarts.to_string(),
                            i.started_at.clone(),
                        ]);
                    }
                    println!("{t}");
                    for i in s.instances.iter().filter(|i| i.last_exit.is_some()) {
                        println!("{}: {}", i.id, i.last_exit.as_deref().unwrap_or(""));
                    }
                }
            }
        }
        SvcCommand::Switches { name } => {
            let list: hangar_api::ModeSwitchList = client.json(client.request(Method::GET, &format!("/v1/services/{name}/switches")).query(&ns)).await?;
            match cli.output {
                Output::Json => print_json(&list)?,
                Output::Table if list.items.is_empty() => println!("no switches yet (only services deployed with --mode auto are switched)"),
                Output::Table => {
                    let mut t = table(&["AT", "REVISION", "MIN INSTANCES", "REASON"]);
                    for s in &list.items {
                        t.add_row(vec![s.at.clone(), s.revision.to_string(), format!("{} → {}", s.from_warm, s.to_warm), s.reason.clone()]);
                    }
                    println!("{t}");
                }
            }
        }
        SvcCommand::Rm { name } => {
            client.send(client.request(Method::DELETE, &format!("/v1/services/{name}")).query(&ns)).await?;
            if cli.output == Output::Table {
                println!("deleted {name}");
            }
        }
        SvcCommand::Logs { name, follow } => {
            let mut q = ns.clone();
            if *follow {
                q.push(("follow", "true".into()));
            }
            let resp = client.send(client.request(Method::GET, &format!("/v1/services/{name}/logs")).query(&q)).await?;
            let mut stream = resp.bytes_stream();
            use std::io::Write as _;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.context("the log stream broke")?;
                std::io::stdout().write_all(&chunk)?;
                std::io::stdout().flush()?;
            }
        }
    }
    Ok(())
}
