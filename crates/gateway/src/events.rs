//! Events over HTTP: asynchronous invocations (`202`, persisted first; listing and showing
//! them with their attempts; the deploy-time check of `async.on_failure`), triggers (cron
//! schedules and topic subscriptions) and publishing to topics.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hangar_api::events::{
    AsyncAccepted, AsyncInvocation, AsyncState, IDEMPOTENCY_KEY_HEADER, INVOCATION_TYPE_HEADER, MAX_ASYNC_PAYLOAD_BYTES, Published, TriggerConfig, TriggerInfo,
};
use hangar_api::{INVOCATION_ID_HEADER, RuntimeKind, validate};
use hangar_store::AsyncFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::api::NamespaceQuery;
use crate::auth::Principal;
use crate::error::{ApiError, ApiQuery};

/// Whether a request asks for an asynchronous invocation: `?async=true` or
/// `X-Hangar-Invocation-Type: Event`. `RequestResponse` (or nothing) is the synchronous kind.
pub fn wants_async(query_async: bool, headers: &http::HeaderMap) -> Result<bool, ApiError> {
    match headers.get(INVOCATION_TYPE_HEADER).map(|v| v.to_str().unwrap_or("")) {
        None => Ok(query_async),
        Some(v) if v.eq_ignore_ascii_case("event") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("requestresponse") => Ok(query_async),
        Some(v) => Err(ApiError::bad_request(
            "invalid_header",
            format!("{INVOCATION_TYPE_HEADER}: `{v}` is not `Event` (asynchronous) or `RequestResponse` (synchronous)"),
        )),
    }
}

/// Persists the request's body as an event for the function and answers `202` with its id.
pub async fn accept(state: &AppState, slot: &hangar_scheduler::Slot, headers: &http::HeaderMap, body: axum::body::Body) -> Result<Response, ApiError> {
    let d = slot.deployment();
    let key = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        Some(v) => {
            let k = v.to_str().unwrap_or("");
            hangar_api::events::idempotency_key(k)?;
            Some(k.to_string())
        }
        None => None,
    };
    let max = MAX_ASYNC_PAYLOAD_BYTES.min(state.limits.max_payload_bytes);
    let payload = crate::invoke::read_bounded(body, max, "an asynchronous invocation's payload").await?;
    if d.config.runtime != RuntimeKind::Wasm
        && !payload.iter().all(u8::is_ascii_whitespace)
        && serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err()
    {
        return Err(ApiError::bad_request("invalid_payload", "the payload of a process function is its event and must be JSON"));
    }
    let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let parent = hangar_trace::SpanContext::from_headers(headers);
    let (id, duplicate) = state.async_queue.accept(&d.namespace, &hangar_events::Target::function(&d.name), payload, content_type, key, parent).await?;
    let mut resp = (StatusCode::ACCEPTED, Json(AsyncAccepted { id: id.clone(), state: AsyncState::Queued, duplicate })).into_response();
    if duplicate && let Ok(Some(rec)) = state.store.get_async(Some(&d.namespace), &id).await {
        resp = (StatusCode::ACCEPTED, Json(AsyncAccepted { id: id.clone(), state: rec.state, duplicate })).into_response();
    }
    if let Ok(v) = http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert(INVOCATION_ID_HEADER, v);
    }
    Ok(resp)
}

/// Filters of `GET /v1/async-invocations`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AsyncQuery {
    pub namespace: Option<String>,
    /// Only events for this function or service.
    pub target: Option<String>,
    /// Only this state: queued, running, succeeded, failed (the dead-letter list).
    pub state: Option<String>,
    /// Continue after this id (from `next_cursor`).
    pub cursor: Option<String>,
    /// At most this many (1..=1000, default 50).
    pub limit: Option<u32>,
}

/// A page of asynchronous invocations, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AsyncPage {
    pub items: Vec<AsyncInvocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Lists asynchronous invocations; `state=failed` is the dead-letter list.
#[utoipa::path(get, path = "/v1/async-invocations", params(AsyncQuery), tag = "invocations", responses((status = 200, body = AsyncPage)))]
pub async fn list(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<AsyncQuery>) -> Result<Json<AsyncPage>, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    let st = q.state.as_deref().map(str::parse::<AsyncState>).transpose().map_err(|e| ApiError::bad_request("invalid_query", format!("state: {e}")))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit: {limit} is out of range; choose 1 to 1000")));
    }
    if let Some(t) = &q.target {
        validate::name("target", t)?;
    }
    state.async_queue.flush().await;
    let rows = state.store.list_async(AsyncFilter { namespace: Some(ns), target: q.target, state: st, cursor: crate::api::cursor(&q.cursor)?, limit }).await?;
    let next_cursor = (rows.len() == limit as usize).then(|| rows.last().map(|r| r.id.clone())).flatten();
    let items = rows.iter().map(|r| live(&state, r)).collect();
    Ok(Json(AsyncPage { items, next_cursor }))
}

/// One asynchronous invocation with its attempts.
#[utoipa::path(get, path = "/v1/async-invocations/{id}", params(NamespaceQuery), tag = "invocations",
    responses((status = 200, body = AsyncInvocation), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<AsyncInvocation>, ApiError> {
    let ns = match (&q.namespace, p.is_admin()) {
        (None, true) => None,
        (asked, _) => Some(p.scope(asked.as_deref())?),
    };
    state.async_queue.flush().await;
    let row = state.store.get_async(ns.as_deref(), &id).await?.ok_or_else(|| ApiError::not_found(format_args!("asynchronous invocation `{id}`")))?;
    Ok(Json(live(&state, &row)))
}

/// The stored view, with the state the queue has in memory (running is not persisted).
fn live(state: &AppState, rec: &hangar_api::events::AsyncRecord) -> AsyncInvocation {
    let mut view = rec.to_api();
    if let Some(now) = state.async_queue.live_state(&rec.id) {
        view.state = now;
    }
    view
}

// ---- triggers and topics ----

fn trigger_view(state: &AppState, row: &hangar_store::TriggerRow) -> TriggerInfo {
    let (last, next) = state.triggers.times(&row.namespace, &row.name);
    TriggerInfo {
        namespace: row.namespace.clone(),
        name: row.name.clone(),
        config: row.config.clone(),
        created_at: hangar_api::rfc3339(row.created_ms),
        last_fired_at: last.or(row.last_fired_ms).map(hangar_api::rfc3339),
        next_fire_at: next.map(hangar_api::rfc3339),
    }
}

/// Creates or replaces a trigger: a cron schedule or a topic subscription, for a function or
/// a service of the namespace.
#[utoipa::path(put, path = "/v1/triggers/{name}", params(NamespaceQuery), request_body = TriggerConfig, tag = "events",
    responses((status = 201, body = TriggerInfo), (status = 200, body = TriggerInfo), (status = 400, body = hangar_api::ErrorBody)))]
pub async fn put_trigger(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
    crate::error::ApiJson(config): crate::error::ApiJson<TriggerConfig>,
) -> Result<Response, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    let (created, row) = state.control.put_trigger(&ns, &name, config).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(trigger_view(&state, &row))).into_response())
}

/// The namespace's triggers.
#[utoipa::path(get, path = "/v1/triggers", params(NamespaceQuery), tag = "events", responses((status = 200, body = [TriggerInfo])))]
pub async fn list_triggers(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<NamespaceQuery>) -> Result<Json<Vec<TriggerInfo>>, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    let rows = state.store.list_triggers(Some(&ns)).await?;
    Ok(Json(rows.iter().map(|r| trigger_view(&state, r)).collect()))
}

#[utoipa::path(delete, path = "/v1/triggers/{name}", params(NamespaceQuery), tag = "events",
    responses((status = 204), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn delete_trigger(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<StatusCode, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    state.control.remove_trigger(&ns, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Publishes an event: the body is its data; `ce-type`, `ce-source` and `ce-id` (which
/// deduplicates) may be given as in CloudEvents' binary mode. Every subscription gets it as a
/// CloudEvent, asynchronously with the usual retries. `202` once persisted.
#[utoipa::path(post, path = "/v1/topics/{topic}/events", params(NamespaceQuery), tag = "events",
    request_body(content = String, description = "the event's data"),
    responses((status = 202, body = Published), (status = 404, body = hangar_api::ErrorBody), (status = 413, body = hangar_api::ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    p: Principal,
    Path(topic): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    let (head, body) = req.into_parts();
    let max = MAX_ASYNC_PAYLOAD_BYTES.min(state.limits.max_payload_bytes);
    // Read first: an answer sent while the client still uploads is lost.
    let data = crate::invoke::read_bounded(body, max, "an event's data").await?;
    hangar_api::events::topic(&topic)?;
    if !state.triggers.has_topic(&ns, &topic) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("topic `{topic}` has no subscriber in namespace `{ns}`; add one with `hangar triggers add NAME --topic {topic} --function F`"),
        ));
    }
    let meta =
        hangar_events::EventMeta::from_headers(&head.headers).map_err(|e| ApiError::bad_request("invalid_header", format!("{}: {}", e.field, e.message)))?;
    crate::traces::name_namespace(&head, &ns);
    let parent = hangar_trace::SpanContext::from_headers(&head.headers);
    let (id, deliveries) = state.triggers.publish(&ns, &topic, data, meta, parent).await?;
    Ok((StatusCode::ACCEPTED, Json(Published { id, deliveries })).into_response())
}
