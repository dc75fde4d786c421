//! The command line's definitions (clap): every command, its flags and their defaults. The
//! reference in docs/cli.md is generated from these.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Up(Box<UpArgs>),
    /// Manage functions
    #[command(subcommand, name = "fn")]
    Function(FnCommand),
    /// Call a function through its URL and print the response body
    Invoke(InvokeArgs),
    /// Show the logs of a function's invocations; with -q, --kind or --since (or no name),
    /// search the lines of functions and services
    Logs {
        /// A function (or, when searching, a function or service)
        name: Option<String>,
        /// Keep printing new lines as they come
        #[arg(short, long)]
        follow: bool,
        /// How many recent invocations (or, when searching, lines) to show first
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only lines holding this text (any case)
        #[arg(short = 'q', long = "query")]
        query: Option<String>,
        /// Only `function` or `service` lines
        #[arg(long)]
        kind: Option<String>,
        /// How far back to search (e.g. 15m), or an RFC 3339 time [default: 1h]
        #[arg(long)]
        since: Option<String>,
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
    /// Recent traces this server kept, newest first: every error and slow trace, and a sample
    Traces {
        /// Only traces that touch this function or service
        name: Option<String>,
        /// Only `ok` or `error` traces
        #[arg(long)]
        status: Option<String>,
        /// How far back (e.g. 15m, 2h)
        #[arg(long, default_value = "1h")]
        since: String,
        /// Only traces at least this long (e.g. 250ms)
        #[arg(long)]
        min_duration: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One trace as a waterfall: every span, when it started and how long it took
    Trace { id: String },
    /// The nodes of the cluster: role, address, capacity, instances, heartbeat, state (admin)
    Nodes {
        #[command(subcommand)]
        command: Option<NodesCommand>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List the nodes (the default)
    Ls,
    /// Stop placing work on a node; it finishes what it runs (until it restarts)
    Drain { node: String },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address to serve on
    #[arg(long, env = "HANGAR_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
    /// Where desired state, code, records, usage and the async queue live: the embedded SQLite
    /// file in the data dir (the default), or `postgres://USER:PASS@HOST:PORT/DB`, which every
    /// node of a cluster shares
    #[arg(long, env = "HANGAR_STORE")]
    pub store: Option<String>,
    /// How nodes tell each other of changes and keep leases and heartbeats: in-process (the
    /// default, one node), or `nats://HOST:PORT` (nats-server with JetStream on, `-js`)
    #[arg(long, env = "HANGAR_BUS")]
    pub bus: Option<String>,
    /// How often a node heartbeats on the bus; one that misses 3 is lost and its work taken over
    #[arg(long, env = "HANGAR_HEARTBEAT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: std::time::Duration,
    /// What this node does in a cluster: `all` (takes requests and runs instances), `gateway`
    /// (takes requests, runs nothing: calls go to workers) or `worker`
    #[arg(long, env = "HANGAR_ROLE", default_value = "all", value_parser = ["all", "gateway", "worker"])]
    pub role: String,
    /// The address other nodes reach this node on [default: --listen, unless that is a
    /// wildcard address]
    #[arg(long, env = "HANGAR_ADVERTISE")]
    pub advertise: Option<std::net::SocketAddr>,
    /// The secret the nodes of a cluster call each other with (the same on every node, at least
    /// 16 characters; needed with --bus). Prefer the environment variable: arguments are visible
    /// to other users of the machine
    #[arg(long, env = "HANGAR_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Most instances this node runs at once; placement sends no more calls to a full node
    #[arg(long, env = "HANGAR_MAX_NODE_INSTANCES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_node_instances: u32,
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
    #[arg(long, default_value_t = hangar_api::DEFAULT_MAX_IMAGE_BYTES)]
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
    /// Every function and service also answers on its own host name, `NAME.NAMESPACE.fn.DOMAIN`
    /// and `NAME.NAMESPACE.svc.DOMAIN`, whole path (browsers and curl resolve `*.localhost` to
    /// this machine; for another domain, point a wildcard DNS record at the server)
    #[arg(long, env = "HANGAR_DOMAIN", default_value = "localhost")]
    pub domain: String,
    /// Share of traces kept by trace id, 0..=1 (`off`: no tracing at all). Besides, every trace
    /// with a failed or slow span is kept, and one per workload per second
    #[arg(long, env = "HANGAR_TRACE_SAMPLE", default_value = "0.01")]
    pub trace_sample: String,
    /// A span at least this long keeps its trace
    #[arg(long, env = "HANGAR_TRACE_SLOW", default_value = "1s", value_parser = humantime::parse_duration)]
    pub trace_slow: std::time::Duration,
    /// Most spans the trace store keeps in memory; the oldest traces go first
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub trace_max_spans: u64,
    /// How long the trace store keeps a trace
    #[arg(long, env = "HANGAR_TRACE_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub trace_retention: std::time::Duration,
    /// Export kept spans to this OTLP/HTTP collector (protobuf; e.g. http://127.0.0.1:4318,
    /// `/v1/traces` appended), batched; when it is slow or down, spans are dropped and counted
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
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
    /// How long invocation records and their logs are kept (`hangar invocations`, `hangar logs`)
    #[arg(long, env = "HANGAR_LOG_RETENTION", default_value = "14d", value_parser = humantime::parse_duration)]
    pub log_retention: std::time::Duration,
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
    /// Also serve requests for this host name, whole path (repeatable)
    #[arg(long = "host")]
    pub hosts: Vec<String>,
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
