//! Traces: W3C trace context taken from every ingress, one span per hop, and the node's
//! built-in trace store (sampled, bounded) that the API searches.
#![forbid(unsafe_code)]

pub mod context;
pub mod span;
pub mod store;

pub use context::{SpanContext, SpanId, TraceId};
pub use span::{Span, Started, Value};

use store::{Settings, TraceStore};

/// Where spans go; off, it makes no context and keeps nothing.
pub struct Tracer {
    store: Option<TraceStore>,
}

impl Tracer {
    /// Tracing off: requests pass as they came.
    pub fn off() -> Tracer {
        Tracer { store: None }
    }

    pub fn new(settings: Settings) -> Tracer {
        Tracer { store: Some(TraceStore::new(settings)) }
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

    /// Takes a finished span.
    pub fn record(&self, span: Span) {
        if let Some(s) = &self.store {
            s.record(span);
        }
    }
}

/// What set an invocation off, as OpenTelemetry's `faas.trigger` says it (`http`, `pubsub`,
/// `timer`, `datasource`, `other`): a request extension whoever builds the request may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaasTrigger(pub &'static str);
