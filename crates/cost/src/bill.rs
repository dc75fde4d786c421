//! What metered usage cost: one usage row (a workload's hour or day) priced with a sheet, in
//! exact integers with one half-up rounding per line. Functions pay for their requests and
//! memory-time (and CPU-time at one vCPU where the sheet prices it), at Hangar's 1 ms billing
//! and without the free tier (a month's allowance, not a row's); services and sandboxes pay for
//! the vCPU- and memory-time of their running instances at the sheet's instance prices.
//! Provisioned and paused time and standby storage are metered but not priced here.

use hangar_api::cost::UsageDelta;

use crate::money::div_round;
use crate::sheet::Sheet;

/// The cost of `row` in pico-dollars, and the name of the sheet that priced it (`None` when
/// the sheet for its kind prices no such thing).
pub fn bill(row: &UsageDelta, function_sheet: &Sheet, service_sheet: &Sheet) -> Option<(u128, String)> {
    if row.kind == hangar_api::WorkloadKind::Function {
        let f = function_sheet.function.as_ref()?;
        let requests = div_round(u128::from(row.requests) * f.per_million_requests.pico(), 1_000_000);
        let memory = div_round(u128::from(row.mb_ms) * f.per_gb_second.pico(), 1_024_000);
        let cpu = div_round(u128::from(row.billed_ms) * f.per_vcpu_second.pico(), 1000);
        return Some((requests + memory + cpu, function_sheet.name.clone()));
    }
    let s = service_sheet.service.as_ref()?;
    let cpu = div_round(u128::from(row.vcpu_milli_ms) * s.per_vcpu_hour.pico(), 1000 * 3_600_000);
    let memory = div_round(u128::from(row.mb_ms) * s.per_gb_hour.pico(), 1024 * 3_600_000);
    Some((cpu + memory, service_sheet.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sheets;
    use crate::money::Money;

    fn row(kind: &str) -> UsageDelta {
        UsageDelta { namespace: "default".into(), kind: kind.parse().unwrap(), name: "x".into(), ..Default::default() }
    }

    #[test]
    fn rows_are_priced_by_hand() {
        let sheets = Sheets::builtin();
        let (lambda, fargate, cloud_run) = (sheets.get("aws-lambda-x86").unwrap(), sheets.get("aws-fargate").unwrap(), sheets.get("gcp-cloud-run").unwrap());
        // 1,000 requests of 100 ms at 512 MiB: 50 GB-s × $0.0000166667 = $0.000833335, plus
        // 1,000 × $0.20/M = $0.0002.
        let f = UsageDelta { requests: 1000, billed_ms: 100_000, mb_ms: 100_000 * 512, ..row("function") };
        let (pico, sheet) = bill(&f, lambda, fargate).unwrap();
        assert_eq!((Money(pico).to_string(), sheet.as_str()), ("0.001033335".to_string(), "aws-lambda-x86"));
        // Cloud Run also prices CPU-time: 100 vCPU-s × $0.000024 = $0.0024; 50 GiB-s ×
        // $0.0000025 = $0.000125; 1,000 × $0.40/M = $0.0004.
        assert_eq!(Money(bill(&f, cloud_run, fargate).unwrap().0).to_string(), "0.002925");
        // A service instance of 0.5 vCPU and 1 GiB for an hour on Fargate: $0.02024 + $0.004445.
        let s = UsageDelta { running_ms: 3_600_000, vcpu_milli_ms: 500 * 3_600_000, mb_ms: 1024 * 3_600_000, ..row("service") };
        assert_eq!(Money(bill(&s, lambda, fargate).unwrap().0).to_string(), "0.024685");
        // A sandbox is priced like the instance it is; a sheet without instance prices cannot.
        assert_eq!(
            bill(&UsageDelta { kind: hangar_api::WorkloadKind::Sandbox, ..s.clone() }, lambda, fargate).unwrap().0,
            bill(&s, lambda, fargate).unwrap().0
        );
        assert!(bill(&s, lambda, lambda).is_none());
    }
}
