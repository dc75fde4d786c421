//! Log lines as the log search shows them: functions' and services' alike.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::WorkloadKind;

/// One line of a workload's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// RFC 3339: when the line came (a service's), or when its invocation started (a function's).
    pub time: String,
    pub kind: WorkloadKind,
    pub namespace: String,
    pub workload: String,
    /// The invocation that wrote it (functions): `GET /v1/invocations/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
    /// The instance that wrote it (services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogList {
    /// Newest first.
    pub items: Vec<LogLine>,
}
