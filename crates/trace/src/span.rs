//! A finished span: one hop of a request, named and attributed per the OpenTelemetry semantic
//! conventions.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hangar_api::traces::{SpanKind, SpanStatus, SpanView, WorkloadRef};

use crate::context::{SpanContext, SpanId};

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<u16> for Value {
    fn from(v: u16) -> Value {
        Value::Int(i64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

/// A span once it ended.
#[derive(Debug, Clone)]
pub struct Span {
    pub context: SpanContext,
    pub parent: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    /// Unix nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    pub status: SpanStatus,
    pub status_message: Option<String>,
    pub workload: Option<WorkloadRef>,
    /// Whose span it is: only that namespace's keys see it (its workload's, when it has one).
    pub namespace: Option<String>,
    pub attributes: Vec<(&'static str, Value)>,
}

/// Unix nanoseconds now.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// When a span started: the wall clock for where it sits, a monotonic clock for how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub unix_ns: u64,
    pub at: Instant,
}

impl Started {
    pub fn now() -> Started {
        Started { unix_ns: now_ns(), at: Instant::now() }
    }

    /// A start `ago` before now.
    pub fn before(ago: std::time::Duration) -> Started {
        let at = Instant::now();
        Started { unix_ns: now_ns().saturating_sub(ago.as_nanos() as u64), at: at.checked_sub(ago).unwrap_or(at) }
    }
}

impl Span {
    /// A span from `started` until now.
    pub fn ended(context: SpanContext, parent: Option<SpanId>, name: impl Into<String>, kind: SpanKind, started: Started) -> Span {
        let end_ns = started.unix_ns + started.at.elapsed().as_nanos() as u64;
        Span {
            context,
            parent,
            name: name.into(),
            kind,
            start_ns: started.unix_ns,
            end_ns,
            status: SpanStatus::Ok,
            status_message: None,
            workload: None,
            namespace: None,
            attributes: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Span {
        self.attributes.push((key, value.into()));
        self
    }

    pub fn failed(mut self, message: impl Into<String>) -> Span {
        self.status = SpanStatus::Error;
        self.status_message = Some(message.into());
        self
    }

    pub fn of(mut self, workload: WorkloadRef) -> Span {
        self.namespace = Some(workload.namespace.clone());
        self.workload = Some(workload);
        self
    }

    /// A span of `namespace` that is of no one workload (a topic's publish).
    pub fn in_namespace(mut self, namespace: &str) -> Span {
        self.namespace = Some(namespace.to_string());
        self
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    pub fn view(&self) -> SpanView {
        SpanView {
            span_id: self.context.span_id.to_string(),
            parent_span_id: self.parent.map(|p| p.to_string()),
            name: self.name.clone(),
            kind: self.kind,
            start_us: self.start_ns / 1000,
            duration_us: self.duration_ns() / 1000,
            status: self.status,
            status_message: self.status_message.clone(),
            workload: self.workload.clone(),
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Str(s) => serde_json::Value::from(s.as_str()),
                        Value::Int(i) => serde_json::Value::from(*i),
                        Value::Bool(b) => serde_json::Value::from(*b),
                    };
                    ((*k).to_string(), v)
                })
                .collect(),
        }
    }
}
