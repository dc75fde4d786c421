//! Process functions: AWS Lambda handlers for `python3`, `nodejs` and `provided` (any
//! `bootstrap` executable), served through the Lambda Runtime API.
//!
//! Each revision gets a zygote ([`pod`]): a `runc` container in its own user namespace that
//! starts the runtime once — for python3 it also imports the handler — and forks instances.
//! Each instance ([`instance`]) gets its own mount, pid, network, ipc and uts namespaces, a
//! fresh `/proc`, a private `/tmp`, loopback with only its Runtime API on it, its own cgroup
//! (memory, pids, CPU), and drops to `nobody` with no capabilities and a seccomp filter before
//! user code serves a request. [`function`] pools instances and runs invocations; [`code`]
//! unpacks uploaded zips safely; [`egress`] is the allow-listed way out for functions granted
//! outbound access.
//!
//! Design decisions:
//!
//! *Zygote plus spare sandbox for process functions.* Forking from a zygote that already imported
//! the handler skips the interpreter's start and imports (python3: ~100 ms here); making
//! namespaces (~6 ms) and especially moving a process into a cgroup on v1 (~10 ms) are done ahead
//! of demand for one spare per revision, so a cold start only lets the spare go (BENCHMARKS.md).
//! For nodejs and provided the spare's runtime is started too (Lambda's proactive initialization):
//! a bootstrap's or Node's start is then off the request path, and its init errors still surface
//! on the invocation that would have used it. A new function or revision takes a prewarmed zygote
//! of its runtime rather than starting one (python3's interpreter start is ~250 ms on these
//! machines), so its first call does not wait for it; the code arrives by hard links into the slot
//! bound at `/var/task`, which needs no mount in the running container. A revision whose code
//! failed to initialize in a prewarmed zygote starts its own zygotes from then on, so a broken
//! deploy does not drain the pool. Instances of one function share the zygote's user namespace and
//! uid range; each has its own pid, mount, net, ipc and uts namespaces, so it sees neither the
//! host nor its siblings. The price of the spare: one idle sandbox (~4 MiB unique memory) per
//! resident revision.
//!
//! *Egress through a proxy, not a route.* A process instance's network namespace holds only
//! loopback with Hangar's listeners: the Runtime API and, for functions with `allow_outbound`, an
//! HTTP/CONNECT proxy (`egress`) that checks each destination against the same allow-list as wasm
//! functions and connects from the host. No veth, bridge or NAT exists to escape through; the
//! price is that clients must honour `HTTP(S)_PROXY`. Node's built-in `http`, `https` and `fetch`
//! do not (before Node 24), so the Node shim routes them through the proxy with CONNECT tunnels,
//! and gives Node the machine's CA store as Python has.
#![forbid(unsafe_code)]

pub mod channel;
pub mod code;
pub mod egress;
pub mod function;
pub mod instance;
pub mod pod;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hangar_api::RuntimeKind;
use hangar_container::cgroup::Limits as CgroupLimits;
use hangar_runtime::{CodeInfo, Loaded, RevisionSpec, Runtime, RuntimeError};
use sha2::{Digest, Sha256};

/// How the process runtimes are set up on this server.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The server's data directory; code is unpacked under `<data_dir>/process`.
    pub data_dir: PathBuf,
    /// The server's id: its run directory and cgroups are named after it.
    pub server_id: hangar_core::ServerId,
    /// How long an idle instance stays warm.
    pub keep_alive: Duration,
    /// How long an idle instance runs before it is paused (zero: never).
    pub pause_after: Duration,
    /// `AWS_REGION` as functions see it.
    pub region: String,
    /// Prewarmed zygotes kept ready per runtime, not yet specialized to any function.
    pub prewarm: usize,
    /// Where each runtime's pool publishes how many zygotes are ready and how many were taken.
    pub prewarm_metrics: Vec<(RuntimeKind, PoolMetrics)>,
}

/// The metrics of one runtime's pool of prewarmed zygotes.
#[derive(Debug, Clone, Default)]
pub struct PoolMetrics {
    pub ready: prometheus_client::metrics::gauge::Gauge,
    pub taken: prometheus_client::metrics::counter::Counter,
}

/// The prewarmed zygotes of one runtime.
#[derive(Default)]
struct Pool {
    ready: Vec<Arc<pod::Pod>>,
    filling: bool,
    metrics: PoolMetrics,
}

#[derive(Debug)]
struct Interpreter {
    exe: PathBuf,
    /// Host directory bound read-only at the same path (when not under `/usr`).
    bind: Option<PathBuf>,
    version: String,
}

/// What the three process runtimes share on one server: directories, the machine's
/// interpreters, the cgroup and uid ranges, and the settings.
#[derive(Debug)]
pub struct Host {
    code_dir: PathBuf,
    run_dir: PathBuf,
    runc_root: PathBuf,
    shims_dir: PathBuf,
    cgroup_parent: String,
    /// First host uid of the zygotes' user namespaces.
    uid_base: u32,
    python: Interpreter,
    node: Option<Interpreter>,
    keep_alive: Duration,
    pause_after: Duration,
    region: String,
    /// Set at shutdown: nothing new is started after it.
    stopping: std::sync::atomic::AtomicBool,
    /// Size of each instance's `/tmp` (its pages count against the instance's memory).
    tmp_bytes: u64,
    next: AtomicU64,
    /// How many prewarmed zygotes each runtime keeps ready.
    prewarm: usize,
    pools: std::sync::Mutex<std::collections::HashMap<RuntimeKind, Pool>>,
    /// Whether the run directory is ready for containers: what an earlier run left behind is
    /// removed in the background at start, and no zygote starts before that is done.
    prepared: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
}

async fn output(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(cmd).args(args).output().await.map_err(|e| format!("`{cmd}` cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A prefix to bind for `exe` unless the system's `/usr` already holds it.
fn bind_for(exe: &Path, prefix: &Path) -> Option<PathBuf> {
    if exe.starts_with("/usr") && prefix.starts_with("/usr") { None } else { Some(prefix.to_path_buf()) }
}

impl Host {
    /// Checks what process functions need (root, runc, python3; node for nodejs), removes
    /// whatever an earlier run of this server left behind, and writes the runtime shims.
    pub async fn start(config: HostConfig) -> Result<Arc<Host>, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("process functions need Hangar to run as root (to make namespaces and cgroups)".into());
        }
        // The three probes at once (python3 alone takes a quarter of a second here).
        let (runc, py, node) = tokio::join!(
            output("runc", &["--version"]),
            output("python3", &["-c", "import sys, json; print(json.dumps([sys.executable, sys.base_prefix, '%d.%d' % sys.version_info[:2]]))"]),
            output("node", &["-p", "process.execPath + ' ' + process.versions.node"]),
        );
        runc.map_err(|e| format!("{e}; install runc (`apt-get install runc`)"))?;
        let py = py.map_err(|e| format!("{e}; process functions need the machine's python3"))?;
        let [exe, prefix, version]: [String; 3] = serde_json::from_str(&py).map_err(|e| format!("python3 said {py}: {e}"))?;
        let (exe, prefix) = (PathBuf::from(exe), PathBuf::from(prefix));
        let python = Interpreter { bind: bind_for(&exe, &prefix), exe, version };
        let node = match node {
            Ok(line) => {
                let (exe, version) = line.rsplit_once(' ').unwrap_or((&line, ""));
                let exe = PathBuf::from(exe);
                let prefix = exe.parent().and_then(Path::parent).unwrap_or(Path::new("/usr")).to_path_buf();
                Some(Interpreter { bind: bind_for(&exe, &prefix), exe, version: version.to_string() })
            }
            Err(e) => {
                tracing::warn!("the nodejs runtime is not available: {e}");
                None
            }
        };
        let sid = config.server_id.as_str();
        let run_dir = PathBuf::from(format!("/run/hangar-{sid}"));
        let (done, prepared) = tokio::sync::watch::channel(None);
        let host = Host {
            code_dir: config.data_dir.join("process"),
            runc_root: run_dir.join("runc"),
            shims_dir: run_dir.join("shims"),
            run_dir,
            cgroup_parent: format!("hangar-{sid}"),
            uid_base: 1_000_000 + (u32::from_str_radix(&sid[..3], 16).unwrap_or(0) << 16),
            python,
            node,
            keep_alive: config.keep_alive,
            pause_after: config.pause_after,
            region: config.region,
            stopping: Default::default(),
            tmp_bytes: 512 << 20,
            next: AtomicU64::new(1),
            prewarm: config.prewarm,
            pools: Default::default(),
            prepared,
        };
        tracing::info!(python = %host.python.version, node = ?host.node.as_ref().map(|n| &n.version), "process runtimes ready");
        let host = Arc::new(host);
        {
            let mut pools = lock(&host.pools);
            for (kind, metrics) in config.prewarm_metrics {
                pools.entry(kind).or_default().metrics = metrics;
            }
        }
        let preparing = host.clone();
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            let result = preparing.prepare().await;
            if let Err(e) = &result {
                tracing::error!("process functions cannot start: {e}");
            }
            tracing::info!(took_ms = t.elapsed().as_millis() as u64, "process runtime: leftovers of earlier runs removed");
            let _ = done.send(Some(result));
        });
        for kind in host.kinds() {
            host.fill(kind);
        }
        Ok(host)
    }

    /// Removes what an earlier run left (containers, cgroups, bundles, slots), then makes the
    /// run directory and writes the shims.
    async fn prepare(&self) -> Result<(), String> {
        self.clean().await;
        let io = |e: std::io::Error| format!("preparing {}: {e}", self.run_dir.display());
        // Zygotes run as unprivileged host uids: they may pass through these directories, and
        // list the shims (Python's importer lists directories).
        for (dir, mode) in [(&self.run_dir, 0o711), (&self.shims_dir, 0o755), (&self.run_dir.join("bundles"), 0o711)] {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io)?;
        }
        std::fs::create_dir_all(&self.code_dir).map_err(io)?;
        for (name, text) in [("zygote.py", hangar_lambda::ZYGOTE), ("bootstrap.py", hangar_lambda::PYTHON_SHIM), ("bootstrap.js", hangar_lambda::NODE_SHIM)] {
            let path = self.shims_dir.join(name);
            std::fs::write(&path, text).map_err(io)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(io)?;
        }
        Ok(())
    }

    /// Waits until the run directory is ready for containers (see [`Host::prepare`]).
    pub(crate) async fn prepared(&self) -> Result<(), String> {
        let mut rx = self.prepared.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or(Ok(())),
            Err(_) => Err("the process runtime stopped before it was ready".into()),
        }
    }

    /// The process runtimes this machine can run: python3 and provided, and nodejs when Node
    /// is there.
    fn kinds(&self) -> Vec<RuntimeKind> {
        let mut kinds = vec![RuntimeKind::Python3, RuntimeKind::Provided];
        if self.node.is_some() {
            kinds.push(RuntimeKind::Nodejs);
        }
        kinds
    }

    /// Tops the runtime's pool of prewarmed zygotes up to its size, in the background.
    fn fill(self: &Arc<Self>, kind: RuntimeKind) {
        {
            let mut pools = lock(&self.pools);
            let pool = pools.entry(kind).or_default();
            pool.ready.retain(|p| p.alive());
            if pool.filling || pool.ready.len() >= self.prewarm || self.stopping() {
                return;
            }
            pool.filling = true;
        }
        let host = self.clone();
        tokio::spawn(async move {
            loop {
                let short = lock(&host.pools).get(&kind).is_some_and(|p| p.ready.len() < host.prewarm);
                if !short || host.stopping() {
                    break;
                }
                let id = format!("{}-prewarm-{kind}", host.next_id());
                let slot = host.code_dir.join(SLOTS).join(&id);
                match pod::Pod::prewarm(&host, id, zygote_mode(kind), host.prewarm_env(), slot).await {
                    Ok(p) => {
                        let mut pools = lock(&host.pools);
                        let pool = pools.entry(kind).or_default();
                        pool.ready.push(p);
                        pool.publish();
                    }
                    Err(e) => {
                        if !host.stopping() {
                            tracing::warn!(runtime = %kind, "starting a prewarmed zygote failed: {e:?}");
                        }
                        break;
                    }
                }
            }
            if let Some(pool) = lock(&host.pools).get_mut(&kind) {
                pool.filling = false;
            }
        });
    }

    /// A prewarmed zygote of the runtime, if one is ready (and the pool is topped up again).
    fn take_prewarmed(self: &Arc<Self>, kind: RuntimeKind) -> Option<Arc<pod::Pod>> {
        let taken = {
            let mut pools = lock(&self.pools);
            let pool = pools.get_mut(&kind)?;
            pool.ready.retain(|p| p.alive());
            let taken = pool.ready.pop();
            if taken.is_some() {
                pool.metrics.taken.inc();
            }
            pool.publish();
            taken
        };
        self.fill(kind);
        taken
    }

    /// The environment a prewarmed zygote starts with; a function's replaces it whole.
    fn prewarm_env(&self) -> Vec<(String, String)> {
        [("PATH", self.path_env()), ("LANG", "C.UTF-8".into()), ("TZ", ":UTC".into()), ("HOME", "/tmp".into()), ("PYTHONDONTWRITEBYTECODE", "1".into())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// The runtimes this machine can run: python3 and provided, and nodejs when Node is there.
    pub fn runtimes(self: &Arc<Self>) -> Vec<Arc<dyn Runtime>> {
        self.kinds().into_iter().map(|kind| Arc::new(ProcessRuntime { kind, host: self.clone() }) as Arc<dyn Runtime>).collect()
    }

    /// Removes every container, cgroup and bundle of this server.
    async fn clean(&self) {
        // The cgroups first: a zygote killed by runc cannot finish dying while the instances
        // of its namespaces are frozen, so they are thawed and killed before runc deletes it.
        hangar_container::cgroup::remove_tree(&self.cgroup_parent).await;
        if self.runc_root.exists() {
            hangar_container::ContainerRuntime::remove_all(&hangar_container::Runc::new(&self.runc_root)).await;
        }
        hangar_container::cgroup::remove_tree(&self.cgroup_parent).await;
        let _ = std::fs::remove_dir_all(self.run_dir.join("bundles"));
        let _ = std::fs::remove_dir_all(self.code_dir.join(SLOTS));
    }

    /// Stops everything (at shutdown).
    pub async fn shutdown(&self) {
        // Every runtime of the host asks; the first does it.
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.prepared().await;
        let pools: Vec<Pool> = lock(&self.pools).drain().map(|(_, p)| p).collect();
        futures::future::join_all(pools.iter().flat_map(|p| &p.ready).map(|p| p.stop())).await;
        self.clean().await;
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }

    /// Whether the server is shutting down.
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn python_exe(&self) -> String {
        self.python.exe.display().to_string()
    }

    fn python_version(&self) -> &str {
        &self.python.version
    }

    fn node_exe(&self) -> Option<String> {
        self.node.as_ref().map(|n| n.exe.display().to_string())
    }

    fn path_env(&self) -> String {
        let mut path = String::from("/usr/local/bin:/usr/bin:/bin");
        for i in [Some(&self.python), self.node.as_ref()].into_iter().flatten() {
            if let Some(dir) = i.exe.parent().filter(|d| !d.starts_with("/usr")) {
                path.push(':');
                path.push_str(&dir.display().to_string());
            }
        }
        path
    }

    fn code_path(&self, digest: &str) -> PathBuf {
        self.code_dir.join(digest.trim_start_matches("sha256:"))
    }

    /// What a zygote sees, all read-only: the system's `/usr`, the interpreters, the loader
    /// cache and CA certificates, the shims at `/opt/hangar` and `task` (the code, or a
    /// prewarmed zygote's slot for it) at `/var/task`.
    fn binds(&self, task: &Path) -> Vec<(PathBuf, String)> {
        let mut binds = vec![(PathBuf::from("/usr"), "/usr".to_string())];
        for i in [Some(&self.python), self.node.as_ref()].into_iter().flatten() {
            if let Some(b) = &i.bind {
                binds.push((b.clone(), b.display().to_string()));
            }
        }
        // The dynamic loader's cache (without it every library is searched for) and the CA
        // certificates (for HTTPS through the egress proxy); nothing else of the host's /etc.
        for shared in ["/etc/ld.so.cache", "/etc/ssl/certs"] {
            if Path::new(shared).exists() {
                binds.push((PathBuf::from(shared), shared.to_string()));
            }
        }
        binds.push((self.shims_dir.clone(), "/opt/hangar".into()));
        binds.push((task.to_path_buf(), "/var/task".into()));
        binds
    }

    /// An instance's cgroup limits: its memory, a pids bound, CPU share proportional to
    /// memory as in Lambda (1769 MiB = one CPU).
    fn instance_limits(&self, memory_bytes: u64) -> CgroupLimits {
        CgroupLimits { memory_bytes, pids_max: 256, cpu_shares: ((memory_bytes >> 20) * 1024 / 1769).max(2) }
    }
}

/// Where prewarmed zygotes' `/var/task` directories are, under the code directory (the same
/// file system as the code, so filling one makes hard links).
const SLOTS: &str = ".slots";

/// How a runtime's zygote runs: importing the handler itself, or exec'ing a runtime per
/// instance.
fn zygote_mode(kind: RuntimeKind) -> &'static str {
    if kind == RuntimeKind::Python3 { "python" } else { "exec" }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("ready", &self.ready.len()).field("filling", &self.filling).finish()
    }
}

impl Pool {
    fn publish(&self) {
        self.metrics.ready.set(self.ready.len() as i64);
    }
}

/// One process runtime kind over the shared [`Host`].
pub struct ProcessRuntime {
    kind: RuntimeKind,
    host: Arc<Host>,
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        self.kind
    }

    async fn prepare(&self, code: Bytes) -> Result<CodeInfo, RuntimeError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&code)));
        let dest = self.host.code_path(&digest);
        let kind = self.kind;
        let size = code.len() as u64;
        if !dest.is_dir() {
            let d = dest.clone();
            tokio::task::spawn_blocking(move || code::unpack(&code, &d, kind)).await.map_err(|e| RuntimeError::Internal(format!("unpacking: {e}")))??;
        }
        if kind == RuntimeKind::Provided && !dest.join("bootstrap").is_file() {
            return Err(RuntimeError::InvalidCode(
                "a provided function's archive needs an executable named `bootstrap` at its root (e.g. a binary built with the `lambda_runtime` crate)".into(),
            ));
        }
        Ok(CodeInfo { digest, size })
    }

    async fn load(&self, spec: &RevisionSpec) -> Result<Arc<dyn Loaded>, RuntimeError> {
        if !self.host.code_path(&spec.code_digest).is_dir() {
            return Err(RuntimeError::MissingCode(spec.code_digest.clone()));
        }
        let f = function::Function::new(self.host.clone(), self.kind, spec.clone());
        f.warm_up_in_background();
        Ok(Arc::new(f))
    }

    fn eager(&self) -> bool {
        true
    }

    async fn shutdown(&self) {
        self.host.shutdown().await;
    }
}
