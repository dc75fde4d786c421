//! `/v1/services` (deploy with a rolling update, list, show with instances, remove, logs) and
//! the ways in to a service: `/svc/{namespace}/{name}/...`, a host name a service declared,
//! and calls between services on the bridge. Who may reach which service is decided here;
//! the data plane is `hangar_service::proxy`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hangar_api::services::{Service, ServiceConfig, ServiceDeployed};
use hangar_service::proxy::{self, ProxyError};
use hangar_service::{ServiceError, Services};
use hangar_store::ServiceRow;
use http_body_util::BodyExt as _;
use serde::Deserialize;

use crate::AppState;
use crate::api::NamespaceQuery;
use crate::auth::{Credentials, Principal};
use crate::error::{ApiError, ApiJson, ApiQuery};

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Invalid(_) => ApiError::bad_request("invalid_service", message),
            ServiceError::NotReady(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_ready", message),
            ServiceError::Removed => ApiError::new(StatusCode::CONFLICT, "service_removed", message),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "service_error", message),
        }
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        let message = e.to_string();
        match e {
            ProxyError::InvalidPath => ApiError::bad_request("invalid_path", message),
            ProxyError::NoReadyInstance { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_ready_instance", message),
            ProxyError::Upstream { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message),
        }
    }
}

fn services(state: &AppState) -> Result<&Arc<Services>, ApiError> {
    state.services.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "services_unavailable",
            format!("services are not available on this server: {}", state.services_unavailable.as_deref().unwrap_or("unknown reason")),
        )
    })
}

fn view(state: &AppState, base: &crate::hosts::Base, row: &ServiceRow) -> Service {
    let running = state.services.as_ref().and_then(|s| s.get(&row.namespace, &row.name));
    let instances = running.as_ref().map(|s| s.instances()).unwrap_or_default();
    Service {
        namespace: row.namespace.clone(),
        name: row.name.clone(),
        revision: row.revision,
        config: row.config.clone(),
        image_id: row.image_id.clone(),
        url_path: format!("/svc/{}/{}/", row.namespace, row.name),
        urls: base.service_urls(&state.domain, &row.namespace, &row.name, &row.config.hosts),
        created_at: hangar_api::rfc3339(row.created_ms),
        updated_at: hangar_api::rfc3339(row.updated_ms),
        instances,
        scaling: running.and_then(|s| s.scaling()),
        nodes: match &state.peers {
            None => Vec::new(),
            Some(_) => state
                .members
                .snapshot()
                .iter()
                .filter(|n| n.state != hangar_api::nodes::NodeState::Lost)
                .flat_map(|n| {
                    let here = n.report.services.iter().filter(|c| c.namespace == row.namespace && c.name == row.name);
                    here.map(|c| hangar_api::services::ServiceOnNode { node: n.report.id.clone(), ready: c.ready, instances: c.instances, part: c.part })
                })
                .collect(),
        },
    }
}

/// Creates or updates a service and rolls it out: new instances start and must pass their
/// readiness probe before the old ones drain and stop. A revision whose instances do not
/// become ready (e.g. a crash loop) is not kept: the old one keeps serving, and the answer is
/// 422 with their last output.
#[utoipa::path(put, path = "/v1/services/{name}", params(("name" = String, Path), NamespaceQuery), tag = "services", request_body = ServiceConfig,
    responses((status = 200, body = ServiceDeployed), (status = 201, body = ServiceDeployed), (status = 400, body = hangar_api::ErrorBody),
        (status = 404, body = hangar_api::ErrorBody), (status = 422, body = hangar_api::ErrorBody)))]
pub async fn put_service(
    State(state): State<AppState>,
    p: Principal,
    base: crate::hosts::Base,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
    headers: http::HeaderMap,
    ApiJson(config): ApiJson<ServiceConfig>,
) -> Result<Response, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    // A gateway of a cluster runs no instances: a worker rolls the deploy out (and the others
    // follow it), answering as if this node had.
    if state.services.is_none()
        && let Some(peers) = &state.peers
        && let Some(worker) = peers.worker(true)
    {
        hangar_api::validate::name("name", &name)?;
        let body = serde_json::to_vec(&config).map_err(|e| ApiError::bad_request("invalid_service", e.to_string()))?;
        let path = format!("/v1/services/{name}?namespace={ns}");
        return Ok(peers.forward_api(&worker, http::Method::PUT, &path, &headers, body.into()).await);
    }
    let (status, row) = state.control.deploy_service(&ns, &name, config).await?;
    let (code, word) = match status {
        hangar_api::DeployStatus::Created => (StatusCode::CREATED, "created"),
        hangar_api::DeployStatus::Updated => (StatusCode::OK, "updated"),
        hangar_api::DeployStatus::Unchanged => (StatusCode::OK, "unchanged"),
    };
    Ok((code, Json(ServiceDeployed { status: word.into(), service: view(&state, &base, &row) })).into_response())
}

/// The services of a namespace.
#[utoipa::path(get, path = "/v1/services", params(NamespaceQuery), tag = "services", responses((status = 200, body = [Service])))]
pub async fn list_services(
    State(state): State<AppState>,
    p: Principal,
    base: crate::hosts::Base,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<Vec<Service>>, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    Ok(Json(state.store.list_services(Some(&ns)).await?.iter().map(|r| view(&state, &base, r)).collect()))
}

/// One service with its instances.
#[utoipa::path(get, path = "/v1/services/{name}", params(("name" = String, Path), NamespaceQuery), tag = "services",
    responses((status = 200, body = Service), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn get_service(
    State(state): State<AppState>,
    p: Principal,
    base: crate::hosts::Base,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<Service>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let row = state.store.get_service(&ns, &name).await?.ok_or_else(|| ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")))?;
    Ok(Json(view(&state, &base, &row)))
}

/// Stops a service's instances (gracefully) and forgets it; its volumes stay.
#[utoipa::path(delete, path = "/v1/services/{name}", params(("name" = String, Path), NamespaceQuery), tag = "services",
    responses((status = 204), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn delete_service(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<StatusCode, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    state.control.remove_service(&ns, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    pub namespace: Option<String>,
    /// Keep the response open and send new lines as they come.
    #[serde(default)]
    pub follow: bool,
}

/// The service's recent output, one line per output line prefixed with its instance.
#[utoipa::path(get, path = "/v1/services/{name}/logs", params(("name" = String, Path), LogsQuery), tag = "services",
    responses((status = 200, content_type = "text/plain"), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn service_logs(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    if state.store.get_service(&ns, &name).await?.is_none() {
        return Err(ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")));
    }
    let Some(svc) = state.services.as_ref().and_then(|s| s.get(&ns, &name)) else {
        return Ok(([(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], "").into_response());
    };
    let (lines, rx) = svc.logs.snapshot();
    let head: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if !q.follow {
        return Ok(([(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], head).into_response());
    }
    let first = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(bytes::Bytes::from(head)) });
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(line) => return Some((Ok(bytes::Bytes::from(format!("{line}\n"))), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures::StreamExt as _;
    Ok(([(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from_stream(first.chain(rest))).into_response())
}

/// `/svc/{namespace}/{name}/{rest...}`: the service sees `/{rest...}`.
pub async fn proxy(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let Some((ns, name, rest)) = proxy::split_route(req.uri().path()).map(|(ns, name, rest)| (ns.to_string(), name.to_string(), rest)) else {
        return Err(ApiError::bad_request("invalid_path", "service URLs look like /svc/{namespace}/{name}/{path}"));
    };
    crate::traces::name_workload(&req, hangar_api::WorkloadKind::Service, &ns, &name);
    let (mut head, body) = req.into_parts();
    crate::hosts::set_forwarded(&mut head, Some(&format!("/svc/{ns}/{name}")));
    reach(&state, Request::from_parts(head, body), &ns, &name, &rest, false).await
}

/// Serves a request for `ns/name` from an instance here when one is ready; in a cluster,
/// otherwise from the node that has one (or starts one). `allowed`: the caller was already let
/// through (a call between services, or a host route); else whoever serves it decides.
async fn reach(state: &AppState, mut req: Request, ns: &str, name: &str, rest: &str, allowed: bool) -> Result<Response, ApiError> {
    if state.peers.is_none() {
        return serve_local(state, req, ns, name, rest, allowed, None).await;
    }
    crate::cluster::first_hop(&mut req);
    reach_in_cluster(state, req, ns, name, rest, allowed, true).await
}

/// [`reach`] in a cluster. With no instance ready here, the request goes to the node the last
/// heartbeats name (once, if `may_forward`), else waits here, looking again every 200 ms: an
/// instance may become ready here, or the heartbeats may show one elsewhere (a view that saw
/// no node for a moment must not hold the request for the whole readiness timeout).
pub(crate) async fn reach_in_cluster(
    state: &AppState,
    mut req: Request,
    ns: &str,
    name: &str,
    rest: &str,
    allowed: bool,
    may_forward: bool,
) -> Result<Response, ApiError> {
    use crate::cluster::ServiceRoute;
    let Some(peers) = &state.peers else { return serve_local(state, req, ns, name, rest, allowed, None).await };
    let svc = state.services.as_ref().and_then(|s| s.get(ns, name));
    // Held from here: an instance seen ready is the one the request goes to.
    if let Some(endpoint) = svc.as_ref().and_then(|s| s.pick()) {
        return serve_local(state, req, ns, name, rest, allowed, Some(endpoint)).await;
    }
    let route = if may_forward { peers.service_route(ns, name) } else { ServiceRoute::Here };
    if let ServiceRoute::There(node) = route {
        return Ok(peers.forward_service(&node, ns, name, req, rest, allowed).await);
    }
    // Not running here (a gateway, or a deploy this node has not applied yet): known to the
    // cluster, it is waited for below like one starting here.
    let public = match &svc {
        Some(s) => Some(s.config.read().unwrap_or_else(|p| p.into_inner()).public),
        None => peers.directory.public(ns, name),
    };
    if !allowed {
        authorize(state, &req, public, ns, name)?;
    }
    if public.is_none() {
        return Err(ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")));
    }
    let wait = Duration::from_millis(
        svc.as_ref().map_or(hangar_api::services::Probe::default().timeout_ms, |s| s.config.read().unwrap_or_else(|p| p.into_inner()).readiness.timeout_ms),
    );
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let step = left.min(Duration::from_millis(200));
        let ready = match &svc {
            Some(s) => s.wait_ready(step).await,
            None => {
                tokio::time::sleep(step).await;
                None
            }
        };
        if let Some(endpoint) = ready {
            return serve_local(state, req, ns, name, rest, true, Some(endpoint)).await;
        }
        if left.is_zero() {
            return Err(ProxyError::NoReadyInstance { name: name.to_string(), wait_ms: wait.as_millis() }.into());
        }
        if may_forward && let ServiceRoute::There(node) = peers.service_route(ns, name) {
            crate::cluster::hop(&mut req);
            return Ok(peers.forward_service(&node, ns, name, req, rest, true).await);
        }
    }
}

/// Serves a request for `ns/name` from this node's instances (`endpoint` if one was picked),
/// waiting for one if none is ready.
pub(crate) async fn serve_local(
    state: &AppState,
    req: Request,
    ns: &str,
    name: &str,
    rest: &str,
    allowed: bool,
    endpoint: Option<hangar_service::EndpointGuard>,
) -> Result<Response, ApiError> {
    let svc = state.services.as_ref().and_then(|s| s.get(ns, name));
    if !allowed {
        authorize(state, &req, svc.as_deref().map(|s| s.config.read().unwrap_or_else(|p| p.into_inner()).public), ns, name)?;
    }
    let Some(svc) = svc else {
        return Err(ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")));
    };
    let mut req = req;
    let span = crate::traces::client_span(state, &mut req);
    let req = req.map(|b| b.map_err(std::io::Error::other).boxed_unsync());
    let resp = proxy::forward_to(&svc, endpoint, req, rest).await;
    crate::traces::end_client_span(state, span, ns, name, resp.as_ref().map(|r| r.status()).map_err(|_| "no answer from the instance"));
    Ok(resp?.map(Body::new))
}

/// Lets the request through if the service is public or the caller's key covers its
/// namespace; a caller without access learns nothing about which services exist.
/// `public`: whether the service is public, `None` if there is no such service.
fn authorize(state: &AppState, req: &Request, public: Option<bool>, ns: &str, name: &str) -> Result<(), ApiError> {
    if public != Some(true) {
        let principal = Credentials::from_headers(req.headers(), &state.keys).require()?;
        if !principal.can_access(ns) || public.is_none() {
            return Err(ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")));
        }
    }
    Ok(())
}

/// A request for service `ns/name` by its host name, whole path. `public`: whether the service
/// (found here by a host it claims) is public, so the caller is checked here; `None`: whoever
/// serves it checks.
pub(crate) async fn serve_by_host(state: &AppState, req: Request, ns: &str, name: &str, public: Option<bool>) -> Result<Response, ApiError> {
    crate::traces::name_workload(&req, hangar_api::WorkloadKind::Service, ns, name);
    if public.is_some() {
        authorize(state, &req, public, ns, name)?;
    }
    let (mut head, body) = req.into_parts();
    crate::hosts::set_forwarded(&mut head, None);
    let rest = head.uri.path().to_string();
    reach(state, Request::from_parts(head, body), ns, name, &rest, public.is_some()).await
}

/// Calls between services: an instance asks `http://NAME/...` (its hosts file points NAME at
/// the bridge) and reaches service NAME of its own namespace, no key needed.
pub async fn internal(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: Request,
) -> Result<Response, ApiError> {
    let svcs = services(&state)?;
    let Some(ns) = svcs.namespace_of(peer.ip()) else {
        return Err(ApiError::forbidden("only service instances call services by name here"));
    };
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let name = proxy::host_service(host);
    if svcs.get(&ns, &name).is_none() && state.peers.is_none() {
        return Err(ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")));
    }
    let rest = req.uri().path().to_string();
    reach(&state, req, &ns, &name, &rest, true).await
}
