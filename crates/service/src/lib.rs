//! Services: long-running OCI containers from the image store, each instance in its own
//! network namespace on Hangar's bridge, its own copy-on-write root, under cgroup limits, run
//! by runc (or gVisor's runsc); readiness-checked before traffic, restarted with backoff when
//! they exit, replaced by rolling updates, and balanced by least outstanding requests.
//!
//! [`Services`] is the table the gateway routes through. Each instance is a *slot*: a task
//! that starts a container, waits for its readiness probe, publishes its address, and restarts
//! it when it ends, until the slot is stopped (drain, SIGTERM, grace, SIGKILL, clean up).
//!
//! Design decisions:
//!
//! *gVisor services use the instance's namespace as their host network.* runsc (the 2022 Debian
//! release here) is started inside the instance's network namespace with `nsenter` and
//! `--network=host`: its own network stack (`--network=sandbox`) refused to build from a joined
//! namespace, finding the root one. System calls stay in gVisor's kernel; only socket operations
//! reach the host kernel, inside a namespace that holds nothing but the instance's veth.

mod autoscale;
mod bundle;
pub mod gauges;
pub mod informer;
pub mod logs;
mod network;
pub mod proxy;
mod slot;
pub mod traffic;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hangar_api::nodes::Resources;
use hangar_api::services::{ServiceConfig, ServiceInstance};
use hangar_container::ContainerRuntime;
use hangar_image::{Image, ImageStore};

pub use logs::LogRing;
pub use network::{INTERNAL_PORT, Network};

/// Where a service's instances run when there are many nodes: this node's part of them.
/// Every node computes its own part from the same heartbeats; a single server runs them all
/// ([`Alone`]).
pub trait Spread: Send + Sync + 'static {
    /// How many of `total` instances of `namespace/name` (each of `size`) run here.
    fn share(&self, namespace: &str, name: &str, total: u32, size: Resources) -> u32;
    /// Ready instances of `namespace/name` on the other nodes that take work, as their last
    /// heartbeats said: instances a smaller share no longer asks for stop only once the
    /// others have theirs ready.
    fn ready_elsewhere(&self, namespace: &str, name: &str) -> u32;
    /// Instances this node may still start (`--max-node-instances` less what it runs).
    fn room(&self) -> u32;
}

/// The one node of an embedded server: every instance runs here.
pub struct Alone;

impl Spread for Alone {
    fn share(&self, _: &str, _: &str, total: u32, _: Resources) -> u32 {
        total
    }
    fn ready_elsewhere(&self, _: &str, _: &str) -> u32 {
        0
    }
    fn room(&self) -> u32 {
        u32::MAX
    }
}

/// What can go wrong running services; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Invalid(String),
    #[error("service networking: {0}")]
    Network(String),
    #[error("the container runtime: {0}")]
    Runtime(String),
    #[error("the service did not become ready: {0}")]
    NotReady(String),
    #[error("the service was removed while this deploy was starting it; deploy it again to bring it back")]
    Removed,
    #[error("services: {0}")]
    Io(#[from] std::io::Error),
    #[error("building the container config: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// Where a server keeps its services' state; shared by every slot.
#[derive(Debug)]
pub struct Host {
    sid: String,
    /// `<data>/services`: instance upper directories and volumes.
    data: PathBuf,
    /// `/run/hangar-svc-<sid>`: bundles, mounted roots, runc state.
    run: PathBuf,
    network: Network,
    cgroup_parent: String,
    seq: AtomicU64,
    runc: hangar_container::Runc,
    /// gVisor, when this machine has it.
    runsc: Option<hangar_container::Runsc>,
    /// Which namespace each instance address belongs to (for calls between services).
    addresses: RwLock<HashMap<std::net::Ipv4Addr, String>>,
    /// The `/etc/hosts` of every running instance, by namespace.
    hosts_files: Mutex<HashMap<String, Vec<PathBuf>>>,
    /// Service names of each namespace, for those hosts files.
    names: RwLock<HashMap<String, Vec<String>>>,
    /// Numbers of the instances that exist or are being made or removed: everything on the
    /// machine named after another number is the reconcile loop's to remove.
    live: Mutex<std::collections::HashSet<u64>>,
    /// Set once what an earlier run left is removed (in the background at start); no instance
    /// starts before.
    prepared: tokio::sync::watch::Receiver<bool>,
    /// This node's part of each service's instances.
    spread: SpreadCell,
    /// Where services' metric history is kept (set once the meter exists).
    history: std::sync::OnceLock<hangar_meter::history::History>,
}

/// The spread a server's services follow (set once it joins a cluster).
struct SpreadCell(RwLock<Arc<dyn Spread>>);

impl std::fmt::Debug for SpreadCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spread")
    }
}

impl Host {
    /// Removes every container, mount, namespace, cgroup and instance root this server owns.
    async fn remove_all(&self) {
        let h = self;
        // Every container at once: each delete waits on its runtime, not on the others.
        futures::future::join_all(h.runtimes().into_iter().map(|rt| rt.remove_all())).await;
        // Mounted roots, deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let run = h.run.display().to_string();
        let mut targets: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|t| t.starts_with(&run)).collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            bundle::unmount_root(Path::new(t));
        }
        let _ = std::fs::remove_dir_all(&h.run);
        let _ = std::fs::remove_dir_all(h.data.join("instances"));
        h.network.remove_all().await;
        hangar_container::cgroup::remove_tree(&h.cgroup_parent).await;
    }

    /// Waits until what an earlier run left is removed and the run directory exists.
    pub(crate) async fn prepared(&self) {
        let mut rx = self.prepared.clone();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// The `/etc/hosts` text of an instance of `namespace` (`name` at `ip`): every service of
    /// the namespace resolves to the bridge, where the gateway routes by name.
    fn hosts_text(&self, namespace: &str, hostname: &str, ip: std::net::Ipv4Addr) -> String {
        let mut text = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n");
        if let Some(gw) = self.network.gateway() {
            let names = self.names.read().unwrap_or_else(|p| p.into_inner());
            for n in names.get(namespace).into_iter().flatten().filter(|n| *n != hostname) {
                text.push_str(&format!("{gw}\t{n}\n"));
            }
        }
        text
    }

    /// Rewrites the hosts files of `namespace`'s instances in place (they are bind-mounted).
    fn refresh_hosts(&self, namespace: &str) {
        let files = self.hosts_files.lock().unwrap_or_else(|p| p.into_inner()).get(namespace).cloned().unwrap_or_default();
        for f in files {
            let Ok(old) = std::fs::read_to_string(&f) else { continue };
            let mut lines = old.lines();
            let head: Vec<&str> = lines.by_ref().take(3).collect();
            let Some((ip, hostname)) = head.get(2).and_then(|l| l.split_once('\t')) else { continue };
            let Ok(ip) = ip.parse() else { continue };
            let _ = std::fs::write(&f, self.hosts_text(namespace, hostname, ip));
        }
    }
}

/// What one instance of a service with `config` takes of a node.
fn instance_size(config: &ServiceConfig) -> Resources {
    Resources { memory_mb: u64::from(config.memory_mb), cpu_milli: (config.cpus * 1000.0).round() as u64 }
}

impl Host {
    fn spread(&self) -> Arc<dyn Spread> {
        self.spread.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The instances of `svc` this node keeps at least and at most, of `min` and `max` in
    /// the whole cluster. Instances its share no longer asks for (a node joined, or this one
    /// drains or is fenced) are kept while the other nodes have fewer ready than theirs.
    fn bounds(&self, svc: &Service, min: u32, max: u32, config: &ServiceConfig, current: u32) -> (u32, u32) {
        let spread = self.spread();
        let size = instance_size(config);
        let (min_here, max_here) = (spread.share(&svc.namespace, &svc.name, min, size), spread.share(&svc.namespace, &svc.name, max.max(1), size));
        let short = min.saturating_sub(min_here).saturating_sub(spread.ready_elsewhere(&svc.namespace, &svc.name));
        let floor = (min_here + short).min(current.max(min_here));
        (floor, max_here.max(floor))
    }

    /// The container runtime of `kind`, if this machine has it.
    fn runtime(&self, kind: hangar_api::services::ContainerRuntime) -> Option<&dyn ContainerRuntime> {
        match kind {
            hangar_api::services::ContainerRuntime::Runc => Some(&self.runc),
            hangar_api::services::ContainerRuntime::Gvisor => self.runsc.as_ref().map(|r| r as &dyn ContainerRuntime),
        }
    }

    /// The container runtimes this machine has.
    fn runtimes(&self) -> Vec<&dyn ContainerRuntime> {
        let mut v: Vec<&dyn ContainerRuntime> = vec![&self.runc];
        if let Some(r) = &self.runsc {
            v.push(r);
        }
        v
    }

    /// The directory of a named volume of a namespace.
    pub fn volume_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.data.join("volumes").join(namespace).join(name)
    }
}

/// A ready instance's address, and its requests in flight.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub instance: String,
    inflight: AtomicU32,
}

/// One request's hold on an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct EndpointGuard(Arc<Endpoint>);

impl EndpointGuard {
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What new instances of a service run: its current revision.
#[derive(Debug)]
struct Revision {
    revision: u64,
    config: ServiceConfig,
    image: Arc<Image>,
    lower: Vec<PathBuf>,
}

/// A running service: its ready endpoints, its slots, its logs.
#[derive(Debug)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub config: RwLock<ServiceConfig>,
    routes: RwLock<Vec<Arc<Endpoint>>>,
    slots: Mutex<Vec<slot::Slot>>,
    /// Image ids of instances still stopping after a rollout (their roots are still mounted).
    retiring: Arc<Mutex<Vec<String>>>,
    pub logs: Arc<LogRing>,
    current: Mutex<Option<Arc<Revision>>>,
    /// A rollout is replacing the slots: the autoscaler waits.
    rolling: std::sync::atomic::AtomicBool,
    /// Held by a rollout from start to finish, so rollouts of one service take turns and a
    /// removal waits for the one under way (which sees `removed` and stops what it started).
    roll_lock: tokio::sync::Mutex<()>,
    removed: std::sync::atomic::AtomicBool,
    /// Woken when the service is removed (a rollout waiting for readiness gives up).
    removed_notify: tokio::sync::Notify,
    /// Requests waiting at the gateway for a ready instance.
    waiting: AtomicU32,
    /// Woken when a request starts waiting (scale from zero now, not at the next tick).
    demand: tokio::sync::Notify,
    /// Woken when an instance becomes ready.
    ready_notify: tokio::sync::Notify,
    scaling: Mutex<Option<hangar_api::services::ScalingStatus>>,
    /// Its requests as the gateway saw them, for the usage meter and the advisor.
    pub traffic: traffic::Traffic,
    /// Its metric history: requests through the gateway are counted there.
    pub(crate) history: Option<Arc<hangar_meter::history::Entry>>,
    /// The minimum instances adaptive mode set in place of the configured one (`NO_MIN`:
    /// none); a rollout clears it.
    min_override: AtomicU32,
}

/// No minimum set by adaptive mode.
const NO_MIN: u32 = u32::MAX;

/// A request's place in the queue of [`Service::wait_ready`].
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Service {
    /// The ready endpoint with the fewest requests in flight.
    pub fn pick(&self) -> Option<EndpointGuard> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let e = routes.iter().min_by_key(|e| e.inflight.load(Ordering::Acquire))?.clone();
        e.inflight.fetch_add(1, Ordering::AcqRel);
        Some(EndpointGuard(e))
    }

    /// A ready endpoint, waiting up to `timeout` for one when none is (the service scaled to
    /// zero, or all its instances are starting): the autoscaler hears of the wait at once.
    pub async fn wait_ready(&self, timeout: std::time::Duration) -> Option<EndpointGuard> {
        if let Some(e) = self.pick() {
            return Some(e);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        self.demand.notify_one();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = self.ready_notify.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(e) = self.pick() {
                return Some(e);
            }
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                return self.pick();
            }
        }
    }

    /// The minimum instances the autoscaler keeps now: adaptive mode's, else the configured.
    /// Whether new instances of this service run `revision` with `config` and the image
    /// `image_id` (the same revision number written by two deploys may differ in both).
    pub fn runs(&self, revision: u64, config: &ServiceConfig, image_id: &str) -> bool {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.as_ref().is_some_and(|r| r.revision == revision && r.config == *config && r.image.id == image_id)
    }

    pub fn min_instances(&self) -> u32 {
        match self.min_override.load(Ordering::Acquire) {
            NO_MIN => self.config.read().unwrap_or_else(|p| p.into_inner()).min_instances,
            n => n,
        }
    }

    /// Sets the minimum instances in place of the configured one (adaptive mode), until the
    /// next rollout; the autoscaler follows at its next tick.
    pub fn set_min_instances(&self, n: u32) {
        self.min_override.store(n.min(NO_MIN - 1), Ordering::Release);
        self.demand.notify_one();
    }

    /// The autoscaler's last decision.
    pub fn scaling(&self) -> Option<hangar_api::services::ScalingStatus> {
        self.scaling.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, e: Arc<Endpoint>) {
        self.routes.write().unwrap_or_else(|p| p.into_inner()).push(e);
        self.ready_notify.notify_waiters();
    }

    fn unpublish(&self, instance: &str) -> Option<Arc<Endpoint>> {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let i = routes.iter().position(|e| e.instance == instance)?;
        Some(routes.remove(i))
    }

    /// Its instances now.
    pub fn instances(&self) -> Vec<ServiceInstance> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().map(slot::Slot::status).collect()
    }

    /// How many instances are ready now.
    pub fn ready(&self) -> usize {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// See the module docs.
pub struct Services {
    host: Arc<Host>,
    images: Arc<ImageStore>,
    table: RwLock<HashMap<(String, String), Arc<Service>>>,
    /// Declared host names → service; `any_hosts` lets every other request skip the lookup.
    hosts: RwLock<HashMap<String, Arc<Service>>>,
    any_hosts: std::sync::atomic::AtomicBool,
    /// Traffic of removed services the meter has not taken yet.
    departed: Mutex<Vec<(String, String, traffic::Taken)>>,
}

/// How a service's metric history is named.
fn service_ref(namespace: &str, name: &str) -> hangar_api::traces::WorkloadRef {
    hangar_api::traces::WorkloadRef { kind: hangar_api::WorkloadKind::Service, namespace: namespace.to_string(), name: name.to_string() }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").field("host", &self.host).finish_non_exhaustive()
    }
}

/// The port a service listens on: its own, the image's first exposed TCP port, or 8080.
pub fn service_port(config: &ServiceConfig, image: &Image) -> u16 {
    config.port.or_else(|| image.config.exposed_ports.first().copied()).unwrap_or(8080)
}

impl Services {
    /// Whether this machine can run services: root (containers, mounts and network
    /// namespaces), `runc`, `ip` and `nft`; the error says what is missing and how to get it.
    pub fn check_machine() -> Result<(), ServiceError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(ServiceError::Runtime("services need root (containers, mounts and network namespaces); run `hangar up` as root".into()));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for (tool, package) in [("runc", "runc"), ("ip", "iproute2"), ("nft", "nftables")] {
            if !std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
                return Err(ServiceError::Runtime(format!("`{tool}` is not installed (apt-get install {package})")));
            }
        }
        Ok(())
    }

    /// Services of the server whose data dir is `data` (`sid` names what it owns on the
    /// machine). Removes whatever an earlier run of this server left: containers, mounts,
    /// namespaces, the bridge, cgroups and instance roots (volumes stay).
    pub async fn start(data: &Path, sid: &str, images: Arc<ImageStore>) -> Result<Services, ServiceError> {
        let run = PathBuf::from(format!("/run/hangar-svc-{sid}"));
        let runsc = hangar_container::Runsc::find().map(|program| hangar_container::Runsc::new(program, run.join("runsc")));
        let (done, prepared) = tokio::sync::watch::channel(false);
        let host = Arc::new(Host {
            sid: sid.to_string(),
            data: data.join("services"),
            runc: hangar_container::Runc::new(run.join("runc")),
            run,
            network: Network::new(sid),
            cgroup_parent: format!("hangar-{sid}-svc"),
            seq: AtomicU64::new(1),
            runsc,
            addresses: RwLock::new(HashMap::new()),
            hosts_files: Mutex::new(HashMap::new()),
            names: RwLock::new(HashMap::new()),
            live: Mutex::new(std::collections::HashSet::new()),
            prepared,
            spread: SpreadCell(RwLock::new(Arc::new(Alone))),
            history: std::sync::OnceLock::new(),
        });
        let s = Services {
            host,
            images,
            table: RwLock::new(HashMap::new()),
            hosts: RwLock::new(HashMap::new()),
            any_hosts: Default::default(),
            departed: Mutex::default(),
        };
        std::fs::create_dir_all(s.host.data.join("volumes"))?;
        // What an earlier run left goes in the background: the API answers meanwhile, and
        // instances start once it is done.
        let host = s.host.clone();
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            host.remove_all().await;
            for dir in [host.run.join("runc"), host.data.join("instances")] {
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    tracing::error!("services: making {}: {e}", dir.display());
                }
            }
            tracing::info!(took_ms = t.elapsed().as_millis() as u64, "services: leftovers of earlier runs removed");
            let _ = done.send(true);
        });
        Ok(s)
    }

    /// Removes what this server owns on the machine but no instance wants: containers, roots,
    /// namespaces, cgroups left by an instance that did not clean up (e.g. a runtime that failed
    /// half-way). Run periodically.
    pub async fn reconcile(&self) {
        let h = &self.host;
        h.prepared().await;
        let prefix = format!("hs-{}-", h.sid);
        let number = |id: &str| id.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok());
        // What exists, listed before the live set is read: anything made after the listing is
        // not considered, and anything listed was registered as live before it was made.
        let mut containers = Vec::new();
        for rt in h.runtimes() {
            containers.extend(rt.list().await.into_iter().filter(|id| number(id).is_some()).map(|id| (rt, id)));
        }
        let dirs: Vec<String> = std::fs::read_dir(&h.run)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| number(n).is_some())
            .collect();
        let live = h.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let wanted = |id: &str| number(id).is_none_or(|n| live.contains(&n));
        for (rt, id) in containers.iter().filter(|(_, id)| !wanted(id)) {
            tracing::warn!("reconcile: removing container {id}, which no instance owns");
            rt.delete(id).await;
        }
        for id in dirs.iter().filter(|id| !wanted(id)) {
            tracing::warn!("reconcile: removing the root of {id}, which no instance owns");
            bundle::unmount_root(&h.run.join(id).join("rootfs"));
            let _ = std::fs::remove_dir_all(h.run.join(id));
            let _ = std::fs::remove_dir_all(h.data.join("instances").join(id));
            hangar_container::cgroup::remove_tree(&format!("{}/{id}", h.cgroup_parent)).await;
        }
        let netns_prefix = format!("hgr-{}-", h.sid);
        h.network.remove_unwanted(|name| name.strip_prefix(&netns_prefix).and_then(|n| n.parse::<u64>().ok()).is_none_or(|n| live.contains(&n))).await;
    }

    /// Makes this node run only its part of each service's instances (a cluster's workers).
    pub fn set_spread(&self, spread: Arc<dyn Spread>) {
        *self.host.spread.0.write().unwrap_or_else(|p| p.into_inner()) = spread;
    }

    /// Keeps services' metric history in `history` (before any service is deployed).
    pub fn set_history(&self, history: hangar_meter::history::History) {
        let _ = self.host.history.set(history);
    }

    /// Every service here.
    pub(crate) fn all(&self) -> Vec<Arc<Service>> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Every service here with its ready and running instances (for the node's heartbeat).
    pub fn counts(&self) -> Vec<hangar_api::nodes::ServiceCount> {
        let spread = self.host.spread();
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table
            .values()
            .map(|s| {
                let part = {
                    let c = s.config.read().unwrap_or_else(|p| p.into_inner());
                    spread.share(&s.namespace, &s.name, c.min_instances, instance_size(&c))
                };
                hangar_api::nodes::ServiceCount {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    ready: s.routes.read().unwrap_or_else(|p| p.into_inner()).len() as u32,
                    instances: s.slots.lock().unwrap_or_else(|p| p.into_inner()).len() as u32,
                    part,
                }
            })
            .collect()
    }

    /// The bridge's address once it exists: the gateway serves calls between services there
    /// on [`network::INTERNAL_PORT`].
    pub fn bridge_ready(&self) -> tokio::sync::watch::Receiver<Option<std::net::Ipv4Addr>> {
        self.host.network.bridge_ready()
    }

    /// The namespace of the instance at `ip`, if it is one of ours.
    pub fn namespace_of(&self, ip: std::net::IpAddr) -> Option<String> {
        let std::net::IpAddr::V4(v4) = ip else { return None };
        self.host.addresses.read().unwrap_or_else(|p| p.into_inner()).get(&v4).cloned()
    }

    /// The service a `Host` header names, if a service declared it.
    pub fn by_host(&self, host: &str) -> Option<Arc<Service>> {
        if !self.any_hosts.load(Ordering::Acquire) {
            return None;
        }
        let host = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h).to_ascii_lowercase();
        self.hosts.read().unwrap_or_else(|p| p.into_inner()).get(&host).cloned()
    }

    /// Rebuilds the host-name index from the running services' configs.
    fn reindex_hosts(&self) {
        let mut index = HashMap::new();
        for svc in self.table.read().unwrap_or_else(|p| p.into_inner()).values() {
            for h in &svc.config.read().unwrap_or_else(|p| p.into_inner()).hosts {
                index.insert(h.clone(), svc.clone());
            }
        }
        self.any_hosts.store(!index.is_empty(), Ordering::Release);
        *self.hosts.write().unwrap_or_else(|p| p.into_inner()) = index;
    }

    fn set_names(&self, namespace: &str) {
        let names: Vec<String> =
            self.table.read().unwrap_or_else(|p| p.into_inner()).keys().filter(|(ns, _)| ns == namespace).map(|(_, n)| n.clone()).collect();
        self.host.names.write().unwrap_or_else(|p| p.into_inner()).insert(namespace.to_string(), names);
        self.host.refresh_hosts(namespace);
    }

    /// `(namespace, name)` of every service in the table.
    pub fn names(&self) -> Vec<(String, String)> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// The running service `namespace/name`, if any.
    /// Every service of `namespace` here.
    pub fn list(&self, namespace: &str) -> Vec<Arc<Service>> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).values().filter(|s| s.namespace == namespace).cloned().collect()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Whether any service of `namespace` runs the image `id`.
    pub fn uses_image(&self, namespace: &str, id: &str) -> bool {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.values().filter(|s| s.namespace == namespace).any(|s| {
            s.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|slot| slot.image_id() == id)
                || s.retiring.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|r| r == id)
        })
    }

    /// Rolls `namespace/name` out to `revision`: starts `min_instances` new instances, waits
    /// until all are ready (traffic reaches each as soon as it is), then drains and stops the
    /// old ones in the background. If the new instances do not become ready, they are stopped and the old ones
    /// keep serving; the error carries their last log lines.
    ///
    /// In a cluster this node starts its part of the instances, and at least one: a deploy is
    /// seen serving where it was made.
    pub async fn rollout(&self, namespace: &str, name: &str, revision: u64, config: ServiceConfig, image: Image) -> Result<(), ServiceError> {
        self.roll_out(namespace, name, revision, config, image, 1).await
    }

    /// Rolls `namespace/name` out to `revision` as another node deployed it: this node starts
    /// only its part of the instances (perhaps none), each replacing an old one once ready.
    pub async fn follow(&self, namespace: &str, name: &str, revision: u64, config: ServiceConfig, image: Image) -> Result<(), ServiceError> {
        self.roll_out(namespace, name, revision, config, image, 0).await
    }

    async fn roll_out(&self, namespace: &str, name: &str, revision: u64, config: ServiceConfig, image: Image, at_least: u32) -> Result<(), ServiceError> {
        let svc = {
            let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
            table
                .entry((namespace.to_string(), name.to_string()))
                .or_insert_with(|| {
                    let svc = Arc::new(Service {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        config: RwLock::new(config.clone()),
                        routes: RwLock::new(Vec::new()),
                        slots: Mutex::new(Vec::new()),
                        retiring: Arc::default(),
                        logs: Arc::new(LogRing::new(1 << 20)),
                        current: Mutex::new(None),
                        rolling: Default::default(),
                        roll_lock: tokio::sync::Mutex::new(()),
                        removed: Default::default(),
                        removed_notify: tokio::sync::Notify::new(),
                        waiting: AtomicU32::new(0),
                        demand: tokio::sync::Notify::new(),
                        ready_notify: tokio::sync::Notify::new(),
                        scaling: Mutex::new(None),
                        traffic: traffic::Traffic::default(),
                        history: self.host.history.get().map(|h| h.entry(&service_ref(namespace, name))),
                        min_override: AtomicU32::new(NO_MIN),
                    });
                    tokio::spawn(autoscale::run(Arc::downgrade(&svc), self.host.clone()));
                    svc
                })
                .clone()
        };
        let _turn = svc.roll_lock.lock().await;
        if svc.removed.load(Ordering::Acquire) {
            return Err(ServiceError::Removed);
        }
        svc.rolling.store(true, Ordering::Release);
        svc.min_override.store(NO_MIN, Ordering::Release);
        let result = self.roll(&svc, namespace, name, revision, config, image, at_least).await;
        svc.rolling.store(false, Ordering::Release);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn roll(
        &self,
        svc: &Arc<Service>,
        namespace: &str,
        name: &str,
        revision: u64,
        config: ServiceConfig,
        image: Image,
        at_least: u32,
    ) -> Result<(), ServiceError> {
        self.set_names(namespace);
        let image = Arc::new(image);
        let lower = self.images.lower_dirs(&image).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        // As many as run now (the autoscaler's count), at least this node's part of min (and
        // `at_least`, so a deploy is seen serving before it returns), at most its part of max.
        let running = svc.slots.lock().unwrap_or_else(|p| p.into_inner()).len() as u32;
        let (floor, ceiling) = self.host.bounds(svc, config.min_instances, config.max_instances, &config, running);
        // Never past this node's instance cap (but a deploy's one instance).
        let room = running.saturating_add(self.host.spread().room());
        let count = running.max(floor).min(ceiling).min(room).max(at_least);
        let mut fresh = Vec::new();
        for _ in 0..count {
            fresh.push(slot::Slot::spawn(self.host.clone(), svc.clone(), revision, config.clone(), image.clone(), lower.clone()));
        }
        let removed = svc.removed_notify.notified();
        tokio::pin!(removed);
        removed.as_mut().enable();
        let results = if svc.removed.load(Ordering::Acquire) {
            Err(ServiceError::Removed)
        } else {
            tokio::select! {
                r = futures::future::join_all(fresh.iter().map(|s| s.ready(config.readiness.timeout_ms))) => r.into_iter().find(Result::is_err).unwrap_or(Ok(())),
                () = &mut removed => Err(ServiceError::Removed),
            }
        };
        if let Err(e) = results {
            for s in fresh {
                s.stop(0).await;
            }
            // A service that never got an instance is not kept (unless it was removed meanwhile:
            // its name may already belong to a new one).
            let empty = svc.slots.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
            if empty && !matches!(e, ServiceError::Removed) {
                svc.removed.store(true, Ordering::Release);
                self.table.write().unwrap_or_else(|p| p.into_inner()).remove(&(namespace.to_string(), name.to_string()));
                self.set_names(namespace);
            }
            return Err(e);
        }
        let old: Result<Vec<slot::Slot>, Vec<slot::Slot>> = {
            let mut slots = svc.slots.lock().unwrap_or_else(|p| p.into_inner());
            if svc.removed.load(Ordering::Acquire) { Err(fresh) } else { Ok(std::mem::replace(&mut *slots, fresh)) }
        };
        let old = match old {
            Ok(old) => old,
            Err(fresh) => {
                futures::future::join_all(fresh.into_iter().map(|s| s.stop(0))).await;
                return Err(ServiceError::Removed);
            }
        };
        *svc.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Revision { revision, config: config.clone(), image: image.clone(), lower }));
        *svc.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        self.reindex_hosts();
        // The new revision serves; the old instances drain and stop meanwhile, together.
        let ids: Vec<String> = old.iter().map(|s| s.image_id().to_string()).collect();
        svc.retiring.lock().unwrap_or_else(|p| p.into_inner()).extend(ids.iter().cloned());
        let retiring = svc.retiring.clone();
        tokio::spawn(async move {
            futures::future::join_all(old.into_iter().map(|s| {
                let grace = s.grace_ms();
                s.stop(grace)
            }))
            .await;
            let mut r = retiring.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                if let Some(i) = r.iter().position(|x| *x == id) {
                    r.remove(i);
                }
            }
        });
        Ok(())
    }

    /// Stops every instance of `namespace/name` (drain, SIGTERM, grace, SIGKILL).
    pub async fn remove(&self, namespace: &str, name: &str) {
        let svc = self.table.write().unwrap_or_else(|p| p.into_inner()).remove(&(namespace.to_string(), name.to_string()));
        if let Some(svc) = svc {
            svc.removed.store(true, Ordering::Release);
            svc.removed_notify.notify_waiters();
            self.set_names(namespace);
            self.reindex_hosts();
            // A rollout under way stops the instances it started before letting go.
            let _turn = svc.roll_lock.lock().await;
            let slots = std::mem::take(&mut *svc.slots.lock().unwrap_or_else(|p| p.into_inner()));
            futures::future::join_all(slots.into_iter().map(|s| {
                let grace = s.grace_ms();
                s.stop(grace)
            }))
            .await;
            // Counted after the drain, so the last requests are in.
            let last = svc.traffic.take();
            if last != traffic::Taken::default() {
                self.departed.lock().unwrap_or_else(|p| p.into_inner()).push((svc.namespace.clone(), svc.name.clone(), last));
            }
        }
    }

    /// Stops every service and removes what they left (server shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<(String, String)> = self.table.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        futures::future::join_all(all.iter().map(|(ns, name)| self.remove(ns, name))).await;
        self.host.prepared().await;
        self.host.remove_all().await;
    }
}

/// Services are metered by their instances' time and size, and by the requests the proxy
/// counted (removed services' last counts included).
impl hangar_meter::usage::Fleet for Services {
    /// Every service with the instances it has now (starting, serving or draining).
    fn running(&self) -> Vec<hangar_meter::usage::Running> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table
            .values()
            .map(|svc| {
                let n = svc.slots.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
                let c = svc.config.read().unwrap_or_else(|p| p.into_inner());
                hangar_meter::usage::Running {
                    namespace: svc.namespace.clone(),
                    kind: hangar_api::WorkloadKind::Service,
                    name: svc.name.clone(),
                    running: n,
                    paused: 0,
                    cpus_milli: (c.cpus * 1000.0).round() as u64,
                    memory_mb: u64::from(c.memory_mb),
                }
            })
            .collect()
    }

    fn take_served(&self) -> Vec<hangar_meter::usage::Served> {
        let mut out = std::mem::take(&mut *self.departed.lock().unwrap_or_else(|p| p.into_inner()));
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        for svc in table.values() {
            let t = svc.traffic.take();
            if t != traffic::Taken::default() {
                out.push((svc.namespace.clone(), svc.name.clone(), t));
            }
        }
        out.into_iter()
            .map(|(namespace, name, t)| hangar_meter::usage::Served { namespace, name, requests: t.requests, errors: t.errors, busy_ms: t.busy_ms })
            .collect()
    }
}

/// The reconcile loop of the services table ([`Services::reconcile`]), for the supervisor.
pub struct Reconcile(pub Arc<Services>);

#[async_trait::async_trait]
impl hangar_supervisor::Loop for Reconcile {
    async fn tick(&mut self) {
        self.0.reconcile().await;
    }
}
