//! A process function's code: a zip archive (as Lambda takes it), checked entry by entry and
//! unpacked once into a read-only directory named by the archive's digest.
//!
//! Entries that would land outside the directory (`..`, absolute paths, symlinks pointing
//! out), device files, and archives that unpack to more than [`MAX_UNPACKED_BYTES`] are
//! refused before anything is written; every write then goes through `hangar-confine`, so no
//! entry is ever written through a symlink (an earlier entry's or anyone's); a directory
//! appears under its final name only once complete.

use std::io::{Cursor, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use hangar_api::RuntimeKind;
use hangar_confine::Tree;
use hangar_runtime::RuntimeError;
use rustix::fs::FileType;

/// Largest unpacked code, like Lambda's 250 MB.
pub const MAX_UNPACKED_BYTES: u64 = 250 * 1024 * 1024;
/// Most entries in one archive.
pub const MAX_ENTRIES: usize = 50_000;

fn invalid(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidCode(msg.into())
}

/// Where a relative path lands, lexically, or `None` when it leaves the root.
fn inside(base: &Path, rel: &Path) -> Option<PathBuf> {
    let mut out = base.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// An entry's path inside the code directory, refusing every way out.
fn entry_path(name: &str) -> Result<PathBuf, RuntimeError> {
    let p = Path::new(name);
    if name.is_empty() || p.is_absolute() || name.contains('\\') || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid(format!("zip entry `{name}` points outside the code directory (absolute or `..`); rebuild the archive with relative paths")));
    }
    Ok(p.components().filter(|c| matches!(c, Component::Normal(_))).collect())
}

/// Checks `zip` and unpacks it into `dest` (which must not exist yet).
pub fn unpack(zip: &[u8], dest: &Path, kind: RuntimeKind) -> Result<(), RuntimeError> {
    let not_zip = |e: zip::result::ZipError| {
        invalid(format!("the code of a {kind} function is a zip archive, as for AWS Lambda ({e}); `hangar fn deploy --code DIR` zips a directory for you"))
    };
    let mut archive = zip::ZipArchive::new(Cursor::new(zip)).map_err(not_zip)?;
    if archive.len() > MAX_ENTRIES {
        return Err(invalid(format!("the archive has {} entries; at most {MAX_ENTRIES} are allowed", archive.len())));
    }
    // First pass: validate everything, so a bad archive writes nothing.
    let mut total = 0u64;
    let mut has_bootstrap = false;
    for i in 0..archive.len() {
        let f = archive.by_index(i).map_err(not_zip)?;
        let name = f.name().map_err(not_zip)?.into_owned();
        let rel = entry_path(&name)?;
        total = total.saturating_add(f.size());
        if total > MAX_UNPACKED_BYTES {
            return Err(invalid(format!("the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes (Lambda's limit is 250 MB)")));
        }
        let mode = f.unix_mode().unwrap_or(0o644);
        let file_type = mode & 0o170000;
        if f.is_symlink() {
            let mut target = String::new();
            drop(f);
            archive.by_index(i).map_err(not_zip)?.take(4096).read_to_string(&mut target).map_err(|e| invalid(format!("zip entry `{name}`: {e}")))?;
            let base = Path::new("/code");
            let lands = inside(base, rel.parent().unwrap_or(Path::new("")))
                .and_then(|dir| if Path::new(&target).is_absolute() { None } else { inside(&dir, Path::new(&target)) });
            if !lands.is_some_and(|p| p.starts_with(base)) {
                return Err(invalid(format!("zip entry `{name}` is a symlink to `{target}`, outside the code directory; symlinks must stay inside")));
            }
        } else if !f.is_dir() && file_type != 0 && file_type != 0o100000 {
            return Err(invalid(format!("zip entry `{name}` is not a regular file, directory or symlink")));
        } else if rel == Path::new("bootstrap") && !f.is_dir() {
            has_bootstrap = true;
        }
    }
    if kind == RuntimeKind::Provided && !has_bootstrap {
        return Err(invalid(
            "a provided function's archive needs an executable named `bootstrap` at its root (e.g. a binary built with the `lambda_runtime` crate)",
        ));
    }

    let parent = dest.parent().ok_or_else(|| RuntimeError::Internal("code directory has no parent".into()))?;
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".unpack-{}-{}", std::process::id(), rand_suffix()));
    let result = write_all(&mut archive, &tmp, kind);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.is_dir() => {
            // Another deploy of the same code won the race.
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e.into())
        }
    }
}

/// Fills the empty directory `dest` with `src`'s tree: hard links to its files (the same
/// read-only inodes, so nothing is copied; a plain copy where linking fails, e.g. across file
/// systems), the same directories with their modes, and the same symlinks. This is how a
/// prewarmed zygote's `/var/task`, bound before any code was known, gets a function's code.
pub fn link_tree(src: &Path, dest: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dest.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir(&to)?;
            link_tree(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::metadata(&from)?.permissions())?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
    h.finish()
}

fn write_all(archive: &mut zip::ZipArchive<Cursor<&[u8]>>, root: &Path, kind: RuntimeKind) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(root)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    let tree = Tree::open(root)?;
    let mut written = 0u64;
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).map_err(|e| invalid(format!("reading the archive: {e}")))?;
        let name = f.name().map_err(|e| invalid(format!("reading the archive: {e}")))?.into_owned();
        let rel = entry_path(&name)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let confined = |e: hangar_confine::ConfineError| invalid(format!("zip entry `{name}`: {e}"));
        let clash = || invalid(format!("zip entry `{name}` clashes with an earlier entry of the same name (a file, link or directory)"));
        let at = tree.entry(&rel, true).map_err(confined)?;
        let there = at.kind().map_err(confined)?;
        if f.is_dir() {
            match there {
                None => at.create_dir(0o755).map_err(confined)?,
                Some(FileType::Directory) => {}
                Some(_) => return Err(clash()),
            }
        } else if there.is_some() {
            return Err(clash());
        } else if f.is_symlink() {
            let mut target = String::new();
            (&mut f).take(4096).read_to_string(&mut target).map_err(|e| invalid(format!("zip entry `{name}`: {e}")))?;
            at.symlink(Path::new(&target)).map_err(confined)?;
        } else {
            let executable = f.unix_mode().is_some_and(|m| m & 0o111 != 0) || (kind == RuntimeKind::Provided && rel == Path::new("bootstrap"));
            let out = at.create_file(if executable { 0o755 } else { 0o644 }).map_err(confined)?;
            // The sizes the archive declares were checked; the bytes it really holds are counted.
            let left = MAX_UNPACKED_BYTES - written;
            written += std::io::copy(&mut (&mut f).take(left + 1), &mut { out }).map_err(|e| invalid(format!("zip entry `{name}`: {e}")))?;
            if written > MAX_UNPACKED_BYTES {
                return Err(invalid(format!("the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes (Lambda's limit is 250 MB)")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn zip_of(entries: &[(&str, &str, Option<&str>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, body, link) in entries {
            match link {
                Some(target) => w.add_symlink(*name, *target, SimpleFileOptions::default()).unwrap(),
                None if name.ends_with('/') => w.add_directory(*name, SimpleFileOptions::default()).unwrap(),
                None => {
                    w.start_file(*name, SimpleFileOptions::default().unix_permissions(0o755)).unwrap();
                    w.write_all(body.as_bytes()).unwrap();
                }
            }
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn a_good_archive_unpacks_with_modes_and_inner_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("code");
        let z = zip_of(&[("app.py", "x", None), ("lib/", "", None), ("lib/m.py", "y", None), ("link.py", "", Some("lib/m.py"))]);
        unpack(&z, &dest, RuntimeKind::Python3).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("link.py")).unwrap(), "y");
        assert_eq!(std::fs::metadata(dest.join("app.py")).unwrap().permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn a_linked_tree_shares_the_files_and_keeps_dirs_modes_and_symlinks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (code, slot) = (dir.path().join("code"), dir.path().join("slot"));
        let z = zip_of(&[("app.py", "x", None), ("lib/", "", None), ("lib/m.py", "y", None), ("link.py", "", Some("lib/m.py"))]);
        unpack(&z, &code, RuntimeKind::Python3).unwrap();
        std::fs::create_dir(&slot).unwrap();
        link_tree(&code, &slot).unwrap();
        assert_eq!(std::fs::read_to_string(slot.join("link.py")).unwrap(), "y");
        assert_eq!(std::fs::read_link(slot.join("link.py")).unwrap(), Path::new("lib/m.py"));
        let (a, b) = (std::fs::metadata(code.join("lib/m.py")).unwrap(), std::fs::metadata(slot.join("lib/m.py")).unwrap());
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "the same inode, not a copy");
        assert_eq!(std::fs::metadata(slot.join("lib")).unwrap().mode() & 0o777, std::fs::metadata(code.join("lib")).unwrap().mode() & 0o777);
        assert!(link_tree(&code, &slot).is_err(), "a slot is filled once");
    }

    #[test]
    fn escapes_and_non_zips_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("code");
        for (z, want) in [
            (zip_of(&[("../evil.py", "x", None)]), "outside"),
            (zip_of(&[("/etc/evil", "x", None)]), "outside"),
            (zip_of(&[("a/../../evil", "x", None)]), "outside"),
            (zip_of(&[("l", "", Some("/etc/shadow"))]), "symlink"),
            (zip_of(&[("d/l", "", Some("../../x"))]), "symlink"),
            (b"not a zip".to_vec(), "zip archive"),
        ] {
            let e = unpack(&z, &dest, RuntimeKind::Python3).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(!dest.exists());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary directory is left");
        // A chain of links that each look inside, then a file written "through" the last one.
        let outside = dir.path().join("x");
        let mut chain: Vec<(String, String)> = vec![("s1".into(), ".".into()), ("t1".into(), "s1/..".into())];
        for i in 2..=12 {
            chain.push((format!("t{i}"), format!("t{}/..", i - 1)));
        }
        let target = format!("t12{}", dir.path().display());
        chain.push(("f".into(), target.clone()));
        let through = format!("{target}/x");
        for last in ["f/x", "t12/tmp/x", &through] {
            let mut entries: Vec<(&str, &str, Option<&str>)> = chain.iter().map(|(n, t)| (n.as_str(), "", Some(t.as_str()))).collect();
            entries.push((last, "pwned", None));
            assert!(unpack(&zip_of(&entries), &dest, RuntimeKind::Python3).is_err(), "{last}");
            assert!(!outside.exists() && !Path::new("/tmp/x").exists(), "nothing is written outside ({last})");
            assert!(!dest.exists());
        }
        let e = unpack(&zip_of(&[("main", "x", None)]), &dest, RuntimeKind::Provided).unwrap_err().to_string();
        assert!(e.contains("bootstrap"), "{e}");
    }
}
