//! HTTP ingress: the native API (`/v1`), function URLs (`/fn/...`), health and metrics.
//!
//! **API Boundary:** this is the only crate that parses HTTP from users. A handler translates:
//! it parses, checks who may call, calls one control action (`hangar-control`) for a change of
//! desired state or reads what it shows, and maps the answer back. Libraries below it never see
//! an HTTP API request.
#![forbid(unsafe_code)]

pub mod adapt;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod cost;
pub mod error;
pub mod events;
pub mod form;
pub mod hosts;
pub mod images;
pub mod invoke;
pub mod logs;
pub mod nodes;
pub mod openapi;
pub mod sandboxes;
pub mod series;
pub mod services;
pub mod traces;
pub mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hangar_meter::Meter;
use hangar_scheduler::Scheduler;
use hangar_store::Store;

pub use auth::KeyCache;
use error::ApiError;

/// Size limits of requests.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_code_bytes: usize,
    pub max_payload_bytes: usize,
    /// Largest image archive accepted by `POST /v1/images/import`.
    pub max_image_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_code_bytes: hangar_api::DEFAULT_MAX_CODE_BYTES,
            max_payload_bytes: hangar_api::DEFAULT_MAX_PAYLOAD_BYTES,
            max_image_bytes: hangar_api::DEFAULT_MAX_IMAGE_BYTES,
        }
    }
}

/// Whether an image (namespace, id) is needed by something that runs.
pub type ImageUsers = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Everything the handlers share: one pointer, so the per-request clones axum makes cost
/// a reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    /// A handle that does not keep the state alive (for parts the state itself holds).
    pub fn downgrade(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.0)
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points at.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub scheduler: Arc<Scheduler>,
    pub meter: Meter,
    pub images: Arc<hangar_image::ImageStore>,
    pub image_users: ImageUsers,
    /// The services runtime, when this server can run containers.
    pub services: Option<Arc<hangar_service::Services>>,
    /// Why not, when it cannot.
    pub services_unavailable: Option<String>,
    /// The sandboxes, when this server can run them (runsc).
    pub sandboxes: Option<hangar_sandbox::Sandboxes>,
    /// Why not, when it cannot.
    pub sandboxes_unavailable: Option<String>,
    pub keys: KeyCache,
    pub limits: Limits,
    /// The use-cases that change desired state (namespaces, keys, functions, services,
    /// triggers).
    pub control: Arc<hangar_control::Control>,
    /// The durable queue of asynchronous invocations.
    pub async_queue: hangar_events::AsyncQueue,
    /// Cron schedules and topic subscriptions.
    pub triggers: hangar_events::Triggers,
    pub ready: Arc<AtomicBool>,
    /// The user's price sheets (`<data>/prices`).
    pub prices_dir: std::path::PathBuf,
    /// The nodes there are (this one alone, unless in a cluster).
    pub members: Arc<dyn hangar_bus::Membership>,
    /// The other nodes, in a cluster: where calls are placed and how they are forwarded.
    pub peers: Option<Arc<cluster::Peers>>,
    /// The domain workloads' host names are under (`--domain`).
    pub domain: hosts::Domain,
    /// Where spans go, and the node's trace store.
    pub tracer: Arc<hangar_trace::Tracer>,
    /// Live log tails open now, per namespace (each polls the store: they are bounded).
    pub log_followers: logs::Followers,
}

/// Builds the router of the whole gateway.
pub fn router(state: AppState) -> Router {
    let json_limit = DefaultBodyLimit::max(1 << 20);
    let v1 = Router::new()
        .route("/namespaces", get(api::list_namespaces).post(api::create_namespace))
        .route("/namespaces/{name}", axum::routing::delete(api::delete_namespace).patch(api::set_namespace_limits))
        .route("/keys", get(api::list_keys).post(api::create_key))
        .route("/keys/{id}", axum::routing::delete(api::delete_key))
        .route("/functions", get(api::list_functions))
        .route(
            "/functions/{name}",
            get(api::get_function).delete(api::delete_function).put(api::put_function).layer(DefaultBodyLimit::max(state.limits.max_code_bytes + (1 << 20))),
        )
        .route("/functions/{name}/invoke", post(invoke::invoke_api).layer(DefaultBodyLimit::disable()))
        .route("/images", get(images::list_images))
        .route("/images/import", post(images::import_image).layer(DefaultBodyLimit::disable()))
        .route("/images/pull", post(images::pull_image))
        .route("/images/{*reference}", get(images::get_image).delete(images::delete_image))
        .route("/services", get(services::list_services))
        .route("/services/{name}", get(services::get_service).put(services::put_service).delete(services::delete_service))
        .route("/services/{name}/logs", get(services::service_logs))
        .route("/prices", get(cost::list))
        .route("/cost/calc", post(cost::calc))
        .route("/usage", get(usage::list))
        .route("/advice", get(usage::advice))
        .route("/functions/{name}/switches", get(adapt::switches))
        .route("/services/{name}/switches", get(adapt::service_switches))
        .route("/sandboxes", get(sandboxes::list).post(sandboxes::create))
        .route("/sandboxes/{id}", get(sandboxes::get).delete(sandboxes::remove))
        .route("/sandboxes/{id}/exec", post(sandboxes::exec))
        .route("/sandboxes/{id}/tty", get(sandboxes::tty))
        .route("/sandboxes/{id}/files", get(sandboxes::read).put(sandboxes::write).layer(DefaultBodyLimit::disable()))
        .route("/sandboxes/{id}/{action}", post(sandboxes::lifecycle))
        .route("/invocations", get(api::list_invocations))
        .route("/invocations/{id}", get(api::get_invocation))
        .route("/async-invocations", get(events::list))
        .route("/async-invocations/{id}", get(events::get))
        .route("/triggers", get(events::list_triggers))
        .route("/triggers/{name}", axum::routing::put(events::put_trigger).delete(events::delete_trigger))
        .route("/topics/{topic}/events", post(events::publish).layer(DefaultBodyLimit::disable()))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{id}/drain", post(nodes::drain))
        .route("/metrics/series", get(series::series))
        .route("/logs", get(logs::list))
        .route("/traces", get(traces::list))
        .route("/traces/{id}", get(traces::get))
        .route("/openapi.json", get(openapi_json))
        .layer(json_limit);
    // The platform's own routes answer every error in the JSON shape; workloads' answers under
    // /fn/ and /svc/ are theirs.
    let platform = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(error::json_errors));
    Router::new()
        .route("/fn/{*rest}", any(invoke::function_url).layer(DefaultBodyLimit::disable()))
        .route("/svc/{*rest}", any(services::proxy).layer(DefaultBodyLimit::disable()))
        // Calls other nodes placed here (cluster secret, else 404).
        .route("/_hangar/fn/{*rest}", any(cluster::run_here).layer(DefaultBodyLimit::disable()))
        .route("/_hangar/svc/{*rest}", any(cluster::serve_here).layer(DefaultBodyLimit::disable()))
        .route("/_hangar/images/{namespace}", get(cluster::export_image))
        .merge(platform)
        .layer(axum::middleware::from_fn_with_state(state.clone(), sandboxes::at_owner))
        .layer(axum::middleware::from_fn_with_state(state.clone(), hosts::route))
        .layer(axum::middleware::from_fn_with_state(state.clone(), traces::ingress))
        .with_state(state)
}

/// Serves the calls instances make on the bridge (services of their namespace, by name) at
/// the bridge's address once `bridge` says it exists.
pub async fn serve_internal(state: AppState, mut bridge: tokio::sync::watch::Receiver<Option<std::net::Ipv4Addr>>) {
    let Ok(gw) = bridge.wait_for(Option::is_some).await.map(|g| g.unwrap_or(std::net::Ipv4Addr::LOCALHOST)) else { return };
    let addr = std::net::SocketAddr::from((gw, hangar_service::INTERNAL_PORT));
    let router = Router::new().fallback(services::internal).layer(DefaultBodyLimit::disable()).with_state(state);
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            let _ = axum::serve(l, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
        }
        Err(e) => tracing::error!("serving calls between services on {addr}: {e}"),
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) { (StatusCode::OK, "ok\n").into_response() } else { (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response() }
}

async fn metrics(State(state): State<AppState>, p: auth::Principal) -> Result<Response, ApiError> {
    p.require_admin()?;
    let body = state.meter.encode_metrics();
    Ok(([(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response())
}

async fn openapi_json() -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], openapi::json()).into_response()
}

async fn not_found(req: axum::extract::Request) -> ApiError {
    ApiError::not_found(format_args!("route `{} {}`", req.method(), req.uri().path()))
}
