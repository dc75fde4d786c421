//! The zygote of one revision: a `runc` container in its own user namespace that has started
//! the runtime once (and, for python3, imported the handler) and forks each instance on
//! request. A prewarmed zygote starts before any function is known and is specialized to one
//! later ([`Pod::prewarm`], [`Pod::specialize`]). See `hangar-lambda`'s `zygote.py` for the
//! other side of the protocol.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hangar_container::cgroup::{Cgroup, Limits as CgroupLimits};
use hangar_container::{Jail, JailSpec, JailUser, Network};
use hangar_lambda::runtime_api::RuntimeApi;
use hangar_runtime::LogBuffer;
use tokio::io::AsyncReadExt;

use crate::Host;
use crate::channel::Channel;
use crate::instance::Instance;

/// Longest a zygote may take to start (import the handler), like Lambda's 10 s init limit.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an instance's namespaces may take to be made.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Output of the zygote kept for init errors.
const POD_LOG_BYTES: usize = 64 * 1024;

/// Why a zygote could not start or fork.
#[derive(Debug)]
pub enum PodError {
    /// The handler could not be loaded: Lambda's error body and the output so far.
    Init { error: serde_json::Value, logs: String },
    /// The platform failed (runc, namespaces): what happened, and the output so far.
    Failed { message: String, logs: String },
    /// The server is shutting down: nothing new starts.
    Stopping,
}

/// What a zygote needs to start.
pub struct PodSpec {
    pub id: String,
    /// `python` (import the handler, fork it) or `exec` (fork, then exec `argv`).
    pub mode: &'static str,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The unpacked code on the host, seen at `/var/task`.
    pub code: PathBuf,
    pub memory_bytes: u64,
    pub max_instances: u32,
}

impl PodSpec {
    /// The zygote's own memory: the function's (its imports), a margin for the interpreter,
    /// and the small parent process of each instance.
    fn jail_memory(&self) -> u64 {
        self.memory_bytes + (64 << 20) + u64::from(self.max_instances) * (2 << 20)
    }

    fn jail_pids(&self) -> u64 {
        u64::from(self.max_instances) * 2 + 16
    }
}

/// How a zygote's container is made, whichever way it starts.
struct Launch {
    id: String,
    env: Vec<(String, String)>,
    /// Host directory at `/var/task`.
    task: PathBuf,
    memory_bytes: u64,
    pids_max: u64,
}

/// A running zygote.
pub struct Pod {
    /// The container's id (and its cgroup's name).
    id: String,
    control: Arc<Channel>,
    jail: Mutex<Option<Jail>>,
    alive: Arc<AtomicBool>,
    log: Arc<Mutex<LogBuffer>>,
    /// Per-instance limits, known once the zygote serves a function.
    instance_limits: OnceLock<CgroupLimits>,
    /// A prewarmed zygote's `/var/task` on the host (empty until it is specialized); removed
    /// with the zygote.
    slot: Option<PathBuf>,
    /// Stops the watcher of a prewarmed zygote waiting in its pool (its control socket is
    /// needed again when it is specialized).
    pool_watch: Mutex<Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
    host: Arc<Host>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pod {
    /// Starts the zygote of a function and waits until it is ready to fork (or says why it
    /// cannot be).
    pub async fn start(host: &Arc<Host>, spec: PodSpec, instance_limits: CgroupLimits) -> Result<Arc<Pod>, PodError> {
        let mut env = spec.env.clone();
        env.push(("HANGAR_MODE".into(), spec.mode.into()));
        env.push(("HANGAR_EXEC".into(), serde_json::to_string(&spec.argv).unwrap_or_default()));
        let launch = Launch { id: spec.id.clone(), env, task: spec.code.clone(), memory_bytes: spec.jail_memory(), pids_max: spec.jail_pids() };
        let pod = Pod::launch(host, launch, None).await?;
        let _ = pod.instance_limits.set(instance_limits);
        pod.ready().await?;
        pod.watch();
        Ok(pod)
    }

    /// Starts a prewarmed zygote for a runtime whose zygote runs in `mode` (`python` or
    /// `exec`): the interpreter is up, no function is known and `/var/task` (the empty
    /// directory `slot`) holds nothing yet. It waits in a pool until [`Pod::specialize`].
    pub async fn prewarm(host: &Arc<Host>, id: String, mode: &str, env: Vec<(String, String)>, slot: PathBuf) -> Result<Arc<Pod>, PodError> {
        let failed = |message: String| PodError::Failed { message, logs: String::new() };
        host.prepared().await.map_err(failed)?;
        std::fs::create_dir_all(&slot).map_err(|e| failed(format!("making {}: {e}", slot.display())))?;
        std::fs::set_permissions(&slot, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(|e| failed(format!("{}: {e}", slot.display())))?;
        let mut env = env;
        env.push(("HANGAR_MODE".into(), format!("prewarm:{mode}")));
        let launch = Launch { id, env, task: slot.clone(), memory_bytes: 64 << 20, pids_max: 16 };
        let pod = match Pod::launch(host, launch, Some(slot.clone())).await {
            Ok(pod) => pod,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&slot);
                return Err(e);
            }
        };
        pod.ready().await?;
        // Until it is specialized, a zygote that ends is only marked dead.
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (control, alive) = (pod.control.clone(), pod.alive.clone());
        let watcher = tokio::spawn(async move {
            tokio::select! {
                _ = control.recv() => alive.store(false, Ordering::Release),
                _ = stopped => {}
            }
        });
        *lock(&pod.pool_watch) = Some((stop, watcher));
        Ok(pod)
    }

    /// Makes a prewarmed zygote the zygote of a function: its code appears at `/var/task`
    /// (linked, not copied), the container's limits become the function's, and the zygote
    /// takes the function's environment and loads its handler, as [`Pod::start`] would.
    pub async fn specialize(&self, spec: &PodSpec, instance_limits: CgroupLimits) -> Result<(), PodError> {
        let failed = |message: String| PodError::Failed { message, logs: String::new() };
        let watch = lock(&self.pool_watch).take();
        if let Some((stop, watcher)) = watch {
            let _ = stop.send(());
            let _ = watcher.await;
        }
        let Some(slot) = self.slot.clone().filter(|_| self.alive()) else {
            return Err(failed("the prewarmed zygote is gone".into()));
        };
        let code = spec.code.clone();
        tokio::task::spawn_blocking(move || crate::code::link_tree(&code, &slot))
            .await
            .map_err(|e| failed(format!("linking the code: {e}")))?
            .map_err(|e| failed(format!("linking the code into the prewarmed zygote: {e}")))?;
        Cgroup::update(&self.host.cgroup_parent, &self.id, spec.jail_memory(), spec.jail_pids()).map_err(|e| failed(e.to_string()))?;
        let _ = self.instance_limits.set(instance_limits);
        let env: serde_json::Map<String, serde_json::Value> = spec.env.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        let msg = serde_json::json!({"type": "specialize", "mode": spec.mode, "argv": spec.argv, "env": env});
        self.control.send(&msg, &[]).await.map_err(|e| failed(format!("the prewarmed zygote is gone: {e}")))?;
        self.ready().await?;
        self.watch();
        Ok(())
    }

    /// Starts the zygote's container, its control socket on fd 0 and its output collected.
    async fn launch(host: &Arc<Host>, launch: Launch, slot: Option<PathBuf>) -> Result<Arc<Pod>, PodError> {
        let failed = |message: String| PodError::Failed { message, logs: String::new() };
        host.prepared().await.map_err(failed)?;
        let jail_spec = JailSpec {
            id: launch.id.clone(),
            user: JailUser::Zygote { host_base: host.uid_base },
            runc_root: Some(host.runc_root.clone()),
            cgroup_parent: host.cgroup_parent.clone(),
            argv: vec![host.python_exe(), "/opt/hangar/zygote.py".into()],
            env: launch.env,
            cwd: "/var/task".into(),
            ro_binds: host.binds(&launch.task),
            memory_bytes: launch.memory_bytes as i64,
            pids_max: launch.pids_max as i64,
            cpu_shares: 1024,
            tmp_bytes: 16 << 20,
            max_open_files: 4096,
            network: Network::None,
        };
        let jail = Jail::prepare(&host.run_dir.join("bundles"), &jail_spec).map_err(|e| failed(e.to_string()))?;
        let (control, theirs) = Channel::pair().map_err(|e| failed(format!("control socket: {e}")))?;
        let (log_r, log_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| failed(format!("log pipe: {e}")))?;
        let log = Arc::new(Mutex::new(LogBuffer::new(POD_LOG_BYTES)));
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(log_r).map_err(|e| failed(format!("log pipe: {e}")))?;
        tokio::spawn(collect(reader, log.clone()));
        let log_w2 = log_w.try_clone().map_err(|e| failed(format!("log pipe: {e}")))?;
        let started = jail.start_detached(std::process::Stdio::from(theirs), std::process::Stdio::from(log_w), std::process::Stdio::from(log_w2)).await;
        let pod = Arc::new(Pod {
            id: launch.id,
            control: Arc::new(control),
            jail: Mutex::new(Some(jail)),
            alive: Arc::new(AtomicBool::new(true)),
            log,
            instance_limits: OnceLock::new(),
            slot,
            pool_watch: Mutex::new(None),
            host: host.clone(),
        });
        if let Err(e) = started {
            return Err(PodError::Failed { message: e.to_string(), logs: pod.end_with_logs().await });
        }
        Ok(pod)
    }

    /// Waits for the zygote to say it is ready (or why it cannot be); stops it if it is not.
    async fn ready(&self) -> Result<(), PodError> {
        let first = tokio::time::timeout(INIT_TIMEOUT, self.control.recv()).await;
        match first {
            Ok(Ok(Some(m))) if m.body["type"] == "ready" => Ok(()),
            Ok(Ok(Some(m))) if m.body["type"] == "init_error" => Err(PodError::Init { error: m.body["error"].clone(), logs: self.end_with_logs().await }),
            Ok(Ok(_)) | Ok(Err(_)) => Err(PodError::Failed { message: "the runtime's zygote exited while starting".into(), logs: self.end_with_logs().await }),
            Err(_) => Err(PodError::Init {
                error: hangar_lambda::error_body(
                    "Runtime.InitTimeout",
                    format!("the function did not finish initializing within {} s", INIT_TIMEOUT.as_secs()),
                ),
                logs: self.end_with_logs().await,
            }),
        }
    }

    /// Marks the zygote dead when its control socket closes. The zygote says nothing more
    /// once it serves a function. (The watcher holds the socket, not the pod: dropping the pod
    /// kills the zygote, which closes the socket and ends the watcher.)
    fn watch(&self) {
        let (control, alive) = (self.control.clone(), self.alive.clone());
        tokio::spawn(async move {
            let _ = control.recv().await;
            alive.store(false, Ordering::Release);
        });
    }

    /// Stops a zygote that failed to start and returns what it printed.
    async fn end_with_logs(&self) -> String {
        // Give the last output a moment to arrive before it is quoted.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.stop().await;
        self.logs()
    }

    /// The zygote's output so far (import-time prints and tracebacks).
    pub fn logs(&self) -> String {
        lock(&self.log).take().0
    }

    /// Forks a new instance: its own namespaces, a Runtime API served inside them at
    /// `127.0.0.1:9001`, and its own cgroup. The instance waits, privileged only over its own
    /// namespaces and running no user code, until [`Instance::start`].
    pub async fn prepare(&self, id: String, env: serde_json::Value, tmp_bytes: u64, egress: Option<Arc<Vec<String>>>) -> Result<Instance, String> {
        let t0 = std::time::Instant::now();
        let (channel, theirs) = Channel::pair().map_err(|e| format!("instance socket: {e}"))?;
        let (log_r, log_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| format!("log pipe: {e}"))?;
        let msg = serde_json::json!({"type": "spawn", "env": env, "tmp_bytes": tmp_bytes});
        self.control.send(&msg, &[theirs.as_fd(), log_w.as_fd()]).await.map_err(|e| format!("the zygote is gone: {e}"))?;
        drop((theirs, log_w));
        let got = tokio::time::timeout(SPAWN_TIMEOUT, channel.recv()).await;
        let m = match got {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) | Ok(Err(_)) => return Err("the zygote did not create the instance (it exited)".into()),
            Err(_) => return Err(format!("the instance was not ready within {} s", SPAWN_TIMEOUT.as_secs())),
        };
        if m.body["type"] != "netns" {
            return Err(format!("creating the instance failed: {}", m.body["error"].as_str().unwrap_or("unknown error")));
        }
        let (Some(pid), Some(netns)) = (m.pid, m.fds.into_iter().next()) else {
            return Err("the instance sent no namespace or pid".into());
        };
        let kill = || {
            let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap_or(rustix::process::Pid::INIT), rustix::process::Signal::KILL);
        };
        if pid <= 1 {
            return Err("the instance reported an impossible pid".into());
        }
        let t_ns = t0.elapsed();
        let Some(&limits) = self.instance_limits.get() else {
            return Err("the zygote serves no function yet".into());
        };
        let cgroup = match Cgroup::create(&self.host.cgroup_parent, &id, limits) {
            Ok(c) => c,
            Err(e) => {
                kill();
                return Err(e.to_string());
            }
        };
        let mut instance = Instance::new(pid, channel, log_r, cgroup).map_err(|e| format!("instance logs: {e}"))?;
        instance.set_zygote(self.alive.clone());
        instance.cgroup().add(pid as u32).map_err(|e| e.to_string())?;
        let t_cg = t0.elapsed();
        let mut addrs = vec![RUNTIME_API.parse().expect("a socket address literal")];
        if egress.is_some() {
            addrs.push(EGRESS_PROXY.parse().expect("a socket address literal"));
        }
        let mut listeners = bind_inside(netns, addrs).map_err(|e| format!("serving the Runtime API inside the instance: {e}"))?.into_iter();
        let api = listeners.next().ok_or("no Runtime API listener")?;
        let api = RuntimeApi::start_on(api).map_err(|e| format!("Runtime API: {e}"))?;
        instance.attach(api);
        if let (Some(allowed), Some(proxy)) = (egress, listeners.next()) {
            let proxy = tokio::net::TcpListener::from_std(proxy).map_err(|e| format!("egress proxy: {e}"))?;
            instance.attach_egress(tokio::spawn(crate::egress::serve(proxy, allowed)));
        }
        tracing::debug!(namespaces = ?t_ns, cgroup = ?t_cg, api = ?t0.elapsed(), "instance prepared");
        Ok(instance)
    }

    /// Stops the zygote and every instance it forked.
    pub async fn stop(&self) {
        self.alive.store(false, Ordering::Release);
        let jail = lock(&self.jail).take();
        if let Some(jail) = jail {
            jail.destroy().await;
        }
        if let Some(slot) = &self.slot {
            let _ = std::fs::remove_dir_all(slot);
        }
    }

    /// Whether the zygote still runs.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Closing the control socket ends the zygote, and with it every instance; runc's
        // state and the bundle are removed in the background.
        let (jail, slot) = (lock(&self.jail).take(), self.slot.clone());
        if let (Some(jail), Ok(rt)) = (jail, tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                jail.destroy().await;
                if let Some(slot) = slot {
                    let _ = std::fs::remove_dir_all(slot);
                }
            });
        }
    }
}

async fn collect(mut out: tokio::net::unix::pipe::Receiver, log: Arc<Mutex<LogBuffer>>) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = out.read(&mut buf).await {
        if n == 0 {
            break;
        }
        lock(&log).append(&buf[..n]);
    }
}

/// Where an instance reaches its Runtime API, inside its own network namespace.
pub const RUNTIME_API: &str = "127.0.0.1:9001";
/// Where an instance granted outbound access reaches its egress proxy.
pub const EGRESS_PROXY: &str = "127.0.0.1:9002";

/// Binds TCP listeners inside the network namespace `netns` (from a short-lived thread that
/// enters it); the sockets stay in that namespace.
fn bind_inside(netns: std::os::fd::OwnedFd, addrs: Vec<std::net::SocketAddr>) -> std::io::Result<Vec<std::net::TcpListener>> {
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(netns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
        addrs
            .into_iter()
            .map(|addr| {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .collect()
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}
