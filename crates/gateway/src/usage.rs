//! `GET /v1/usage` (the hourly rows `hangar_meter` writes, priced) and `GET /v1/advice` (the
//! advisor fed with those rows, the invocation records and the services' own counters).

use axum::Json;
use axum::extract::State;
use hangar_api::WorkloadKind;
use hangar_api::cost::{UsageDelta, UsageList, UsageRow};
use hangar_cost::money::show_fixed;
use hangar_store::UsageFilter;
use serde::Deserialize;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiQuery};

const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub namespace: Option<String>,
    /// A workload's name (function, service, or sandbox id).
    pub name: Option<String>,
    /// `function`, `service` or `sandbox`.
    pub kind: Option<String>,
    /// RFC 3339 time, or a duration back from now (`24h`); default 24 h ago.
    pub since: Option<String>,
    /// RFC 3339 time; default now.
    pub until: Option<String>,
    /// `hour` (default) or `day`.
    pub per: Option<String>,
    /// Price sheet of functions' rows (default aws-lambda-x86).
    pub sheet: Option<String>,
    /// Price sheet of services' and sandboxes' rows (default aws-fargate).
    pub service_sheet: Option<String>,
}

/// An RFC 3339 time, or a duration back from now (`24h`), as ms since the epoch.
pub(crate) fn time(field: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(hangar_api::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    }
    hangar_api::parse_rfc3339(text).ok_or_else(|| {
        ApiError::bad_request("invalid_query", format!("{field}: `{text}` is neither an RFC 3339 time (e.g. 2026-01-31T12:00:00Z) nor a duration like 24h"))
    })
}

/// Turns a stored row into the API's units, exactly, with its cost by the sheets.
pub fn row(d: &UsageDelta, function_sheet: &hangar_cost::Sheet, service_sheet: &hangar_cost::Sheet) -> UsageRow {
    let (cost, priced_with) =
        hangar_cost::bill::bill(d, function_sheet, service_sheet).map(|(pico, sheet)| (hangar_cost::Money(pico).to_string(), sheet)).unwrap_or_default();
    UsageRow {
        cost,
        priced_with,
        namespace: d.namespace.clone(),
        kind: d.kind,
        name: d.name.clone(),
        period: hangar_api::rfc3339(d.hour_ms),
        requests: d.requests,
        errors: d.errors,
        cold_starts: d.cold_starts,
        billed_ms: d.billed_ms,
        // MiB × ms → GiB × s: × 10¹³ / 1,024,000 = × 9,765,625 at 13 places.
        gb_seconds: show_fixed(u128::from(d.mb_ms) * 9_765_625, 13),
        vcpu_seconds: show_fixed(u128::from(d.vcpu_milli_ms), 6),
        running_seconds: show_fixed(u128::from(d.running_ms), 3),
        paused_seconds: show_fixed(u128::from(d.paused_ms), 3),
        standby_seconds: show_fixed(u128::from(d.standby_ms), 3),
        // bytes × ms → GiB × h: / (2³⁰ × 3.6·10⁶); 10²² / (2³⁰ × 3.6·10⁶) is not whole, so 12
        // places, rounded.
        standby_gb_hours: show_fixed(hangar_cost::money::div_round(u128::from(d.standby_byte_ms) * 1_000_000_000_000, (1u128 << 30) * 3_600_000), 12),
    }
}

/// Usage per workload and hour (or day), oldest first.
#[utoipa::path(get, path = "/v1/usage", params(UsageQuery), tag = "cost", responses((status = 200, body = UsageList), (status = 400, body = hangar_api::ErrorBody)))]
pub async fn list(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<UsageQuery>) -> Result<Json<UsageList>, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    let per_day = match q.per.as_deref() {
        None | Some("hour") => false,
        Some("day") => true,
        Some(other) => return Err(ApiError::bad_request("invalid_query", format!("per: `{other}` is not `hour` or `day`"))),
    };
    let kind = q
        .kind
        .as_deref()
        .map(|k| k.parse::<WorkloadKind>().map_err(|_| ApiError::bad_request("invalid_query", format!("kind: `{k}` is not function, service or sandbox"))))
        .transpose()?;
    let since = q.since.as_deref().map(|t| time("since", t)).transpose()?.unwrap_or(hangar_api::now_ms() - 24 * HOUR_MS);
    let until = q.until.as_deref().map(|t| time("until", t)).transpose()?;
    // The hour `since` falls in is included.
    let since = since.div_euclid(HOUR_MS) * HOUR_MS;
    let rows = state.store.list_usage(UsageFilter { namespace: Some(ns), kind, name: q.name.clone(), since_ms: Some(since), until_ms: until, per_day }).await?;
    let sheets = hangar_cost::Sheets::load(Some(&state.prices_dir))?;
    let function_sheet = sheets.get(q.sheet.as_deref().unwrap_or("aws-lambda-x86"))?;
    let service_sheet = sheets.get(q.service_sheet.as_deref().unwrap_or("aws-fargate"))?;
    Ok(Json(UsageList { items: rows.iter().map(|r| row(r, function_sheet, service_sheet)).collect() }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AdviceQuery {
    pub namespace: Option<String>,
    /// One workload; default every function and service with requests in the window.
    pub name: Option<String>,
    /// `function` or `service`; default both.
    pub kind: Option<String>,
    /// RFC 3339 time or a duration back from now; default 7d.
    pub since: Option<String>,
    /// Price sheet of the function and provisioned models (default aws-lambda-x86).
    pub sheet: Option<String>,
    /// Price sheet of the always-on service and sandbox models (default aws-fargate).
    pub service_sheet: Option<String>,
    /// Requests one service instance would serve at once (default 1; a service's own
    /// `concurrency` for services).
    pub concurrency: Option<u32>,
    /// p99 latency objective, ms: cold starts beyond it call for warm instances.
    pub objective_ms: Option<u64>,
}

/// A workload the advisor looks at, with its size.
struct Workload {
    kind: WorkloadKind,
    name: String,
    memory_mb: u32,
    cpus: Option<String>,
    concurrency: Option<u32>,
}

/// Which model each function and service should run on, and why.
#[utoipa::path(get, path = "/v1/advice", params(AdviceQuery), tag = "cost",
    responses((status = 200, body = hangar_api::cost::AdviceList), (status = 400, body = hangar_api::ErrorBody), (status = 404, body = hangar_api::ErrorBody)))]
pub async fn advice(State(state): State<AppState>, p: Principal, ApiQuery(q): ApiQuery<AdviceQuery>) -> Result<Json<hangar_api::cost::AdviceList>, ApiError> {
    let ns = crate::api::existing_namespace(&state, &p, q.namespace.as_deref()).await?;
    let now = hangar_api::now_ms();
    let since = q.since.as_deref().map(|t| time("since", t)).transpose()?.unwrap_or(now - 7 * 24 * HOUR_MS);
    let since_hour = since.div_euclid(HOUR_MS) * HOUR_MS;
    let (functions, services) = match q.kind.as_deref() {
        None => (true, true),
        Some("function") => (true, false),
        Some("service") => (false, true),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("kind: `{other}` is not function or service (the advisor weighs those two; sandboxes are metered in `hangar usage`)"),
            ));
        }
    };
    let function = |f: hangar_store::FunctionRow| Workload {
        kind: WorkloadKind::Function,
        name: f.name,
        memory_mb: f.config.memory_mb,
        cpus: None,
        concurrency: q.concurrency,
    };
    let service = |r: hangar_store::ServiceRow| Workload {
        kind: WorkloadKind::Service,
        name: r.name,
        memory_mb: r.config.memory_mb,
        cpus: Some(format!("{:.3}", r.config.cpus)),
        concurrency: Some(q.concurrency.unwrap_or(r.config.concurrency)),
    };
    let mut workloads = Vec::new();
    match &q.name {
        Some(name) => {
            if functions && let Some(f) = state.store.get_function(&ns, name).await? {
                workloads.push(function(f));
            }
            if services && let Some(r) = state.store.get_service(&ns, name).await? {
                workloads.push(service(r));
            }
            if workloads.is_empty() {
                return Err(ApiError::not_found(format_args!("function or service `{name}` in namespace `{ns}`")));
            }
        }
        None => {
            if functions {
                workloads.extend(state.store.list_functions(Some(&ns)).await?.into_iter().map(function));
            }
            if services {
                workloads.extend(state.store.list_services(Some(&ns)).await?.into_iter().map(service));
            }
        }
    }
    let sheets = hangar_cost::Sheets::load(Some(&state.prices_dir))?;
    let mut items = Vec::new();
    for w in workloads {
        let rows = state
            .store
            .list_usage(UsageFilter {
                namespace: Some(ns.clone()),
                kind: Some(w.kind),
                name: Some(w.name.clone()),
                since_ms: Some(since_hour),
                until_ms: None,
                per_day: false,
            })
            .await?;
        let Some(first) = rows.iter().find(|r| r.requests > 0).map(|r| r.hour_ms) else {
            if q.name.is_some() {
                return Err(ApiError::bad_request(
                    "no_usage",
                    format!("{} `{}` has no requests since {}: nothing to advise on yet", w.kind, w.name, hangar_api::rfc3339(since)),
                ));
            }
            continue;
        };
        let current = now.div_euclid(HOUR_MS) * HOUR_MS;
        let mut hourly = vec![0u64; usize::try_from((current - first) / HOUR_MS + 1).unwrap_or(1)];
        let (mut requests, mut billed) = (0, 0);
        for r in rows.iter().filter(|r| r.hour_ms >= first) {
            if let Some(slot) = usize::try_from((r.hour_ms - first) / HOUR_MS).ok().and_then(|i| hourly.get_mut(i)) {
                *slot += r.requests;
            }
            requests += r.requests;
            billed += r.billed_ms;
        }
        let recent = match w.kind {
            WorkloadKind::Service => state
                .services
                .as_ref()
                .and_then(|s| s.get(&ns, &w.name))
                .map(|s| s.traffic.recent_ms().into_iter().map(|ms| (ms, false)).collect())
                .unwrap_or_default(),
            _ => state
                .store
                .list_invocations(hangar_store::InvocationFilter {
                    namespace: Some(ns.clone()),
                    function: Some(w.name.clone()),
                    since_ms: Some(since),
                    limit: 1000,
                    ..Default::default()
                })
                .await?
                .iter()
                .filter(|r| r.ending.outcome != hangar_api::Outcome::Throttled)
                .map(hangar_api::InvocationRecord::latency)
                .collect(),
        };
        let stats = hangar_cost::advice::Stats {
            hourly_requests: hourly,
            period_s: 3600,
            requests,
            billed_ms: billed,
            recent,
            memory_mb: w.memory_mb,
            cpus: w.cpus,
            current: Some(w.kind.into()),
        };
        let policy = hangar_cost::advice::Policy {
            sheet: q.sheet.clone(),
            service_sheet: q.service_sheet.clone(),
            concurrency: w.concurrency,
            objective_ms: q.objective_ms,
        };
        let d = hangar_cost::advice::advise(&stats, &policy, &sheets)?;
        items.push(hangar_api::cost::Advice {
            namespace: ns.clone(),
            name: w.name,
            kind: w.kind,
            observed: d.observed,
            costs: d.costs,
            recommendation: d.recommendation,
            reasons: d.reasons,
            monthly_saving: hangar_cost::advice::signed(d.saving_pico),
        });
    }
    Ok(Json(hangar_api::cost::AdviceList { items }))
}
