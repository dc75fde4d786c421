//! The runtime seam: how the scheduler asks an executor to prepare code and run invocations.
//!
//! A [`Runtime`] turns uploaded code into a durable, validated artifact at deploy time
//! ([`Runtime::prepare`]), makes a revision resident on demand ([`Runtime::load`]), and the
//! resulting [`Loaded`] revision serves invocations. Runtimes know how an instance is isolated;
//! the scheduler decides which revision serves, admits each invocation, decides which idle
//! process instances pause or stop (`hangar_scheduler::reaping`) and how many may live
//! (`hangar_scheduler::capacity`); the process runtime applies those decisions.
//!
//! Design decisions:
//!
//! *Records at response end.* The runtime reports an invocation once, with its outcome, bytes,
//! logs and duration from arrival to the end of the response, which is what is billed.
#![forbid(unsafe_code)]

mod body;
mod logs;

pub use body::{Body, BoxError, boxed, empty, full};
pub use logs::LogBuffer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hangar_api::{RuntimeKind, StartKind, Trigger};

/// Why a runtime could not prepare or load code.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The uploaded bytes cannot run on this runtime; the message says why and what to do.
    #[error("{0}")]
    InvalidCode(String),
    /// The artifact store failed (disk full, permissions).
    #[error("runtime storage: {0}")]
    Storage(#[from] std::io::Error),
    /// The code of the revision (this digest) is not on this node yet: fetch it from the store
    /// ([`CodeSource`]) and prepare it here.
    #[error("the code {0} is not on this node")]
    MissingCode(String),
    /// Anything else that went wrong inside the runtime.
    #[error("runtime: {0}")]
    Internal(String),
}

/// What the code of a revision is, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeInfo {
    /// `sha256:<hex>` of the uploaded bytes.
    pub digest: String,
    pub size: u64,
}

/// The limits and environment of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
    pub allow_outbound: Vec<String>,
    pub max_log_bytes: usize,
}

/// A revision to make resident.
#[derive(Debug, Clone)]
pub struct RevisionSpec {
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    pub code_digest: String,
    /// The Lambda handler, for process runtimes.
    pub handler: Option<String>,
    /// Most instances at once, for runtimes whose instances serve one invocation at a time.
    pub max_instances: u32,
    /// Instances to keep initialized from the start (never paused or reaped).
    pub provisioned: u32,
    /// Instances (provisioned included) made at load and never reaped.
    pub min_instances: u32,
    /// Pause idle instances after this long (`Some(ZERO)`: never); `None`: the runtime's default.
    pub pause_after: Option<Duration>,
    /// Stop idle instances after this long; `None`: the runtime's default.
    pub keep_alive: Option<Duration>,
    pub limits: Limits,
}

/// A request extension that names the Lambda request id a handler sees, when it is not the
/// invocation's own id: every attempt of one asynchronous invocation carries that invocation's
/// id, so a handler can tell a retry from a new event (as Lambda's idempotency utilities do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// What the scheduler knows about one invocation before the runtime runs it.
#[derive(Debug, Clone)]
pub struct InvokeInfo {
    /// The invocation id (a UUID), also the Lambda request id.
    pub id: String,
    pub trigger: Trigger,
    /// This invocation's span, when tracing is on (the request's `traceparent` names it too):
    /// Lambda code sees it as `Lambda-Runtime-Trace-Id`, outbound calls carry it.
    pub trace: Option<hangar_trace::SpanContext>,
}

/// How an invocation ended, as the runtime saw it.
#[derive(Debug, Clone)]
pub struct Finished {
    pub ending: hangar_api::Ending,
    /// Whether a new instance was started for this invocation, when the runtime knows better
    /// than the scheduler (process runtimes start instances per invocation burst).
    pub start: Option<StartKind>,
    /// How long after the invocation began its instance was ready to take it (made, resumed
    /// or taken warm; a cold start's init included), when the runtime knows.
    pub ready_after: Option<std::time::Duration>,
}

/// Called exactly once when an invocation is over: the guest has returned and the response
/// body has been sent or abandoned.
pub type OnFinish = Box<dyn FnOnce(Finished) + Send>;

/// Where a node gets code it has not prepared yet: the store, which keeps every revision's
/// code by digest (so any node can run any revision).
#[async_trait]
pub trait CodeSource: Send + Sync + 'static {
    /// The uploaded bytes of `digest`, if kept.
    async fn fetch(&self, digest: &str) -> Result<Option<Bytes>, RuntimeError>;
}

/// An executor of one kind of code.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;

    /// Validates and compiles uploaded code and stores the artifact durably, keyed by digest,
    /// so that later loads (also after a restart) need no compilation. Idempotent.
    async fn prepare(&self, code: Bytes) -> Result<CodeInfo, RuntimeError>;

    /// Makes a prepared revision resident, ready to start instances.
    async fn load(&self, spec: &RevisionSpec) -> Result<Arc<dyn Loaded>, RuntimeError>;

    /// Whether revisions should be loaded as soon as they are deployed (or found at start-up)
    /// rather than at their first invocation.
    fn eager(&self) -> bool {
        false
    }

    /// Stops everything this runtime runs (at shutdown, after the scheduler drained).
    async fn shutdown(&self) {}
}

/// A resident revision that serves invocations.
#[async_trait]
pub trait Loaded: Send + Sync + 'static {
    /// Runs one invocation. Never fails: every failure becomes an error response and an
    /// outcome in the [`Finished`] given to `on_finish`.
    async fn invoke(&self, info: InvokeInfo, request: http::Request<Body>, on_finish: OnFinish) -> http::Response<Body>;

    /// Its instances by state, for runtimes that keep instances between invocations.
    fn instances(&self) -> Option<hangar_api::InstanceCounts> {
        None
    }

    /// Keeps `n` instances initialized from now on (more are made in the background; beyond
    /// `n` they become ordinary idle instances). `false` when the runtime keeps none.
    fn set_provisioned(&self, _n: u32) -> bool {
        false
    }
}

/// An error response in the API's JSON shape `{"error":{"code","message"}}`.
pub fn error_response(status: http::StatusCode, code: &str, message: &str) -> http::Response<Body> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut resp = http::Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}
