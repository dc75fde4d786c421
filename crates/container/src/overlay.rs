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

/// Largest `/etc/passwd` or `/etc/group` read from an image.
const MAX_ACCOUNTS_FILE: u64 = 1 << 20;

/// An image's account file, read inside its root (a symlink resolves as it would in the
/// container, never to the host); a missing one is empty, anything but a regular file is refused.
fn accounts_file(root: &hangar_confine::Tree, rel: &str) -> Result<String, JailError> {
    match root.read_in_root(rel, MAX_ACCOUNTS_FILE) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.is_not_found() => Ok(String::new()),
        Err(e) => Err(JailError::Invalid(format!("the image's /{rel} cannot be read: {e}; fix the image or give a numeric user (uid:gid)"))),
    }
}

/// `uid[:gid]` or `name[:group]` resolved in the image's `/etc/passwd` and `/etc/group`, read
/// confined to `rootfs`. A user or group named but not found, or whose id does not parse, is
/// an error (never uid 0 by accident).
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), JailError> {
    if user.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    let root = hangar_confine::Tree::open(rootfs)?;
    let (u, g) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    // Two numbers need no account file (and so cannot fail on one).
    if let (Ok(uid), Some(Ok(gid))) = (u.parse::<u32>(), g.map(str::parse::<u32>)) {
        return Ok((uid, gid, Vec::new()));
    }
    let passwd = accounts_file(&root, "etc/passwd")?;
    let field = |line: &str, i: usize| line.split(':').nth(i).map(str::to_string);
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, passwd.lines().find(|l| field(l, 2).as_deref() == Some(u)).and_then(|l| field(l, 3)?.parse().ok())),
        Err(_) => {
            let line = passwd
                .lines()
                .find(|l| field(l, 0).as_deref() == Some(u))
                .ok_or_else(|| JailError::Invalid(format!("user `{u}` is not in the image's /etc/passwd")))?;
            let uid = field(line, 2).and_then(|x| x.parse().ok()).ok_or_else(|| {
                JailError::Invalid(format!("user `{u}` has no valid uid in the image's /etc/passwd; fix the image or give a numeric user (uid:gid)"))
            })?;
            let gid = field(line, 3).and_then(|x| x.parse().ok()).ok_or_else(|| {
                JailError::Invalid(format!("user `{u}` has no valid gid in the image's /etc/passwd; fix the image or give a numeric user (uid:gid)"))
            })?;
            (uid, Some(gid))
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => accounts_file(&root, "etc/group")?
                .lines()
                .find(|l| field(l, 0).as_deref() == Some(g))
                .and_then(|l| field(l, 2)?.parse().ok())
                .ok_or_else(|| JailError::Invalid(format!("group `{g}` is not in the image's /etc/group (or has no valid gid)")))?,
        },
        // A numeric uid that the image does not list runs with gid 0, as Docker does.
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_inside_the_image_and_bad_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nbad:x:oops:0::/:/bin/sh\nweb:x:33:34::/:/bin/sh\n").unwrap();
        assert_eq!(resolve_user(root, "web").unwrap(), (33, 34, vec![]));
        assert!(resolve_user(root, "bad").unwrap_err().to_string().contains("no valid uid"));
        assert!(resolve_user(root, "ghost").is_err());
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        // Links to the host's files or devices resolve inside the image instead.
        std::os::unix::fs::symlink("/etc/shadow", root.join("etc/passwd")).unwrap();
        assert!(resolve_user(root, "root").unwrap_err().to_string().contains("not in the image"));
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("etc/passwd")).unwrap();
        assert!(resolve_user(root, "root").is_err());
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(&root.join("etc/passwd"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = resolve_user(root, "root").unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        assert_eq!(resolve_user(root, "1000:50").unwrap(), (1000, 50, vec![]));
    }
}
