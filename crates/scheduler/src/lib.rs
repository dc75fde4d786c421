//! The scheduler owns what runs: the in-memory route table of deployed revisions, which of
//! them are resident, how each invocation gets its instance, and when everything has drained.
//!
//! **Architecture Invariant:** the scheduler never knows how an instance is isolated (that is
//! the runtime's business) and the hot path here is a read lock on a map plus atomics: no
//! database, no lock held across an await.

pub mod capacity;
pub mod informer;
pub mod placement;
pub mod reaping;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hangar_api::traces::SpanKind;
use hangar_api::{FunctionConfig, InvocationRecord, RuntimeKind, StartKind, Trigger, billed_ms, now_ms};
use hangar_meter::{FunctionMetrics, Meter};
use hangar_runtime::{Body, CodeSource, Limits, Loaded, RevisionSpec, Runtime, RuntimeError, error_response};
use tokio::sync::{Notify, OnceCell};

/// A revision as deployed: what the scheduler needs to route to it and run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    pub config: FunctionConfig,
    pub code_digest: String,
}

/// A routable function: its current revision and, once loaded, its resident code.
pub struct Slot {
    deployment: Deployment,
    /// `None` for sequences, which run their steps' runtimes.
    runtime: Option<Arc<dyn Runtime>>,
    spec: RevisionSpec,
    loaded: OnceCell<Arc<dyn Loaded>>,
    metrics: FunctionMetrics,
    /// Invocations of this revision running now (for its reserved concurrency).
    active: Arc<AtomicU32>,
    /// Where code not yet on this node comes from.
    code: Option<Arc<dyn CodeSource>>,
}

impl Slot {
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// Its instances by state, once resident (process runtimes).
    pub fn instances(&self) -> Option<hangar_api::InstanceCounts> {
        self.loaded.get()?.instances()
    }

    /// Keeps `n` instances of this revision initialized from now on (loading it if needed);
    /// `false` when its runtime keeps none.
    pub async fn set_provisioned(&self, n: u32) -> bool {
        match self.load().await {
            Ok(l) => l.set_provisioned(n),
            Err(_) => false,
        }
    }

    async fn load(&self) -> Result<&Arc<dyn Loaded>, RuntimeError> {
        let Some(runtime) = &self.runtime else {
            return Err(RuntimeError::Internal("a sequence has no code to load".into()));
        };
        self.loaded
            .get_or_try_init(|| async {
                match (runtime.load(&self.spec).await, &self.code) {
                    // Deployed through another node: prepared here once, from the kept code.
                    (Err(RuntimeError::MissingCode(digest)), Some(source)) => {
                        let code = source.fetch(&digest).await?.ok_or_else(|| {
                            RuntimeError::Internal(format!("the code {digest} of this revision is not in the store; deploy the function again"))
                        })?;
                        let prepared = runtime.prepare(code).await?;
                        if prepared.digest != digest {
                            return Err(RuntimeError::Internal(format!("the store's code for {digest} hashes to {}", prepared.digest)));
                        }
                        runtime.load(&self.spec).await
                    }
                    (loaded, _) => loaded,
                }
            })
            .await
    }
}

/// Reads a whole body of at most [`MAX_STEP_BYTES`].
fn read_bounded(body: Body) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bytes::Bytes, String>> + Send>> {
    use http_body_util::BodyExt as _;
    Box::pin(async move {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Some(d) = frame.data_ref() {
                if out.len() + d.len() > MAX_STEP_BYTES {
                    return Err(format!("larger than {MAX_STEP_BYTES} bytes"));
                }
                out.extend_from_slice(d);
            }
        }
        Ok(bytes::Bytes::from(out))
    })
}

/// The record of an invocation starting now, filled in as it ends.
fn begin_record(d: &Deployment, id: &str, trigger: Trigger, start: StartKind, parent: Option<String>) -> InvocationRecord {
    InvocationRecord {
        id: id.to_string(),
        namespace: d.namespace.clone(),
        function: d.name.clone(),
        revision: d.revision,
        trigger,
        started_ms: now_ms(),
        duration_us: 0,
        billed_ms: 0,
        memory_mb: d.config.memory_mb,
        start,
        ending: hangar_api::Ending::default(),
        parent_id: parent,
    }
}

/// The function a record is of, as spans name it.
fn workload(r: &InvocationRecord) -> hangar_api::traces::WorkloadRef {
    hangar_api::traces::WorkloadRef { kind: hangar_api::WorkloadKind::Function, namespace: r.namespace.clone(), name: r.function.clone() }
}

/// Whether the span of the invocation `r` records is kept.
fn keeps(tracer: &hangar_trace::Tracer, ctx: &hangar_trace::SpanContext, r: &InvocationRecord) -> bool {
    let failed = r.ending.outcome != hangar_api::Outcome::Ok;
    tracer.keeps(ctx, failed, r.duration_us.saturating_mul(1000), Some((hangar_api::WorkloadKind::Function, &r.namespace, &r.function)))
}

/// An invocation's span, begun: its context, its parent, when it began and its `faas.trigger`
/// (`None` when tracing is off).
type Begun = (hangar_trace::SpanContext, Option<hangar_trace::SpanId>, hangar_trace::Started, &'static str);

fn begin_span<B>(tracer: &hangar_trace::Tracer, request: &http::Request<B>, trigger: Trigger) -> Option<Begun> {
    tracer.hop(request.headers()).map(|(ctx, parent)| (ctx, parent, hangar_trace::Started::now(), faas_trigger(request, trigger)))
}

/// `faas.trigger` of an invocation: what its request says, else what its trigger implies.
fn faas_trigger<B>(request: &http::Request<B>, trigger: Trigger) -> &'static str {
    match request.extensions().get::<hangar_trace::FaasTrigger>() {
        Some(t) => t.0,
        None if trigger == Trigger::Http => "http",
        None => "other",
    }
}

/// An invocation's span (OpenTelemetry FaaS server span), from its record.
fn invocation_span(
    r: &InvocationRecord,
    ctx: hangar_trace::SpanContext,
    parent: Option<hangar_trace::SpanId>,
    started: hangar_trace::Started,
    faas_trigger: &'static str,
) -> hangar_trace::Span {
    let mut s = hangar_trace::Span::ended(ctx, parent, r.function.clone(), SpanKind::Server, started)
        .with("faas.invocation_id", r.id.clone())
        .with("faas.trigger", faas_trigger)
        .with("faas.coldstart", r.start.is_cold_start())
        .with("faas.name", r.function.clone())
        .with("faas.version", r.revision)
        .with("faas.max_memory", u64::from(r.memory_mb) << 20)
        .with("hangar.namespace", r.namespace.clone())
        .with("hangar.start", r.start.to_string())
        .with("hangar.outcome", r.ending.outcome.to_string())
        .with("http.response.status_code", r.ending.status)
        .of(workload(r));
    if let Some(parent) = &r.parent_id {
        s = s.with("hangar.parent_invocation_id", parent.clone());
    }
    if r.ending.outcome != hangar_api::Outcome::Ok {
        s = s.failed(r.ending.error.clone().unwrap_or_else(|| r.ending.outcome.to_string()));
    }
    s
}

/// Seconds a throttled caller is told to wait.
const RETRY_AFTER_S: &str = "1";

/// The answer to a throttled call: 429 with `Retry-After`.
fn throttled(why: &str) -> http::Response<Body> {
    with_retry_after(error_response(http::StatusCode::TOO_MANY_REQUESTS, "throttled", why))
}

/// Adds `Retry-After` to a 429 that has none (a runtime's own throttles).
fn with_retry_after(mut resp: http::Response<Body>) -> http::Response<Body> {
    if resp.status() == http::StatusCode::TOO_MANY_REQUESTS && !resp.headers().contains_key(http::header::RETRY_AFTER) {
        resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static(RETRY_AFTER_S));
    }
    resp
}

/// How deep sequences may nest (a sequence among another's steps).
const MAX_SEQUENCE_DEPTH: u32 = 8;
/// Largest response of a step handed to the next one (Lambda's payload limit).
const MAX_STEP_BYTES: usize = 6 * 1024 * 1024;

/// Namespace -> function name -> slot; nested so look-ups borrow `&str` keys.
type Table = HashMap<String, HashMap<String, Arc<Slot>>>;

#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one running invocation from its start until it is recorded, or until it is dropped
/// unrecorded (the caller went away before the runtime took over), so `drain` never waits on
/// an invocation that no longer exists.
struct InFlightGuard {
    in_flight: Arc<InFlight>,
    instances: hangar_meter::Gauge,
}

impl InFlightGuard {
    fn enter(in_flight: &Arc<InFlight>, metrics: &FunctionMetrics) -> Self {
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        metrics.instances.inc();
        InFlightGuard { in_flight: in_flight.clone(), instances: metrics.instances.clone() }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.instances.dec();
        if self.in_flight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.in_flight.idle.notify_waiters();
        }
    }
}

/// A namespace's invocations running now, and its own limit (0: the server's).
#[derive(Default)]
struct NamespaceLoad {
    active: AtomicU32,
    limit: AtomicU32,
}

/// One admitted invocation: counted against its function's reserved concurrency and its
/// namespace's limit until dropped.
struct Admission {
    function: Arc<AtomicU32>,
    namespace: Arc<NamespaceLoad>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.function.fetch_sub(1, Ordering::AcqRel);
        self.namespace.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// See the module docs.
pub struct Scheduler {
    runtimes: HashMap<RuntimeKind, Arc<dyn Runtime>>,
    table: RwLock<Table>,
    /// Host names functions claim (`--host`) → (namespace, name); written with `table` held.
    hosts: RwLock<HashMap<String, (String, String)>>,
    /// Invocations running per namespace, against `namespace_limit`.
    namespaces: RwLock<HashMap<String, Arc<NamespaceLoad>>>,
    namespace_limit: u32,
    meter: Meter,
    in_flight: Arc<InFlight>,
    max_log_bytes: usize,
    code: Option<Arc<dyn CodeSource>>,
    tracer: Arc<hangar_trace::Tracer>,
}

impl Scheduler {
    /// `namespace_limit`: most invocations running at once in one namespace.
    pub fn new(runtimes: Vec<Arc<dyn Runtime>>, meter: Meter, max_log_bytes: usize, namespace_limit: u32) -> Self {
        Scheduler {
            runtimes: runtimes.into_iter().map(|r| (r.kind(), r)).collect(),
            table: RwLock::default(),
            hosts: RwLock::default(),
            namespaces: RwLock::default(),
            namespace_limit,
            meter,
            in_flight: Arc::default(),
            max_log_bytes,
            code: None,
            tracer: Arc::new(hangar_trace::Tracer::off()),
        }
    }

    /// Where invocations' spans go (tracing is off without one).
    pub fn with_tracer(mut self, tracer: Arc<hangar_trace::Tracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Where revisions get code that is not on this node (deployed through another node).
    pub fn with_code_source(mut self, code: Arc<dyn CodeSource>) -> Self {
        self.code = Some(code);
        self
    }

    /// The runtime for a kind of code, if this build has it.
    pub fn runtime(&self, kind: RuntimeKind) -> Option<&Arc<dyn Runtime>> {
        self.runtimes.get(&kind)
    }

    /// Makes `deployment` the revision that serves its function. Invocations already running on
    /// an older revision finish on it.
    pub fn install(&self, deployment: Deployment) -> Result<(), RuntimeError> {
        let runtime = match deployment.config.runtime {
            RuntimeKind::Sequence => None,
            kind => Some(self.runtimes.get(&kind).ok_or_else(|| RuntimeError::Internal(format!("no runtime `{kind}` in this build")))?.clone()),
        };
        let c = &deployment.config;
        let spec = RevisionSpec {
            namespace: deployment.namespace.clone(),
            name: deployment.name.clone(),
            revision: deployment.revision,
            code_digest: deployment.code_digest.clone(),
            handler: c.handler.clone(),
            max_instances: c.max_instances,
            provisioned: c.provisioned_instances,
            min_instances: c.min_instances,
            pause_after: c.pause_after_ms.map(Duration::from_millis),
            keep_alive: c.keep_alive_ms.map(Duration::from_millis),
            limits: Limits {
                memory_bytes: u64::from(c.memory_mb) << 20,
                timeout: Duration::from_millis(c.timeout_ms),
                env: c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                allow_outbound: c.allow_outbound.clone(),
                max_log_bytes: self.max_log_bytes,
            },
        };
        let metrics = self.meter.function_metrics(&deployment.namespace, &deployment.name);
        let (ns, name) = (deployment.namespace.clone(), deployment.name.clone());
        let eager = runtime.as_ref().is_some_and(|r| r.eager());
        let slot = Arc::new(Slot { deployment, runtime, spec, loaded: OnceCell::new(), metrics, active: Arc::default(), code: self.code.clone() });
        {
            let mut table = self.write_table();
            let slots = table.entry(ns).or_default();
            // Routes only move forward: a revision older than the routed one (a deploy that
            // lost the race to the store, applied late) changes nothing.
            if slots.get(&name).is_some_and(|s| s.deployment.revision > slot.deployment.revision) {
                return Ok(());
            }
            let old = slots.insert(name.clone(), slot.clone());
            let old_hosts = old.as_ref().map_or(&[][..], |o| &o.deployment.config.hosts[..]);
            if !old_hosts.is_empty() || !slot.deployment.config.hosts.is_empty() {
                let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
                let ns = &slot.deployment.namespace;
                // A host another function claimed since stays its.
                hosts.retain(|h, (n, f)| !(old_hosts.contains(h) && n == ns && *f == name));
                for h in &slot.deployment.config.hosts {
                    hosts.insert(h.clone(), (slot.deployment.namespace.clone(), name.clone()));
                }
            }
        }
        if eager && let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = slot.load().await {
                    tracing::warn!(function = %slot.deployment.name, "loading at deploy failed: {e}");
                }
            });
        }
        Ok(())
    }

    /// Stops routing to a function.
    pub fn remove(&self, namespace: &str, name: &str) {
        {
            let mut table = self.write_table();
            if let Some(functions) = table.get_mut(namespace) {
                if let Some(old) = functions.remove(name) {
                    let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
                    hosts.retain(|h, (n, f)| !(old.deployment.config.hosts.contains(h) && n == namespace && f == name));
                }
                if functions.is_empty() {
                    table.remove(namespace);
                }
            }
        }
        self.meter.forget_function(namespace, name);
    }

    /// The slot serving a function, if deployed.
    pub fn route(&self, namespace: &str, name: &str) -> Option<Arc<Slot>> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.get(namespace)?.get(name).cloned()
    }

    /// The slot of the function that claims `host` (`--host`; a port is ignored), if any.
    pub fn by_host(&self, host: &str) -> Option<Arc<Slot>> {
        let (ns, name) = {
            let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
            if hosts.is_empty() {
                return None;
            }
            hosts.get(host)?.clone()
        };
        self.route(&ns, &name)
    }

    fn namespace_load(&self, namespace: &str) -> Arc<NamespaceLoad> {
        let existing = self.namespaces.read().unwrap_or_else(|p| p.into_inner()).get(namespace).cloned();
        existing.unwrap_or_else(|| self.namespaces.write().unwrap_or_else(|p| p.into_inner()).entry(namespace.to_string()).or_default().clone())
    }

    /// Gives a namespace its own concurrency limit (`None`: the server's).
    pub fn set_namespace_limit(&self, namespace: &str, limit: Option<u32>) {
        self.namespace_load(namespace).limit.store(limit.unwrap_or(0), Ordering::Release);
    }

    /// The concurrency limit a namespace is held to now (its own, or the server's).
    pub fn namespace_limit(&self, namespace: &str) -> u32 {
        match self.namespace_load(namespace).limit.load(Ordering::Acquire) {
            0 => self.namespace_limit,
            n => n,
        }
    }

    /// Counts an invocation in, or says why it is throttled.
    fn admit(&self, slot: &Slot) -> Result<Admission, String> {
        let d = &slot.deployment;
        let namespace = self.namespace_load(&d.namespace);
        let before = slot.active.fetch_add(1, Ordering::AcqRel);
        let admission = Admission { function: slot.active.clone(), namespace: namespace.clone() };
        let limit = match namespace.limit.load(Ordering::Acquire) {
            0 => self.namespace_limit,
            own => own,
        };
        if namespace.active.fetch_add(1, Ordering::AcqRel) >= limit {
            return Err(format!(
                "namespace `{}` is running its limit of {limit} invocations at once; retry shortly (`hangar ns set {} --max-concurrency N` raises it)",
                d.namespace, d.namespace
            ));
        }
        if let Some(limit) = d.config.reserved_concurrency.filter(|l| before >= *l) {
            return Err(format!(
                "function `{}` is running its reserved concurrency of {limit} invocations at once; retry shortly or raise reserved_concurrency",
                d.name
            ));
        }
        Ok(admission)
    }

    fn write_table(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every deployed function's slot (for metering).
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.values().flat_map(|f| f.values()).cloned().collect()
    }

    /// How many revisions are resident.
    /// The revisions resident here (`namespace/name@revision`), for placement elsewhere.
    pub fn warm_revisions(&self) -> Vec<String> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table
            .values()
            .flat_map(|f| f.values())
            .filter(|s| s.loaded.initialized())
            .map(|s| format!("{}/{}@{}", s.deployment.namespace, s.deployment.name, s.deployment.revision))
            .collect()
    }

    pub fn loaded_count(&self) -> usize {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.values().flat_map(|f| f.values()).filter(|s| s.loaded.initialized()).count()
    }

    /// Runs one invocation on the slot's revision. Returns the invocation id and the response;
    /// the record is written when the invocation is over.
    pub async fn invoke(&self, slot: &Arc<Slot>, request: http::Request<Body>, trigger: Trigger) -> (String, http::Response<Body>) {
        self.invoke_in(slot, request, trigger, None, 0).await
    }

    fn invoke_in<'a>(
        &'a self,
        slot: &'a Arc<Slot>,
        request: http::Request<Body>,
        trigger: Trigger,
        parent: Option<String>,
        depth: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (String, http::Response<Body>)> + Send + 'a>> {
        Box::pin(async move {
            if slot.deployment.config.runtime == RuntimeKind::Sequence {
                self.run_sequence(slot, request, trigger, parent, depth).await
            } else {
                self.run_one(slot, request, trigger, parent).await
            }
        })
    }

    /// A sequence: each step's response body is the next step's request body (`POST /`);
    /// the first failing step's answer ends it. Its record has no cost of its own (its steps
    /// are billed) and its steps' records name it as their parent.
    async fn run_sequence(
        &self,
        slot: &Arc<Slot>,
        request: http::Request<Body>,
        trigger: Trigger,
        parent: Option<String>,
        depth: u32,
    ) -> (String, http::Response<Body>) {
        let id = uuid::Uuid::now_v7().to_string();
        let started = Instant::now();
        let guard = InFlightGuard::enter(&self.in_flight, &slot.metrics);
        let d = &slot.deployment;
        let mut record = begin_record(d, &id, trigger, StartKind::Warm, parent);
        let step_trigger = if trigger == Trigger::Async { Trigger::Async } else { Trigger::Api };
        let span = begin_span(&self.tracer, &request, trigger);
        let (head, body) = request.into_parts();
        let mut content_type = head.headers.get(http::header::CONTENT_TYPE).cloned();
        let (mut response, mut error) = (None, None);
        let mut data = match read_bounded(body).await {
            Ok(b) => b,
            Err(e) => {
                error = Some(format!("reading the request body: {e}"));
                response = Some(error_response(http::StatusCode::BAD_REQUEST, "invalid_body", error.as_deref().unwrap_or_default()));
                bytes::Bytes::new()
            }
        };
        let mut last_head = None;
        for (n, step) in d.config.steps.iter().enumerate() {
            if response.is_some() {
                break;
            }
            let fail = |status: http::StatusCode, code: &str, msg: String| (Some(error_response(status, code, &msg)), Some(msg));
            let Some(step_slot) = self.route(&d.namespace, step) else {
                (response, error) =
                    fail(http::StatusCode::BAD_GATEWAY, "step_missing", format!("step {} of sequence `{}`: function `{step}` does not exist", n + 1, d.name));
                break;
            };
            if depth >= MAX_SEQUENCE_DEPTH {
                (response, error) = fail(http::StatusCode::LOOP_DETECTED, "too_deep", format!("sequences nest deeper than {MAX_SEQUENCE_DEPTH} at `{step}`"));
                break;
            }
            let mut req = http::Request::new(hangar_runtime::full(std::mem::take(&mut data)));
            *req.method_mut() = http::Method::POST;
            if let Some(ct) = &content_type {
                req.headers_mut().insert(http::header::CONTENT_TYPE, ct.clone());
            }
            // Each step is a child of the sequence's span.
            if let Some((ctx, ..)) = &span {
                ctx.inject(req.headers_mut());
            }
            let (_, resp) = self.invoke_in(&step_slot, req, step_trigger, Some(id.clone()), depth + 1).await;
            let (parts, body) = resp.into_parts();
            let bytes = match read_bounded(body).await {
                Ok(b) => b,
                Err(e) => {
                    (response, error) =
                        fail(http::StatusCode::BAD_GATEWAY, "step_failed", format!("step {} (`{step}`): its response could not be read: {e}", n + 1));
                    break;
                }
            };
            if !parts.status.is_success() {
                error = Some(format!("step {} (`{step}`) answered {}", n + 1, parts.status));
                response = Some(http::Response::from_parts(parts, hangar_runtime::full(bytes)));
                break;
            }
            content_type = parts.headers.get(http::header::CONTENT_TYPE).cloned();
            data = bytes;
            last_head = Some(parts);
        }
        let response = match (response, last_head) {
            (Some(r), _) => r,
            (None, Some(head)) => http::Response::from_parts(head, hangar_runtime::full(data)),
            (None, None) => error_response(http::StatusCode::INTERNAL_SERVER_ERROR, "empty_sequence", "the sequence has no steps"),
        };
        // The steps are billed; the sequence itself costs nothing.
        record.memory_mb = 0;
        record.duration_us = started.elapsed().as_micros() as u64;
        record.ending = hangar_api::Ending {
            outcome: if error.is_some() { hangar_api::Outcome::Error } else { hangar_api::Outcome::Ok },
            status: response.status().as_u16(),
            response_bytes: http_body::Body::size_hint(response.body()).exact().unwrap_or(0),
            error,
            ..Default::default()
        };
        if let Some((ctx, parent, started, faas_trigger)) = span
            && keeps(&self.tracer, &ctx, &record)
        {
            let span = invocation_span(&record, ctx, parent, started, faas_trigger).with("hangar.steps", d.config.steps.len() as u64);
            self.tracer.record(span);
        }
        self.meter.record(&slot.metrics, record);
        drop(guard);
        (id, response)
    }

    async fn run_one(&self, slot: &Arc<Slot>, request: http::Request<Body>, trigger: Trigger, parent: Option<String>) -> (String, http::Response<Body>) {
        let id = uuid::Uuid::now_v7().to_string();
        let started = Instant::now();
        let guard = InFlightGuard::enter(&self.in_flight, &slot.metrics);
        let admission = self.admit(slot);

        let start = if slot.loaded.initialized() { StartKind::Warm } else { StartKind::Cold };
        let d = &slot.deployment;
        let mut record = begin_record(d, &id, trigger, start, parent);
        // This invocation's span: the code sees it as its parent (`traceparent`).
        let mut request = request;
        let span = begin_span(&self.tracer, &request, trigger);
        if let Some((ctx, ..)) = &span {
            ctx.inject(request.headers_mut());
        }
        let trace = span.as_ref().map(|(ctx, ..)| *ctx);
        let admission = match admission {
            Ok(a) => a,
            Err(why) => {
                // Throttled before anything ran: recorded, not billed.
                record.ending = hangar_api::Ending::platform(hangar_api::Outcome::Throttled, 429, why.clone());
                record.duration_us = started.elapsed().as_micros() as u64;
                if let Some((ctx, parent, at, faas_trigger)) = span
                    && keeps(&self.tracer, &ctx, &record)
                {
                    self.tracer.record(invocation_span(&record, ctx, parent, at, faas_trigger));
                }
                self.meter.record(&slot.metrics, record);
                drop(guard);
                return (id, throttled(&why));
            }
        };
        let loaded = slot.load().await;
        let load_time = started.elapsed();
        let finish = {
            let meter = self.meter.clone();
            let metrics = slot.metrics.clone();
            let tracer = self.tracer.clone();
            move |f: hangar_runtime::Finished| {
                drop(admission);
                record.duration_us = started.elapsed().as_micros() as u64;
                record.billed_ms = if f.ending.outcome == hangar_api::Outcome::Throttled { 0 } else { billed_ms(record.duration_us) };
                record.ending = f.ending;
                if let Some(start) = f.start {
                    record.start = start;
                }
                // Loading the revision (compiling, preparing code) is part of a cold start.
                let ready = f.ready_after.map(|r| r + load_time);
                if let Some((ctx, parent, at, faas_trigger)) = span
                    && keeps(&tracer, &ctx, &record)
                {
                    // The invocation first: a failed or slow one keeps how its instance was obtained.
                    tracer.record(invocation_span(&record, ctx, parent, at, faas_trigger));
                    if let Some(ready) = ready {
                        let mut s = hangar_trace::Span::ended(ctx.child(), Some(ctx.span_id), format!("instance {}", record.start), SpanKind::Internal, at);
                        s.end_ns = s.start_ns + ready.as_nanos() as u64;
                        let s = s.with("hangar.instance.start", record.start.to_string()).with("faas.coldstart", record.start.is_cold_start());
                        tracer.record(s.of(workload(&record)));
                    }
                }
                meter.record_started(&metrics, record, ready);
                drop(guard);
            }
        };

        let response = match loaded {
            Ok(loaded) => {
                let loaded = loaded.clone();
                loaded.invoke(hangar_runtime::InvokeInfo { id: id.clone(), trigger, trace }, request, Box::new(finish)).await
            }
            Err(e) => {
                tracing::error!(namespace = %d.namespace, function = %d.name, "loading revision failed: {e}");
                let msg = format!("the function's code could not be loaded: {e}");
                let resp = error_response(http::StatusCode::SERVICE_UNAVAILABLE, "load_failed", &msg);
                finish(hangar_runtime::Finished { ending: hangar_api::Ending::platform(hangar_api::Outcome::Error, 503, msg), start: None, ready_after: None });
                resp
            }
        };
        (id, with_retry_after(response))
    }

    /// Stops everything the runtimes run (after [`Scheduler::drain`]).
    pub async fn shutdown(&self) {
        self.write_table().clear();
        for runtime in self.runtimes.values() {
            runtime.shutdown().await;
        }
    }

    /// Waits until no invocation is running, or the timeout passes. Returns how many remain.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.in_flight.idle.notified();
            let n = self.in_flight.count.load(Ordering::Acquire);
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight.count.load(Ordering::Acquire);
            }
        }
    }
}

/// Functions' warm instances are metered by time: provisioned ones as running, paused ones as
/// paused (their requests are metered by their records).
impl hangar_meter::usage::Fleet for Scheduler {
    fn running(&self) -> Vec<hangar_meter::usage::Running> {
        self.slots()
            .iter()
            .filter_map(|slot| {
                let c = slot.instances()?;
                let d = slot.deployment();
                Some(hangar_meter::usage::Running {
                    namespace: d.namespace.clone(),
                    kind: hangar_api::WorkloadKind::Function,
                    name: d.name.clone(),
                    running: u64::from(c.provisioned),
                    paused: u64::from(c.paused),
                    cpus_milli: 0,
                    memory_mb: 0,
                })
            })
            .collect()
    }
}

/// Functions' gauges for the metric history: invocations in flight, and idle and paused
/// instances (process runtimes).
impl hangar_meter::history::GaugeSource for Scheduler {
    fn gauges(&self) -> Vec<(hangar_api::traces::WorkloadRef, hangar_meter::history::Gauges)> {
        self.slots()
            .iter()
            .map(|slot| {
                let c = slot.instances().unwrap_or_default();
                let in_flight = slot.active.load(Ordering::Acquire);
                let d = slot.deployment();
                let w = hangar_api::traces::WorkloadRef { kind: hangar_api::WorkloadKind::Function, namespace: d.namespace.clone(), name: d.name.clone() };
                (w, hangar_meter::history::Gauges([in_flight, c.idle, c.paused, 0, 0]))
            })
            .collect()
    }
}
