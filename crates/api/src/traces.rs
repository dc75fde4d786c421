//! Traces as the API shows them: a summary per trace and its spans.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::WorkloadKind;

wire_enum! {
    /// What a span stands for, as OpenTelemetry names it.
    SpanKind, "span kind" {
        Internal = "internal",
        /// A request this hop took (the gateway, a function's invocation).
        Server = "server",
        /// A request this hop sent (to a service instance).
        Client = "client",
        /// A message this hop queued (an asynchronous invocation, a topic's event).
        Producer = "producer",
        /// A queued message this hop processed (an attempt).
        Consumer = "consumer",
    }
}

wire_enum! {
    /// How a span or a trace ended.
    SpanStatus, "status" {
        Ok = "ok",
        Error = "error",
    }
}

/// The workload a span belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

/// One span of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SpanView {
    /// 16 hex digits.
    pub span_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    /// Unix microseconds when it started.
    pub start_us: u64,
    pub duration_us: u64,
    pub status: SpanStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
    /// OpenTelemetry attributes (`faas.invocation_id`, `http.response.status_code`, ...).
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// A trace: its spans, earliest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TraceView {
    /// 32 hex digits.
    pub trace_id: String,
    pub spans: Vec<SpanView>,
}

/// What a trace list shows of each trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The name of its earliest span without a parent here (or its earliest span).
    pub root: String,
    /// Unix microseconds of its first span's start.
    pub start_us: u64,
    /// From its first span's start to its last span's end.
    pub duration_us: u64,
    /// `error` if any span failed.
    pub status: SpanStatus,
    pub spans: u32,
    pub workloads: Vec<WorkloadRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TraceList {
    /// Newest first.
    pub items: Vec<TraceSummary>,
}
