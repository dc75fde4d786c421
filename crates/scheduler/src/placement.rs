//! Where in a cluster a function call runs: a pure function of what every node last reported
//! ([`Placement`], rebuilt from the nodes' heartbeats, read without locks on the hot path).
//!
//! The rules, in order: this node, if it is a worker with the revision warm and room; else
//! another worker with the revision warm and room (the least loaded of them); else the least
//! loaded worker with room, which starts an instance (this node on a tie). A worker has room
//! when it takes work (ready, not draining, a role that runs instances), is under its instance
//! cap, and has the memory and CPU the call needs. Load is the share of the instance cap in use.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};

/// A revision as placement knows it: a hash of `namespace/name@revision`.
pub type RevisionKey = u64;

/// The key of a function's revision.
pub fn revision_key(namespace: &str, name: &str, revision: u64) -> RevisionKey {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (namespace, name, revision).hash(&mut h);
    h.finish()
}

/// One node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub id: String,
    /// Where other nodes reach it.
    pub address: String,
    /// Whether it takes new work (ready, not draining, runs instances).
    pub accepting: bool,
    pub free_cpu_milli: u64,
    pub free_memory_mb: u64,
    pub instances: u32,
    pub max_instances: u32,
}

impl Worker {
    fn has_room(&self, memory_mb: u64, cpu_milli: u64) -> bool {
        self.accepting && self.instances < self.max_instances && self.free_memory_mb >= memory_mb && self.free_cpu_milli >= cpu_milli
    }

    /// Instances in use per thousand of its cap.
    fn load(&self) -> u64 {
        u64::from(self.instances) * 1000 / u64::from(self.max_instances.max(1))
    }
}

/// What a call needs of a worker.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    pub memory_mb: u64,
    pub cpu_milli: u64,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Placement {
    workers: Vec<Worker>,
    /// Which workers have each revision warm (indexes into `workers`).
    warm: HashMap<RevisionKey, Vec<u32>>,
    /// The index of this node, if it is among the workers.
    here: Option<u32>,
}

impl Placement {
    /// `here`: this node's id.
    pub fn new(workers: Vec<Worker>, here: &str) -> Placement {
        let here = workers.iter().position(|w| w.id == here).map(|i| i as u32);
        Placement { workers, warm: HashMap::new(), here }
    }

    /// Records that worker `worker` (an index) has `key` warm.
    pub fn add_warm(&mut self, key: RevisionKey, worker: usize) {
        let list = self.warm.entry(key).or_default();
        if !list.contains(&(worker as u32)) {
            list.push(worker as u32);
        }
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// The index of a worker by id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    /// Where a call of revision `key` runs: a worker's index, or `None` when no worker has
    /// room (the caller answers 429 or 503).
    pub fn place(&self, key: RevisionKey, needs: Needs) -> Option<usize> {
        let room = |i: usize| self.workers[i].has_room(needs.memory_mb, needs.cpu_milli);
        let here = self.here.map(|h| h as usize);
        if let Some(warm) = self.warm.get(&key) {
            if let Some(h) = here.filter(|h| warm.contains(&(*h as u32)) && room(*h)) {
                return Some(h);
            }
            if let Some(best) = warm.iter().map(|i| *i as usize).filter(|i| room(*i)).min_by_key(|i| self.workers[*i].load()) {
                return Some(best);
            }
        }
        let least = (0..self.workers.len()).filter(|i| room(*i)).min_by_key(|i| (self.workers[*i].load(), Some(*i) != here))?;
        // A tie with this node stays here: no hop for the same load.
        match here {
            Some(h) if room(h) && self.workers[h].load() == self.workers[least].load() => Some(h),
            _ => Some(least),
        }
    }

    /// Bytes this placement holds for its warm index, roughly (for the scale model).
    pub fn index_bytes(&self) -> usize {
        self.warm.capacity() * (std::mem::size_of::<RevisionKey>() + std::mem::size_of::<Vec<u32>>() + 1)
            + self.warm.values().map(|v| v.capacity() * std::mem::size_of::<u32>()).sum::<usize>()
    }

    /// Revisions in the warm index.
    pub fn revisions(&self) -> usize {
        self.warm.len()
    }
}

/// A stable hash of a service's name, the same on every node (FNV-1a: no per-process keys).
fn service_hash(namespace: &str, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The order in which the workers `ids` (sorted, the same list on every node) receive a
/// service's instances: one each in this order, then a second each, and so on. The list is
/// rotated by the service's name, so one-instance services do not all land on the first worker.
pub fn spread_order(namespace: &str, name: &str, ids: usize) -> impl Iterator<Item = usize> {
    let start = if ids == 0 { 0 } else { (service_hash(namespace, name) % ids as u64) as usize };
    (0..ids).map(move |i| (start + i) % ids)
}

/// How many of a service's `total` instances the worker at index `me` of `ids` workers runs:
/// every worker gets `total / ids`, and the first `total % ids` in [`spread_order`] one more.
/// Every node computes the same shares from the same heartbeats, with no coordination.
pub fn spread_share(namespace: &str, name: &str, total: u32, ids: usize, me: usize) -> u32 {
    if ids == 0 || me >= ids {
        return 0;
    }
    let n = ids as u32;
    let rank = spread_order(namespace, name, ids).position(|i| i == me).unwrap_or(ids) as u32;
    total / n + u32::from(rank < total % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, instances: u32) -> Worker {
        Worker { id: id.into(), address: format!("{id}:1"), accepting: true, free_cpu_milli: 2000, free_memory_mb: 4096, instances, max_instances: 100 }
    }

    const SMALL: Needs = Needs { memory_mb: 128, cpu_milli: 0 };

    #[test]
    fn warm_here_then_warm_elsewhere_then_the_least_loaded_with_room() {
        let key = revision_key("default", "hello", 1);
        let mut p = Placement::new(vec![worker("a", 50), worker("b", 10), worker("c", 30)], "a");
        // Nothing warm: the least loaded.
        assert_eq!(p.place(key, SMALL), Some(1));
        // Warm on c only: c, though b is less loaded (no cold start).
        p.add_warm(key, 2);
        assert_eq!(p.place(key, SMALL), Some(2));
        // Warm here too: here, with no hop.
        p.add_warm(key, 0);
        assert_eq!(p.place(key, SMALL), Some(0));
        // Here is full: the warm one with room.
        p.workers[0].instances = 100;
        assert_eq!(p.place(key, SMALL), Some(2));
        // Not enough memory on c: cold on the least loaded that has it.
        p.workers[2].free_memory_mb = 64;
        assert_eq!(p.place(key, SMALL), Some(1));
        // Draining or out of CPU: never chosen; nobody with room: none.
        p.workers[1].accepting = false;
        assert_eq!(p.place(key, SMALL), None);
        p.workers[1].accepting = true;
        assert_eq!(p.place(key, Needs { memory_mb: 128, cpu_milli: 4000 }), None);
    }

    #[test]
    fn a_tie_stays_here_and_a_gateway_is_never_chosen() {
        let key = revision_key("default", "hello", 1);
        let p = Placement::new(vec![worker("a", 10), worker("b", 10)], "b");
        assert_eq!(p.place(key, SMALL), Some(1), "same load: no hop");
        // A gateway is not among the accepting workers.
        let mut gateway = worker("g", 0);
        gateway.accepting = false;
        let p = Placement::new(vec![gateway, worker("w", 90)], "g");
        assert_eq!(p.place(key, SMALL), Some(1));
        assert_ne!(revision_key("default", "hello", 2), key);
    }

    #[test]
    fn services_spread_one_per_worker_before_two_on_one() {
        for total in 0..10u32 {
            for ids in 1..6usize {
                let shares: Vec<u32> = (0..ids).map(|me| spread_share("ns", "web", total, ids, me)).collect();
                assert_eq!(shares.iter().sum::<u32>(), total, "{shares:?}");
                let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(hi - lo <= 1, "{total} over {ids}: {shares:?}");
            }
        }
        // Not a worker of the list: nothing.
        assert_eq!(spread_share("ns", "web", 3, 2, 5), 0);
        assert_eq!(spread_share("ns", "web", 3, 0, 0), 0);
        // One-instance services do not all go to the same worker.
        let firsts: std::collections::HashSet<usize> = (0..50).map(|i| spread_order("ns", &format!("svc{i}"), 4).next().unwrap()).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }
}
