//! One invocation of a `wasi:http/proxy` component: the per-store state, its limits, and the
//! task that runs the guest and reports how it ended.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hangar_api::Outcome;
use hangar_runtime::{Body, Finished, Limits, Loaded, OnFinish, RuntimeError, error_response};
use http::StatusCode;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::EPOCH_TICK;
use crate::logs::LogSink;

/// The data of one store: one invocation's WASI context, HTTP context, and limits.
pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    hooks: OutboundPolicy,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Caps every linear memory of the instance at the function's memory, and remembers whether
/// the guest hit the cap (so that the trap that follows is reported as `out_of_memory`).
struct MemoryLimiter {
    max_bytes: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Lets outgoing HTTP requests through only to hosts on the function's allow-list.
struct OutboundPolicy {
    allow: Arc<[String]>,
    /// The invocation's span, passed on as `traceparent` by outbound requests that carry none.
    trace: Option<hangar_trace::SpanContext>,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        if !hangar_api::validate::outbound_allowed(&self.allow, &host, port) {
            tracing::debug!(%host, port, "outbound request denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        if let Some(ctx) = &self.trace
            && !request.headers().contains_key(hangar_trace::context::TRACEPARENT)
        {
            request.headers_mut().insert(hangar_trace::context::TRACEPARENT, ctx.header());
        }
        Box::new(async move {
            let (resp, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((resp.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// Checks that the component links against what Hangar provides and exports
/// `wasi:http/incoming-handler`, and pre-instantiates it.
pub fn check_proxy(linker: &Linker<GuestState>, component: &Component) -> Result<ProxyPre<GuestState>, RuntimeError> {
    let pre = linker.instantiate_pre(component).map_err(|e| {
        RuntimeError::InvalidCode(format!(
            "the component imports something Hangar does not provide (only the wasi:http/proxy \
             world is available): {e:#}"
        ))
    })?;
    ProxyPre::new(pre).map_err(|e| {
        RuntimeError::InvalidCode(format!(
            "the component does not export `wasi:http/incoming-handler` (a wasi:http/proxy \
             component is needed, like those `wasmtime serve` or Spin run): {e:#}"
        ))
    })
}

/// A loaded revision of a WebAssembly function.
pub struct WasmFunction {
    pre: ProxyPre<GuestState>,
    limits: Limits,
    allow: Arc<[String]>,
    deadline_ticks: u64,
}

impl WasmFunction {
    pub fn new(pre: ProxyPre<GuestState>, limits: Limits) -> Self {
        let allow: Arc<[String]> = limits.allow_outbound.clone().into();
        let deadline_ticks = limits.timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64 + 1;
        WasmFunction { pre, limits, allow, deadline_ticks }
    }

    fn new_store(&self, logs: &LogSink, trace: Option<&hangar_trace::SpanContext>) -> Store<GuestState> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&self.limits.env).stdout(logs.clone()).stderr(logs.clone());
        let state = GuestState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter { max_bytes: self.limits.memory_bytes as usize, hit: false },
            hooks: OutboundPolicy { allow: self.allow.clone(), trace: trace.copied() },
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.deadline_ticks);
        store.epoch_deadline_trap();
        store
    }

    /// Creates a store with this revision's limits and instantiates the component, without
    /// running it: the cost of making one instance. Returns how long instantiation took.
    pub async fn instantiate_once(&self) -> Result<Duration, RuntimeError> {
        let logs = LogSink::new(self.limits.max_log_bytes);
        let started = std::time::Instant::now();
        let mut store = self.new_store(&logs, None);
        self.pre.instantiate_async(&mut store).await.map_err(|e| RuntimeError::Internal(format!("{e:#}")))?;
        Ok(started.elapsed())
    }
}

/// How the guest ended.
struct GuestEnd {
    outcome: Outcome,
    /// One line for the record and the caller.
    error: Option<String>,
    /// How long the instance took to make.
    ready_after: Option<Duration>,
}

#[async_trait]
impl Loaded for WasmFunction {
    async fn invoke(&self, info: hangar_runtime::InvokeInfo, request: http::Request<Body>, on_finish: OnFinish) -> http::Response<Body> {
        let logs = LogSink::new(self.limits.max_log_bytes);
        let mut store = self.new_store(&logs, info.trace.as_ref());
        let mut request = request;
        // wasi:http wants an authority; calls made inside Hangar (asynchronous attempts,
        // sequence steps, triggers) have no Host of their own.
        if request.uri().authority().is_none() && !request.headers().contains_key(http::header::HOST) {
            request.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("localhost"));
        }
        let request = request.map(|b| b.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(format!("request body: {e}")))));
        let (resp_tx, resp_rx) = oneshot::channel();
        let handles = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .and_then(|req| Ok((req, store.data_mut().http().new_response_outparam(resp_tx)?)));
        let (req, out) = match handles {
            Ok(h) => h,
            Err(e) => {
                let msg = format!("could not pass the request to the function: {e:#}");
                on_finish(finished(GuestEnd { outcome: Outcome::Error, error: Some(msg.clone()), ready_after: None }, 400, 0, &logs));
                return error_response(StatusCode::BAD_REQUEST, "bad_request", &msg);
            }
        };

        let (end_tx, end_rx) = oneshot::channel::<GuestEnd>();
        let pre = self.pre.clone();
        let timeout = self.limits.timeout;
        let task_logs = logs.clone();
        tokio::spawn(async move {
            let began = std::time::Instant::now();
            let mut ready_after = None;
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                ready_after = Some(began.elapsed());
                proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
            };
            let result = tokio::time::timeout(timeout, run).await;
            let oom = store.data().limiter.hit;
            // Dropping the store drops the response outparam and the body stream, so whoever
            // waits for a response or more body learns that none is coming.
            drop(store);
            let (mut end, detail) = classify(result, oom, timeout);
            end.ready_after = ready_after;
            if let Some(detail) = detail {
                task_logs.append(format!("[hangar] {detail}\n").as_bytes());
            }
            let _ = end_tx.send(end);
        });

        // From here on the record is handed over exactly once, also if the caller goes away
        // and this future or the response body is dropped.
        let mut report = Report { on_finish: Some(on_finish), end: Some(end_rx), logs, status: CLIENT_CLOSED, sent: 0 };
        match resp_rx.await {
            Ok(Ok(resp)) => {
                report.status = resp.status().as_u16();
                resp.map(|inner| hangar_runtime::boxed(FinishingBody { inner, report }))
            }
            Ok(Err(code)) => {
                let msg = format!("the function answered with an error: {code:?}");
                let end = report.guest_end(&msg).await;
                report.status = 502;
                report.finish(end);
                error_response(StatusCode::BAD_GATEWAY, "function_error", &msg)
            }
            Err(_) => {
                let end = report.guest_end(NO_RESPONSE).await;
                let (status, code) = match end.outcome {
                    Outcome::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                    Outcome::OutOfMemory => (StatusCode::BAD_GATEWAY, "out_of_memory"),
                    Outcome::Throttled => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
                    Outcome::Ok | Outcome::Error => (StatusCode::BAD_GATEWAY, "function_error"),
                };
                let response = error_response(status, code, end.error.as_deref().unwrap_or(NO_RESPONSE));
                report.status = status.as_u16();
                report.finish(end);
                response
            }
        }
    }
}

/// Status recorded when the caller went away before a response existed (as nginx logs it).
const CLIENT_CLOSED: u16 = 499;

fn lost() -> GuestEnd {
    GuestEnd { outcome: Outcome::Error, error: Some("the function task ended unexpectedly".into()), ready_after: None }
}

/// Hands an invocation's record over exactly once: when told to, or, if dropped first (the
/// caller went away), from a small task once the guest has ended.
struct Report {
    on_finish: Option<OnFinish>,
    end: Option<oneshot::Receiver<GuestEnd>>,
    logs: LogSink,
    status: u16,
    sent: u64,
}

impl Report {
    fn finish(&mut self, end: GuestEnd) {
        self.end = None;
        if let Some(on_finish) = self.on_finish.take() {
            on_finish(finished(end, self.status, self.sent, &self.logs));
        }
    }

    /// Waits for the guest to end. A guest that ran fine without a usable response is an
    /// error with `failure` as its message. The receiver stays in `self` while waiting, so a
    /// caller that goes away meanwhile is still recorded by `Drop`.
    async fn guest_end(&mut self, failure: &str) -> GuestEnd {
        let end = match self.end.as_mut() {
            Some(rx) => rx.await.unwrap_or_else(|_| lost()),
            None => lost(),
        };
        if end.outcome == Outcome::Ok {
            return GuestEnd { outcome: Outcome::Error, error: Some(failure.to_string()), ready_after: None };
        }
        end
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        let (Some(on_finish), Some(end)) = (self.on_finish.take(), self.end.take()) else { return };
        let (status, sent, logs) = (self.status, self.sent, self.logs.clone());
        let record = async move {
            let end = end.await.unwrap_or_else(|_| lost());
            on_finish(finished(end, status, sent, &logs));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn(record)),
            Err(_) => tracing::warn!("invocation record lost: dropped outside the async runtime"),
        }
    }
}

fn finished(end: GuestEnd, status: u16, bytes: u64, logs: &LogSink) -> Finished {
    let (logs, logs_truncated) = logs.take();
    let GuestEnd { outcome, error, ready_after } = end;
    Finished { ending: hangar_api::Ending { outcome, status, response_bytes: bytes, error, logs, logs_truncated }, start: None, ready_after }
}

const NO_RESPONSE: &str = "the function returned without setting a response";

/// Turns the guest's result into an outcome, a message for people, and details for the logs.
fn classify(result: Result<wasmtime::Result<()>, tokio::time::error::Elapsed>, oom: bool, timeout: Duration) -> (GuestEnd, Option<String>) {
    let timed_out = || GuestEnd {
        outcome: Outcome::Timeout,
        error: Some(format!("the function did not finish within its timeout of {} ms", timeout.as_millis())),
        ready_after: None,
    };
    let e = match result {
        Ok(Ok(())) => return (GuestEnd { outcome: Outcome::Ok, error: None, ready_after: None }, None),
        Err(_) => return (timed_out(), None),
        Ok(Err(e)) => e,
    };
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return (timed_out(), None);
    }
    let cause = e.root_cause().to_string();
    let detail = Some(format!("{e:?}"));
    if oom {
        let error = format!("the function needed more memory than its limit allows; raise its memory ({cause})");
        (GuestEnd { outcome: Outcome::OutOfMemory, error: Some(error), ready_after: None }, detail)
    } else if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        let error = format!("too many instances are running at once; retry shortly ({cause})");
        (GuestEnd { outcome: Outcome::Throttled, error: Some(error), ready_after: None }, None)
    } else {
        (GuestEnd { outcome: Outcome::Error, error: Some(format!("the function failed: {cause}")), ready_after: None }, detail)
    }
}

/// The guest's response body on its way to the caller. It counts the bytes, and it does not
/// end the stream until the guest has ended and its record is handed over, so a caller that
/// has read a whole response can already see the invocation's record. Dropped early (the
/// caller went away), its [`Report`] still hands the record over.
struct FinishingBody<B> {
    inner: B,
    report: Report,
}

impl<B> http_body::Body for FinishingBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if self.report.on_finish.is_none() {
            return Poll::Ready(None);
        }
        let polled = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.report.sent += data.len() as u64;
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Pending => return Poll::Pending,
            other => other,
        };
        // The body ended (or failed): wait for the guest to end, then hand over the record.
        let end = match self.report.end.as_mut().map(|rx| Pin::new(rx).poll(cx)) {
            Some(Poll::Pending) => return Poll::Pending,
            Some(Poll::Ready(end)) => end.unwrap_or_else(|_| lost()),
            None => lost(),
        };
        self.report.finish(end);
        polled
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
