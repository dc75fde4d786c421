//! Metering: invocation records buffered off the request path and written to the store in
//! batches, the Prometheus metrics of the platform, [`history`]: every workload's recent
//! metrics in bounded memory, and [`usage`]: what services, sandboxes and warm instances use
//! over time, sampled into hourly rows.
//!
//! **Architecture Invariant:** [`Meter::record`] never blocks and never touches the database;
//! the writer task batches whatever has accumulated into one transaction. [`Meter::flush`]
//! and [`Meter::shutdown`] make everything recorded so far durable.
#![forbid(unsafe_code)]

pub mod history;
pub mod usage;

use std::sync::Arc;

use hangar_api::{InvocationRecord, Outcome, StartKind};
use hangar_store::Store;
use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

/// Most records written in one transaction.
const MAX_BATCH: usize = 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    namespace: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabels {
    runtime: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    namespace: String,
    function: String,
    outcome: String,
}

fn duration_histogram() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 20))
}

/// The labels of OpenTelemetry's FaaS metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaasLabels {
    namespace: String,
    faas_name: String,
}

/// Every metric Hangar exports.
pub struct Metrics {
    registry: Registry,
    faas_invocations: Family<FaasLabels, Counter>,
    faas_errors: Family<FaasLabels, Counter>,
    faas_timeouts: Family<FaasLabels, Counter>,
    faas_coldstarts: Family<FaasLabels, Counter>,
    faas_invoke_duration: Family<FaasLabels, Histogram, fn() -> Histogram>,
    faas_init_duration: Family<FaasLabels, Histogram, fn() -> Histogram>,
    invocations: Family<OutcomeLabels, Counter>,
    duration: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    cold_starts: Family<FunctionLabels, Counter>,
    instances: Family<FunctionLabels, Gauge>,
    prewarmed: Family<RuntimeLabels, Gauge>,
    prewarmed_taken: Family<RuntimeLabels, Counter>,
    records_written: Counter,
    record_write_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        // OpenTelemetry's FaaS metrics under their own names (semantic conventions).
        let faas_invocations = Family::<FaasLabels, Counter>::default();
        let faas_errors = Family::<FaasLabels, Counter>::default();
        let faas_timeouts = Family::<FaasLabels, Counter>::default();
        let faas_coldstarts = Family::<FaasLabels, Counter>::default();
        let faas_invoke_duration = Family::<FaasLabels, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let faas_init_duration = Family::<FaasLabels, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        root.register("faas_invocations", "Invocations of a function (OpenTelemetry faas.invocations)", faas_invocations.clone());
        root.register("faas_errors", "Invocations that failed (faas.errors)", faas_errors.clone());
        root.register("faas_timeouts", "Invocations that timed out (faas.timeouts)", faas_timeouts.clone());
        root.register("faas_coldstarts", "Invocations that started an instance (faas.coldstarts)", faas_coldstarts.clone());
        root.register("faas_invoke_duration_seconds", "Duration of invocations (faas.invoke_duration)", faas_invoke_duration.clone());
        root.register("faas_init_duration_seconds", "Time a cold start took to get its instance ready (faas.init_duration)", faas_init_duration.clone());
        let registry = root.sub_registry_with_prefix("hangar");
        let invocations = Family::<OutcomeLabels, Counter>::default();
        let duration = Family::<FunctionLabels, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let cold_starts = Family::<FunctionLabels, Counter>::default();
        let instances = Family::<FunctionLabels, Gauge>::default();
        let prewarmed = Family::<RuntimeLabels, Gauge>::default();
        let prewarmed_taken = Family::<RuntimeLabels, Counter>::default();
        let records_written = Counter::default();
        let record_write_errors = Counter::default();
        registry.register("invocations", "Invocations by function and outcome", invocations.clone());
        registry.register("invocation_duration_seconds", "Invocation duration", duration.clone());
        registry.register("cold_starts", "Invocations that had to load their revision first", cold_starts.clone());
        registry.register("instances", "Instances running now", instances.clone());
        registry.register("prewarmed_zygotes", "Prewarmed zygotes of a process runtime ready to be specialized to a function", prewarmed.clone());
        registry.register("prewarmed_zygotes_taken", "Prewarmed zygotes specialized to a function", prewarmed_taken.clone());
        registry.register("records_written", "Invocation records written to the store", records_written.clone());
        registry.register("record_write_errors", "Failed batch writes of invocation records (retried)", record_write_errors.clone());
        Metrics {
            registry: root,
            faas_invocations,
            faas_errors,
            faas_timeouts,
            faas_coldstarts,
            faas_invoke_duration,
            faas_init_duration,
            invocations,
            duration,
            cold_starts,
            instances,
            prewarmed,
            prewarmed_taken,
            records_written,
            record_write_errors,
        }
    }

    /// Registers a counter owned elsewhere (e.g. by a runtime), as `hangar_NAME`.
    pub fn register_counter(&mut self, name: &str, help: &str, counter: Counter) {
        self.registry.sub_registry_with_prefix("hangar").register(name, help, counter);
    }

    /// For the process runtimes to keep: the gauge of `runtime`'s prewarmed zygotes ready now,
    /// and the counter of those specialized to a function.
    pub fn prewarmed_zygotes(&self, runtime: &str) -> (Gauge, Counter) {
        let labels = RuntimeLabels { runtime: runtime.to_string() };
        (self.prewarmed.get_or_create(&labels).clone(), self.prewarmed_taken.get_or_create(&labels).clone())
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The metric handles of one function, resolved once so that the hot path only does atomics.
#[derive(Clone)]
pub struct FunctionMetrics {
    by_outcome: [Counter; 5],
    duration: Histogram,
    cold_starts: Counter,
    /// Instances of this function running now.
    pub instances: Gauge,
    /// OpenTelemetry's: invocations, errors, timeouts, cold starts, duration, init duration.
    faas: [Counter; 4],
    faas_duration: Histogram,
    faas_init: Histogram,
    /// Its metric history.
    history: Arc<history::Entry>,
}

impl FunctionMetrics {
    fn observe(&self, r: &InvocationRecord, cold_start: Option<std::time::Duration>) {
        let i = match r.ending.outcome {
            Outcome::Ok => 0,
            Outcome::Error => 1,
            Outcome::Timeout => 2,
            Outcome::OutOfMemory => 3,
            Outcome::Throttled => 4,
        };
        self.by_outcome[i].inc();
        let seconds = r.duration_us as f64 / 1e6;
        self.duration.observe(seconds);
        if r.start == StartKind::Cold {
            self.cold_starts.inc();
        }
        let [invocations, errors, timeouts, coldstarts] = &self.faas;
        invocations.inc();
        self.faas_duration.observe(seconds);
        if r.ending.outcome != Outcome::Ok {
            errors.inc();
        }
        if r.ending.outcome == Outcome::Timeout {
            timeouts.inc();
        }
        let cold_start = cold_start.filter(|_| r.start.is_cold_start());
        if let Some(d) = cold_start {
            coldstarts.inc();
            self.faas_init.observe(d.as_secs_f64());
        }
        self.history.observe(r.duration_us, r.ending.outcome != Outcome::Ok, cold_start.map(|d| d.as_micros() as u64));
    }
}

/// How a function's history is named.
fn function_ref(namespace: &str, function: &str) -> hangar_api::traces::WorkloadRef {
    hangar_api::traces::WorkloadRef { kind: hangar_api::WorkloadKind::Function, namespace: namespace.into(), name: function.into() }
}

/// Where each sample's values go besides the history (OTLP export): given the sample's
/// start and end (Unix seconds) and its values.
pub type SampleExport = Box<dyn Fn(u64, u64, Vec<history::Sampled>) + Send + Sync>;

/// Samples every workload's metric history every 10 s with the gauges their owners report.
pub struct HistorySampler {
    pub history: history::History,
    pub sources: Vec<Arc<dyn history::GaugeSource>>,
    pub clock: Arc<dyn hangar_core::Clock>,
    pub export: Option<SampleExport>,
    /// When the last sample was taken (Unix seconds).
    pub last_s: Option<u64>,
}

#[async_trait::async_trait]
impl hangar_supervisor::Loop for HistorySampler {
    async fn tick(&mut self) {
        // Each source fills its own gauges of a workload (the others are zero): they add up.
        let mut gauges: std::collections::HashMap<_, history::Gauges> = std::collections::HashMap::new();
        for s in &self.sources {
            for (w, g) in s.gauges() {
                let sum = gauges.entry(w).or_default();
                for (a, b) in sum.0.iter_mut().zip(g.0) {
                    *a = a.saturating_add(b);
                }
            }
        }
        let now_s = u64::try_from(self.clock.now_ms() / 1000).unwrap_or(0);
        let sampled = self.history.sample(now_s, &gauges);
        let start = self.last_s.replace(now_s).unwrap_or(now_s.saturating_sub(history::FINE_S));
        if let Some(export) = &self.export {
            export(start, now_s, sampled);
        }
    }
}

enum Msg {
    Record(InvocationRecord),
    Flush(oneshot::Sender<()>),
}

/// Handle to the metering pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Meter {
    tx: mpsc::UnboundedSender<Msg>,
    metrics: Arc<Metrics>,
    history: history::History,
}

/// The writer task; await it after [`Meter::shutdown`] to know every record is written.
pub type WriterTask = tokio::task::JoinHandle<()>;

impl Meter {
    /// Starts the writer task that moves records into `store`.
    pub fn start(store: Arc<dyn Store>, metrics: Metrics) -> (Meter, WriterTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(metrics);
        let task = tokio::spawn(writer(store, rx, metrics.clone()));
        (Meter { tx, metrics, history: history::History::default() }, task)
    }

    /// Every workload's metric history.
    pub fn history(&self) -> &history::History {
        &self.history
    }

    /// The metric handles of a function.
    pub fn function_metrics(&self, namespace: &str, function: &str) -> FunctionMetrics {
        let m = &self.metrics;
        let outcome = |o: Outcome| {
            m.invocations.get_or_create(&OutcomeLabels { namespace: namespace.into(), function: function.into(), outcome: o.as_str().into() }).clone()
        };
        let labels = FunctionLabels { namespace: namespace.into(), function: function.into() };
        let faas = FaasLabels { namespace: namespace.into(), faas_name: function.into() };
        FunctionMetrics {
            by_outcome: [outcome(Outcome::Ok), outcome(Outcome::Error), outcome(Outcome::Timeout), outcome(Outcome::OutOfMemory), outcome(Outcome::Throttled)],
            duration: m.duration.get_or_create(&labels).clone(),
            cold_starts: m.cold_starts.get_or_create(&labels).clone(),
            instances: m.instances.get_or_create(&labels).clone(),
            faas: [
                m.faas_invocations.get_or_create(&faas).clone(),
                m.faas_errors.get_or_create(&faas).clone(),
                m.faas_timeouts.get_or_create(&faas).clone(),
                m.faas_coldstarts.get_or_create(&faas).clone(),
            ],
            faas_duration: m.faas_invoke_duration.get_or_create(&faas).clone(),
            faas_init: m.faas_init_duration.get_or_create(&faas).clone(),
            history: self.history.entry(&function_ref(namespace, function)),
        }
    }

    /// Drops a deleted function's metric series, so `/metrics` shows only what exists.
    pub fn forget_function(&self, namespace: &str, function: &str) {
        let m = &self.metrics;
        let labels = FunctionLabels { namespace: namespace.into(), function: function.into() };
        m.duration.remove(&labels);
        m.cold_starts.remove(&labels);
        m.instances.remove(&labels);
        let faas = FaasLabels { namespace: namespace.into(), faas_name: function.into() };
        m.faas_invocations.remove(&faas);
        m.faas_errors.remove(&faas);
        m.faas_timeouts.remove(&faas);
        m.faas_coldstarts.remove(&faas);
        m.faas_invoke_duration.remove(&faas);
        m.faas_init_duration.remove(&faas);
        self.history.forget(&function_ref(namespace, function));
        for o in Outcome::ALL {
            m.invocations.remove(&OutcomeLabels { namespace: namespace.into(), function: function.into(), outcome: (*o).into() });
        }
    }

    /// Counts the record in the metrics and queues it for the store. Never blocks.
    pub fn record(&self, metrics: &FunctionMetrics, record: InvocationRecord) {
        self.record_started(metrics, record, None);
    }

    /// [`Meter::record`] of an invocation whose instance took `cold_start` to be ready for it
    /// (when it started one).
    pub fn record_started(&self, metrics: &FunctionMetrics, record: InvocationRecord, cold_start: Option<std::time::Duration>) {
        metrics.observe(&record, cold_start);
        if self.tx.send(Msg::Record(record)).is_err() {
            tracing::error!("invocation record dropped: the meter was already shut down");
        }
    }

    /// Waits until every record queued before this call is in the store.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Prometheus text of all metrics.
    pub fn encode_metrics(&self) -> String {
        self.metrics.encode()
    }
}

async fn writer(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Msg>, metrics: Arc<Metrics>) {
    let mut msgs = Vec::with_capacity(MAX_BATCH);
    let mut batch: Vec<InvocationRecord> = Vec::with_capacity(MAX_BATCH);
    let mut waiters = Vec::new();
    loop {
        if rx.recv_many(&mut msgs, MAX_BATCH).await == 0 {
            break; // every sender is gone and everything was drained
        }
        for m in msgs.drain(..) {
            match m {
                Msg::Record(r) => batch.push(r),
                Msg::Flush(w) => waiters.push(w),
            }
        }
        write_batch(&*store, &mut batch, &metrics).await;
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
    write_batch(&*store, &mut batch, &metrics).await;
}

/// Writes the batch, retrying with backoff: records are only dropped from memory once written.
async fn write_batch(store: &dyn Store, batch: &mut Vec<InvocationRecord>, metrics: &Metrics) {
    if batch.is_empty() {
        return;
    }
    let mut delay = std::time::Duration::from_millis(50);
    for attempt in 1.. {
        match store.insert_invocations(batch.clone()).await {
            Ok(()) => {
                metrics.records_written.inc_by(batch.len() as u64);
                batch.clear();
                return;
            }
            Err(e) => {
                metrics.record_write_errors.inc();
                tracing::error!(attempt, records = batch.len(), "writing invocation records failed, retrying: {e}");
                if attempt >= 20 {
                    tracing::error!(records = batch.len(), "giving up on invocation records after 20 attempts");
                    batch.clear();
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// Deletes invocation records (and their logs) older than the retention (`--log-retention`):
/// work for one server of a cluster (a [`hangar_supervisor::Scope::Once`] loop), in batches so
/// no write holds the store long.
pub struct RecordPruner {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn hangar_core::Clock>,
    pub retention: std::time::Duration,
}

/// Records deleted per statement, and per round at most.
const PRUNE_BATCH: u32 = 5000;
const PRUNE_ROUND: u64 = 200_000;

#[async_trait::async_trait]
impl hangar_supervisor::Loop for RecordPruner {
    async fn tick(&mut self) {
        let before = self.clock.now_ms() - i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX / 2);
        let mut gone = 0;
        while gone < PRUNE_ROUND {
            match self.store.prune_invocations(before, PRUNE_BATCH).await {
                Ok(n) => {
                    gone += n;
                    if n < u64::from(PRUNE_BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("deleting invocation records past their retention failed (tried again later): {e}");
                    break;
                }
            }
        }
        if gone > 0 {
            tracing::debug!("deleted {gone} invocation record(s) past their retention");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::Trigger;
    use hangar_store::{InvocationFilter, Ledger as _};
    use hangar_store_sqlite::SqliteStore;

    fn rec(i: u32) -> InvocationRecord {
        InvocationRecord {
            id: format!("{i:08}"),
            namespace: "default".into(),
            function: "f".into(),
            revision: 1,
            trigger: Trigger::Api,
            started_ms: 0,
            duration_us: 1234,
            billed_ms: 2,
            memory_mb: 128,
            start: if i == 0 { StartKind::Cold } else { StartKind::Warm },
            ending: hangar_api::Ending { status: 200, ..Default::default() },
            parent_id: None,
        }
    }

    #[tokio::test]
    async fn records_are_durable_after_flush_and_shutdown() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let (meter, task) = Meter::start(store.clone(), Metrics::new());
        let fm = meter.function_metrics("default", "f");
        for i in 0..10 {
            meter.record(&fm, rec(i));
        }
        meter.flush().await;
        let all = |limit| InvocationFilter { limit, ..Default::default() };
        assert_eq!(store.list_invocations(all(100)).await.unwrap().len(), 10);
        for i in 10..2500 {
            meter.record(&fm, rec(i));
        }
        let text = meter.encode_metrics();
        assert!(text.contains("hangar_cold_starts_total{namespace=\"default\",function=\"f\"} 1"), "{text}");
        drop(meter);
        task.await.unwrap();
        assert_eq!(store.list_invocations(all(10_000)).await.unwrap().len(), 2500);
    }
}
