//! `hangar sandbox ...`: create, list, show, remove, pause, resume, standby, exec (output
//! streamed, exit code passed on; `-t` on a terminal, see `terminal`) and cp (files in and out).

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use hangar_api::sandboxes::{ExecFrame, ExecRequest, FileEntry, Sandbox, SandboxConfig, SandboxList, TtyRequest};
use reqwest::Method;

use crate::args::{Cli, Output, SandboxCommand};
use crate::util::{client, env_flags, ns_query, print_json, table};

fn seconds(flag: &str, value: &Option<String>) -> Result<Option<u64>> {
    value
        .as_ref()
        .map(|v| humantime::parse_duration(v).map(|d| d.as_secs().max(1)).with_context(|| format!("{flag} `{v}` is not a duration like 30s or 1h")))
        .transpose()
}

fn show(sb: &Sandbox) {
    println!("{} ({}) in {}: {} since {}", sb.id, sb.config.image, sb.namespace, sb.state, hangar_api::rfc3339(sb.state_since_ms));
    let used = sb.disk_bytes.map(|b| format!(" ({:.1} MiB written)", b as f64 / f64::from(1 << 20))).unwrap_or_default();
    println!("memory {} MiB, cpus {}, disk {} MiB{used}", sb.config.memory_mb, sb.config.cpus, sb.config.disk_mb);
    if let Some(b) = sb.standby_bytes {
        println!("standby image: {b} bytes");
    }
    let t = &sb.timings;
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    println!("took: create {}, pause {}, standby {}, resume {}", f(t.create_ms), f(t.pause_ms), f(t.standby_ms), f(t.resume_ms));
    let u = &sb.usage;
    println!("usage: running {} ms, paused {} ms, standby {} ms", u.running_ms, u.paused_ms, u.standby_ms);
    if let Some(e) = &sb.error {
        println!("error: {e}");
    }
}

/// Runs a sandbox command; returns the process's exit code.
pub async fn run(cli: &Cli, cmd: &SandboxCommand) -> Result<i32> {
    let client = client(cli);
    let q = ns_query(cli.namespace.as_deref());
    let path = |id: &str, rest: &str| format!("/v1/sandboxes/{id}{rest}");
    match cmd {
        SandboxCommand::Create { image, memory, cpus, disk, env, ttl, pause_after, standby_after, allow } => {
            let mut c = SandboxConfig::new(image.clone());
            if let Some(m) = memory {
                c.memory_mb = *m;
            }
            if let Some(x) = cpus {
                c.cpus = *x;
            }
            if let Some(d) = disk {
                c.disk_mb = *d;
            }
            c.env = env_flags(env)?;
            c.ttl_s = seconds("--ttl", ttl)?;
            c.idle.pause_after_s = seconds("--pause-after", pause_after)?;
            c.idle.standby_after_s = seconds("--standby-after", standby_after)?;
            c.network.allow = allow.clone();
            let sb: Sandbox = client.json(client.request(Method::POST, "/v1/sandboxes").query(&q).json(&c)).await?;
            match cli.output {
                Output::Json => print_json(&sb)?,
                Output::Table => println!("{}", sb.id),
            }
        }
        SandboxCommand::Ls => {
            let list: SandboxList = client.json(client.request(Method::GET, "/v1/sandboxes").query(&q)).await?;
            if cli.output == Output::Json {
                print_json(&list)?;
                return Ok(0);
            }
            let mut t = table(&["ID", "IMAGE", "STATE", "SINCE", "MEMORY", "STANDBY BYTES"]);
            for s in &list.items {
                t.add_row(vec![
                    s.id.clone(),
                    s.config.image.clone(),
                    s.state.to_string(),
                    hangar_api::rfc3339(s.state_since_ms),
                    format!("{} MiB", s.config.memory_mb),
                    s.standby_bytes.map(|b| b.to_string()).unwrap_or_default(),
                ]);
            }
            println!("{t}");
        }
        SandboxCommand::Get { id } => {
            let sb: Sandbox = client.json(client.request(Method::GET, &path(id, "")).query(&q)).await?;
            match cli.output {
                Output::Json => print_json(&sb)?,
                Output::Table => show(&sb),
            }
        }
        SandboxCommand::Rm { id } => {
            client.send(client.request(Method::DELETE, &path(id, "")).query(&q)).await?;
            println!("removed {id}");
        }
        SandboxCommand::Pause { id } | SandboxCommand::Resume { id } | SandboxCommand::Standby { id } => {
            let action = match cmd {
                SandboxCommand::Pause { .. } => "pause",
                SandboxCommand::Resume { .. } => "resume",
                _ => "standby",
            };
            let sb: Sandbox = client.json(client.request(Method::POST, &path(id, &format!("/{action}"))).query(&q)).await?;
            match cli.output {
                Output::Json => print_json(&sb)?,
                Output::Table => println!("{} is {}", sb.id, sb.state),
            }
        }
        SandboxCommand::Exec { id, tty: true, env, cwd, timeout, user, cmd } => {
            if timeout.is_some() || user.is_some() {
                bail!("--timeout and --user apply to commands without a terminal; leave them out with -t");
            }
            let query = if q.is_empty() { String::new() } else { format!("?namespace={}", q[0].1) };
            let req = TtyRequest { cmd: cmd.clone(), env: env_flags(env)?, cwd: cwd.clone(), cols: 80, rows: 24 };
            return crate::terminal::run(&client, &format!("{}{query}", path(id, "/tty")), req).await;
        }
        SandboxCommand::Exec { id, tty: false, env, cwd, timeout, user, cmd } => {
            let stdin = if std::io::stdin().is_terminal() {
                None
            } else {
                let mut buf = Vec::new();
                std::io::stdin().take(hangar_api::sandboxes::MAX_EXEC_STDIN_BYTES as u64 + 1).read_to_end(&mut buf).context("reading stdin")?;
                Some(String::from_utf8(buf).context("stdin for a sandbox command must be UTF-8 text")?)
            };
            let req =
                ExecRequest { cmd: cmd.clone(), env: env_flags(env)?, cwd: cwd.clone(), stdin, timeout_s: seconds("--timeout", timeout)?, user: user.clone() };
            let resp = client.send(client.request(Method::POST, &path(id, "/exec")).query(&q).json(&req)).await?;
            let mut body = resp.bytes_stream();
            let mut pending: Vec<u8> = Vec::new();
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            while let Some(chunk) = body.next().await {
                pending.extend_from_slice(&chunk.context("reading the command's output")?);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    match serde_json::from_slice::<ExecFrame>(&line).context("reading the command's output")? {
                        ExecFrame::Stdout(s) => {
                            out.write_all(s.as_bytes())?;
                            out.flush()?;
                        }
                        ExecFrame::Stderr(s) => {
                            err.write_all(s.as_bytes())?;
                            err.flush()?;
                        }
                        ExecFrame::ExitCode(code) => return Ok(code),
                        ExecFrame::Error(e) => bail!("the command could not be followed to its end: {e}"),
                    }
                }
            }
            bail!("the server ended the output without an exit code");
        }
        SandboxCommand::Cp { from, to } => {
            let remote = |s: &str| s.split_once(':').filter(|(id, p)| id.starts_with("sb-") && p.starts_with('/')).map(|(a, b)| (a.to_string(), b.to_string()));
            match (remote(from), to.as_deref().map(remote)) {
                (Some((id, p)), None) => {
                    let resp = client.send(client.request(Method::GET, &path(&id, "/files")).query(&q).query(&[("path", &p)])).await?;
                    let is_json = resp.headers().get(reqwest::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
                    if !is_json {
                        bail!("{id}:{p} is a file; give where to copy it (`-` for stdout)");
                    }
                    let entries: Vec<FileEntry> = resp.json().await.context("reading the listing")?;
                    if cli.output == Output::Json {
                        print_json(&entries)?;
                        return Ok(0);
                    }
                    let mut t = table(&["NAME", "KIND", "SIZE", "MODE", "MODIFIED"]);
                    for e in &entries {
                        t.add_row(vec![e.name.clone(), e.kind.clone(), e.size.to_string(), format!("{:o}", e.mode), hangar_api::rfc3339(e.modified_s * 1000)]);
                    }
                    println!("{t}");
                }
                (Some((id, p)), Some(None)) => {
                    let local = to.clone().unwrap_or_default();
                    let resp = client.send(client.request(Method::GET, &path(&id, "/files")).query(&q).query(&[("path", &p)])).await?;
                    if resp.headers().get(reqwest::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json")) {
                        bail!("{id}:{p} is a directory; copy its files one by one, or list it with `hangar sandbox cp {id}:{p}`");
                    }
                    let mut sink: Box<dyn Write> = if local == "-" {
                        Box::new(std::io::stdout())
                    } else {
                        Box::new(std::fs::File::create(&local).with_context(|| format!("creating {local}"))?)
                    };
                    let mut body = resp.bytes_stream();
                    while let Some(chunk) = body.next().await {
                        sink.write_all(&chunk.context("reading the file")?)?;
                    }
                    sink.flush()?;
                }
                (None, Some(Some((id, p)))) => {
                    let bytes = if from == "-" {
                        let mut b = Vec::new();
                        std::io::stdin().read_to_end(&mut b).context("reading stdin")?;
                        b
                    } else {
                        std::fs::read(from).with_context(|| format!("reading {from}"))?
                    };
                    let n = bytes.len();
                    client.send(client.request(Method::PUT, &path(&id, "/files")).query(&q).query(&[("path", &p)]).body(bytes)).await?;
                    if cli.output == Output::Table {
                        println!("copied {n} bytes to {id}:{p}");
                    }
                }
                _ => bail!("give one side as SANDBOX:/absolute/path (e.g. `hangar sandbox cp notes.txt sb-1234abcd5678:/tmp/notes.txt`)"),
            }
        }
    }
    Ok(0)
}
