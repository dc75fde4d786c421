//! One instance slot of a service: start a container, wait for its readiness probe, publish
//! its address, watch it (exit, liveness), restart it with backoff, until stopped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_api::now_ms;
use hangar_api::services::{ContainerRuntime, InstanceState, Probe, ServiceConfig, ServiceInstance};
use hangar_image::Image;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use crate::bundle::{self, InstanceSpec};
use crate::network::Attachment;
use crate::{Endpoint, Host, Service, ServiceError, service_port};

/// Exits within this long after a start count as a crash.
const QUICK_EXIT: Duration = Duration::from_secs(10);
/// Lines of an instance's output kept for its crash report.
const TAIL_LINES: usize = 20;

#[derive(Debug, Clone)]
enum Readiness {
    Pending,
    Ready,
    Failed(String),
}

#[derive(Debug)]
struct Status {
    state: InstanceState,
    address: String,
    /// The container running now (its cgroup is named after it).
    cid: String,
    restarts: u32,
    started_ms: i64,
    last_exit: Option<String>,
}

#[derive(Debug)]
struct Shared {
    id: String,
    revision: u64,
    image_id: String,
    grace_ms: u64,
    status: Mutex<Status>,
    tail: Mutex<VecDeque<String>>,
}

impl Shared {
    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn tail_text(&self) -> String {
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Slot {
    shared: Arc<Shared>,
    ready: watch::Receiver<Readiness>,
    stop: watch::Sender<Option<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Slot {
    pub(crate) fn spawn(host: Arc<Host>, svc: Arc<Service>, revision: u64, config: ServiceConfig, image: Arc<Image>, lower: Vec<PathBuf>) -> Slot {
        let n = host.seq.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            id: format!("{}-{revision}-{n}", svc.name),
            revision,
            image_id: image.id.clone(),
            grace_ms: config.stop_grace_ms,
            status: Mutex::new(Status {
                state: InstanceState::Starting,
                address: String::new(),
                cid: String::new(),
                restarts: 0,
                started_ms: now_ms(),
                last_exit: None,
            }),
            tail: Mutex::new(VecDeque::new()),
        });
        let (ready_tx, ready) = watch::channel(Readiness::Pending);
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(run(host, svc, shared.clone(), config, image, lower, ready_tx, stop_rx));
        Slot { shared, ready, stop, task }
    }

    pub(crate) fn id(&self) -> &str {
        &self.shared.id
    }

    /// The container running now, if one is.
    pub(crate) fn cid(&self) -> Option<String> {
        let s = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        (!s.cid.is_empty()).then(|| s.cid.clone())
    }

    pub(crate) fn image_id(&self) -> &str {
        &self.shared.image_id
    }

    pub(crate) fn grace_ms(&self) -> u64 {
        self.shared.grace_ms
    }

    pub(crate) fn status(&self) -> ServiceInstance {
        let s = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        ServiceInstance {
            id: self.shared.id.clone(),
            revision: self.shared.revision,
            state: s.state,
            address: s.address.clone(),
            restarts: s.restarts,
            started_at: hangar_api::rfc3339(s.started_ms),
            last_exit: s.last_exit.clone(),
        }
    }

    /// Waits until the instance first passes its readiness probe.
    pub(crate) async fn ready(&self, timeout_ms: u64) -> Result<(), ServiceError> {
        let mut rx = self.ready.clone();
        let wait = rx.wait_for(|r| !matches!(r, Readiness::Pending));
        match tokio::time::timeout(Duration::from_millis(timeout_ms), wait).await {
            Ok(Ok(r)) => match &*r {
                Readiness::Ready => Ok(()),
                Readiness::Failed(m) => Err(ServiceError::NotReady(m.clone())),
                Readiness::Pending => Err(ServiceError::NotReady("the instance stopped".into())),
            },
            Ok(Err(_)) => Err(ServiceError::NotReady("the instance stopped".into())),
            Err(_) => {
                let tail = self.shared.tail_text();
                Err(ServiceError::NotReady(format!(
                    "instance {} did not pass its readiness probe within {timeout_ms} ms (is it listening on its PORT?); last output:\n{tail}",
                    self.shared.id
                )))
            }
        }
    }

    /// Stops the slot: out of the routes, requests drained (up to `grace_ms`), SIGTERM, up to
    /// `grace_ms` more, SIGKILL, everything removed.
    pub(crate) async fn stop(self, grace_ms: u64) {
        let _ = self.stop.send(Some(grace_ms));
        let _ = self.task.await;
    }
}

/// A started container.
struct Running {
    n: u64,
    cid: String,
    runtime: ContainerRuntime,
    child: tokio::process::Child,
    att: Attachment,
    run_dir: PathBuf,
    data_dir: PathBuf,
    rootfs: PathBuf,
    host: Arc<Host>,
}

impl Running {
    fn runtime_cmd(&self) -> tokio::process::Command {
        self.host.runtime(self.runtime).expect("an instance runs on a runtime the machine has").command()
    }

    /// Whether the runtime's state root still exists (once the server has cleaned up, a
    /// runtime call would only make it again).
    fn has_root(&self) -> bool {
        self.host.runtime(self.runtime).is_some_and(|r| r.root().exists())
    }

    async fn signal(&self, sig: &str) {
        if self.has_root() {
            let _ = self.runtime_cmd().args(["kill", &self.cid, sig]).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
        }
    }

    /// SIGTERM, up to `grace_ms` for it to end, SIGKILL; then removes everything.
    async fn stop(mut self, grace_ms: u64) {
        if grace_ms > 0 {
            self.signal("TERM").await;
            if tokio::time::timeout(Duration::from_millis(grace_ms), self.child.wait()).await.is_err() {
                self.signal("KILL").await;
            }
        } else {
            self.signal("KILL").await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.start_kill();
        self.cleanup().await;
    }

    async fn cleanup(self) {
        self.host.addresses.write().unwrap_or_else(|p| p.into_inner()).remove(&self.att.ip);
        let hosts = self.run_dir.join("etc/hosts");
        for files in self.host.hosts_files.lock().unwrap_or_else(|p| p.into_inner()).values_mut() {
            files.retain(|f| *f != hosts);
        }
        if self.has_root() {
            let _ = self.runtime_cmd().args(["delete", "--force", &self.cid]).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
        }
        bundle::unmount_root(&self.rootfs);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.data_dir);
        self.host.network.detach(&self.att).await;
        self.host.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.n);
    }
}

fn write_etc(dir: &std::path::Path, hostname: &str, hosts: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("hosts"), hosts)?;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv: String = resolv.lines().filter(|l| !l.trim_start().starts_with("nameserver 127.")).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
}

async fn start(
    host: &Arc<Host>,
    svc: &Arc<Service>,
    shared: &Arc<Shared>,
    config: &ServiceConfig,
    image: &Image,
    lower: &[PathBuf],
) -> Result<(Running, SocketAddr), ServiceError> {
    let Some(runtime) = host.runtime(config.runtime) else {
        return Err(ServiceError::Runtime("runtime `gvisor` needs runsc, which this machine lacks (apt-get install runsc)".into()));
    };
    host.prepared().await;
    let n = host.seq.fetch_add(1, Ordering::Relaxed);
    let cid = format!("hs-{}-{n}", host.sid);
    // Live before anything exists, so the reconcile loop leaves it alone.
    host.live.lock().unwrap_or_else(|p| p.into_inner()).insert(n);
    let att = match host.network.attach(n, config.egress).await {
        Ok(a) => a,
        Err(e) => {
            host.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&n);
            return Err(e);
        }
    };
    let run_dir = host.run.join(&cid);
    let data_dir = host.data.join("instances").join(&cid);
    let rootfs = run_dir.join("rootfs");
    let port = service_port(config, image);
    let prepared = (|| -> Result<(), ServiceError> {
        write_etc(&run_dir.join("etc"), &svc.name, &host.hosts_text(&svc.namespace, &svc.name, att.ip))?;
        bundle::mount_root(lower, &data_dir.join("upper"), &data_dir.join("work"), &rootfs)?;
        let mut volumes = Vec::new();
        for v in &config.volumes {
            let (name, path) = hangar_api::services::volume(v).map_err(|e| ServiceError::Invalid(e.to_string()))?;
            let dir = host.volume_dir(&svc.namespace, &name);
            std::fs::create_dir_all(&dir)?;
            volumes.push((dir, path));
        }
        let spec = InstanceSpec {
            hostname: &svc.name,
            image: &image.config,
            config,
            port,
            netns: &att.netns_path(),
            cgroup_path: format!("/{}/{cid}", host.cgroup_parent),
            volumes,
            etc: &run_dir.join("etc"),
        };
        let c = bundle::config(&spec, &rootfs)?;
        c.save(run_dir.join("config.json"))?;
        Ok(())
    })();
    if let Err(e) = prepared {
        bundle::unmount_root(&rootfs);
        let _ = std::fs::remove_dir_all(&run_dir);
        let _ = std::fs::remove_dir_all(&data_dir);
        host.network.detach(&att).await;
        host.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&n);
        return Err(e);
    }
    let mut cmd = match config.runtime {
        ContainerRuntime::Runc => runtime.command(),
        ContainerRuntime::Gvisor => {
            // In the instance's network namespace, which gVisor then uses as its host network
            // (see bundle.rs); nsenter switches only that namespace (`ip netns exec` also
            // remounts /sys, hiding the cgroup hierarchy runsc needs).
            let mut c = tokio::process::Command::new("nsenter");
            c.arg(format!("--net={}", att.netns_path().display())).arg("--").args(runtime.argv()).arg("--network=host").stdin(Stdio::null());
            c
        }
    };
    // runc keeps the stopped container (`--keep`), so its cgroup can still tell an OOM kill;
    // the cleanup deletes it.
    cmd.arg("run");
    if config.runtime == ContainerRuntime::Runc {
        cmd.arg("--keep");
    }
    cmd.arg("--bundle").arg(&run_dir).arg(&cid).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            bundle::unmount_root(&rootfs);
            let _ = std::fs::remove_dir_all(&run_dir);
            let _ = std::fs::remove_dir_all(&data_dir);
            host.network.detach(&att).await;
            host.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&n);
            return Err(ServiceError::Runtime(format!("cannot start {:?}: {e}", config.runtime)));
        }
    };
    for out in [child.stdout.take().map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>), child.stderr.take().map(|o| Box::new(o) as _)]
        .into_iter()
        .flatten()
    {
        let (logs, shared) = (svc.logs.clone(), shared.clone());
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                {
                    let mut tail = shared.tail.lock().unwrap_or_else(|p| p.into_inner());
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                }
                logs.push(format!("[{}] {line}", shared.id));
            }
        });
    }
    let addr = SocketAddr::from((att.ip, port));
    shared.set(|s| {
        s.address = addr.to_string();
        s.cid = cid.clone();
    });
    host.addresses.write().unwrap_or_else(|p| p.into_inner()).insert(att.ip, svc.namespace.clone());
    host.hosts_files.lock().unwrap_or_else(|p| p.into_inner()).entry(svc.namespace.clone()).or_default().push(run_dir.join("etc/hosts"));
    Ok((Running { n, cid, runtime: config.runtime, child, att, run_dir, data_dir, rootfs, host: host.clone() }, addr))
}

/// One readiness or liveness check.
async fn probe_once(addr: SocketAddr, probe: &Probe) -> bool {
    let attempt = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        let Some(path) = &probe.path else { return Some(true) };
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: hangar-probe\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await.ok()?;
        let line = String::from_utf8_lossy(&buf[..n]);
        let code: u16 = line.split(' ').nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten().unwrap_or(false)
}

impl Running {
    /// Whether the kernel killed something in the container for exceeding its memory limit.
    fn oom_killed(&self) -> bool {
        let rel = format!("{}/{}", self.host.cgroup_parent, self.cid);
        let (file, key) = match hangar_container::cgroup::Version::detect() {
            hangar_container::cgroup::Version::V1 => (PathBuf::from("/sys/fs/cgroup/memory").join(&rel).join("memory.oom_control"), "oom_kill "),
            hangar_container::cgroup::Version::V2 => (PathBuf::from("/sys/fs/cgroup").join(&rel).join("memory.events"), "oom_kill "),
        };
        std::fs::read_to_string(file).unwrap_or_default().lines().filter_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok()).any(|n| n > 0)
    }

    /// Why it ended, once its process has.
    fn ended(&self, status: std::io::Result<std::process::ExitStatus>, memory_mb: u32) -> String {
        if self.oom_killed() {
            return format!("ran out of memory (limit {memory_mb} MiB) and was killed; raise --memory");
        }
        describe(status)
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(137), _) => "was killed (exit 137: out of memory or SIGKILL)".to_string(),
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended".to_string(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    host: Arc<Host>,
    svc: Arc<Service>,
    shared: Arc<Shared>,
    config: ServiceConfig,
    image: Arc<Image>,
    lower: Vec<PathBuf>,
    ready_tx: watch::Sender<Readiness>,
    mut stop: watch::Receiver<Option<u64>>,
) {
    let mut quick_exits = 0u32;
    let mut ever_ready = false;
    let period = Duration::from_millis(config.readiness.period_ms);
    loop {
        shared.set(|s| {
            s.state = InstanceState::Starting;
            s.started_ms = now_ms();
        });
        let started = Instant::now();
        let how = match start(&host, &svc, &shared, &config, &image, &lower).await {
            Err(e) => format!("could not start: {e}"),
            Ok((mut running, addr)) => {
                // Until ready: probe, unless it exits or the slot stops.
                let mut exited = None;
                // Probe soon after the start, then less often, up to the configured period.
                let mut pause = Duration::from_millis(5).min(period);
                let ready = loop {
                    tokio::select! {
                        status = running.child.wait() => { exited = Some(running.ended(status, config.memory_mb)); break false; }
                        _ = stop.changed() => {
                            let grace = stop.borrow().unwrap_or(0);
                            running.stop(grace).await;
                            return;
                        }
                        ok = probe_once(addr, &config.readiness) => {
                            if ok { break true; }
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(period);
                        }
                    }
                };
                if ready {
                    ever_ready = true;
                    let _ = ready_tx.send(Readiness::Ready);
                    let endpoint = Arc::new(Endpoint { addr, instance: shared.id.clone(), inflight: AtomicU32::new(0) });
                    svc.publish(endpoint.clone());
                    shared.set(|s| s.state = InstanceState::Ready);
                    let mut failures = 0;
                    let liveness = period.max(Duration::from_secs(1));
                    let how = loop {
                        tokio::select! {
                            status = running.child.wait() => break running.ended(status, config.memory_mb),
                            _ = stop.changed() => {
                                let grace = stop.borrow().unwrap_or(0);
                                svc.unpublish(&shared.id);
                                shared.set(|s| s.state = InstanceState::Draining);
                                let deadline = Instant::now() + Duration::from_millis(grace);
                                while endpoint.inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                running.stop(grace).await;
                                return;
                            }
                            _ = tokio::time::sleep(liveness) => {
                                if probe_once(addr, &config.readiness).await {
                                    failures = 0;
                                } else {
                                    failures += 1;
                                    if failures >= 3 {
                                        running.signal("KILL").await;
                                        let _ = running.child.wait().await;
                                        break "failed its liveness probe 3 times and was restarted".to_string();
                                    }
                                }
                            }
                        }
                    };
                    svc.unpublish(&shared.id);
                    exited = Some(how);
                }
                let how = exited.unwrap_or_default();
                running.cleanup().await;
                how
            }
        };
        // It ended: record why, back off, start again.
        if started.elapsed() < QUICK_EXIT {
            quick_exits += 1;
        } else {
            quick_exits = 0;
        }
        let tail = shared.tail_text();
        let report = if tail.is_empty() { format!("instance {} {how}", shared.id) } else { format!("instance {} {how}; last output:\n{tail}", shared.id) };
        svc.logs.push(format!("[{}] hangar: {how}", shared.id));
        tracing::warn!(service = %svc.name, namespace = %svc.namespace, instance = %shared.id, "{how}; starting it again");
        let crash_loop = quick_exits >= 2;
        shared.set(|s| {
            s.restarts += 1;
            s.last_exit = Some(report.clone());
            s.state = if crash_loop { InstanceState::CrashLoop } else { InstanceState::Backoff };
        });
        if !ever_ready && crash_loop {
            let _ = ready_tx.send(Readiness::Failed(format!("crash loop: {report}")));
        }
        let backoff = Duration::from_millis((500u64 << quick_exits.min(9)).min(300_000));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
    }
}
