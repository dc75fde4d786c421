//! The node's built-in trace store: which traces are kept (sampling), bounded in spans and
//! age, and searched by the API.
//!
//! Whether a span is kept is decided before it is built ([`TraceStore::keeps`]), so an
//! unsampled request costs no span at all: a span is kept when its trace is sampled (the
//! caller's flag, or the ratio of trace ids every node applies alike), it failed or was slow,
//! its trace is kept already, or its workload has not had a trace kept in the current second.
//! Hops record a parent's span before its children's where they can (an invocation before
//! how its instance was obtained), so a failed or slow invocation keeps those too.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_api::WorkloadKind;
use hangar_api::traces::{SpanStatus, TraceSummary, TraceView, WorkloadRef};

use crate::context::TraceId;
use crate::span::{Span, now_ns};

/// Slots of the per-second reservoir (workloads share one by hash): each holds the second and
/// how many traces were kept in it, as `second << 16 | count`.
const RESERVOIR_SLOTS: usize = 4096;
/// Bits of the filter of unsampled traces kept (by trace id hash), and how many may be set
/// before it starts over.
const KEPT_BITS: usize = 1 << 16;
const KEPT_RESET: u64 = (KEPT_BITS / 4) as u64;

/// How much the store keeps and which traces.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Share of traces sampled by id (0..=1).
    pub ratio: f64,
    /// Traces kept per workload per second besides.
    pub per_second: u32,
    /// A span at least this long keeps its trace.
    pub slow: Duration,
    /// Most spans kept; the oldest traces go first.
    pub max_spans: usize,
    /// How long a trace is kept.
    pub retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { ratio: 0.01, per_second: 1, slow: Duration::from_secs(1), max_spans: 50_000, retention: Duration::from_secs(3600) }
    }
}

/// What a trace search asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only traces with a span of this namespace, and only those spans.
    pub namespace: Option<String>,
    /// Only traces touching a workload of this name (and kind, if given).
    pub workload: Option<String>,
    pub kind: Option<hangar_api::WorkloadKind>,
    /// Unix microseconds: only traces that started since.
    pub since_us: u64,
    pub min_duration_us: u64,
    pub status: Option<SpanStatus>,
    pub limit: usize,
}

#[derive(Default)]
struct Inner {
    traces: HashMap<TraceId, Vec<Arc<Span>>>,
    /// Kept traces by when they were kept, oldest first.
    order: VecDeque<(u64, TraceId)>,
    spans: usize,
}

/// See the module docs.
pub struct TraceStore {
    settings: Settings,
    /// `ratio` as a threshold on [`TraceId::ratio_key`].
    threshold: u64,
    inner: Mutex<Inner>,
    /// Deciding takes no lock for the common request (unsampled, ok, fast): the reservoir is
    /// atomics, and unsampled traces kept (a failed span's) are marked in a bit filter, so a
    /// trace not marked is known not kept without looking.
    reservoir: Box<[AtomicU64]>,
    kept_unsampled: Box<[AtomicU64]>,
    kept_marks: AtomicU64,
}

impl TraceStore {
    pub fn new(settings: Settings) -> TraceStore {
        let threshold = if settings.ratio >= 1.0 { u64::MAX } else { (settings.ratio.max(0.0) * u64::MAX as f64) as u64 };
        TraceStore {
            settings,
            threshold,
            inner: Mutex::default(),
            reservoir: (0..RESERVOIR_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            kept_unsampled: (0..KEPT_BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            kept_marks: AtomicU64::new(0),
        }
    }

    /// Whether the ratio samples trace `id` (the same answer on every node).
    pub fn samples(&self, id: &TraceId) -> bool {
        self.threshold == u64::MAX || (self.threshold > 0 && id.ratio_key() < self.threshold)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a span of `trace` that `failed` or took `duration_ns`, of `workload` (kind,
    /// namespace, name), is kept. Deciding takes the reservoir's place for this second.
    pub fn keeps(&self, trace: &TraceId, sampled: bool, failed: bool, duration_ns: u64, workload: Option<(WorkloadKind, &str, &str)>) -> bool {
        if sampled || failed || duration_ns >= self.settings.slow.as_nanos() as u64 {
            return true;
        }
        if self.marked(trace) && self.lock().traces.contains_key(trace) {
            return true;
        }
        let Some((kind, ns, name)) = workload.filter(|_| self.settings.per_second > 0) else { return false };
        let slot = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (kind.as_str(), ns, name).hash(&mut h);
            &self.reservoir[h.finish() as usize % RESERVOIR_SLOTS]
        };
        let second = now_ns() / 1_000_000_000;
        let limit = u64::from(self.settings.per_second.min(0xffff));
        slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (at, n) = (v >> 16, v & 0xffff);
            match at == second {
                true if n >= limit => None,
                true => Some(v + 1),
                false => Some(second << 16 | 1),
            }
        })
        .is_ok()
    }

    /// The bit of `trace` in the filter of unsampled traces kept.
    fn bit(trace: &TraceId) -> (usize, u64) {
        let i = (trace.ratio_key() as usize) % KEPT_BITS;
        (i / 64, 1 << (i % 64))
    }

    /// Whether `trace` may be an unsampled trace kept (false: certainly not).
    fn marked(&self, trace: &TraceId) -> bool {
        let (word, bit) = Self::bit(trace);
        self.kept_unsampled[word].load(Ordering::Acquire) & bit != 0
    }

    /// Marks `trace` kept; when the filter fills, it starts over (later spans of the traces it
    /// forgets are kept only as they qualify themselves).
    fn mark(&self, trace: &TraceId) {
        if self.kept_marks.fetch_add(1, Ordering::AcqRel) >= KEPT_RESET {
            self.kept_marks.store(0, Ordering::Release);
            for w in self.kept_unsampled.iter() {
                w.store(0, Ordering::Release);
            }
        }
        let (word, bit) = Self::bit(trace);
        self.kept_unsampled[word].fetch_or(bit, Ordering::AcqRel);
    }

    /// Keeps a span ([`TraceStore::keeps`] said so), with its trace.
    pub fn record(&self, span: Span) {
        self.record_with(span, &mut |_| {});
    }

    /// [`TraceStore::record`], calling `kept` with the span (shared, not copied).
    pub fn record_with(&self, span: Span, kept: &mut dyn FnMut(&Arc<Span>)) {
        let id = span.context.trace_id;
        let now = now_ns();
        let span = Arc::new(span);
        kept(&span);
        if !span.context.sampled && !self.marked(&id) {
            self.mark(&id);
        }
        let mut g = self.lock();
        let inner = &mut *g;
        match inner.traces.get_mut(&id) {
            Some(spans) => spans.push(span),
            None => {
                inner.traces.insert(id, vec![span]);
                inner.order.push_back((now, id));
            }
        }
        inner.spans += 1;
        self.evict(inner, now);
    }

    fn evict(&self, inner: &mut Inner, now: u64) {
        let oldest = now.saturating_sub(self.settings.retention.as_nanos() as u64);
        while let Some(&(at, id)) = inner.order.front() {
            if inner.spans <= self.settings.max_spans && at >= oldest {
                break;
            }
            inner.order.pop_front();
            if let Some(spans) = inner.traces.remove(&id) {
                inner.spans -= spans.len();
            }
        }
    }

    /// Spans kept now (for the metric).
    pub fn span_count(&self) -> usize {
        self.lock().spans
    }

    /// Kept traces matching `q`, newest first.
    pub fn search(&self, q: &Query) -> Vec<TraceSummary> {
        let g = self.lock();
        let mut out = Vec::new();
        for (_, id) in g.order.iter().rev() {
            if out.len() >= q.limit.max(1) {
                break;
            }
            let Some(spans) = g.traces.get(id) else { continue };
            let Some(s) = summary(id, spans, q.namespace.as_deref()) else { continue };
            let touches = |w: &WorkloadRef| q.workload.as_ref().is_none_or(|n| *n == w.name) && q.kind.is_none_or(|k| k == w.kind);
            if (q.workload.is_some() || q.kind.is_some()) && !s.workloads.iter().any(touches) {
                continue;
            }
            if s.start_us < q.since_us || s.duration_us < q.min_duration_us || q.status.is_some_and(|st| st != s.status) {
                continue;
            }
            out.push(s);
        }
        out
    }

    /// Trace `id` as `namespace` may see it (`None`: every span).
    pub fn get(&self, id: &TraceId, namespace: Option<&str>) -> Option<TraceView> {
        let g = self.lock();
        let mut spans: Vec<_> = g.traces.get(id)?.iter().filter(|s| visible(s, namespace)).map(|s| s.view()).collect();
        if spans.is_empty() {
            return None;
        }
        spans.sort_by_key(|s| s.start_us);
        Some(TraceView { trace_id: id.to_string(), spans })
    }
}

/// Whether a caller limited to `namespace` sees `span`.
fn visible(span: &Span, namespace: Option<&str>) -> bool {
    namespace.is_none_or(|ns| span.namespace.as_deref() == Some(ns))
}

/// A trace's summary as `namespace` sees it; `None` if it sees none of its spans.
fn summary(id: &TraceId, spans: &[Arc<Span>], namespace: Option<&str>) -> Option<TraceSummary> {
    let seen: Vec<&Span> = spans.iter().map(|s| &**s).filter(|s| visible(s, namespace)).collect();
    let first = seen.iter().min_by_key(|s| s.start_ns)?;
    let end = seen.iter().map(|s| s.end_ns).max().unwrap_or(first.end_ns);
    let ids: std::collections::HashSet<_> = seen.iter().map(|s| s.context.span_id).collect();
    let root = seen.iter().filter(|s| s.parent.is_none_or(|p| !ids.contains(&p))).min_by_key(|s| s.start_ns).unwrap_or(first);
    let mut workloads: Vec<WorkloadRef> = Vec::new();
    for w in seen.iter().filter_map(|s| s.workload.as_ref()) {
        if !workloads.contains(w) {
            workloads.push(w.clone());
        }
    }
    Some(TraceSummary {
        trace_id: id.to_string(),
        root: root.name.clone(),
        start_us: first.start_ns / 1000,
        duration_us: end.saturating_sub(first.start_ns) / 1000,
        status: if seen.iter().any(|s| s.status == SpanStatus::Error) { SpanStatus::Error } else { SpanStatus::Ok },
        spans: seen.len() as u32,
        workloads,
    })
}

#[cfg(test)]
mod tests {
    use hangar_api::WorkloadKind;
    use hangar_api::traces::SpanKind;

    use super::*;
    use crate::context::SpanContext;
    use crate::span::Started;

    fn workload(ns: &str, name: &str) -> WorkloadRef {
        WorkloadRef { kind: WorkloadKind::Function, namespace: ns.into(), name: name.into() }
    }

    fn span(ctx: SpanContext, parent: Option<&SpanContext>, name: &str, w: Option<WorkloadRef>) -> Span {
        let s = Span::ended(ctx, parent.map(|p| p.span_id), name, SpanKind::Server, Started::now());
        match w {
            Some(w) => s.of(w),
            None => s,
        }
    }

    fn store(ratio: f64, per_second: u32) -> TraceStore {
        TraceStore::new(Settings { ratio, per_second, ..Settings::default() })
    }

    /// Records `span` if the store keeps it, as a hop does.
    fn offer(s: &TraceStore, span: Span) {
        let w = span.workload.clone();
        let w = w.as_ref().map(|w| (w.kind, w.namespace.as_str(), w.name.as_str()));
        if s.keeps(&span.context.trace_id, span.context.sampled, span.status == SpanStatus::Error, span.duration_ns(), w) {
            s.record(span);
        }
    }

    #[test]
    fn an_unsampled_trace_is_kept_from_its_first_failed_span_on() {
        let s = store(0.0, 0);
        let root = SpanContext::root(false);
        let child = root.child();
        offer(&s, span(child, Some(&root), "invoke", Some(workload("a", "f"))).failed("boom"));
        offer(&s, span(root, None, "GET", Some(workload("a", "f"))));
        let found = s.search(&Query { limit: 10, ..Query::default() });
        assert_eq!((found.len(), found[0].spans, found[0].status, found[0].root.as_str()), (1, 2, SpanStatus::Error, "GET"));
        // An ok trace with no sampling is not kept.
        let other = SpanContext::root(false);
        offer(&s, span(other, None, "GET", Some(workload("a", "f"))));
        assert_eq!(s.search(&Query { limit: 10, ..Query::default() }).len(), 1);
    }

    #[test]
    fn the_reservoir_keeps_one_trace_per_workload_per_second_and_the_ratio_whole_traces() {
        let s = store(0.0, 1);
        for _ in 0..5 {
            offer(&s, span(SpanContext::root(false), None, "GET", Some(workload("a", "f"))));
        }
        offer(&s, span(SpanContext::root(false), None, "GET", Some(workload("a", "g"))));
        assert!((2..=3).contains(&s.search(&Query { limit: 100, ..Query::default() }).len()), "one per workload (two if the second turned)");
        let all = store(1.0, 0);
        let none = store(0.0, 0);
        let id = TraceId::random();
        assert!(all.samples(&id) && !none.samples(&id));
    }

    #[test]
    fn namespaces_see_only_their_spans_and_search_filters() {
        let s = store(1.0, 0);
        let root = SpanContext::root(true);
        s.record(span(root.child(), Some(&root), "b-step", Some(workload("b", "g"))));
        s.record(span(root, None, "a-call", Some(workload("a", "f"))));
        let q = |ns: Option<&str>, name: Option<&str>| {
            s.search(&Query { namespace: ns.map(Into::into), workload: name.map(Into::into), limit: 10, ..Query::default() })
        };
        assert_eq!(q(None, None)[0].spans, 2);
        assert_eq!((q(Some("b"), None)[0].spans, q(Some("b"), None)[0].root.as_str()), (1, "b-step"));
        assert!(q(Some("c"), None).is_empty());
        assert_eq!(q(None, Some("g")).len(), 1);
        assert!(q(None, Some("h")).is_empty());
        assert_eq!(s.get(&root.trace_id, Some("a")).unwrap().spans.len(), 1);
        assert!(s.get(&root.trace_id, Some("c")).is_none());
    }

    #[test]
    fn the_store_is_bounded_in_spans() {
        let s = TraceStore::new(Settings { ratio: 1.0, max_spans: 10, ..Settings::default() });
        for _ in 0..25 {
            s.record(span(SpanContext::root(true), None, "GET", None));
        }
        assert_eq!(s.span_count(), 10);
        assert_eq!(s.search(&Query { limit: 100, ..Query::default() }).len(), 10);
    }
}
