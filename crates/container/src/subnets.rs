//! The one claimer of private /24s on the machine, shared by services (their bridge) and
//! sandboxes (their /30s): a claim is a file `/run/hangar-subnets/A.B.X.0` holding
//! `PURPOSE SERVER PID`, made and taken under an exclusive lock on the directory, so two servers
//! (or a service bridge and a sandbox network) never hold one /24. A claim is this server's
//! again after a restart (same purpose and server id), and stale once its process is gone and
//! no interface of the host holds an address in it any more (a server killed with its bridge
//! still up keeps its /24 until the bridge is gone: two bridges on one /24 break both).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::JailError;

/// Where claims live (a tmpfs: they go with a reboot, as the networks do).
pub const CLAIMS: &str = "/run/hangar-subnets";

/// Claims a free `a.b.X.0/24` for `purpose` (e.g. `services`) of server `sid`, trying the
/// third octets from one derived from the server id, so a server tends to get the same one.
/// Returns `X`.
pub fn claim(prefix: [u8; 2], purpose: &str, sid: &str) -> Result<u8, JailError> {
    claim_in(Path::new(CLAIMS), prefix, purpose, sid, std::process::id())
}

fn claim_in(dir: &Path, prefix: [u8; 2], purpose: &str, sid: &str, pid: u32) -> Result<u8, JailError> {
    claim_with(dir, prefix, purpose, sid, pid, &|x| host_uses(prefix, x))
}

/// Whether an interface of the host has an address in `a.b.x.0/24` (when the interfaces cannot
/// be read, every /24 counts as used).
fn host_uses(prefix: [u8; 2], x: u8) -> bool {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs.into_iter().any(|a| {
            a.address.as_ref().and_then(|s| s.as_sockaddr_in()).is_some_and(|v| {
                let o = v.ip().octets();
                o[..3] == [prefix[0], prefix[1], x]
            })
        }),
        Err(_) => true,
    }
}

fn claim_with(dir: &Path, prefix: [u8; 2], purpose: &str, sid: &str, pid: u32, in_use: &dyn Fn(u8) -> bool) -> Result<u8, JailError> {
    let io = |what: &str, e: std::io::Error| JailError::Network(format!("claiming a subnet: {what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| io(&dir.display().to_string(), e))?;
    let lock = std::fs::File::create(dir.join(".lock")).map_err(|e| io("the lock", e))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| io("the lock", e.into()))?;
    let start = u8::from_str_radix(sid.get(..2).unwrap_or("0"), 16).unwrap_or(0);
    for k in 0..=255u8 {
        let x = start.wrapping_add(k);
        let path: PathBuf = dir.join(format!("{}.{}.{x}.0", prefix[0], prefix[1]));
        let free = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io(&path.display().to_string(), e)),
            Ok(owner) => {
                let mut f = owner.split_whitespace();
                let (p, s, owner_pid) = (f.next(), f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
                let mine = p == Some(purpose) && s == Some(sid);
                // A claim without a living process (or an unreadable one) is stale once nothing
                // on the host uses the /24 any more.
                mine || (owner_pid.is_none_or(|p| !Path::new("/proc").join(p.to_string()).exists()) && !in_use(x))
            }
        };
        if free {
            let mut f = std::fs::File::create(&path).map_err(|e| io(&path.display().to_string(), e))?;
            writeln!(f, "{purpose} {sid} {pid}").map_err(|e| io(&path.display().to_string(), e))?;
            return Ok(x);
        }
    }
    Err(JailError::Network(format!("no free /24 left in {}.{}.0.0/16 (claims in {CLAIMS})", prefix[0], prefix[1])))
}

/// Gives back every /24 that server `sid` claimed for `purpose` (at shutdown, and when a
/// start cleans up after a killed run).
pub fn release(purpose: &str, sid: &str) {
    release_in(Path::new(CLAIMS), purpose, sid);
}

fn release_in(dir: &Path, purpose: &str, sid: &str) {
    let Ok(lock) = std::fs::File::create(dir.join(".lock")) else { return };
    let Ok(_held) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive) else { return };
    for c in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let owner = std::fs::read_to_string(c.path()).unwrap_or_default();
        let mut f = owner.split_whitespace();
        if (f.next(), f.next()) == (Some(purpose), Some(sid)) {
            let _ = std::fs::remove_file(c.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_kept_across_restarts_and_stale_without_their_process() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let free = |_: u8| false;
        let claim_in = |dir: &Path, prefix, purpose, sid, pid| claim_with(dir, prefix, purpose, sid, pid, &free);
        let a = claim_in(dir.path(), [10, 213], "services", "aa00000000", me).unwrap();
        assert_eq!(a, 0xaa, "from the server id's first octet");
        // Another server (a living process) gets another /24; the same server gets its own again.
        let b = claim_in(dir.path(), [10, 213], "services", "aa11111111", me).unwrap();
        assert_ne!(a, b);
        assert_eq!(claim_in(dir.path(), [10, 213], "services", "aa00000000", me).unwrap(), a);
        // Sandboxes of the same server are another purpose: another /24 even in the same range.
        let c = claim_in(dir.path(), [10, 213], "sandboxes", "aa00000000", me).unwrap();
        assert!(c != a && c != b);
        // A claim whose process is gone (or that names none, as older claims did) is taken.
        std::fs::write(dir.path().join("10.215.170.0"), "services ffffffffff 4000000000\n").unwrap();
        assert_eq!(claim_in(dir.path(), [10, 215], "sandboxes", "aa22222222", me).unwrap(), 0xaa);
        std::fs::write(dir.path().join("10.216.170.0"), "aa33333333").unwrap();
        assert_eq!(claim_in(dir.path(), [10, 216], "services", "aa22222222", me).unwrap(), 0xaa);
        // A dead server's claim whose bridge is still up on the host stays its own.
        std::fs::write(dir.path().join("10.217.170.0"), "services ffffffffff 4000000000\n").unwrap();
        let bridge_up = |x: u8| x == 0xaa;
        assert_eq!(claim_with(dir.path(), [10, 217], "services", "aa44444444", me, &bridge_up).unwrap(), 0xab);
        // Released: only that server's claims of that purpose go.
        release_in(dir.path(), "services", "aa00000000");
        assert!(!dir.path().join(format!("10.213.{a}.0")).exists());
        assert!(dir.path().join(format!("10.213.{c}.0")).exists());
        assert!(dir.path().join(format!("10.213.{b}.0")).exists());
    }
}
