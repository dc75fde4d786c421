//! Unpacking one layer (a tar stream) into its own directory, in the form overlayfs reads as a
//! lower layer: OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) become overlay whiteouts (a 0:0
//! character device, the `trusted.overlay.opaque` attribute).
//!
//! Nothing in a layer may leave its directory: every entry is written through `hangar-confine`
//! (names with `..` or a leading `/` are refused, no entry is written through a symlink, hard
//! links must name a regular file of the same layer, FIFOs are made but never opened, device
//! nodes are skipped). Symlinks themselves are kept as written: they are resolved inside the
//! container's root when it runs. Entries, bytes, depth and wall time are bounded ([`Limits`]).

use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use hangar_confine::{ConfineError, Tree};

use crate::ImageError;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// What an unpacked layer holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
}

/// Bounds on one tar stream.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most entries.
    pub entries: u64,
    /// Most bytes of file contents.
    pub bytes: u64,
    /// When the whole unpack must be done.
    pub deadline: Instant,
}

impl Limits {
    /// The limits of one layer or archive: a million entries, 64 GiB, and `time`.
    pub fn within(time: Duration) -> Limits {
        Limits { entries: 1_000_000, bytes: 64 << 30, deadline: Instant::now() + time }
    }
}

/// How entries that are not files, directories or links are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Specials {
    /// An image layer: FIFOs are made (inert, never opened here), device nodes are skipped
    /// (containers get their own /dev), whiteouts become overlay whiteouts.
    Layer,
    /// An import archive: only files, directories and links are kept; everything else, and
    /// whiteout names, are skipped.
    Archive,
}

/// A reader that stops at the deadline or past the byte limit.
struct Bounded<R> {
    inner: R,
    limits: Limits,
    read: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() > self.limits.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "it took longer than allowed"));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limits.bytes.saturating_add(1 << 20) {
            return Err(io::Error::other(format!("it is larger than {} bytes", self.limits.bytes)));
        }
        Ok(n)
    }
}

/// Unpacks the tar stream `layer` into `root` (an empty directory Hangar made). `layer_name`
/// names the layer in errors.
pub fn unpack<R: Read>(layer: R, root: &Path, layer_name: &str, specials: Specials, limits: Limits) -> Result<Unpacked, ImageError> {
    let bad = |message: String| ImageError::BadLayer { layer: layer_name.to_string(), message };
    let confined = |e: ConfineError| bad(e.to_string());
    let tree = Tree::open(root)?;
    let mut archive = tar::Archive::new(Bounded { inner: layer, limits, read: 0 });
    let mut done = Unpacked::default();
    let entries = archive.entries().map_err(|e| bad(format!("reading the tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading the tar stream: {e}")))?;
        done.entries += 1;
        if done.entries > limits.entries {
            return Err(bad(format!("it has more than {} entries", limits.entries)));
        }
        if Instant::now() > limits.deadline {
            return Err(bad("unpacking it took longer than allowed".into()));
        }
        let raw = entry.path().map_err(|e| bad(format!("an entry has an unreadable name: {e}")))?.into_owned();
        let rel = hangar_confine::clean(&raw).map_err(confined)?;
        if rel.as_os_str().is_empty() {
            continue; // the root itself ("./")
        }
        let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let kind = header.entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName | tar::EntryType::GNULongLink) {
            continue;
        }
        let io = |what: &str, e: io::Error| bad(format!("{what} `{}`: {e}", rel.display()));

        if let Some(hidden) = file_name.strip_prefix(WHITEOUT) {
            if specials == Specials::Archive {
                continue;
            }
            if file_name == OPAQUE {
                match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(dir) => {
                        let dir = tree.entry(dir, true).map_err(confined)?;
                        if dir.kind().map_err(confined)? != Some(rustix::fs::FileType::Directory) {
                            dir.create_dir(0o755).map_err(confined)?;
                        }
                        dir.set_dir_xattr("trusted.overlay.opaque", b"y").map_err(confined)?
                    }
                    None => tree.set_root_xattr("trusted.overlay.opaque", b"y").map_err(confined)?,
                }
                continue;
            }
            if hidden.is_empty() {
                return Err(bad(format!("entry `{}` is a whiteout of nothing", rel.display())));
            }
            let target = tree.entry(&rel.with_file_name(hidden), true).map_err(confined)?;
            target.clear().map_err(confined)?;
            target.whiteout().map_err(confined)?;
            continue;
        }

        let at = tree.entry(&rel, true).map_err(confined)?;
        match kind {
            tar::EntryType::Directory => at.create_dir(mode).map_err(confined)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                at.clear().map_err(confined)?;
                let mut file = at.create_file(0o600).map_err(confined)?;
                done.bytes += io::copy(&mut entry, &mut file).map_err(|e| io("writing", e))?;
                if done.bytes > limits.bytes {
                    return Err(bad(format!("it unpacks to more than {} bytes", limits.bytes)));
                }
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| bad(format!("entry `{}`: unreadable link target: {e}", rel.display())))?;
                let Some(target) = target else {
                    return Err(bad(format!("symlink `{}` has no target", rel.display())));
                };
                at.clear().map_err(confined)?;
                at.symlink(&target).map_err(confined)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name().map_err(|e| bad(format!("entry `{}`: unreadable link target: {e}", rel.display())))?;
                let Some(target) = target else {
                    return Err(bad(format!("hard link `{}` has no target", rel.display())));
                };
                // The target must be a regular file this layer already wrote, reached without
                // passing through a symlink.
                let source = tree.entry(&target, false).map_err(|e| bad(format!("hard link `{}`: {e}", rel.display())))?;
                if source.path() != at.path() {
                    at.clear().map_err(confined)?;
                    at.hard_link_to(&source).map_err(confined)?;
                }
                continue;
            }
            tar::EntryType::Fifo if specials == Specials::Layer => {
                at.clear().map_err(confined)?;
                at.fifo(mode).map_err(confined)?;
            }
            // Containers get their own /dev; device nodes in layers are not needed and not
            // kept, and an import archive holds only files.
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => continue,
            other => {
                return Err(bad(format!("entry `{}` has an unsupported type {other:?}", rel.display())));
            }
        }
        // Owners as in the image (the container's root is the host's root here); chown clears
        // set-id bits, so the mode comes after it.
        let _ = at.set_owner(uid as u32, gid as u32);
        at.set_mode(mode).map_err(confined)?;
        if kind != tar::EntryType::Symlink
            && let Ok(mtime) = header.mtime()
        {
            let _ = at.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

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
        let got = unpack(&data[..], dir.path(), "l1", Specials::Layer, Limits::within(Duration::from_secs(10))).unwrap();
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
            (
                "through a symlink",
                layer(|b| {
                    link(b, tar::EntryType::Symlink, "etc", "/etc");
                    file(b, "etc/evil", b"x");
                }),
            ),
            (
                "through a relative symlink",
                layer(|b| {
                    link(b, tar::EntryType::Symlink, "up", "../../../../..");
                    file(b, "up/evil", b"x");
                }),
            ),
            ("hard link out", layer(|b| link(b, tar::EntryType::Link, "shadow", "../../../etc/shadow"))),
            ("hard link absolute", layer(|b| link(b, tar::EntryType::Link, "shadow", "/etc/shadow"))),
            (
                "hard link through a symlink",
                layer(|b| {
                    link(b, tar::EntryType::Symlink, "e", "/etc");
                    link(b, tar::EntryType::Link, "shadow", "e/shadow");
                }),
            ),
        ] {
            let outer = tempfile::tempdir().unwrap();
            let root = outer.path().join("root");
            fs::create_dir(&root).unwrap();
            let err = unpack(&data[..], &root, "l1", Specials::Layer, Limits::within(Duration::from_secs(10))).expect_err(what);
            assert!(matches!(err, ImageError::BadLayer { .. }), "{what}: {err}");
            assert!(!outer.path().join("evil").exists() && !Path::new("/evil").exists(), "{what} wrote outside");
        }
    }
}
