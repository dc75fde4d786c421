//! `/v1/services` (deploy with a rolling update, list, show with instances, remove, logs) and
//! `/svc/{namespace}/{name}/...`: the reverse proxy to a service's ready instances (least
//! outstanding requests, pooled keep-alive connections, streaming both ways, WebSocket and
//! other upgrades passed through).

use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hangar_api::services::{Service, ServiceConfig, ServiceDeployed};
use hangar_service::{ServiceError, Services};
use hangar_store::ServiceRow;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
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

fn services(state: &AppState) -> Result<&Arc<Services>, ApiError> {
    state.services.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "services_unavailable",
            format!("services are not available on this server: {}", state.services_unavailable.as_deref().unwrap_or("unknown reason")),
        )
    })
}

fn view(state: &AppState, row: &ServiceRow) -> Service {
    let running = state.services.as_ref().and_then(|s| s.get(&row.namespace, &row.name));
    let instances = running.as_ref().map(|s| s.instances()).unwrap_or_default();
    Service {
        namespace: row.namespace.clone(),
        name: row.name.clone(),
        revision: row.revision,
        config: row.config.clone(),
        image_id: row.image_id.clone(),
        url_path: format!("/svc/{}/{}/", row.namespace, row.name),
        created_at: hangar_api::rfc3339(row.created_ms),
        updated_at: hangar_api::rfc3339(row.updated_ms),
        instances,
        scaling: running.and_then(|s| s.scaling()),
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
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
    ApiJson(config): ApiJson<ServiceConfig>,
) -> Result<Response, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    hangar_api::validate::name("name", &name)?;
    config.validate()?;
    let svcs = services(&state)?.clone();
    let image = state.images.get(&ns, &config.image).ok_or_else(|| {
        ApiError::bad_request(
            "unknown_image",
            format!("image `{}` is not in namespace `{ns}`: `hangar image pull` or `hangar image import` it first", config.image),
        )
    })?;
    if state.store.get_namespace(&ns).await?.is_none() {
        return Err(ApiError::not_found(format_args!("namespace `{ns}`")));
    }
    let _guard = state.deploy_lock.lock().await;
    // A host name routes to one service, whichever namespace declared it first.
    if !config.hosts.is_empty() {
        for other in state.store.list_services(None).await? {
            if (other.namespace != ns || other.name != name)
                && let Some(h) = other.config.hosts.iter().find(|h| config.hosts.contains(h))
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("host `{h}` is already routed to another service; choose another host name"),
                ));
            }
        }
    }
    let existing = state.store.get_service(&ns, &name).await?;
    if let Some(row) = &existing
        && row.config == config
        && row.image_id == image.id
        && svcs.get(&ns, &name).is_some()
    {
        return Ok((StatusCode::OK, Json(ServiceDeployed { status: "unchanged".into(), service: view(&state, row) })).into_response());
    }
    let now = hangar_api::now_ms();
    let row = ServiceRow {
        namespace: ns.clone(),
        name: name.clone(),
        revision: existing.as_ref().map_or(1, |r| r.revision + 1),
        config: config.clone(),
        image_id: image.id.clone(),
        created_ms: existing.as_ref().map_or(now, |r| r.created_ms),
        updated_ms: now,
    };
    svcs.rollout(&ns, &name, row.revision, config, image).await?;
    state.store.put_service(&row, existing.as_ref().map_or(0, |r| r.revision)).await?;
    let (status, word) = if existing.is_some() { (StatusCode::OK, "updated") } else { (StatusCode::CREATED, "created") };
    Ok((status, Json(ServiceDeployed { status: word.into(), service: view(&state, &row) })).into_response())
}

/// The services of a namespace.
#[utoipa::path(get, path = "/v1/services", params(NamespaceQuery), tag = "services", responses((status = 200, body = [Service])))]
pub async fn list_services(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<NamespaceQuery>) -> Result<Json<Vec<Service>>, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    Ok(Json(state.store.list_services(Some(&ns)).await?.iter().map(|r| view(&state, r)).collect()))
}

/// One service with its instances.
#[utoipa::path(get, path = "/v1/services/{name}", params(("name" = String, Path), NamespaceQuery), tag = "services",
    responses((status = 200, body = Service), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn get_service(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<Service>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let row = state.store.get_service(&ns, &name).await?.ok_or_else(|| ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")))?;
    Ok(Json(view(&state, &row)))
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
    let _guard = state.deploy_lock.lock().await;
    if !state.store.delete_service(&ns, &name).await? {
        return Err(ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")));
    }
    if let Some(s) = &state.services {
        s.remove(&ns, &name).await;
    }
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

fn client() -> &'static Client<HttpConnector, Body> {
    static CLIENT: OnceLock<Client<HttpConnector, Body>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        Client::builder(TokioExecutor::new()).pool_idle_timeout(std::time::Duration::from_secs(60)).build(connector)
    })
}

const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"];

/// `/svc/{namespace}/{name}/{rest...}`: the service sees `/{rest...}`.
pub async fn proxy(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let Some((ns, name, rest)) = split_route(req.uri().path()).map(|(ns, name, rest)| (ns.to_string(), name.to_string(), rest)) else {
        return Err(ApiError::bad_request("invalid_path", "service URLs look like /svc/{namespace}/{name}/{path}"));
    };
    let svc = state.services.as_ref().and_then(|s| s.get(&ns, &name));
    authorize(&state, &req, svc.as_deref(), &ns, &name)?;
    let Some(svc) = svc else {
        return Err(ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")));
    };
    forward(&svc, req, &rest).await
}

/// Splits a `/svc/{namespace}/{name}/{rest...}` path into the namespace, the name and the path
/// the service sees (`/{rest...}`); `None` unless both names are there.
pub fn split_route(path: &str) -> Option<(&str, &str, String)> {
    let mut parts = path.strip_prefix("/svc/")?.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some((ns, name, format!("/{}", parts.next().unwrap_or("")))),
        _ => None,
    }
}

/// The service a `Host` header names, for calls between services: the port dropped, lowercased.
pub fn host_service(host: &str) -> String {
    host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h).to_ascii_lowercase()
}

/// The URI an instance at `addr` is sent: `path` (which must start with `/`) and the request's
/// query. Whatever the path holds, the request goes to `addr` and nowhere else.
pub fn upstream_uri(addr: std::net::SocketAddr, path: &str, query: Option<&str>) -> Result<http::Uri, ApiError> {
    let bad = || ApiError::bad_request("invalid_path", "the request path is not a valid URI");
    if !path.starts_with('/') {
        return Err(bad());
    }
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let path_and_query = http::uri::PathAndQuery::try_from(path_and_query).map_err(|_| bad())?;
    http::Uri::builder().scheme("http").authority(addr.to_string()).path_and_query(path_and_query).build().map_err(|_| bad())
}

/// The headers an instance gets: hop-by-hop ones dropped, the platform key kept from a private
/// service, `X-Forwarded-Host`/`-Proto` set, `Connection: upgrade` kept for an upgrade.
pub fn upstream_headers(headers: &mut http::HeaderMap, public: bool, upgrade: bool) {
    if !public {
        // The platform key is for Hangar, not for the service.
        headers.remove(http::header::AUTHORIZATION);
    }
    let host = headers.get(http::header::HOST).cloned();
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    if upgrade {
        headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    }
    if let Some(h) = host {
        headers.insert("x-forwarded-host", h);
    }
    headers.insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
}

/// Lets the request through if the service is public or the caller's key covers its
/// namespace; a caller without access learns nothing about which services exist.
fn authorize(state: &AppState, req: &Request, svc: Option<&hangar_service::Service>, ns: &str, name: &str) -> Result<(), ApiError> {
    let public = svc.is_some_and(|s| s.config.read().unwrap_or_else(|p| p.into_inner()).public);
    if !public {
        let principal = Credentials::from_headers(req.headers(), &state.keys).require()?;
        if !principal.can_access(ns) || svc.is_none() {
            return Err(ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")));
        }
    }
    Ok(())
}

/// Requests whose `Host` a service declared go to that service, whole path; others pass on.
pub async fn host_routes(State(state): State<AppState>, req: Request, next: axum::middleware::Next) -> Response {
    let svc = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).and_then(|h| state.services.as_ref()?.by_host(h));
    let Some(svc) = svc else {
        return next.run(req).await;
    };
    let (ns, name) = (svc.namespace.clone(), svc.name.clone());
    if let Err(e) = authorize(&state, &req, Some(&svc), &ns, &name) {
        return e.into_response();
    }
    let rest = req.uri().path().to_string();
    forward(&svc, req, &rest).await.unwrap_or_else(IntoResponse::into_response)
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
    let name = host_service(host);
    let Some(svc) = svcs.get(&ns, &name) else {
        return Err(ApiError::not_found(format_args!("service `{name}` in namespace `{ns}`")));
    };
    let rest = req.uri().path().to_string();
    forward(&svc, req, &rest).await
}

/// Sends `req` to the service's ready instance with the fewest requests in flight, at `path`
/// (plus the request's query), and streams the answer back.
async fn forward(svc: &Arc<hangar_service::Service>, mut req: Request, path: &str) -> Result<Response, ApiError> {
    // Counted when the answer's body ends (or the request fails first: dropped early).
    let mut served = Served { svc: svc.clone(), start: std::time::Instant::now(), failed: true };
    let name = svc.name.clone();
    let endpoint = match svc.pick() {
        Some(e) => e,
        None => {
            // No instance ready (scaled to zero, or all starting): wait for one, as long as
            // an instance may take to become ready.
            let wait = std::time::Duration::from_millis(svc.config.read().unwrap_or_else(|p| p.into_inner()).readiness.timeout_ms);
            svc.wait_ready(wait).await.ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_ready_instance",
                    format!("service `{name}` got no ready instance within {} ms; `hangar svc get {name}` shows why", wait.as_millis()),
                )
            })?
        }
    };
    let uri = upstream_uri(endpoint.addr(), path, req.uri().query())?;
    let public = svc.config.read().unwrap_or_else(|p| p.into_inner()).public;
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut head, body) = req.into_parts();
    head.uri = uri;
    upstream_headers(&mut head.headers, public, upgrade);
    // A request that is safe to repeat and has no body may be sent again, twice at most, when
    // the connection failed before an answer (e.g. an instance closed a pooled connection).
    let replay = (!upgrade && http_body::Body::is_end_stream(&body) && matches!(head.method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS))
        .then(|| (head.method.clone(), head.uri.clone(), head.headers.clone(), head.version));
    let mut endpoint = endpoint;
    let mut resp = client().request(Request::from_parts(head, body)).await;
    if let Some((method, uri, headers, version)) = replay {
        // Twice more at most, after a short pause each (an instance's network stack, gVisor's
        // above all, may refuse a new connection for a moment under load).
        for pause_ms in [0, 50] {
            if resp.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
            endpoint = svc.pick().unwrap_or(endpoint);
            let mut again = Request::new(Body::empty());
            *again.method_mut() = method.clone();
            *again.uri_mut() = upstream_uri(endpoint.addr(), uri.path(), uri.query()).unwrap_or_else(|_| uri.clone());
            *again.headers_mut() = headers.clone();
            *again.version_mut() = version;
            resp = client().request(again).await;
        }
    }
    let resp = resp.map_err(|e| {
        // The error's causes say why (refused, reset, closed early).
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            why.push_str(&format!(": {c}"));
            cause = c.source();
        }
        ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", format!("service `{name}` (instance at {}) did not answer: {why}", endpoint.addr()))
    })?;
    served.failed = resp.status().is_server_error();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_upgrade
    {
        let (head, body) = resp.into_parts();
        let mut upstream = http::Response::from_parts(head.clone(), body);
        let upstream_side = hyper::upgrade::on(&mut upstream);
        tokio::spawn(async move {
            let _hold = endpoint;
            if let (Ok(a), Ok(b)) = (client_side.await, upstream_side.await) {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
            }
        });
        return Ok(Response::from_parts(head, Body::empty()));
    }
    let (mut head, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        head.headers.remove(*h);
    }
    // The client's connection is ours, not the backend's: answer in HTTP/1.1 (keep-alive kept)
    // whatever the instance spoke.
    head.version = http::Version::HTTP_11;
    // The request counts as outstanding until its response body ends.
    let body = body.map_frame(move |f| {
        let _ = (&endpoint, &served);
        f
    });
    Ok(Response::from_parts(head, Body::new(body)))
}

/// Hands queued events to services through the same proxy path as requests.
pub struct EventSink {
    pub services: Arc<hangar_service::Services>,
    pub store: Arc<dyn hangar_store::Store>,
}

#[async_trait::async_trait]
impl hangar_events::ServiceSink for EventSink {
    async fn deliver(
        &self,
        namespace: &str,
        service: &str,
        path: &str,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<(StatusCode, bytes::Bytes), hangar_events::SinkError> {
        let Some(svc) = self.services.get(namespace, service) else {
            // Deployed but not running (yet): after a restart services come back in the background.
            return match self.store.get_service(namespace, service).await {
                Ok(Some(_)) => Err(hangar_events::SinkError::Failed(format!("service `{service}` is not running yet"))),
                Ok(None) => Err(hangar_events::SinkError::Missing(service.to_string())),
                Err(e) => Err(hangar_events::SinkError::Failed(e.to_string())),
            };
        };
        let mut req = Request::new(Body::from(body));
        *req.method_mut() = http::Method::POST;
        if let Some(v) = content_type.and_then(|c| http::HeaderValue::from_str(c).ok()) {
            req.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        let resp = forward(&svc, req, path).await.map_err(|e| hangar_events::SinkError::Failed(e.message))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 256 * 1024);
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            // Delivered; only the record keeps less of the answer.
            Err(e) if e.is::<http_body_util::LengthLimitError>() => bytes::Bytes::from_static(b"(an answer over 256 KiB is not kept)"),
            Err(e) => return Err(hangar_events::SinkError::Failed(format!("the answer of service `{service}` broke off: {e}"))),
        };
        Ok((status, bytes))
    }
}

/// One request to a service, counted in its traffic when dropped.
struct Served {
    svc: Arc<hangar_service::Service>,
    start: std::time::Instant,
    failed: bool,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.svc.traffic.record(self.start, self.failed);
    }
}
