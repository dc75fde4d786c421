//! Traces at the edge: the span of every request a workload gets from outside (W3C
//! `traceparent` continued, or a new trace), the span of a request sent to a service instance,
//! and the API that searches the node's trace store (`/v1/traces`).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::response::Response;
use hangar_api::traces::{SpanKind, TraceList, TraceView, WorkloadRef};
use hangar_api::{WorkloadKind, traces::SpanStatus};
use hangar_trace::{Span, SpanContext, Started, TraceId};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiQuery};

/// Whose a request from outside turned out to be: a workload (`Ok`) or only a namespace (a
/// topic's publish), filled in by whoever routes it.
#[derive(Clone, Default)]
pub(crate) struct SpanWorkload(Arc<OnceLock<Result<WorkloadRef, String>>>);

/// Says which workload the request's ingress span is for (once; later calls change nothing).
pub(crate) fn name_workload<B>(req: &http::Request<B>, kind: WorkloadKind, ns: &str, name: &str) {
    if let Some(w) = req.extensions().get::<SpanWorkload>() {
        let _ = w.0.set(Ok(WorkloadRef { kind, namespace: ns.to_string(), name: name.to_string() }));
    }
}

/// Says which namespace the request's ingress span belongs to, when it is of no one workload.
pub(crate) fn name_namespace(head: &http::request::Parts, ns: &str) {
    if let Some(w) = head.extensions.get::<SpanWorkload>() {
        let _ = w.0.set(Err(ns.to_string()));
    }
}

/// The route of a request from outside that reaches a workload, as `http.route` names it;
/// `None` for the platform's own routes, which are not traced. A workload's host name routes
/// every path but `/_hangar/` to it, as [`crate::hosts::route`] does.
fn route(state: &AppState, req: &Request) -> Option<&'static str> {
    let path = req.uri().path();
    if path.starts_with("/_hangar/") {
        return None;
    }
    if crate::hosts::is_workload_host(state, req) {
        return Some("/*");
    }
    if path.starts_with("/fn/") {
        return Some("/fn/{namespace}/{name}/*");
    }
    if path.starts_with("/svc/") {
        return Some("/svc/{namespace}/{name}/*");
    }
    let mut parts = path.strip_prefix("/v1/")?.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("functions"), Some(_), Some("invoke"), None) => Some("/v1/functions/{name}/invoke"),
        (Some("topics"), Some(_), Some("events"), None) => Some("/v1/topics/{topic}/events"),
        _ => None,
    }
}

/// Every request from outside for a workload gets a span (`SERVER`): the trace its
/// `traceparent` names continued, or a new one (a malformed header is ignored); what it
/// reaches sees this span as its parent.
pub async fn ingress(State(state): State<AppState>, mut req: Request, next: axum::middleware::Next) -> Response {
    if !state.tracer.enabled() {
        return next.run(req).await;
    }
    let Some(route) = route(&state, &req) else { return next.run(req).await };
    let Some((ctx, parent)) = state.tracer.hop(req.headers()) else { return next.run(req).await };
    ctx.inject(req.headers_mut());
    let workload = SpanWorkload::default();
    req.extensions_mut().insert(workload.clone());
    let started = Started::now();
    // Kept cheaply until the span is known to be kept.
    let (method, uri, host) = (req.method().clone(), req.uri().clone(), req.headers().get(http::header::HOST).cloned());
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let resp = next.run(req).await;
    let status = resp.status();
    let named = workload.0.get();
    let of = match named {
        Some(Ok(w)) => Some((w.kind, w.namespace.as_str(), w.name.as_str())),
        _ => None,
    };
    if !state.tracer.keeps(&ctx, status.is_server_error(), started.at.elapsed().as_nanos() as u64, of) {
        return resp;
    }
    let host = host.as_ref().and_then(|h| h.to_str().ok()).map(hangar_service::proxy::host_service);
    let client = client.map(|c| c.ip().to_canonical().to_string());
    let name = if route == "/*" { method.to_string() } else { format!("{method} {route}") };
    let mut span = Span::ended(ctx, parent, name, SpanKind::Server, started)
        .with("http.request.method", method.as_str())
        .with("url.path", uri.path())
        .with("url.scheme", "http")
        .with("http.route", route)
        .with("http.response.status_code", status.as_u16());
    if let Some(h) = host {
        span = span.with("server.address", h);
    }
    if let Some(c) = client {
        span = span.with("client.address", c);
    }
    if status.is_server_error() {
        span = span.failed(status.to_string());
    }
    match named {
        Some(Ok(w)) => span = span.of(w.clone()),
        Some(Err(ns)) => span = span.in_namespace(ns),
        None => {}
    }
    state.tracer.record(span);
    resp
}

/// The span of a request this node sends to a service instance (`CLIENT`), begun: the request
/// carries it as its `traceparent`. `None` when tracing is off.
pub(crate) fn client_span(state: &AppState, req: &mut Request) -> Option<(SpanContext, Option<hangar_trace::SpanId>, Started, http::Method)> {
    let (ctx, parent) = state.tracer.hop(req.headers())?;
    ctx.inject(req.headers_mut());
    Some((ctx, parent, Started::now(), req.method().clone()))
}

/// Ends a span [`client_span`] began.
pub(crate) fn end_client_span(
    state: &AppState,
    begun: Option<(SpanContext, Option<hangar_trace::SpanId>, Started, http::Method)>,
    ns: &str,
    name: &str,
    outcome: Result<http::StatusCode, &str>,
) {
    let Some((ctx, parent, started, method)) = begun else { return };
    let failed = outcome.is_err() || outcome.is_ok_and(|s| s.is_server_error());
    if !state.tracer.keeps(&ctx, failed, started.at.elapsed().as_nanos() as u64, Some((WorkloadKind::Service, ns, name))) {
        return;
    }
    let mut span = Span::ended(ctx, parent, method.to_string(), SpanKind::Client, started)
        .with("http.request.method", method.as_str())
        .with("server.address", name.to_string())
        .of(WorkloadRef { kind: WorkloadKind::Service, namespace: ns.to_string(), name: name.to_string() });
    match outcome {
        Ok(status) => {
            span = span.with("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                span = span.failed(status.to_string());
            }
        }
        Err(why) => span = span.failed(why),
    }
    state.tracer.record(span);
}

/// Query of `GET /v1/traces`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    /// Only this namespace's spans (a namespace key: its own; an admin key: every namespace
    /// unless given).
    pub namespace: Option<String>,
    /// Only traces that touch a workload of this name.
    pub workload: Option<String>,
    /// `function`, `service` or `sandbox`.
    pub kind: Option<String>,
    /// How far back: a duration (`15m`, `2h`); default `1h`.
    pub since: Option<String>,
    /// Only traces at least this long (`250ms`).
    pub min_duration: Option<String>,
    /// `ok` or `error`.
    pub status: Option<String>,
    /// At most this many, newest first (1..=1000; default 100).
    pub limit: Option<usize>,
}

fn duration(field: &str, v: &str) -> Result<std::time::Duration, ApiError> {
    humantime::parse_duration(v)
        .map_err(|_| ApiError::bad_request("invalid_query", format!("{field}: `{}` is not a duration like 15m or 250ms", hangar_api::validate::shown(v))))
}

/// The namespace a caller's trace queries are limited to (`None`: an admin seeing all).
fn visible_namespace(p: &Principal, asked: Option<&str>) -> Result<Option<String>, ApiError> {
    match asked {
        Some(ns) => p.scope(Some(ns)).map(Some),
        None => Ok(p.namespace.clone()),
    }
}

fn store(state: &AppState) -> Result<&hangar_trace::store::TraceStore, ApiError> {
    state.tracer.store().ok_or_else(|| {
        ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "tracing_off",
            "tracing is off on this server (started with --trace-sample off); start it without that flag to keep traces",
        )
    })
}

/// Traces this node kept, newest first.
#[utoipa::path(get, path = "/v1/traces", params(TraceQuery), tag = "traces",
    responses((status = 200, body = TraceList), (status = 400, body = hangar_api::ErrorBody)))]
pub async fn list(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<TraceQuery>) -> Result<Json<TraceList>, ApiError> {
    let namespace = visible_namespace(&p, q.namespace.as_deref())?;
    let kind = q.kind.as_deref().map(str::parse::<WorkloadKind>).transpose().map_err(|e| ApiError::bad_request("invalid_query", format!("kind: {e}")))?;
    let status = q.status.as_deref().map(str::parse::<SpanStatus>).transpose().map_err(|e| ApiError::bad_request("invalid_query", format!("status: {e}")))?;
    let since = duration("since", q.since.as_deref().unwrap_or("1h"))?;
    let min_duration = q.min_duration.as_deref().map(|v| duration("min_duration", v)).transpose()?.unwrap_or_default();
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit: {limit} is out of range; choose 1 to 1000")));
    }
    let now_us = hangar_trace::span::now_ns() / 1000;
    let query = hangar_trace::store::Query {
        namespace,
        workload: q.workload,
        kind,
        since_us: now_us.saturating_sub(since.as_micros() as u64),
        min_duration_us: min_duration.as_micros() as u64,
        status,
        limit,
    };
    Ok(Json(TraceList { items: store(&state)?.search(&query) }))
}

/// One trace: its spans on this node, earliest first.
#[utoipa::path(get, path = "/v1/traces/{id}", params(("id" = String, Path), ("namespace" = Option<String>, Query)), tag = "traces",
    responses((status = 200, body = TraceView), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<crate::api::NamespaceQuery>,
) -> Result<Json<TraceView>, ApiError> {
    let namespace = visible_namespace(&p, q.namespace.as_deref())?;
    let not_found = || ApiError::not_found(format_args!("trace `{}`", hangar_api::validate::shown(&id)));
    let trace_id = TraceId::parse(&id).ok_or_else(not_found)?;
    store(&state)?.get(&trace_id, namespace.as_deref()).map(Json).ok_or_else(not_found)
}
