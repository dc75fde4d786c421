//! The supervisor: the one place that starts a server's control loops, owns their intervals,
//! decides which run only under a lease (once in a cluster), and stops them in order.
//! [`Supervisor::start`] runs a [`Loop`] on an interval; [`Supervisor::run`] a loop that keeps
//! its own time (the cron loop sleeps until the next schedule is due).
//!
//! A loop's work belongs to the component whose state it maintains (the services table
//! reconciles itself, the meter samples usage, adaptive mode looks at traffic): that component
//! implements [`Loop`], and the supervisor only calls it. As mini-redis's `DbDropGuard` stops
//! the purge task of its `Db`, [`Supervisor::shutdown`] stops every loop: the last started
//! first, each after its current tick, each given its [`Loop::finish`] (the meter counts the
//! last seconds there), each giving its lease back.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hangar_bus::Leases;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One control loop: what it does every round, and once more at shutdown.
#[async_trait]
pub trait Loop: Send + 'static {
    /// One round of the loop's work.
    async fn tick(&mut self);
    /// Runs once when the server stops, after the last tick.
    async fn finish(&mut self) {}
}

/// Where a loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// On every server (its work is about this server's own instances).
    EachServer,
    /// On one server at a time: a round runs only while this server holds the lease named
    /// after the loop, taken for three intervals and renewed every round.
    Once,
}

struct Running {
    name: &'static str,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// See the module docs.
pub struct Supervisor {
    leases: Arc<dyn Leases>,
    holder: String,
    running: Vec<Running>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("holder", &self.holder).field("loops", &self.names()).finish()
    }
}

/// The shortest interval a loop may have: one of 0 would spin.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl Supervisor {
    /// A supervisor whose [`Scope::Once`] loops take their leases from `leases` as `holder`
    /// (the server's id).
    pub fn new(leases: Arc<dyn Leases>, holder: impl Into<String>) -> Supervisor {
        Supervisor { leases, holder: holder.into(), running: Vec::new() }
    }

    /// Starts `work`: its first round one `every` from now (at least [`MIN_INTERVAL`]), then
    /// one every `every`. A round that overruns delays the next; rounds never overlap.
    pub fn start(&mut self, name: &'static str, every: Duration, scope: Scope, mut work: impl Loop) {
        let every = every.max(MIN_INTERVAL);
        let (stop, mut stopped) = watch::channel(false);
        let (leases, holder) = (self.leases.clone(), self.holder.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                if scope == Scope::Once && !leases.acquire(name, &holder, every * 3).await {
                    continue;
                }
                work.tick().await;
            }
            if scope == Scope::Once {
                leases.release(name, &holder).await;
            }
            work.finish().await;
        });
        tracing::debug!(name, ?every, ?scope, "loop started");
        self.running.push(Running { name, stop, task });
    }

    /// Runs `work`, a loop that keeps its own time (it waits for what it needs itself), until
    /// [`Supervisor::shutdown`] stops it in its place in the order, wherever it waits.
    pub fn run(&mut self, name: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = stopped.changed() => {}
                _ = work => {}
            }
        });
        tracing::debug!(name, "loop started");
        self.running.push(Running { name, stop, task });
    }

    /// The loops running, in the order they started.
    pub fn names(&self) -> Vec<&'static str> {
        self.running.iter().map(|r| r.name).collect()
    }

    /// Stops every loop, the last started first: each ends its round, runs its
    /// [`Loop::finish`] and gives its lease back before the next is stopped.
    pub async fn shutdown(mut self) {
        while let Some(r) = self.running.pop() {
            let _ = r.stop.send(true);
            if let Err(e) = r.task.await {
                tracing::error!(name = r.name, "a loop ended abnormally: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Writes what it does into a shared log.
    struct Logged {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl Loop for Logged {
        async fn tick(&mut self) {
            self.log.lock().unwrap().push(format!("{} tick", self.name));
        }
        async fn finish(&mut self) {
            self.log.lock().unwrap().push(format!("{} finish", self.name));
        }
    }

    /// Leases that are held by this server or by another, as the test says.
    #[derive(Default)]
    struct Switch {
        ours: AtomicBool,
        released: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Leases for Switch {
        async fn acquire(&self, _name: &str, _holder: &str, _ttl: Duration) -> bool {
            self.ours.load(Ordering::SeqCst)
        }
        async fn release(&self, name: &str, _holder: &str) {
            self.released.lock().unwrap().push(name.to_string());
        }
    }

    fn count(log: &Mutex<Vec<String>>, line: &str) -> usize {
        log.lock().unwrap().iter().filter(|l| *l == line).count()
    }

    #[tokio::test(start_paused = true)]
    async fn loops_tick_on_their_interval_once_loops_only_under_their_lease_and_stop_last_first() {
        let leases = Arc::new(Switch::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut s = Supervisor::new(leases.clone(), "server-a");
        s.start("reconcile", Duration::from_secs(1), Scope::EachServer, Logged { name: "reconcile", log: log.clone() });
        s.start("adapt", Duration::from_secs(2), Scope::Once, Logged { name: "adapt", log: log.clone() });
        assert_eq!(s.names(), ["reconcile", "adapt"]);

        // Nothing at once: the first round is one interval away.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(log.lock().unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(5_000)).await;
        assert_eq!(count(&log, "reconcile tick"), 5);
        assert_eq!(count(&log, "adapt tick"), 0, "another server holds the lease");

        leases.ours.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(4_000)).await;
        assert_eq!(count(&log, "reconcile tick"), 9);
        assert_eq!(count(&log, "adapt tick"), 2, "rounds run once the lease is this server's");

        s.shutdown().await;
        let lines = log.lock().unwrap().clone();
        let tail: Vec<_> = lines.iter().filter(|l| l.ends_with("finish")).collect();
        assert_eq!(tail, ["adapt finish", "reconcile finish"], "the last started stops first");
        assert_eq!(lines.last().unwrap(), "reconcile finish", "no round after its finish");
        assert_eq!(*leases.released.lock().unwrap(), ["adapt"], "only the leased loop gives a lease back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_keeps_its_own_time_is_stopped_where_it_waits() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut s = Supervisor::new(Arc::new(Switch::default()), "a");
        let l = log.clone();
        s.run("cron", async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                l.lock().unwrap().push("fired".to_string());
            }
        });
        tokio::time::sleep(Duration::from_secs(130)).await;
        assert_eq!(count(&log, "fired"), 2);
        tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await.expect("stopped in its sleep, not after it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_does_not_spin() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut s = Supervisor::new(Arc::new(Switch::default()), "a");
        s.start("fast", Duration::ZERO, Scope::EachServer, Logged { name: "fast", log: log.clone() });
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        assert_eq!(count(&log, "fast tick"), 10);
        s.shutdown().await;
    }
}
