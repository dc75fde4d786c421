//! The advisor: from what a workload did (hourly requests, durations, cold starts), which
//! execution model it should run on and why — traffic pattern (steady or spiky), duration
//! against the function limit, latency (cold starts against an objective), and what each model
//! costs a month at that traffic. A model must save at least [`MARGIN_PCT`] to be recommended
//! over the plain function, so small differences do not make it flap.

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
    pub recommendation: String,
    pub reasons: Vec<String>,
    /// Pico-dollars a month saved against the plain function (negative: costs more).
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
        cpus: None,
        peak_rps: Some(show_fixed(peak_milli, 3)),
        concurrency: policy.concurrency,
        target_utilization: None,
        sheet: policy.sheet.clone(),
        service_sheet: policy.service_sheet.clone(),
    };
    let costs = crate::calc(&req, sheets)?;
    let cost_of = |model: &str| costs.estimates.iter().find(|e| e.model == model).and_then(|e| Money::parse(&e.monthly).ok()).map(Money::pico);
    let (f, p, s) = (cost_of("function"), cost_of("provisioned"), cost_of("service"));
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
    let costs_line = costs.estimates.iter().map(|e| format!("{} {} ({})", e.model, dollars(Money::parse(&e.monthly).map(Money::pico).unwrap_or(0)), e.sheet)).collect::<Vec<_>>().join(", ");
    reasons.push(format!("cost a month at this traffic: {costs_line}"));
    let f_cost = f.unwrap_or(u128::MAX);
    let worth = |other: u128| f_cost == u128::MAX || other * 100 <= f_cost * (100 - MARGIN_PCT);
    let (recommendation, why) = if let Some(limit) = limit_ms.filter(|l| observed.p99_duration_ms > *l) {
        ("service", format!("requests run up to {} s at p99, over the function limit of {} s: only an always-on service runs them", observed.p99_duration_ms / 1000, limit / 1000))
    } else if let Some(obj) = policy.objective_ms.filter(|o| cold_pct > 0 && observed.cold_p99_ms > *o) {
        let warm_choice = match (p, s) {
            (Some(p), Some(s)) if s < p => ("service", s),
            (Some(p), _) => ("provisioned", p),
            (None, Some(s)) => ("service", s),
            (None, None) => ("function", f_cost),
        };
        (
            warm_choice.0,
            format!(
                "latency: {cold_pct}% of requests start cold, and cold requests take {} ms at p99 against the objective of {obj} ms (warm: {} ms): keep instances warm; the cheaper warm model is {}",
                observed.cold_p99_ms, observed.warm_p99_ms, warm_choice.0
            ),
        )
    } else if let Some(s) = s.filter(|s| worth(*s)) {
        ("service", format!("an always-on service costs {} a month less than the function at this traffic ({pattern} traffic keeps its instances busy)", dollars(f_cost - s)))
    } else {
        let why = match pattern {
            "steady" => "the function costs least even for this steady traffic".to_string(),
            _ => format!("{pattern} traffic with {idle_pct}% idle hours: scaling to zero costs least"),
        };
        ("function", why)
    };
    reasons.push(why);
    let chosen = match recommendation {
        "service" => s,
        "provisioned" => p,
        _ => f,
    };
    let saving_pico = match (f, chosen) {
        (Some(f), Some(c)) => f as i128 - c as i128,
        _ => 0,
    };
    Ok(Decision { observed, costs, recommendation: recommendation.into(), reasons, saving_pico })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(hourly: Vec<u64>, duration_ms: u64, cold_every: usize) -> Stats {
        let requests = hourly.iter().sum();
        let recent = (0..1000).map(|i| if cold_every > 0 && i % cold_every == 0 { (duration_ms * 10, true) } else { (duration_ms, false) }).collect();
        Stats { requests, billed_ms: requests * duration_ms, hourly_requests: hourly, period_s: 0, recent, memory_mb: 512 }
    }

    #[test]
    fn steady_busy_traffic_goes_to_a_service() {
        // A week at 100 req/s every hour, 120 ms each; an instance serves 10 at once.
        let s = stats(vec![360_000; 168], 120, 0);
        let d = advise(&s, &Policy { concurrency: Some(10), ..Default::default() }, &Sheets::builtin()).unwrap();
        assert_eq!(d.observed.pattern, "steady");
        assert_eq!(d.recommendation, "service", "{:?}", d.reasons);
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
        assert_eq!(d.recommendation, "function", "{:?}", d.reasons);
        assert_eq!(d.saving_pico, 0);
    }

    #[test]
    fn long_running_requests_need_a_service() {
        // 20-minute jobs, over Lambda's 15.
        let d = advise(&stats(vec![3; 24], 20 * 60 * 1000, 0), &Policy::default(), &Sheets::builtin()).unwrap();
        assert_eq!(d.recommendation, "service", "{:?}", d.reasons);
        assert!(d.reasons.last().unwrap().contains("over the function limit of 900 s"));
    }

    #[test]
    fn cold_starts_over_the_objective_call_for_warm_instances() {
        // Light traffic, every 5th request cold at 10× the duration.
        let s = stats(vec![600; 48], 50, 5);
        let relaxed = advise(&s, &Policy::default(), &Sheets::builtin()).unwrap();
        assert_eq!(relaxed.recommendation, "function");
        let strict = advise(&s, &Policy { objective_ms: Some(200), ..Default::default() }, &Sheets::builtin()).unwrap();
        assert_eq!(strict.observed.cold_start_pct, 20);
        assert_eq!(strict.recommendation, "provisioned", "{:?}", strict.reasons);
        assert!(strict.saving_pico < 0, "warm instances cost more, for latency");
        assert!(signed(strict.saving_pico).starts_with('-'));
    }

    #[test]
    fn nothing_to_advise_on_without_requests() {
        assert!(advise(&Stats { hourly_requests: vec![0; 24], memory_mb: 128, ..Default::default() }, &Policy::default(), &Sheets::builtin()).is_err());
    }
}
