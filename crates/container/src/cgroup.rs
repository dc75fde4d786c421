//! Cgroups that Hangar makes itself, for processes it did not start through `runc` (instances
//! forked by a zygote): memory without swap, pids and CPU weight, on cgroup v1 (one directory
//! per controller) or v2 (one unified directory). Also reads what the kernel counted (OOM
//! kills, peak memory) and kills everything inside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::JailError;

const ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup layout the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// The host's layout: v2 when `/sys/fs/cgroup` is the unified hierarchy.
    pub fn detect() -> Version {
        if Path::new(ROOT).join("cgroup.controllers").exists() { Version::V2 } else { Version::V1 }
    }
}

/// Limits of one cgroup.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids_max: u64,
    /// cgroup v1 `cpu.shares` (1024 = one CPU's fair share); converted to `cpu.weight` on v2.
    pub cpu_shares: u64,
}

/// A cgroup made by [`Cgroup::create`]; [`Cgroup::remove`] kills what is inside and removes it.
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    /// `(controller, directory)`; one entry with controller `""` on v2.
    dirs: Vec<(&'static str, PathBuf)>,
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), JailError> {
    std::fs::write(dir.join(file), value).map_err(|e| JailError::Cgroup(format!("writing `{value}` to {}: {e}", dir.join(file).display())))
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// The number after `key ` in a flat-keyed file such as `memory.events`.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

impl Cgroup {
    /// Creates `<parent>/<name>` in every controller Hangar uses, with `limits`.
    pub fn create(parent: &str, name: &str, limits: Limits) -> Result<Cgroup, JailError> {
        let version = Version::detect();
        let rel = Path::new(parent.trim_start_matches('/')).join(name);
        let dirs: Vec<(&'static str, PathBuf)> = match version {
            Version::V2 => vec![("", Path::new(ROOT).join(&rel))],
            Version::V1 => ["memory", "pids", "cpu", "freezer"]
                .into_iter()
                // The freezer (for pausing) where the machine has it mounted.
                .filter(|c| *c != "freezer" || Path::new(ROOT).join(c).is_dir())
                .map(|c| (c, Path::new(ROOT).join(c).join(&rel)))
                .collect(),
        };
        let cg = Cgroup { version, dirs };
        for (_, dir) in &cg.dirs {
            std::fs::create_dir_all(dir).map_err(|e| JailError::Cgroup(format!("creating {}: {e}", dir.display())))?;
        }
        if let Err(e) = cg.apply(limits) {
            cg.remove_now();
            return Err(e);
        }
        Ok(cg)
    }

    /// An existing cgroup `<parent>/<name>` (one a container runtime made), to read what the
    /// kernel counted there. Nothing is created.
    pub fn open(parent: &str, name: &str) -> Cgroup {
        let version = Version::detect();
        let rel = Path::new(parent.trim_start_matches('/')).join(name);
        let dirs = match version {
            Version::V2 => vec![("", Path::new(ROOT).join(&rel))],
            Version::V1 => ["memory", "pids", "cpu", "freezer", "cpuacct"].into_iter().map(|c| (c, Path::new(ROOT).join(c).join(&rel))).collect(),
        };
        Cgroup { version, dirs }
    }

    /// Memory in use now, in bytes.
    pub fn memory_usage(&self) -> u64 {
        let file = match self.version {
            Version::V2 => "memory.current",
            Version::V1 => "memory.usage_in_bytes",
        };
        read(self.memory_dir(), file).trim().parse().unwrap_or(0)
    }

    /// CPU time used so far by everything inside, in nanoseconds.
    pub fn cpu_usage_ns(&self) -> u64 {
        match self.version {
            Version::V2 => keyed(&read(&self.dirs[0].1, "cpu.stat"), "usage_usec").saturating_mul(1000),
            Version::V1 => {
                let dir = self.dirs.iter().find(|(c, _)| *c == "cpuacct").map_or(&self.dirs[0].1, |(_, d)| d);
                read(dir, "cpuacct.usage").trim().parse().unwrap_or(0)
            }
        }
    }

    /// Whether the cgroup is there at all.
    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|(_, d)| d.is_dir())
    }

    /// How many times a fork was refused for reaching the pids limit.
    pub fn pids_refused(&self) -> u64 {
        let dir = match self.version {
            Version::V2 => &self.dirs[0].1,
            Version::V1 => &self.dirs.iter().find(|(c, _)| *c == "pids").unwrap_or(&self.dirs[0]).1,
        };
        keyed(&read(dir, "pids.events"), "max")
    }

    /// Changes the memory and pids limits of an existing cgroup `<parent>/<name>` (one made by
    /// `runc` for a container, say): raising memory writes the swap-inclusive limit first,
    /// lowering it writes it last, as cgroup v1 wants both in order.
    pub fn update(parent: &str, name: &str, memory_bytes: u64, pids_max: u64) -> Result<(), JailError> {
        let rel = Path::new(parent.trim_start_matches('/')).join(name);
        match Version::detect() {
            Version::V2 => {
                let dir = Path::new(ROOT).join(&rel);
                write(&dir, "memory.max", &memory_bytes.to_string())?;
                write(&dir, "pids.max", &pids_max.to_string())
            }
            Version::V1 => {
                let memory = Path::new(ROOT).join("memory").join(&rel);
                let value = memory_bytes.to_string();
                if memory.join("memory.memsw.limit_in_bytes").exists() {
                    let raising = write(&memory, "memory.memsw.limit_in_bytes", &value).is_ok();
                    write(&memory, "memory.limit_in_bytes", &value)?;
                    if !raising {
                        write(&memory, "memory.memsw.limit_in_bytes", &value)?;
                    }
                } else {
                    write(&memory, "memory.limit_in_bytes", &value)?;
                }
                write(&Path::new(ROOT).join("pids").join(&rel), "pids.max", &pids_max.to_string())
            }
        }
    }

    fn apply(&self, l: Limits) -> Result<(), JailError> {
        match self.version {
            Version::V2 => {
                let dir = &self.dirs[0].1;
                if version2_enable(dir).is_err() {
                    tracing::debug!("could not enable controllers above {}", dir.display());
                }
                write(dir, "memory.max", &l.memory_bytes.to_string())?;
                let _ = write(dir, "memory.swap.max", "0");
                write(dir, "pids.max", &l.pids_max.to_string())?;
                let weight = 1 + (l.cpu_shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
                write(dir, "cpu.weight", &weight.to_string())?;
            }
            Version::V1 => {
                for (controller, dir) in &self.dirs {
                    match *controller {
                        "memory" => {
                            write(dir, "memory.limit_in_bytes", &l.memory_bytes.to_string())?;
                            // Memory + swap at the same limit: an instance cannot swap its way past it.
                            if dir.join("memory.memsw.limit_in_bytes").exists() {
                                write(dir, "memory.memsw.limit_in_bytes", &l.memory_bytes.to_string())?;
                            }
                        }
                        "pids" => write(dir, "pids.max", &l.pids_max.to_string())?,
                        "cpu" => write(dir, "cpu.shares", &l.cpu_shares.to_string())?,
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves a process (by its pid on the host) into this cgroup.
    pub fn add(&self, pid: u32) -> Result<(), JailError> {
        for (_, dir) in &self.dirs {
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    fn memory_dir(&self) -> &Path {
        &self.dirs[0].1
    }

    /// How many processes the kernel killed here for running out of memory.
    pub fn oom_kills(&self) -> u64 {
        match self.version {
            Version::V2 => keyed(&read(self.memory_dir(), "memory.events"), "oom_kill"),
            Version::V1 => keyed(&read(self.memory_dir(), "memory.oom_control"), "oom_kill"),
        }
    }

    /// The most memory in use at once, in bytes.
    pub fn peak_memory(&self) -> u64 {
        let file = match self.version {
            Version::V2 => "memory.peak",
            Version::V1 => "memory.max_usage_in_bytes",
        };
        read(self.memory_dir(), file).trim().parse().unwrap_or(0)
    }

    /// Host pids of the processes inside.
    pub fn pids(&self) -> Vec<u32> {
        let dir = match self.version {
            Version::V2 => &self.dirs[0].1,
            Version::V1 => &self.dirs.iter().find(|(c, _)| *c == "pids").unwrap_or(&self.dirs[0]).1,
        };
        read(dir, "cgroup.procs").lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Sends SIGKILL to every process inside (thawing them, so frozen ones die too).
    pub fn kill_all(&self) {
        if self.version == Version::V2 && write(&self.dirs[0].1, "cgroup.kill", "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = self.thaw();
    }

    /// The directory and file that freeze this cgroup, and the values for frozen and thawed.
    fn freezer(&self) -> Option<(&Path, &'static str, &'static str, &'static str)> {
        match self.version {
            Version::V2 => Some((&self.dirs[0].1, "cgroup.freeze", "1", "0")),
            Version::V1 => self.dirs.iter().find(|(c, _)| *c == "freezer").map(|(_, d)| (d.as_path(), "freezer.state", "FROZEN", "THAWED")),
        }
    }

    /// Whether this cgroup can be frozen here.
    pub fn can_freeze(&self) -> bool {
        self.freezer().is_some()
    }

    /// Stops every process inside from running (no CPU; memory and state kept) until
    /// [`Cgroup::thaw`].
    pub fn freeze(&self) -> Result<(), JailError> {
        let (dir, file, frozen, _) = self.freezer().ok_or_else(|| JailError::Cgroup("this machine has no cgroup freezer".into()))?;
        write(dir, file, frozen)
    }

    /// Lets frozen processes run again.
    pub fn thaw(&self) -> Result<(), JailError> {
        let Some((dir, file, _, thawed)) = self.freezer() else { return Ok(()) };
        write(dir, file, thawed)
    }

    /// Whether the processes inside are frozen now (v1: also while still freezing).
    pub fn frozen(&self) -> bool {
        match self.version {
            Version::V2 => keyed(&read(&self.dirs[0].1, "cgroup.events"), "frozen") == 1,
            Version::V1 => self.freezer().is_some_and(|(d, f, _, _)| read(d, f).trim() != "THAWED"),
        }
    }

    fn remove_now(&self) -> bool {
        self.dirs.iter().all(|(_, d)| std::fs::remove_dir(d).is_ok() || !d.exists())
    }

    /// Kills what is inside and removes the cgroup, waiting briefly for the processes to die.
    pub async fn remove(self) {
        for _ in 0..100 {
            self.kill_all();
            if self.remove_now() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("cgroup {} could not be removed: processes keep running in it", self.memory_dir().display());
    }
}

/// On v2, turns on the controllers Hangar uses in every ancestor's `cgroup.subtree_control`.
fn version2_enable(dir: &Path) -> std::io::Result<()> {
    let root = Path::new(ROOT);
    let mut ancestors: Vec<&Path> = dir.ancestors().skip(1).take_while(|a| a.starts_with(root)).collect();
    ancestors.reverse();
    for a in ancestors {
        std::fs::write(a.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
    }
    Ok(())
}

/// How long [`remove_tree`] waits for killed processes to leave their cgroups.
const REMOVE_WITHIN: Duration = Duration::from_secs(10);

/// Every cgroup directory in `dir` and below, deepest first.
fn tree_of(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                tree_of(&e.path(), out);
            }
        }
    }
    if dir.is_dir() {
        out.push(dir.to_path_buf());
    }
}

/// Kills everything in `parent` and below and removes those cgroups (recovery after a crash,
/// and at shutdown). All at once, not one cgroup after another: every frozen cgroup is thawed
/// first (a frozen process cannot die), every process is sent SIGKILL (v2: `cgroup.kill`), then
/// the now empty cgroups are removed deepest first, within [`REMOVE_WITHIN`] for the whole tree.
/// Returns how many cgroups could not be removed (0 once everything is gone).
pub async fn remove_tree(parent: &str) -> usize {
    let rel = parent.trim_start_matches('/');
    let roots: Vec<PathBuf> = match Version::detect() {
        Version::V2 => vec![Path::new(ROOT).join(rel)],
        Version::V1 => ["freezer", "memory", "pids", "cpu", "cpuacct", "cpuset", "blkio", "devices", "systemd"]
            .into_iter()
            .map(|c| Path::new(ROOT).join(c).join(rel))
            .collect(),
    };
    let mut dirs = Vec::new();
    for root in &roots {
        tree_of(root, &mut dirs);
    }
    if dirs.is_empty() {
        return 0;
    }
    for dir in &dirs {
        // Thaw (v1 freezer / v2), then kill; writes that do not apply to a controller fail
        // harmlessly.
        let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
        let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    }
    let deadline = tokio::time::Instant::now() + REMOVE_WITHIN;
    loop {
        dirs.retain(|dir| {
            for pid in read(dir, "cgroup.procs").lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            // Deepest first: a parent goes once its children went earlier in this pass.
            std::fs::remove_dir(dir).is_err() && dir.is_dir()
        });
        if dirs.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for dir in &dirs {
        tracing::warn!("cgroup {} could not be removed", dir.display());
    }
    dirs.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values() {
        assert_eq!(keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"), 3);
        assert_eq!(keyed("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n", "oom_kill"), 1);
        assert_eq!(keyed("", "oom_kill"), 0);
    }

    #[tokio::test]
    async fn limits_apply_and_processes_are_killed() {
        let parent = format!("hangar-test-{}", std::process::id());
        let cg = Cgroup::create(&parent, "c1", Limits { memory_bytes: 32 << 20, pids_max: 8, cpu_shares: 128 }).unwrap();
        let mut child = tokio::process::Command::new("sleep").arg("60").spawn().unwrap();
        cg.add(child.id().unwrap()).unwrap();
        assert_eq!(cg.pids(), vec![child.id().unwrap()]);
        cg.remove().await;
        let status = child.wait().await.unwrap();
        assert!(!status.success(), "the process was killed");
        remove_tree(&parent).await;
        assert!(!Path::new(ROOT).join("pids").join(&parent).exists() && !Path::new(ROOT).join(&parent).exists());
    }

    #[tokio::test]
    async fn limits_of_an_existing_cgroup_go_up_and_down() {
        let parent = format!("hangar-test-update-{}", std::process::id());
        let cg = Cgroup::create(&parent, "c1", Limits { memory_bytes: 32 << 20, pids_max: 8, cpu_shares: 128 }).unwrap();
        let memory = |cg: &Cgroup| match cg.version {
            Version::V2 => read(cg.memory_dir(), "memory.max").trim().parse::<u64>().unwrap(),
            Version::V1 => read(cg.memory_dir(), "memory.limit_in_bytes").trim().parse::<u64>().unwrap(),
        };
        Cgroup::update(&parent, "c1", 256 << 20, 40).unwrap();
        assert_eq!(memory(&cg), 256 << 20);
        Cgroup::update(&parent, "c1", 16 << 20, 4).unwrap();
        assert_eq!(memory(&cg), 16 << 20);
        let pids = cg.dirs.iter().find(|(c, _)| *c == "pids" || c.is_empty()).unwrap();
        assert_eq!(read(&pids.1, "pids.max").trim(), "4");
        assert!(Cgroup::update(&parent, "missing", 1 << 20, 1).is_err(), "a cgroup that does not exist is an error");
        cg.remove().await;
        remove_tree(&parent).await;
    }
}
