//! A workload's metric history as the API shows it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::traces::WorkloadRef;

/// One metric of one workload over time, in columns (as charts take them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Series {
    pub workload: WorkloadRef,
    /// `requests`, `errors`, `duration_p95_ms`, ...
    pub metric: String,
    /// Seconds per point: 10 (the last hour) or 60 (the last day).
    pub step_s: u64,
    /// Unix seconds when each point's period starts.
    pub timestamps: Vec<u64>,
    /// Each point's value; `null` where there is none (a duration without requests).
    pub values: Vec<Option<f64>>,
}
