//! Calls between the nodes of a cluster: a function call that placement sends to another
//! worker is forwarded to that node's `/_hangar/fn/…` route, which runs it there without
//! placing it again; a service request that finds no ready instance here goes to a node that
//! has one (`/_hangar/svc/…`), which decides who may reach the service as `/svc/` would.
//! Node-to-node requests carry the cluster secret (`--cluster-secret`), never a user's key; a
//! request to `/_hangar/…` without it is a 404, as if the route did not exist.
//!
//! A service's instances spread over the workers ([`ClusterSpread`], after
//! [`hangar_scheduler::placement::spread_share`]): each worker computes its own part from the
//! same heartbeats. A lost or draining node is no longer among them, so the others' parts grow.
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
/// The header that says the forwarding node already decided the caller may reach the service
/// (a call between services, which carries no key).
const ALLOWED_HEADER: &str = "x-hangar-allowed";
/// The header that says a service request was sent on a second time (its first node had no
/// ready instance after all): the node that gets it serves it, never sends it on.
const HOP_HEADER: &str = "x-hangar-hop";
/// The header that carries an async attempt's Lambda request id (the event's id) to the node
/// that runs it.
const REQUEST_ID_HEADER: &str = "x-hangar-request-id";
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

/// Where a service's request goes.
pub enum ServiceRoute {
    Here,
    /// A node with a ready instance, or the first in the service's spread (it starts one).
    There(Node),
    /// No node has the service.
    Nowhere,
}

/// Another node: its id, and where it is reached.
pub struct Node {
    pub id: String,
    pub address: String,
}

/// The services the cluster has, and whether each is public: how a node that does not run a
/// service (yet) answers for it without reading the store per request. Follows the store
/// through the bus.
pub struct ServiceDirectory {
    store: Arc<dyn hangar_store::Store>,
    public: std::sync::RwLock<std::collections::HashMap<(String, String), bool>>,
}

impl ServiceDirectory {
    pub fn new(store: Arc<dyn hangar_store::Store>) -> Arc<ServiceDirectory> {
        Arc::new(ServiceDirectory { store, public: Default::default() })
    }

    /// Whether `namespace/name` is public; `None` if there is no such service.
    pub fn public(&self, namespace: &str, name: &str) -> Option<bool> {
        self.public.read().unwrap_or_else(|p| p.into_inner()).get(&(namespace.to_string(), name.to_string())).copied()
    }
}

#[async_trait::async_trait]
impl hangar_bus::Subscriber for ServiceDirectory {
    async fn apply(&self, change: &hangar_bus::Change) {
        match change {
            hangar_bus::Change::Service { namespace, name } => {
                let key = (namespace.clone(), name.clone());
                match self.store.get_service(namespace, name).await {
                    Ok(Some(row)) => _ = self.public.write().unwrap_or_else(|p| p.into_inner()).insert(key, row.config.public),
                    Ok(None) => _ = self.public.write().unwrap_or_else(|p| p.into_inner()).remove(&key),
                    Err(e) => tracing::error!("reading service {namespace}/{name} failed ({e}); the directory keeps what it had"),
                }
            }
            hangar_bus::Change::Everything => match self.store.list_services(None).await {
                Ok(rows) => {
                    let all = rows.into_iter().map(|r| ((r.namespace, r.name), r.config.public)).collect();
                    *self.public.write().unwrap_or_else(|p| p.into_inner()) = all;
                }
                Err(e) => tracing::error!("reading the services failed ({e}); the directory keeps what it had"),
            },
            _ => {}
        }
    }
}

/// This node's view of the others, and how it calls them.
pub struct Peers {
    me: String,
    secret: String,
    secret_hash: [u8; 32],
    members: Arc<dyn hangar_bus::Membership>,
    cache: Mutex<(Arc<Vec<NodeInfo>>, Arc<Placement>)>,
    client: Client<HttpConnector, axum::body::Body>,
    /// Turns between the nodes that have a service's instances ready.
    turn: std::sync::atomic::AtomicUsize,
    /// The cluster's services, for requests this node cannot serve itself.
    pub directory: Arc<ServiceDirectory>,
}

fn hash(secret: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(secret).into()
}

/// The nodes that run service instances of `size` (ready, not draining, big enough for one
/// such instance), ordered by id: the same list on every node for the same heartbeats.
fn spread_workers(nodes: &[NodeInfo], size: hangar_api::nodes::Resources) -> Vec<&NodeInfo> {
    use hangar_api::nodes::NodeState;
    nodes
        .iter()
        .filter(|n| {
            n.state == NodeState::Ready
                && n.report.runs_services
                && n.report.address.is_some()
                && n.report.max_instances > 0
                && n.report.capacity.memory_mb >= size.memory_mb
                && n.report.capacity.cpu_milli >= size.cpu_milli
        })
        .collect()
}

/// This node's part of each service's instances, from the nodes' last heartbeats; nothing
/// while it is fenced (cut off from the bus, the others run its part).
pub struct ClusterSpread {
    me: String,
    members: Arc<dyn hangar_bus::Membership>,
    fenced: std::sync::atomic::AtomicBool,
}

impl ClusterSpread {
    pub fn new(me: String, members: Arc<dyn hangar_bus::Membership>) -> Arc<ClusterSpread> {
        Arc::new(ClusterSpread { me, members, fenced: Default::default() })
    }
}

impl hangar_service::Spread for ClusterSpread {
    fn share(&self, namespace: &str, name: &str, total: u32, size: hangar_api::nodes::Resources) -> u32 {
        if self.fenced.load(std::sync::atomic::Ordering::Acquire) {
            return 0;
        }
        let snapshot = self.members.snapshot();
        let workers = spread_workers(&snapshot, size);
        match workers.iter().position(|n| n.report.id == self.me) {
            Some(me) => hangar_scheduler::placement::spread_share(namespace, name, total, workers.len(), me),
            None => 0,
        }
    }

    fn room(&self) -> u32 {
        let snapshot = self.members.snapshot();
        snapshot.iter().find(|n| n.report.id == self.me).map_or(u32::MAX, |n| n.report.max_instances.saturating_sub(n.report.instances))
    }

    fn ready_elsewhere(&self, namespace: &str, name: &str) -> u32 {
        if self.fenced.load(std::sync::atomic::Ordering::Acquire) {
            // Cut off: what the others run is unknown, and they run this node's part.
            return u32::MAX;
        }
        use hangar_api::nodes::NodeState;
        let snapshot = self.members.snapshot();
        snapshot
            .iter()
            .filter(|n| n.report.id != self.me && n.state == NodeState::Ready)
            .flat_map(|n| n.report.services.iter().filter(|c| c.namespace == namespace && c.name == name).map(|c| c.ready))
            .fold(0u32, u32::saturating_add)
    }
}

/// Fenced: this node's service instances stop (the others start them); back: it runs its part.
#[async_trait::async_trait]
impl hangar_bus::nodes::Failover for ClusterSpread {
    async fn node_lost(&self, _node: &str) {}

    async fn fenced(&self) {
        tracing::warn!("cut off from the bus: this node's service instances stop, the other nodes run them");
        self.fenced.store(true, std::sync::atomic::Ordering::Release);
    }

    async fn rejoined(&self) {
        self.fenced.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// A node's answer, passed on; an upgrade it agreed to (101, e.g. a WebSocket) joins the
/// caller's connection to the node's once both sides are upgraded.
fn bridge(client_side: Option<hyper::upgrade::OnUpgrade>, mut resp: http::Response<hyper::body::Incoming>) -> Response {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_side
    {
        let node_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(a), Ok(b)) = (client_side.await, node_side.await) {
                let _ = tokio::io::copy_bidirectional(&mut hyper_util::rt::TokioIo::new(a), &mut hyper_util::rt::TokioIo::new(b)).await;
            }
        });
    }
    resp.map(axum::body::Body::new)
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
    pub fn new(me: String, secret: String, members: Arc<dyn hangar_bus::Membership>, directory: Arc<ServiceDirectory>) -> Arc<Peers> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let snapshot = members.snapshot();
        let placement = Arc::new(placement_of(&snapshot, &me));
        Arc::new(Peers {
            secret_hash: hash(secret.as_bytes()),
            me,
            secret,
            members,
            cache: Mutex::new((snapshot, placement)),
            client,
            turn: Default::default(),
            directory,
        })
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

    /// Where a request for service `namespace/name` goes when no instance here is ready: another
    /// node with ready instances (in turns), else the first node of the service's spread.
    pub fn service_route(&self, namespace: &str, name: &str) -> ServiceRoute {
        use hangar_api::nodes::NodeState;
        let snapshot = self.members.snapshot();
        let has = |n: &NodeInfo| n.report.services.iter().find(|c| c.namespace == namespace && c.name == name).map(|c| c.ready);
        let up = |n: &&NodeInfo| n.state != NodeState::Lost && n.report.address.is_some();
        // Not this node: it asks because it has none ready now, whatever its last heartbeat said.
        let ready: Vec<&NodeInfo> = snapshot.iter().filter(up).filter(|n| n.report.id != self.me && has(n).is_some_and(|r| r > 0)).collect();
        let chosen = if ready.is_empty() {
            let workers = spread_workers(&snapshot, hangar_api::nodes::Resources::default());
            let having: Vec<&NodeInfo> = workers.iter().copied().filter(|n| has(n).is_some()).collect();
            hangar_scheduler::placement::spread_order(namespace, name, having.len()).next().map(|i| having[i])
        } else {
            Some(ready[self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % ready.len()])
        };
        match chosen {
            Some(n) if n.report.id == self.me => ServiceRoute::Here,
            Some(n) => ServiceRoute::There(Node { id: n.report.id.clone(), address: n.report.address.clone().unwrap_or_default() }),
            None => ServiceRoute::Nowhere,
        }
    }

    /// Sends a service request to `node` and streams its answer back; that node
    /// serves it from its own instances. `allowed`: this node already let the caller through.
    pub async fn forward_service(&self, node: &Node, namespace: &str, name: &str, req: Request, path: &str, allowed: bool) -> Response {
        let (id, address) = (&node.id, &node.address);
        let (mut head, body) = req.into_parts();
        let target = match head.uri.query() {
            Some(q) => format!("http://{address}/_hangar/svc/{namespace}/{name}{path}?{q}"),
            None => format!("http://{address}/_hangar/svc/{namespace}/{name}{path}"),
        };
        head.uri = match target.parse() {
            Ok(u) => u,
            Err(_) => return ApiError::bad_request("invalid_path", "the request path is not a valid URI").into_response(),
        };
        if let Ok(v) = http::HeaderValue::from_str(&self.secret) {
            head.headers.insert(SECRET_HEADER, v);
        }
        head.headers.remove(ALLOWED_HEADER);
        if allowed {
            head.headers.insert(ALLOWED_HEADER, http::HeaderValue::from_static("1"));
        }
        head.version = http::Version::HTTP_11;
        let mut request = http::Request::from_parts(head, body);
        let upgrade = request.headers().contains_key(http::header::UPGRADE).then(|| hyper::upgrade::on(&mut request));
        let then = "send the request again (it goes to another node)";
        match self.send(id, request, "runs this service's instance", then).await {
            Ok(resp) => bridge(upgrade, resp),
            Err(unreachable) => unreachable,
        }
    }

    /// Another node that runs instances (ready; for services, one that runs services), for an
    /// API call this node cannot serve itself (a gateway deploying a service, making a sandbox).
    pub fn worker(&self, services: bool) -> Option<Node> {
        use hangar_api::nodes::NodeState;
        let snapshot = self.members.snapshot();
        let runs = |n: &NodeInfo| if services { n.report.runs_services } else { n.report.role.runs_instances() };
        let workers: Vec<&NodeInfo> =
            snapshot.iter().filter(|n| n.report.id != self.me && n.state == NodeState::Ready && runs(n) && n.report.address.is_some()).collect();
        let n = workers.get(self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % workers.len().max(1))?;
        Some(Node { id: n.report.id.clone(), address: n.report.address.clone().unwrap_or_default() })
    }

    /// Node `id`, if it is another node and not lost.
    pub fn node(&self, id: &str) -> Option<Node> {
        let snapshot = self.members.snapshot();
        let n = snapshot.iter().find(|n| n.report.id == id && id != self.me && n.state != hangar_api::nodes::NodeState::Lost)?;
        Some(Node { id: n.report.id.clone(), address: n.report.address.clone()? })
    }

    /// Sends a request as it came (the caller's own credentials, its body streamed, a WebSocket
    /// upgrade passed through) to the same path on `node`, and its answer back.
    pub async fn forward_raw(&self, node: &Node, mut req: Request) -> Response {
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        *req.uri_mut() = match format!("http://{}{path_and_query}", node.address).parse() {
            Ok(u) => u,
            Err(_) => return ApiError::bad_request("invalid_path", "the request path is not a valid URI").into_response(),
        };
        req.headers_mut().remove(http::header::HOST);
        *req.version_mut() = http::Version::HTTP_11;
        let upgrade = req.headers().contains_key(http::header::UPGRADE).then(|| hyper::upgrade::on(&mut req));
        match self.send(&node.id, req, "runs this", "send it again").await {
            Ok(resp) => bridge(upgrade, resp),
            Err(unreachable) => unreachable,
        }
    }

    /// Sends an API call, with the caller's own credentials, to `node` and its answer back.
    pub async fn forward_api(&self, node: &Node, method: http::Method, path_and_query: &str, headers: &http::HeaderMap, body: Bytes) -> Response {
        let mut req = http::Request::new(axum::body::Body::from(body));
        *req.method_mut() = method;
        *req.uri_mut() = match format!("http://{}{path_and_query}", node.address).parse() {
            Ok(u) => u,
            Err(_) => return ApiError::bad_request("invalid_path", "the request path is not a valid URI").into_response(),
        };
        for h in [http::header::AUTHORIZATION, http::header::CONTENT_TYPE] {
            if let Some(v) = headers.get(&h) {
                req.headers_mut().insert(h, v.clone());
            }
        }
        self.send(&node.id, req, "was to run this", "send it again").await.map_or_else(|e| e, |r| r.map(axum::body::Body::new))
    }

    /// Sends `req` to node `id`. One that cannot be reached, or dies before answering, is a
    /// 502 saying so: the node `role` (what it was to do) could not be reached; `then`.
    async fn send(&self, id: &str, req: http::Request<axum::body::Body>, role: &str, then: &str) -> Result<http::Response<hyper::body::Incoming>, Response> {
        self.client.request(req).await.map_err(|e| {
            tracing::warn!(node = %id, "a request to node {id} failed: {e}");
            let message = format!("node `{id}`, which {role}, could not be reached or stopped answering; {then}");
            ApiError::new(StatusCode::BAD_GATEWAY, "node_unreachable", message).into_response()
        })
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
        // The `Host` asked for is kept: the function sees it (a URL event's `domainName`).
        if let Ok(v) = http::HeaderValue::from_str(&self.secret) {
            head.headers.insert(SECRET_HEADER, v);
        }
        head.headers.insert(TRIGGER_HEADER, http::HeaderValue::from_static(trigger.as_str()));
        head.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
        head.version = http::Version::HTTP_11;
        let request = http::Request::from_parts(head, axum::body::Body::from(body));
        let then = "call again (it goes to another node once this one is found lost)";
        self.send(&worker.id, request, "was running this call", then).await.map_or_else(|e| e, |r| r.map(axum::body::Body::new))
    }
}

use axum::response::IntoResponse as _;

/// Where asynchronous attempts of functions run in a cluster: placed like any call (a gateway
/// node runs none itself), on another node through `/_hangar/fn/…`.
pub struct AsyncPlacement(pub Arc<Peers>);

#[async_trait::async_trait]
impl hangar_events::Placement for AsyncPlacement {
    async fn run_elsewhere(
        &self,
        slot: &hangar_scheduler::Slot,
        request_id: &str,
        payload: Bytes,
        content_type: Option<&str>,
        trace: Option<hangar_trace::SpanContext>,
    ) -> Option<(Option<String>, StatusCode, Bytes)> {
        let worker = match self.0.route(slot) {
            Route::Here => return None,
            Route::There(worker) => worker,
            // Throttled: tried again soon, without using up a retry.
            Route::Nowhere => return Some((None, StatusCode::TOO_MANY_REQUESTS, Bytes::from_static(b"no worker has room for this function now"))),
        };
        let d = slot.deployment();
        let mut req = http::Request::post("/").body(()).ok()?;
        if let Ok(v) = http::HeaderValue::from_str(request_id) {
            req.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        if let Some(v) = content_type.and_then(|c| http::HeaderValue::from_str(c).ok()) {
            req.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        if let Some(ctx) = trace {
            ctx.inject(req.headers_mut());
        }
        let (head, ()) = req.into_parts();
        let resp = self.0.forward(&worker, &d.namespace, &d.name, head, payload, Trigger::Async).await;
        let invocation = resp.headers().get(hangar_api::INVOCATION_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let status = resp.status();
        Some((invocation, status, hangar_events::read_kept(resp.into_body()).await))
    }
}

/// Queued events for services in a cluster: delivered as a request through this node would be
/// (an instance here if one is ready, else a node that has one), without a key.
pub struct ClusterSink(pub std::sync::Weak<crate::Shared>);

#[async_trait::async_trait]
impl hangar_events::ServiceSink for ClusterSink {
    async fn deliver(
        &self,
        namespace: &str,
        service: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        trace: Option<hangar_trace::SpanContext>,
    ) -> Result<(StatusCode, Bytes), hangar_events::SinkError> {
        let Some(shared) = self.0.upgrade() else { return Err(hangar_events::SinkError::Failed("the server is stopping".into())) };
        let state = AppState(shared);
        let mut req = http::Request::post(path).body(axum::body::Body::from(body)).map_err(|e| hangar_events::SinkError::Failed(e.to_string()))?;
        if let Some(v) = content_type.and_then(|c| http::HeaderValue::from_str(c).ok()) {
            req.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        if let Some(ctx) = trace {
            ctx.inject(req.headers_mut());
        }
        let resp = match crate::services::reach_in_cluster(&state, req, namespace, service, path, true, true).await {
            Ok(resp) => resp,
            // Deployed but not running anywhere yet (or a node that does not know it yet): later.
            Err(e) if e.status == StatusCode::NOT_FOUND => {
                return match state.store.get_service(namespace, service).await {
                    Ok(Some(_)) => Err(hangar_events::SinkError::Failed(format!("service `{service}` is not running yet"))),
                    Ok(None) => Err(hangar_events::SinkError::Missing(service.to_string())),
                    Err(e) => Err(hangar_events::SinkError::Failed(e.to_string())),
                };
            }
            Err(e) => return Err(hangar_events::SinkError::Failed(e.message)),
        };
        hangar_service::proxy::kept_answer(service, resp).await
    }
}

/// A request from outside cannot say it was sent on already.
pub(crate) fn first_hop(req: &mut Request) {
    req.headers_mut().remove(HOP_HEADER);
}

/// Marks a service request as sent on a second time: the next node serves it, whatever.
pub(crate) fn hop(req: &mut Request) {
    req.headers_mut().insert(HOP_HEADER, http::HeaderValue::from_static("1"));
}

/// `/_hangar/svc/{namespace}/{name}/{path}`: a service request another node sent here, served
/// by this node's instances (it waits for one to be ready, as `/svc/` does).
pub async fn serve_here(State(state): State<AppState>, mut req: Request) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("this route");
    let Some(peers) = state.peers.clone() else { return Err(not_found()) };
    if !peers.authentic(req.headers()) {
        return Err(not_found());
    }
    req.headers_mut().remove(SECRET_HEADER);
    let allowed = req.headers_mut().remove(ALLOWED_HEADER).is_some();
    let hopped = req.headers_mut().remove(HOP_HEADER).is_some();
    let path = req.uri().path().strip_prefix("/_hangar").unwrap_or("").to_string();
    let Some((ns, name, rest)) = hangar_service::proxy::split_route(&path).map(|(ns, name, rest)| (ns.to_string(), name.to_string(), rest)) else {
        return Err(not_found());
    };
    // Its instance here may have stopped since the sender's last heartbeat (drained, scaled
    // down): on to a node that has one, once.
    if !hopped {
        hop(&mut req);
    }
    crate::services::reach_in_cluster(&state, req, &ns, &name, &rest, allowed, !hopped).await
}

#[derive(serde::Deserialize)]
pub struct ImageQuery {
    reference: String,
}

/// `GET /_hangar/images/{namespace}?reference=…`: an image of this node as an OCI layout
/// archive, for a node that must run it.
pub async fn export_image(
    State(state): State<AppState>,
    axum::extract::Path(namespace): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<ImageQuery>,
    headers: http::HeaderMap,
) -> Result<Response, ApiError> {
    if !state.peers.as_ref().is_some_and(|p| p.authentic(&headers)) {
        return Err(ApiError::not_found("this route"));
    }
    let images = state.images.clone();
    let file = tokio::task::spawn_blocking(move || images.export(&namespace, &q.reference))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("exporting the image failed: {e}")))??;
    let stream = file_stream(tokio::fs::File::from_std(file));
    Ok(([(http::header::CONTENT_TYPE, "application/x-tar")], axum::body::Body::from_stream(stream)).into_response())
}

/// A file read as a stream of chunks.
fn file_stream(file: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    use tokio::io::AsyncReadExt as _;
    futures::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

/// Images this node lacks, fetched from the others (see [`hangar_image::nodes`]).
pub struct PeerImages {
    pub peers: Arc<Peers>,
    /// Largest archive taken (`--max-image-bytes`).
    pub max_bytes: u64,
}

impl PeerImages {
    async fn fetch_from(
        &self,
        address: &str,
        store: &Arc<hangar_image::ImageStore>,
        namespace: &str,
        reference: &str,
    ) -> Result<Option<hangar_image::Image>, String> {
        use http_body_util::BodyExt as _;
        use std::io::Write as _;
        let uri = format!("http://{address}/_hangar/images/{namespace}?reference={reference}");
        let mut req = http::Request::get(uri).body(axum::body::Body::empty()).map_err(|e| e.to_string())?;
        if let Ok(v) = http::HeaderValue::from_str(&self.peers.secret) {
            req.headers_mut().insert(SECRET_HEADER, v);
        }
        let resp = self.peers.client.request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Ok(None);
        }
        let mut file = tempfile::NamedTempFile::new_in(store.tmp_dir()).map_err(|e| e.to_string())?;
        let mut body = resp.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the archive broke off: {e}"))?;
            if let Some(chunk) = frame.data_ref() {
                total += chunk.len() as u64;
                if total > self.max_bytes {
                    return Err(format!("the archive is larger than {} bytes (--max-image-bytes)", self.max_bytes));
                }
                file.write_all(chunk).map_err(|e| e.to_string())?;
            }
        }
        let ns = namespace.to_string();
        let mut imported = store.unpacking(move |images| images.import(&ns, file.path(), None)).await.map_err(|e| e.to_string())?;
        Ok(imported.pop())
    }
}

impl hangar_image::nodes::Source for PeerImages {
    fn fetch<'a>(
        &'a self,
        store: &'a Arc<hangar_image::ImageStore>,
        namespace: &'a str,
        reference: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<hangar_image::Image, hangar_image::ImageError>> {
        Box::pin(async move {
            let not_found = || hangar_image::ImageError::NotFound(reference.to_string());
            // References are names and digests: nothing in them needs escaping in a query.
            if reference.is_empty() || !reference.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/:@-".contains(&b)) {
                return Err(not_found());
            }
            let snapshot = self.peers.members.snapshot();
            for n in snapshot.iter().filter(|n| n.report.id != self.peers.me && n.state != hangar_api::nodes::NodeState::Lost) {
                let Some(address) = &n.report.address else { continue };
                match self.fetch_from(address, store, namespace, reference).await {
                    Ok(Some(image)) => {
                        tracing::info!(node = %n.report.id, image = %image.id, "image fetched from another node");
                        return store.get(namespace, reference).or(Some(image)).ok_or_else(not_found);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(node = %n.report.id, "fetching image {reference} from node {} failed: {e}", n.report.id),
                }
            }
            Err(not_found())
        })
    }
}

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
    // An async attempt: every attempt of the event is the same Lambda request.
    if let Some(id) = head.headers.remove(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok().map(str::to_string)) {
        head.extensions.insert(hangar_runtime::RequestId(id));
    }
    head.uri = target.parse().map_err(|_| ApiError::bad_request("invalid_path", "the request path is not a valid URI"))?;
    crate::invoke::invoke_here(&state, &slot, head, body, trigger).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::nodes::{NodeReport, NodeRole, NodeState, Resources, ServiceCount};
    use hangar_service::Spread as _;

    /// The heartbeats of a cluster, as a fixed snapshot.
    struct Heartbeats(Mutex<Arc<Vec<NodeInfo>>>);

    #[async_trait::async_trait]
    impl hangar_bus::Membership for Heartbeats {
        async fn nodes(&self) -> Result<Vec<NodeInfo>, String> {
            Ok(self.snapshot().to_vec())
        }
        async fn drain(&self, _: &str) -> Result<bool, String> {
            Ok(false)
        }
        fn snapshot(&self) -> Arc<Vec<NodeInfo>> {
            self.0.lock().unwrap().clone()
        }
    }

    fn node(id: &str, state: NodeState, web_ready: Option<u32>) -> NodeInfo {
        let services =
            web_ready.map(|ready| ServiceCount { namespace: "ns".into(), name: "web".into(), ready, instances: ready, part: ready }).into_iter().collect();
        let report = NodeReport {
            id: id.into(),
            role: NodeRole::All,
            address: Some(format!("{id}:1")),
            capacity: Resources { cpu_milli: 4000, memory_mb: 8192 },
            free: Resources { cpu_milli: 4000, memory_mb: 8192 },
            instances: 0,
            max_instances: 100,
            warm: Vec::new(),
            runs_services: true,
            services,
            draining: state == NodeState::Draining,
            version: "test".into(),
            started_ms: 0,
        };
        NodeInfo { report, state, last_heartbeat: String::new() }
    }

    const SMALL: Resources = Resources { memory_mb: 512, cpu_milli: 500 };

    fn members(nodes: Vec<NodeInfo>) -> Arc<Heartbeats> {
        Arc::new(Heartbeats(Mutex::new(Arc::new(nodes))))
    }

    #[tokio::test]
    async fn each_node_computes_its_part_and_hands_it_over_when_draining_or_fenced() {
        let m = members(vec![node("a", NodeState::Ready, Some(1)), node("b", NodeState::Ready, Some(1)), node("c", NodeState::Ready, Some(1))]);
        let spreads: Vec<_> = ["a", "b", "c"].iter().map(|id| ClusterSpread::new(id.to_string(), m.clone())).collect();
        assert_eq!(spreads.iter().map(|s| s.share("ns", "web", 3, SMALL)).collect::<Vec<_>>(), [1, 1, 1]);
        assert_eq!(spreads.iter().map(|s| s.share("ns", "web", 5, SMALL)).sum::<u32>(), 5);
        assert_eq!(spreads[0].ready_elsewhere("ns", "web"), 2);
        // Too big for every node: nobody's part.
        assert_eq!(spreads[0].share("ns", "web", 3, Resources { memory_mb: 16384, cpu_milli: 0 }), 0);
        assert_eq!(spreads[0].share("ns", "web", 3, Resources { memory_mb: 512, cpu_milli: 8000 }), 0);
        // Room: the node's cap less what it runs, as it last reported.
        assert_eq!(spreads[0].room(), 100);
        // c drains (or is lost): a and b share its part; c's is nothing.
        *m.0.lock().unwrap() =
            Arc::new(vec![node("a", NodeState::Ready, Some(1)), node("b", NodeState::Ready, Some(1)), node("c", NodeState::Draining, Some(1))]);
        assert_eq!(spreads.iter().map(|s| s.share("ns", "web", 3, SMALL)).collect::<Vec<_>>().iter().sum::<u32>(), 3);
        assert_eq!(spreads[2].share("ns", "web", 3, SMALL), 0);
        // Fenced: nothing here, and what the others run is unknown.
        hangar_bus::nodes::Failover::fenced(&*spreads[0]).await;
        assert_eq!((spreads[0].share("ns", "web", 3, SMALL), spreads[0].ready_elsewhere("ns", "web")), (0, u32::MAX));
        hangar_bus::nodes::Failover::rejoined(&*spreads[0]).await;
        assert!(spreads[0].share("ns", "web", 3, SMALL) > 0);
    }

    #[tokio::test]
    async fn service_requests_go_to_other_nodes_with_a_ready_instance_else_to_the_first_of_the_spread() {
        let m = members(vec![node("a", NodeState::Ready, Some(2)), node("b", NodeState::Ready, Some(0)), node("c", NodeState::Lost, Some(3))]);
        let store: Arc<dyn hangar_store::Store> = Arc::new(hangar_store_sqlite::SqliteStore::in_memory().unwrap());
        let directory = ServiceDirectory::new(store);
        let peers = Peers::new("a".into(), "0123456789abcdef".into(), m.clone(), directory.clone());
        // a's own report says 2 ready, but a asks because it has none now; c's 3 are lost with
        // it: the first of the spread over a and b.
        let first = ["a", "b"][hangar_scheduler::placement::spread_order("ns", "web", 2).next().unwrap()];
        match peers.service_route("ns", "web") {
            ServiceRoute::Here => assert_eq!(first, "a"),
            ServiceRoute::There(n) => assert_eq!(n.id, first),
            ServiceRoute::Nowhere => panic!("nowhere"),
        }
        let b = Peers::new("b".into(), "0123456789abcdef".into(), m.clone(), directory);
        for _ in 0..4 {
            assert!(matches!(b.service_route("ns", "web"), ServiceRoute::There(n) if n.id == "a"));
        }
        // None ready anywhere: the first node of the spread among those that have it.
        *m.0.lock().unwrap() = Arc::new(vec![node("a", NodeState::Ready, Some(0)), node("b", NodeState::Ready, Some(0))]);
        let first = hangar_scheduler::placement::spread_order("ns", "web", 2).next().unwrap();
        let want = ["a", "b"][first];
        match b.service_route("ns", "web") {
            ServiceRoute::Here => assert_eq!(want, "b"),
            ServiceRoute::There(n) => assert_eq!(n.id, want),
            ServiceRoute::Nowhere => panic!("nowhere"),
        }
        // Nobody has it: nowhere.
        assert!(matches!(b.service_route("ns", "other"), ServiceRoute::Nowhere));
    }
}
