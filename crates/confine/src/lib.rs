//! Confined access to file trees that hold untrusted files (function zips, image layers, import
//! archives, image roots): the one way Hangar touches them.
//!
//! A [`Tree`] is a directory handle (cap-std's `Dir`, which resolves beneath it with `openat2`
//! on this kernel). Writers walk to an [`Entry`]'s parent one component at a time without
//! following symlinks (a parent that is a symlink or not a directory is refused), then act on
//! the entry's name alone: files are created `O_EXCL|O_NOFOLLOW`, owners, modes and times are
//! set without following a link, and no special file is ever opened (FIFOs and whiteouts are
//! made with `mknodat`, inert). Readers either resolve as a chroot would ([`Tree::read_in_root`],
//! `RESOLVE_IN_ROOT`: an absolute symlink or `..` stays inside) or follow no link at all
//! ([`Tree::open_no_links`]); both refuse FIFOs, sockets and devices without blocking on them.
//! Paths are taken apart by [`clean`], which refuses absolute paths, `..` and depth past a
//! limit. Errors name the path inside the tree, never a host path.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use cap_fs_ext::DirExt as _;
use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Most directories an entry may be nested in.
pub const MAX_DEPTH: usize = 128;

/// Why a confined operation was refused or failed. Paths are inside the tree.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// An absolute path or one with `..`.
    #[error("`{path}` points outside (an absolute path or `..`); every path must stay inside")]
    Outside { path: String },
    /// A parent on the way is a symlink or not a directory.
    #[error("`{path}` would be reached through `{through}`, which is a symlink or not a directory; nothing is written or read through a link")]
    Through { path: String, through: String },
    /// A link where none may be followed.
    #[error("`{path}` is reached through a symbolic link, which is not followed here")]
    Link { path: String },
    /// Not a regular file where one is needed.
    #[error("`{path}` is a {kind}, not a regular file")]
    NotRegular { path: String, kind: &'static str },
    /// A hard link whose target is not a regular file already in the tree.
    #[error("hard link `{path}` points at `{target}`, which is not a regular file inside")]
    BadHardLink { path: String, target: String },
    /// More than a limit of bytes.
    #[error("`{path}` is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    /// Nested too deep.
    #[error("`{path}` is nested more than {limit} directories deep")]
    TooDeep { path: String, limit: usize },
    /// The file system said no.
    #[error("`{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl ConfineError {
    /// Whether the path (or a parent) simply does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConfineError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ConfineError + '_ {
    move |source| ConfineError::Io { path: path.display().to_string(), source }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// `name` as a relative path of normal components (`.` dropped), refusing absolute paths, `..`
/// and nesting deeper than [`MAX_DEPTH`]. An empty result is the tree's root itself.
pub fn clean(name: &Path) -> Result<PathBuf, ConfineError> {
    let mut out = PathBuf::new();
    let mut depth = 0;
    for c in name.components() {
        match c {
            Component::Normal(p) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ConfineError::TooDeep { path: name.display().to_string(), limit: MAX_DEPTH });
                }
                out.push(p)
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ConfineError::Outside { path: name.display().to_string() });
            }
        }
    }
    Ok(out)
}

/// What kind of file a mode is, in words.
fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// A directory handle everything below which is reached confined.
#[derive(Debug)]
pub struct Tree {
    root: Dir,
}

impl Tree {
    /// Opens the tree at `path` (a directory Hangar itself chose: the data dir's own layout).
    pub fn open(path: &Path) -> io::Result<Tree> {
        Ok(Tree { root: Dir::open_ambient_dir(path, cap_std::ambient_authority())? })
    }

    /// The entry at `rel` (taken apart by [`clean`]; not the root itself). With `make_parents`
    /// missing parents are made (mode 0755); a parent that exists as a symlink or anything but a
    /// directory is refused either way.
    pub fn entry(&self, rel: &Path, make_parents: bool) -> Result<Entry, ConfineError> {
        let rel = clean(rel)?;
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            return Err(ConfineError::Outside { path: rel.display().to_string() });
        };
        let mut dir = self.root.try_clone().map_err(io_err(&rel))?;
        let mut walked = PathBuf::new();
        for c in rel.parent().into_iter().flat_map(Path::components) {
            walked.push(c);
            dir = match dir.open_dir_nofollow(c) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound && make_parents => {
                    dir.create_dir(c).map_err(io_err(&walked))?;
                    rustix::fs::chmodat(&dir, c, Mode::from_raw_mode(0o755), AtFlags::empty()).map_err(|e| io_err(&walked)(errno(e)))?;
                    dir.open_dir_nofollow(c).map_err(io_err(&walked))?
                }
                Err(e) if e.raw_os_error().is_some_and(|n| n == rustix::io::Errno::LOOP.raw_os_error() || n == rustix::io::Errno::NOTDIR.raw_os_error()) => {
                    return Err(ConfineError::Through { path: rel.display().to_string(), through: walked.display().to_string() });
                }
                Err(e) => return Err(io_err(&walked)(e)),
            };
        }
        Ok(Entry { dir, name, path: rel })
    }

    /// Reads the regular file at `rel` as a process chrooted into the tree would find it
    /// (`RESOLVE_IN_ROOT`: symlinks are followed, but absolute targets and `..` stay inside),
    /// at most `limit` bytes. A FIFO, socket or device is refused without being opened.
    pub fn read_in_root(&self, rel: &str, limit: u64) -> Result<Vec<u8>, ConfineError> {
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        self.read_with(Path::new(rel), how, limit)
    }

    /// Opens the regular file at `rel` without following any symlink on the way or at the end
    /// (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`). A FIFO, socket or device is refused without
    /// being opened.
    pub fn open_no_links(&self, rel: &Path) -> Result<File, ConfineError> {
        let rel = clean(rel)?;
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        self.open_regular(&rel, how)
    }

    /// [`Tree::open_no_links`] and read it whole, at most `limit` bytes.
    pub fn read_no_links(&self, rel: &Path, limit: u64) -> Result<Vec<u8>, ConfineError> {
        let rel = clean(rel)?;
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        self.read_with(&rel, how, limit)
    }

    /// Whether a regular file is at `rel`, reached without following a link.
    pub fn has_file(&self, rel: &Path) -> bool {
        self.open_no_links(rel).is_ok()
    }

    fn read_with(&self, rel: &Path, how: ResolveFlags, limit: u64) -> Result<Vec<u8>, ConfineError> {
        let file = self.open_regular(rel, how)?;
        let mut out = Vec::new();
        file.take(limit.saturating_add(1)).read_to_end(&mut out).map_err(io_err(rel))?;
        if out.len() as u64 > limit {
            return Err(ConfineError::TooLarge { path: rel.display().to_string(), limit });
        }
        Ok(out)
    }

    /// Resolves `rel` to an `O_PATH` handle (which opens nothing), checks it is a regular file,
    /// and only then opens that same inode for reading.
    fn open_regular(&self, rel: &Path, how: ResolveFlags) -> Result<File, ConfineError> {
        let path = rel.display().to_string();
        let pinned: OwnedFd = rustix::fs::openat2(&self.root, rel, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), how).map_err(|e| {
            if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::XDEV { ConfineError::Link { path: path.clone() } } else { io_err(rel)(errno(e)) }
        })?;
        let stat = rustix::fs::fstat(&pinned).map_err(|e| io_err(rel)(errno(e)))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind == FileType::Symlink {
            return Err(ConfineError::Link { path });
        }
        if kind != FileType::RegularFile {
            return Err(ConfineError::NotRegular { path, kind: kind_name(kind) });
        }
        // Reopening the pinned inode through procfs: the file is the one checked above.
        let fd_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pinned));
        let fd = rustix::fs::open(fd_path.as_str(), OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK, Mode::empty())
            .map_err(|e| io_err(rel)(errno(e)))?;
        Ok(File::from(fd))
    }
}

/// One name in one directory of a [`Tree`], reached without links; every operation acts on
/// the name itself and follows no symlink there.
#[derive(Debug)]
pub struct Entry {
    dir: Dir,
    name: OsString,
    path: PathBuf,
}

impl Entry {
    /// The path inside the tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self) -> impl FnOnce(io::Error) -> ConfineError + '_ {
        io_err(&self.path)
    }

    fn fail_errno(&self) -> impl FnOnce(rustix::io::Errno) -> ConfineError + '_ {
        |e| io_err(&self.path)(errno(e))
    }

    /// What is there now (not following a symlink), if anything.
    pub fn kind(&self) -> Result<Option<FileType>, ConfineError> {
        match rustix::fs::statat(&self.dir, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(self.fail_errno()(e)),
        }
    }

    /// Removes whatever is there (a file, a link, a whole directory), if anything.
    pub fn clear(&self) -> Result<(), ConfineError> {
        match self.kind()? {
            None => Ok(()),
            Some(FileType::Directory) => self.dir.remove_dir_all(&self.name).map_err(self.fail()),
            Some(_) => rustix::fs::unlinkat(&self.dir, &self.name, AtFlags::empty()).map_err(self.fail_errno()),
        }
    }

    /// Creates a new regular file (nothing may be there) with `mode`.
    pub fn create_file(&self, mode: u32) -> Result<File, ConfineError> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = rustix::fs::openat(&self.dir, &self.name, flags, Mode::from_raw_mode(0o600)).map_err(self.fail_errno())?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(self.fail_errno())?;
        Ok(File::from(fd))
    }

    /// Makes a directory with `mode`; one already there is kept (its mode set), anything else
    /// there is replaced.
    pub fn create_dir(&self, mode: u32) -> Result<(), ConfineError> {
        match self.kind()? {
            Some(FileType::Directory) => {}
            Some(_) => {
                self.clear()?;
                self.dir.create_dir(&self.name).map_err(self.fail())?
            }
            None => self.dir.create_dir(&self.name).map_err(self.fail())?,
        }
        self.set_mode(mode)
    }

    /// Makes a symlink to `target`, which is stored as written and never followed here.
    pub fn symlink(&self, target: &Path) -> Result<(), ConfineError> {
        self.dir.symlink_contents(target, &self.name).map_err(self.fail())
    }

    /// Makes this name a hard link to `source`, which must be a regular file (not a link).
    pub fn hard_link_to(&self, source: &Entry) -> Result<(), ConfineError> {
        if source.kind()? != Some(FileType::RegularFile) {
            return Err(ConfineError::BadHardLink { path: self.path.display().to_string(), target: source.path.display().to_string() });
        }
        rustix::fs::linkat(&source.dir, &source.name, &self.dir, &self.name, AtFlags::empty()).map_err(self.fail_errno())
    }

    /// Makes an overlayfs whiteout: a character device 0:0, which nothing opens.
    pub fn whiteout(&self) -> Result<(), ConfineError> {
        rustix::fs::mknodat(&self.dir, &self.name, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0)).map_err(self.fail_errno())
    }

    /// Makes a FIFO with `mode`; it is never opened here.
    pub fn fifo(&self, mode: u32) -> Result<(), ConfineError> {
        rustix::fs::mknodat(&self.dir, &self.name, FileType::Fifo, Mode::from_raw_mode(mode & 0o777), 0).map_err(self.fail_errno())?;
        self.set_mode(mode)
    }

    /// Sets an extended attribute on the directory at this name.
    pub fn set_dir_xattr(&self, attr: &str, value: &[u8]) -> Result<(), ConfineError> {
        set_dir_xattr(&self.dir, &self.name, attr, value).map_err(self.fail_errno())
    }

    /// Sets the owner, of a symlink itself where this is one.
    pub fn set_owner(&self, uid: u32, gid: u32) -> Result<(), ConfineError> {
        let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
        rustix::fs::chownat(&self.dir, &self.name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW).map_err(self.fail_errno())
    }

    /// Sets the mode (with set-id bits); symlinks have none and are left alone.
    pub fn set_mode(&self, mode: u32) -> Result<(), ConfineError> {
        if self.kind()? == Some(FileType::Symlink) {
            return Ok(());
        }
        // Not a symlink, and nothing else writes in this directory: the name is the entry.
        rustix::fs::chmodat(&self.dir, &self.name, Mode::from_raw_mode(mode & 0o7777), AtFlags::empty()).map_err(self.fail_errno())
    }

    /// Sets the modification time without opening the file or following a link.
    pub fn set_modified(&self, t: SystemTime) -> Result<(), ConfineError> {
        let t = cap_std::time::SystemTime::from_std(t);
        self.dir.set_symlink_times(&self.name, None, Some(cap_fs_ext::SystemTimeSpec::Absolute(t))).map_err(self.fail())
    }
}

/// Opens the directory `name` in `dir` for real (handles here may be `O_PATH`, which take no
/// attributes) without following a link, and sets `attr` on it.
fn set_dir_xattr(dir: &Dir, name: &OsStr, attr: &str, value: &[u8]) -> rustix::io::Result<()> {
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    rustix::fs::fsetxattr(&fd, attr, value, rustix::fs::XattrFlags::empty())
}

impl Tree {
    /// Sets an extended attribute on the tree's root directory itself.
    pub fn set_root_xattr(&self, attr: &str, value: &[u8]) -> Result<(), ConfineError> {
        set_dir_xattr(&self.root, OsStr::new("."), attr, value).map_err(|e| io_err(Path::new("."))(errno(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tree() -> (tempfile::TempDir, PathBuf, Tree) {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let t = Tree::open(&root).unwrap();
        (outer, root, t)
    }

    #[test]
    fn clean_refuses_ways_out_and_depth() {
        assert_eq!(clean(Path::new("./a/b/")).unwrap(), Path::new("a/b"));
        assert!(matches!(clean(Path::new("a/../../x")), Err(ConfineError::Outside { .. })));
        assert!(matches!(clean(Path::new("/etc/x")), Err(ConfineError::Outside { .. })));
        let deep = "d/".repeat(MAX_DEPTH + 1);
        assert!(matches!(clean(Path::new(&deep)), Err(ConfineError::TooDeep { .. })));
    }

    #[test]
    fn writes_never_go_through_a_link() {
        let (outer, root, t) = tree();
        std::os::unix::fs::symlink(outer.path(), root.join("out")).unwrap();
        std::os::unix::fs::symlink(".", root.join("s1")).unwrap();
        let err = t.entry(Path::new("out/evil"), true).unwrap_err();
        assert!(matches!(err, ConfineError::Through { .. }), "{err}");
        let err = t.entry(Path::new("s1/evil"), true).unwrap_err();
        assert!(matches!(err, ConfineError::Through { .. }), "{err}");
        // A symlink at the name itself is not followed by a create: it is there, so EEXIST.
        std::os::unix::fs::symlink(outer.path().join("victim"), root.join("f")).unwrap();
        assert!(t.entry(Path::new("f"), true).unwrap().create_file(0o644).is_err());
        assert!(!outer.path().join("victim").exists());
        // Nor by owner, mode or time changes.
        let f = t.entry(Path::new("f"), false).unwrap();
        f.set_owner(1234, 1234).unwrap();
        f.set_mode(0o777).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        assert!(!outer.path().join("victim").exists());
        assert_eq!(std::fs::read_dir(outer.path()).unwrap().count(), 1, "nothing but the root beside the tree");
    }

    #[test]
    fn files_dirs_links_and_specials_are_made_inert() {
        let (_outer, root, t) = tree();
        let mut f = t.entry(Path::new("a/b/file"), true).unwrap().create_file(0o4755).unwrap();
        f.write_all(b"hi").unwrap();
        let e = t.entry(Path::new("a/b/file"), false).unwrap();
        assert_eq!(e.kind().unwrap(), Some(FileType::RegularFile));
        t.entry(Path::new("a/again"), false).unwrap().hard_link_to(&e).unwrap();
        assert_eq!(std::fs::read(root.join("a/again")).unwrap(), b"hi");
        t.entry(Path::new("a/fifo"), false).unwrap().fifo(0o644).unwrap();
        t.entry(Path::new("a/wh"), false).unwrap().whiteout().unwrap();
        t.entry(Path::new("a/abs"), false).unwrap().symlink(Path::new("/etc/shadow")).unwrap();
        let bad = t.entry(Path::new("a/l2"), false).unwrap().hard_link_to(&t.entry(Path::new("a/abs"), false).unwrap()).unwrap_err();
        assert!(matches!(bad, ConfineError::BadHardLink { .. }), "{bad}");
        // Reads refuse specials without blocking, and links where none may be followed.
        assert!(matches!(t.read_no_links(Path::new("a/fifo"), 10), Err(ConfineError::NotRegular { kind: "FIFO", .. })));
        assert!(matches!(t.read_in_root("a/wh", 10), Err(ConfineError::NotRegular { .. })));
        assert!(matches!(t.read_no_links(Path::new("a/abs"), 10), Err(ConfineError::Link { .. })));
        assert!(matches!(t.read_no_links(Path::new("a/b/file"), 1), Err(ConfineError::TooLarge { .. })));
        assert_eq!(t.read_no_links(Path::new("a/b/file"), 2).unwrap(), b"hi");
    }

    #[test]
    fn reading_in_root_resolves_like_a_chroot() {
        let (outer, root, t) = tree();
        std::fs::write(outer.path().join("secret"), "host").unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/passwd"), "inside").unwrap();
        std::os::unix::fs::symlink("/usr/lib/passwd", root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../secret", root.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("etc/zero")).unwrap();
        assert_eq!(t.read_in_root("etc/passwd", 100).unwrap(), b"inside");
        assert!(t.read_in_root("etc/up", 100).unwrap_err().is_not_found(), "`..` stops at the root");
        assert!(t.read_in_root("etc/zero", 100).unwrap_err().is_not_found(), "/dev/zero of the tree, not the host's");
        assert!(t.read_in_root("/../secret", 100).unwrap_err().is_not_found());
    }
}
