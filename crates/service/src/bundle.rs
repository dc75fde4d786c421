//! One service instance's OCI bundle: a copy-on-write root (overlayfs over the image's
//! unpacked layers, the instance's own upper directory) and a `config.json` for runc or runsc
//! built from the image config and the service spec.

use std::path::{Path, PathBuf};

use hangar_api::services::ServiceConfig;
use hangar_image::RunConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::ServiceError;

/// Everything an instance's config needs.
#[derive(Debug)]
pub struct InstanceSpec<'a> {
    pub hostname: &'a str,
    pub image: &'a RunConfig,
    pub config: &'a ServiceConfig,
    pub port: u16,
    pub netns: &'a Path,
    pub cgroup_path: String,
    /// (host directory, container path) of each volume.
    pub volumes: Vec<(PathBuf, String)>,
    /// Files generated for the instance: hosts, resolv.conf, hostname.
    pub etc: &'a Path,
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, ServiceError> {
    Ok(MountBuilder::default().destination(dest).typ(typ).source(source).options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>()).build()?)
}

fn bind(source: &Path, dest: &str, options: &[&str]) -> Result<Mount, ServiceError> {
    Ok(MountBuilder::default().destination(dest).typ("bind").source(source).options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>()).build()?)
}

/// `uid[:gid]` or `name[:group]` resolved in the image's `/etc/passwd` and `/etc/group`.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), ServiceError> {
    hangar_container::overlay::resolve_user(rootfs, user).map_err(|e| match e {
        hangar_container::JailError::Invalid(m) => ServiceError::Invalid(m),
        other => ServiceError::Invalid(other.to_string()),
    })
}

/// The process's argv: the service's command/args, else the image's Entrypoint/Cmd.
pub fn argv(image: &RunConfig, config: &ServiceConfig) -> Vec<String> {
    let entry = config.command.clone().unwrap_or_else(|| image.entrypoint.clone());
    let args = match (&config.command, &config.args) {
        (_, Some(a)) => a.clone(),
        (Some(_), None) => Vec::new(),
        (None, None) => image.cmd.clone(),
    };
    entry.into_iter().chain(args).collect()
}

/// The config.json of an instance whose root is at `rootfs`.
pub fn config(spec: &InstanceSpec<'_>, rootfs: &Path) -> Result<Spec, ServiceError> {
    let args = argv(spec.image, spec.config);
    if args.is_empty() {
        return Err(ServiceError::Invalid("the image has no Entrypoint or Cmd; give the service a command".into()));
    }
    let mut env: Vec<String> = Vec::new();
    let mut set = |k: &str, v: &str| {
        env.retain(|e| e.split_once('=').is_none_or(|(ek, _)| ek != k));
        env.push(format!("{k}={v}"));
    };
    set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for e in &spec.image.env {
        if let Some((k, v)) = e.split_once('=') {
            set(k, v);
        }
    }
    for (k, v) in &spec.config.env {
        set(k, v);
    }
    set("PORT", &spec.port.to_string());
    set("HOSTNAME", spec.hostname);
    let (uid, gid, additional) = resolve_user(rootfs, &spec.image.user)?;
    let cwd = if spec.image.working_dir.is_empty() { "/".to_string() } else { spec.image.working_dir.clone() };
    let caps: std::collections::HashSet<Capability> = hangar_container::overlay::CONTAINER_CAPS.iter().copied().collect();
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(UserBuilder::default().uid(uid).gid(gid).additional_gids(additional).build()?)
        .capabilities(oci_spec::runtime::LinuxCapabilitiesBuilder::default().bounding(caps.clone()).effective(caps.clone()).permitted(caps).build()?)
        .no_new_privileges(true)
        .build()?;
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"])?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
        bind(&spec.etc.join("hosts"), "/etc/hosts", &["rbind", "ro"])?,
        bind(&spec.etc.join("resolv.conf"), "/etc/resolv.conf", &["rbind", "ro"])?,
        bind(&spec.etc.join("hostname"), "/etc/hostname", &["rbind", "ro"])?,
    ];
    for (host, inside) in &spec.volumes {
        mounts.push(bind(host, inside, &["rbind", "rw", "nosuid", "nodev"])?);
    }
    let memory = i64::from(spec.config.memory_mb) << 20;
    let period = 100_000u64;
    let quota = (spec.config.cpus * period as f64) as i64;
    let resources = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(memory).swap(memory).build()?)
        .cpu(LinuxCpuBuilder::default().period(period).quota(quota).shares((spec.config.cpus * 1024.0) as u64).build()?)
        .pids(LinuxPidsBuilder::default().limit(4096i64).build()?)
        .build()?;
    let ns = |t| LinuxNamespaceBuilder::default().typ(t).build();
    let mut namespaces = vec![ns(LinuxNamespaceType::Pid)?, ns(LinuxNamespaceType::Ipc)?, ns(LinuxNamespaceType::Uts)?, ns(LinuxNamespaceType::Mount)?];
    // runc joins the instance's namespace by path; runsc is started inside it instead (with
    // `nsenter`) and uses it as its host network: the runsc here (2022) finds the root
    // namespace instead of a joined one when it builds its own network stack.
    if spec.config.runtime == hangar_api::services::ContainerRuntime::Runc {
        namespaces.insert(1, LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(spec.netns).build()?);
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(&spec.cgroup_path))
        .masked_paths(
            [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ]
            .map(String::from)
            .to_vec(),
        )
        .readonly_paths(["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"].map(String::from).to_vec())
        .build()?;
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(RootBuilder::default().path(rootfs).readonly(false).build()?)
        .hostname(spec.hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

/// Mounts the overlay root: `lower` top first, the instance's `upper` and `work`.
pub fn mount_root(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), ServiceError> {
    hangar_container::overlay::mount_root(lower, upper, work, target).map_err(|e| match e {
        hangar_container::JailError::Invalid(m) => ServiceError::Invalid(m),
        other => ServiceError::Io(std::io::Error::other(other.to_string())),
    })
}

pub use hangar_container::overlay::unmount_root;

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> RunConfig {
        RunConfig {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["--serve".into()],
            env: vec!["A=image".into(), "B=image".into()],
            working_dir: "/srv".into(),
            user: "www".into(),
            exposed_ports: vec![8080],
            stop_signal: None,
        }
    }

    #[test]
    fn argv_follows_docker_rules() {
        let mut c = ServiceConfig::new("x");
        assert_eq!(argv(&image(), &c), ["/bin/app", "--serve"]);
        c.args = Some(vec!["--other".into()]);
        assert_eq!(argv(&image(), &c), ["/bin/app", "--other"]);
        // A new entrypoint drops the image's cmd unless args are given.
        c.args = None;
        c.command = Some(vec!["/bin/sh".into()]);
        assert_eq!(argv(&image(), &c), ["/bin/sh"]);
    }

    #[test]
    fn users_resolve_from_the_image() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\nwww:x:33:34::/:/bin/sh\n").unwrap();
        std::fs::write(root.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(root.path(), "www").unwrap().0, 33);
        assert_eq!(resolve_user(root.path(), "www").unwrap().1, 34);
        assert_eq!(resolve_user(root.path(), "1000:50").unwrap().1, 50);
        assert_eq!(resolve_user(root.path(), "www:staff").unwrap().1, 50);
        assert!(resolve_user(root.path(), "nobody-here").is_err());
        assert_eq!(resolve_user(root.path(), "").unwrap(), (0, 0, vec![]));
    }

    #[test]
    fn the_config_merges_image_and_service() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), "www:x:33:33::/:/bin/sh\n").unwrap();
        let mut c = ServiceConfig::new("x");
        c.env.insert("B".into(), "service".into());
        c.memory_mb = 64;
        c.cpus = 0.5;
        let img = image();
        let spec = InstanceSpec {
            hostname: "web",
            image: &img,
            config: &c,
            port: 9000,
            netns: Path::new("/run/netns/t"),
            cgroup_path: "/hangar-t-svc/hs-t-1".into(),
            volumes: vec![(PathBuf::from("/data/v"), "/var/lib/app".into())],
            etc: Path::new("/run/x/etc"),
        };
        let v = serde_json::to_value(config(&spec, root.path()).unwrap()).unwrap();
        let env: Vec<&str> = v["process"]["env"].as_array().unwrap().iter().filter_map(|e| e.as_str()).collect();
        assert!(env.contains(&"A=image") && env.contains(&"B=service") && env.contains(&"PORT=9000"), "{env:?}");
        assert_eq!(v["process"]["cwd"], "/srv");
        assert_eq!(v["process"]["user"]["uid"], 33);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "network" && n["path"] == "/run/netns/t"));
        let vol = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/var/lib/app").unwrap();
        assert_eq!(vol["source"], "/data/v");
        assert!(!v["process"]["capabilities"]["bounding"].as_array().unwrap().iter().any(|c| c == "CAP_SYS_ADMIN"));
    }
}
