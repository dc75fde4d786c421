//! The durable queue of asynchronous invocations.
//!
//! `accept` returns only once the event is in the store (accepts arriving together share one
//! transaction: a group commit), so an accepted event survives a crash. Unfinished events live
//! in memory too, ordered by when their next attempt is due; a dispatcher runs due ones through
//! the scheduler (at most `concurrency` at once) and records each attempt. A 2xx answer
//! finishes the event; a throttled one (429) is tried again soon without counting; any other
//! failure is retried after the function's backoff until its retries are used up or the event
//! is too old, and then the event is given up: kept as `failed` (the dead-letter list) and,
//! when the function names an `on_failure` function, sent there as a new event carrying a
//! Lambda-style destination record.
//!
//! What survives a crash: an accepted event is run at least once. Each attempt is in the store
//! as started (`running`, with an `interrupted` attempt) before it runs and is replaced by its
//! outcome when it ends; after a restart every event not recorded as finished is run again, the
//! interrupted attempt kept and counted. Every attempt of an event is the same Lambda request
//! (`context.aws_request_id` is the event's id), so a handler can deduplicate. An idempotency
//! key deduplicates acceptance, not execution.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hangar_api::events::{AsyncConfig, AsyncRecord, AsyncState, Attempt, TargetKind};
use hangar_api::traces::SpanKind;
use hangar_api::{Outcome, Trigger, now_ms, rfc3339};
use hangar_scheduler::Scheduler;
use hangar_store::{Store, StoreError};
use hangar_trace::{Span, SpanContext};
use http_body_util::BodyExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The store could not persist it; nothing was queued.
    #[error("the event could not be persisted ({0}); nothing was queued, send it again")]
    Store(String),
    /// The server is stopping.
    #[error("the server is shutting down; nothing was queued, send the event again once it is back")]
    Stopping,
    /// The queue holds as many unfinished events (or payload bytes) as it may.
    #[error(
        "the asynchronous queue is full: {events} unfinished events with {bytes} bytes of payload wait (this server holds at most {max_events} events and {max_bytes} bytes); nothing was queued, send it again later"
    )]
    Full { events: usize, bytes: usize, max_events: usize, max_bytes: usize },
}

/// How much the queue holds at most: unfinished events, and their payloads' bytes (kept in
/// memory until they finish). Accepts beyond either are refused with [`EventsError::Full`].
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits { max_events: 100_000, max_bytes: 256 << 20 }
    }
}

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: TargetKind,
    pub name: String,
    /// Where a service receives it.
    pub path: Option<String>,
}

impl Target {
    pub fn function(name: &str) -> Target {
        Target { kind: TargetKind::Function, name: name.to_string(), path: None }
    }

    pub fn service(name: &str, path: &str) -> Target {
        Target { kind: TargetKind::Service, name: name.to_string(), path: Some(path.to_string()) }
    }
}

/// Why a service could not take an event.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// No such service (any more).
    #[error("service `{0}` does not exist")]
    Missing(String),
    /// It exists but did not answer.
    #[error("{0}")]
    Failed(String),
}

/// Hands events to services: POST `path` on a ready instance (`hangar_service::proxy::EventSink`).
#[async_trait::async_trait]
pub trait ServiceSink: Send + Sync + 'static {
    async fn deliver(
        &self,
        namespace: &str,
        service: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        trace: Option<SpanContext>,
    ) -> Result<(http::StatusCode, Bytes), SinkError>;
}

/// Where a function's attempt runs in a cluster: placement may send it to another node.
#[async_trait::async_trait]
pub trait Placement: Send + Sync + 'static {
    /// Runs the attempt (`payload`, the event's id as its Lambda request id) on another node
    /// when placement says so, and returns its invocation id, status and answer; `None`: it
    /// runs here.
    async fn run_elsewhere(
        &self,
        slot: &hangar_scheduler::Slot,
        request_id: &str,
        payload: Bytes,
        content_type: Option<&str>,
        trace: Option<SpanContext>,
    ) -> Option<(Option<String>, http::StatusCode, Bytes)>;
}

/// How much of a failed attempt's answer goes into the destination record.
const MAX_RESPONSE_KEPT: usize = 256 * 1024;
/// Most events taken off the due list per dispatcher round.
const ROUND: usize = 256;
/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct AsyncQueue {
    inner: Arc<Inner>,
}

struct Inner {
    scheduler: Arc<Scheduler>,
    services: std::sync::OnceLock<Arc<dyn ServiceSink>>,
    /// In a cluster: where functions' attempts run.
    placement: std::sync::OnceLock<Arc<dyn Placement>>,
    /// Where the spans of queueing and attempts go.
    tracer: std::sync::OnceLock<Arc<hangar_trace::Tracer>>,
    /// The writers; an event's writes all go to one of them (by its id), in order.
    writes: Vec<mpsc::UnboundedSender<Write>>,
    state: Mutex<State>,
    wake: Notify,
    permits: Arc<Semaphore>,
    concurrency: u32,
    limits: QueueLimits,
    stopping: AtomicBool,
    store: Arc<dyn Store>,
    /// This node's id: whose events these are.
    node: String,
    /// Cut off from the cluster: no attempt starts (other nodes may take the events over).
    fenced: AtomicBool,
    /// Events given up per function since the metric history last sampled.
    dead: Mutex<HashMap<(String, String), u32>>,
}

#[derive(Default)]
struct State {
    /// (due time in Unix ms, id) of queued events.
    due: BinaryHeap<Reverse<(i64, String)>>,
    /// Every unfinished event, queued or running.
    events: HashMap<String, AsyncRecord>,
    /// The bytes of their payloads.
    bytes: usize,
}

enum Write {
    New(AsyncRecord, oneshot::Sender<Result<(String, bool), String>>),
    Changed(AsyncRecord),
    /// A change the sender waits for: in the store once the reply comes.
    Durable(AsyncRecord, oneshot::Sender<()>),
    Flush(oneshot::Sender<()>),
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AsyncQueue {
    /// Loads every unfinished event from the store (all due now, with the attempts they had)
    /// and starts the writer. Nothing runs before [`AsyncQueue::run`], which is called once
    /// the functions are routable again.
    /// Events from before the restart are all loaded, even beyond `limits`; new ones wait for
    /// room.
    /// `node` is the id of this node: the events it accepts are its own until it is lost.
    pub async fn open(store: Arc<dyn Store>, scheduler: Arc<Scheduler>, concurrency: u32, limits: QueueLimits, node: &str) -> Result<AsyncQueue, StoreError> {
        let unfinished = store.unfinished_async(node).await?;
        let (writes, receivers): (Vec<_>, Vec<_>) = (0..store.parallel_writers().max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let concurrency = concurrency.max(1);
        let inner = Arc::new(Inner {
            scheduler,
            services: std::sync::OnceLock::new(),
            placement: std::sync::OnceLock::new(),
            tracer: std::sync::OnceLock::new(),
            writes,
            state: Mutex::default(),
            wake: Notify::new(),
            permits: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
            limits,
            stopping: AtomicBool::new(false),
            store: store.clone(),
            node: node.to_string(),
            fenced: AtomicBool::new(false),
            dead: Mutex::default(),
        });
        if !unfinished.is_empty() {
            tracing::info!("{} asynchronous invocation(s) to finish from before the restart", unfinished.len());
        }
        for mut rec in unfinished {
            // An attempt that was running when the server stopped is run again; it stays in
            // the record as interrupted (it may have run), see `attempt`.
            rec.state = AsyncState::Queued;
            inner.enqueue(rec);
        }
        for rx in receivers {
            tokio::spawn(write_loop(store.clone(), node.to_string(), rx));
        }
        Ok(AsyncQueue { inner })
    }

    /// Where events for services go (once the gateway exists).
    pub fn set_service_sink(&self, sink: Arc<dyn ServiceSink>) {
        let _ = self.inner.services.set(sink);
    }

    /// Where the spans of queueing and attempts go (tracing is off without one).
    pub fn set_tracer(&self, tracer: Arc<hangar_trace::Tracer>) {
        let _ = self.inner.tracer.set(tracer);
    }

    /// Lets placement send functions' attempts to other nodes (a cluster).
    pub fn set_placement(&self, placement: Arc<dyn Placement>) {
        let _ = self.inner.placement.set(placement);
    }

    /// Starts running due events.
    pub fn run(&self) {
        tokio::spawn(dispatch(self.inner.clone()));
    }

    /// Persists an event for `namespace/function` and queues it. Returns its id and whether an
    /// earlier event with the same idempotency key holds it (then nothing new is queued).
    /// The caller has checked that the function exists and the payload's size. `parent`: the
    /// span that queues it (its attempts continue that trace; `None`: a new trace).
    pub async fn accept(
        &self,
        namespace: &str,
        target: &Target,
        payload: Bytes,
        content_type: Option<String>,
        idempotency_key: Option<String>,
        parent: Option<SpanContext>,
    ) -> Result<(String, bool), EventsError> {
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(EventsError::Stopping);
        }
        {
            let st = lock(&self.inner.state);
            let QueueLimits { max_events, max_bytes } = self.inner.limits;
            if st.events.len() >= max_events || st.bytes + payload.len() > max_bytes {
                return Err(EventsError::Full { events: st.events.len(), bytes: st.bytes, max_events, max_bytes });
            }
        }
        self.inner.accept(namespace, target, payload, content_type, idempotency_key, parent).await
    }

    /// Events waiting or running now.
    pub fn pending(&self) -> usize {
        lock(&self.inner.state).events.len()
    }

    /// The state of an unfinished event as the queue has it.
    pub fn live_state(&self, id: &str) -> Option<AsyncState> {
        lock(&self.inner.state).events.get(id).map(|r| r.state)
    }

    /// Waits until every change made before the call is in the store.
    pub async fn flush(&self) {
        let mut waits = Vec::new();
        for w in &self.inner.writes {
            let (tx, rx) = oneshot::channel();
            if w.send(Write::Flush(tx)).is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
    }

    /// Stops starting attempts, waits up to `timeout` for running ones, then until every
    /// change is written.
    pub async fn shutdown(&self, timeout: Duration) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.wake.notify_one();
        let _ = tokio::time::timeout(timeout, self.inner.permits.acquire_many(self.inner.concurrency)).await;
        self.flush().await;
    }
}

/// A lost node's events are taken over by this node: each runs here (again, if it was running
/// there: at least once), with the id, key and attempts it had.
#[async_trait::async_trait]
impl hangar_bus::Failover for AsyncQueue {
    async fn node_lost(&self, node: &str) {
        match self.inner.store.adopt_async(node, &self.inner.node).await {
            Ok(events) => {
                if !events.is_empty() {
                    tracing::warn!(lost = node, "took over {} asynchronous invocation(s) of a lost node", events.len());
                }
                for mut rec in events {
                    rec.state = AsyncState::Queued;
                    self.inner.enqueue(rec);
                }
            }
            Err(e) => tracing::error!(lost = node, "taking over a lost node's asynchronous invocations failed: {e}"),
        }
    }

    /// Back after being cut off: queued events another node took over meanwhile are dropped
    /// here (running ones end, and their writes change nothing: the store fences them).
    async fn fenced(&self) {
        self.inner.fenced.store(true, Ordering::Release);
    }

    async fn rejoined(&self) {
        let queued: Vec<String> = lock(&self.inner.state).events.values().filter(|r| r.state == AsyncState::Queued).map(|r| r.id.clone()).collect();
        let gone = match self.inner.store.taken_over(&self.inner.node, queued).await {
            Ok(gone) => gone,
            Err(e) => return tracing::error!("reading which asynchronous invocations other nodes took over failed: {e}"),
        };
        let mut st = lock(&self.inner.state);
        for id in &gone {
            if let Some(rec) = st.events.remove(id) {
                st.bytes -= rec.payload.len();
            }
        }
        drop(st);
        if !gone.is_empty() {
            tracing::warn!("{} queued asynchronous invocation(s) were taken over by another node while this one was cut off", gone.len());
        }
        self.inner.fenced.store(false, Ordering::Release);
        self.inner.wake.notify_one();
    }
}

/// Functions' queue depth (events not finished) and dead letters (given up since the last
/// sample) for the metric history.
impl hangar_meter::history::GaugeSource for AsyncQueue {
    fn gauges(&self) -> Vec<(hangar_api::traces::WorkloadRef, hangar_meter::history::Gauges)> {
        let mut by: HashMap<(String, String), (u32, u32)> = HashMap::new();
        for r in lock(&self.inner.state).events.values().filter(|r| r.kind == TargetKind::Function) {
            by.entry((r.namespace.clone(), r.target.clone())).or_default().0 += 1;
        }
        for (k, n) in std::mem::take(&mut *self.inner.dead.lock().unwrap_or_else(|p| p.into_inner())) {
            by.entry(k).or_default().1 += n;
        }
        by.into_iter()
            .map(|((namespace, name), (depth, dead))| {
                let w = hangar_api::traces::WorkloadRef { kind: hangar_api::WorkloadKind::Function, namespace, name };
                (w, hangar_meter::history::Gauges([0, 0, 0, depth, dead]))
            })
            .collect()
    }
}

impl Inner {
    /// [`AsyncQueue::accept`], also while stopping and when full: for hand-overs of events
    /// leaving the queue to their `on_failure` function.
    async fn accept(
        &self,
        namespace: &str,
        target: &Target,
        payload: Bytes,
        content_type: Option<String>,
        idempotency_key: Option<String>,
        parent: Option<SpanContext>,
    ) -> Result<(String, bool), EventsError> {
        let now = now_ms();
        // Queueing is a span of its own (a producer's); the event keeps it for its attempts.
        let producer = self.tracer().filter(|t| t.enabled()).map(|t| {
            let ctx = match parent {
                Some(p) => p.child(),
                None => t.root(),
            };
            (t, ctx, hangar_trace::Started::now())
        });
        let rec = AsyncRecord {
            id: uuid::Uuid::now_v7().to_string(),
            namespace: namespace.to_string(),
            kind: target.kind,
            target: target.name.clone(),
            path: target.path.clone(),
            payload: payload.to_vec(),
            content_type,
            idempotency_key,
            state: AsyncState::Queued,
            attempts: Vec::new(),
            accepted_ms: now,
            next_ms: now,
            finished_ms: None,
            error: None,
            destination_id: None,
            trace: producer.as_ref().map(|(_, ctx, _)| ctx.traceparent()),
        };
        let (tx, rx) = oneshot::channel();
        self.writer(&rec.id).send(Write::New(rec.clone(), tx)).map_err(|_| EventsError::Stopping)?;
        let (id, duplicate) = rx.await.map_err(|_| EventsError::Stopping)?.map_err(EventsError::Store)?;
        if let Some((tracer, ctx, started)) = producer
            && tracer.keeps(&ctx, false, started.at.elapsed().as_nanos() as u64, Some((function_or_service(target.kind), namespace, &target.name)))
        {
            let span = Span::ended(ctx, parent.map(|p| p.span_id), format!("send {}", target.name), SpanKind::Producer, started)
                .with("messaging.system", "hangar")
                .with("messaging.operation.type", "send")
                .with("messaging.destination.name", target.name.clone())
                .with("messaging.message.id", id.clone())
                .with("hangar.duplicate", duplicate)
                .of(workload_of(namespace, target.kind, &target.name));
            tracer.record(span);
        }
        if !duplicate {
            self.enqueue(rec);
        }
        Ok((id, duplicate))
    }

    fn tracer(&self) -> Option<&Arc<hangar_trace::Tracer>> {
        self.tracer.get()
    }

    /// The writer of event `id`'s writes.
    fn writer(&self, id: &str) -> &mpsc::UnboundedSender<Write> {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        &self.writes[h.finish() as usize % self.writes.len()]
    }

    /// Puts a queued event on the due list.
    fn enqueue(&self, rec: AsyncRecord) {
        let mut st = lock(&self.state);
        st.due.push(Reverse((rec.next_ms, rec.id.clone())));
        st.bytes += rec.payload.len();
        if let Some(old) = st.events.insert(rec.id.clone(), rec) {
            st.bytes -= old.payload.len();
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Takes up to [`ROUND`] due events off the list, marking them running. Also returns when
    /// the next one is due.
    fn take_due(&self, now: i64, most: usize) -> (Vec<AsyncRecord>, Option<i64>) {
        let mut st = lock(&self.state);
        let mut ready = Vec::new();
        while ready.len() < most.min(ROUND) {
            let Some(Reverse((at, _))) = st.due.peek() else { break };
            if *at > now {
                break;
            }
            let Some(Reverse((_, id))) = st.due.pop() else { break };
            if let Some(rec) = st.events.get_mut(&id).filter(|r| r.state == AsyncState::Queued) {
                rec.state = AsyncState::Running;
                ready.push(rec.clone());
            }
        }
        let next = st.due.peek().map(|Reverse((at, _))| *at);
        (ready, next)
    }

    /// Writes `rec` (a running event) to the store and waits until it is there; memory is
    /// left as it is.
    async fn save_durably(&self, rec: AsyncRecord) {
        let (tx, rx) = oneshot::channel();
        if self.writer(&rec.id).send(Write::Durable(rec, tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Records a change durably (in order with every other write) and in memory.
    fn save(&self, rec: AsyncRecord) {
        let finished = matches!(rec.state, AsyncState::Succeeded | AsyncState::Failed);
        let _ = self.writer(&rec.id).send(Write::Changed(rec.clone()));
        if finished {
            let mut st = lock(&self.state);
            if let Some(old) = st.events.remove(&rec.id) {
                st.bytes -= old.payload.len();
            }
        } else {
            self.enqueue(rec);
        }
    }

    /// Gives an event up: `failed`, and sent to the `on_failure` function if there is one.
    async fn give_up(&self, mut rec: AsyncRecord, condition: &str, reason: String, cfg: Option<&AsyncConfig>, answer: Option<(u16, Bytes)>) {
        if rec.kind == TargetKind::Function {
            *self.dead.lock().unwrap_or_else(|p| p.into_inner()).entry((rec.namespace.clone(), rec.target.clone())).or_default() += 1;
        }
        rec.state = AsyncState::Failed;
        rec.finished_ms = Some(now_ms());
        rec.error = Some(reason.clone());
        if let Some(target) = cfg.and_then(|c| c.on_failure.as_deref()) {
            let payload = destination_record(&rec, condition, answer);
            // The key makes the hand-over happen once even if the server stops right after it.
            let key = Some(format!("failure-of:{}", rec.id));
            if self.scheduler.route(&rec.namespace, target).is_none() {
                rec.error = Some(format!("{reason}; its on_failure function `{target}` does not exist"));
            } else {
                let parent = rec.trace.as_deref().and_then(SpanContext::parse);
                match self.accept(&rec.namespace, &Target::function(target), payload, Some("application/json".into()), key, parent).await {
                    Ok((id, _)) => rec.destination_id = Some(id),
                    Err(e) => rec.error = Some(format!("{reason}; handing it to `{target}` failed: {e}")),
                }
            }
        }
        tracing::warn!(id = %rec.id, target = %rec.target, "asynchronous invocation given up: {}", rec.error.as_deref().unwrap_or(""));
        self.save(rec);
    }
}

/// Starts due events while permits last; sleeps until the next is due or one is queued.
async fn dispatch(inner: Arc<Inner>) {
    loop {
        let notified = inner.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        if inner.fenced.load(Ordering::Acquire) {
            // Started again by `rejoined`.
            notified.await;
            continue;
        }
        // Events stay queued until an attempt can start (a permit is free): only queued ones
        // can be handed back when another node took them over.
        let Ok(first) = inner.permits.clone().acquire_owned().await else { return };
        if inner.fenced.load(Ordering::Acquire) || inner.stopping.load(Ordering::Acquire) {
            continue;
        }
        let mut permits = vec![first];
        while permits.len() < ROUND {
            match inner.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let (ready, next) = inner.take_due(now, permits.len());
        let started = !ready.is_empty();
        for (rec, permit) in ready.into_iter().zip(permits) {
            tokio::spawn(attempt(inner.clone(), rec, permit));
        }
        if started {
            continue;
        }
        match next {
            Some(at) => {
                let wait = Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            None => notified.await,
        }
    }
}

/// What an attempt that a crash or kill cut short says in the record.
pub const INTERRUPTED: &str = "interrupted: the server stopped during this attempt, which may have run; it is tried again with the same request id";

/// Runs one attempt of `rec` and decides what follows.
async fn attempt(inner: Arc<Inner>, mut rec: AsyncRecord, _permit: OwnedSemaphorePermit) {
    let started_ms = now_ms();
    // The attempt is in the store before it runs, as interrupted until its outcome replaces
    // that: a crash during the attempt leaves a record that says so, and the attempt counts.
    let mut started = rec.clone();
    started.state = AsyncState::Running;
    started.attempts.push(Attempt { invocation_id: None, started_ms, outcome: Outcome::Error, status: 0, error: Some(INTERRUPTED.into()) });
    inner.save_durably(started).await;
    // The attempt's span (a consumer's), a child of the span that queued the event.
    let consumer = inner.tracer().filter(|t| t.enabled()).map(|t| {
        let queued = rec.trace.as_deref().and_then(SpanContext::parse);
        let ctx = queued.map_or_else(|| t.root(), |q| q.child());
        (t.clone(), ctx, queued.map(|q| q.span_id), hangar_trace::Started::now())
    });
    let trace = consumer.as_ref().map(|(_, ctx, ..)| *ctx);
    let (cfg, tried) = match rec.kind {
        TargetKind::Function => {
            let Some(slot) = inner.scheduler.route(&rec.namespace, &rec.target) else {
                let reason = format!("function `{}` no longer exists", rec.target);
                return inner.give_up(rec, "FunctionMissing", reason, None, None).await;
            };
            let cfg = slot.deployment().config.async_.clone();
            if let Some(too_old) = too_old(&rec, &cfg, started_ms) {
                return inner.give_up(rec, "EventAgeExceeded", too_old, Some(&cfg), None).await;
            }
            if let Some(placement) = inner.placement.get()
                && let Some(tried) = placement.run_elsewhere(&slot, &rec.id, Bytes::from(rec.payload.clone()), rec.content_type.as_deref(), trace).await
            {
                (cfg, tried)
            } else {
                let mut request = http::Request::new(hangar_runtime::full(Bytes::from(rec.payload.clone())));
                *request.method_mut() = http::Method::POST;
                // Every attempt of the event is the same Lambda request.
                request.extensions_mut().insert(hangar_runtime::RequestId(rec.id.clone()));
                if let Some(v) = rec.content_type.as_deref().and_then(|c| http::HeaderValue::from_str(c).ok()) {
                    request.headers_mut().insert(http::header::CONTENT_TYPE, v);
                }
                if let Some(ctx) = trace {
                    ctx.inject(request.headers_mut());
                    request.extensions_mut().insert(hangar_trace::FaasTrigger(faas_trigger(&rec)));
                }
                let (invocation_id, response) = inner.scheduler.invoke(&slot, request, Trigger::Async).await;
                let status = response.status();
                // Reading to the end also lets the invocation finish and be recorded.
                let body = read_kept(response.into_body()).await;
                (cfg, (Some(invocation_id), status, body))
            }
        }
        TargetKind::Service => {
            // Services have no policy of their own: Lambda's defaults.
            let cfg = AsyncConfig::default();
            if let Some(too_old) = too_old(&rec, &cfg, started_ms) {
                return inner.give_up(rec, "EventAgeExceeded", too_old, None, None).await;
            }
            let Some(sink) = inner.services.get() else {
                return inner.give_up(rec, "ServiceMissing", "this server runs no services".into(), None, None).await;
            };
            let path = rec.path.clone().unwrap_or_else(|| "/".into());
            match sink.deliver(&rec.namespace, &rec.target, &path, rec.content_type.as_deref(), Bytes::from(rec.payload.clone()), trace).await {
                Ok((status, body)) => (cfg, (None, status, body)),
                Err(SinkError::Missing(name)) => {
                    return inner.give_up(rec, "ServiceMissing", format!("service `{name}` no longer exists"), None, None).await;
                }
                Err(SinkError::Failed(e)) => (cfg, (None, http::StatusCode::BAD_GATEWAY, Bytes::from(e))),
            }
        }
    };
    let (invocation_id, status, body) = tried;
    let (outcome, error) = classify(status, &body);
    if let Some((tracer, ctx, queued, at)) = consumer
        && tracer.keeps(&ctx, outcome != Outcome::Ok, at.at.elapsed().as_nanos() as u64, Some((function_or_service(rec.kind), &rec.namespace, &rec.target)))
    {
        let mut span = Span::ended(ctx, queued, format!("process {}", rec.target), SpanKind::Consumer, at)
            .with("messaging.system", "hangar")
            .with("messaging.operation.type", "process")
            .with("messaging.destination.name", rec.target.clone())
            .with("messaging.message.id", rec.id.clone())
            .with("hangar.attempt", rec.attempts.len() as u64 + 1)
            .with("hangar.outcome", outcome.to_string())
            .of(workload_of(&rec.namespace, rec.kind, &rec.target));
        if let Some(id) = &invocation_id {
            span = span.with("faas.invocation_id", id.clone());
        }
        if outcome != Outcome::Ok {
            span = span.failed(error.clone().unwrap_or_else(|| format!("the target answered {status}")));
        }
        tracer.record(span);
    }
    if outcome == Outcome::Throttled {
        // Throttles do not use up retries (as Lambda): try again soon.
        rec.state = AsyncState::Queued;
        rec.next_ms = now_ms() + i64::try_from(cfg.retry_delay_ms.min(1000)).unwrap_or(1000);
        // Saved, so the store no longer holds this attempt as started.
        return inner.save(rec);
    }
    rec.attempts.push(Attempt { invocation_id, started_ms, outcome, status: status.as_u16(), error: error.clone() });
    if outcome == Outcome::Ok {
        rec.state = AsyncState::Succeeded;
        rec.finished_ms = Some(now_ms());
        rec.error = None;
        return inner.save(rec);
    }
    let failures = rec.attempts.iter().filter(|a| a.outcome != Outcome::Ok).count() as u32;
    let why = error.unwrap_or_else(|| format!("the target answered {status}"));
    if failures > cfg.max_retries {
        let reason = format!("{failures} attempt(s) failed, the last with: {why}");
        return inner.give_up(rec, "RetriesExhausted", reason, Some(&cfg), Some((status.as_u16(), body))).await;
    }
    rec.state = AsyncState::Queued;
    rec.next_ms = now_ms() + i64::try_from(cfg.backoff_ms(failures)).unwrap_or(i64::MAX / 2);
    rec.error = Some(why);
    inner.save(rec);
}

/// The kind of workload an event's target is.
fn function_or_service(kind: TargetKind) -> hangar_api::WorkloadKind {
    match kind {
        TargetKind::Function => hangar_api::WorkloadKind::Function,
        TargetKind::Service => hangar_api::WorkloadKind::Service,
    }
}

/// The workload an event is for, as spans name it.
fn workload_of(namespace: &str, kind: TargetKind, name: &str) -> hangar_api::traces::WorkloadRef {
    hangar_api::traces::WorkloadRef { kind: function_or_service(kind), namespace: namespace.to_string(), name: name.to_string() }
}

/// `faas.trigger` of an attempt: `pubsub` for a topic's event, `timer` for a schedule's,
/// `other` for an invoke (the triggers' idempotency keys say which made it).
fn faas_trigger(rec: &AsyncRecord) -> &'static str {
    let made_by_trigger = rec.content_type.as_deref() == Some(crate::triggers::CLOUDEVENT_JSON);
    match rec.idempotency_key.as_deref() {
        Some(k) if made_by_trigger && k.starts_with("topic:") => "pubsub",
        Some(k) if made_by_trigger && k.starts_with("cron:") => "timer",
        _ => "other",
    }
}

/// Why an event is too old to try, if it is.
fn too_old(rec: &AsyncRecord, cfg: &AsyncConfig, now: i64) -> Option<String> {
    let max_age_ms = i64::try_from(cfg.max_event_age_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    (now - rec.accepted_ms > max_age_ms).then(|| format!("the event is older than max_event_age_s ({} s)", cfg.max_event_age_s))
}

/// Reads a response body to its end, keeping its first [`MAX_RESPONSE_KEPT`] bytes.
pub async fn read_kept<B: http_body::Body<Data = Bytes> + Unpin>(mut body: B) -> Bytes {
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            let room = MAX_RESPONSE_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Bytes::from(kept)
}

/// The outcome of an attempt from its answer: the platform's error shape
/// (`{"error":{"code","message"}}`) or Lambda's (`{"errorType","errorMessage"}`).
fn classify(status: http::StatusCode, body: &[u8]) -> (Outcome, Option<String>) {
    if status.is_success() {
        return (Outcome::Ok, None);
    }
    if status == http::StatusCode::TOO_MANY_REQUESTS {
        return (Outcome::Throttled, Some("throttled".into()));
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let platform = json.as_ref().and_then(|j| j.get("error")).and_then(|e| Some((e.get("code")?.as_str()?, e.get("message")?.as_str()?)));
    let lambda = json.as_ref().and_then(|j| Some((j.get("errorType")?.as_str()?, j.get("errorMessage")?.as_str()?)));
    let outcome = match platform.map(|(c, _)| c) {
        Some("timeout") => Outcome::Timeout,
        Some("out_of_memory") => Outcome::OutOfMemory,
        _ if status == http::StatusCode::GATEWAY_TIMEOUT => Outcome::Timeout,
        _ => Outcome::Error,
    };
    let error = match (platform, lambda) {
        (Some((_, m)), _) => m.to_string(),
        (None, Some((t, m))) => format!("{t}: {m}"),
        (None, None) => format!("the function answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(512)])),
    };
    (outcome, Some(error))
}

/// What an `on_failure` function receives: the record Lambda sends to a destination.
fn destination_record(rec: &AsyncRecord, condition: &str, answer: Option<(u16, Bytes)>) -> Bytes {
    let as_json =
        |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(b).into_owned()));
    let mut record = serde_json::json!({
        "version": "1.0",
        "timestamp": rfc3339(now_ms()),
        "requestContext": {
            "requestId": rec.id,
            "functionArn": format!("hangar:{}:{}:{}", rec.namespace, rec.kind, rec.target),
            "condition": condition,
            "approximateInvokeCount": rec.attempts.len(),
        },
        "requestPayload": as_json(&rec.payload),
    });
    if let Some((status, body)) = answer {
        record["responseContext"] = serde_json::json!({"statusCode": status, "executedVersion": "$LATEST", "functionError": "Unhandled"});
        record["responsePayload"] = as_json(&body);
    }
    Bytes::from(record.to_string())
}

/// Commits writes in batches: new events (answering each with the id that holds it) and
/// changes. Failed changes are retried until they are written; failed new events are refused.
async fn write_loop(store: Arc<dyn Store>, node: String, mut rx: mpsc::UnboundedReceiver<Write>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let (mut new, mut replies, mut changed, mut flushes) = (Vec::new(), Vec::new(), Vec::<AsyncRecord>::new(), Vec::new());
        for w in batch {
            match w {
                Write::New(rec, reply) => {
                    new.push(rec);
                    replies.push(reply);
                }
                Write::Changed(rec) => {
                    // Only the latest state of an event matters.
                    changed.retain(|c| c.id != rec.id);
                    changed.push(rec);
                }
                Write::Durable(rec, tx) => {
                    changed.retain(|c| c.id != rec.id);
                    changed.push(rec);
                    flushes.push(tx);
                }
                Write::Flush(tx) => flushes.push(tx),
            }
        }
        let mut delay = Duration::from_millis(50);
        loop {
            match store.save_async(&node, std::mem::take(&mut new), changed.clone()).await {
                Ok(held) => {
                    for (reply, h) in replies.drain(..).zip(held) {
                        let _ = reply.send(Ok(h));
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!("writing asynchronous invocations: {e}");
                    for reply in replies.drain(..) {
                        let _ = reply.send(Err(e.to_string()));
                    }
                    if changed.is_empty() {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_status_and_error_shape() {
        assert_eq!(classify(http::StatusCode::OK, b"").0, Outcome::Ok);
        assert_eq!(classify(http::StatusCode::TOO_MANY_REQUESTS, b"").0, Outcome::Throttled);
        let (o, e) = classify(http::StatusCode::GATEWAY_TIMEOUT, br#"{"error":{"code":"timeout","message":"took too long"}}"#);
        assert_eq!((o, e.as_deref()), (Outcome::Timeout, Some("took too long")));
        let (o, e) = classify(http::StatusCode::BAD_GATEWAY, br#"{"errorType":"ValueError","errorMessage":"boom"}"#);
        assert_eq!((o, e.as_deref()), (Outcome::Error, Some("ValueError: boom")));
        assert_eq!(classify(http::StatusCode::INTERNAL_SERVER_ERROR, b"plain").0, Outcome::Error);
    }

    #[test]
    fn destination_records_carry_request_and_response() {
        let rec = AsyncRecord {
            id: "a1".into(),
            namespace: "default".into(),
            kind: TargetKind::Function,
            target: "f".into(),
            path: None,
            payload: br#"{"order":7}"#.to_vec(),
            content_type: None,
            idempotency_key: None,
            state: AsyncState::Failed,
            attempts: Vec::new(),
            accepted_ms: 0,
            next_ms: 0,
            finished_ms: None,
            error: None,
            destination_id: None,
            trace: None,
        };
        let r: serde_json::Value = serde_json::from_slice(&destination_record(&rec, "RetriesExhausted", Some((502, Bytes::from_static(b"oops"))))).unwrap();
        assert_eq!(r["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(r["requestPayload"]["order"], 7);
        assert_eq!(r["responsePayload"], "oops");
        assert_eq!(r["responseContext"]["statusCode"], 502);
    }
}
