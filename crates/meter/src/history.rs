//! Metric history: per workload, a point every 10 s for the last hour and every minute for the
//! last day, in fixed rings (about 50 KiB) allocated once the workload has anything to keep:
//! a deployed function never called costs a few bytes.
//!
//! The request path only adds to atomics ([`Window::observe`]); a loop ([`Sampler`]) closes
//! the window every 10 s into a point, with the gauges the workloads' owners report (instances
//! by state, queue depth, CPU and memory), and folds six of them into the minute's point.
//! Durations are kept as a log-scale histogram per window (1/4 octave), from which each
//! point keeps p50, p95 and p99.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hangar_api::WorkloadKind;
use hangar_api::traces::WorkloadRef;

/// Seconds per fine point, and how many the fine ring keeps (an hour).
pub const FINE_S: u64 = 10;
pub const FINE_POINTS: usize = 360;
/// Seconds per coarse point, and how many the coarse ring keeps (a day).
pub const COARSE_S: u64 = 60;
pub const COARSE_POINTS: usize = 1440;

/// Histogram buckets: below 16 µs, then 4 per octave up to 2^31 µs (~36 min): a quantile is
/// the middle of its bucket, within 10 %.
const OCTAVES: usize = 27;
const PER_OCTAVE: usize = 4;
const BUCKETS: usize = 1 + OCTAVES * PER_OCTAVE;

/// Declares [`Metric`] with the names users ask for.
macro_rules! wire_metric {
    ($($variant:ident = $text:literal),+ $(,)?) => {
        /// A series a workload has.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Metric { $($variant),+ }

        impl Metric {
            pub const ALL: &'static [Metric] = &[$(Metric::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Metric::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for Metric {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Metric::$variant),)+
                    other => Err(format!("unknown metric `{}`; one of: {}", hangar_api::validate::shown(other), [$($text),+].join(", "))),
                }
            }
        }
    };
}

wire_metric! {
    Requests = "requests",
    Errors = "errors",
    DurationP50 = "duration_p50_ms",
    DurationP95 = "duration_p95_ms",
    DurationP99 = "duration_p99_ms",
    ColdStarts = "cold_starts",
    ColdStartMs = "cold_start_ms",
    InFlight = "in_flight",
    Idle = "instances_idle",
    Paused = "instances_paused",
    Ready = "instances_ready",
    Starting = "instances_starting",
    QueueDepth = "queue_depth",
    DeadLetters = "dead_letters",
    Cpu = "cpu_millicores",
    Memory = "memory_mb",
}

/// Where a metric lives in a point of a workload of `kind` (`None`: that kind has no such
/// series). Slots 0..4 hold two u32 counters; the rest one u16 each.
fn slot(kind: WorkloadKind, m: Metric) -> Option<usize> {
    use Metric::*;
    let common = match m {
        Requests => Some(0),
        Errors => Some(2),
        DurationP50 => Some(4),
        DurationP95 => Some(5),
        DurationP99 => Some(6),
        InFlight => Some(9),
        _ => None,
    };
    common.or(match (kind, m) {
        (WorkloadKind::Function, ColdStarts) => Some(7),
        (WorkloadKind::Function, ColdStartMs) => Some(8),
        (WorkloadKind::Function, Idle) => Some(10),
        (WorkloadKind::Function, Paused) => Some(11),
        (WorkloadKind::Function, QueueDepth) => Some(12),
        (WorkloadKind::Function, DeadLetters) => Some(13),
        (WorkloadKind::Service, Ready) => Some(10),
        (WorkloadKind::Service, Starting) => Some(11),
        (WorkloadKind::Service, Cpu) => Some(12),
        (WorkloadKind::Service, Memory) => Some(13),
        _ => None,
    })
}

/// The metrics a workload of `kind` has.
pub fn metrics_of(kind: WorkloadKind) -> Vec<Metric> {
    Metric::ALL.iter().copied().filter(|m| slot(kind, *m).is_some()).collect()
}

/// One point: 14 × u16 (28 bytes); which slot is what depends on the workload's kind.
type Point = [u16; 14];

/// Durations as u16: `ln(1 + µs) × 3000` (0.03 % steps up to about 4 hours).
fn encode_us(us: f64) -> u16 {
    ((us.max(0.0) + 1.0).ln() * 3000.0).round().min(f64::from(u16::MAX)) as u16
}

fn decode_us(code: u16) -> f64 {
    (f64::from(code) / 3000.0).exp() - 1.0
}

fn get32(p: &Point, at: usize) -> u32 {
    (u32::from(p[at]) << 16) | u32::from(p[at + 1])
}

fn set32(p: &mut Point, at: usize, v: u32) {
    p[at] = (v >> 16) as u16;
    p[at + 1] = v as u16;
}

fn bucket(us: u64) -> usize {
    if us < 16 {
        return 0;
    }
    let octave = 63 - us.leading_zeros() as usize; // 4..
    let sub = ((us >> (octave - 2)) & 3) as usize;
    (1 + (octave - 4) * PER_OCTAVE + sub).min(BUCKETS - 1)
}

/// The middle of a bucket, in µs.
fn bucket_mid(i: usize) -> f64 {
    if i == 0 {
        return 8.0;
    }
    let (octave, sub) = ((i - 1) / PER_OCTAVE + 4, (i - 1) % PER_OCTAVE);
    let (low, width) = ((1u64 << octave) as f64 * (1.0 + sub as f64 / 4.0), (1u64 << octave) as f64 / 4.0);
    low + width / 2.0
}

/// What the request path adds to during one 10 s window.
#[derive(Debug)]
pub struct Window {
    requests: AtomicU32,
    errors: AtomicU32,
    cold: AtomicU32,
    cold_us: AtomicU64,
    durations: [AtomicU32; BUCKETS],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            requests: AtomicU32::new(0),
            errors: AtomicU32::new(0),
            cold: AtomicU32::new(0),
            cold_us: AtomicU64::new(0),
            durations: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Window {
    /// Counts one request: how long it took, whether it failed, and the time its instance took
    /// to start if it was a cold start.
    pub fn observe(&self, duration_us: u64, failed: bool, cold_start_us: Option<u64>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(us) = cold_start_us {
            self.cold.fetch_add(1, Ordering::Relaxed);
            self.cold_us.fetch_add(us, Ordering::Relaxed);
        }
        self.durations[bucket(duration_us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Everything counted since the last take, and starts over.
    fn take(&self, into: &mut Counted) {
        into.requests += u64::from(self.requests.swap(0, Ordering::Relaxed));
        into.errors += u64::from(self.errors.swap(0, Ordering::Relaxed));
        into.cold += u64::from(self.cold.swap(0, Ordering::Relaxed));
        into.cold_us += self.cold_us.swap(0, Ordering::Relaxed);
        for (h, d) in into.durations.iter_mut().zip(&self.durations) {
            *h += d.swap(0, Ordering::Relaxed);
        }
    }
}

/// Counts of a span of time, as plain numbers.
#[derive(Clone, Debug)]
struct Counted {
    requests: u64,
    errors: u64,
    cold: u64,
    cold_us: u64,
    /// Events given up (functions' dead letters), which add up like requests.
    dead: u64,
    durations: [u32; BUCKETS],
}

impl Default for Counted {
    fn default() -> Self {
        Counted { requests: 0, errors: 0, cold: 0, cold_us: 0, dead: 0, durations: [0; BUCKETS] }
    }
}

impl Counted {
    fn add(&mut self, other: &Counted) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.cold += other.cold;
        self.cold_us += other.cold_us;
        self.dead += other.dead;
        for (a, b) in self.durations.iter_mut().zip(&other.durations) {
            *a += b;
        }
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.durations.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.durations.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(bucket_mid(i));
            }
        }
        None
    }

    /// The point of these counts and `gauges` (in the kind's slots 9..14; a function's dead
    /// letters are counted, not sampled).
    fn point(&self, gauges: &Gauges, kind: WorkloadKind) -> Point {
        let mut p = [0u16; 14];
        set32(&mut p, 0, self.requests.min(u64::from(u32::MAX)) as u32);
        set32(&mut p, 2, self.errors.min(u64::from(u32::MAX)) as u32);
        for (at, q) in [(4, 0.5), (5, 0.95), (6, 0.99)] {
            // 0 says "no request"; a duration is at least code 1.
            p[at] = self.quantile(q).map_or(0, |us| encode_us(us).max(1));
        }
        p[7] = self.cold.min(u64::from(u16::MAX)) as u16;
        p[8] = self.cold_us.checked_div(self.cold).map_or(0, |us| (us / 1000).min(u64::from(u16::MAX)) as u16);
        for (i, g) in gauges.0.iter().enumerate() {
            p[9 + i] = (*g).min(u32::from(u16::MAX)) as u16;
        }
        if kind == WorkloadKind::Function {
            p[13] = self.dead.min(u64::from(u16::MAX)) as u16;
        }
        p
    }
}

/// One workload's values of one sample.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub workload: WorkloadRef,
    /// Durations in ms; counts since the last sample; gauges as they are.
    pub values: Vec<(Metric, f64)>,
}

impl Metric {
    /// Whether the metric counts what happened since the last sample (a delta), rather than
    /// saying how something is now.
    pub fn is_count(self) -> bool {
        matches!(self, Metric::Requests | Metric::Errors | Metric::ColdStarts | Metric::DeadLetters)
    }

    /// Its unit, as OpenTelemetry writes units.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::DurationP50 | Metric::DurationP95 | Metric::DurationP99 | Metric::ColdStartMs => "ms",
            Metric::Cpu => "m{cpu}",
            Metric::Memory => "MiBy",
            _ => "1",
        }
    }
}

/// A workload's gauges at a sample, in its kind's order: in flight, then (functions) idle,
/// paused, queue depth, dead letters or (services) ready, starting, CPU millicores, memory MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges(pub [u32; 5]);

/// Who reports the gauges of the workloads it owns (the scheduler, the services, the queue).
pub trait GaugeSource: Send + Sync + 'static {
    /// Each workload's gauges now; a workload it does not name keeps zeros.
    fn gauges(&self) -> Vec<(WorkloadRef, Gauges)>;
}

/// One ring of points.
#[derive(Debug)]
struct Ring {
    points: Box<[Point]>,
    /// The newest period written (Unix seconds / period), if any.
    last: Option<u64>,
    /// The first period ever written: nothing before it is known.
    first: u64,
    period_s: u64,
}

impl Ring {
    fn new(len: usize, period_s: u64) -> Ring {
        Ring { points: vec![[0u16; 14]; len].into_boxed_slice(), last: None, first: 0, period_s }
    }

    /// Writes the point of `period` (again, as it fills); an older period than the newest is
    /// left alone (the clock went back).
    fn put(&mut self, period: u64, p: Point) {
        if self.last.is_some_and(|l| period < l) {
            return;
        }
        let len = self.points.len() as u64;
        // Periods skipped since the last write held nothing.
        if let Some(last) = self.last {
            for skipped in (last + 1)..period.min(last + 1 + len) {
                self.points[(skipped % len) as usize] = [0; 14];
            }
        }
        self.points[(period % len) as usize] = p;
        if self.last.is_none() {
            self.first = period;
        }
        self.last = Some(self.last.map_or(period, |l| l.max(period)));
    }

    /// The points from `since_s` on, oldest first, as (period start in Unix seconds, point).
    fn read(&self, since_s: u64) -> Vec<(u64, Point)> {
        let Some(last) = self.last else { return Vec::new() };
        let len = self.points.len() as u64;
        let first = (since_s / self.period_s).max(last.saturating_sub(len - 1)).max(self.first);
        (first..=last).map(|n| (n * self.period_s, self.points[(n % len) as usize])).collect()
    }
}

/// One workload's history.
#[derive(Debug)]
pub struct Entry {
    pub kind: WorkloadKind,
    /// What the request path adds to, once it adds anything.
    window: std::sync::OnceLock<Box<Window>>,
    rings: Mutex<Option<Box<Rings>>>,
}

impl Entry {
    /// Counts one request (see [`Window::observe`]).
    pub fn observe(&self, duration_us: u64, failed: bool, cold_start_us: Option<u64>) {
        self.window.get_or_init(Box::default).observe(duration_us, failed, cold_start_us);
    }
}

#[derive(Debug)]
struct Rings {
    fine: Ring,
    coarse: Ring,
    /// The 10 s period and the minute being filled, and their counts so far.
    period: Option<(u64, Counted)>,
    minute: Option<(u64, Counted)>,
}

/// Adds `counted` to the counts of `period`, starting over when the period changed; returns
/// the counts so far.
fn fill(current: &mut Option<(u64, Counted)>, period: u64, counted: &Counted) -> Counted {
    match current {
        Some((p, c)) if *p == period => c.add(counted),
        _ => *current = Some((period, counted.clone())),
    }
    current.as_ref().map(|(_, c)| c.clone()).unwrap_or_default()
}

/// Every workload's history. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct History {
    entries: Arc<RwLock<HashMap<WorkloadRef, Arc<Entry>>>>,
}

impl History {
    /// The history of `w`, made on first use.
    pub fn entry(&self, w: &WorkloadRef) -> Arc<Entry> {
        if let Some(e) = self.entries.read().unwrap_or_else(|p| p.into_inner()).get(w) {
            return e.clone();
        }
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        map.entry(w.clone()).or_insert_with(|| Arc::new(Entry { kind: w.kind, window: std::sync::OnceLock::new(), rings: Mutex::new(None) })).clone()
    }

    /// Forgets a deleted workload.
    pub fn forget(&self, w: &WorkloadRef) {
        self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(w);
    }

    /// Takes every workload's window into the points of the 10 s period and the minute holding
    /// `now_s` (a period sampled twice adds up), with `gauges` (by workload; a point's gauges
    /// are its last sample's).
    /// Returns each workload's values of this sample alone (what it counted since the last
    /// one, and its gauges now), for export.
    pub fn sample(&self, now_s: u64, gauges: &HashMap<WorkloadRef, Gauges>) -> Vec<Sampled> {
        let mut out = Vec::new();
        for (g, _) in gauges.iter() {
            self.entry(g);
        }
        let entries: Vec<(WorkloadRef, Arc<Entry>)> =
            self.entries.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (period, minute) = (now_s / FINE_S, now_s / COARSE_S);
        for (w, e) in entries {
            let mut counted = Counted::default();
            if let Some(window) = e.window.get() {
                window.take(&mut counted);
            }
            let g = gauges.get(&w).copied().unwrap_or_default();
            if e.kind == WorkloadKind::Function {
                // Reported as given up since the last sample.
                counted.dead += u64::from(g.0[4]);
            }
            let mut rings = e.rings.lock().unwrap_or_else(|p| p.into_inner());
            if rings.is_none() && counted.requests == 0 && g == Gauges::default() {
                continue;
            }
            let r = rings.get_or_insert_with(|| {
                Box::new(Rings { fine: Ring::new(FINE_POINTS, FINE_S), coarse: Ring::new(COARSE_POINTS, COARSE_S), period: None, minute: None })
            });
            let fine = fill(&mut r.period, period, &counted).point(&g, e.kind);
            r.fine.put(period, fine);
            let coarse = fill(&mut r.minute, minute, &counted).point(&g, e.kind);
            r.coarse.put(minute, coarse);
            let this = counted.point(&g, e.kind);
            let values = metrics_of(e.kind).into_iter().filter_map(|m| Some((m, value(&this, slot(e.kind, m)?, m)?))).collect();
            out.push(Sampled { workload: w, values });
        }
        out
    }

    /// `metric` of workload `w` from `since_s` on, every `step_s` (10: the fine ring, an hour
    /// back at most; 60: the coarse one, a day back), the current period included.
    pub fn series(&self, w: &WorkloadRef, metric: Metric, since_s: u64, step_s: u64) -> Result<Vec<(u64, Option<f64>)>, SeriesError> {
        let at = slot(w.kind, metric).ok_or(SeriesError::NoSuchMetric { metric, kind: w.kind })?;
        let Some(e) = self.entries.read().unwrap_or_else(|p| p.into_inner()).get(w).cloned() else { return Ok(Vec::new()) };
        let rings = e.rings.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = rings.as_ref() else { return Ok(Vec::new()) };
        let points = match step_s {
            FINE_S => r.fine.read(since_s),
            COARSE_S => r.coarse.read(since_s),
            other => return Err(SeriesError::Step(other)),
        };
        Ok(points.into_iter().map(|(t, p)| (t, value(&p, at, metric))).collect())
    }

    /// Workloads whose rings are allocated (they had something to keep).
    pub fn with_rings(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).values().filter(|e| e.rings.lock().unwrap_or_else(|p| p.into_inner()).is_some()).count()
    }

    /// Workloads with a history now.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A point's value of `metric` (at `at`): durations in ms (`None` without requests).
fn value(p: &Point, at: usize, metric: Metric) -> Option<f64> {
    match metric {
        Metric::Requests | Metric::Errors => Some(f64::from(get32(p, at))),
        Metric::DurationP50 | Metric::DurationP95 | Metric::DurationP99 => (p[at] != 0).then(|| (decode_us(p[at]) / 1000.0 * 1000.0).round() / 1000.0),
        _ => Some(f64::from(p[at])),
    }
}

/// Why a series cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error("metric `{}` is not kept for a {kind}; a {kind} has: {}", metric.as_str(), metrics_of(*kind).iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "))]
    NoSuchMetric { metric: Metric, kind: WorkloadKind },
    #[error("step {0}s: points are kept every 10s (the last hour) and every 60s (the last day)")]
    Step(u64),
}

/// Bytes one workload's history holds once it has anything (its rings, their counts so far
/// and its window), for the memory figure.
pub const BYTES_PER_WORKLOAD: usize =
    (FINE_POINTS + COARSE_POINTS) * std::mem::size_of::<Point>() + std::mem::size_of::<Rings>() + std::mem::size_of::<Window>() + std::mem::size_of::<Entry>();

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> WorkloadRef {
        WorkloadRef { kind: WorkloadKind::Function, namespace: "default".into(), name: name.into() }
    }

    #[test]
    fn durations_keep_their_quantiles_within_a_bucket() {
        for us in [20u64, 150, 999, 12_345, 2_000_000, 900_000_000] {
            let mid = bucket_mid(bucket(us));
            assert!((mid - us as f64).abs() / (us as f64) < 0.13, "{us} µs → {mid}");
            let code = encode_us(us as f64);
            assert!((decode_us(code) - us as f64).abs() / (us as f64) < 0.001, "{us}");
        }
        let w = Window::default();
        for ms in 1..=100u64 {
            w.observe(ms * 1000, ms > 95, (ms == 1).then_some(250_000));
        }
        let mut c = Counted::default();
        w.take(&mut c);
        c.dead = 2;
        let p = c.point(&Gauges([3, 1, 0, 7, 9]), WorkloadKind::Function);
        assert_eq!((get32(&p, 0), get32(&p, 2), p[7], p[8]), (100, 5, 1, 250));
        let p50 = value(&p, 4, Metric::DurationP50).unwrap();
        let p99 = value(&p, 6, Metric::DurationP99).unwrap();
        assert!((45.0..56.0).contains(&p50) && (90.0..110.0).contains(&p99), "{p50} {p99}");
        assert_eq!((p[9], p[12], p[13]), (3, 7, 2));
        // Taken: the window starts over.
        let mut again = Counted::default();
        w.take(&mut again);
        assert_eq!(again.requests, 0);
        // A period sampled twice adds up.
        let h = History::default();
        let e = h.entry(&f("b"));
        e.observe(10, false, None);
        h.sample(1_800_000_001, &HashMap::new());
        e.observe(10, false, None);
        h.sample(1_800_000_008, &HashMap::new());
        assert_eq!(h.series(&f("b"), Metric::Requests, 0, 10).unwrap(), vec![(1_800_000_000, Some(2.0))]);
    }

    #[test]
    fn points_fill_the_fine_ring_and_fold_into_minutes() {
        let h = History::default();
        let e = h.entry(&f("a"));
        // A minute's start (1_800_000_000 is a multiple of 60).
        let t0: u64 = 1_800_000_000;
        for i in 0..12u64 {
            for _ in 0..=i {
                e.observe(1000, false, None);
            }
            h.sample(t0 + i * 10, &HashMap::new());
        }
        let fine = h.series(&f("a"), Metric::Requests, 0, 10).unwrap();
        assert_eq!(fine.len(), 12);
        assert_eq!(fine[0], (t0, Some(1.0)));
        assert_eq!(fine[11], (t0 + 110, Some(12.0)));
        let coarse = h.series(&f("a"), Metric::Requests, 0, 60).unwrap();
        // The first minute is done (1+..+6 = 21), the second is being filled (7+..+12 = 57).
        assert_eq!(coarse, vec![(t0, Some(21.0)), (t0 + 60, Some(57.0))]);
        // Idle periods read as zero, and an hour later the fine ring has moved on.
        h.sample(t0 + 200, &HashMap::new());
        let fine = h.series(&f("a"), Metric::Requests, t0 + 120, 10).unwrap();
        assert_eq!(fine.iter().map(|(_, v)| v.unwrap()).collect::<Vec<_>>(), vec![0.0; 9]);
        h.sample(t0 + 200 + 3600, &HashMap::new());
        assert_eq!(h.series(&f("a"), Metric::Requests, 0, 10).unwrap().len(), FINE_POINTS);
        assert!(h.series(&f("a"), Metric::DurationP50, t0 + 3700, 10).unwrap().iter().all(|(_, v)| v.is_none()));
    }

    #[test]
    fn kinds_have_their_own_metrics_and_steps_are_checked() {
        let h = History::default();
        let svc = WorkloadRef { kind: WorkloadKind::Service, namespace: "default".into(), name: "web".into() };
        let mut g = HashMap::new();
        g.insert(svc.clone(), Gauges([1, 2, 0, 250, 64]));
        h.sample(1_800_000_000, &g);
        assert_eq!(h.series(&svc, Metric::Memory, 0, 10).unwrap()[0].1, Some(64.0));
        assert!(matches!(h.series(&svc, Metric::ColdStarts, 0, 10), Err(SeriesError::NoSuchMetric { .. })));
        assert!(matches!(h.series(&svc, Metric::Requests, 0, 30), Err(SeriesError::Step(30))));
        assert!("bogus".parse::<Metric>().unwrap_err().contains("requests"));
        // A function's dead letters add up over a minute; its queue depth is the last sample's.
        let fun = f("q");
        for (i, depth) in [5u32, 3, 1].into_iter().enumerate() {
            let mut g = HashMap::new();
            g.insert(fun.clone(), Gauges([0, 0, 0, depth, 1]));
            h.sample(1_800_000_000 + 10 * i as u64, &g);
        }
        assert_eq!(h.series(&fun, Metric::DeadLetters, 0, 60).unwrap(), vec![(1_800_000_000, Some(3.0))]);
        assert_eq!(h.series(&fun, Metric::QueueDepth, 0, 60).unwrap(), vec![(1_800_000_000, Some(1.0))]);
        // 1,000 workloads in under 50 MiB.
        const { assert!(BYTES_PER_WORKLOAD * 1000 < 50 << 20) };
    }
}
