//! `GET /v1/metrics/series`: one metric of a function or service over the last hour (10 s
//! points) or day (1 min points), from the node's metric history.

use axum::Json;
use axum::extract::State;
use hangar_api::WorkloadKind;
use hangar_api::series::Series;
use hangar_api::traces::WorkloadRef;
use hangar_meter::history::{COARSE_S, FINE_POINTS, FINE_S, Metric, SeriesError};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiQuery};

/// Query of `GET /v1/metrics/series`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    pub namespace: Option<String>,
    /// The function's or service's name.
    pub workload: Option<String>,
    /// `function` (default) or `service`.
    pub kind: Option<String>,
    /// `requests`, `errors`, `duration_p50_ms`, `duration_p95_ms`, `duration_p99_ms`,
    /// `cold_starts`, `cold_start_ms`, `in_flight`, `instances_idle`, `instances_paused`,
    /// `queue_depth`, `dead_letters` (functions); `instances_ready`, `instances_starting`,
    /// `cpu_millicores`, `memory_mb` (services).
    pub metric: Option<String>,
    /// How far back: up to `24h`; default `1h`.
    pub since: Option<String>,
    /// `10s` (up to an hour back) or `1m`; default: `10s` for an hour or less, else `1m`.
    pub step: Option<String>,
}

fn bad(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_query", format!("{field}: {message}"))
}

/// One metric of a workload over time.
#[utoipa::path(get, path = "/v1/metrics/series", params(SeriesQuery), tag = "metrics",
    responses((status = 200, body = Series), (status = 400, body = hangar_api::ErrorBody), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn series(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<SeriesQuery>) -> Result<Json<Series>, ApiError> {
    let ns = p.scope(q.namespace.as_deref())?;
    let name = q.workload.ok_or_else(|| bad("workload", "give the function's or service's name (`?workload=NAME`)"))?;
    let kind = match q.kind.as_deref().unwrap_or("function") {
        "function" => WorkloadKind::Function,
        "service" => WorkloadKind::Service,
        other => return Err(bad("kind", format_args!("`{}` has no metric history; choose function or service", hangar_api::validate::shown(other)))),
    };
    let metric: Metric = q.metric.as_deref().ok_or_else(|| bad("metric", "give one (`?metric=requests`)"))?.parse().map_err(|e| bad("metric", e))?;
    let since = humantime::parse_duration(q.since.as_deref().unwrap_or("1h"))
        .map_err(|_| bad("since", format_args!("`{}` is not a duration like 15m or 6h", hangar_api::validate::shown(q.since.as_deref().unwrap_or("")))))?;
    if since.as_secs() > 24 * 3600 {
        return Err(bad("since", "history goes back a day at most; choose 24h or less"));
    }
    let fine_span = FINE_S * FINE_POINTS as u64;
    let step = match q.step.as_deref() {
        None if since.as_secs() <= fine_span => FINE_S,
        None => COARSE_S,
        Some("10s") => FINE_S,
        Some("1m" | "60s") => COARSE_S,
        Some(other) => return Err(bad("step", format_args!("`{}`: points are every 10s or 1m", hangar_api::validate::shown(other)))),
    };
    if step == FINE_S && since.as_secs() > fine_span {
        return Err(bad("step", "10s points are kept for the last hour; ask for 1m points further back"));
    }
    let exists = match kind {
        WorkloadKind::Function => state.store.get_function(&ns, &name).await?.is_some(),
        _ => state.store.get_service(&ns, &name).await?.is_some(),
    };
    if !exists {
        return Err(ApiError::not_found(format_args!("{kind} `{name}` in namespace `{ns}`")));
    }
    let workload = WorkloadRef { kind, namespace: ns, name };
    let now_s = u64::try_from(hangar_api::now_ms() / 1000).unwrap_or(0);
    let points = state.meter.history().series(&workload, metric, now_s.saturating_sub(since.as_secs()), step).map_err(|e| match e {
        SeriesError::NoSuchMetric { .. } => bad("metric", &e),
        SeriesError::Step(_) => bad("step", &e),
    })?;
    let (timestamps, values) = points.into_iter().unzip();
    Ok(Json(Series { workload, metric: metric.as_str().to_string(), step_s: step, timestamps, values }))
}
