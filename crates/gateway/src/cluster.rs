//! Calls between the nodes of a cluster: a function call that placement sends to another
//! worker is forwarded to that node's `/_hangar/fn/…` route, which runs it there without
//! placing it again. Node-to-node requests carry the cluster secret (`--cluster-secret`), never
//! a user's key; a request to `/_hangar/…` without it is a 404, as if the route did not exist.
//!
//! Placement ([`hangar_scheduler::placement`]) reads the nodes' last heartbeats: the snapshot is
//! rebuilt into a [`Placement`] only when a new heartbeat round changed it, and read with one
//! short lock per call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use hangar_api::Trigger;
use hangar_api::nodes::NodeInfo;
use hangar_scheduler::placement::{Needs, Placement, Worker, revision_key};
use http::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use sha2::Digest as _;

use crate::AppState;
use crate::error::ApiError;

/// The header that carries the cluster secret.
const SECRET_HEADER: &str = "x-hangar-cluster-secret";
/// The header that says how the forwarded call was triggered.
const TRIGGER_HEADER: &str = "x-hangar-trigger";
/// How long a node may take to answer a forwarded call's head (its own timeout bounds the rest).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a call runs.
pub enum Route {
    Here,
    There(Worker),
    /// No worker has room (all full, draining, or none).
    Nowhere,
}

/// This node's view of the others, and how it calls them.
pub struct Peers {
    me: String,
    secret: String,
    secret_hash: [u8; 32],
    members: Arc<dyn hangar_bus::Membership>,
    cache: Mutex<(Arc<Vec<NodeInfo>>, Arc<Placement>)>,
    client: Client<HttpConnector, axum::body::Body>,
}

fn hash(secret: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(secret).into()
}

/// A heartbeat snapshot as placement sees it.
fn placement_of(nodes: &[NodeInfo], me: &str) -> Placement {
    use hangar_api::nodes::NodeState;
    let workers = nodes
        .iter()
        .map(|n| Worker {
            id: n.report.id.clone(),
            address: n.report.address.clone().unwrap_or_default(),
            accepting: n.state == NodeState::Ready && n.report.role.runs_instances() && n.report.address.is_some(),
            free_cpu_milli: n.report.free.cpu_milli,
            free_memory_mb: n.report.free.memory_mb,
            instances: n.report.instances,
            max_instances: n.report.max_instances,
        })
        .collect();
    let mut p = Placement::new(workers, me);
    for (i, n) in nodes.iter().enumerate() {
        for warm in &n.report.warm {
            if let Some((function, revision)) = warm.rsplit_once('@')
                && let Some((ns, name)) = function.split_once('/')
                && let Ok(revision) = revision.parse()
            {
                p.add_warm(revision_key(ns, name, revision), i);
            }
        }
    }
    p
}

impl Peers {
    pub fn new(me: String, secret: String, members: Arc<dyn hangar_bus::Membership>) -> Arc<Peers> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let snapshot = members.snapshot();
        let placement = Arc::new(placement_of(&snapshot, &me));
        Arc::new(Peers { secret_hash: hash(secret.as_bytes()), me, secret, members, cache: Mutex::new((snapshot, placement)), client })
    }

    /// The placement of the latest heartbeats (rebuilt only when they changed).
    fn placement(&self) -> Arc<Placement> {
        let snapshot = self.members.snapshot();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&cache.0, &snapshot) {
            let placement = Arc::new(placement_of(&snapshot, &self.me));
            *cache = (snapshot, placement);
        }
        cache.1.clone()
    }

    /// Where a call of this function's revision runs.
    pub fn route(&self, slot: &hangar_scheduler::Slot) -> Route {
        let d = slot.deployment();
        let placement = self.placement();
        let needs = Needs { memory_mb: u64::from(d.config.memory_mb), cpu_milli: 0 };
        match placement.place(revision_key(&d.namespace, &d.name, d.revision), needs) {
            Some(i) if placement.workers()[i].id == self.me => Route::Here,
            Some(i) => Route::There(placement.workers()[i].clone()),
            None => Route::Nowhere,
        }
    }

    /// Whether a request carries the cluster secret.
    pub fn authentic(&self, headers: &http::HeaderMap) -> bool {
        headers.get(SECRET_HEADER).is_some_and(|v| hash(v.as_bytes()) == self.secret_hash)
    }

    /// Runs the call on `worker` and streams its answer back. A node that cannot be reached,
    /// or that dies before answering, is a 502 saying so.
    pub async fn forward(&self, worker: &Worker, ns: &str, name: &str, mut head: http::request::Parts, body: Bytes, trigger: Trigger) -> Response {
        let path_and_query = head.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let uri = format!("http://{}/_hangar/fn/{ns}/{name}{path_and_query}", worker.address);
        head.uri = match uri.parse() {
            Ok(u) => u,
            Err(_) => return ApiError::new(StatusCode::BAD_GATEWAY, "node_unreachable", format!("node `{}` has no usable address", worker.id)).into_response(),
        };
        head.headers.remove(http::header::HOST);
        if let Ok(v) = http::HeaderValue::from_str(&self.secret) {
            head.headers.insert(SECRET_HEADER, v);
        }
        head.headers.insert(TRIGGER_HEADER, http::HeaderValue::from_static(trigger.as_str()));
        head.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
        head.version = http::Version::HTTP_11;
        match self.client.request(http::Request::from_parts(head, axum::body::Body::from(body))).await {
            Ok(resp) => resp.map(axum::body::Body::new),
            Err(e) => {
                tracing::warn!(node = %worker.id, "forwarding a call of {ns}/{name} failed: {e}");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "node_unreachable",
                    format!("node `{}`, which was running this call, could not be reached or stopped answering; call again (it goes to another node once this one is found lost)", worker.id),
                )
                .into_response()
            }
        }
    }
}

use axum::response::IntoResponse as _;

/// `/_hangar/fn/{namespace}/{name}/{path}`: a call another node placed here, run here.
pub async fn run_here(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("this route");
    let Some(peers) = state.peers.clone() else { return Err(not_found()) };
    if !peers.authentic(req.headers()) {
        return Err(not_found());
    }
    let path = req.uri().path().strip_prefix("/_hangar/fn/").unwrap_or("").to_string();
    let mut parts = path.splitn(3, '/');
    let (Some(ns), Some(name)) = (parts.next(), parts.next()) else { return Err(not_found()) };
    let rest = parts.next().unwrap_or("");
    let Some(slot) = state.scheduler.route(ns, name) else {
        return Err(ApiError::not_found(format_args!("function `{name}` in namespace `{ns}`")));
    };
    let trigger = req.headers().get(TRIGGER_HEADER).and_then(|v| v.to_str().ok()).and_then(|t| t.parse().ok()).unwrap_or(Trigger::Http);
    let target = match req.uri().query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    let (mut head, body) = req.into_parts();
    head.headers.remove(SECRET_HEADER);
    head.headers.remove(TRIGGER_HEADER);
    head.uri = target.parse().map_err(|_| ApiError::bad_request("invalid_path", "the request path is not a valid URI"))?;
    crate::invoke::invoke_here(&state, &slot, head, body, trigger).await
}
