//! A server's data dir: private to its owner, held by one server at a time (a second server on
//! the same dir would clean up — kill — the first one's containers), and the source of the
//! server's id.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::ServerId;

/// Why a data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another server holds it.
    #[error("another Hangar (pid {pid}) is running with the data dir {dir}; stop it first, or give this one another --data-dir")]
    Held { pid: String, dir: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A data dir this server holds (`hangar.lock`, released when dropped).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    id: ServerId,
    _lock: std::fs::File,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError {
    let path = path.to_path_buf();
    move |source| DataDirError::Io { what, path, source }
}

impl DataDir {
    /// Makes `path` (mode 0700) if needed, takes its lock, and derives the server's id.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        use std::io::{Read as _, Seek as _};
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(path).map_err(io("creating the data dir", path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io("restricting to its owner the data dir", path))?;
        let lock_path = path.join("hangar.lock");
        let mut lock = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).map_err(io("opening", &lock_path))?;
        if lock.try_lock().is_err() {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            return Err(DataDirError::Held { pid: pid.trim().to_string(), dir: path.to_path_buf() });
        }
        let write_pid = |f: &mut std::fs::File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            write!(f, "{}", std::process::id())
        };
        write_pid(&mut lock).map_err(io("writing", &lock_path))?;
        let id = ServerId::of_data_dir(path).map_err(io("resolving the data dir", path))?;
        Ok(DataDir { path: path.to_path_buf(), id, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of the server that holds it.
    pub fn server_id(&self) -> &ServerId {
        &self.id
    }

    /// This data dir's id as a node of a cluster: made once (from the machine's id, the
    /// path, the time and the process) and kept in `node.id`, so that two machines with the
    /// same data dir path are two nodes, and a restarted node is the same one.
    pub fn node_id(&self) -> Result<String, DataDirError> {
        use sha2::Digest as _;
        let file = self.path.join("node.id");
        if let Ok(id) = std::fs::read_to_string(&file)
            && let id = id.trim()
            && id.len() == 12
            && id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(id.to_string());
        }
        let mut seed = sha2::Sha256::new();
        seed.update(std::fs::read("/etc/machine-id").unwrap_or_default());
        seed.update(self.path.as_os_str().as_encoded_bytes());
        seed.update(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos().to_le_bytes());
        seed.update(std::process::id().to_le_bytes());
        let id = hex::encode(&seed.finalize()[..6]);
        self.write_private("node.id", &id)?;
        Ok(id)
    }

    /// Writes `contents` and a newline to the file `name` in it, readable by its owner only.
    pub fn write_private(&self, name: &str, contents: &str) -> Result<PathBuf, DataDirError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.path.join(name);
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).map_err(io("writing", &path))?;
        writeln!(f, "{contents}").map_err(io("writing", &path))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_holds_a_data_dir_and_its_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = DataDir::open(&data).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
        match DataDir::open(&data) {
            Err(DataDirError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("a second holder: {other:?}"),
        }
        let key = held.write_private("admin.key", "secret").unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "secret\n");
        assert_eq!(held.server_id(), &ServerId::of_data_dir(&data).unwrap());
        // A node id is made once and kept.
        let node = held.node_id().unwrap();
        assert_eq!(node.len(), 12);
        assert_eq!(held.node_id().unwrap(), node);
        drop(held);
        DataDir::open(&data).expect("free again once the first is gone");
    }
}
