//! Usage beyond invocations, sampled: what services, sandboxes and functions' warm instances
//! use over time, and the rules that turn it into hourly usage rows. Functions' requests are
//! metered as their records are written (`UsageDelta::of_invocation`, in the store's
//! transaction); everything else comes from a [`Sampler`] round every `--meter-every`.
//!
//! The sampler sees the server only through narrow traits: [`Fleet`] (instances that run and
//! requests they served: the services table, the scheduler) and [`Sandboxes`] (cumulative
//! per-sandbox counters, exact: only the difference since the last round is added, and what was
//! counted is kept in the store as marks, so a restart neither loses nor repeats any of it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hangar_api::WorkloadKind;
use hangar_api::cost::{UsageDelta, UsageMark};
use hangar_api::sandboxes::{Sandbox, SandboxState};
use hangar_core::Clock;
use hangar_store::Store;

const HOUR_MS: i64 = 3_600_000;

/// Instances of one workload running now, and their size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
    /// Instances running (a function's: provisioned ones).
    pub running: u64,
    /// Instances paused (frozen: memory kept, no CPU).
    pub paused: u64,
    /// Per running instance: thousandths of a vCPU and MiB (zero where the price sheet prices
    /// running time alone, as for functions' provisioned instances).
    pub cpus_milli: u64,
    pub memory_mb: u64,
}

/// Requests one service served since the last time they were taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    pub namespace: String,
    pub name: String,
    pub requests: u64,
    pub errors: u64,
    /// Time spent serving them, ms.
    pub busy_ms: u64,
}

/// A part of the server whose instances are metered by time.
pub trait Fleet: Send + Sync {
    /// What runs now; the sampler counts it for the time since its last round.
    fn running(&self) -> Vec<Running>;
    /// The requests served since the last call (each is handed over once).
    fn take_served(&self) -> Vec<Served> {
        Vec::new()
    }
}

/// The sandboxes of the server, with their cumulative counters.
pub trait Sandboxes: Send + Sync {
    fn sandboxes(&self) -> Vec<Sandbox>;
}

/// What runs on this node now: instances (running or paused, and live sandboxes) and the CPU
/// (thousandths) and memory (MiB) allotted to them; what a node reports with its heartbeats.
pub fn load(fleets: &[Arc<dyn Fleet>], sandboxes: Option<&dyn Sandboxes>) -> (u32, u64, u64) {
    let (mut instances, mut cpu, mut memory) = (0u64, 0u64, 0u64);
    for r in fleets.iter().flat_map(|f| f.running()) {
        instances += r.running + r.paused;
        cpu += r.running * r.cpus_milli;
        memory += (r.running + r.paused) * r.memory_mb;
    }
    for sb in sandboxes.map(|s| s.sandboxes()).unwrap_or_default() {
        if matches!(sb.state, SandboxState::Running | SandboxState::Paused) {
            instances += 1;
            memory += u64::from(sb.config.memory_mb);
            if sb.state == SandboxState::Running {
                cpu += (sb.config.cpus.max(0.0) * 1000.0) as u64;
            }
        }
    }
    (instances.min(u64::from(u32::MAX)) as u32, cpu, memory)
}

/// A sandbox's counters at a moment: running, paused, standby ms and standby byte-ms.
type Counters = (u64, u64, u64, u128);

fn counters(sb: &Sandbox, now: i64) -> Counters {
    let since = u64::try_from(now - sb.state_since_ms).unwrap_or(0);
    let u = &sb.usage;
    let (mut r, mut p, mut s, mut b) = (u.running_ms, u.paused_ms, u.standby_ms, u.standby_byte_ms);
    match sb.state {
        SandboxState::Running => r += since,
        SandboxState::Paused => p += since,
        SandboxState::Standby => {
            s += since;
            b += u128::from(sb.standby_bytes.unwrap_or(0)) * u128::from(since);
        }
        SandboxState::Failed => {}
    }
    (r, p, s, b)
}

/// What `running` used in `elapsed` ms of the hour at `hour_ms`: the one rule for sampled
/// instances (instance time; memory- and CPU-time of running instances).
pub fn of_running(r: Running, hour_ms: i64, elapsed: u64) -> UsageDelta {
    let running_ms = r.running * elapsed;
    UsageDelta {
        namespace: r.namespace,
        kind: r.kind,
        name: r.name,
        hour_ms,
        running_ms,
        paused_ms: r.paused * elapsed,
        mb_ms: running_ms * r.memory_mb,
        vcpu_milli_ms: running_ms * r.cpus_milli,
        ..UsageDelta::default()
    }
}

/// The sampler: see the module docs. Each round is one store transaction.
pub struct Sampler {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    fleets: Vec<Arc<dyn Fleet>>,
    sandboxes: Option<Arc<dyn Sandboxes>>,
    last: i64,
    /// What of each sandbox's counters is counted already (persisted as marks).
    seen: HashMap<String, Counters>,
}

impl Sampler {
    /// Starts from the marks the last run left, so nothing is counted twice or lost.
    pub async fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, fleets: Vec<Arc<dyn Fleet>>, sandboxes: Option<Arc<dyn Sandboxes>>) -> Sampler {
        let marks = store.usage_marks().await.unwrap_or_else(|e| {
            tracing::error!("reading the meter's marks: {e}");
            Vec::new()
        });
        let seen = marks.into_iter().map(|m| (m.id, (m.running_ms, m.paused_ms, m.standby_ms, m.standby_byte_ms))).collect();
        let last = clock.now_ms();
        Sampler { store, clock, fleets, sandboxes, last, seen }
    }

    /// Adds what was used since the last round.
    pub async fn sample(&mut self) {
        let now = self.clock.now_ms();
        let elapsed = u64::try_from(now - self.last).unwrap_or(0);
        self.last = now;
        let hour_ms = now.div_euclid(HOUR_MS) * HOUR_MS;
        let mut deltas = Vec::new();
        for fleet in &self.fleets {
            for r in fleet.running() {
                if r.running + r.paused > 0 {
                    deltas.push(of_running(r, hour_ms, elapsed));
                }
            }
            // Requests as the gateway counted them: a row's billed ms is the time serving them.
            for s in fleet.take_served() {
                deltas.push(UsageDelta {
                    namespace: s.namespace,
                    kind: WorkloadKind::Service,
                    name: s.name,
                    hour_ms,
                    requests: s.requests,
                    errors: s.errors,
                    billed_ms: s.busy_ms,
                    ..UsageDelta::default()
                });
            }
        }
        let mut marks = None;
        if let Some(sandboxes) = &self.sandboxes {
            let mut now_seen = HashMap::new();
            for sb in sandboxes.sandboxes() {
                let c = counters(&sb, now);
                // A sandbox seen for the first time is counted from its creation.
                let (r0, p0, s0, b0) = self.seen.get(&sb.id).copied().unwrap_or_default();
                let d = (c.0.saturating_sub(r0), c.1.saturating_sub(p0), c.2.saturating_sub(s0), c.3.saturating_sub(b0));
                now_seen.insert(sb.id.clone(), c);
                if d == (0, 0, 0, 0) {
                    continue;
                }
                let memory = u64::from(sb.config.memory_mb);
                let cpus_milli = (sb.config.cpus * 1000.0).round() as u64;
                deltas.push(UsageDelta {
                    namespace: sb.namespace.clone(),
                    kind: WorkloadKind::Sandbox,
                    name: sb.id.clone(),
                    hour_ms,
                    running_ms: d.0,
                    paused_ms: d.1,
                    standby_ms: d.2,
                    standby_byte_ms: u64::try_from(d.3).unwrap_or(u64::MAX),
                    mb_ms: d.0 * memory,
                    vcpu_milli_ms: d.0 * cpus_milli,
                    ..UsageDelta::default()
                });
            }
            marks = Some(
                now_seen.iter().map(|(id, c)| UsageMark { id: id.clone(), running_ms: c.0, paused_ms: c.1, standby_ms: c.2, standby_byte_ms: c.3 }).collect(),
            );
            self.seen = now_seen;
        }
        if let Err(e) = self.store.add_usage(deltas, marks).await {
            tracing::error!("metering services and sandboxes: {e}");
        }
    }
}

#[async_trait]
impl hangar_supervisor::Loop for Sampler {
    async fn tick(&mut self) {
        self.sample().await;
    }
    /// The last seconds of services and sandboxes are metered before they stop.
    async fn finish(&mut self) {
        self.sample().await;
    }
}

/// Drops usage rows older than the retention: work for one server of a cluster (a
/// [`hangar_supervisor::Scope::Once`] loop), at most once an hour.
pub struct Pruner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    pruned_hour: i64,
}

impl Pruner {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, retention: Duration) -> Pruner {
        Pruner { store, clock, retention, pruned_hour: i64::MIN }
    }
}

#[async_trait]
impl hangar_supervisor::Loop for Pruner {
    async fn tick(&mut self) {
        let now = self.clock.now_ms();
        let hour_ms = now.div_euclid(HOUR_MS) * HOUR_MS;
        if hour_ms == self.pruned_hour {
            return;
        }
        self.pruned_hour = hour_ms;
        let before = now - i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        if let Err(e) = self.store.prune_usage(before).await {
            tracing::warn!("pruning old usage: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::ManualClock;
    use hangar_store::UsageFilter;
    use hangar_supervisor::Loop as _;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeFleet {
        running: Mutex<Vec<Running>>,
        served: Mutex<Vec<Served>>,
    }

    impl Fleet for FakeFleet {
        fn running(&self) -> Vec<Running> {
            self.running.lock().unwrap().clone()
        }
        fn take_served(&self) -> Vec<Served> {
            std::mem::take(&mut *self.served.lock().unwrap())
        }
    }

    #[derive(Default)]
    struct FakeSandboxes(Mutex<Vec<Sandbox>>);

    impl Sandboxes for FakeSandboxes {
        fn sandboxes(&self) -> Vec<Sandbox> {
            self.0.lock().unwrap().clone()
        }
    }

    fn sandbox(id: &str, state: SandboxState, since_ms: i64, running_ms: u64) -> Sandbox {
        let mut sb: Sandbox = serde_json::from_value(serde_json::json!({
            "id": id, "namespace": "default", "image_id": "img", "state": state.as_str(),
            "created_ms": 0, "state_since_ms": since_ms, "last_active_ms": 0,
            "config": {"image": "img"}
        }))
        .unwrap_or_else(|e| panic!("a sandbox view: {e}"));
        sb.usage.running_ms = running_ms;
        sb
    }

    async fn rows(store: &Arc<dyn Store>, kind: WorkloadKind) -> Vec<UsageDelta> {
        store.list_usage(UsageFilter { kind: Some(kind), ..Default::default() }).await.unwrap()
    }

    #[tokio::test]
    async fn each_round_adds_what_ran_since_the_last_one_and_a_restart_counts_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(hangar_store_sqlite::SqliteStore::open(&dir.path().join("db")).unwrap());
        store.create_namespace("default", 0).await.unwrap();
        // 10 o'clock on the first day, plus a little.
        let clock = Arc::new(ManualClock::new(10 * HOUR_MS + 1_000));
        let fleet = Arc::new(FakeFleet::default());
        let sandboxes = Arc::new(FakeSandboxes::default());
        let web =
            Running { namespace: "default".into(), kind: WorkloadKind::Service, name: "web".into(), running: 2, paused: 0, cpus_milli: 500, memory_mb: 256 };
        fleet.running.lock().unwrap().push(web.clone());
        let mut s = Sampler::new(store.clone(), clock.clone(), vec![fleet.clone()], Some(sandboxes.clone())).await;

        clock.advance(Duration::from_secs(3));
        fleet.served.lock().unwrap().push(Served { namespace: "default".into(), name: "web".into(), requests: 7, errors: 1, busy_ms: 40 });
        sandboxes.0.lock().unwrap().push(sandbox("sb1", SandboxState::Running, clock.now_ms() - 2_000, 500));
        s.tick().await;
        let web_rows = rows(&store, WorkloadKind::Service).await;
        assert_eq!(web_rows.len(), 1);
        let w = &web_rows[0];
        assert_eq!((w.hour_ms, w.running_ms, w.mb_ms, w.vcpu_milli_ms), (10 * HOUR_MS, 6_000, 6_000 * 256, 6_000 * 500), "2 instances × 3 s");
        assert_eq!((w.requests, w.errors, w.billed_ms), (7, 1, 40), "served requests are taken once");
        let sb = rows(&store, WorkloadKind::Sandbox).await;
        assert_eq!(sb[0].running_ms, 2_500, "a new sandbox counts from its creation");

        // Another round: only the difference; served requests were handed over already.
        clock.advance(Duration::from_secs(1));
        s.tick().await;
        let w = &rows(&store, WorkloadKind::Service).await[0];
        assert_eq!((w.running_ms, w.requests), (8_000, 7));
        assert_eq!(rows(&store, WorkloadKind::Sandbox).await[0].running_ms, 3_500);

        // A restarted server reads the marks: the sandbox's time is not counted again.
        let mut again = Sampler::new(store.clone(), clock.clone(), vec![], Some(sandboxes.clone())).await;
        again.finish().await;
        assert_eq!(rows(&store, WorkloadKind::Sandbox).await[0].running_ms, 3_500);
        clock.advance(Duration::from_secs(2));
        again.tick().await;
        assert_eq!(rows(&store, WorkloadKind::Sandbox).await[0].running_ms, 5_500);

        // The next hour gets a row of its own.
        clock.advance(Duration::from_secs(3_600));
        s.tick().await;
        let w = rows(&store, WorkloadKind::Service).await;
        assert_eq!(w.iter().map(|r| r.hour_ms).collect::<Vec<_>>(), [10 * HOUR_MS, 11 * HOUR_MS]);
    }

    #[tokio::test]
    async fn old_rows_are_pruned_once_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(hangar_store_sqlite::SqliteStore::open(&dir.path().join("db")).unwrap());
        let clock = Arc::new(ManualClock::new(50 * HOUR_MS));
        let row = |hour: i64| UsageDelta {
            namespace: "default".into(),
            kind: WorkloadKind::Service,
            name: "web".into(),
            hour_ms: hour * HOUR_MS,
            running_ms: 1,
            ..Default::default()
        };
        store.add_usage(vec![row(1), row(30), row(49)], None).await.unwrap();
        let mut p = Pruner::new(store.clone(), clock.clone(), Duration::from_secs(24 * 3600));
        p.tick().await;
        let left: Vec<i64> = rows(&store, WorkloadKind::Service).await.iter().map(|r| r.hour_ms / HOUR_MS).collect();
        assert_eq!(left, [30, 49]);
        // Within the same hour nothing is read again, even as rows age.
        store.add_usage(vec![row(2)], None).await.unwrap();
        clock.advance(Duration::from_secs(60));
        p.tick().await;
        assert_eq!(rows(&store, WorkloadKind::Service).await.len(), 3);
        clock.advance(Duration::from_secs(3600));
        p.tick().await;
        assert_eq!(rows(&store, WorkloadKind::Service).await.len(), 2);
    }
}
