//! What every part of Hangar shares and none owns. [`ServerId`]: the one name under which a
//! server owns things on the machine (run directories, cgroups, namespaces, bridges, nftables
//! tables), derived once from its data dir; [`now_ms`], the wall clock as stored.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::Path;

/// The id of the server that keeps its state in a data dir: the first five bytes of the
/// SHA-256 of the data dir's canonical path, in hex (ten characters, so names built from it
/// fit Linux's 15-character interface names). The same data dir gives the same id on every
/// start, which is how a start finds what a killed run left behind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerId(String);

impl ServerId {
    /// The id of the server of `data_dir`, which must exist (it is resolved to its canonical
    /// path, so `./data` and `/abs/data` are one server).
    pub fn of_data_dir(data_dir: &Path) -> std::io::Result<ServerId> {
        use sha2::Digest as _;
        let canonical = std::fs::canonicalize(data_dir)?;
        Ok(ServerId(hex::encode(&sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes())[..5])))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds since the Unix epoch, now (as every stored time is kept).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_data_dir_is_one_server() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let a = ServerId::of_data_dir(&dir.path().join("data")).unwrap();
        let b = ServerId::of_data_dir(&dir.path().join("data/../data/.")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str().len(), 10);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        std::fs::create_dir(dir.path().join("other")).unwrap();
        assert_ne!(a, ServerId::of_data_dir(&dir.path().join("other")).unwrap());
        assert!(ServerId::of_data_dir(&dir.path().join("missing")).is_err());
    }
}
