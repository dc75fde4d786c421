//! Price sheets and the cost calculator on the wire: `GET /v1/prices`, `POST /v1/cost/calc`.
//! Money is a decimal string of US dollars (exact, never a float).

use serde::{Deserialize, Serialize};

use crate::WorkloadKind;
use utoipa::ToSchema;

/// A price sheet as listed: where its prices come from, and which models it prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PriceSheetInfo {
    pub name: String,
    pub title: String,
    /// Where the prices were read.
    pub source: String,
    /// When they were read (YYYY-MM-DD).
    pub as_of: String,
    /// `builtin`, or the file it was loaded from.
    pub origin: String,
    /// The models it prices.
    pub models: Vec<crate::Model>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PriceSheetList {
    pub items: Vec<PriceSheetInfo>,
}

/// A traffic shape to price: what `hangar cost calc` sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CalcRequest {
    /// Mean requests per second over the month (a decimal, at most 3 places: "5", "0.25").
    pub rps: String,
    /// How long one request runs ("120ms", "2s").
    pub duration: String,
    /// Memory of one instance, MiB.
    pub memory_mb: u32,
    /// vCPUs of one instance (a decimal, default "1"; priced where the sheet prices CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Requests per second at the peak the always-on models are sized for (default `rps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rps: Option<String>,
    /// Requests one service instance serves at once (default 1, as a function instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// How busy always-on instances may run at the peak, percent (default 70).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_utilization: Option<u32>,
    /// The sheet for the function and provisioned models (default `aws-lambda-x86`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    /// The sheet for the always-on service (default: `sheet` if it prices services, else
    /// `aws-fargate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_sheet: Option<String>,
}

/// One line of a bill: quantity × unit price = cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CostLine {
    pub what: String,
    /// The billable quantity (after free tiers), as a decimal string.
    pub quantity: String,
    pub unit: String,
    /// Dollars per unit.
    pub unit_price: String,
    /// Dollars.
    pub cost: String,
}

/// What a model costs per month (730 hours) for the traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Estimate {
    pub model: crate::Model,
    pub sheet: String,
    /// Dollars per month.
    pub monthly: String,
    pub lines: Vec<CostLine>,
    /// Instances kept running (always-on models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u64>,
    /// Caveats (e.g. a duration over the platform's limit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CalcAnswer {
    pub estimates: Vec<Estimate>,
    /// The mean rate (requests per second, 3 decimals) above which the always-on service
    /// costs less than the function; none when it never does below 1,000,000 rps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_even_rps: Option<String>,
    /// The cheapest model for this traffic.
    pub cheapest: crate::Model,
}

/// What one workload used in one hour, as the meter counts it (integers; the API adds the
/// derived units).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDelta {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
    /// Start of the UTC hour, ms since the epoch.
    pub hour_ms: i64,
    pub requests: u64,
    pub errors: u64,
    pub cold_starts: u64,
    /// Billed milliseconds (functions); for a service, the time spent serving its requests.
    pub billed_ms: u64,
    /// Memory-time: MiB × ms (functions: billed; services and sandboxes: while running).
    pub mb_ms: u64,
    /// CPU-time: thousandths of a vCPU × ms.
    pub vcpu_milli_ms: u64,
    /// Instance time running, paused, on standby, ms. For a function: running is the time of
    /// its provisioned instances, paused that of its paused ones.
    pub running_ms: u64,
    pub paused_ms: u64,
    pub standby_ms: u64,
    /// Standby storage: bytes × ms.
    pub standby_byte_ms: u64,
}

impl UsageDelta {
    /// What one invocation adds to its function's hour, or `None` when it is not billed: the
    /// one place the billing rules live. A throttled request never ran and is not billed (as on
    /// Lambda); every other one is a request, an error unless it ended `ok`, a cold start when a
    /// new instance served it ([`crate::StartKind::is_cold_start`]), its billed milliseconds and
    /// their memory-time.
    pub fn of_invocation(r: &crate::InvocationRecord) -> Option<UsageDelta> {
        if r.ending.outcome == crate::Outcome::Throttled {
            return None;
        }
        const HOUR_MS: i64 = 3_600_000;
        Some(UsageDelta {
            namespace: r.namespace.clone(),
            kind: WorkloadKind::Function,
            name: r.function.clone(),
            hour_ms: r.started_ms.div_euclid(HOUR_MS) * HOUR_MS,
            requests: 1,
            errors: u64::from(r.ending.outcome != crate::Outcome::Ok),
            cold_starts: u64::from(r.start.is_cold_start()),
            billed_ms: r.billed_ms,
            mb_ms: r.billed_ms * u64::from(r.memory_mb),
            ..UsageDelta::default()
        })
    }

    /// Adds `other`'s counters to this one's (the same workload and hour).
    pub fn add(&mut self, other: &UsageDelta) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.cold_starts += other.cold_starts;
        self.billed_ms += other.billed_ms;
        self.mb_ms += other.mb_ms;
        self.vcpu_milli_ms += other.vcpu_milli_ms;
        self.running_ms += other.running_ms;
        self.paused_ms += other.paused_ms;
        self.standby_ms += other.standby_ms;
        self.standby_byte_ms += other.standby_byte_ms;
    }
}

/// How much of a sandbox's own usage counters the meter has counted already (so a restart
/// neither loses nor repeats any of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageMark {
    pub id: String,
    pub running_ms: u64,
    pub paused_ms: u64,
    pub standby_ms: u64,
    pub standby_byte_ms: u128,
}

/// A period of a workload's usage on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
    /// Start of the hour or day (UTC, RFC 3339).
    pub period: String,
    pub requests: u64,
    pub errors: u64,
    pub cold_starts: u64,
    /// Billed ms (functions); for a service, the time spent serving its requests.
    pub billed_ms: u64,
    /// GB-seconds (GiB × s of memory), exact decimal.
    pub gb_seconds: String,
    /// vCPU-seconds, exact decimal.
    pub vcpu_seconds: String,
    /// Instance-seconds running, paused and on standby, exact decimals.
    pub running_seconds: String,
    pub paused_seconds: String,
    pub standby_seconds: String,
    /// Standby storage in GB-hours (GiB × h), exact decimal.
    pub standby_gb_hours: String,
    /// What it cost, dollars (exact decimal), priced with `priced_with`: a function's requests
    /// and memory-time (no free tier), an instance's vCPU- and memory-time; provisioned and
    /// paused time and standby storage are not priced. Empty when the sheet cannot price it.
    pub cost: String,
    pub priced_with: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageList {
    pub items: Vec<UsageRow>,
}

/// What the advisor saw of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Observed {
    /// Hours looked at (from the first use in the window to now).
    pub hours: u64,
    pub requests: u64,
    /// Mean requests per second over those hours (3 decimals).
    pub mean_rps: String,
    /// The busiest hour's mean requests per second.
    pub peak_hour_rps: String,
    /// Hours without a request, percent.
    pub idle_hours_pct: u64,
    /// Coefficient of variation of hourly requests, percent (0 = perfectly steady).
    pub variation_pct: u64,
    /// `steady`, `variable` or `spiky`.
    pub pattern: String,
    /// Mean billed duration, ms.
    pub mean_duration_ms: u64,
    /// p99 of durations among the recent invocations, ms.
    pub p99_duration_ms: u64,
    /// Cold starts among requests, percent.
    pub cold_start_pct: u64,
    /// p99 duration of cold and of warm requests, ms (recent invocations).
    pub cold_p99_ms: u64,
    pub warm_p99_ms: u64,
    pub memory_mb: u32,
}

/// The advisor's answer for one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Advice {
    pub namespace: String,
    pub name: String,
    pub kind: WorkloadKind,
    pub observed: Observed,
    /// What each model would cost a month at the observed traffic.
    pub costs: CalcAnswer,
    /// `function`, `provisioned`, `service` or `sandbox`.
    pub recommendation: crate::Model,
    /// What the decision rests on, in order.
    pub reasons: Vec<String>,
    /// Dollars a month saved against the model it runs on now (`kind`; negative: it costs
    /// more, for latency or because only that model runs it).
    pub monthly_saving: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdviceList {
    pub items: Vec<Advice>,
}
