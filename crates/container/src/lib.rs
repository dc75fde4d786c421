//! Containers on this machine: [`runtime`] (the OCI runtimes, `runc` and `runsc`, behind the
//! [`ContainerRuntime`] trait), [`cgroup`] (v1 and v2), [`NetNs`] and [`netcmd`] (network
//! namespaces, `ip`, `nft`), [`overlay`] (roots over image layers), [`subnets`] (bridge
//! subnets shared by services and sandboxes), and [`Jail`]:
//!
//! One untrusted process in an OCI container driven by `runc`: its own mount, pid, ipc,
//! uts and network namespaces, an unprivileged user, no capabilities, `no_new_privs`, a seccomp
//! deny-list, rlimits, and cgroup limits on memory, pids and CPU share.
//!
//! The root filesystem is an empty read-only directory into which only what the process needs
//! is bound read-only (the system's `/usr`, an interpreter's prefix, the function's code), plus
//! a private size-bounded `/tmp`. The host's other files, processes and network are not there.
//! (Process functions, issue 3, are the first user; services and sandboxes reuse the bundle
//! format with other runtimes.)
#![forbid(unsafe_code)]

pub mod cgroup;
pub mod netcmd;
mod netns;
pub mod overlay;
pub mod runtime;
pub mod subnets;

pub use netns::NetNs;
pub use runtime::{ContainerRuntime, Runc, Runsc};

use std::path::{Path, PathBuf};
use std::process::Stdio;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// Why a jail could not be made or run.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The OCI configuration could not be built: {0}.
    #[error("jail: building the container config: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    /// Writing the bundle failed.
    #[error("jail: writing the bundle: {0}")]
    Io(#[from] std::io::Error),
    /// `runc` is missing or failed.
    #[error("jail: runc: {0}. Install it with `apt-get install runc`")]
    Runc(String),
    /// Bad input to the jail.
    #[error("jail: {0}")]
    Invalid(String),
    /// A cgroup could not be made or changed.
    #[error("jail: cgroup: {0}")]
    Cgroup(String),
    /// `ip` or `nft` failed.
    #[error("{0}")]
    Network(String),
    /// A system tool could not be run (or fed its input).
    #[error("cannot run `{program}`: {source}; install it with `apt-get install {package}`")]
    Tool {
        program: String,
        package: String,
        #[source]
        source: std::io::Error,
    },
}

/// User and group the jailed process runs as (`nobody`).
pub const NOBODY: u32 = 65534;

/// Who the jailed process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailUser {
    /// `nobody`, with no capabilities at all.
    Nobody,
    /// Root of a new user namespace whose ids 0..65536 are the host's `host_base..+65536`
    /// (unprivileged on the host), holding only the capabilities needed to give each forked
    /// instance its own namespaces: `CAP_SYS_ADMIN`, `CAP_NET_ADMIN`, `CAP_SETUID`,
    /// `CAP_SETGID`, all of them over that user namespace only. A zygote runs like this; each
    /// instance it forks drops to `nobody` with no capabilities before running user code.
    Zygote { host_base: u32 },
}

/// What to run and under which limits.
#[derive(Debug, Clone)]
pub struct JailSpec {
    /// Container id, unique on the host: `[a-zA-Z0-9_.-]+`.
    pub id: String,
    pub user: JailUser,
    /// `runc --root`: where runc keeps container state (one directory per Hangar server).
    pub runc_root: Option<PathBuf>,
    /// The cgroup is `<cgroup_parent>/<id>`.
    pub cgroup_parent: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory inside.
    pub cwd: String,
    /// Host directories bound read-only at the given paths inside.
    pub ro_binds: Vec<(PathBuf, String)>,
    pub memory_bytes: i64,
    pub pids_max: i64,
    /// Relative CPU weight (cgroup v1 `cpu.shares`).
    pub cpu_shares: u64,
    /// Size of the private writable `/tmp`.
    pub tmp_bytes: u64,
    /// Largest number of open files.
    pub max_open_files: u64,
    pub network: Network,
}

/// The network the jailed process sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A new, empty network namespace: no interface is up, nothing is reachable.
    None,
    /// Join this prepared namespace (e.g. a [`NetNs`] whose only listener is Hangar's Runtime API).
    Join(PathBuf),
}

/// Syscalls no jailed process needs; denied with `EPERM` on top of the dropped capabilities.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "init_module",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "mount",
    "move_mount",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "umount2",
    "unshare",
    "userfaultfd",
    "fsopen",
    "fsmount",
    "fspick",
];

/// What a zygote may call beyond the list above, to set up each instance.
const ZYGOTE_NEEDS: &[&str] = &["mount", "umount2", "unshare"];

fn bind_ro(host: &Path, inside: &str) -> Result<Mount, JailError> {
    Ok(MountBuilder::default()
        .destination(inside)
        .typ("bind")
        .source(host)
        .options(vec!["rbind".into(), "ro".into(), "nosuid".into(), "nodev".into()])
        .build()?)
}

/// The OCI runtime configuration for `spec`, with `rootfs` as the root.
pub fn oci_config(spec: &JailSpec, rootfs: &Path) -> Result<Spec, JailError> {
    if spec.id.is_empty() || !spec.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(JailError::Invalid(format!("container id `{}` may only hold letters, digits, `_`, `.`, `-`", spec.id)));
    }
    let zygote = matches!(spec.user, JailUser::Zygote { .. });
    let uid = if zygote { 0 } else { NOBODY };
    let user = UserBuilder::default().uid(uid).gid(uid).additional_gids(Vec::<u32>::new()).build()?;
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    // A zygote holds, over its own user namespace, what it needs to give each instance its
    // namespaces and then take everything away (SETPCAP empties the instance's bounding set);
    // nothing is inheritable or ambient, so no exec can get a capability back.
    let no_caps: Capabilities = if zygote {
        [Capability::SysAdmin, Capability::NetAdmin, Capability::Setuid, Capability::Setgid, Capability::Setpcap].into_iter().collect()
    } else {
        Capabilities::new()
    };
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(spec.argv.clone())
        .env(env)
        .cwd(spec.cwd.clone())
        .no_new_privileges(true)
        .capabilities(
            oci_spec::runtime::LinuxCapabilitiesBuilder::default()
                .bounding(no_caps.clone())
                .effective(no_caps.clone())
                .inheritable(Capabilities::new())
                .permitted(no_caps)
                .ambient(Capabilities::new())
                .build()?,
        )
        .rlimits(vec![
            PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitNofile).hard(spec.max_open_files).soft(spec.max_open_files).build()?,
            PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitCore).hard(0u64).soft(0u64).build()?,
        ])
        .build()?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    if zygote {
        // sysfs and cgroupfs need host privileges; nothing inside needs them.
        mounts.retain(|m| !m.destination().starts_with("/sys"));
    }
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".into(), "nodev".into(), "mode=1777".into(), format!("size={}", spec.tmp_bytes)])
            .build()?,
    );
    for (host, inside) in &spec.ro_binds {
        if !host.exists() {
            return Err(JailError::Invalid(format!("{} does not exist on the host", host.display())));
        }
        mounts.push(bind_ro(host, inside)?);
    }

    let mut types = vec![LinuxNamespaceType::Pid, LinuxNamespaceType::Network, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount];
    if zygote {
        types.push(LinuxNamespaceType::User);
    }
    let namespaces = types
        .into_iter()
        .map(|t| match (&spec.network, t) {
            (Network::Join(path), LinuxNamespaceType::Network) => LinuxNamespaceBuilder::default().typ(t).path(path).build(),
            _ => LinuxNamespaceBuilder::default().typ(t).build(),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let resources = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(spec.memory_bytes).build()?)
        .pids(LinuxPidsBuilder::default().limit(spec.pids_max).build()?)
        .cpu(LinuxCpuBuilder::default().shares(spec.cpu_shares).build()?)
        .build()?;
    // A zygote makes each instance's namespaces and mounts (`/proc`, `/tmp`); the instance then
    // adds its own filter that denies these too.
    let denied = DENIED_SYSCALLS.iter().filter(|s| !zygote || !ZYGOTE_NEEDS.contains(s)).map(|s| s.to_string());
    let seccomp = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![LinuxSyscallBuilder::default().names(denied.collect::<Vec<_>>()).action(LinuxSeccompAction::ScmpActErrno).errno_ret(1u32).build()?])
        .build()?;
    let mut linux = LinuxBuilder::default();
    linux = linux
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(format!("/{}/{}", spec.cgroup_parent.trim_matches('/'), spec.id)))
        .seccomp(seccomp);
    if let JailUser::Zygote { host_base } = spec.user {
        let map = |_| LinuxIdMappingBuilder::default().container_id(0u32).host_id(host_base).size(65536u32).build();
        linux = linux.uid_mappings(vec![map(())?]).gid_mappings(vec![map(())?]);
        // No masked paths: an instance mounts its own /proc, which the kernel allows only
        // where /proc is fully visible. What the masks hide needs host root to read anyway.
        linux = linux.masked_paths(Vec::<String>::new()).readonly_paths(Vec::<String>::new());
    } else {
        linux = linux
            .masked_paths(
                ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
                    .map(String::from)
                    .to_vec(),
            )
            .readonly_paths(["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"].map(String::from).to_vec());
    }
    let linux = linux.build()?;
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(RootBuilder::default().path(rootfs).readonly(true).build()?)
        .hostname("hangar")
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

/// A container bundle on disk, ready to run.
#[derive(Debug)]
pub struct Jail {
    id: String,
    bundle: PathBuf,
    runc_root: Option<PathBuf>,
}

fn runc_command(root: Option<&Path>) -> tokio::process::Command {
    match root {
        Some(root) => Runc::new(root).command(),
        // runc's own default root (tests that run one jail).
        None => tokio::process::Command::new("runc"),
    }
}

impl Jail {
    /// Writes the bundle under `dir/<id>`: `config.json` and an empty root with the host's
    /// merged-`/usr` links (`/bin`, `/lib`, ... → `usr/...`).
    pub fn prepare(dir: &Path, spec: &JailSpec) -> Result<Jail, JailError> {
        let bundle = dir.join(&spec.id);
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        for link in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(link);
            if let Ok(target) = std::fs::read_link(&host) {
                let at = rootfs.join(link);
                if std::fs::symlink_metadata(&at).is_err() {
                    std::os::unix::fs::symlink(target, at)?;
                }
            }
        }
        let config = oci_config(spec, &rootfs)?;
        // Mount points exist beforehand: in a user namespace, runc cannot create them in a
        // root-owned read-only root.
        for m in config.mounts().iter().flatten() {
            let rel = m.destination().strip_prefix("/").unwrap_or(m.destination());
            let at = rootfs.join(rel);
            // Below /dev is a tmpfs that runc fills itself.
            let under_dev = rel.components().count() > 1 && rel.starts_with("dev");
            let file_bind = m.typ().as_deref() == Some("bind") && m.source().as_ref().is_some_and(|src| src.is_file());
            if std::fs::symlink_metadata(&at).is_err() && file_bind {
                if let Some(parent) = at.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::File::create(&at)?;
            } else if std::fs::symlink_metadata(&at).is_err() && !under_dev {
                std::fs::create_dir_all(&at)?;
                if m.typ().as_deref() == Some("tmpfs") && rel == Path::new("tmp") {
                    // runc gives a tmpfs the mode of the directory it covers (a sticky /dev
                    // would forbid opening /dev/null for writing with O_CREAT).
                    std::fs::set_permissions(&at, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
                }
            }
        }
        config.save(bundle.join("config.json"))?;
        Ok(Jail { id: spec.id.clone(), bundle, runc_root: spec.runc_root.clone() })
    }

    fn runc(&self) -> tokio::process::Command {
        runc_command(self.runc_root.as_deref())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `runc run` of this bundle with the given stdio (`--detach` when `detach`).
    fn run_command(&self, detach: bool, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> tokio::process::Command {
        let mut cmd = self.runc();
        cmd.arg("run");
        if detach {
            cmd.arg("--detach");
        }
        cmd.arg("--bundle").arg(&self.bundle).arg(&self.id).stdin(stdin).stdout(stdout).stderr(stderr).kill_on_drop(true);
        cmd
    }

    /// Starts the container in the foreground of a `runc run` child: its exit status is the
    /// jailed process's (137 when it was killed, e.g. by the memory limit).
    pub fn spawn(&self, stdout: Stdio, stderr: Stdio) -> Result<tokio::process::Child, JailError> {
        self.run_command(false, Stdio::null(), stdout, stderr).spawn().map_err(|e| JailError::Runc(format!("cannot start runc: {e}")))
    }

    /// Starts the container detached: `runc` returns once the process runs, and the process
    /// keeps `stdin`, `stdout` and `stderr` as given (sockets and pipes pass through as they
    /// are, which a foreground `runc run` would replace with pipes of its own).
    pub async fn start_detached(&self, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> Result<(), JailError> {
        let out = self.run_command(true, stdin, stdout, stderr).status().await.map_err(|e| JailError::Runc(format!("cannot start runc: {e}")))?;
        if !out.success() {
            return Err(JailError::Runc(format!("`runc run` failed ({out})")));
        }
        Ok(())
    }

    /// Kills every process of the container and removes it and its bundle.
    pub async fn destroy(self) {
        // With its state root gone (the server cleaned up first), runc has nothing to kill, and
        // calling it would only make the root again.
        match self.runc_root.as_deref() {
            Some(root) if root.exists() => Runc::new(root).remove(&self.id).await,
            Some(_) => {}
            None => {
                let _ = self.runc().args(["kill", "--all", &self.id, "KILL"]).output().await;
                let _ = self.runc().args(["delete", "--force", &self.id]).output().await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JailSpec {
        JailSpec {
            id: "t1".into(),
            user: JailUser::Nobody,
            runc_root: None,
            cgroup_parent: "hangar".into(),
            argv: vec!["/usr/bin/true".into()],
            env: vec![("A".into(), "1".into())],
            cwd: "/".into(),
            ro_binds: vec![(PathBuf::from("/usr"), "/usr".into())],
            memory_bytes: 64 << 20,
            pids_max: 32,
            cpu_shares: 128,
            tmp_bytes: 16 << 20,
            max_open_files: 1024,
            network: Network::None,
        }
    }

    #[test]
    fn config_is_locked_down() {
        let c = serde_json::to_value(oci_config(&spec(), Path::new("/x/rootfs")).unwrap()).unwrap();
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["process"]["user"]["uid"], NOBODY);
        assert_eq!(c["process"]["noNewPrivileges"], true);
        assert_eq!(c["process"]["capabilities"]["bounding"], serde_json::json!([]));
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(c["linux"]["resources"]["pids"]["limit"], 32);
        let ns: Vec<_> = c["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap().to_string()).collect();
        assert_eq!(ns, ["pid", "network", "ipc", "uts", "mount"]);
        let usr = c["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/usr").unwrap();
        assert!(usr["options"].as_array().unwrap().contains(&serde_json::json!("ro")));
        assert!(c["linux"]["seccomp"]["syscalls"][0]["names"].as_array().unwrap().contains(&serde_json::json!("mount")));
        let mut s = spec();
        s.network = Network::Join(PathBuf::from("/var/run/netns/x"));
        let c = serde_json::to_value(oci_config(&s, Path::new("/x/rootfs")).unwrap()).unwrap();
        assert_eq!(c["linux"]["namespaces"][1]["path"], "/var/run/netns/x");
    }

    #[test]
    fn bad_ids_and_missing_binds_are_rejected() {
        let mut s = spec();
        s.id = "../x".into();
        assert!(matches!(oci_config(&s, Path::new("/r")), Err(JailError::Invalid(_))));
        let mut s = spec();
        s.ro_binds.push((PathBuf::from("/does/not/exist"), "/x".into()));
        assert!(matches!(oci_config(&s, Path::new("/r")), Err(JailError::Invalid(_))));
    }
}
