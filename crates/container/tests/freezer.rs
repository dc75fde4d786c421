//! The cgroup freezer: a frozen cgroup's process gets no CPU and keeps running where it was
//! once thawed; a frozen process still dies when its cgroup is removed. Needs root.

use std::time::Duration;

use hangar_container::cgroup::{Cgroup, Limits};

/// User plus system CPU ticks of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test]
async fn frozen_processes_get_no_cpu_and_resume_where_they_were() {
    assert!(nix::unistd::geteuid().is_root(), "this test makes cgroups: run it as root (./scripts/test.sh)");
    let name = format!("freeze-{}", std::process::id());
    let parent = "hangar-container-tests";
    let cg = Cgroup::create(parent, &name, Limits { memory_bytes: 64 << 20, pids_max: 16, cpu_shares: 1024 }).unwrap();
    assert!(cg.can_freeze(), "the machine has no cgroup freezer");
    let mut child = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
    let pid = child.id();
    cg.add(pid).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    cg.freeze().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(cg.frozen());
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cpu_ticks(pid), before, "a frozen process used CPU");
    cg.thaw().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!cg.frozen());
    assert!(cpu_ticks(pid) > before, "the thawed process did not run again");
    // Frozen again, then removed: it dies all the same.
    cg.freeze().unwrap();
    cg.remove().await;
    let status = child.wait().unwrap();
    assert!(!status.success());
    hangar_container::cgroup::remove_tree(parent).await;
}
