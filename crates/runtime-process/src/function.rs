//! A resident process function: its zygote, its idle instances and the invocation path.
//!
//! The zygote is a prewarmed one of the runtime's pool, specialized to the function, when one
//! is ready; otherwise it is started for the function.
//!
//! One invocation at a time per instance (the Lambda model). A request takes an idle instance
//! (warm; `resumed` if it was paused, `provisioned` if it is one of those), else the spare
//! sandbox made ahead of demand (`prewarmed`), else forks a new one (`cold`) while fewer than
//! `max_instances` exist; beyond that it waits for an instance to come free, up to the
//! function's timeout, and only then is throttled (429). Idle instances are paused (cgroup
//! freezer) after the pause delay and reaped after the keep-alive; provisioned instances are
//! made at load, never paused or reaped, and replaced when they end. An instance that timed
//! out, crashed or ran out of memory is killed, and the next request gets a fresh one.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hangar_api::{Outcome, RuntimeKind, StartKind, Trigger, billed_ms, now_ms};
use hangar_lambda::mapping;
use hangar_lambda::runtime_api::{Answer, Invocation};
use hangar_runtime::{Body, Finished, InvokeInfo, LogBuffer, OnFinish, RevisionSpec, error_response, full};
use hangar_scheduler::capacity::{self, Capacity};
use hangar_scheduler::reaping::{self, Idle};
use http::StatusCode;
use http_body_util::BodyExt;

use crate::Host;
use crate::instance::{Instance, Ran};
use crate::pod::{INIT_TIMEOUT, Pod, PodError, PodSpec};

/// See the module docs.
pub struct Function {
    inner: Arc<Inner>,
    reaper: tokio::task::JoinHandle<()>,
}

struct Inner {
    host: Arc<Host>,
    kind: RuntimeKind,
    spec: RevisionSpec,
    pod_id: String,
    pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    idle: Mutex<Vec<Instance>>,
    /// One sandbox made ahead of demand, so a cold start skips making namespaces and cgroups;
    /// for nodejs and provided its runtime is already started (a prewarmed instance, as Lambda's
    /// proactive initialization); python3's is a fork of the zygote that already imported.
    spare: Mutex<Option<Instance>>,
    refilling: std::sync::atomic::AtomicBool,
    /// Instances that exist (idle, busy, starting or spare), under the scheduler's cap.
    capacity: Capacity,
    /// Provisioned instances that exist.
    provisioned: Arc<AtomicU32>,
    /// How many there should be: the revision's, until changed (adaptive mode).
    provisioned_target: AtomicU32,
    provisioning: std::sync::atomic::AtomicBool,
    /// Instances running an invocation.
    busy: AtomicU32,
    /// Woken when an instance goes back to idle.
    freed: tokio::sync::Notify,
    seq: AtomicU64,
    /// Its code failed to initialize in a prewarmed zygote: later zygotes are its own, so a
    /// broken revision does not use up the runtime's pool (and the count does not depend on
    /// how fast the pool refills).
    init_failed: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Function {
    pub(crate) fn new(host: Arc<Host>, kind: RuntimeKind, spec: RevisionSpec) -> Function {
        let pod_id = format!("{}-{}", host.next_id(), spec.name);
        let target = spec.provisioned;
        let capacity = Capacity::new(spec.max_instances);
        let inner = Arc::new(Inner {
            host,
            kind,
            spec,
            pod_id,
            pod: tokio::sync::Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            spare: Mutex::new(None),
            refilling: std::sync::atomic::AtomicBool::new(false),
            capacity,
            provisioned: Arc::new(AtomicU32::new(0)),
            provisioned_target: AtomicU32::new(target),
            provisioning: Default::default(),
            busy: AtomicU32::new(0),
            freed: tokio::sync::Notify::new(),
            seq: AtomicU64::new(0),
            init_failed: Default::default(),
        });
        let reaper = tokio::spawn(reap(Arc::downgrade(&inner)));
        Function { inner, reaper }
    }

    /// Starts the zygote ahead of the first request, and the provisioned instances; failures
    /// are reported on invocations.
    pub(crate) fn warm_up_in_background(&self) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if inner.pod().await.is_ok() {
                inner.provision().await;
                inner.refill();
            }
        });
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        self.reaper.abort();
        // Idle instances die with their handles; the zygote with its last reference.
        lock(&self.inner.idle).clear();
        lock(&self.inner.spare).take();
    }
}

/// Four times a second: applies the scheduler's [`reaping::decide`] to the idle instances
/// (pause, stop, unprovision, keep in LIFO order) and makes instances it asks for.
async fn reap(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let keep = inner.spec.keep_alive.unwrap_or(inner.host.keep_alive);
        let pause = inner.spec.pause_after.unwrap_or(inner.host.pause_after);
        let (expired, provision) = {
            let mut idle = lock(&inner.idle);
            let seen: Vec<Idle> =
                idle.iter().map(|i| Idle { idle_for: i.last_used.elapsed(), provisioned: i.is_provisioned(), paused: i.is_paused() }).collect();
            let d = reaping::decide(&reaping::Snapshot {
                idle: &seen,
                live: inner.capacity.live(),
                min_instances: inner.spec.min_instances,
                provisioned: inner.provisioned.load(Ordering::Acquire),
                provisioned_target: inner.provisioned_target.load(Ordering::Acquire),
                keep_alive: keep,
                pause_after: pause,
            });
            let mut slots: Vec<Option<Instance>> = std::mem::take(&mut *idle).into_iter().map(Some).collect();
            for &i in &d.unprovision {
                if let Some(inst) = slots[i].as_mut() {
                    inst.unprovision();
                }
            }
            for &i in &d.pause {
                if let Some(inst) = slots[i].as_mut() {
                    inst.pause();
                }
            }
            *idle = d.keep.iter().filter_map(|&i| slots[i].take()).collect();
            let expired: Vec<Instance> = d.stop.iter().filter_map(|&i| slots[i].take()).collect();
            (expired, d.provision)
        };
        if !expired.is_empty() {
            tracing::debug!(function = %inner.spec.name, reaped = expired.len(), "idle instances reaped");
        }
        drop(expired);
        if provision && !inner.provisioning.load(Ordering::Acquire) {
            let inner = inner.clone();
            tokio::spawn(async move { inner.provision().await });
        }
    }
}

/// What the caller gets and what is recorded, before logs are attached.
struct Reply {
    response: http::Response<Body>,
    outcome: Outcome,
    error: Option<String>,
}

/// The function's own error, in Lambda's shape: 502 with the error body; recorded as
/// `<errorType>: <errorMessage>`, after `init error: ` when it happened during init, followed
/// by `logs` when there are any.
fn function_error(err: &serde_json::Value, init: bool, logs: &str) -> Reply {
    let mut response = http::Response::new(full(Bytes::from(err.to_string())));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response.headers_mut().insert(hangar_api::FUNCTION_ERROR_HEADER, http::HeaderValue::from_static("Unhandled"));
    Reply { response, outcome: Outcome::Error, error: Some(mapping::error_record(err, init, logs)) }
}

fn platform_error(status: StatusCode, code: &str, outcome: Outcome, message: String) -> Reply {
    Reply { response: error_response(status, code, &message), outcome, error: Some(message) }
}

impl Inner {
    /// The running zygote, started (again) if needed.
    async fn pod(&self) -> Result<Arc<Pod>, PodError> {
        if self.host.stopping() {
            return Err(PodError::Stopping);
        }
        let mut pod = self.pod.lock().await;
        if let Some(p) = pod.as_ref().filter(|p| p.alive()) {
            return Ok(p.clone());
        }
        if let Some(dead) = pod.take() {
            // A zygote that ended (crashed, killed) takes its instances along; clear its
            // container away before starting the next under the same name.
            tracing::warn!(function = %self.spec.name, "the zygote ended; starting it again");
            dead.stop().await;
        }
        let spec = self.pod_spec();
        let limits = self.host.instance_limits(self.spec.limits.memory_bytes);
        let prewarmed = if self.prewarmable() { self.host.take_prewarmed(self.kind) } else { None };
        let started = match prewarmed {
            Some(p) => match p.specialize(&spec, limits).await {
                Ok(()) => p,
                // The function's own init error is its answer; a platform failure falls back
                // to a zygote of its own.
                Err(e @ PodError::Init { .. }) => {
                    self.init_failed.store(true, Ordering::Release);
                    return Err(e);
                }
                Err(e @ PodError::Stopping) => return Err(e),
                Err(PodError::Failed { message, .. }) => {
                    tracing::warn!(function = %self.spec.name, "specializing a prewarmed zygote failed ({message}); starting one");
                    p.stop().await;
                    Pod::start(&self.host, spec, limits).await?
                }
            },
            None => Pod::start(&self.host, spec, limits).await?,
        };
        *pod = Some(started.clone());
        Ok(started)
    }

    /// Whether a prewarmed zygote can serve this function: not when its environment sets what
    /// an interpreter reads only as it starts (`PYTHON*`, the dynamic loader's `LD_*`), since a
    /// prewarmed Python started without them, and not after its code failed to initialize in
    /// one.
    fn prewarmable(&self) -> bool {
        if self.init_failed.load(Ordering::Acquire) {
            return false;
        }
        self.kind != RuntimeKind::Python3
            || !self.spec.limits.env.iter().any(|(k, _)| (k.starts_with("PYTHON") && k != "PYTHONDONTWRITEBYTECODE") || k.starts_with("LD_"))
    }

    fn pod_spec(&self) -> PodSpec {
        let s = &self.spec;
        let h = &self.host;
        let mut env: Vec<(String, String)> = s.limits.env.clone();
        let handler = s.handler.clone().unwrap_or_default();
        let execution_env = match self.kind {
            RuntimeKind::Python3 => format!("AWS_Lambda_python{}", h.python_version()),
            RuntimeKind::Nodejs => "AWS_Lambda_nodejs".to_string(),
            _ => "AWS_Lambda_provided".to_string(),
        };
        let reserved = [
            ("_HANDLER", handler),
            ("LAMBDA_TASK_ROOT", "/var/task".into()),
            ("LAMBDA_RUNTIME_DIR", "/opt/hangar".into()),
            ("AWS_LAMBDA_FUNCTION_NAME", s.name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", s.revision.to_string()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", (s.limits.memory_bytes >> 20).to_string()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/hangar/{}/{}", s.namespace, s.name)),
            ("AWS_REGION", h.region.clone()),
            ("AWS_DEFAULT_REGION", h.region.clone()),
            ("AWS_EXECUTION_ENV", execution_env),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
            ("HANGAR_NAMESPACE", s.namespace.clone()),
            ("TZ", ":UTC".into()),
            ("LANG", "C.UTF-8".into()),
            ("HOME", "/tmp".into()),
            ("PATH", h.path_env()),
            ("PYTHONDONTWRITEBYTECODE", "1".into()),
        ];
        env.retain(|(k, _)| !reserved.iter().any(|(r, _)| r == k));
        env.extend(reserved.into_iter().map(|(k, v)| (k.to_string(), v)));
        // Node trusts only its bundled roots; give it the machine's store (bound into every
        // instance), which Python and native clients already use, unless the function chose.
        const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";
        if self.kind == RuntimeKind::Nodejs && !env.iter().any(|(k, _)| k == "NODE_EXTRA_CA_CERTS") && std::path::Path::new(SYSTEM_CAS).is_file() {
            env.push(("NODE_EXTRA_CA_CERTS".into(), SYSTEM_CAS.into()));
        }
        let (mode, argv) = match self.kind {
            RuntimeKind::Python3 => ("python", Vec::new()),
            RuntimeKind::Nodejs => ("exec", vec![h.node_exe().unwrap_or_default(), "/opt/hangar/bootstrap.js".into()]),
            _ => ("exec", vec!["/var/task/bootstrap".into()]),
        };
        PodSpec {
            id: self.pod_id.clone(),
            mode,
            argv,
            env,
            code: h.code_path(&s.code_digest),
            memory_bytes: s.limits.memory_bytes,
            max_instances: s.max_instances,
        }
    }

    /// Makes provisioned instances until the function has its number of them, then plain
    /// ones until it has `min_instances`.
    async fn provision(self: &Arc<Self>) {
        if self.provisioning.swap(true, Ordering::AcqRel) {
            return;
        }
        loop {
            let provisioned = self.provisioned.load(Ordering::Acquire) < self.provisioned_target.load(Ordering::Acquire);
            if !provisioned && self.capacity.live() >= self.spec.min_instances {
                break;
            }
            let Some(room) = self.capacity.reserve() else { break };
            let mut i = match self.prepare().await {
                Ok(i) => i,
                Err(o) => {
                    if !self.host.stopping() {
                        tracing::warn!(function = %self.spec.name, "making a provisioned instance failed: {}", o.error.unwrap_or_default());
                    }
                    break;
                }
            };
            i.count_in(room);
            if let Err(e) = i.start().await {
                tracing::warn!(function = %self.spec.name, "starting a provisioned instance failed: {e}");
                break;
            }
            if provisioned {
                i.provision(self.provisioned.clone());
            }
            lock(&self.idle).push(i);
            self.freed.notify_one();
        }
        self.provisioning.store(false, Ordering::Release);
    }

    /// The function's instances by state.
    fn counts(&self) -> hangar_api::InstanceCounts {
        let idle = lock(&self.idle);
        let paused = idle.iter().filter(|i| i.is_paused()).count() as u32;
        hangar_api::InstanceCounts {
            busy: self.busy.load(Ordering::Acquire),
            idle: idle.len() as u32 - paused,
            paused,
            provisioned: self.provisioned.load(Ordering::Acquire),
            spare: u32::from(lock(&self.spare).is_some()),
        }
    }

    /// Makes the next spare sandbox in the background, if there is room and none is coming.
    fn refill(self: &Arc<Self>) {
        if lock(&self.spare).is_some() || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            // Without room, or when the instance cannot be made, its room is given back.
            if let Some(room) = inner.capacity.reserve()
                && let Ok(mut i) = inner.prepare().await
            {
                i.count_in(room);
                // An exec'd runtime (node, a bootstrap) starts in milliseconds to tens of them,
                // and its init code runs once per instance anyway: run it now.
                let ready = inner.kind == RuntimeKind::Python3 || i.start().await.is_ok();
                if ready {
                    *lock(&inner.spare) = Some(i);
                }
            }
            inner.refilling.store(false, Ordering::Release);
        });
    }

    /// A new sandboxed instance from the zygote (started once the zygote is), not yet started.
    async fn prepare(&self) -> Result<Instance, Reply> {
        let pod = match self.pod().await {
            Ok(p) => p,
            Err(PodError::Init { error, logs }) => return Err(function_error(&error, true, &logs)),
            Err(PodError::Stopping) => {
                return Err(platform_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stopping",
                    Outcome::Error,
                    "the server is shutting down; retry once it is back".into(),
                ));
            }
            Err(PodError::Failed { message, logs }) => {
                tracing::error!(function = %self.spec.name, "starting the zygote failed: {message}\n{logs}");
                let detail = if logs.is_empty() { message } else { format!("{message}\n{logs}") };
                return Err(platform_error(
                    StatusCode::BAD_GATEWAY,
                    "init_failed",
                    Outcome::Error,
                    format!("the function's runtime could not start: {detail}"),
                ));
            }
        };
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.pod_id);
        let mut env = serde_json::json!({
            "AWS_LAMBDA_RUNTIME_API": crate::pod::RUNTIME_API,
            "AWS_LAMBDA_LOG_STREAM_NAME": format!("{}/[{}]{}", hangar_api::rfc3339(now_ms()).get(..10).unwrap_or("").replace('-', "/"), self.spec.revision, id),
        });
        let egress = (!self.spec.limits.allow_outbound.is_empty()).then(|| Arc::new(self.spec.limits.allow_outbound.clone()));
        if egress.is_some() {
            let proxy = format!("http://{}", crate::pod::EGRESS_PROXY);
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env[k] = serde_json::Value::String(proxy.clone());
            }
            for k in ["NO_PROXY", "no_proxy"] {
                env[k] = serde_json::Value::String(crate::pod::RUNTIME_API.to_string());
            }
        }
        pod.prepare(id, env, self.host.tmp_bytes, egress).await.map_err(|e| {
            tracing::error!(function = %self.spec.name, "starting an instance failed: {e}");
            platform_error(StatusCode::BAD_GATEWAY, "init_failed", Outcome::Error, format!("a new instance could not start: {e}"))
        })
    }

    /// Takes an idle instance (warm), the spare sandbox, or forks a new one if the function may
    /// have one more (cold).
    async fn acquire(self: &Arc<Self>) -> Result<(Instance, StartKind), Reply> {
        // At max_instances a request waits for one to come free, as long as it could run.
        let give_up = tokio::time::Instant::now() + self.spec.limits.timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(found) = self.try_acquire().await {
                return found;
            }
            let max = self.capacity.max();
            let waited = tokio::select! {
                _ = &mut freed => true,
                // Instances that end (rather than return) free room too.
                _ = tokio::time::sleep(Duration::from_millis(20)) => true,
                _ = tokio::time::sleep_until(give_up) => false,
            };
            if !waited {
                return Err(platform_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    Outcome::Throttled,
                    format!("all {max} instances of the function stayed busy for its whole timeout; retry later or raise max_instances"),
                ));
            }
        }
    }

    /// An idle instance, the spare, or a new one ([`capacity::pick`]); `None` when the cap
    /// leaves no room.
    async fn try_acquire(self: &Arc<Self>) -> Option<Result<(Instance, StartKind), Reply>> {
        loop {
            let idle = lock(&self.idle).pop();
            let spare = idle.is_none().then(|| lock(&self.spare).take().filter(Instance::zygote_alive)).flatten();
            match capacity::pick(capacity::Free { idle: idle.is_some(), spare: spare.is_some() }) {
                capacity::Pick::Idle => {}
                capacity::Pick::Spare | capacity::Pick::New => return self.start_instance(spare).await,
            }
            let Some(mut i) = idle else { unreachable!("picked an idle instance") };
            if !i.zygote_alive() {
                // It died with its zygote: drop it and look further.
                continue;
            }
            let start = match i.resume() {
                Ok(true) => StartKind::Resumed,
                Ok(false) if i.is_provisioned() => StartKind::Provisioned,
                Ok(false) => StartKind::Warm,
                Err(e) => {
                    tracing::warn!(function = %self.spec.name, "resuming a paused instance failed: {e}");
                    continue;
                }
            };
            return Some(Ok((i, start)));
        }
    }

    /// Starts the spare, or a new instance if the cap leaves room.
    async fn start_instance(self: &Arc<Self>, spare: Option<Instance>) -> Option<Result<(Instance, StartKind), Reply>> {
        let mut start = StartKind::Prewarmed;
        let mut instance = match spare {
            Some(i) => i,
            None => {
                start = StartKind::Cold;
                let room = self.capacity.reserve()?;
                match self.prepare().await {
                    Ok(mut i) => {
                        i.count_in(room);
                        i
                    }
                    Err(o) => return Some(Err(o)),
                }
            }
        };
        Some(match instance.start().await {
            Ok(()) => Ok((instance, start)),
            Err(e) => Err(platform_error(StatusCode::BAD_GATEWAY, "init_failed", Outcome::Error, format!("a new instance could not start: {e}"))),
        })
    }

    async fn run(self: Arc<Self>, info: InvokeInfo, request: http::Request<Body>) -> (Reply, String, bool, StartKind, Option<Duration>) {
        let began_run = Instant::now();
        let mut logs = LogBuffer::new(self.spec.limits.max_log_bytes);
        let (head, body) = request.into_parts();
        let request_id = head.extensions.get::<hangar_runtime::RequestId>().map_or_else(|| info.id.clone(), |r| r.0.clone());
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let o = platform_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Outcome::Error, format!("reading the request body: {e}"));
                return (o, String::new(), false, StartKind::Warm, None);
            }
        };
        let source = match info.trigger {
            Trigger::Api | Trigger::Async => mapping::Source::Invoke,
            Trigger::Http => mapping::Source::Url,
        };
        let cx = mapping::UrlContext { request_id: &request_id, function: &self.spec.name, time_ms: now_ms() };
        let payload = match mapping::event(source, &head, body, cx) {
            Ok(p) => p,
            Err(e) => {
                return (
                    platform_error(StatusCode::BAD_REQUEST, "invalid_payload", Outcome::Error, e.to_string()),
                    String::new(),
                    false,
                    StartKind::Warm,
                    None,
                );
            }
        };

        let (mut instance, start) = match self.acquire().await {
            Ok(x) => x,
            Err(o) => return (o, String::new(), false, StartKind::Cold, None),
        };
        let acquired = began_run.elapsed();
        self.busy.fetch_add(1, Ordering::AcqRel);
        let timeout = self.spec.limits.timeout;
        let deadline_ms = now_ms() + timeout.as_millis() as i64;
        let inv = Invocation {
            trace_id: info.trace.map_or_else(|| mapping::trace_id(deadline_ms, &request_id), |t| t.xray()),
            request_id: request_id.clone(),
            payload,
            deadline_ms,
            function_arn: mapping::function_arn(&self.host.region, &self.spec.namespace, &self.spec.name),
            client_context: head.headers.get("x-amz-client-context").and_then(|v| v.to_str().ok()).map(String::from),
            cognito_identity: None,
        };
        let began = Instant::now();
        let now = tokio::time::Instant::now();
        let deadline = now + timeout;
        let init_deadline = (instance.created + INIT_TIMEOUT).into();
        let ran = instance.run(inv, deadline, std::cmp::min(init_deadline, deadline), &mut logs).await;
        let elapsed = began.elapsed();
        let healthy = matches!(ran, Ran::Answer(Answer::Response(_) | Answer::Error(_)));
        let o = match ran {
            Ran::Answer(Answer::Response(bytes)) => match mapping::result(source, bytes) {
                Ok(resp) => Reply { response: resp.map(full), outcome: Outcome::Ok, error: None },
                Err(e) => platform_error(StatusCode::BAD_GATEWAY, "invalid_result", Outcome::Error, e.to_string()),
            },
            Ran::Answer(Answer::Error(err)) => function_error(&err, false, ""),
            Ran::Answer(Answer::InitError(err)) => function_error(&err, true, ""),
            Ran::Timeout => {
                logs.append(format!("[hangar] Task timed out after {} ms\n", timeout.as_millis()).as_bytes());
                platform_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    Outcome::Timeout,
                    format!("the function did not answer within its timeout of {} ms", timeout.as_millis()),
                )
            }
            Ran::InitTimeout => {
                let message = format!(
                    "the runtime did not ask for an invocation within {} s of starting (does the bootstrap poll the Runtime API at AWS_LAMBDA_RUNTIME_API?)",
                    INIT_TIMEOUT.as_secs()
                );
                function_error(&hangar_lambda::error_body("Runtime.InitTimeout", message), true, "")
            }
            Ran::Exited { out_of_memory: true, .. } => platform_error(
                StatusCode::BAD_GATEWAY,
                "out_of_memory",
                Outcome::OutOfMemory,
                format!("the function ran out of memory (limit {} MiB) and was stopped; raise memory_mb or use less", self.spec.limits.memory_bytes >> 20),
            ),
            Ran::Exited { how, .. } => function_error(&hangar_lambda::error_body("Runtime.ExitError", format!("{how} before answering")), false, ""),
        };
        if matches!(start, StartKind::Cold | StartKind::Prewarmed) {
            // The next spare is made once this start is answered, not competing with it.
            self.refill();
        }
        let (text, truncated) = self.frame_logs(&request_id, &mut logs, elapsed, &instance, start);
        // A cold instance was ready once its runtime initialized.
        let ready_after = acquired + instance.init.filter(|_| start.is_cold_start()).unwrap_or_default();
        self.busy.fetch_sub(1, Ordering::AcqRel);
        if healthy {
            instance.last_used = Instant::now();
            lock(&self.idle).push(instance);
        } else {
            drop(instance);
        }
        self.freed.notify_one();
        (o, text, truncated, start, Some(ready_after))
    }

    /// The invocation's output framed in Lambda's log lines.
    fn frame_logs(&self, id: &str, logs: &mut LogBuffer, elapsed: Duration, instance: &Instance, start: StartKind) -> (String, bool) {
        let (body, truncated) = logs.take();
        let report = mapping::Report {
            revision: self.spec.revision,
            elapsed,
            billed_ms: billed_ms(elapsed.as_micros() as u64),
            memory_mb: self.spec.limits.memory_bytes >> 20,
            max_memory_used_mb: instance.peak_memory().div_ceil(1 << 20),
            init: instance.init.filter(|_| start.is_cold_start()),
        };
        (mapping::log_frame(id, &body, &report), truncated)
    }
}

#[async_trait::async_trait]
impl hangar_runtime::Loaded for Function {
    fn instances(&self) -> Option<hangar_api::InstanceCounts> {
        Some(self.inner.counts())
    }

    fn set_provisioned(&self, n: u32) -> bool {
        self.inner.provisioned_target.store(n.min(self.inner.spec.max_instances), Ordering::Release);
        // The reaper makes the missing ones within a quarter second, and releases the extra.
        true
    }

    async fn invoke(&self, info: InvokeInfo, request: http::Request<Body>, on_finish: OnFinish) -> http::Response<Body> {
        // The invocation runs to its end in its own task, so a caller that goes away neither
        // leaves an instance half-used nor loses the record.
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let (o, logs, logs_truncated, start, ready_after) = inner.run(info, request).await;
            let (parts, body) = o.response.into_parts();
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let ending = hangar_api::Ending {
                outcome: o.outcome,
                status: parts.status.as_u16(),
                response_bytes: bytes.len() as u64,
                error: o.error,
                logs,
                logs_truncated,
            };
            on_finish(Finished { ending, start: Some(start), ready_after });
            http::Response::from_parts(parts, full(bytes))
        });
        match task.await {
            Ok(resp) => resp,
            Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("the invocation failed inside Hangar: {e}")),
        }
    }
}
