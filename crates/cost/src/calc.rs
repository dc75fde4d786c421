//! The monthly cost (730 hours) of a traffic shape under each execution model, from a price
//! sheet, in exact integer arithmetic: a scale-to-zero function (requests and resource-time,
//! rounded to the sheet's granularity, after its free tier), provisioned instances (kept for
//! the peak, plus requests and duration at their own rate), an always-on service sized for
//! the peak at a target utilization, and a sandbox per job (billed only while jobs run). And
//! the break-even rate between function and service.

use hangar_api::Model;
use hangar_api::cost::{CalcAnswer, CalcRequest, CostLine, Estimate};

use crate::CostError;
use crate::money::{Money, div_round, parse_fixed, show_fixed};
use crate::sheet::{HOURS_PER_MONTH, Sheet, Sheets};

/// Seconds in the month (730 hours).
const SECONDS_PER_MONTH: u128 = HOURS_PER_MONTH * 3600;
/// The highest rate the calculator takes, requests per second.
const MAX_RPS: u128 = 1_000_000;

/// A traffic shape in exact integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    /// Mean requests per second × 1000.
    pub rps_milli: u128,
    /// Peak requests per second × 1000.
    pub peak_milli: u128,
    pub duration_us: u128,
    pub memory_mb: u128,
    /// vCPUs × 1000.
    pub cpus_milli: u128,
    /// Requests one service instance serves at once.
    pub concurrency: u128,
    /// Percent.
    pub target_pct: u128,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> CostError {
    CostError::Invalid(format!("{field}: {why}"))
}

impl Traffic {
    /// Checks and converts a request; absurd values are refused with the range.
    pub fn from_request(r: &CalcRequest) -> Result<Traffic, CostError> {
        let rate = |field: &str, text: &str| -> Result<u128, CostError> {
            let v = parse_fixed(text, 3).map_err(|e| invalid(field, e))?;
            if v == 0 || v > MAX_RPS * 1000 {
                return Err(invalid(field, format!("`{text}` is out of range 0.001..={MAX_RPS} requests per second")));
            }
            Ok(v)
        };
        let rps_milli = rate("rps", &r.rps)?;
        let peak_milli = r.peak_rps.as_deref().map(|p| rate("peak_rps", p)).transpose()?.unwrap_or(rps_milli);
        if peak_milli < rps_milli {
            return Err(invalid("peak_rps", format!("{} is below the mean rate {}", show_fixed(peak_milli, 3), show_fixed(rps_milli, 3))));
        }
        let duration = humantime::parse_duration(r.duration.trim())
            .map_err(|e| invalid("duration", format!("`{}` is not a duration like 120ms or 2s ({e})", r.duration)))?;
        let duration_us = duration.as_micros();
        if duration_us == 0 || duration_us > 24 * 3600 * 1_000_000 {
            return Err(invalid("duration", format!("`{}` is out of range 1µs..=24h", r.duration)));
        }
        if !(1..=1_048_576).contains(&r.memory_mb) {
            return Err(invalid("memory_mb", format!("{} is out of range 1..=1048576 MiB", r.memory_mb)));
        }
        let cpus_milli = match &r.cpus {
            None => 1000,
            Some(c) => match parse_fixed(c, 3) {
                Ok(v) if (1..=1_024_000).contains(&v) => v,
                Ok(_) => return Err(invalid("cpus", format!("`{c}` is out of range 0.001..=1024"))),
                Err(e) => return Err(invalid("cpus", e)),
            },
        };
        let concurrency = r.concurrency.unwrap_or(1);
        if !(1..=100_000).contains(&concurrency) {
            return Err(invalid("concurrency", format!("{concurrency} is out of range 1..=100000")));
        }
        let target = r.target_utilization.unwrap_or(70);
        if !(1..=100).contains(&target) {
            return Err(invalid("target_utilization", format!("{target} is out of range 1..=100 percent")));
        }
        Ok(Traffic {
            rps_milli,
            peak_milli,
            duration_us,
            memory_mb: r.memory_mb.into(),
            cpus_milli,
            concurrency: concurrency.into(),
            target_pct: target.into(),
        })
    }

    /// Requests in the month.
    pub fn requests(&self) -> u128 {
        self.rps_milli * SECONDS_PER_MONTH / 1000
    }

    /// Instances for the peak: requests in flight at the peak (rate × duration) over what one
    /// instance serves at the target utilization; at least one.
    pub fn instances(&self, per_instance: u128) -> u128 {
        let need = self.peak_milli * self.duration_us * 100;
        let one = 1_000 * 1_000_000 * per_instance * self.target_pct;
        need.div_ceil(one).max(1)
    }
}

fn line(what: &str, quantity: String, unit: &str, unit_price: Money, cost: u128) -> CostLine {
    CostLine { what: what.into(), quantity, unit: unit.into(), unit_price: unit_price.to_string(), cost: Money(cost).to_string() }
}

/// GiB-seconds (GB-s) from MiB-milliseconds, exactly: 1 GB-s = 1,024,000 MiB-ms, and
/// 10¹³ / 1,024,000 = 9,765,625 is whole.
fn gb_seconds(mb_ms: u128) -> String {
    show_fixed(mb_ms * 9_765_625, 13)
}

fn estimate(model: Model, sheet: &Sheet, lines: Vec<CostLine>, costs: &[u128], instances: Option<u128>, notes: Vec<String>) -> Estimate {
    let total: u128 = costs.iter().sum();
    Estimate { model, sheet: sheet.name.clone(), monthly: Money(total).to_string(), lines, instances: instances.map(|n| n as u64), notes }
}

/// A scale-to-zero function, or `None` when the sheet does not price functions.
pub fn function(sheet: &Sheet, t: &Traffic) -> Option<(Estimate, u128)> {
    let f = sheet.function.as_ref()?;
    let requests = t.requests();
    let g_us = u128::from(f.granularity_ms) * 1000;
    let billed_ms = t.duration_us.div_ceil(g_us) * u128::from(f.granularity_ms);
    let total_ms = requests * billed_ms;
    let mb_ms = (total_ms * t.memory_mb).saturating_sub(f.free_gb_seconds * 1_024_000);
    let vcpu_ms_milli = (total_ms * t.cpus_milli).saturating_sub(f.free_vcpu_seconds * 1_000_000);
    let billed_requests = requests.saturating_sub(f.free_requests);
    let req_cost = div_round(billed_requests * f.per_million_requests.pico(), 1_000_000);
    let mem_cost = div_round(mb_ms * f.per_gb_second.pico(), 1_024_000);
    let mut lines = vec![
        line("requests (after the free tier)", billed_requests.to_string(), "request", Money(div_round(f.per_million_requests.pico(), 1_000_000)), req_cost),
        line(&format!("memory-time ({billed_ms} ms billed per request, after the free tier)"), gb_seconds(mb_ms), "GB-s", f.per_gb_second, mem_cost),
    ];
    let mut costs = vec![req_cost, mem_cost];
    if f.per_vcpu_second.pico() > 0 {
        let cpu_cost = div_round(vcpu_ms_milli * f.per_vcpu_second.pico(), 1_000_000);
        lines.push(line("CPU-time (after the free tier)", show_fixed(vcpu_ms_milli, 6), "vCPU-s", f.per_vcpu_second, cpu_cost));
        costs.push(cpu_cost);
    }
    let mut notes = Vec::new();
    if let Some(max) = f.max_duration_s
        && t.duration_us > u128::from(max) * 1_000_000
    {
        notes.push(format!("a request runs longer than {} allows a function to ({max} s): this model does not fit", sheet.name));
    }
    let total = costs.iter().sum();
    Some((estimate(Model::Function, sheet, lines, &costs, None, notes), total))
}

/// Provisioned instances for the peak (one request each), or `None` without such prices.
pub fn provisioned(sheet: &Sheet, t: &Traffic) -> Option<(Estimate, u128)> {
    let p = sheet.provisioned.as_ref()?;
    let n = t.instances(1);
    let requests = t.requests();
    let granularity = sheet.function.as_ref().map_or(1, |f| u128::from(f.granularity_ms));
    let billed_ms = t.duration_us.div_ceil(granularity * 1000) * granularity;
    let kept_mb_ms = n * t.memory_mb * SECONDS_PER_MONTH * 1000;
    let used_mb_ms = requests * billed_ms * t.memory_mb;
    let kept = div_round(kept_mb_ms * p.per_gb_second.pico(), 1_024_000);
    let used = div_round(used_mb_ms * p.duration_per_gb_second.pico(), 1_024_000);
    let req = div_round(requests * p.per_million_requests.pico(), 1_000_000);
    let lines = vec![
        line(&format!("{n} instance(s) kept initialized all month"), gb_seconds(kept_mb_ms), "GB-s", p.per_gb_second, kept),
        line("memory-time of the requests", gb_seconds(used_mb_ms), "GB-s", p.duration_per_gb_second, used),
        line("requests (no free tier)", requests.to_string(), "request", Money(div_round(p.per_million_requests.pico(), 1_000_000)), req),
    ];
    let total = kept + used + req;
    Some((estimate(Model::Provisioned, sheet, lines, &[kept, used, req], Some(n), Vec::new()), total))
}

/// An always-on service sized for the peak, or `None` when the sheet does not price services.
pub fn service(sheet: &Sheet, t: &Traffic) -> Option<(Estimate, u128)> {
    let s = sheet.service.as_ref()?;
    let n = t.instances(t.concurrency);
    let cpu = div_round(n * t.cpus_milli * HOURS_PER_MONTH * s.per_vcpu_hour.pico(), 1000);
    let mem = div_round(n * t.memory_mb * HOURS_PER_MONTH * s.per_gb_hour.pico(), 1024);
    let lines = vec![
        line(
            &format!("{n} instance(s) × {} vCPU, all month", show_fixed(t.cpus_milli, 3)),
            show_fixed(n * t.cpus_milli * HOURS_PER_MONTH, 3),
            "vCPU-hour",
            s.per_vcpu_hour,
            cpu,
        ),
        line(
            &format!("{n} instance(s) × {} MiB, all month", t.memory_mb),
            show_fixed(n * t.memory_mb * HOURS_PER_MONTH * 9_765_625, 10),
            "GB-hour",
            s.per_gb_hour,
            mem,
        ),
    ];
    Some((estimate(Model::Service, sheet, lines, &[cpu, mem], Some(n), Vec::new()), cpu + mem))
}

/// Requests shorter than this would wait longer for a sandbox to resume from standby than
/// they run: the sandbox model fits jobs, not requests.
const SANDBOX_MIN_US: u128 = 1_000_000;

/// A sandbox per job: resumed from standby for the job, billed by the second while it runs at
/// the service sheet's instance prices, back on standby after (its disk is not priced here),
/// or `None` when the sheet does not price instances.
pub fn sandbox(sheet: &Sheet, t: &Traffic) -> Option<(Estimate, u128)> {
    let s = sheet.service.as_ref()?;
    let busy_ms = (t.requests() * t.duration_us).div_ceil(1000);
    let in_flight = (t.rps_milli * t.duration_us).div_ceil(1_000_000_000).max(1);
    let cpu = div_round(busy_ms.saturating_mul(t.cpus_milli).saturating_mul(s.per_vcpu_hour.pico()), 1000 * 3_600_000);
    let mem = div_round(busy_ms.saturating_mul(t.memory_mb).saturating_mul(s.per_gb_hour.pico()), 1024 * 3_600_000);
    let lines = vec![
        line(
            &format!("jobs × {} vCPU, while they run", show_fixed(t.cpus_milli, 3)),
            show_fixed(busy_ms * t.cpus_milli / 3_600, 6),
            "vCPU-hour",
            s.per_vcpu_hour,
            cpu,
        ),
        line(&format!("jobs × {} MiB, while they run", t.memory_mb), show_fixed(busy_ms * t.memory_mb * 9_765_625 / 3_600, 13), "GB-hour", s.per_gb_hour, mem),
    ];
    let mut notes = Vec::new();
    if t.duration_us < SANDBOX_MIN_US {
        notes.push(
            "requests shorter than 1 s would wait longer for a sandbox to resume from standby than they run: this model fits jobs, not requests".to_string(),
        );
    }
    Some((estimate(Model::Sandbox, sheet, lines, &[cpu, mem], Some(in_flight), notes), cpu + mem))
}

/// The lowest mean rate (requests per second × 1000) at which the function costs more than
/// the service, the peak kept in proportion to the mean; `None` up to the calculator's limit.
pub fn break_even(function_sheet: &Sheet, service_sheet: &Sheet, t: &Traffic) -> Option<u128> {
    let at = |rps_milli: u128| {
        let mut x = t.clone();
        x.rps_milli = rps_milli;
        x.peak_milli = (rps_milli * t.peak_milli).div_ceil(t.rps_milli);
        let f = function(function_sheet, &x).map(|(_, c)| c)?;
        let s = service(service_sheet, &x).map(|(_, c)| c)?;
        Some(f > s)
    };
    // The service's cost steps up with each instance; within a step it is flat and the
    // function's cost only grows. So walk the steps, and search inside the first one whose end
    // the function passes. Past 100,000 steps they are so narrow that the service's cost is as
    // good as a line, and one search over the rest finds the crossing.
    let limit = MAX_RPS * 1000;
    let search = |mut lo: u128, mut hi: u128| -> Option<u128> {
        if at(lo)? {
            return Some(lo);
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if at(mid)? { hi = mid } else { lo = mid }
        }
        Some(hi)
    };
    // The mean rate whose peak fills `n` instances exactly.
    let step_end = |n: u128| -> u128 { n * 1_000 * 1_000_000 * t.concurrency * t.target_pct / (t.duration_us * 100) * t.rps_milli / t.peak_milli };
    let mut low = 1u128;
    for n in 1..=100_000u128 {
        let end = step_end(n).min(limit);
        if end < low {
            continue;
        }
        if at(end)? {
            return search(low, end);
        }
        if end == limit {
            return None;
        }
        low = end + 1;
    }
    if at(limit)? { search(low, limit) } else { None }
}

/// Every estimate the sheets allow for the request, the break-even rate and the cheapest.
pub fn calc(req: &CalcRequest, sheets: &Sheets) -> Result<CalcAnswer, CostError> {
    let t = Traffic::from_request(req)?;
    let fsheet = sheets.get(req.sheet.as_deref().unwrap_or("aws-lambda-x86"))?;
    let ssheet = match &req.service_sheet {
        Some(name) => sheets.get(name)?,
        None if fsheet.service.is_some() => fsheet,
        None => sheets.get("aws-fargate")?,
    };
    if ssheet.service.is_none() {
        return Err(CostError::Invalid(format!("service_sheet: `{}` does not price always-on services; pick one that does (`hangar prices ls`)", ssheet.name)));
    }
    let mut all: Vec<(Estimate, u128)> = Vec::new();
    all.extend(function(fsheet, &t));
    all.extend(provisioned(fsheet, &t));
    all.extend(service(ssheet, &t));
    all.extend(sandbox(ssheet, &t));
    if all.is_empty() {
        return Err(CostError::Invalid(format!("sheet: `{}` prices neither functions nor services", fsheet.name)));
    }
    let cheapest = all.iter().filter(|(e, _)| e.notes.is_empty()).min_by_key(|(_, c)| *c).or(all.first()).map_or(Model::Function, |(e, _)| e.model);
    let break_even_rps = if fsheet.function.is_some() { break_even(fsheet, ssheet, &t).map(|r| show_fixed(r, 3)) } else { None };
    Ok(CalcAnswer { estimates: all.into_iter().map(|(e, _)| e).collect(), break_even_rps, cheapest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(rps: &str, duration: &str, memory_mb: u32) -> CalcRequest {
        CalcRequest {
            rps: rps.into(),
            duration: duration.into(),
            memory_mb,
            cpus: None,
            peak_rps: None,
            concurrency: None,
            target_utilization: None,
            sheet: None,
            service_sheet: None,
        }
    }

    fn cost(model: &str, sheet: &str, r: &CalcRequest) -> String {
        let sheets = Sheets::builtin();
        let t = Traffic::from_request(r).unwrap();
        let s = sheets.get(sheet).unwrap();
        let e = match model {
            "function" => function(s, &t),
            "provisioned" => provisioned(s, &t),
            "sandbox" => sandbox(s, &t),
            _ => service(s, &t),
        };
        e.unwrap().0.monthly
    }

    /// Each expected figure was worked out by hand from the sheet's published prices.
    #[test]
    fn bills_match_hand_computations() {
        // A sandbox per 20-minute job, 3.6 jobs an hour (0.001 rps), 1 vCPU and 2 GiB, at
        // Fargate's prices: 2,628 jobs × 1,200 s = 876 h; 876 vCPU-h × $0.04048 = $35.46048 and
        // 1,752 GB-h × $0.004445 = $7.78764. The always-on service needs 2 instances (1.2 jobs
        // in flight at 70 %): 2 × 730 h × ($0.04048 + 2 × $0.004445) = $72.0802.
        let mut jobs = req("0.001", "20m", 2048);
        jobs.cpus = Some("1".into());
        assert_eq!(cost("sandbox", "aws-fargate", &jobs), "43.24812");
        assert_eq!(cost("service", "aws-fargate", &jobs), "72.0802");
        // x86, 1 rps for 730 h = 2,628,000 requests of 1 s at 512 MB = 1,314,000 GB-s;
        // less 400,000 free = 914,000 × $0.0000166667 = $15.2333638; requests
        // (2,628,000 − 1,000,000) × $0.20/M = $0.3256.
        assert_eq!(cost("function", "aws-lambda-x86", &req("1", "1s", 512)), "15.5589638");
        // Arm, 5 rps × 120 ms × 512 MB: 13,140,000 requests, 788,400 GB-s; (788,400 − 400,000)
        // × $0.0000133334 = $5.17869256; 12,140,000 × $0.20/M = $2.428.
        assert_eq!(cost("function", "aws-lambda-arm", &req("5", "120ms", 512)), "7.60669256");
        // 1.5 ms bills as 2 ms at Lambda's 1 ms granularity: 2,628,000 × 2 ms × 1 GB = 5,256 GB-s,
        // inside the free tier, and so are the requests... at 1 rps only the requests beyond 1M.
        assert_eq!(cost("function", "aws-lambda-x86", &req("1", "1500us", 1024)), "0.3256");
        // Cloud Run rounds 120 ms up to 200 ms: 26,280,000 requests; (2,628,000 − 360,000) GiB-s
        // × $0.0000025 = $5.67; (5,256,000 − 180,000) vCPU-s × $0.000024 = $121.824;
        // (26,280,000 − 2,000,000) × $0.40/M = $9.712.
        assert_eq!(cost("function", "gcp-cloud-run", &req("10", "120ms", 512)), "137.206");
        // Fargate, one instance of 1 vCPU and 512 MiB for 730 h: 730 × $0.04048 + 730 × 0.5 ×
        // $0.004445.
        assert_eq!(cost("service", "aws-fargate", &req("5", "120ms", 512)), "31.172825");
        // Provisioned x86: 5 rps × 0.12 s = 0.6 in flight, one instance at 70 %: 1,314,000
        // GB-s kept × $0.0000041667 = $5.4750438; 788,400 GB-s used × $0.0000097222 =
        // $7.66498248; 13,140,000 requests × $0.20/M = $2.628 (no free tier).
        assert_eq!(cost("provisioned", "aws-lambda-x86", &req("5", "120ms", 512)), "15.76802628");
        // Sizing for the peak: 50 rps × 0.12 s = 6 in flight, / 0.7 = 8.57 → 9 instances.
        let mut r = req("5", "120ms", 512);
        r.peak_rps = Some("50".into());
        let t = Traffic::from_request(&r).unwrap();
        assert_eq!(t.instances(1), 9);
        r.concurrency = Some(4);
        assert_eq!(Traffic::from_request(&r).unwrap().instances(4), 3);
    }

    #[test]
    fn the_break_even_rate_matches_the_closed_form() {
        // With the free tiers used up and one service instance, the function costs
        // a·r − b per month and the service S: r* = (S + b) / a with
        // a = 2,628,000 × ($0.0000002 + 0.12 × 0.5 × $0.0000166667) = 3.153605256,
        // b = $0.2 + 400,000 × $0.0000166667 = 6.86668, S = $31.172825: r* = 12.0622278…
        let mut r = req("1", "120ms", 512);
        r.concurrency = Some(10);
        r.service_sheet = Some("aws-fargate".into());
        let answer = calc(&r, &Sheets::builtin()).unwrap();
        assert_eq!(answer.break_even_rps.as_deref(), Some("12.063"), "the first rate (to 0.001) above r*");
        assert_eq!(answer.cheapest, Model::Function);
        let at = |rps: &str| {
            let mut x = r.clone();
            x.rps = rps.into();
            calc(&x, &Sheets::builtin()).unwrap().cheapest
        };
        assert_eq!(at("12.062"), Model::Function);
        assert_eq!(at("13"), Model::Service);
        // One request at a time per instance: the service needs an instance per 5.83 rps,
        // $31.17 a month each, ≈ $5.34 per rps, more than the function's ≈ $3.15: the service
        // never gets cheaper, so there is no break-even.
        let mut one = req("1", "120ms", 512);
        one.service_sheet = Some("aws-fargate".into());
        assert_eq!(calc(&one, &Sheets::builtin()).unwrap().break_even_rps, None);
    }

    #[test]
    fn absurd_inputs_are_refused_with_the_field() {
        let sheets = Sheets::builtin();
        let bad = |f: &dyn Fn(&mut CalcRequest)| {
            let mut r = req("5", "120ms", 512);
            f(&mut r);
            calc(&r, &sheets).unwrap_err().to_string()
        };
        assert!(bad(&|r| r.rps = "-5".into()).starts_with("rps:"));
        assert!(bad(&|r| r.rps = "0".into()).starts_with("rps:"));
        assert!(bad(&|r| r.rps = "1e9".into()).starts_with("rps:"));
        assert!(bad(&|r| r.rps = "2000000".into()).starts_with("rps:"));
        assert!(bad(&|r| r.duration = "forever".into()).starts_with("duration:"));
        assert!(bad(&|r| r.duration = "0s".into()).starts_with("duration:"));
        assert!(bad(&|r| r.memory_mb = 0).starts_with("memory_mb:"));
        assert!(bad(&|r| r.peak_rps = Some("1".into())).starts_with("peak_rps:"));
        assert!(bad(&|r| r.target_utilization = Some(0)).starts_with("target_utilization:"));
        assert!(bad(&|r| r.sheet = Some("nope".into())).contains("no price sheet `nope`"));
        assert!(bad(&|r| r.service_sheet = Some("aws-lambda-x86".into())).contains("does not price always-on services"));
        // A duration beyond Lambda's 15 minutes: priced, but flagged, and never "cheapest".
        let mut long = req("0.01", "20m", 512);
        long.service_sheet = Some("aws-fargate".into());
        let a = calc(&long, &sheets).unwrap();
        assert!(a.estimates[0].notes[0].contains("does not fit"), "{a:?}");
        assert_ne!(a.cheapest, Model::Function);
    }
}
