//! Traces: W3C trace context taken from every ingress, one span per hop, and the node's
//! built-in trace store (sampled, bounded) that the API searches.
#![forbid(unsafe_code)]

pub mod context;
pub mod otlp;
pub mod span;
pub mod store;

pub use context::{SpanContext, SpanId, TraceId};
pub use span::{Span, Started, Value};

use store::{Settings, TraceStore};

/// Where spans go; off, it makes no context and keeps nothing.
pub struct Tracer {
    store: Option<TraceStore>,
    /// Where kept spans are exported, if anywhere.
    export: Option<otlp::Exporter>,
}

impl Tracer {
    /// Tracing off: requests pass as they came.
    pub fn off() -> Tracer {
        Tracer { store: None, export: None }
    }

    /// Tracing on: spans kept as `settings` say, and exported if `export` is given.
    pub fn new(settings: Settings, export: Option<otlp::Exporter>) -> Tracer {
        Tracer { store: Some(TraceStore::new(settings)), export }
    }

    pub fn enabled(&self) -> bool {
        self.store.is_some()
    }

    pub fn store(&self) -> Option<&TraceStore> {
        self.store.as_ref()
    }

    /// A new hop of the trace `headers` carry (`traceparent`; a malformed one is ignored and
    /// a new trace starts): this hop's context and its parent. Sampled if the caller sampled
    /// the trace or the ratio samples its id. `None` when tracing is off.
    pub fn hop(&self, headers: &http::HeaderMap) -> Option<(SpanContext, Option<SpanId>)> {
        let store = self.store.as_ref()?;
        Some(match SpanContext::from_headers(headers) {
            Some(parent) => {
                let mut ctx = parent.child();
                ctx.sampled |= store.samples(&ctx.trace_id);
                (ctx, Some(parent.span_id))
            }
            None => (self.root(), None),
        })
    }

    /// The first span of a new trace (a cron fire, a call from outside without context).
    pub fn root(&self) -> SpanContext {
        let mut ctx = SpanContext::root(false);
        ctx.sampled = self.store.as_ref().is_some_and(|s| s.samples(&ctx.trace_id));
        ctx
    }

    /// Whether a span of `ctx` that `failed` or took `duration_ns`, of `workload` (kind,
    /// namespace, name), is kept: ask before building it, so spans nobody keeps cost nothing.
    pub fn keeps(&self, ctx: &SpanContext, failed: bool, duration_ns: u64, workload: Option<(hangar_api::WorkloadKind, &str, &str)>) -> bool {
        self.store.as_ref().is_some_and(|s| s.keeps(&ctx.trace_id, ctx.sampled, failed, duration_ns, workload))
    }

    /// Keeps a finished span ([`Tracer::keeps`] said so).
    pub fn record(&self, span: Span) {
        match (&self.store, &self.export) {
            (Some(s), Some(e)) => s.record_with(span, &mut |kept| e.export(kept)),
            (Some(s), None) => s.record(span),
            (None, _) => {}
        }
    }
}

/// What set an invocation off, as OpenTelemetry's `faas.trigger` says it (`http`, `pubsub`,
/// `timer`, `datasource`, `other`): a request extension whoever builds the request may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaasTrigger(pub &'static str);
