//! A sandbox's disk: a sparse ext4 image of its `disk_mb` in the data directory,
//! loop-mounted while the sandbox runs, holding the upper and work directories of its overlay
//! root. Whatever writes the sandbox's files (its commands or uploads) meets a hard limit:
//! `ENOSPC` inside, while the image's layers and the host's disk are untouched. Only the
//! blocks written take space on the host.

use std::path::Path;

use nix::mount::{MntFlags, umount2};

use crate::SandboxError;

async fn run(program: &str, args: &[&str], what: &str) -> Result<(), SandboxError> {
    let out = tokio::process::Command::new(program).args(args).stdin(std::process::Stdio::null()).output().await.map_err(|e| {
        SandboxError::Unavailable(format!("{what}: {program} could not run ({e}); sandboxes need e2fsprogs and util-linux (apt-get install e2fsprogs mount)"))
    })?;
    if !out.status.success() {
        return Err(SandboxError::Runtime(format!("{what}: {program} failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Makes an empty ext4 image of `mb` MiB at `image` (sparse: it takes almost nothing yet).
pub async fn create(image: &Path, mb: u32) -> Result<(), SandboxError> {
    let file = std::fs::File::create(image)?;
    file.set_len(u64::from(mb) << 20)?;
    drop(file);
    let path = image.display().to_string();
    // No blocks reserved for root (the sandbox's root should get all of it), 4 KiB blocks and
    // an inode per 16 KiB whatever the size, inode tables initialised lazily (milliseconds),
    // and no journal: it would take up to 64 MiB of the disk, and the disk is only ever
    // unmounted cleanly or left mounted in the host's kernel (a killed server); it protects
    // against a crash of the host, which the sandbox's processes do not survive either.
    run("mkfs.ext4", &["-q", "-F", "-m", "0", "-T", "default", "-O", "^has_journal", "-E", "lazy_itable_init=1", &path], "making the sandbox's disk").await
}

/// Mounts the image at `at` (made if missing; an earlier mount left there is undone first) and
/// makes the overlay's `upper` and `work` directories on it.
pub async fn mount(image: &Path, at: &Path) -> Result<(), SandboxError> {
    unmount(at);
    std::fs::create_dir_all(at)?;
    let (image, target) = (image.display().to_string(), at.display().to_string());
    run("mount", &["-t", "ext4", "-o", "loop,noatime,nodev,nosuid", &image, &target], "mounting the sandbox's disk").await?;
    for dir in ["upper", "work"] {
        std::fs::create_dir_all(at.join(dir))?;
    }
    Ok(())
}

/// Unmounts the disk at `at` if it is mounted (lazily, should something still hold it; the
/// loop device goes with the last user).
pub fn unmount(at: &Path) {
    let _ = umount2(at, MntFlags::MNT_DETACH);
}

/// Bytes the sandbox can still write on the disk mounted at `at`.
pub fn free_bytes(at: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(at).ok()?;
    Some(s.blocks_available() * s.fragment_size())
}

/// Bytes in use on the disk mounted at `at` (the filesystem's own structures included).
pub fn used_bytes(at: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(at).ok()?;
    Some((s.blocks() - s.blocks_free()) * s.fragment_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (mount) and e2fsprogs, like the sandboxes themselves.
    #[tokio::test]
    async fn writes_stop_at_the_disk_size() {
        let dir = tempfile::tempdir().unwrap();
        let (image, at) = (dir.path().join("disk.img"), dir.path().join("disk"));
        create(&image, 16).await.unwrap();
        assert!(std::fs::metadata(&image).unwrap().len() == 16 << 20);
        mount(&image, &at).await.unwrap();
        let free = free_bytes(&at).unwrap();
        assert!(free > 15 << 20 && free < 16 << 20, "most of the disk is usable: {free}");
        let err = std::fs::write(at.join("upper/big"), vec![0u8; 17 << 20]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
        std::fs::remove_file(at.join("upper/big")).unwrap();
        std::fs::write(at.join("upper/kept"), b"kept").unwrap();
        unmount(&at);
        assert!(!at.join("upper").exists(), "unmounted");
        mount(&image, &at).await.unwrap();
        assert_eq!(std::fs::read(at.join("upper/kept")).unwrap(), b"kept");
        unmount(&at);
    }
}
