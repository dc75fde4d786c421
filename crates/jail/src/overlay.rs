//! Containers made from images: the overlay root (the image's unpacked layers, read-only and
//! shared, under a directory of the container's own, `upper`, that takes every write), the
//! image's user resolved in that root, and the capabilities a container's processes get.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use oci_spec::runtime::Capability;

use crate::JailError;

/// Capabilities a container's processes get (Docker's default set).
pub const CONTAINER_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Mounts the overlay at `target`: `lower` top layer first, then `upper` and its `work`
/// directory (made if missing).
pub fn mount_root(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), JailError> {
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir)?;
    }
    if lower.is_empty() {
        return Err(JailError::Invalid("the image has no layers".into()));
    }
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let data = format!("lowerdir={},upperdir={},workdir={}", lowers.join(":"), upper.display(), work.display());
    if data.len() >= 4000 {
        return Err(JailError::Invalid(format!("the image has too many layers ({}) to stack here", lower.len())));
    }
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(data.as_str()))
        .map_err(|e| JailError::Io(std::io::Error::other(format!("mounting the overlay root at {}: {e}", target.display()))))
}

/// Unmounts an overlay root (lazily, in case something still holds it).
pub fn unmount_root(target: &Path) {
    let _ = umount2(target, MntFlags::MNT_DETACH);
}

/// `uid[:gid]` or `name[:group]` resolved in the image's `/etc/passwd` and `/etc/group`.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), JailError> {
    if user.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    let (u, g) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, passwd.lines().find(|l| l.split(':').nth(2) == Some(u)).and_then(|l| l.split(':').nth(3)?.parse().ok())),
        Err(_) => {
            let line = passwd.lines().find(|l| l.split(':').next() == Some(u)).ok_or_else(|| JailError::Invalid(format!("user `{u}` is not in the image's /etc/passwd")))?;
            let f: Vec<&str> = line.split(':').collect();
            (f.get(2).and_then(|x| x.parse().ok()).unwrap_or(0), f.get(3).and_then(|x| x.parse().ok()))
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .find(|l| l.split(':').next() == Some(g))
                .and_then(|l| l.split(':').nth(2)?.parse().ok())
                .ok_or_else(|| JailError::Invalid(format!("group `{g}` is not in the image's /etc/group")))?,
        },
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid, Vec::new()))
}

