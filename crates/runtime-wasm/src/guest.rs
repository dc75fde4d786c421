//! One invocation of a `wasi:http/proxy` component: the per-store state, its limits, and the
//! task that runs the guest and reports how it ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::pin::Pin;
use std::time::{Duration, Instant};

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
        request: http::Request<wasmtime_wasi_http::WasiBody>,
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

    fn new_store(&self, logs: &LogSink) -> Store<GuestState> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&self.limits.env).stdout(logs.clone()).stderr(logs.clone());
        let state = GuestState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter { max_bytes: self.limits.memory_bytes as usize, hit: false },
            hooks: OutboundPolicy { allow: self.allow.clone() },
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.deadline_ticks);
        store.epoch_deadline_trap();
        store
    }
}

/// How the guest ended, before the response status is known.
struct GuestEnd {
    outcome: Outcome,
    /// One line for the record and the caller.
    error: Option<String>,
    /// Details (e.g. the wasm backtrace) for the logs.
    detail: Option<String>,
}

/// What the invoking side tells the guest task once the response head is decided.
struct Head {
    status: u16,
    /// Set when the guest ran to completion but never produced a usable response.
    failed: bool,
    /// Resolves with the body bytes sent when the response body is finished or dropped.
    body_done: Option<oneshot::Receiver<u64>>,
}

#[async_trait]
impl Loaded for WasmFunction {
    async fn invoke(&self, request: http::Request<Body>, on_finish: OnFinish) -> http::Response<Body> {
        let started = Instant::now();
        let logs = LogSink::new(self.limits.max_log_bytes);
        let mut store = self.new_store(&logs);
        let request = request.map(|b| {
            b.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(format!("request body: {e}"))))
        });
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
                let resp = error_response(StatusCode::BAD_REQUEST, "bad_request", &msg);
                on_finish(finished(Outcome::Error, 400, 0, Some(msg), &logs));
                return resp;
            }
        };

        let (end_tx, end_rx) = oneshot::channel::<GuestEnd>();
        let (head_tx, head_rx) = oneshot::channel::<Head>();
        let pre = self.pre.clone();
        let timeout = self.limits.timeout;
        let task_logs = logs.clone();
        tokio::spawn(async move {
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
            };
            let result = tokio::time::timeout(timeout, run).await;
            let oom = store.data().limiter.hit;
            // Dropping the store drops the response outparam, so an invoker still waiting for a
            // response learns that none is coming.
            drop(store);
            let mut end = classify(result, oom, timeout);
            if let Some(detail) = end.detail.take() {
                task_logs.append(format!("[hangar] {detail}\n").as_bytes());
            }
            let _ = end_tx.send(GuestEnd { outcome: end.outcome, error: end.error.clone(), detail: None });
            let Ok(head) = head_rx.await else { return };
            if head.failed && end.outcome == Outcome::Ok {
                end.outcome = Outcome::Error;
                end.error = Some(NO_RESPONSE.into());
            }
            let mut bytes = 0;
            if let Some(done) = head.body_done {
                // The body may still be streaming to a slow client; the deadline covers that too.
                let left = timeout.saturating_sub(started.elapsed()) + Duration::from_secs(1);
                bytes = tokio::time::timeout(left, done).await.ok().and_then(Result::ok).unwrap_or(0);
            }
            on_finish(finished(end.outcome, head.status, bytes, end.error, &task_logs));
        });

        match resp_rx.await {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                let (done_tx, done_rx) = oneshot::channel();
                let _ = head_tx.send(Head { status, failed: false, body_done: Some(done_rx) });
                resp.map(|b| hangar_runtime::boxed(CountingBody::new(b, done_tx)))
            }
            Ok(Err(code)) => {
                let msg = format!("the function answered with an error: {code:?}");
                let resp = error_response(StatusCode::BAD_GATEWAY, "function_error", &msg);
                let _ = head_tx.send(Head { status: 502, failed: true, body_done: None });
                resp
            }
            Err(_) => {
                let end = end_rx.await.unwrap_or(GuestEnd {
                    outcome: Outcome::Error,
                    error: Some("the function task ended unexpectedly".into()),
                    detail: None,
                });
                let (status, code) = match end.outcome {
                    Outcome::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                    Outcome::OutOfMemory => (StatusCode::BAD_GATEWAY, "out_of_memory"),
                    Outcome::Throttled => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
                    Outcome::Ok | Outcome::Error => (StatusCode::BAD_GATEWAY, "function_error"),
                };
                let msg = end.error.as_deref().unwrap_or(NO_RESPONSE);
                let _ = head_tx.send(Head { status: status.as_u16(), failed: true, body_done: None });
                error_response(status, code, msg)
            }
        }
    }
}

fn finished(outcome: Outcome, status: u16, bytes: u64, error: Option<String>, logs: &LogSink) -> Finished {
    let (logs, logs_truncated) = logs.take();
    Finished { outcome, status, response_bytes: bytes, error, logs, logs_truncated }
}

const NO_RESPONSE: &str = "the function returned without setting a response";

/// Turns the guest's result into an outcome and a message for people.
fn classify(
    result: Result<wasmtime::Result<()>, tokio::time::error::Elapsed>,
    oom: bool,
    timeout: Duration,
) -> GuestEnd {
    let timed_out = || GuestEnd {
        outcome: Outcome::Timeout,
        error: Some(format!("the function did not finish within its timeout of {} ms", timeout.as_millis())),
        detail: None,
    };
    let e = match result {
        Ok(Ok(())) => return GuestEnd { outcome: Outcome::Ok, error: None, detail: None },
        Err(_) => return timed_out(),
        Ok(Err(e)) => e,
    };
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return timed_out();
    }
    let cause = e.root_cause().to_string();
    let detail = Some(format!("{e:?}"));
    if oom {
        GuestEnd {
            outcome: Outcome::OutOfMemory,
            error: Some(format!("the function needed more memory than its limit allows; raise its memory ({cause})")),
            detail,
        }
    } else if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        GuestEnd {
            outcome: Outcome::Throttled,
            error: Some(format!("too many instances are running at once; retry shortly ({cause})")),
            detail: None,
        }
    } else {
        GuestEnd { outcome: Outcome::Error, error: Some(format!("the function failed: {cause}")), detail }
    }
}

/// Passes a response body through, counting its bytes, and reports the count when it ends or
/// is dropped (the client went away).
struct CountingBody<B> {
    inner: B,
    sent: Arc<AtomicU64>,
    done: Option<oneshot::Sender<u64>>,
}

impl<B> CountingBody<B> {
    fn new(inner: B, done: oneshot::Sender<u64>) -> Self {
        CountingBody { inner, sent: Arc::new(AtomicU64::new(0)), done: Some(done) }
    }
    fn report(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(self.sent.load(Ordering::Relaxed));
        }
    }
}

impl<B> Drop for CountingBody<B> {
    fn drop(&mut self) {
        self.report();
    }
}

impl<B> http_body::Body for CountingBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.report(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
