//! The OCI bundle of a sandbox: its overlay root (the image's layers under the sandbox's own
//! upper directory, kept in the data directory so files outlive standby and restarts) and a
//! `config.json` for runsc with the sandbox's limits, no network but loopback, and Hangar's
//! static busybox bound read-only at `/.hangar/busybox` for file calls.

use std::path::{Path, PathBuf};

use hangar_api::sandboxes::SandboxConfig;
use hangar_image::RunConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::SandboxError;

/// Where the helper binary is inside every sandbox.
pub const BUSYBOX: &str = "/.hangar/busybox";

/// The sandbox's first process: it only keeps the sandbox alive, and ignores `SIGCHLD` (kept
/// across the `exec`), so the orphans it inherits are reaped by the kernel instead of piling
/// up as zombies that count against [`max_processes`].
const INIT: &str = "trap '' CHLD; exec /.hangar/busybox sleep 2147483647";

/// Processes (and threads) a sandbox's user may have at once: one per MiB of its memory
/// (64..=16384), enforced by gVisor's kernel (`RLIMIT_NPROC`; without `CAP_SYS_RESOURCE` even
/// root cannot raise it). A fork bomb hits it and gets `EAGAIN` inside, while gVisor stays
/// well under [`host_pids`] and its memory.
pub fn max_processes(config: &SandboxConfig) -> u64 {
    u64::from(config.memory_mb).clamp(64, 16_384)
}

/// Host threads and processes gVisor may use for one sandbox (its pids cgroup), the last line
/// of defence: on the ptrace platform each process inside has a host stub, and each running
/// task a host thread.
fn host_pids(config: &SandboxConfig) -> i64 {
    (max_processes(config) * 4 + 512) as i64
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SandboxError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| SandboxError::Runtime(format!("sandbox config: {e}")))
}

/// The environment every command gets: a default `PATH`, the image's, the sandbox's.
pub fn environment(image: &RunConfig, config: &SandboxConfig) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        vec![("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()), ("HOME".into(), "/root".into())];
    let mut set = |k: &str, v: &str| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    };
    for e in &image.env {
        if let Some((k, v)) = e.split_once('=') {
            set(k, v);
        }
    }
    for (k, v) in &config.env {
        set(k, v);
    }
    env
}

/// The user every process of the sandbox runs as: the image's, resolved in its root.
pub fn user(rootfs: &Path, image: &RunConfig) -> Result<(u32, u32), SandboxError> {
    let (uid, gid, _) = hangar_container::overlay::resolve_user(rootfs, &image.user).map_err(|e| SandboxError::Invalid(e.to_string()))?;
    Ok((uid, gid))
}

/// A process of the sandbox (its first one, or an interactive command): as `uid:gid`, with
/// Docker's default capabilities (root in the sandbox is root of gVisor's kernel, not of the
/// host's), no new privileges, and the sandbox's process and file limits.
pub fn process(
    config: &SandboxConfig,
    (uid, gid): (u32, u32),
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    terminal: bool,
) -> Result<Process, SandboxError> {
    let caps: std::collections::HashSet<Capability> = hangar_container::overlay::CONTAINER_CAPS.iter().copied().collect();
    let err = |e: oci_spec::OciSpecError| SandboxError::Runtime(format!("sandbox config: {e}"));
    ProcessBuilder::default()
        .terminal(terminal)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(UserBuilder::default().uid(uid).gid(gid).build().map_err(err)?)
        .capabilities(LinuxCapabilitiesBuilder::default().bounding(caps.clone()).effective(caps.clone()).permitted(caps).build().map_err(err)?)
        .no_new_privileges(true)
        .rlimits(vec![
            PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitNproc).hard(max_processes(config)).soft(max_processes(config)).build().map_err(err)?,
            PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitNofile).hard(65_536u64).soft(65_536u64).build().map_err(err)?,
        ])
        .build()
        .map_err(err)
}

/// The working directory commands start in: the image's, or `/`.
pub fn working_dir(image: &RunConfig) -> String {
    if image.working_dir.is_empty() { "/".to_string() } else { image.working_dir.clone() }
}

/// Where a sandbox with network access joins the host's network: its namespace, and the
/// `/etc/hosts` made for it.
pub struct Joined<'a> {
    pub netns: &'a Path,
    pub hosts: &'a Path,
}

/// The sandbox's `config.json`: its first process only keeps it alive (commands come by exec).
/// Without `net` it gets a network namespace of its own with nothing but loopback.
pub fn config(
    config: &SandboxConfig,
    image: &RunConfig,
    rootfs: &Path,
    busybox: &Path,
    cgroup_path: &str,
    hostname: &str,
    net: Option<Joined<'_>>,
) -> Result<Spec, SandboxError> {
    let env: Vec<String> = environment(image, config).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let err = |e: oci_spec::OciSpecError| SandboxError::Runtime(format!("sandbox config: {e}"));
    let init = vec![BUSYBOX.to_string(), "sh".into(), "-c".into(), INIT.into()];
    let process = process(config, user(rootfs, image)?, init, env, working_dir(image), false)?;
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"])?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
        MountBuilder::default().destination(BUSYBOX).typ("bind").source(busybox).options(vec!["rbind".into(), "ro".into()]).build().map_err(err)?,
    ];
    if let Some(j) = &net {
        mounts.push(
            MountBuilder::default().destination("/etc/hosts").typ("bind").source(j.hosts).options(vec!["rbind".into(), "ro".into()]).build().map_err(err)?,
        );
    }
    let memory = i64::from(config.memory_mb) << 20;
    let period = 100_000u64;
    let resources = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(memory).swap(memory).build().map_err(err)?)
        .cpu(LinuxCpuBuilder::default().period(period).quota((config.cpus * period as f64) as i64).shares((config.cpus * 1024.0) as u64).build().map_err(err)?)
        .pids(LinuxPidsBuilder::default().limit(host_pids(config)).build().map_err(err)?)
        .build()
        .map_err(err)?;
    let ns = |t| LinuxNamespaceBuilder::default().typ(t).build().map_err(err);
    let network = match &net {
        Some(j) => LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(j.netns).build().map_err(err)?,
        None => ns(LinuxNamespaceType::Network)?,
    };
    let namespaces = vec![ns(LinuxNamespaceType::Pid)?, network, ns(LinuxNamespaceType::Ipc)?, ns(LinuxNamespaceType::Uts)?, ns(LinuxNamespaceType::Mount)?];
    let linux = LinuxBuilder::default().namespaces(namespaces).resources(resources).cgroups_path(PathBuf::from(cgroup_path)).build().map_err(err)?;
    SpecBuilder::default()
        .version("1.0.2")
        .root(RootBuilder::default().path(rootfs).readonly(false).build().map_err(err)?)
        .hostname(hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(err)
}

/// Bytes under `dir` (files and symlinks as they are on disk), without following links.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_layers_image_and_sandbox() {
        let image = RunConfig { env: vec!["PATH=/opt/bin".into(), "A=image".into()], ..Default::default() };
        let mut config = SandboxConfig::new("x");
        config.env.insert("A".into(), "sandbox".into());
        let env = environment(&image, &config);
        assert!(env.contains(&("PATH".into(), "/opt/bin".into())));
        assert!(env.contains(&("A".into(), "sandbox".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "A").count(), 1);
    }

    #[test]
    fn the_config_limits_and_isolates() {
        let root = tempfile::tempdir().unwrap();
        let c = config(&SandboxConfig::new("x"), &RunConfig::default(), root.path(), Path::new("/bin/busybox"), "/hangar-sb/x", "sb", None).unwrap();
        let linux = c.linux().as_ref().unwrap();
        assert_eq!(linux.resources().as_ref().unwrap().memory().as_ref().unwrap().limit(), Some(512 << 20));
        assert!(linux.namespaces().as_ref().unwrap().iter().any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none()));
        assert!(c.mounts().as_ref().unwrap().iter().any(|m| m.destination() == Path::new(BUSYBOX)));
        let used = disk_usage(root.path());
        std::fs::write(root.path().join("f"), [0u8; 100]).unwrap();
        assert_eq!(disk_usage(root.path()), used + 100);
    }
}
