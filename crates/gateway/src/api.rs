//! The control-plane API (`/v1`): namespaces, keys, functions and invocation history.
//!
//! Every handler validates its input once, here at the edge, before anything is changed; a
//! rejected request leaves existing state untouched.

use axum::Json;
use axum::extract::{FromRequest, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hangar_api::{
    ApiKey, CreateKey, CreateNamespace, CreatedKey, DeployResponse, DeployStatus, Function, FunctionConfig, FunctionList, Invocation, InvocationPage, KeyList,
    Namespace, NamespaceList, Outcome, rfc3339,
};
use hangar_store::{FunctionRow, InvocationFilter, KeyRow};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiQuery, parse_json};
use crate::hosts::Base;

/// `?namespace=`: which namespace to act in (admin keys; namespace keys default to their own).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NamespaceQuery {
    pub namespace: Option<String>,
}

/// Query of a deploy.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    pub namespace: Option<String>,
    /// Validate and compile only; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

pub fn function_view(row: &FunctionRow) -> Function {
    Function {
        namespace: row.namespace.clone(),
        name: row.name.clone(),
        revision: row.revision,
        config: row.config.clone(),
        code_digest: row.code_digest.clone(),
        code_size: row.code_size,
        created_at: rfc3339(row.created_ms),
        updated_at: rfc3339(row.updated_ms),
        url_path: format!("/fn/{}/{}/", row.namespace, row.name),
        urls: Vec::new(),
        instances: None,
    }
}

/// [`function_view`] with the URLs it answers on, as the caller reached this server.
fn function_view_at(state: &AppState, base: &Base, row: &FunctionRow) -> Function {
    let mut view = function_view(row);
    view.urls = base.function_urls(&state.domain, &row.namespace, &row.name, &row.config.hosts);
    view
}

fn namespace_view(row: &hangar_store::NamespaceRow) -> Namespace {
    Namespace { name: row.name.clone(), created_at: rfc3339(row.created_ms), max_concurrency: row.max_concurrency }
}

fn key_view(row: &KeyRow) -> ApiKey {
    ApiKey { id: row.id.clone(), namespace: row.namespace.clone(), name: row.name.clone(), created_at: rfc3339(row.created_ms) }
}

/// Checks that a namespace exists and the caller may use it: an unknown one is a 404 (never an
/// empty list, nor a resource made in a namespace that does not exist).
pub(crate) async fn existing_namespace(state: &AppState, p: &Principal, asked: Option<&str>) -> Result<String, ApiError> {
    let ns = p.scope(asked)?;
    if state.store.get_namespace(&ns).await?.is_none() {
        return Err(ApiError::not_found(format_args!("namespace `{ns}`")));
    }
    Ok(ns)
}

// ---- namespaces ----

#[utoipa::path(post, path = "/v1/namespaces", request_body = CreateNamespace, tag = "namespaces",
    responses((status = 201, body = Namespace), (status = 400, body = hangar_api::ErrorBody), (status = 409, body = hangar_api::ErrorBody)))]
pub async fn create_namespace(State(state): State<AppState>, p: Principal, ApiJson(body): ApiJson<CreateNamespace>) -> Result<Response, ApiError> {
    p.require_admin()?;
    let row = state.control.create_namespace(&body.name, hangar_api::NamespaceLimits { max_concurrency: body.max_concurrency }).await?;
    Ok((StatusCode::CREATED, Json(namespace_view(&row))).into_response())
}

/// Sets a namespace's limits: `max_concurrency` (`null`: the server's `--namespace-concurrency`).
#[utoipa::path(patch, path = "/v1/namespaces/{name}", request_body = hangar_api::NamespaceLimits, tag = "namespaces",
    responses((status = 200, body = Namespace), (status = 400, body = hangar_api::ErrorBody), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn set_namespace_limits(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<hangar_api::NamespaceLimits>,
) -> Result<Json<Namespace>, ApiError> {
    p.require_admin()?;
    Ok(Json(namespace_view(&state.control.set_namespace_limits(&name, body).await?)))
}

#[utoipa::path(get, path = "/v1/namespaces", tag = "namespaces", responses((status = 200, body = NamespaceList)))]
pub async fn list_namespaces(State(state): State<AppState>, p: Principal) -> Result<Json<NamespaceList>, ApiError> {
    let rows = state.store.list_namespaces().await?;
    let items = rows.iter().filter(|r| p.can_access(&r.name)).map(namespace_view).collect();
    Ok(Json(NamespaceList { items }))
}

#[utoipa::path(delete, path = "/v1/namespaces/{name}", tag = "namespaces",
    responses((status = 204), (status = 404, body = hangar_api::ErrorBody), (status = 409, body = hangar_api::ErrorBody)))]
pub async fn delete_namespace(State(state): State<AppState>, p: Principal, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    p.require_admin()?;
    state.control.remove_namespace(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- keys ----

#[utoipa::path(post, path = "/v1/keys", request_body = CreateKey, tag = "keys",
    responses((status = 201, body = CreatedKey), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn create_key(State(state): State<AppState>, p: Principal, ApiJson(body): ApiJson<CreateKey>) -> Result<Response, ApiError> {
    p.require_admin()?;
    let (row, secret) = state.control.create_key(body.namespace, body.name).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key: key_view(&row), secret })).into_response())
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys", responses((status = 200, body = KeyList)))]
pub async fn list_keys(State(state): State<AppState>, p: Principal) -> Result<Json<KeyList>, ApiError> {
    p.require_admin()?;
    let rows = state.store.list_keys().await?;
    Ok(Json(KeyList { items: rows.iter().map(key_view).collect() }))
}

#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", responses((status = 204), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn delete_key(State(state): State<AppState>, p: Principal, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    p.require_admin()?;
    state.control.remove_key(&id, &p.key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- functions ----

#[utoipa::path(get, path = "/v1/functions", params(NamespaceQuery), tag = "functions", responses((status = 200, body = FunctionList)))]
pub async fn list_functions(
    State(state): State<AppState>,
    p: Principal,
    base: Base,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<FunctionList>, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    let rows = state.store.list_functions(Some(&ns)).await?;
    Ok(Json(FunctionList { items: rows.iter().map(|r| function_view_at(&state, &base, r)).collect() }))
}

#[utoipa::path(get, path = "/v1/functions/{name}", params(NamespaceQuery), tag = "functions",
    responses((status = 200, body = Function), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn get_function(
    State(state): State<AppState>,
    p: Principal,
    base: Base,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<Function>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let row = state.store.get_function(&ns, &name).await?.ok_or_else(|| ApiError::not_found(format_args!("function `{name}` in namespace `{ns}`")))?;
    let mut view = function_view_at(&state, &base, &row);
    view.instances = state.scheduler.route(&row.namespace, &row.name).and_then(|s| s.instances());
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/v1/functions/{name}", params(NamespaceQuery), tag = "functions",
    responses((status = 204), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn delete_function(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<StatusCode, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    state.control.remove_function(&ns, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads a deploy request: `multipart/form-data` with a `config` part (JSON
/// [`FunctionConfig`]) and a `code` part (the component), or a JSON config alone to change
/// the configuration of an existing function.
async fn read_deploy(state: &AppState, req: axum::extract::Request) -> Result<(FunctionConfig, Option<Bytes>), ApiError> {
    let content_type = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if content_type.starts_with("application/json") {
        let ApiJson(config) = ApiJson::<FunctionConfig>::from_request(req, state).await?;
        return Ok((config, None));
    }
    if !content_type.starts_with("multipart/form-data") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send multipart/form-data with a `config` part (JSON) and a `code` part, or application/json with the config alone",
        ));
    }
    let (config, code) = crate::form::read_function_form(req, state.limits.max_code_bytes).await?;
    Ok((parse_json::<FunctionConfig>(&config)?, code))
}

/// Creates or updates a function. Idempotent: the same code and configuration again is
/// `unchanged` and adds no revision.
#[utoipa::path(put, path = "/v1/functions/{name}", params(DeployQuery), tag = "functions",
    request_body(content = String, description = "multipart/form-data: `config` (JSON FunctionConfig) and `code` (the component); or application/json FunctionConfig alone", content_type = "multipart/form-data"),
    responses((status = 201, body = DeployResponse), (status = 200, body = DeployResponse), (status = 400, body = hangar_api::ErrorBody), (status = 413, body = hangar_api::ErrorBody)))]
pub async fn put_function(
    State(state): State<AppState>,
    p: Principal,
    base: Base,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<DeployQuery>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    // Read the (bounded) upload before rejecting anything: an answer sent while the client is
    // still uploading is lost when the connection closes.
    let (config, code) = read_deploy(&state, req).await?;
    // The action checks the name and that the namespace exists (404), in that order.
    let ns = p.scope(q.namespace.as_deref())?;
    let (status, row) = state.control.deploy_function(&ns, &name, config, code, q.dry_run).await?;
    let code = match status {
        DeployStatus::Created if !q.dry_run => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((code, Json(DeployResponse { status, function: function_view_at(&state, &base, &row) })).into_response())
}

// ---- invocations ----

/// Filters of `GET /v1/invocations`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InvocationQuery {
    pub namespace: Option<String>,
    /// Only this function.
    pub function: Option<String>,
    /// Only this outcome: ok, error, timeout, out_of_memory, throttled.
    pub status: Option<String>,
    /// RFC 3339 time: only invocations started at or after it.
    pub since: Option<String>,
    /// RFC 3339 time: only invocations started before it.
    pub until: Option<String>,
    /// Page size, 1..=1000 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `desc` (newest first, default) or `asc`.
    pub order: Option<String>,
    /// Include each invocation's logs.
    #[serde(default)]
    pub logs: bool,
    /// Only the steps of this sequence invocation.
    pub parent: Option<String>,
}

/// A page cursor: the id of the last item of the previous page (a UUID), as `next_cursor` gave it.
pub(crate) fn cursor(v: &Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(c) if uuid::Uuid::parse_str(c).is_err() => Err(ApiError::bad_request(
            "invalid_query",
            format!("cursor: `{}` is not a cursor; pass the `next_cursor` of the previous page", hangar_api::validate::shown(c)),
        )),
        other => Ok(other.clone()),
    }
}

fn parse_time(field: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_deref()
        .map(|s| {
            hangar_api::parse_rfc3339(s)
                .ok_or_else(|| ApiError::bad_request("invalid_query", format!("{field}: `{s}` is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z)")))
        })
        .transpose()
}

#[utoipa::path(get, path = "/v1/invocations", params(InvocationQuery), tag = "invocations", responses((status = 200, body = InvocationPage)))]
pub async fn list_invocations(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<InvocationQuery>) -> Result<Json<InvocationPage>, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    let outcome = q.status.as_deref().map(str::parse::<Outcome>).transpose().map_err(|e| ApiError::bad_request("invalid_query", format!("status: {e}")))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit: {limit} is out of range; choose 1 to 1000")));
    }
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => return Err(ApiError::bad_request("invalid_query", format!("order: `{o}` is not `asc` or `desc`"))),
    };
    // Make every record of calls already answered visible.
    state.meter.flush().await;
    let filter = InvocationFilter {
        namespace: Some(ns),
        function: q.function.clone(),
        outcome,
        since_ms: parse_time("since", &q.since)?,
        until_ms: parse_time("until", &q.until)?,
        cursor: cursor(&q.cursor)?,
        limit,
        ascending,
        with_logs: q.logs,
        parent: q.parent.clone(),
    };
    let rows = state.store.list_invocations(filter).await?;
    let next_cursor = (rows.len() == limit as usize).then(|| rows.last().map(|r| r.id.clone())).flatten();
    Ok(Json(InvocationPage { items: rows.iter().map(|r| r.to_api(q.logs)).collect(), next_cursor }))
}

#[utoipa::path(get, path = "/v1/invocations/{id}", params(NamespaceQuery), tag = "invocations",
    responses((status = 200, body = Invocation), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn get_invocation(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<Invocation>, ApiError> {
    let ns = match (&q.namespace, p.is_admin()) {
        (None, true) => None,
        (asked, _) => Some(p.scope(asked.as_deref())?),
    };
    state.meter.flush().await;
    let row = state.store.get_invocation(ns.as_deref(), &id).await?.ok_or_else(|| ApiError::not_found(format_args!("invocation `{id}`")))?;
    let mut view = row.to_api(true);
    // A sequence's steps, oldest first.
    let steps = InvocationFilter { namespace: Some(row.namespace.clone()), parent: Some(row.id.clone()), limit: 1000, ascending: true, ..Default::default() };
    view.children = state.store.list_invocations(steps).await?.into_iter().map(|r| r.id).collect();
    Ok(Json(view))
}
