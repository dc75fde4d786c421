//! What every part of Hangar shares and none owns. [`ServerId`]: the one name under which a
//! server owns things on the machine (run directories, cgroups, namespaces, bridges, nftables
//! tables), derived once from its data dir; [`now_ms`], the wall clock as stored; [`Clock`],
//! time as code that decides on it sees it (faked in tests with [`ManualClock`]); [`DataDir`],
//! the directory one server holds; [`Turns`], one work at a time per thing.
#![forbid(unsafe_code)]

pub mod data_dir;
pub mod turns;

pub use data_dir::{DataDir, DataDirError};
pub use turns::Turns;

use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where code that decides on time reads it, so tests can move time instead of sleeping.
pub trait Clock: Send + Sync + 'static {
    /// A monotonic now.
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The machine's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that moves only when told ([`ManualClock::advance`]).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_ms: i64,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock { start: Instant::now(), start_ms, elapsed: Mutex::new(Duration::ZERO) }
    }

    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn now_ms(&self) -> i64 {
        self.start_ms + self.elapsed().as_millis() as i64
    }
}

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

/// This machine's CPUs (in thousandths) and memory (MiB, from `/proc/meminfo`): what a node
/// offers to the instances placed on it.
pub fn machine_capacity() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())))
        .unwrap_or(0);
    (cpus * 1000, memory_kb / 1024)
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

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        let t = c.now();
        assert_eq!((c.now(), c.now_ms()), (t, 1_000));
        c.advance(Duration::from_millis(1500));
        assert_eq!((c.now() - t, c.now_ms()), (Duration::from_millis(1500), 2_500));
    }
}
