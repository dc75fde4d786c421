//! What every command group shares: where the server is, the client, output helpers.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde::Serialize;

use crate::args::{Cli, Output};
use crate::client::Client;

/// Where the local server keeps its data.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(d) = flag {
        return d;
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("hangar")
}

pub fn client(cli: &Cli) -> Client {
    let dir = data_dir(cli.data_dir.clone());
    let url = cli
        .url
        .clone()
        .or_else(|| std::fs::read_to_string(dir.join("hangar.url")).ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let key = cli.key.clone().or_else(|| std::fs::read_to_string(dir.join("admin.key")).ok().map(|s| s.trim().to_string()));
    Client::new(url, key)
}

/// `--env K=V` flags as a map.
pub fn env_flags(flags: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    flags
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').with_context(|| format!("--env `{kv}` is not K=V"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn ns_query(ns: Option<&str>) -> Vec<(&'static str, String)> {
    ns.map(|n| vec![("namespace", n.to_string())]).unwrap_or_default()
}

pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.iter().copied());
    t
}

/// Sends a DELETE and, for people, says what is gone.
pub async fn delete(cli: &Cli, client: &Client, request: reqwest::RequestBuilder, what: &str) -> Result<()> {
    client.send(request).await?;
    if cli.output == Output::Table {
        println!("deleted {what}");
    }
    Ok(())
}

pub fn check_limit(limit: u32) -> Result<()> {
    if !(1..=1000).contains(&limit) {
        bail!("--limit {limit} is out of range; choose 1 to 1000");
    }
    Ok(())
}
