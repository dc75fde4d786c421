//! The Lambda Runtime API (`/2018-06-01/runtime/...`) for one instance: the bootstrap long-polls
//! `invocation/next`, answers with `invocation/{id}/response` or `/error`, or reports
//! `init/error`. Hangar's side hands invocations in with [`RuntimeApi::invoke`].
//!
//! One server per instance, bound to a loopback port given to the instance as
//! `AWS_LAMBDA_RUNTIME_API`; one invocation at a time, as in Lambda.
//!
//! What arrives here comes from user code: fuzzed by `fuzz/fuzz_targets/runtime_api.rs`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};

use crate::MAX_RESPONSE_BYTES;

/// One invocation handed to the bootstrap.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Sent as `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// The event, as JSON text.
    pub payload: Bytes,
    /// Milliseconds since the Unix epoch when the invocation times out.
    pub deadline_ms: i64,
    /// Sent as `Lambda-Runtime-Invoked-Function-Arn`.
    pub function_arn: String,
    /// Sent as `Lambda-Runtime-Trace-Id`.
    pub trace_id: String,
    /// JSON text sent as `Lambda-Runtime-Client-Context`, if any.
    pub client_context: Option<String>,
    /// JSON text sent as `Lambda-Runtime-Cognito-Identity`, if any.
    pub cognito_identity: Option<String>,
}

/// How the bootstrap answered an invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `invocation/{id}/response`: the handler's result (any bytes; JSON for the standard runtimes).
    Response(Bytes),
    /// `invocation/{id}/error`: `{"errorMessage","errorType","stackTrace"}`.
    Error(serde_json::Value),
    /// `init/error`: the function could not start.
    InitError(serde_json::Value),
}

/// Why an invocation got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvokeError {
    /// The instance's Runtime API was stopped or its bootstrap went away.
    #[error("the function's runtime stopped before answering")]
    Gone,
    /// Another invocation is still running on this instance.
    #[error("this instance is busy with another invocation")]
    Busy,
}

#[derive(Default)]
struct Inner {
    /// The invocation being answered, with where its answer goes.
    current: Option<(String, oneshot::Sender<Answer>)>,
    /// An `init/error` that arrived with no invocation to attach it to.
    init_error: Option<serde_json::Value>,
}

#[derive(Clone)]
struct ApiState {
    next: Arc<tokio::sync::Mutex<mpsc::Receiver<Invocation>>>,
    inner: Arc<Mutex<Inner>>,
    /// When the bootstrap first polled (or reported an init error).
    polled: Arc<tokio::sync::watch::Sender<Option<std::time::Instant>>>,
}

/// The Runtime API of one instance.
pub struct RuntimeApi {
    addr: SocketAddr,
    tx: mpsc::Sender<Invocation>,
    inner: Arc<Mutex<Inner>>,
    /// When the bootstrap first polled (or reported an init error).
    polled: Arc<tokio::sync::watch::Sender<Option<std::time::Instant>>>,
    /// The server task, when served on a socket.
    server: Option<tokio::task::JoinHandle<()>>,
}

impl RuntimeApi {
    /// Serves the Runtime API on `127.0.0.1` at a free port.
    pub async fn start() -> std::io::Result<RuntimeApi> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Self::start_on(listener)
    }

    /// Serves the Runtime API on a listener bound elsewhere, e.g. inside the network namespace
    /// of the instance (so the instance reaches it, and nothing else, at `127.0.0.1`). The
    /// listener must be non-blocking.
    pub fn start_on(listener: std::net::TcpListener) -> std::io::Result<RuntimeApi> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let (mut api, app) = Self::with_router(addr);
        api.server = Some(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("runtime API server ended: {e}");
            }
        }));
        Ok(api)
    }

    /// The Runtime API without a socket: its router, to be called directly (fuzzing, tests).
    pub fn in_memory() -> (RuntimeApi, Router) {
        Self::with_router(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn with_router(addr: SocketAddr) -> (RuntimeApi, Router) {
        let (tx, rx) = mpsc::channel(1);
        let inner = Arc::new(Mutex::new(Inner::default()));
        let polled = Arc::new(tokio::sync::watch::Sender::new(None));
        let state = ApiState { next: Arc::new(tokio::sync::Mutex::new(rx)), inner: inner.clone(), polled: polled.clone() };
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .layer(DefaultBodyLimit::max(MAX_RESPONSE_BYTES))
            .with_state(state);
        (RuntimeApi { addr, tx, inner, polled, server: None }, app)
    }

    /// When the bootstrap first asked for an invocation, if it has.
    pub fn polled_at(&self) -> Option<std::time::Instant> {
        *self.polled.borrow()
    }

    /// Resolves once the bootstrap has asked for its first invocation (it finished init) or
    /// reported an init error, with when that happened.
    pub async fn initialized(&self) -> std::time::Instant {
        let mut rx = self.polled.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(at) => at.unwrap_or_else(std::time::Instant::now),
            Err(_) => std::time::Instant::now(),
        }
    }

    /// `host:port` for `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Hands an invocation to the bootstrap and waits for its answer. The caller bounds the
    /// wait (the function's timeout); an `init/error` already reported answers at once.
    pub async fn invoke(&self, invocation: Invocation) -> Result<Answer, InvokeError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = inner.init_error.clone() {
                return Ok(Answer::InitError(e));
            }
            if inner.current.is_some() {
                return Err(InvokeError::Busy);
            }
            inner.current = Some((invocation.request_id.clone(), tx));
        }
        if self.tx.send(invocation).await.is_err() {
            self.inner.lock().unwrap_or_else(|p| p.into_inner()).current = None;
            return Err(InvokeError::Gone);
        }
        rx.await.map_err(|_| InvokeError::Gone)
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

fn mark_polled(state: &ApiState) {
    state.polled.send_if_modified(|at| at.is_none() && at.replace(std::time::Instant::now()).is_none());
}

fn header(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn next(State(state): State<ApiState>) -> Response {
    mark_polled(&state);
    // One poller at a time; a second concurrent poll waits behind the first.
    let mut rx = state.next.lock().await;
    let Some(inv) = rx.recv().await else {
        return (StatusCode::GONE, "the instance is shutting down").into_response();
    };
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", header(&inv.request_id));
    headers.insert("lambda-runtime-deadline-ms", header(&inv.deadline_ms.to_string()));
    headers.insert("lambda-runtime-invoked-function-arn", header(&inv.function_arn));
    headers.insert("lambda-runtime-trace-id", header(&inv.trace_id));
    if let Some(c) = &inv.client_context {
        headers.insert("lambda-runtime-client-context", header(c));
    }
    if let Some(c) = &inv.cognito_identity {
        headers.insert("lambda-runtime-cognito-identity", header(c));
    }
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, inv.payload).into_response()
}

fn answer(state: &ApiState, id: &str, answer: Answer) -> Response {
    let mut inner = state.inner.lock().unwrap_or_else(|p| p.into_inner());
    match inner.current.take() {
        Some((current, tx)) if current == id => {
            let _ = tx.send(answer);
            (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"status": "OK"}))).into_response()
        }
        other => {
            inner.current = other;
            let body = serde_json::json!({
                "errorMessage": format!("invocation {id} is not the one in progress"),
                "errorType": "InvalidRequestID",
            });
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
    }
}

async fn response(State(state): State<ApiState>, Path(id): Path<String>, body: Bytes) -> Response {
    answer(&state, &id, Answer::Response(body))
}

/// An error body as the bootstrap sent it, or wrapped into Lambda's shape when it is not JSON.
fn error_body(headers: &HeaderMap, body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| {
        let kind = headers.get("lambda-runtime-function-error-type").and_then(|v| v.to_str().ok()).unwrap_or("Unhandled");
        crate::error_body(kind, String::from_utf8_lossy(body))
    })
}

async fn error(State(state): State<ApiState>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    answer(&state, &id, Answer::Error(error_body(&headers, &body)))
}

async fn init_error(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let err = error_body(&headers, &body);
    let mut inner = state.inner.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, tx)) = inner.current.take() {
        let _ = tx.send(Answer::InitError(err.clone()));
    }
    inner.init_error = Some(err);
    mark_polled(&state);
    (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"status": "OK"}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(id: &str, payload: &str) -> Invocation {
        Invocation {
            request_id: id.into(),
            payload: Bytes::from(payload.to_string()),
            deadline_ms: 1_700_000_000_000,
            function_arn: "arn:aws:lambda:local:000000000000:function:f".into(),
            trace_id: "Root=1-0-0".into(),
            client_context: None,
            cognito_identity: Some("{\"cognitoIdentityId\":\"x\"}".into()),
        }
    }

    /// A minimal bootstrap loop, as a Lambda runtime client does it.
    async fn bootstrap(base: String, reply: fn(&str) -> (&'static str, String)) {
        let c = reqwest::Client::new();
        loop {
            let Ok(r) = c.get(format!("{base}/2018-06-01/runtime/invocation/next")).send().await else { return };
            if r.status() != 200 {
                return;
            }
            let id = r.headers()["lambda-runtime-aws-request-id"].to_str().unwrap().to_string();
            assert!(r.headers().contains_key("lambda-runtime-deadline-ms"));
            assert!(r.headers()["lambda-runtime-invoked-function-arn"].to_str().unwrap().starts_with("arn:aws:lambda"));
            assert_eq!(r.headers()["lambda-runtime-cognito-identity"], "{\"cognitoIdentityId\":\"x\"}");
            let event = r.text().await.unwrap();
            let (kind, body) = reply(&event);
            c.post(format!("{base}/2018-06-01/runtime/invocation/{id}/{kind}")).body(body).send().await.unwrap();
        }
    }

    #[tokio::test]
    async fn invocations_flow_through_next_and_response() {
        let api = RuntimeApi::start().await.unwrap();
        let base = format!("http://{}", api.address());
        tokio::spawn(bootstrap(base, |event| {
            if event.contains("fail") {
                ("error", r#"{"errorMessage":"boom","errorType":"ValueError","stackTrace":[]}"#.into())
            } else {
                ("response", format!("{{\"echo\":{event}}}"))
            }
        }));
        for i in 0..5 {
            let a = api.invoke(inv(&format!("r{i}"), &format!("{{\"n\":{i}}}"))).await.unwrap();
            assert_eq!(a, Answer::Response(Bytes::from(format!("{{\"echo\":{{\"n\":{i}}}}}"))));
        }
        let a = api.invoke(inv("bad", "{\"fail\":true}")).await.unwrap();
        let Answer::Error(e) = a else { panic!("{a:?}") };
        assert_eq!(e["errorType"], "ValueError");
    }

    #[tokio::test]
    async fn init_error_answers_the_waiting_and_later_invocations() {
        let api = RuntimeApi::start().await.unwrap();
        let base = format!("http://{}", api.address());
        let waiting = api.invoke(inv("r1", "{}"));
        let report = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            reqwest::Client::new()
                .post(format!("{base}/2018-06-01/runtime/init/error"))
                .header("lambda-runtime-function-error-type", "Runtime.ImportModuleError")
                .body("No module named 'app'")
                .send()
                .await
                .unwrap()
                .status()
        };
        let (a, status) = tokio::join!(waiting, report);
        assert_eq!(status, 202);
        let Answer::InitError(e) = a.unwrap() else { panic!() };
        assert_eq!(e["errorType"], "Runtime.ImportModuleError");
        assert_eq!(e["errorMessage"], "No module named 'app'");
        assert!(matches!(api.invoke(inv("r2", "{}")).await, Ok(Answer::InitError(_))));
    }

    #[tokio::test]
    async fn wrong_request_id_and_oversized_responses_are_rejected() {
        let api = RuntimeApi::start().await.unwrap();
        let base = format!("http://{}", api.address());
        let c = reqwest::Client::new();
        let r = c.post(format!("{base}/2018-06-01/runtime/invocation/nope/response")).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 400);
        let api = std::sync::Arc::new(api);
        let invoking = {
            let api = api.clone();
            tokio::spawn(async move { api.invoke(inv("r1", "{}")).await })
        };
        let r = c.get(format!("{base}/2018-06-01/runtime/invocation/next")).send().await.unwrap();
        assert_eq!(r.headers()["lambda-runtime-aws-request-id"], "r1");
        assert_eq!(api.invoke(inv("r2", "{}")).await, Err(InvokeError::Busy));
        let big = vec![b'x'; MAX_RESPONSE_BYTES + 1];
        let r = c.post(format!("{base}/2018-06-01/runtime/invocation/r1/response")).body(big).send().await.unwrap();
        assert_eq!(r.status(), 413);
        c.post(format!("{base}/2018-06-01/runtime/invocation/r1/response")).body("\"ok\"").send().await.unwrap();
        assert_eq!(invoking.await.unwrap(), Ok(Answer::Response(Bytes::from("\"ok\""))));
    }
}
