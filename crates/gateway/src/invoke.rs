//! The invocation path: function URLs (`/fn/{namespace}/{name}/{rest...}`) and
//! `POST /v1/functions/{name}/invoke`. Everything here is in memory: route table, key table.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use hangar_api::{FUNCTION_ERROR_HEADER, INVOCATION_ID_HEADER, Trigger};

use crate::AppState;
use crate::auth::Credentials;
use crate::error::{ApiError, ApiQuery};

/// Any method on `/fn/{namespace}/{name}/{rest...}`: the function sees `/{rest...}`, with
/// `X-Forwarded-Prefix: /fn/{namespace}/{name}`.
pub async fn function_url(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path();
    let mut parts = path.strip_prefix("/fn/").unwrap_or("").splitn(3, '/');
    let (ns, name) = match (parts.next(), parts.next()) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => (ns.to_string(), name.to_string()),
        _ => {
            return Err(ApiError::bad_request("invalid_path", "function URLs look like /fn/{namespace}/{name}/{path}"));
        }
    };
    let rest = format!("/{}", parts.next().unwrap_or(""));
    let prefix = format!("/fn/{ns}/{name}");
    serve_function(&state, &ns, &name, req, &rest, Some(&prefix)).await
}

/// Sends an HTTP request from outside to function `ns/name` at `path` (plus the request's
/// query): the caller checked, the `X-Forwarded-*` headers set (`prefix`: the route it came
/// under), an anonymous caller's view of an error kept generic.
pub(crate) async fn serve_function(state: &AppState, ns: &str, name: &str, req: Request, path: &str, prefix: Option<&str>) -> Result<Response, ApiError> {
    crate::traces::name_workload(&req, hangar_api::WorkloadKind::Function, ns, name);
    let slot = state.scheduler.route(ns, name);
    let public = slot.as_ref().is_some_and(|s| s.deployment().config.public);
    // Whoever may not see the namespace gets a function's own errors without their details.
    let anonymous = public && !matches!(Credentials::from_headers(req.headers(), &state.keys), Credentials::Valid(p) if p.can_access(ns));
    if !public {
        // Anonymous callers learn nothing about which private functions exist.
        let principal = Credentials::from_headers(req.headers(), &state.keys).require()?;
        if !principal.can_access(ns) || slot.is_none() {
            return Err(ApiError::not_found(format_args!("function `{name}` in namespace `{ns}`")));
        }
    }
    let Some(slot) = slot else {
        return Err(ApiError::not_found(format_args!("function `{name}` in namespace `{ns}`")));
    };
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let (mut head, body) = req.into_parts();
    head.uri = target.parse().map_err(|_| ApiError::bad_request("invalid_path", "the request path is not a valid URI"))?;
    crate::hosts::set_forwarded(&mut head, prefix);
    if !public {
        // The platform key is for Hangar, not for the function.
        head.headers.remove(http::header::AUTHORIZATION);
    }
    let response = invoke(state, &slot, head, body, Trigger::Http).await?;
    if anonymous && response.headers().contains_key(FUNCTION_ERROR_HEADER) {
        return Ok(generic_error(response));
    }
    Ok(response)
}

/// What an anonymous caller of a public function URL sees of an unhandled error, as on Lambda's
/// function URLs: the status and a generic body; the error type, message and stack trace stay
/// in the invocation record and logs.
fn generic_error(response: Response) -> Response {
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::BAD_GATEWAY;
    parts.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(r#"{"message":"Internal Server Error"}"#))
}

/// Query of an invoke.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InvokeQuery {
    pub namespace: Option<String>,
    /// Queue the invocation and answer `202` with its id once it is persisted (also
    /// `X-Hangar-Invocation-Type: Event`); an `Idempotency-Key` header deduplicates.
    #[serde(default, rename = "async")]
    pub asynchronous: bool,
}

/// `POST /v1/functions/{name}/invoke`: the body is sent to the function as `POST /`.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", params(InvokeQuery), tag = "functions",
    request_body(content = String, description = "sent to the function as the body of `POST /`"),
    responses((status = 200, description = "the function's response"), (status = 202, body = hangar_api::events::AsyncAccepted, description = "queued (asynchronous)"),
        (status = 404, body = hangar_api::ErrorBody), (status = 413, body = hangar_api::ErrorBody)))]
pub async fn invoke_api(
    State(state): State<AppState>,
    principal: crate::auth::Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<InvokeQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let ns = principal.scope(q.namespace.as_deref())?;
    let slot = state.scheduler.route(&ns, &name).ok_or_else(|| ApiError::not_found(format_args!("function `{name}` in namespace `{ns}`")))?;
    crate::traces::name_workload(&req, hangar_api::WorkloadKind::Function, &ns, &name);
    if crate::events::wants_async(q.asynchronous, req.headers())? {
        let (head, body) = req.into_parts();
        return crate::events::accept(&state, &slot, &head.headers, body).await;
    }
    let (mut head, body) = req.into_parts();
    head.uri = http::Uri::from_static("/");
    head.method = http::Method::POST;
    head.headers.remove(http::header::AUTHORIZATION);
    invoke(&state, &slot, head, body, Trigger::Api).await
}

async fn invoke(
    state: &AppState,
    slot: &Arc<hangar_scheduler::Slot>,
    head: http::request::Parts,
    body: axum::body::Body,
    trigger: Trigger,
) -> Result<Response, ApiError> {
    let body = read_payload(state, &head, body).await?;
    if let Some(peers) = &state.peers {
        match peers.route(slot) {
            crate::cluster::Route::Here => {}
            crate::cluster::Route::There(worker) => {
                let d = slot.deployment();
                return Ok(peers.forward(&worker, &d.namespace, &d.name, head, body, trigger).await);
            }
            crate::cluster::Route::Nowhere => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_capacity",
                    "no worker node has room for this call now (all are full, draining or lost); try again shortly or add workers",
                ));
            }
        }
    }
    Ok(run(state, slot, head, body, trigger).await)
}

/// Runs a call on this node, whatever placement would say (another node placed it here).
pub(crate) async fn invoke_here(
    state: &AppState,
    slot: &Arc<hangar_scheduler::Slot>,
    head: http::request::Parts,
    body: axum::body::Body,
    trigger: Trigger,
) -> Result<Response, ApiError> {
    let body = read_payload(state, &head, body).await?;
    Ok(run(state, slot, head, body, trigger).await)
}

/// Reads a call's whole body, at most the payload limit.
async fn read_payload(state: &AppState, head: &http::request::Parts, body: axum::body::Body) -> Result<Bytes, ApiError> {
    let max = state.limits.max_payload_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the payload limit of {max} bytes; send less or pass a reference (e.g. a URL) instead"),
        )
    };
    let declared = head.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max as u64) {
        if n <= LINGER_BYTES {
            // Let the client finish sending, so it reads the 413 instead of a broken pipe.
            linger(body).await;
        }
        return Err(too_large());
    }
    // The whole body is read before anything runs: one that breaks off or is malformed
    // (a bad chunk) is a 400 and the function never sees half of it.
    read_bounded(body, max, "the request body").await
}

/// Runs a call here through the scheduler; the answer carries the invocation id.
async fn run(state: &AppState, slot: &Arc<hangar_scheduler::Slot>, head: http::request::Parts, body: Bytes, trigger: Trigger) -> Response {
    let (id, response) = state.scheduler.invoke(slot, http::Request::from_parts(head, hangar_runtime::full(body)), trigger).await;
    let (mut parts, body) = response.into_parts();
    if let Ok(v) = http::HeaderValue::from_str(&id) {
        parts.headers.insert(INVOCATION_ID_HEADER, v);
    }
    Response::from_parts(parts, axum::body::Body::new(body))
}

/// Oversized bodies up to this size are read and dropped before answering 413; larger ones
/// get the answer at once and the connection is closed.
const LINGER_BYTES: u64 = 64 << 20;
/// The longest an oversized body is read before answering.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(10);

async fn linger(body: axum::body::Body) {
    drain(&mut body.into_data_stream()).await;
}

/// Reads and drops what is left of a request body (up to [`LINGER_BYTES`] and [`LINGER_TIME`]),
/// so that a client still sending it reads the error answered before it was all read, instead
/// of a broken pipe.
pub(crate) async fn drain<S, E>(body: &mut S)
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
{
    use futures::StreamExt;
    let mut read = 0u64;
    let all = async {
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len() as u64;
            if read > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, all).await;
}

/// Reads a whole body of at most `max` bytes: more is a `413` naming `what`, a body that cannot
/// be read (cut off, malformed chunked encoding) a `400`.
pub(crate) async fn read_bounded(body: axum::body::Body, max: usize, what: &str) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{what} is larger than the payload limit of {max} bytes; send less or pass a reference (e.g. a URL) instead"),
        )),
        Err(e) => Err(ApiError::bad_request("invalid_body", format!("{what} could not be read ({e}); nothing was run: send a complete, well-formed body"))),
    }
}
