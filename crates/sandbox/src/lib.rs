//! Sandboxes: machines for untrusted code (AI agents, user scripts) isolated by gVisor
//! (`runsc`, a user-space kernel between the code and the host), driven by exec and file calls.
//!
//! Each sandbox is one runsc container whose first process only keeps it alive; commands run
//! beside it (`runsc exec`) and share its filesystem and processes, like a machine. Its root is
//! an overlay of the image's layers under the sandbox's own directory in the data dir. It has
//! no network but loopback. `pause` freezes it (no CPU, memory kept); `standby` checkpoints it
//! to disk (`runsc checkpoint`: no CPU, no memory; processes, memory and files kept) and the
//! next call, or `resume`, restores it. An idle policy pauses and then stands by idle
//! sandboxes; a TTL destroys them. At shutdown every running sandbox goes to standby, so it
//! survives restarts. [`bundle`] writes the OCI bundle, [`exec`] runs commands, [`files`]
//! moves files in and out.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod disk;
pub mod exec;
pub mod files;
pub mod network;
pub mod tty;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hangar_container::ContainerRuntime as _;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hangar_api::now_ms;
use hangar_api::sandboxes::{ExecFrame, ExecRequest, Sandbox, SandboxConfig, SandboxState, SandboxTimings, SandboxUsage};
use hangar_image::{ImageStore, RunConfig};
use hangar_store::Store;
use tokio::sync::mpsc;

/// Why a sandbox call failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox `{0}` not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The sandbox failed earlier: `resume` starts it again from its files, `rm` removes it.
    #[error("sandbox `{0}` has failed ({1}); `hangar sandbox resume {0}` starts it again from its files, `hangar sandbox rm {0}` removes it")]
    Failed(String, String),
    #[error("{0}")]
    Quota(String),
    /// runsc or the host failed.
    #[error("{0}")]
    Runtime(String),
    /// This machine cannot run sandboxes.
    #[error("{0}")]
    Unavailable(String),
}

impl From<std::io::Error> for SandboxError {
    fn from(e: std::io::Error) -> Self {
        SandboxError::Runtime(e.to_string())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One sandbox as the server holds it.
struct Entry {
    record: Mutex<Sandbox>,
    /// Held by every change of state (and while an exec or file call starts).
    lifecycle: tokio::sync::Mutex<()>,
    /// Exec and file calls running now.
    active: AtomicU32,
    image: RunConfig,
    lowers: Vec<PathBuf>,
    /// Its place on the host's network while it runs (sandboxes with network access).
    net: Mutex<Option<network::Attachment>>,
    /// Outputs of ended commands still held by what they left running (see `exec::Command`).
    held: Arc<AtomicU32>,
}

impl Entry {
    fn id(&self) -> String {
        lock(&self.record).id.clone()
    }
    fn state(&self) -> SandboxState {
        lock(&self.record).state
    }
    fn snapshot(&self) -> Sandbox {
        lock(&self.record).clone()
    }
}

/// Blocks a file takes on disk, in bytes (a sparse file takes only what was written).
fn allocated(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
}

/// The sandboxes of one server. Cheap to clone.
#[derive(Clone)]
pub struct Sandboxes {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    images: Arc<ImageStore>,
    /// `<data>/sandboxes/<id>/`: upper, work, checkpoint.
    data: PathBuf,
    /// `/run/hangar-sb-<sid>/`: runsc state and each sandbox's bundle.
    run: PathBuf,
    /// gVisor, with this server's state root.
    runsc: hangar_container::Runsc,
    busybox: PathBuf,
    cgroup_parent: String,
    network: network::Network,
    boxes: Mutex<HashMap<String, Arc<Entry>>>,
    stopping: AtomicBool,
    /// This node's id: the sandboxes it owns carry it.
    node: String,
}

/// A call that keeps its sandbox from being paused or put on standby while it runs.
pub struct Active {
    entry: Arc<Entry>,
}

impl Drop for Active {
    fn drop(&mut self) {
        lock(&self.entry.record).last_active_ms = now_ms();
        self.entry.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A lost node's sandboxes are marked failed, saying why: their processes, files and standby
/// images were on that node.
#[async_trait::async_trait]
impl hangar_bus::Failover for Sandboxes {
    async fn node_lost(&self, node: &str) {
        let records = match self.inner.store.list_sandboxes().await {
            Ok(r) => r,
            Err(e) => return tracing::error!(lost = node, "reading the sandboxes of a lost node failed: {e}"),
        };
        for mut rec in records.into_iter().filter(|r| r.node.as_deref() == Some(node) && r.state != SandboxState::Failed) {
            change(&mut rec, SandboxState::Failed, now_ms());
            rec.error = Some(format!("node `{node}`, which ran it, was lost: its processes, memory, files and standby image were there; remove it"));
            if let Err(e) = self.inner.store.put_sandbox(&rec).await {
                tracing::error!(sandbox = %rec.id, "marking a lost node's sandbox failed: {e}");
            }
        }
    }

    /// Back after being cut off: the sandboxes the others marked failed (or removed) meanwhile
    /// are no longer this node's to run; their processes and files go.
    async fn rejoined(&self) {
        let records = match self.inner.store.list_sandboxes().await {
            Ok(r) => r,
            Err(e) => return tracing::error!("reading the sandboxes after rejoining failed: {e}"),
        };
        let entries: Vec<Arc<Entry>> = lock(&self.inner.boxes).values().cloned().collect();
        for entry in entries {
            let id = entry.id();
            let stored = records.iter().find(|r| r.id == id);
            if stored.is_some_and(|r| r.state != SandboxState::Failed) || entry.state() == SandboxState::Failed {
                continue;
            }
            tracing::warn!(sandbox = %id, "the cluster took this sandbox for lost while this node was cut off; its processes stop");
            let _guard = entry.lifecycle.lock().await;
            self.inner.destroy(&entry).await;
            lock(&self.inner.boxes).remove(&id);
        }
    }
}

impl Sandboxes {
    /// Checks for runsc and a static busybox, clears what an earlier run left in the run
    /// directory, and loads the sandboxes: those on standby wait to be resumed; those that were
    /// running when the server died without putting them on standby are marked failed.
    /// `node`: this node's id; it loads only its own sandboxes (and those of no node, from
    /// before nodes had ids), as other nodes' live elsewhere.
    pub async fn start(
        data_dir: &Path,
        server_id: &hangar_core::ServerId,
        node: &str,
        store: Arc<dyn Store>,
        images: Arc<ImageStore>,
    ) -> Result<Sandboxes, SandboxError> {
        let runsc = hangar_container::Runsc::find().ok_or_else(|| SandboxError::Unavailable("sandboxes need gVisor's runsc (apt-get install runsc)".into()))?;
        let busybox = find_program(&["/bin/busybox", "/usr/bin/busybox"])
            .ok_or_else(|| SandboxError::Unavailable("sandboxes need a static busybox for file calls (apt-get install busybox-static)".into()))?;
        let sid = server_id.as_str();
        let run = PathBuf::from(format!("/run/hangar-sb-{sid}"));
        let inner = Arc::new(Inner {
            store,
            images,
            data: data_dir.join("sandboxes"),
            runsc: hangar_container::Runsc::new(runsc, run.join("runsc")),
            run,
            busybox,
            cgroup_parent: format!("hangar-sb-{sid}"),
            network: network::Network::new(sid),
            boxes: Mutex::default(),
            stopping: AtomicBool::new(false),
            node: node.to_string(),
        });
        std::fs::create_dir_all(&inner.data)?;
        inner.clean().await;
        std::fs::create_dir_all(inner.run.join("runsc"))?;
        let records = inner.store.list_sandboxes().await.map_err(|e| SandboxError::Runtime(format!("reading the sandboxes: {e}")))?;
        for mut rec in records.into_iter().filter(|r| r.node.as_deref().is_none_or(|n| n == node)) {
            rec.node = Some(node.to_string());
            let image = inner.images.get(&rec.namespace, &rec.image_id);
            let lowers = image.as_ref().and_then(|i| inner.images.lower_dirs(i).ok()).unwrap_or_default();
            let now = now_ms();
            match rec.state {
                SandboxState::Running | SandboxState::Paused => {
                    change(&mut rec, SandboxState::Failed, now);
                    rec.error =
                        Some("the server stopped without putting it on standby (killed?): its processes and memory are gone; its files are kept".into());
                }
                SandboxState::Standby if !inner.checkpoint_dir(&rec.id).join("checkpoint.img").is_file() => {
                    change(&mut rec, SandboxState::Failed, now);
                    rec.error = Some("its standby image is missing from the data directory".into());
                }
                SandboxState::Standby if image.is_none() => {
                    change(&mut rec, SandboxState::Failed, now);
                    rec.error = Some(format!("its image {} is gone", rec.image_id));
                }
                _ => {}
            }
            let _ = inner.store.put_sandbox(&rec).await;
            let entry = Arc::new(Entry {
                record: Mutex::new(rec.clone()),
                lifecycle: tokio::sync::Mutex::new(()),
                active: AtomicU32::new(0),
                image: image.map(|i| i.config).unwrap_or_default(),
                lowers,
                net: Mutex::default(),
                held: Arc::default(),
            });
            lock(&inner.boxes).insert(rec.id.clone(), entry);
        }
        tokio::spawn(idle_loop(Arc::downgrade(&inner)));
        Ok(Sandboxes { inner })
    }

    /// Makes a sandbox from an image of the namespace and starts it.
    pub async fn create(&self, namespace: &str, config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        config.validate().map_err(|e| SandboxError::Invalid(e.to_string()))?;
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(SandboxError::Unavailable("the server is shutting down; create the sandbox once it is back".into()));
        }
        // In a cluster, an image imported through another node comes from there.
        let image = self.inner.images.get_or_fetch(namespace, &config.image).await.map_err(|_| {
            SandboxError::Invalid(format!(
                "image `{}` is not in namespace `{namespace}`'s image store; import or pull it first (`hangar image pull`)",
                config.image
            ))
        })?;
        let lowers = self.inner.images.lower_dirs(&image).map_err(|e| SandboxError::Runtime(e.to_string()))?;
        let uuid = uuid::Uuid::now_v7().simple().to_string();
        let id = format!("sb-{}", &uuid[uuid.len() - 12..]);
        let now = now_ms();
        let rec = Sandbox {
            id: id.clone(),
            namespace: namespace.to_string(),
            image_id: image.id.clone(),
            config,
            state: SandboxState::Running,
            created_ms: now,
            state_since_ms: now,
            last_active_ms: now,
            standby_bytes: None,
            error: None,
            disk_bytes: None,
            timings: SandboxTimings::default(),
            usage: SandboxUsage::default(),
            node: Some(self.inner.node.clone()),
        };
        let entry = Arc::new(Entry {
            record: Mutex::new(rec),
            lifecycle: tokio::sync::Mutex::new(()),
            active: AtomicU32::new(0),
            image: image.config.clone(),
            lowers,
            net: Mutex::default(),
            held: Arc::default(),
        });
        let _guard = entry.lifecycle.lock().await;
        let t = Instant::now();
        let made = match tokio::fs::create_dir_all(self.inner.data_dir(&id)).await {
            Ok(()) => disk::create(&self.inner.disk_image(&id), entry.snapshot().config.disk_mb).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = match made {
            Ok(()) => self.inner.boot(&entry, None).await,
            Err(e) => Err(e),
        } {
            self.inner.disconnect(&entry).await;
            self.inner.remove_files(&id).await;
            return Err(e);
        }
        let snapshot = {
            let mut rec = lock(&entry.record);
            rec.timings.create_ms = Some(ms(t));
            rec.state_since_ms = now_ms();
            rec.clone()
        };
        if let Err(e) = self.inner.store.put_sandbox(&snapshot).await {
            self.inner.destroy(&entry).await;
            return Err(SandboxError::Runtime(format!("recording the sandbox: {e}")));
        }
        lock(&self.inner.boxes).insert(id, entry.clone());
        Ok(snapshot)
    }

    fn entry(&self, namespace: Option<&str>, id: &str) -> Result<Arc<Entry>, SandboxError> {
        let e = lock(&self.inner.boxes).get(id).cloned().ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        if namespace.is_some_and(|ns| lock(&e.record).namespace != ns) {
            return Err(SandboxError::NotFound(id.to_string()));
        }
        Ok(e)
    }

    /// The sandboxes of a namespace (`None`: all), oldest first.
    pub fn list(&self, namespace: Option<&str>) -> Vec<Sandbox> {
        let mut all: Vec<Sandbox> =
            lock(&self.inner.boxes).values().map(|e| self.inner.view(e)).filter(|s| namespace.is_none_or(|ns| s.namespace == ns)).collect();
        all.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        all
    }

    pub fn get(&self, namespace: Option<&str>, id: &str) -> Result<Sandbox, SandboxError> {
        Ok(self.inner.view(&*self.entry(namespace, id)?))
    }

    /// Whether a sandbox was made from the image (which must then stay).
    pub fn uses_image(&self, namespace: &str, image_id: &str) -> bool {
        lock(&self.inner.boxes).values().any(|e| {
            let r = lock(&e.record);
            r.namespace == namespace && r.image_id == image_id
        })
    }

    /// Marks a call on the sandbox, resuming it first if it is paused or on standby.
    async fn activate(&self, namespace: Option<&str>, id: &str) -> Result<Active, SandboxError> {
        let entry = self.entry(namespace, id)?;
        let _guard = entry.lifecycle.lock().await;
        self.inner.wake(&entry).await?;
        entry.active.fetch_add(1, Ordering::AcqRel);
        lock(&entry.record).last_active_ms = now_ms();
        Ok(Active { entry: entry.clone() })
    }

    /// Runs a command; its output and exit code come as frames.
    pub async fn exec(&self, namespace: Option<&str>, id: &str, req: ExecRequest) -> Result<mpsc::Receiver<ExecFrame>, SandboxError> {
        req.validate().map_err(|e| SandboxError::Invalid(e.to_string()))?;
        let active = self.activate(namespace, id).await?;
        let rootfs = self.inner.run_dir(id).join("rootfs");
        let user = match &req.user {
            Some(u) => {
                hangar_container::overlay::resolve_user(&rootfs, u).map(|(uid, gid, _)| (uid, gid)).map_err(|e| SandboxError::Invalid(format!("user: {e}")))?
            }
            None => bundle::user(&rootfs, &active.entry.image)?,
        };
        let mut cmd = self.inner.command(&active.entry, &req, user);
        let (inner, entry) = (self.inner.clone(), active.entry.clone());
        cmd.stopped = Box::new(move || {
            Box::pin(async move {
                let _guard = entry.lifecycle.lock().await;
                inner.notice_stop(&entry, true).await
            })
        });
        Ok(exec::start(cmd, move || drop(active)))
    }

    /// Pauses a running sandbox (no CPU, memory kept).
    pub async fn pause(&self, namespace: Option<&str>, id: &str) -> Result<Sandbox, SandboxError> {
        let entry = self.entry(namespace, id)?;
        let _guard = entry.lifecycle.lock().await;
        match entry.state() {
            SandboxState::Running => self.inner.pause(&entry).await?,
            SandboxState::Paused => {}
            SandboxState::Standby => return Err(SandboxError::Invalid(format!("sandbox `{id}` is on standby; resume it first"))),
            SandboxState::Failed => return Err(failed(&entry)),
        }
        Ok(entry.snapshot())
    }

    /// Resumes a paused sandbox or restores one on standby. A failed sandbox starts again
    /// from its files (like a machine rebooted: its processes and memory were lost).
    pub async fn resume(&self, namespace: Option<&str>, id: &str) -> Result<Sandbox, SandboxError> {
        let entry = self.entry(namespace, id)?;
        let _guard = entry.lifecycle.lock().await;
        if entry.state() == SandboxState::Failed {
            self.inner.restart(&entry).await?;
        } else {
            self.inner.wake(&entry).await?;
        }
        Ok(entry.snapshot())
    }

    /// Checkpoints a sandbox to disk and stops it (no CPU, no memory).
    pub async fn standby(&self, namespace: Option<&str>, id: &str) -> Result<Sandbox, SandboxError> {
        let entry = self.entry(namespace, id)?;
        let _guard = entry.lifecycle.lock().await;
        if entry.active.load(Ordering::Acquire) > 0 {
            return Err(SandboxError::Invalid(format!("sandbox `{id}` has commands or file calls running; wait for them to end")));
        }
        match entry.state() {
            SandboxState::Running | SandboxState::Paused => self.inner.standby(&entry).await?,
            SandboxState::Standby => {}
            SandboxState::Failed => return Err(failed(&entry)),
        }
        Ok(entry.snapshot())
    }

    /// Stops a sandbox and removes everything of it.
    pub async fn remove(&self, namespace: Option<&str>, id: &str) -> Result<(), SandboxError> {
        let entry = self.entry(namespace, id)?;
        let _guard = entry.lifecycle.lock().await;
        self.inner.destroy(&entry).await;
        lock(&self.inner.boxes).remove(id);
        self.inner.store.delete_sandbox(id).await.map_err(|e| SandboxError::Runtime(format!("forgetting the sandbox: {e}")))?;
        Ok(())
    }

    /// Puts every running or paused sandbox on standby, so it survives the restart.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        let entries: Vec<Arc<Entry>> = lock(&self.inner.boxes).values().cloned().collect();
        for entry in entries {
            let _guard = entry.lifecycle.lock().await;
            if !matches!(entry.state(), SandboxState::Running | SandboxState::Paused) {
                continue;
            }
            if !entry.snapshot().config.network.is_none() {
                // No standby with a network (see `standby`): its processes end here.
                let id = entry.id();
                let _ = self.inner.runsc().args(["delete", "--force", &id]).output().await;
                self.inner.unmount(&id);
                self.inner.disconnect(&entry).await;
                let why = "the server stopped, and a sandbox with network access cannot go on standby: its processes and memory are gone, its files are kept";
                self.inner.transition(&entry, SandboxState::Failed, |r| r.error = Some(why.into())).await;
            } else if let Err(e) = self.inner.standby(&entry).await {
                tracing::error!(sandbox = %entry.id(), "putting the sandbox on standby at shutdown failed: {e}");
            }
        }
        self.inner.clean().await;
    }
}

fn failed(entry: &Entry) -> SandboxError {
    let r = lock(&entry.record);
    SandboxError::Failed(r.id.clone(), r.error.clone().unwrap_or_default())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Moves a record to `state` at `now`, adding the time spent in the old one to its usage.
fn change(rec: &mut Sandbox, state: SandboxState, now: i64) {
    let spent = u64::try_from(now - rec.state_since_ms).unwrap_or(0);
    match rec.state {
        SandboxState::Running => rec.usage.running_ms += spent,
        SandboxState::Paused => rec.usage.paused_ms += spent,
        SandboxState::Standby => {
            rec.usage.standby_ms += spent;
            rec.usage.standby_byte_ms += u128::from(rec.standby_bytes.unwrap_or(0)) * u128::from(spent);
        }
        SandboxState::Failed => {}
    }
    rec.state = state;
    rec.state_since_ms = now;
}

impl Inner {
    fn run_dir(&self, id: &str) -> PathBuf {
        self.run.join(id)
    }
    fn data_dir(&self, id: &str) -> PathBuf {
        self.data.join(id)
    }
    fn checkpoint_dir(&self, id: &str) -> PathBuf {
        self.data_dir(id).join("checkpoint")
    }
    fn disk_image(&self, id: &str) -> PathBuf {
        self.data_dir(id).join("disk.img")
    }
    /// Where the disk is mounted while the sandbox runs.
    fn disk_dir(&self, id: &str) -> PathBuf {
        self.data_dir(id).join("disk")
    }
    /// The overlay's upper and work directories: on the sandbox's disk, or, for a sandbox
    /// made before disks existed, in its data directory.
    fn layers(&self, id: &str) -> (PathBuf, PathBuf, bool) {
        if self.disk_image(id).is_file() {
            let d = self.disk_dir(id);
            (d.join("upper"), d.join("work"), true)
        } else {
            let d = self.data_dir(id);
            (d.join("upper"), d.join("work"), false)
        }
    }

    /// The record as the API shows it, with what its disk takes now.
    fn view(&self, entry: &Entry) -> Sandbox {
        let mut s = entry.snapshot();
        s.disk_bytes = allocated(&self.disk_image(&s.id));
        s
    }

    /// Bytes the sandbox may still write (its disk must be mounted, i.e. it runs).
    pub(crate) fn room(&self, id: &str, disk_mb: u32) -> u64 {
        match self.layers(id) {
            (_, _, true) => disk::free_bytes(&self.disk_dir(id)).unwrap_or(0),
            (upper, _, false) => (u64::from(disk_mb) << 20).saturating_sub(bundle::disk_usage(&upper)),
        }
    }

    /// Unmounts the sandbox's root and then its disk.
    fn unmount(&self, id: &str) {
        hangar_container::overlay::unmount_root(&self.run_dir(id).join("rootfs"));
        disk::unmount(&self.disk_dir(id));
    }

    /// runsc with this server's state root, on the ptrace platform (no KVM here).
    fn runsc(&self) -> tokio::process::Command {
        self.runsc.command()
    }

    async fn runsc_ok(&self, args: &[&str], what: &str) -> Result<(), SandboxError> {
        let out = self.runsc().args(args).output().await.map_err(|e| SandboxError::Runtime(format!("{what}: runsc could not run: {e}")))?;
        if !out.status.success() {
            return Err(SandboxError::Runtime(format!("{what}: runsc failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(())
    }

    /// A runsc command that leaves the sandbox running: its output goes to a file (the
    /// sandbox's processes inherit it, so a pipe would never close), read when it fails.
    async fn runsc_detached(&self, run: &Path, args: &[&str], what: &str, networked: bool) -> Result<(), SandboxError> {
        let log_path = run.join("runsc.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = if networked {
            // runsc (2022) refuses a network namespace in which /proc/sys/net/core/rmem_default
            // exists, taking it for the host's; on this kernel it exists in every namespace. A
            // private mount namespace with an empty /proc/sys/net hides it from runsc alone.
            let mut c = tokio::process::Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c", r#"mount -t tmpfs hangar-none /proc/sys/net && exec "$0" "$@""#]);
            c.args(self.runsc.argv()).arg("--network=sandbox").stdin(std::process::Stdio::null());
            c
        } else {
            let mut c = self.runsc();
            c.arg("--network=none");
            c
        };
        let status = cmd
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .status()
            .await
            .map_err(|e| SandboxError::Runtime(format!("{what}: runsc could not run: {e}")))?;
        if !status.success() {
            let why = runsc_cause(&std::fs::read_to_string(&log_path).unwrap_or_default());
            return Err(SandboxError::Runtime(format!("{what}: runsc failed ({status}): {why}")));
        }
        Ok(())
    }

    /// Kills and deletes every container under the state root and unmounts the roots.
    async fn clean(&self) {
        // The cgroups first (thawed and killed all at once, so nothing paused holds up runsc),
        // then every sandbox's runsc state at once.
        hangar_container::cgroup::remove_tree(&self.cgroup_parent).await;
        self.runsc.remove_all().await;
        if let Ok(dirs) = std::fs::read_dir(&self.run) {
            for d in dirs.flatten() {
                hangar_container::overlay::unmount_root(&d.path().join("rootfs"));
            }
        }
        if let Ok(dirs) = std::fs::read_dir(&self.data) {
            for d in dirs.flatten() {
                disk::unmount(&d.path().join("disk"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.run);
        hangar_container::cgroup::remove_tree(&self.cgroup_parent).await;
        self.network.remove_all().await;
    }

    /// Mounts the sandbox's root, writes its bundle, and starts it: fresh, or restored from
    /// the checkpoint in `from`.
    async fn boot(&self, entry: &Entry, from: Option<&Path>) -> Result<(), SandboxError> {
        let (id, config) = {
            let r = lock(&entry.record);
            (r.id.clone(), r.config.clone())
        };
        let t0 = Instant::now();
        let run = self.run_dir(&id);
        let rootfs = run.join("rootfs");
        self.unmount(&id);
        let (upper, work, on_disk) = self.layers(&id);
        if on_disk {
            disk::mount(&self.disk_image(&id), &self.disk_dir(&id)).await?;
        }
        if let Err(e) = hangar_container::overlay::mount_root(&entry.lowers, &upper, &work, &rootfs) {
            self.unmount(&id);
            return Err(SandboxError::Runtime(e.to_string()));
        }
        let networked = !config.network.is_none();
        let started = async {
            let hosts = run.join("hosts");
            let joined = if networked {
                self.disconnect(entry).await;
                let (allowed, names) = network::resolve(&config.network.allow).await?;
                let a = self.network.attach(&allowed, names).await?;
                std::fs::write(&hosts, &a.hosts)?;
                let path = a.netns_path();
                *lock(&entry.net) = Some(a);
                Some(path)
            } else {
                None
            };
            let net = joined.as_deref().map(|netns| bundle::Joined { netns, hosts: &hosts });
            let spec = bundle::config(&config, &entry.image, &rootfs, &self.busybox, &format!("/{}/{id}", self.cgroup_parent), &id, net)?;
            spec.save(run.join("config.json")).map_err(|e| SandboxError::Runtime(format!("writing the bundle: {e}")))?;
            let bundle = run.display().to_string();
            match from {
                None => self.runsc_detached(&run, &["run", "--detach", "--bundle", &bundle, &id], "starting the sandbox", networked).await,
                Some(image) => {
                    let image = image.display().to_string();
                    self.runsc_detached(&run, &["restore", "--detach", "--image-path", &image, "--bundle", &bundle, &id], "restoring the sandbox", networked)
                        .await
                }
            }
        }
        .await;
        let prepared = ms(t0);
        if started.is_err() {
            let _ = self.runsc().args(["delete", "--force", &id]).output().await;
            self.unmount(&id);
            self.disconnect(entry).await;
        }
        tracing::debug!(sandbox = %id, restore = from.is_some(), prepared_ms = prepared, total_ms = ms(t0), "sandbox booted");
        started
    }

    /// Moves the sandbox to `state`, lets `also` change more of its record, and stores it.
    async fn transition(&self, entry: &Entry, state: SandboxState, also: impl FnOnce(&mut Sandbox)) {
        let snapshot = {
            let mut r = lock(&entry.record);
            change(&mut r, state, now_ms());
            also(&mut r);
            r.clone()
        };
        if let Err(e) = self.store.put_sandbox(&snapshot).await {
            tracing::error!(sandbox = %snapshot.id, "recording the sandbox's state: {e}");
        }
    }

    /// Makes a sandbox that is paused or on standby run (the caller holds its lifecycle).
    async fn wake(&self, entry: &Entry) -> Result<(), SandboxError> {
        let id = entry.id();
        let t = Instant::now();
        self.notice_stop(entry, false).await;
        match entry.state() {
            SandboxState::Running => return Ok(()),
            SandboxState::Failed => return Err(failed(entry)),
            SandboxState::Paused => self.runsc_ok(&["resume", &id], "resuming the sandbox").await?,
            SandboxState::Standby => {
                let image = self.checkpoint_dir(&id);
                if let Err(e) = self.boot(entry, Some(&image)).await {
                    self.transition(entry, SandboxState::Failed, |r| r.error = Some(format!("its standby image could not be restored ({e})"))).await;
                    return Err(failed(entry));
                }
                let _ = tokio::fs::remove_dir_all(&image).await;
            }
        }
        self.transition(entry, SandboxState::Running, |r| {
            r.standby_bytes = None;
            r.timings.resume_ms = Some(ms(t));
        })
        .await;
        Ok(())
    }

    async fn pause(&self, entry: &Entry) -> Result<(), SandboxError> {
        let id = entry.id();
        let t = Instant::now();
        if self.notice_stop(entry, false).await.is_some() {
            return Err(failed(entry));
        }
        self.runsc_ok(&["pause", &id], "pausing the sandbox").await?;
        self.transition(entry, SandboxState::Paused, |r| r.timings.pause_ms = Some(ms(t))).await;
        Ok(())
    }

    /// Checkpoints the sandbox to `<data>/sandboxes/<id>/checkpoint` and stops it.
    async fn standby(&self, entry: &Entry) -> Result<(), SandboxError> {
        let id = entry.id();
        let t = Instant::now();
        if self.notice_stop(entry, false).await.is_some() {
            return Err(failed(entry));
        }
        if !entry.snapshot().config.network.is_none() {
            return Err(SandboxError::Invalid(format!(
                "sandbox `{id}` has network access and cannot go on standby: the gVisor release here does not restore a sandbox's network; pause it instead (no CPU, memory kept)"
            )));
        }
        if entry.held.load(Ordering::Acquire) > 0 {
            return Err(SandboxError::Invalid(format!(
                "sandbox `{id}` cannot go on standby: a process started by an earlier command still holds that command's output \
                 (a background job whose stdout or stderr was not redirected), and gVisor cannot checkpoint a hold on it; \
                 end that process, start such jobs with their output redirected (`job > /tmp/job.log 2>&1 &`), or pause the sandbox instead"
            )));
        }
        if entry.state() == SandboxState::Paused {
            self.runsc_ok(&["resume", &id], "resuming the sandbox to checkpoint it").await?;
        }
        let image = self.checkpoint_dir(&id);
        let _ = tokio::fs::remove_dir_all(&image).await;
        tokio::fs::create_dir_all(&image).await?;
        let image_s = image.display().to_string();
        if let Err(e) = self.runsc_ok(&["checkpoint", "--image-path", &image_s, &id], "checkpointing the sandbox").await {
            // A checkpoint that failed may have taken the sandbox down with it.
            let state = self.runsc().args(["state", &id]).output().await.ok().and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
            if state.is_none_or(|s| s["status"] != "running") {
                let _ = self.runsc().args(["delete", "--force", &id]).output().await;
                self.transition(entry, SandboxState::Failed, |r| r.error = Some(format!("it stopped while being checkpointed ({e}); its files are kept")))
                    .await;
            }
            let _ = tokio::fs::remove_dir_all(&image).await;
            return Err(e);
        }
        let _ = self.runsc().args(["delete", "--force", &id]).output().await;
        self.unmount(&id);
        let bytes = bundle::disk_usage(&image);
        self.transition(entry, SandboxState::Standby, |r| {
            r.standby_bytes = Some(bytes);
            r.timings.standby_ms = Some(ms(t));
        })
        .await;
        Ok(())
    }

    /// If the gVisor kernel of a running or paused sandbox has stopped by itself (killed by the
    /// host for memory, say: its cgroup is there but empty, or, when `ask_runsc`, runsc says it
    /// stopped), removes what is left of its container, marks it failed and returns why. The
    /// caller holds its lifecycle.
    async fn notice_stop(&self, entry: &Entry, ask_runsc: bool) -> Option<String> {
        let (id, memory_mb) = {
            let r = lock(&entry.record);
            if !matches!(r.state, SandboxState::Running | SandboxState::Paused) {
                return None;
            }
            (r.id.clone(), r.config.memory_mb)
        };
        let cg = hangar_container::cgroup::Cgroup::open(&self.cgroup_parent, &id);
        let emptied = cg.exists() && cg.pids().is_empty();
        if !emptied {
            let state = if ask_runsc { self.runsc().args(["state", &id]).output().await.ok() } else { None };
            let status = state.and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok()).map(|v| v["status"].clone());
            if status.is_none_or(|s| s != "stopped") {
                return None;
            }
        }
        let why = if cg.oom_kills() > 0 {
            format!("it ran out of memory (its limit is {memory_mb} MiB) and the host stopped its gVisor kernel")
        } else if cg.pids_refused() > 0 {
            "it reached its limit of host threads and its gVisor kernel stopped".to_string()
        } else {
            "its gVisor kernel stopped unexpectedly".to_string()
        };
        tracing::warn!(sandbox = %id, "the sandbox stopped: {why}");
        let _ = self.runsc().args(["delete", "--force", &id]).output().await;
        self.unmount(&id);
        self.disconnect(entry).await;
        let error = format!("{why}; its processes and memory are gone, its files are kept");
        self.transition(entry, SandboxState::Failed, |r| r.error = Some(error)).await;
        Some(why)
    }

    /// Starts a failed sandbox again from its files (the caller holds its lifecycle).
    async fn restart(&self, entry: &Entry) -> Result<(), SandboxError> {
        let (id, image_id) = {
            let r = lock(&entry.record);
            (r.id.clone(), r.image_id.clone())
        };
        if entry.lowers.is_empty() {
            return Err(SandboxError::Invalid(format!(
                "sandbox `{id}` cannot start again: its image {image_id} is gone; remove it with `hangar sandbox rm {id}`"
            )));
        }
        let t = Instant::now();
        let _ = self.runsc().args(["delete", "--force", &id]).output().await;
        let _ = tokio::fs::remove_dir_all(self.checkpoint_dir(&id)).await;
        tokio::fs::create_dir_all(self.run_dir(&id)).await?;
        self.boot(entry, None).await?;
        self.transition(entry, SandboxState::Running, |r| {
            r.error = None;
            r.standby_bytes = None;
            r.timings.resume_ms = Some(ms(t));
        })
        .await;
        Ok(())
    }

    /// Kills the sandbox and removes its container, mounts, network and files.
    async fn destroy(&self, entry: &Entry) {
        let id = entry.id();
        let _ = self.runsc().args(["kill", "--all", &id, "KILL"]).output().await;
        let _ = self.runsc().args(["delete", "--force", &id]).output().await;
        self.disconnect(entry).await;
        self.remove_files(&id).await;
    }

    /// Takes the sandbox off the host's network, if it was on it.
    async fn disconnect(&self, entry: &Entry) {
        let attachment = lock(&entry.net).take();
        if let Some(a) = attachment {
            self.network.detach(&a).await;
        }
    }

    async fn remove_files(&self, id: &str) {
        self.unmount(id);
        let _ = tokio::fs::remove_dir_all(self.run_dir(id)).await;
        let _ = tokio::fs::remove_dir_all(self.data_dir(id)).await;
    }

    /// The runsc exec command line for a request, run as `user` (uid, gid).
    fn command(&self, entry: &Entry, req: &ExecRequest, user: (u32, u32)) -> exec::Command {
        let (id, config) = {
            let r = lock(&entry.record);
            (r.id.clone(), r.config.clone())
        };
        let mut runsc = self.runsc();
        runsc.arg("exec");
        let mut env = bundle::environment(&entry.image, &config);
        for (k, v) in &req.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        for (k, v) in env {
            runsc.arg("--env").arg(format!("{k}={v}"));
        }
        if let Some(cwd) = &req.cwd {
            runsc.arg("--cwd").arg(cwd);
        }
        // The image's user (as the sandbox's first process), unless the call names another.
        runsc.arg("--user").arg(format!("{}:{}", user.0, user.1));
        let pid_file = self.run_dir(&id).join(format!("exec-{}.pid", uuid::Uuid::now_v7().simple()));
        // Flags end at the container id: the command's own arguments are left alone.
        let argv: Vec<String> = std::iter::once(id.clone()).chain(req.cmd.iter().cloned()).collect();
        let (runtime, sid) = (self.runsc.clone(), id.clone());
        exec::Command {
            runsc,
            argv,
            stdin: req.stdin.clone().map(Bytes::from),
            timeout: req.timeout_s.map(Duration::from_secs),
            pid_file,
            kill: Box::new(move |pid| {
                // The command's whole process group, inside the sandbox (what it left running in
                // the background too), then the command itself should it have left its group.
                let script = format!("{b} kill -9 -{pid} 2>/dev/null; {b} kill -9 {pid} 2>/dev/null; true", b = bundle::BUSYBOX);
                let mut c = runtime.command();
                c.args(["exec", &sid, bundle::BUSYBOX, "sh", "-c", &script]);
                c
            }),
            stopped: Box::new(|| Box::pin(async { None })),
            held: entry.held.clone(),
        }
    }
}

/// What a failing runsc said, from its log: the lines that name the failure (a Go panic's
/// message and the errors before it), not the stack trace that ends the log.
fn runsc_cause(log: &str) -> String {
    let meaningful = |l: &&str| {
        let t = l.trim();
        !t.is_empty() && !l.starts_with('\t') && !t.starts_with("goroutine ") && !t.starts_with("created by ") && !t.ends_with(')') && !t.contains(".go:")
    };
    let lines: Vec<&str> = log.lines().filter(meaningful).collect();
    let cause: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("panic") || l.contains("error") || l.contains("failed") || l.contains("fatal")
        })
        .collect();
    let picked = if cause.is_empty() { lines.last().copied().into_iter().collect() } else { cause };
    let mut out = picked.iter().rev().take(3).rev().map(|l| l.trim()).collect::<Vec<_>>().join(" | ");
    if out.len() > 1000 {
        out.truncate(out.floor_char_boundary(1000));
        out.push('…');
    }
    out
}

/// Once a second: destroys sandboxes past their TTL, pauses and then stands by idle ones as
/// their idle policy says.
async fn idle_loop(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        let entries: Vec<Arc<Entry>> = lock(&inner.boxes).values().cloned().collect();
        let now = now_ms();
        for entry in entries {
            let rec = entry.snapshot();
            if rec.config.ttl_s.is_some_and(|ttl| now >= rec.created_ms + (ttl as i64) * 1000) {
                let _guard = entry.lifecycle.lock().await;
                tracing::info!(sandbox = %rec.id, "the sandbox reached its TTL; destroying it");
                inner.destroy(&entry).await;
                lock(&inner.boxes).remove(&rec.id);
                let _ = inner.store.delete_sandbox(&rec.id).await;
                continue;
            }
            if entry.active.load(Ordering::Acquire) > 0 {
                continue;
            }
            let idle_s = (now - rec.last_active_ms) / 1000;
            let due = |after: Option<u64>| after.is_some_and(|a| idle_s >= a as i64);
            let Ok(_guard) = entry.lifecycle.try_lock() else { continue };
            if inner.notice_stop(&entry, false).await.is_some() || entry.active.load(Ordering::Acquire) > 0 {
                continue;
            }
            // A sandbox whose earlier command's output is still held cannot be checkpointed: it
            // is paused instead when standby is due.
            let held = entry.held.load(Ordering::Acquire) > 0;
            let (standby_due, pause_due) = (due(rec.config.idle.standby_after_s), due(rec.config.idle.pause_after_s));
            let result = match entry.state() {
                SandboxState::Running | SandboxState::Paused if standby_due && !held => inner.standby(&entry).await,
                SandboxState::Running if pause_due || standby_due => inner.pause(&entry).await,
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(sandbox = %rec.id, "idle policy: {e}");
            }
        }
    }
}

/// Sandboxes are metered by their own counters of time in each state.
impl hangar_meter::usage::Sandboxes for Sandboxes {
    fn sandboxes(&self) -> Vec<Sandbox> {
        self.list(None)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runsc_logs_are_told_by_their_cause_not_their_stack() {
        let log = "I1204 12:00:00 restoring\nW1204 12:00:01 host.inode.afterLoad: failed to set host FD 12 non-blocking: bad file descriptor\npanic: host.inode.afterLoad: failed to set host FD 12 non-blocking\n\ngoroutine 1 [running]:\ngvisor.dev/gvisor/pkg/sentry/fsimpl/host.(*inode).afterLoad(0xc000)\n\t/build/pkg/sentry/fsimpl/host/save_restore.go:42 +0x1d5\ncreated by main.main\n\t/build/main.go:10\n";
        let why = super::runsc_cause(log);
        assert!(why.contains("failed to set host FD 12 non-blocking"), "{why}");
        assert!(!why.contains("goroutine") && !why.contains(".go:"), "{why}");
        assert_eq!(super::runsc_cause("just one line\n"), "just one line");
    }
}
