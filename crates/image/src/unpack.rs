//! Unpacking one layer (a tar stream) into its own directory, in the form overlayfs reads as a
//! lower layer: OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) become overlay whiteouts (a 0:0
//! character device, the `trusted.overlay.opaque` attribute).
//!
//! Nothing in a layer may leave its directory: entry names with `..` or a leading `/` are
//! refused, no entry is written through a symlink (each parent must be a real directory made by
//! this layer), and hard links must name a regular file of the same layer. Symlinks themselves
//! are kept as written: they are resolved inside the container's root when it runs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::ImageError;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// What an unpacked layer holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
}

/// The entry name as a relative path of normal components, or why it is refused.
fn clean(name: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("entry `{}` climbs out of the layer with `..`", name.display())),
            Component::RootDir | Component::Prefix(_) => return Err(format!("entry `{}` is an absolute path", name.display())),
        }
    }
    Ok(out)
}

/// Makes `rel`'s parent directories under `root`, refusing any that exists as something other
/// than a real directory (a symlink would carry later writes out of the layer).
fn parents(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut dir = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(format!("entry `{}` would be written through `{}`, which is not a directory", rel.display(), dir.strip_prefix(root).unwrap_or(&dir).display())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(|e| format!("creating `{}`: {e}", dir.display()))?;
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
                }
                Err(e) => return Err(format!("reading `{}`: {e}", dir.display())),
            }
        }
    }
    Ok(root.join(rel))
}

/// Removes whatever `path` is (a file, a symlink, a tree), if anything.
fn clear(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn whiteout(path: &Path) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    clear(path)?;
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io::Error::from)
}

fn opaque(dir: &Path) -> io::Result<()> {
    rustix::fs::setxattr(dir, "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty()).map_err(io::Error::from)
}

/// Unpacks the tar stream `layer` into `root` (an empty directory). `layer_name` names the layer
/// in errors.
pub fn unpack<R: Read>(layer: R, root: &Path, layer_name: &str) -> Result<Unpacked, ImageError> {
    let bad = |message: String| ImageError::BadLayer { layer: layer_name.to_string(), message };
    let mut archive = tar::Archive::new(layer);
    let mut done = Unpacked::default();
    let entries = archive.entries().map_err(|e| bad(format!("reading the tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading the tar stream: {e}")))?;
        let raw = entry.path().map_err(|e| bad(format!("an entry has an unreadable name: {e}")))?.into_owned();
        let rel = clean(&raw).map_err(&bad)?;
        if rel.as_os_str().is_empty() {
            continue; // the root itself ("./")
        }
        let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = parents(root, &rel).map_err(&bad)?;
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let io = |what: &str, e: io::Error| bad(format!("{what} `{}`: {e}", rel.display()));
        done.entries += 1;

        if file_name == OPAQUE {
            let dir = path.parent().unwrap_or(root);
            opaque(dir).map_err(|e| io("marking opaque", e))?;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() {
                return Err(bad(format!("entry `{}` is a whiteout of nothing", rel.display())));
            }
            whiteout(&path.with_file_name(hidden)).map_err(|e| io("writing the whiteout", e))?;
            continue;
        }

        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        clear(&path).map_err(|e| io("replacing", e))?;
                        fs::create_dir(&path).map_err(|e| io("creating", e))?;
                    }
                    Err(_) => fs::create_dir(&path).map_err(|e| io("creating", e))?,
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| io("setting the mode of", e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                clear(&path).map_err(|e| io("replacing", e))?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| io("creating", e))?;
                done.bytes += io::copy(&mut entry, &mut file).map_err(|e| io("writing", e))?;
                file.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| io("setting the mode of", e))?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| bad(format!("entry `{}`: unreadable link target: {e}", rel.display())))?;
                let Some(target) = target else { return Err(bad(format!("symlink `{}` has no target", rel.display()))) };
                clear(&path).map_err(|e| io("replacing", e))?;
                std::os::unix::fs::symlink(&*target, &path).map_err(|e| io("creating the symlink", e))?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name().map_err(|e| bad(format!("entry `{}`: unreadable link target: {e}", rel.display())))?;
                let Some(target) = target else { return Err(bad(format!("hard link `{}` has no target", rel.display()))) };
                let target_rel = clean(&target).map_err(|m| bad(format!("hard link `{}`: {m}", rel.display())))?;
                let source = root.join(&target_rel);
                // The target must be a regular file this layer already wrote, reached without
                // passing through a symlink.
                let inside = parents_are_dirs(root, &target_rel) && fs::symlink_metadata(&source).is_ok_and(|m| m.is_file());
                if !inside {
                    return Err(bad(format!("hard link `{}` points at `{}`, which is not a file of this layer", rel.display(), target.display())));
                }
                if source != path {
                    clear(&path).map_err(|e| io("replacing", e))?;
                    fs::hard_link(&source, &path).map_err(|e| io("linking", e))?;
                }
                continue;
            }
            tar::EntryType::Fifo => {
                clear(&path).map_err(|e| io("replacing", e))?;
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(mode)).map_err(|e| io("creating the fifo", e.into()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                // Containers get their own /dev; device nodes in layers are not needed and not kept.
                continue;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName | tar::EntryType::GNULongLink => continue,
            other => return Err(bad(format!("entry `{}` has an unsupported type {other:?}", rel.display()))),
        }
        // Owners as in the image (the container's root is the host's root here).
        let _ = std::os::unix::fs::lchown(&path, Some(uid as u32), Some(gid as u32));
        if kind != tar::EntryType::Symlink && mode & 0o7000 != 0 {
            // chown clears set-id bits; put them back.
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode));
        }
        if kind != tar::EntryType::Symlink
            && let Ok(mtime) = header.mtime()
        {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
            if let Ok(f) = File::options().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(&path) {
                let _ = f.set_modified(t);
            }
        }
    }
    Ok(done)
}

fn parents_are_dirs(root: &Path, rel: &Path) -> bool {
    let mut dir = root.to_path_buf();
    rel.parent().is_none_or(|p| {
        p.components().all(|c| {
            dir.push(c);
            fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, body: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, body).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(kind);
        b.append_link(&mut h, name, target).unwrap();
    }

    /// A raw tar header with any name (the builder refuses `..` itself).
    fn raw_file(name: &str) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend([0u8; 1024]);
        out
    }

    #[test]
    fn files_dirs_links_and_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let data = layer(|b| {
            file(b, "etc/hello.txt", b"hi");
            link(b, tar::EntryType::Symlink, "bin", "usr/bin");
            link(b, tar::EntryType::Symlink, "etc/abs", "/etc/shadow");
            link(b, tar::EntryType::Link, "etc/again.txt", "etc/hello.txt");
            file(b, "var/.wh.gone", b"");
            file(b, "opt/.wh..wh..opq", b"");
        });
        let got = unpack(&data[..], dir.path(), "l1").unwrap();
        assert_eq!(got.bytes, 2);
        assert_eq!(fs::read_to_string(dir.path().join("etc/again.txt")).unwrap(), "hi");
        assert_eq!(fs::read_link(dir.path().join("etc/abs")).unwrap(), Path::new("/etc/shadow"));
        let wh = fs::symlink_metadata(dir.path().join("var/gone")).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(wh.file_type().is_char_device());
        let mut buf = [0u8; 4];
        let n = rustix::fs::getxattr(dir.path().join("opt"), "trusted.overlay.opaque", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"y");
    }

    #[test]
    fn escapes_are_refused() {
        for (what, data) in [
            ("dotdot", raw_file("../evil")),
            ("absolute", raw_file("/evil")),
            ("through a symlink", layer(|b| {
                link(b, tar::EntryType::Symlink, "etc", "/etc");
                file(b, "etc/evil", b"x");
            })),
            ("through a relative symlink", layer(|b| {
                link(b, tar::EntryType::Symlink, "up", "../../../../..");
                file(b, "up/evil", b"x");
            })),
            ("hard link out", layer(|b| link(b, tar::EntryType::Link, "shadow", "../../../etc/shadow"))),
            ("hard link absolute", layer(|b| link(b, tar::EntryType::Link, "shadow", "/etc/shadow"))),
            ("hard link through a symlink", layer(|b| {
                link(b, tar::EntryType::Symlink, "e", "/etc");
                link(b, tar::EntryType::Link, "shadow", "e/shadow");
            })),
        ] {
            let outer = tempfile::tempdir().unwrap();
            let root = outer.path().join("root");
            fs::create_dir(&root).unwrap();
            let err = unpack(&data[..], &root, "l1").expect_err(what);
            assert!(matches!(err, ImageError::BadLayer { .. }), "{what}: {err}");
            assert!(!outer.path().join("evil").exists() && !Path::new("/evil").exists(), "{what} wrote outside");
        }
    }
}
