//! `hangar ns` and `hangar key`: namespaces and the keys that reach them (admin).

use anyhow::{Context, Result};
use hangar_api::{CreateKey, CreateNamespace, CreatedKey, KeyList, Namespace, NamespaceList};
use reqwest::Method;

use crate::args::{Cli, KeyCommand, NsCommand, Output};
use crate::util::{client, delete, print_json, table};

pub async fn run_ns(cli: &Cli, cmd: &NsCommand) -> Result<()> {
    let client = client(cli);
    match cmd {
        NsCommand::Create { name, max_concurrency } => {
            hangar_api::validate::name("name", name).map_err(|e| anyhow::anyhow!("invalid {e}"))?;
            let body = CreateNamespace { name: name.clone(), max_concurrency: *max_concurrency };
            let n: Namespace = client.json(client.request(Method::POST, "/v1/namespaces").json(&body)).await?;
            match cli.output {
                Output::Json => print_json(&n)?,
                Output::Table => println!("created namespace {}", n.name),
            }
        }
        NsCommand::Ls => {
            let l: NamespaceList = client.json(client.request(Method::GET, "/v1/namespaces")).await?;
            match cli.output {
                Output::Json => print_json(&l)?,
                Output::Table => {
                    let mut t = table(&["NAME", "CREATED", "MAX CONCURRENCY"]);
                    for n in &l.items {
                        t.add_row(vec![n.name.clone(), n.created_at.clone(), n.max_concurrency.map_or("server default".to_string(), |m| m.to_string())]);
                    }
                    println!("{t}");
                }
            }
        }
        NsCommand::Rm { name } => {
            delete(cli, &client, client.request(Method::DELETE, &format!("/v1/namespaces/{name}")), &format!("namespace {name}")).await?;
        }
        NsCommand::Set { name, max_concurrency } => {
            let limit = match max_concurrency.as_str() {
                "default" => None,
                n => Some(n.parse::<u32>().with_context(|| format!("--max-concurrency `{n}` is not a number or `default`"))?),
            };
            let n: Namespace = client
                .json(client.request(Method::PATCH, &format!("/v1/namespaces/{name}")).json(&hangar_api::NamespaceLimits { max_concurrency: limit }))
                .await?;
            match cli.output {
                Output::Json => print_json(&n)?,
                Output::Table => {
                    println!("namespace {}: max concurrency {}", n.name, n.max_concurrency.map_or("server default".to_string(), |m| m.to_string()))
                }
            }
        }
    }
    Ok(())
}

pub async fn run_key(cli: &Cli, cmd: &KeyCommand) -> Result<()> {
    let client = client(cli);
    match cmd {
        KeyCommand::Create { namespace, name } => {
            let body = CreateKey { namespace: namespace.clone().or_else(|| cli.namespace.clone()), name: name.clone() };
            let k: CreatedKey = client.json(client.request(Method::POST, "/v1/keys").json(&body)).await?;
            match cli.output {
                Output::Json => print_json(&k)?,
                Output::Table => {
                    let scope = k.key.namespace.as_deref().map(|n| format!("namespace {n}")).unwrap_or_else(|| "admin".into());
                    println!("created key {} ({scope}); its secret is shown only now:\n{}", k.key.id, k.secret);
                }
            }
        }
        KeyCommand::Ls => {
            let l: KeyList = client.json(client.request(Method::GET, "/v1/keys")).await?;
            match cli.output {
                Output::Json => print_json(&l)?,
                Output::Table => {
                    let mut t = table(&["ID", "NAMESPACE", "NAME", "CREATED"]);
                    for k in &l.items {
                        t.add_row(vec![
                            k.id.clone(),
                            k.namespace.clone().unwrap_or_else(|| "(admin)".into()),
                            k.name.clone().unwrap_or_default(),
                            k.created_at.clone(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        KeyCommand::Rm { id } => {
            delete(cli, &client, client.request(Method::DELETE, &format!("/v1/keys/{id}")), &format!("key {id}")).await?;
        }
    }
    Ok(())
}
