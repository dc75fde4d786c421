//! Reading a function's code for upload: a file as it is (a `.wasm` component or a `.zip`), or
//! a directory zipped on the fly — deterministically (sorted entries, fixed times), so the
//! same directory always uploads the same bytes and an unchanged deploy stays `unchanged`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use zip::write::SimpleFileOptions;

/// Largest directory that is zipped, in bytes of files.
const MAX_DIR_BYTES: u64 = 250 * 1024 * 1024;

/// The bytes to upload for `path`.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading the code at {}", path.display()))?;
    if !meta.is_dir() {
        return std::fs::read(path).with_context(|| format!("reading the code at {}", path.display()));
    }
    let mut entries = Vec::new();
    walk(path, Path::new(""), &mut entries)?;
    entries.sort();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut total = 0u64;
    for rel in entries {
        let full = path.join(&rel);
        let name = rel.to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(&full).with_context(|| format!("reading {}", full.display()))?;
        let options = SimpleFileOptions::default().unix_permissions(meta.permissions().mode() & 0o777);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full)?;
            zip.add_symlink(name, target.to_string_lossy(), options)?;
        } else if meta.is_dir() {
            zip.add_directory(name, options)?;
        } else {
            total += meta.len();
            if total > MAX_DIR_BYTES {
                bail!("{} holds more than {MAX_DIR_BYTES} bytes; a function's code may unpack to at most 250 MB", path.display());
            }
            zip.start_file(name, options)?;
            zip.write_all(&std::fs::read(&full).with_context(|| format!("reading {}", full.display()))?)?;
        }
    }
    Ok(zip.finish()?.into_inner())
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(root.join(rel)).with_context(|| format!("listing {}", root.join(rel).display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "__pycache__" || name == ".git" {
            continue;
        }
        let child = rel.join(&name);
        let ty = entry.file_type()?;
        out.push(child.clone());
        if ty.is_dir() {
            walk(root, &child, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn directories_zip_the_same_way_every_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.py"), "b").unwrap();
        std::fs::create_dir(dir.path().join("pkg")).unwrap();
        std::fs::write(dir.path().join("pkg/a.py"), "a").unwrap();
        let one = super::read(dir.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(dir.path().join("b.py"), "b").unwrap();
        assert_eq!(one, super::read(dir.path()).unwrap());
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(one)).unwrap();
        assert_eq!(z.len(), 3);
        assert!(z.by_name("pkg/a.py").is_ok());
    }
}
