//! Command-line interface: argument definitions and the commands that talk to the API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use hangar_api::{
    CreateKey, CreateNamespace, CreatedKey, DeployResponse, Function, FunctionConfig, FunctionList, InvocationPage, KeyList, Namespace, NamespaceList,
    RuntimeKind,
};
use reqwest::Method;
use serde::Serialize;

use crate::client::{Client, Failure};

#[derive(Debug, Parser)]
#[command(name = "hangar", version, about = "Functions, services and sandboxes from one binary")]
pub struct Cli {
    /// URL of the Hangar server [default: the URL the local server wrote into the data dir, else http://127.0.0.1:7070]
    #[arg(long, env = "HANGAR_URL", global = true)]
    pub url: Option<String>,
    /// API key [default: <data-dir>/admin.key]
    #[arg(long, env = "HANGAR_KEY", global = true, hide_env_values = true)]
    pub key: Option<String>,
    /// Data directory of the local server
    #[arg(long, env = "HANGAR_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Namespace to act in [default: the key's own, or `default` for admin keys]
    #[arg(long, short = 'n', env = "HANGAR_NAMESPACE", global = true)]
    pub namespace: Option<String>,
    /// How to print results
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the platform (API, gateway, runtimes) on embedded defaults
    Up(UpArgs),
    /// Manage functions
    #[command(subcommand, name = "fn")]
    Function(FnCommand),
    /// Call a function through its URL and print the response body
    Invoke(InvokeArgs),
    /// Show the logs of a function's invocations
    Logs {
        name: String,
        /// Keep printing new invocations as they happen
        #[arg(short, long)]
        follow: bool,
        /// How many recent invocations to show first
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List invocation records
    Invocations {
        /// Only this function
        name: Option<String>,
        /// Only this outcome (ok, error, timeout, out_of_memory, throttled)
        #[arg(long)]
        status: Option<String>,
        /// Only since this RFC 3339 time or this long ago (e.g. 1h)
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Apply a hangar.toml manifest (create, update, or leave unchanged)
    Deploy {
        #[arg(short = 'f', long = "file", default_value = "hangar.toml")]
        file: PathBuf,
    },
    /// Manage services: long-running containers from images
    #[command(subcommand, name = "svc")]
    Service(SvcCommand),
    /// Show asynchronous invocations (`hangar invoke --async`) and the dead-letter list
    #[command(subcommand, name = "async")]
    Async(AsyncCommand),
    /// Manage triggers: cron schedules and topic subscriptions
    #[command(subcommand, name = "triggers")]
    Triggers(TriggerCommand),
    /// Publish events to topics
    #[command(subcommand, name = "events")]
    Events(EventsCommand),
    /// Manage sandboxes: gVisor machines for untrusted code (exec, files, pause, standby)
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Manage container images (import, pull, list, remove)
    #[command(subcommand)]
    Image(ImageCommand),
    /// What workloads used, per hour or day: requests, GB-seconds, vCPU-seconds, instance time
    Usage(UsageArgs),
    /// Which model each function and service should run on (function, provisioned, service or
    /// sandbox), and why
    Advise(AdviseArgs),
    /// Price sheets the cost calculator uses (built in, and yours in <data-dir>/prices/*.toml)
    #[command(subcommand)]
    Prices(PricesCommand),
    /// What a workload costs as a function, with provisioned instances, or as a service
    #[command(subcommand)]
    Cost(CostCommand),
    /// Manage namespaces (admin)
    #[command(subcommand, name = "ns")]
    Namespace(NsCommand),
    /// Manage API keys (admin)
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address to serve on
    #[arg(long, env = "HANGAR_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
    /// Apply this manifest once the server is ready
    #[arg(long)]
    pub apply: Option<PathBuf>,
    /// Largest code upload in bytes
    #[arg(long, default_value_t = hangar_api::DEFAULT_MAX_CODE_BYTES)]
    pub max_code_bytes: usize,
    /// Largest invocation request body in bytes
    #[arg(long, default_value_t = hangar_api::DEFAULT_MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,
    /// Largest image archive accepted by `hangar image import`, in bytes
    #[arg(long, default_value_t = hangar_gateway::DEFAULT_MAX_IMAGE_BYTES)]
    pub max_image_bytes: u64,
    /// Logs kept per invocation in bytes
    #[arg(long, default_value_t = hangar_api::DEFAULT_MAX_LOG_BYTES)]
    pub max_log_bytes: usize,
    /// WebAssembly instances that may run at once
    #[arg(long, default_value_t = 1000)]
    pub pool_instances: u32,
    /// How long an idle instance of a process function stays warm before it is stopped
    #[arg(long, env = "HANGAR_KEEP_ALIVE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub keep_alive: std::time::Duration,
    /// How long an idle instance of a process function runs before it is paused (cgroup
    /// freezer: no CPU, memory kept; resumed by the next invocation); 0s never pauses
    #[arg(long, env = "HANGAR_PAUSE_AFTER", default_value = "1s", value_parser = humantime::parse_duration)]
    pub pause_after: std::time::Duration,
    /// Prewarmed zygotes kept ready per process runtime (python3, nodejs, provided): a new
    /// function or revision takes one instead of starting its runtime (0..=16)
    #[arg(long, env = "HANGAR_PREWARM", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub prewarm: u32,
    /// How often the reconcile loop removes what the server owns but no service instance wants
    #[arg(long, env = "HANGAR_RECONCILE_EVERY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub reconcile_every: std::time::Duration,
    /// The AWS_REGION process functions see
    #[arg(long, env = "HANGAR_REGION", default_value = "local")]
    pub region: String,
    /// Most attempts of asynchronous invocations running at once (1..=4096)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub async_concurrency: u32,
    /// Most unfinished asynchronous events the server holds; more are refused (429 with
    /// Retry-After) until some finish
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub async_queue_events: u32,
    /// Most MiB of payload the unfinished asynchronous events hold (in memory); more are
    /// refused (429 with Retry-After) until some finish
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub async_queue_mb: u32,
    /// Most invocations running at once in one namespace; more are throttled (429 with Retry-After)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub namespace_concurrency: u32,
    /// Meter usage (`hangar usage`, `hangar advise`); `off` keeps invocation records only
    #[arg(long, env = "HANGAR_METERING", default_value = "on", value_parser = ["on", "off"])]
    pub metering: String,
    /// How often services and sandboxes are metered (functions are metered per invocation)
    #[arg(long, env = "HANGAR_METER_EVERY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub meter_every: std::time::Duration,
    /// How often adaptive mode looks at functions deployed with `--mode auto`
    #[arg(long, env = "HANGAR_ADAPT_EVERY", default_value = "1m", value_parser = humantime::parse_duration)]
    pub adapt_every: std::time::Duration,
    /// How much of a function's recent traffic adaptive mode looks at
    #[arg(long, env = "HANGAR_ADAPT_WINDOW", default_value = "15m", value_parser = humantime::parse_duration)]
    pub adapt_window: std::time::Duration,
    /// How long hourly usage rows are kept (`hangar usage`)
    #[arg(long, env = "HANGAR_USAGE_RETENTION", default_value = "90d", value_parser = humantime::parse_duration)]
    pub usage_retention: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum SvcCommand {
    /// Create or update a service; waits until the new revision is ready (rolling update)
    Deploy(Box<SvcDeployArgs>),
    /// List services
    Ls,
    /// Show a service and its instances
    Get { name: String },
    /// Changes adaptive mode (`--mode auto`) made to a service's minimum instances, with reasons
    Switches { name: String },
    /// Stop a service and delete it (its volumes stay)
    Rm { name: String },
    /// Print a service's output, each line prefixed with its instance
    Logs {
        name: String,
        /// Keep printing new lines
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Debug, Args)]
pub struct SvcDeployArgs {
    pub name: String,
    /// Image reference or id (`hangar image ls`)
    #[arg(long)]
    pub image: String,
    /// Port the container listens on (sets PORT) [default: the image's exposed port, else 8080]
    #[arg(long)]
    pub port: Option<u16>,
    /// Instances always running; 0 scales to zero when idle
    #[arg(long, default_value_t = 1)]
    pub min: u32,
    /// Most instances; the autoscaler moves between --min and --max [default: --min, at least 1]
    #[arg(long)]
    pub max: Option<u32>,
    /// Requests in flight per instance the autoscaler aims at [default: 80]
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// The autoscaler's stable window, e.g. 60s: it scales down (and to zero) only on this long an average [default: 60s]
    #[arg(long)]
    pub scale_window: Option<String>,
    /// Environment variable K=V (repeatable)
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Named volume NAME:/path (repeatable); survives restarts and redeploys
    #[arg(long = "volume", short = 'v')]
    pub volumes: Vec<String>,
    /// runc or gvisor
    #[arg(long, default_value = "runc")]
    pub runtime: String,
    /// Memory limit per instance in MiB
    #[arg(long)]
    pub memory: Option<u32>,
    /// CPU limit per instance
    #[arg(long)]
    pub cpus: Option<f64>,
    /// HTTP path of the readiness probe [default: a TCP connect to the port]
    #[arg(long)]
    pub readiness_path: Option<String>,
    /// Replace the image's entrypoint (repeat for each word)
    #[arg(long = "command", allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Replace the image's cmd (repeat for each word)
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Serve /svc/... without an API key
    #[arg(long)]
    pub public: bool,
    /// Also serve requests for this host name, whole path (repeatable)
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Forbid connections beyond Hangar's bridge
    #[arg(long)]
    pub no_egress: bool,
    /// `auto`: the advisor keeps --min (at least 1) warm while the service costs less than a
    /// scale-to-zero function would, and lets it scale to zero while it does not
    #[arg(long, value_parser = ["fixed", "auto"])]
    pub mode: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an image: an OCI image layout (directory or tar) or a `docker save` archive
    Import {
        file: PathBuf,
        /// Name it (e.g. `myapp:v1`) when the file holds one image
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull an image from a registry (HTTPS; plain HTTP for loopback registries)
    Pull {
        /// e.g. `busybox`, `127.0.0.1:5000/team/app:v2`
        reference: String,
        #[arg(long, env = "HANGAR_REGISTRY_USERNAME")]
        username: Option<String>,
        #[arg(long, env = "HANGAR_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// List images
    Ls,
    /// Show one image
    Get { reference: String },
    /// Remove an image's name (or, given its id, the image); unused layers are deleted
    Rm { reference: String },
}

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Create or update a function from code
    Deploy(Box<DeployArgs>),
    /// List functions
    Ls,
    /// Show one function
    Get { name: String },
    /// Delete a function
    Rm { name: String },
    /// Change how a process function scales (a new revision with the same code)
    Scale(ScaleArgs),
    /// The changes adaptive mode (`--mode auto`) made to a function's warm instances, and why
    Switches { name: String },
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    pub name: String,
    /// Instances made at deploy and never reaped (paused when idle)
    #[arg(long)]
    pub min: Option<u32>,
    /// Most instances; more concurrent calls wait for one to come free
    #[arg(long)]
    pub max: Option<u32>,
    /// Instances kept initialized and running (never paused); calls they serve are `provisioned`
    #[arg(long)]
    pub provisioned: Option<u32>,
    /// Most invocations at once before 429 (0 throttles every call)
    #[arg(long)]
    pub reserved_concurrency: Option<u32>,
    /// Pause idle instances after this long, e.g. 1s (0s: never)
    #[arg(long)]
    pub pause_after: Option<String>,
    /// Stop idle instances after this long, e.g. 5m
    #[arg(long)]
    pub keep_alive: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    pub name: String,
    /// wasm, python3, nodejs or provided
    #[arg(long, default_value = "wasm")]
    pub runtime: String,
    /// The code: a .wasm component (wasm), or a .zip or directory (python3, nodejs, provided)
    #[arg(long, required_unless_present = "sequence")]
    pub code: Option<PathBuf>,
    /// Make a sequence of these functions instead (comma-separated, in order): each one's
    /// response is the next one's request
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["code", "handler"])]
    pub sequence: Vec<String>,
    /// Lambda handler: module.function (python3) or file.function (nodejs)
    #[arg(long)]
    pub handler: Option<String>,
    /// Most instances running at once (process runtimes)
    #[arg(long)]
    pub max_instances: Option<u32>,
    /// Memory limit in MiB
    #[arg(long)]
    pub memory: Option<u32>,
    /// Timeout, e.g. 30s or 500ms
    #[arg(long)]
    pub timeout: Option<String>,
    /// Environment variable K=V (repeatable)
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Host the function may call over HTTP: host, host:port or *.domain (repeatable)
    #[arg(long = "allow-outbound", value_name = "HOST")]
    pub allow_outbound: Vec<String>,
    /// Answer on the function URL without an API key
    #[arg(long)]
    pub public: bool,
    /// Most invocations running at once (0..=1000); more get 429 with Retry-After
    #[arg(long)]
    pub reserved_concurrency: Option<u32>,
    /// Instances kept initialized and running from deploy on (process runtimes)
    #[arg(long)]
    pub provisioned: Option<u32>,
    /// Instances made at deploy and never reaped (process runtimes)
    #[arg(long)]
    pub min_instances: Option<u32>,
    /// Pause idle instances after this long, e.g. 1s; 0s never [default: the server's --pause-after]
    #[arg(long)]
    pub pause_after: Option<String>,
    /// Stop idle instances after this long, e.g. 5m [default: the server's --keep-alive]
    #[arg(long)]
    pub keep_alive: Option<String>,
    /// `auto`: the advisor keeps instances warm while cold starts break --latency-objective
    /// (or warm costs less) and lets the function scale to zero again [default: fixed]
    #[arg(long, value_parser = ["fixed", "auto"])]
    pub mode: Option<String>,
    /// The p99 latency adaptive mode keeps, e.g. 200ms
    #[arg(long)]
    pub latency_objective: Option<String>,
    /// Retries of a failed asynchronous invocation (0..=2) [default: 2]
    #[arg(long)]
    pub retries: Option<u32>,
    /// Wait before the first retry, doubled for each further one, e.g. 1s [default: 1s]
    #[arg(long)]
    pub retry_delay: Option<String>,
    /// Give asynchronous invocations up once this old, e.g. 1h (60s..6h) [default: 6h]
    #[arg(long)]
    pub max_event_age: Option<String>,
    /// Function that receives every asynchronous invocation given up
    #[arg(long)]
    pub on_failure: Option<String>,
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    pub name: String,
    /// Request body: text, or @FILE to read a file
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Path the function sees
    #[arg(long, default_value = "/")]
    pub path: String,
    /// HTTP method [default: POST with --data, else GET]
    #[arg(long, short = 'X')]
    pub method: Option<String>,
    /// Extra header "Name: value" (repeatable)
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Queue the invocation (the body is the event) and print its id once it is persisted
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// With --async: events with the same key run once
    #[arg(long, requires = "asynchronous")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TriggerCommand {
    /// List the namespace's triggers with their next fire times
    Ls,
    /// Create or replace a trigger
    Add(TriggerArgs),
    /// Remove a trigger
    Rm { name: String },
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    pub name: String,
    /// Cron schedule: 5 fields, or 6 with seconds first (e.g. "*/5 * * * *")
    #[arg(long, conflicts_with = "topic", required_unless_present = "topic")]
    pub cron: Option<String>,
    /// IANA time zone of the schedule (default UTC)
    #[arg(long = "tz", requires = "cron")]
    pub timezone: Option<String>,
    /// The data of every scheduled event (JSON)
    #[arg(long, requires = "cron")]
    pub data: Option<String>,
    /// Subscribe to this topic instead
    #[arg(long)]
    pub topic: Option<String>,
    /// The function that receives the events
    #[arg(long, conflicts_with = "service", required_unless_present = "service")]
    pub function: Option<String>,
    /// The service that receives the events
    #[arg(long)]
    pub service: Option<String>,
    /// Where the service receives them (default /)
    #[arg(long, requires = "service")]
    pub path: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Publish DATA to TOPIC: every subscribed function or service gets it as a CloudEvent
    Publish {
        topic: String,
        /// The event's data: JSON or text, or @FILE
        data: String,
        /// The CloudEvent type
        #[arg(long = "type")]
        kind: Option<String>,
        /// The CloudEvent source
        #[arg(long)]
        source: Option<String>,
        /// The CloudEvent id; the same id again is delivered once
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AsyncCommand {
    /// List asynchronous invocations, newest first
    Ls {
        /// Only events for this function or service
        name: Option<String>,
        /// Only this state: queued, running, succeeded, failed (the dead-letter list)
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one asynchronous invocation with its attempts
    Get { id: String },
}

#[derive(Debug, Subcommand)]
pub enum NsCommand {
    Create {
        name: String,
        /// Most invocations running at once in it [default: the server's --namespace-concurrency]
        #[arg(long)]
        max_concurrency: Option<u32>,
    },
    Ls,
    Rm {
        name: String,
    },
    /// Set a namespace's limits
    Set {
        name: String,
        /// Most invocations running at once in it, or `default` for the server's
        #[arg(long)]
        max_concurrency: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; --namespace for a namespace key, none for an admin key
    Create {
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    Ls,
    Rm {
        id: String,
    },
}

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

/// Sends a DELETE and, for people, says what is gone.
async fn delete(cli: &Cli, client: &Client, request: reqwest::RequestBuilder, what: &str) -> Result<()> {
    client.send(request).await?;
    if cli.output == Output::Table {
        println!("deleted {what}");
    }
    Ok(())
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
                Output::Table => println!(
                    "{} {}/{} revision {}\nURL: {}{}",
                    serde_json::to_value(r.status)?.as_str().unwrap_or("deployed"),
                    r.function.namespace,
                    r.function.name,
                    r.function.revision,
                    client.base,
                    r.function.url_path
                ),
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

pub async fn run_logs(cli: &Cli, name: &str, follow: bool, limit: u32) -> Result<()> {
    let client = client(cli);
    let ns = ns_query(cli.namespace.as_deref());
    // The function must exist (a clear error instead of an empty listing).
    client.send(client.request(Method::GET, &format!("/v1/functions/{name}")).query(&ns)).await?;
    let mut q = ns.clone();
    q.extend([("function", name.to_string()), ("logs", "true".into()), ("limit", limit.to_string())]);
    let page: InvocationPage = client.json(client.request(Method::GET, "/v1/invocations").query(&q)).await?;
    let mut cursor = page.items.first().map(|i| i.id.clone());
    for i in page.items.iter().rev() {
        if cli.output == Output::Json {
            println!("{}", serde_json::to_string(i)?);
        } else {
            print_logs(i);
        }
    }
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut q = q.clone();
        q.push(("order", "asc".into()));
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page: InvocationPage = client.json(client.request(Method::GET, "/v1/invocations").query(&q)).await?;
        for i in &page.items {
            if cli.output == Output::Json {
                println!("{}", serde_json::to_string(i)?);
            } else {
                print_logs(i);
            }
            cursor = Some(i.id.clone());
        }
    }
}

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

pub fn check_limit(limit: u32) -> Result<()> {
    if !(1..=1000).contains(&limit) {
        bail!("--limit {limit} is out of range; choose 1 to 1000");
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Make a sandbox from an image and start it; prints its id
    Create {
        /// Image reference or id (`hangar image ls`)
        #[arg(long)]
        image: String,
        /// Memory limit, MiB
        #[arg(long)]
        memory: Option<u32>,
        /// CPU limit, in CPUs
        #[arg(long)]
        cpus: Option<f64>,
        /// Disk the sandbox's files may take, MiB
        #[arg(long)]
        disk: Option<u32>,
        /// Environment variable K=V of every command (repeatable)
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// Destroy it this long after creation (e.g. 1h)
        #[arg(long)]
        ttl: Option<String>,
        /// Pause it after this long without exec or file calls (e.g. 30s)
        #[arg(long)]
        pause_after: Option<String>,
        /// Put it on standby (checkpoint to disk) after this long without calls (e.g. 5m)
        #[arg(long)]
        standby_after: Option<String>,
        /// Let it connect to HOST:PORT (a name or IPv4 address; port `*` for any), TCP and
        /// UDP (repeatable); nothing else is reachable. Without it: no network but loopback
        #[arg(long = "allow")]
        allow: Vec<String>,
    },
    /// List sandboxes
    Ls,
    /// Show a sandbox: state, timings, sizes, usage
    Get { id: String },
    /// Stop a sandbox and remove it with its files
    Rm { id: String },
    /// Freeze a sandbox: no CPU, memory kept
    Pause { id: String },
    /// Resume a paused sandbox, or restore one on standby
    Resume { id: String },
    /// Checkpoint a sandbox to disk and stop it: no CPU, no memory, state kept
    Standby { id: String },
    /// Run a command in a sandbox; its output streams here and its exit code is this one's.
    /// Standard input is passed on when it is not a terminal; with -t the command runs on a
    /// terminal of its own, interactively (default command /bin/sh).
    Exec {
        id: String,
        /// Run on a terminal, interactively (over a WebSocket; keys go through as typed)
        #[arg(long, short = 't')]
        tty: bool,
        /// Environment variable K=V (repeatable)
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// Working directory inside the sandbox
        #[arg(long)]
        cwd: Option<String>,
        /// Kill the command (and whatever it left running) after this long (e.g. 30s)
        #[arg(long)]
        timeout: Option<String>,
        /// Run as this user of the image, `uid[:gid]` or `name[:group]` (default the image's user)
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// The command and its arguments
        #[arg(last = true, required_unless_present = "tty")]
        cmd: Vec<String>,
    },
    /// Copy a file into or out of a sandbox: `cp LOCAL ID:/path` or `cp ID:/path LOCAL`
    /// (LOCAL `-` is stdin or stdout); `cp ID:/dir` lists a directory
    Cp { from: String, to: Option<String> },
}

#[derive(Subcommand, Debug)]
pub enum PricesCommand {
    /// List the price sheets, with their source and date
    Ls,
}

#[derive(Subcommand, Debug)]
pub enum CostCommand {
    /// Monthly cost (730 h) of a traffic shape under each model, and the break-even rate
    Calc {
        /// Mean requests per second (up to 3 decimals)
        #[arg(long)]
        rps: String,
        /// How long one request runs (e.g. 120ms)
        #[arg(long)]
        duration: String,
        /// Memory of one instance, MiB
        #[arg(long)]
        memory: u32,
        /// vCPUs of one instance [default: 1]
        #[arg(long)]
        cpus: Option<String>,
        /// Requests per second at the peak the always-on models are sized for [default: --rps]
        #[arg(long)]
        peak_rps: Option<String>,
        /// Requests one service instance serves at once [default: 1]
        #[arg(long)]
        concurrency: Option<u32>,
        /// How busy always-on instances may run at the peak, percent [default: 70]
        #[arg(long)]
        target_utilization: Option<u32>,
        /// Sheet for the function and provisioned models [default: aws-lambda-x86]
        #[arg(long)]
        sheet: Option<String>,
        /// Sheet for the always-on service [default: the sheet if it prices services, else aws-fargate]
        #[arg(long)]
        service_sheet: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct AdviseArgs {
    /// Only this function or service
    pub name: Option<String>,
    /// Only `function`s or `service`s [default: both]
    #[arg(long)]
    pub kind: Option<String>,
    /// Look at traffic from this time (RFC 3339) or this long ago [default: 7d]
    #[arg(long)]
    pub since: Option<String>,
    #[command(flatten)]
    pub sheets: SheetArgs,
    /// Requests one service instance would serve at once [default: 1; a service's own concurrency]
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// p99 latency objective (e.g. 200ms): cold starts beyond it call for warm instances
    #[arg(long)]
    pub objective: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// Only this workload (function, service, or sandbox id)
    pub name: Option<String>,
    /// Only this kind: function, service or sandbox
    #[arg(long)]
    pub kind: Option<String>,
    /// From this time (RFC 3339) or this long ago (e.g. 7d) [default: 24h]
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time (RFC 3339)
    #[arg(long)]
    pub until: Option<String>,
    /// Rows per `hour` or `day`
    #[arg(long, default_value = "hour")]
    pub per: String,
    #[command(flatten)]
    pub sheets: SheetArgs,
}

/// The price sheets `hangar usage` and `hangar advise` price with.
#[derive(Debug, clap::Args)]
pub struct SheetArgs {
    /// Price sheet of functions (and provisioned instances) [default: aws-lambda-x86]
    #[arg(long)]
    pub sheet: Option<String>,
    /// Price sheet of always-on services and sandboxes [default: aws-fargate]
    #[arg(long)]
    pub service_sheet: Option<String>,
}
