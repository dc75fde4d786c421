//! The advisor: from what a workload did (hourly requests, durations, cold starts), which
//! execution model it should run on — function, provisioned, service or sandbox — and why:
//! traffic pattern (steady or spiky), duration against the function limit (long jobs go to a
//! service, or to a sandbox per job when a service would sit idle), latency (cold starts
//! against an objective), and what each model costs a month at that traffic. A model must save
//! at least [`MARGIN_PCT`] against the one the workload runs on now to be recommended, so small
//! differences do not make it flap.

use hangar_api::Model;
use hangar_api::cost::{CalcAnswer, CalcRequest, Observed};

use crate::CostError;
use crate::money::{Money, show_fixed};
use crate::sheet::Sheets;

/// The least saving, percent of the function's cost, that makes another model worth it.
pub const MARGIN_PCT: u128 = 10;

/// What a workload did in the window.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Requests in each period of the window, oldest first (periods without any included).
    pub hourly_requests: Vec<u64>,
    /// Seconds in each of those periods (0: an hour).
    pub period_s: u64,
    pub requests: u64,
    pub billed_ms: u64,
    /// Billed durations of recent requests, ms, with whether each was a cold start.
    pub recent: Vec<(u64, bool)>,
    pub memory_mb: u32,
    /// vCPUs (a decimal), when the workload has a size of its own (a service); default 1.
    pub cpus: Option<String>,
    /// The model it runs on now: `function` (the default) or `service`. Savings are against
    /// it, and another model must beat it by [`MARGIN_PCT`].
    pub current: Option<hangar_api::Model>,
}

/// What to compare with and what latency to keep.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub sheet: Option<String>,
    pub service_sheet: Option<String>,
    /// Requests one service instance serves at once.
    pub concurrency: Option<u32>,
    /// The p99 latency objective, ms: cold starts that break it call for warm instances.
    pub objective_ms: Option<u64>,
}

/// The advisor's decision.
#[derive(Debug, Clone)]
pub struct Decision {
    pub observed: Observed,
    pub costs: CalcAnswer,
    pub recommendation: hangar_api::Model,
    pub reasons: Vec<String>,
    /// Pico-dollars a month saved against the model it runs on now (negative: costs more).
    pub saving_pico: i128,
}

fn p99(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[(v.len() * 99).div_ceil(100).saturating_sub(1).min(v.len() - 1)]
}

fn dollars(pico: u128) -> String {
    format!("${}", Money(pico).cents())
}

/// A signed amount of pico-dollars as an exact decimal string.
pub fn signed(pico: i128) -> String {
    let s = show_fixed(pico.unsigned_abs(), 12);
    if pico < 0 { format!("-{s}") } else { s }
}

pub fn advise(stats: &Stats, policy: &Policy, sheets: &Sheets) -> Result<Decision, CostError> {
    let hours = stats.hourly_requests.len().max(1) as u64;
    let period_s = if stats.period_s == 0 { 3600 } else { stats.period_s };
    if stats.requests == 0 {
        return Err(CostError::Invalid("no requests in the window: nothing to advise on yet".into()));
    }
    // Rates in thousandths of a request per second.
    let mean_milli = (u128::from(stats.requests) * 1000).div_ceil(u128::from(hours * period_s)).max(1);
    let peak = stats.hourly_requests.iter().copied().max().unwrap_or(0);
    let peak_milli = (u128::from(peak) * 1000).div_ceil(u128::from(period_s)).max(mean_milli);
    let idle = stats.hourly_requests.iter().filter(|r| **r == 0).count() as u64;
    let idle_pct = idle * 100 / hours;
    // Statistics of the pattern (not money): floats are fine here.
    let n = hours as f64;
    let mean = stats.hourly_requests.iter().map(|r| *r as f64).sum::<f64>() / n;
    let var = stats.hourly_requests.iter().map(|r| (*r as f64 - mean).powi(2)).sum::<f64>() / n;
    let cv_pct = if mean > 0.0 { (var.sqrt() / mean * 100.0).round() as u64 } else { 0 };
    let pattern = if cv_pct <= 50 && idle_pct <= 10 {
        "steady"
    } else if cv_pct > 150 || idle_pct > 50 {
        "spiky"
    } else {
        "variable"
    };
    let mean_ms = (stats.billed_ms / stats.requests).max(1);
    let all: Vec<u64> = stats.recent.iter().map(|(d, _)| *d).collect();
    let cold: Vec<u64> = stats.recent.iter().filter(|(_, c)| *c).map(|(d, _)| *d).collect();
    let warm: Vec<u64> = stats.recent.iter().filter(|(_, c)| !*c).map(|(d, _)| *d).collect();
    let cold_pct = if stats.recent.is_empty() { 0 } else { cold.len() as u64 * 100 / stats.recent.len() as u64 };
    let observed = Observed {
        hours,
        requests: stats.requests,
        mean_rps: show_fixed(mean_milli, 3),
        peak_hour_rps: show_fixed(peak_milli, 3),
        idle_hours_pct: idle_pct,
        variation_pct: cv_pct,
        pattern: pattern.into(),
        mean_duration_ms: mean_ms,
        p99_duration_ms: p99(all.clone()).max(mean_ms),
        cold_start_pct: cold_pct,
        cold_p99_ms: p99(cold),
        warm_p99_ms: p99(warm),
        memory_mb: stats.memory_mb,
    };
    let req = CalcRequest {
        rps: show_fixed(mean_milli, 3),
        duration: format!("{mean_ms}ms"),
        memory_mb: stats.memory_mb,
        cpus: stats.cpus.clone(),
        peak_rps: Some(show_fixed(peak_milli, 3)),
        concurrency: policy.concurrency,
        target_utilization: None,
        sheet: policy.sheet.clone(),
        service_sheet: policy.service_sheet.clone(),
    };
    let costs = crate::calc(&req, sheets)?;
    let cost_of = |model: Model| costs.estimates.iter().find(|e| e.model == model).and_then(|e| Money::parse(&e.monthly).ok()).map(Money::pico);
    let (f, p, s, b) = (cost_of(Model::Function), cost_of(Model::Provisioned), cost_of(Model::Service), cost_of(Model::Sandbox));
    let current = if stats.current == Some(Model::Service) { Model::Service } else { Model::Function };
    let cost_now = if current == Model::Service { s } else { f };
    let mut reasons = vec![
        format!(
            "traffic: {} requests in {}, mean {} req/s, busiest period {} req/s, {idle_pct}% of periods idle, variation {cv_pct}%: {pattern}",
            stats.requests,
            if period_s == 3600 { format!("{hours} h") } else { format!("{} s", hours * period_s) },
            observed.mean_rps,
            observed.peak_hour_rps
        ),
        format!("duration: mean {mean_ms} ms, p99 {} ms, memory {} MiB", observed.p99_duration_ms, stats.memory_mb),
    ];
    let fsheet = sheets.get(req.sheet.as_deref().unwrap_or("aws-lambda-x86"))?;
    let limit_ms = fsheet.function.as_ref().and_then(|x| x.max_duration_s).map(|s| s * 1000);
    let costs_line = costs
        .estimates
        .iter()
        .map(|e| format!("{} {} ({})", e.model, dollars(Money::parse(&e.monthly).map(Money::pico).unwrap_or(0)), e.sheet))
        .collect::<Vec<_>>()
        .join(", ");
    reasons.push(format!("cost a month at this traffic: {costs_line}"));
    // `other` is worth a change from `base` when it saves at least the margin.
    let beats = |other: u128, base: Option<u128>| base.is_none_or(|base| other * 100 <= base * (100 - MARGIN_PCT));
    let (recommendation, why) = if let Some(limit) = limit_ms.filter(|l| observed.p99_duration_ms > *l) {
        let over = format!("requests run up to {} s at p99, over the function limit of {} s", observed.p99_duration_ms / 1000, limit / 1000);
        match (s, b) {
            (Some(s), Some(b)) if beats(b, Some(s)) => (
                Model::Sandbox,
                format!(
                    "{over}; an always-on service would sit idle between them ({pattern} traffic), so a sandbox per job, resumed from standby for it and billed only while it runs, costs {} a month less than the service",
                    dollars(s - b)
                ),
            ),
            _ => (Model::Service, format!("{over}: only an always-on service (or a sandbox, which would not cost less here) runs them")),
        }
    } else if let Some(obj) = policy.objective_ms.filter(|o| cold_pct > 0 && observed.cold_p99_ms > *o) {
        let warm_choice = match (p, s) {
            (Some(p), Some(s)) if s < p => (Model::Service, s),
            (Some(p), _) => (Model::Provisioned, p),
            (None, Some(s)) => (Model::Service, s),
            (None, None) => (Model::Function, f.unwrap_or(u128::MAX)),
        };
        (
            warm_choice.0,
            format!(
                "latency: {cold_pct}% of requests start cold, and cold requests take {} ms at p99 against the objective of {obj} ms (warm: {} ms): keep instances warm; the cheaper warm model is {}",
                observed.cold_p99_ms, observed.warm_p99_ms, warm_choice.0
            ),
        )
    } else if current == Model::Function
        && let Some(s) = s.filter(|s| beats(*s, f))
    {
        let saved = f.map_or(String::new(), |f| format!(" {} a month less than", dollars(f - s)));
        (Model::Service, format!("an always-on service costs{saved} the function at this traffic ({pattern} traffic keeps its instances busy)"))
    } else if current == Model::Service
        && let Some(f) = f.filter(|f| beats(*f, s))
    {
        let saved = s.map_or(String::new(), |s| format!(" {} a month less than", dollars(s - f)));
        (
            Model::Function,
            format!(
                "{pattern} traffic with {idle_pct}% idle hours: a scale-to-zero function costs{saved} the always-on service (its first requests after idle would start cold)"
            ),
        )
    } else if current == Model::Service {
        (Model::Service, format!("{pattern} traffic keeps the service busy enough: a function would not cost {MARGIN_PCT}% less"))
    } else {
        let why = match pattern {
            "steady" => "the function costs least even for this steady traffic".to_string(),
            _ => format!("{pattern} traffic with {idle_pct}% idle hours: scaling to zero costs least"),
        };
        (Model::Function, why)
    };
    reasons.push(why);
    let chosen = match recommendation {
        Model::Service => s,
        Model::Provisioned => p,
        Model::Sandbox => b,
        Model::Function => f,
    };
    let saving_pico = match (cost_now, chosen) {
        (Some(now), Some(c)) => now as i128 - c as i128,
        _ => 0,
    };
    Ok(Decision { observed, costs, recommendation, reasons, saving_pico })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(hourly: Vec<u64>, duration_ms: u64, cold_every: usize) -> Stats {
        let requests = hourly.iter().sum();
        let recent = (0..1000).map(|i| if cold_every > 0 && i % cold_every == 0 { (duration_ms * 10, true) } else { (duration_ms, false) }).collect();
        Stats { requests, billed_ms: requests * duration_ms, hourly_requests: hourly, period_s: 0, recent, memory_mb: 512, cpus: None, current: None }
    }

    #[test]
    fn steady_busy_traffic_goes_to_a_service() {
        // A week at 100 req/s every hour, 120 ms each; an instance serves 10 at once.
        let s = stats(vec![360_000; 168], 120, 0);
        let d = advise(&s, &Policy { concurrency: Some(10), ..Default::default() }, &Sheets::builtin()).unwrap();
        assert_eq!(d.observed.pattern, "steady");
        assert_eq!(d.recommendation, Model::Service, "{:?}", d.reasons);
        assert!(d.saving_pico > 0);
    }

    #[test]
    fn spiky_sparse_traffic_stays_a_function() {
        // A week idle but for two hours of 5,000 requests.
        let mut hourly = vec![0; 168];
        hourly[30] = 5_000;
        hourly[100] = 5_000;
        let d = advise(&stats(hourly, 120, 0), &Policy::default(), &Sheets::builtin()).unwrap();
        assert_eq!(d.observed.pattern, "spiky");
        assert_eq!(d.recommendation, Model::Function, "{:?}", d.reasons);
        assert_eq!(d.saving_pico, 0);
    }

    #[test]
    fn long_running_requests_need_a_service_or_a_sandbox() {
        // 20-minute jobs, over Lambda's 15, 3 an hour all day, and a service that runs 10 at
        // once: one instance always busy, which a sandbox per job would not beat.
        let busy = advise(&stats(vec![3; 24], 20 * 60 * 1000, 0), &Policy { concurrency: Some(10), ..Default::default() }, &Sheets::builtin()).unwrap();
        assert_eq!(busy.recommendation, Model::Service, "{:?}", busy.reasons);
        assert!(busy.reasons.last().unwrap().contains("over the function limit of 900 s"));
        // Two such jobs a day: a service would sit idle; a sandbox per job costs a fraction.
        let mut hourly = vec![0; 24 * 7];
        for day in 0..7 {
            hourly[day * 24 + 9] = 1;
            hourly[day * 24 + 17] = 1;
        }
        let sparse = advise(&stats(hourly, 20 * 60 * 1000, 0), &Policy::default(), &Sheets::builtin()).unwrap();
        assert_eq!(sparse.recommendation, Model::Sandbox, "{:?}", sparse.reasons);
        assert!(sparse.reasons.last().unwrap().contains("a sandbox per job"), "{:?}", sparse.reasons);
        assert!(sparse.saving_pico < 0, "a sandbox costs more than the function would (which cannot run these jobs)");
    }

    #[test]
    fn services_are_weighed_against_their_own_cost() {
        let service = |hourly: Vec<u64>| Stats { current: Some(Model::Service), cpus: Some("0.5".into()), ..stats(hourly, 80, 0) };
        // A steady 50 req/s service with 80 concurrent requests per instance stays one.
        let steady = advise(&service(vec![180_000; 72]), &Policy { concurrency: Some(80), ..Default::default() }, &Sheets::builtin()).unwrap();
        assert_eq!(steady.recommendation, Model::Service, "{:?}", steady.reasons);
        assert_eq!(steady.saving_pico, 0);
        // A few hundred requests a day: the function costs less, and the saving is against
        // the service.
        let mut hourly = vec![0; 72];
        for h in (0..72).step_by(8) {
            hourly[h] = 300;
        }
        let sparse = advise(&service(hourly), &Policy::default(), &Sheets::builtin()).unwrap();
        assert_eq!(sparse.recommendation, Model::Function, "{:?}", sparse.reasons);
        assert!(sparse.saving_pico > 0, "{:?}", sparse.reasons);
        let service_cost = Money::parse(&sparse.costs.estimates.iter().find(|e| e.model == Model::Service).unwrap().monthly).unwrap().pico();
        let function_cost = Money::parse(&sparse.costs.estimates.iter().find(|e| e.model == Model::Function).unwrap().monthly).unwrap().pico();
        assert_eq!(sparse.saving_pico, service_cost as i128 - function_cost as i128);
    }

    #[test]
    fn cold_starts_over_the_objective_call_for_warm_instances() {
        // Light traffic, every 5th request cold at 10× the duration.
        let s = stats(vec![600; 48], 50, 5);
        let relaxed = advise(&s, &Policy::default(), &Sheets::builtin()).unwrap();
        assert_eq!(relaxed.recommendation, Model::Function);
        let strict = advise(&s, &Policy { objective_ms: Some(200), ..Default::default() }, &Sheets::builtin()).unwrap();
        assert_eq!(strict.observed.cold_start_pct, 20);
        assert_eq!(strict.recommendation, Model::Provisioned, "{:?}", strict.reasons);
        assert!(strict.saving_pico < 0, "warm instances cost more, for latency");
        assert!(signed(strict.saving_pico).starts_with('-'));
    }

    #[test]
    fn nothing_to_advise_on_without_requests() {
        assert!(advise(&Stats { hourly_requests: vec![0; 24], memory_mb: 128, ..Default::default() }, &Policy::default(), &Sheets::builtin()).is_err());
    }
}
