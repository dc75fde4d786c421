//! Wire types shared by the Hangar server and its CLI, with the validation rules for them.
//!
//! Everything that crosses the HTTP API is defined here once, documented for OpenAPI with
//! `utoipa`, and validated with [`validate`]. Libraries below the gateway receive these types
//! already validated and never parse HTTP themselves.
#![forbid(unsafe_code)]

pub mod cost;
pub mod images;
pub mod logs;
pub mod services;
pub mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The namespace used when a request names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default memory of a function, in MiB.
pub const DEFAULT_MEMORY_MB: u32 = 128;
/// Smallest and largest memory a function may ask for, in MiB.
pub const MEMORY_MB_RANGE: (u32, u32) = (16, 4096);
/// Default timeout of a function, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Shortest and longest timeout a function may ask for, in milliseconds (15 minutes, like Lambda).
pub const TIMEOUT_MS_RANGE: (u64, u64) = (1, 900_000);
/// Default largest code upload, in bytes (50 MiB, like a Lambda zip upload).
pub const DEFAULT_MAX_CODE_BYTES: usize = 50 * 1024 * 1024;
/// Default largest invocation payload (request body), in bytes (6 MiB, like Lambda).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;
/// Default largest image archive `hangar image import` accepts, in bytes (8 GiB).
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 8 << 30;
/// Default bound on the logs kept for one invocation, in bytes.
pub const DEFAULT_MAX_LOG_BYTES: usize = 64 * 1024;
/// Header that carries the invocation id on every function response.
pub const INVOCATION_ID_HEADER: &str = "x-hangar-invocation-id";
/// Header on a response that is a function's own unhandled error (Lambda's `X-Amz-Function-Error`).
pub const FUNCTION_ERROR_HEADER: &str = "x-hangar-function-error";

/// Declares a wire enum whose variants are spelled as lowercase words in JSON, the CLI and the
/// store, with `as_str`, `ALL`, `Display` and `FromStr` (whose error lists the valid words).
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, as users spell them.
            pub const ALL: &'static [&'static str] = &[$($text),+];

            /// The word users write.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} `{other}`; expected one of: {}", $what, Self::ALL.join(", "))),
                }
            }
        }
    };
}

pub mod events;
pub mod nodes;
pub mod sandboxes;
pub mod series;
pub mod traces;

wire_enum! {
    /// The three kinds of workload.
    WorkloadKind, "kind" {
        /// Event handlers that scale to zero, billed per invocation.
        Function = "function",
        /// Long-running containers, billed per instance-second.
        Service = "service",
        /// gVisor machines for untrusted code, billed per active second and standby storage.
        Sandbox = "sandbox",
    }
}

wire_enum! {
    /// How a workload can be run and billed: the models the cost calculator prices and the
    /// advisor chooses between.
    Model, "model" {
        /// Scale to zero, billed per request and ms × memory.
        Function = "function",
        /// A function with instances kept warm, billed for their time too.
        Provisioned = "provisioned",
        /// Always-on instances, billed per instance-second.
        Service = "service",
        /// A sandbox resumed from standby per job, billed while it runs and for its image.
        Sandbox = "sandbox",
    }
}

/// The model a workload of a kind runs on by default.
impl From<WorkloadKind> for Model {
    fn from(kind: WorkloadKind) -> Model {
        match kind {
            WorkloadKind::Function => Model::Function,
            WorkloadKind::Service => Model::Service,
            WorkloadKind::Sandbox => Model::Sandbox,
        }
    }
}

/// A usage row's kind when none is said: a function's (the rows invocations make).
impl Default for WorkloadKind {
    fn default() -> Self {
        WorkloadKind::Function
    }
}

wire_enum! {
    /// How a function's code is executed.
    RuntimeKind, "runtime" {
        /// A WebAssembly component for the `wasi:http/proxy` world (WASI 0.2).
        Wasm = "wasm",
        /// A Lambda handler `module.function` run by the machine's CPython, forked from a zygote.
        Python3 = "python3",
        /// A Lambda handler `file.function` run by the machine's Node.js.
        Nodejs = "nodejs",
        /// An executable named `bootstrap` that speaks the Lambda Runtime API itself.
        Provided = "provided",
        /// No code of its own: its `steps` (functions of the namespace) run one after another,
        /// each one's response body the next one's request body (like OpenWhisk sequences).
        Sequence = "sequence",
    }
}

impl RuntimeKind {
    /// Whether code of this kind runs as processes that speak the Lambda Runtime API.
    pub fn is_process(self) -> bool {
        !matches!(self, RuntimeKind::Wasm)
    }

    /// Whether a handler name is required (`module.function` / `file.function`).
    pub fn needs_handler(self) -> bool {
        matches!(self, RuntimeKind::Python3 | RuntimeKind::Nodejs)
    }
}

/// Default keep-warm limit on concurrent instances of one process function.
pub const DEFAULT_MAX_INSTANCES: u32 = 100;
/// Smallest and largest `max_instances`.
pub const MAX_INSTANCES_RANGE: (u32, u32) = (1, 1000);

/// The configuration of a function: everything about it but its code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// How the code runs.
    pub runtime: RuntimeKind,
    /// The Lambda handler: `module.function` (python3), `file.function` (nodejs); passed to
    /// `provided` bootstraps as `_HANDLER`. Not used by `wasm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Most instances of a process function running at once (1..=1000); further concurrent
    /// requests are throttled (429). Each instance serves one invocation at a time.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Memory limit in MiB (16..=4096). Growing beyond it fails the invocation as `out_of_memory`.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Wall-clock limit of one invocation in milliseconds (1..=900000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Environment variables the code sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Hosts (`host`, `host:port` or `*.domain`) the code may send HTTP requests to; none by default.
    #[serde(default)]
    pub allow_outbound: Vec<String>,
    /// Whether the function URL answers without an API key.
    #[serde(default)]
    pub public: bool,
    /// Retries and destination of asynchronous invocations.
    #[serde(default, rename = "async", skip_serializing_if = "events::AsyncConfig::is_default")]
    pub async_: events::AsyncConfig,
    /// The functions a `sequence` runs, in order (1..=50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
    /// Most invocations of this function running at once (0..=1000); more are throttled
    /// (429 with `Retry-After`). 0 throttles every call, as Lambda's reserved concurrency of 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_concurrency: Option<u32>,
    /// Instances kept initialized from deploy on, never paused or reaped (process runtimes;
    /// 0..=max_instances). Invocations they serve are recorded as `provisioned`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub provisioned_instances: u32,
    /// Instances (provisioned ones included) made at deploy and never reaped; idle ones are
    /// paused like any other (process runtimes; 0..=max_instances).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_instances: u32,
    /// Idle instances are paused (cgroup freezer: no CPU, memory kept) after this many ms and
    /// resumed by the next invocation (`resumed`); 0 never pauses. Default: the server's
    /// `--pause-after`. Process runtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after_ms: Option<u64>,
    /// Idle instances are stopped after this many ms (1000..=86400000). Default: the server's
    /// `--keep-alive`. Process runtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_ms: Option<u64>,
    /// `fixed` (default): instances as configured. `auto`: the advisor keeps instances warm
    /// (provisioned) while cold starts break `latency_objective_ms` or warm costs less, and
    /// lets it scale to zero again when its traffic falls (process runtimes).
    #[serde(default, skip_serializing_if = "FunctionMode::is_fixed")]
    pub mode: FunctionMode,
    /// The p99 latency the advisor keeps in `auto` mode, ms (1..=60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_objective_ms: Option<u64>,
    /// Host names (`app.example.com`) whose requests go to this function whole path, besides
    /// its own `NAME.NAMESPACE.fn.DOMAIN`; a host routes to one function or service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

wire_enum! {
    /// Who decides how many instances a function keeps warm.
    #[derive(Default)]
    FunctionMode, "mode" {
        /// Its configuration.
        #[default]
        Fixed = "fixed",
        /// The advisor (adaptive mode).
        Auto = "auto",
    }
}

impl FunctionMode {
    pub fn is_fixed(&self) -> bool {
        *self == FunctionMode::Fixed
    }
}

/// A change of warm instances made by adaptive mode, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModeSwitch {
    /// `function` (provisioned instances) or `service` (its minimum instances).
    #[serde(default = "function_kind")]
    pub kind: WorkloadKind,
    pub at: String,
    pub revision: u64,
    /// Instances kept warm before and after.
    pub from_warm: u32,
    pub to_warm: u32,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModeSwitchList {
    pub items: Vec<ModeSwitch>,
}

fn function_kind() -> WorkloadKind {
    WorkloadKind::Function
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A process function's instances now, by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceCounts {
    /// Running an invocation.
    pub busy: u32,
    /// Waiting for one, warm.
    pub idle: u32,
    /// Waiting for one, frozen.
    pub paused: u32,
    /// Kept initialized (counted here too when idle or busy).
    pub provisioned: u32,
    /// Made ahead of demand for the next cold start.
    pub spare: u32,
}

fn default_memory_mb() -> u32 {
    DEFAULT_MEMORY_MB
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_instances() -> u32 {
    DEFAULT_MAX_INSTANCES
}

impl FunctionConfig {
    /// A configuration with every default for the given runtime.
    pub fn new(runtime: RuntimeKind) -> Self {
        FunctionConfig {
            runtime,
            handler: None,
            max_instances: DEFAULT_MAX_INSTANCES,
            memory_mb: DEFAULT_MEMORY_MB,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            env: BTreeMap::new(),
            allow_outbound: Vec::new(),
            public: false,
            async_: events::AsyncConfig::default(),
            steps: Vec::new(),
            reserved_concurrency: None,
            provisioned_instances: 0,
            min_instances: 0,
            pause_after_ms: None,
            keep_alive_ms: None,
            mode: FunctionMode::Fixed,
            latency_objective_ms: None,
            hosts: Vec::new(),
        }
    }
}

/// A deployed function, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Function {
    pub namespace: String,
    pub name: String,
    /// Number of the current revision; every change of code or configuration adds one.
    pub revision: u64,
    pub config: FunctionConfig,
    /// `sha256:<hex>` of the code.
    pub code_digest: String,
    pub code_size: u64,
    /// RFC 3339 time of the first deploy.
    pub created_at: String,
    /// RFC 3339 time of the current revision.
    pub updated_at: String,
    /// Path of the function URL on this server.
    pub url_path: String,
    /// Where it answers, as the caller reached this server: its function URL, its own host
    /// name (`NAME.NAMESPACE.fn.DOMAIN`, whole path) and the hosts it claims.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Its instances now, when its runtime keeps instances (process runtimes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstanceCounts>,
}

/// What a deploy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeployStatus {
    Created,
    Updated,
    Unchanged,
}

/// Answer to a deploy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeployResponse {
    pub status: DeployStatus,
    pub function: Function,
}

wire_enum! {
    /// How the instance that served an invocation was obtained.
    StartKind, "start kind" {
        /// The revision had to be loaded (compiled code read from the cache) before instantiating.
        Cold = "cold",
        /// The revision was resident; a fresh instance was made from it (wasm), or an idle
        /// instance served it (process runtimes).
        Warm = "warm",
        /// A paused (frozen) idle instance was resumed for it.
        Resumed = "resumed",
        /// One of the function's provisioned instances served it.
        Provisioned = "provisioned",
        /// A sandbox made ahead of demand served it, its runtime already initialized: no
        /// instance was created for this request (process runtimes).
        Prewarmed = "prewarmed",
    }
}

impl StartKind {
    /// Whether a new instance served the invocation, made for it (`cold`) or ahead of demand
    /// (`prewarmed`): what usage, the advisor and adaptive mode count as a cold start.
    pub fn is_cold_start(self) -> bool {
        matches!(self, StartKind::Cold | StartKind::Prewarmed)
    }
}

wire_enum! {
    /// How an invocation ended.
    Outcome, "status" {
        Ok = "ok",
        Error = "error",
        Timeout = "timeout",
        OutOfMemory = "out_of_memory",
        Throttled = "throttled",
    }
}

wire_enum! {
    /// What caused an invocation.
    Trigger, "trigger" {
        /// A request to the function URL.
        Http = "http",
        /// `POST /v1/functions/{name}/invoke`.
        Api = "api",
        /// An attempt of an asynchronous invocation.
        Async = "async",
    }
}

/// One call of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invocation {
    /// Time-ordered id (UUIDv7).
    pub id: String,
    pub namespace: String,
    pub function: String,
    pub revision: u64,
    pub trigger: Trigger,
    /// RFC 3339 start time.
    pub started_at: String,
    /// Wall time from start to the end of the response, in microseconds.
    pub duration_us: u64,
    /// Billed duration: the duration rounded up to the next millisecond.
    pub billed_ms: u64,
    /// Configured memory, in MiB: with `billed_ms` the cost basis (GB-seconds).
    pub memory_mb: u32,
    pub start: StartKind,
    pub outcome: Outcome,
    /// HTTP status returned to the caller.
    pub status: u16,
    /// Bytes of response body sent.
    pub response_bytes: u64,
    /// What went wrong, when the outcome is not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Guest stdout and stderr, bounded; only on `GET /v1/invocations/{id}` or with `logs=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// Whether the logs were cut at the bound.
    pub logs_truncated: bool,
    /// The sequence invocation this one is a step of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// A sequence's steps, in order (on `GET /v1/invocations/{id}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
}

/// One page of a listing; pass `next_cursor` as `cursor` to get the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvocationPage {
    pub items: Vec<Invocation>,
    pub next_cursor: Option<String>,
}

/// List of functions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionList {
    pub items: Vec<Function>,
}

/// A tenant. Nothing crosses namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Namespace {
    pub name: String,
    pub created_at: String,
    /// Most invocations running at once in it; none: the server's `--namespace-concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// Largest namespace concurrency limit.
pub const MAX_NAMESPACE_CONCURRENCY: u32 = 1_000_000;

/// Body of `PATCH /v1/namespaces/{name}`: its limits (`null` for the server's default).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceLimits {
    pub max_concurrency: Option<u32>,
}

impl NamespaceLimits {
    pub fn validate(&self) -> Result<(), validate::Invalid> {
        match self.max_concurrency {
            Some(n) if n == 0 || n > MAX_NAMESPACE_CONCURRENCY => Err(validate::Invalid::new(
                "max_concurrency",
                format!("{n} is out of range: choose 1 to {MAX_NAMESPACE_CONCURRENCY}, or null for the server's default"),
            )),
            _ => Ok(()),
        }
    }
}

/// List of namespaces.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NamespaceList {
    pub items: Vec<Namespace>,
}

/// Body of `POST /v1/namespaces`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNamespace {
    pub name: String,
    /// Most invocations running at once in it (default: the server's `--namespace-concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// Body of `POST /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Namespace the key acts in; omit for an admin key.
    #[serde(default)]
    pub namespace: Option<String>,
    /// A label for people.
    #[serde(default)]
    pub name: Option<String>,
}

/// An API key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    /// `None` for an admin key.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub created_at: String,
}

/// A newly created key: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The secret to send as `Authorization: Bearer <secret>`.
    pub secret: String,
}

/// List of keys.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<ApiKey>,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable machine code and a message for people.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `not_found`, `invalid_name`, `payload_too_large`.
    pub code: String,
    /// What happened, why, and what to do.
    pub message: String,
}

pub use hangar_core::now_ms;

/// RFC 3339 text of a time given in milliseconds since the Unix epoch.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| ms.to_string())
}

/// Parses RFC 3339 text into milliseconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok().map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// One invocation as the platform records it internally (times as integers), before it is
/// written to the store or shown as an [`Invocation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationRecord {
    pub id: String,
    pub namespace: String,
    pub function: String,
    pub revision: u64,
    pub trigger: Trigger,
    pub started_ms: i64,
    pub duration_us: u64,
    pub billed_ms: u64,
    pub memory_mb: u32,
    pub start: StartKind,
    /// How it ended, as its runtime reported it.
    pub ending: Ending,
    /// The sequence invocation this one is a step of.
    pub parent_id: Option<String>,
}

/// An invocation is `ok` until it ends otherwise.
impl Default for Outcome {
    fn default() -> Self {
        Outcome::Ok
    }
}

/// How an invocation ended, as the runtime that ran it reports it: the part of an
/// [`InvocationRecord`] only the runtime knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ending {
    pub outcome: Outcome,
    /// HTTP status sent to the caller.
    pub status: u16,
    /// Response body bytes handed to the caller.
    pub response_bytes: u64,
    pub error: Option<String>,
    pub logs: String,
    pub logs_truncated: bool,
}

impl Ending {
    /// An ending the platform decided (throttled, the code not loadable): its outcome, the
    /// status the caller got, and why.
    pub fn platform(outcome: Outcome, status: u16, error: String) -> Ending {
        Ending { outcome, status, error: Some(error), ..Ending::default() }
    }
}

impl InvocationRecord {
    /// What the advisor weighs of it: its latency (ms, from arrival to the response's end) and
    /// whether it started an instance ([`StartKind::is_cold_start`]).
    pub fn latency(&self) -> (u64, bool) {
        (self.duration_us.div_ceil(1000), self.start.is_cold_start())
    }

    /// The API view of this record; `with_logs` includes the logs.
    pub fn to_api(&self, with_logs: bool) -> Invocation {
        Invocation {
            id: self.id.clone(),
            namespace: self.namespace.clone(),
            function: self.function.clone(),
            revision: self.revision,
            trigger: self.trigger,
            started_at: rfc3339(self.started_ms),
            duration_us: self.duration_us,
            billed_ms: self.billed_ms,
            memory_mb: self.memory_mb,
            start: self.start,
            outcome: self.ending.outcome,
            status: self.ending.status,
            response_bytes: self.ending.response_bytes,
            error: self.ending.error.clone(),
            logs: with_logs.then(|| self.ending.logs.clone()),
            logs_truncated: self.ending.logs_truncated,
            parent_id: self.parent_id.clone(),
            children: Vec::new(),
        }
    }
}

/// Billed duration: microseconds rounded up to whole milliseconds, at least 1 ms.
pub fn billed_ms(duration_us: u64) -> u64 {
    duration_us.div_ceil(1000).max(1)
}
