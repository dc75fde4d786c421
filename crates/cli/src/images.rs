//! `hangar image ...`: import (a directory is sent as a tar), pull with progress bars, list,
//! show, remove.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use futures::StreamExt as _;
use hangar_api::images::{Image, PullEvent, PullRequest};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::Method;

use crate::args::{Cli, ImageCommand, Output};
use crate::client::Client;
use crate::util::{client, ns_query, print_json, table};

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>14} [{bar:30}] {bytes}/{total_bytes} {msg}")
        .map_or_else(|_| ProgressStyle::default_bar(), |s| s.progress_chars("=> "))
}

fn short(digest: &str) -> String {
    digest.strip_prefix("sha256:").unwrap_or(digest).chars().take(12).collect()
}

/// The file to upload: `path` itself, or a tar of it if it is a directory (an OCI layout).
fn archive(path: &Path) -> Result<(tempfile::TempPath, u64)> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let file = tempfile::NamedTempFile::new()?;
    if meta.is_dir() {
        let mut b = tar::Builder::new(file.reopen()?);
        b.follow_symlinks(false);
        b.append_dir_all(".", path).with_context(|| format!("packing `{}`", path.display()))?;
        b.into_inner()?.sync_all()?;
    } else {
        std::fs::copy(path, file.path()).with_context(|| format!("reading `{}`", path.display()))?;
    }
    let size = std::fs::metadata(file.path())?.len();
    Ok((file.into_temp_path(), size))
}

/// Imports `file` as `name` without printing (the manifest's `import`).
pub async fn import_quiet(client: &Client, namespace: Option<&str>, file: &Path, name: &str) -> Result<Vec<Image>> {
    upload(client, namespace, file, Some(name), ProgressBar::hidden()).await
}

async fn upload(client: &Client, namespace: Option<&str>, file: &Path, name: Option<&str>, bar: ProgressBar) -> Result<Vec<Image>> {
    let (tmp, size) = archive(file)?;
    bar.set_length(size);
    bar.set_style(bytes_style());
    bar.set_prefix("uploading");
    let f = tokio::fs::File::open(&tmp).await?;
    let progress = bar.clone();
    let body = tokio_util::io::ReaderStream::new(f).inspect(move |c| {
        if let Ok(c) = c {
            progress.inc(c.len() as u64);
        }
    });
    let mut query = ns_query(namespace);
    if let Some(n) = name {
        query.push(("name", n.to_string()));
    }
    let rb = client
        .request(Method::POST, "/v1/images/import")
        .query(&query)
        .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(body));
    let r: Result<Vec<Image>> = client.json(rb).await;
    bar.finish_and_clear();
    r
}

async fn import(cli: &Cli, client: &Client, file: &Path, name: Option<&str>) -> Result<()> {
    let bar = if cli.output == Output::Table { ProgressBar::new(0) } else { ProgressBar::hidden() };
    let images = upload(client, cli.namespace.as_deref(), file, name, bar).await?;
    match cli.output {
        Output::Json => print_json(&images)?,
        Output::Table => {
            for i in &images {
                println!("imported {} ({})", i.names.join(", "), short(&i.id));
            }
        }
    }
    Ok(())
}

async fn pull(cli: &Cli, client: &Client, reference: &str, username: Option<String>, password: Option<String>) -> Result<()> {
    let req = PullRequest { reference: reference.to_string(), username, password };
    let resp = client.send(client.request(Method::POST, "/v1/images/pull").query(&ns_query(cli.namespace.as_deref())).json(&req)).await?;
    let bars = if cli.output == Output::Table { MultiProgress::new() } else { MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()) };
    let mut layer_bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut done = None;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.context("the pull's progress stream broke")?);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let event: PullEvent =
                serde_json::from_slice(&line).context("the server's progress is not what this CLI expects; are the CLI and server the same version?")?;
            match event {
                PullEvent::Resolved { digest, layers, cached } => {
                    if cli.output == Output::Table {
                        let _ = bars.println(format!("{reference}: manifest {} ({} layers to fetch, {cached} already here)", short(&digest), layers.len()));
                    }
                    for (d, size) in layers {
                        let bar = bars.add(ProgressBar::new(size));
                        bar.set_style(bytes_style());
                        bar.set_prefix(short(&d));
                        layer_bars.insert(d, bar);
                    }
                }
                PullEvent::Layer { digest, received, total } => {
                    if let Some(b) = layer_bars.get(&digest) {
                        b.set_length(total.max(received));
                        b.set_position(received);
                        b.set_message("downloading");
                    }
                }
                PullEvent::Unpacked { digest } => {
                    if let Some(b) = layer_bars.get(&digest) {
                        b.set_message("verified, unpacked");
                        b.finish();
                    }
                }
                PullEvent::Done { image } => done = Some(image),
                PullEvent::Error { code, message } => {
                    let _ = bars.clear();
                    bail!(crate::client::Failure::Api { status: reqwest::StatusCode::BAD_GATEWAY, code, message });
                }
            }
        }
    }
    let Some(image) = done else { bail!("the pull ended without a result; see the server's log") };
    match cli.output {
        Output::Json => print_json(&image)?,
        Output::Table => println!("pulled {} ({})", image.names.join(", "), short(&image.id)),
    }
    Ok(())
}

fn rows(images: &[Image]) -> comfy_table::Table {
    let mut t = table(&["NAME", "ID", "SIZE", "LAYERS", "ADDED"]);
    for i in images {
        let names = if i.names.is_empty() { "<none>".to_string() } else { i.names.join("\n") };
        t.add_row(vec![names, short(&i.id), format!("{:.1} MB", i.size as f64 / 1e6), i.layers.to_string(), i.added_at.clone()]);
    }
    t
}

pub async fn run(cli: &Cli, cmd: &ImageCommand) -> Result<()> {
    let client = client(cli);
    let ns = ns_query(cli.namespace.as_deref());
    match cmd {
        ImageCommand::Import { file, name } => import(cli, &client, file, name.as_deref()).await?,
        ImageCommand::Pull { reference, username, password } => pull(cli, &client, reference, username.clone(), password.clone()).await?,
        ImageCommand::Ls => {
            let list: Vec<Image> = client.json(client.request(Method::GET, "/v1/images").query(&ns)).await?;
            match cli.output {
                Output::Json => print_json(&list)?,
                Output::Table if list.is_empty() => println!("no images; add one with `hangar image import FILE` or `hangar image pull REF`"),
                Output::Table => println!("{}", rows(&list)),
            }
        }
        ImageCommand::Get { reference } => {
            let i: Image = client.json(client.request(Method::GET, &format!("/v1/images/{reference}")).query(&ns)).await?;
            match cli.output {
                Output::Json => print_json(&i)?,
                Output::Table => {
                    println!("{}", rows(std::slice::from_ref(&i)));
                    println!("id: {}\nplatform: {}/{}", i.id, i.os, i.architecture);
                    println!("entrypoint: {:?}  cmd: {:?}", i.entrypoint, i.cmd);
                    if !i.working_dir.is_empty() || !i.user.is_empty() {
                        println!("workdir: {}  user: {}", i.working_dir, i.user);
                    }
                    if !i.exposed_ports.is_empty() {
                        println!("ports: {:?}", i.exposed_ports);
                    }
                }
            }
        }
        ImageCommand::Rm { reference } => {
            client.send(client.request(Method::DELETE, &format!("/v1/images/{reference}")).query(&ns)).await?;
            if cli.output == Output::Table {
                println!("removed {reference}");
            }
        }
    }
    Ok(())
}
