//! Price sheets: what a provider charges for each execution model, with where and when the
//! prices were read. Built-in sheets are embedded; users add their own as TOML files (one sheet
//! per file), and a sheet with a `[machine]` section prices a whole machine (a VM, or
//! "self-hosted" from its monthly cost), split between services by their share of it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::CostError;
use crate::money::{Money, div_round, parse_fixed};

/// Hours in the month every estimate uses (365 × 24 / 12, the providers' convention).
pub const HOURS_PER_MONTH: u128 = 730;

const BUILTIN: &[&str] = &[
    include_str!("../sheets/aws-lambda-x86.toml"),
    include_str!("../sheets/aws-lambda-arm.toml"),
    include_str!("../sheets/aws-fargate.toml"),
    include_str!("../sheets/gcp-cloud-run.toml"),
    include_str!("../sheets/aws-ec2-t4g-medium.toml"),
];

/// Prices of a scale-to-zero function: per request and per resource-second while running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionPrices {
    pub per_million_requests: Money,
    /// Per GiB-second of configured memory (what AWS calls a GB-second).
    pub per_gb_second: Money,
    pub per_vcpu_second: Money,
    /// Billed durations are rounded up to this.
    pub granularity_ms: u64,
    pub free_requests: u128,
    pub free_gb_seconds: u128,
    pub free_vcpu_seconds: u128,
    /// The longest a request may run, seconds.
    pub max_duration_s: Option<u64>,
}

/// Prices of instances kept initialized (AWS provisioned concurrency).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedPrices {
    pub per_gb_second: Money,
    pub duration_per_gb_second: Money,
    pub per_million_requests: Money,
}

/// Prices of an always-on instance, per hour of its vCPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePrices {
    pub per_vcpu_hour: Money,
    pub per_gb_hour: Money,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sheet {
    pub name: String,
    pub title: String,
    pub source: String,
    pub as_of: String,
    /// `builtin` or the file it came from.
    pub origin: String,
    pub function: Option<FunctionPrices>,
    pub provisioned: Option<ProvisionedPrices>,
    pub service: Option<ServicePrices>,
}

impl Sheet {
    /// The models it prices.
    pub fn models(&self) -> Vec<hangar_api::Model> {
        use hangar_api::Model;
        [(Model::Function, self.function.is_some()), (Model::Provisioned, self.provisioned.is_some()), (Model::Service, self.service.is_some())]
            .into_iter()
            .filter(|(_, has)| *has)
            .map(|(m, _)| m)
            .collect()
    }
}

// The file's shape: prices are decimal strings (exact), counts integers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSheet {
    name: String,
    title: String,
    source: String,
    as_of: String,
    function: Option<RawFunction>,
    provisioned: Option<RawProvisioned>,
    service: Option<RawService>,
    machine: Option<RawMachine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunction {
    per_million_requests: String,
    per_gb_second: String,
    #[serde(default)]
    per_vcpu_second: Option<String>,
    granularity_ms: u64,
    #[serde(default)]
    free_requests: u64,
    #[serde(default)]
    free_gb_seconds: u64,
    #[serde(default)]
    free_vcpu_seconds: u64,
    #[serde(default)]
    max_duration_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvisioned {
    per_gb_second: String,
    duration_per_gb_second: String,
    per_million_requests: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    per_vcpu_hour: String,
    per_gb_hour: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    /// One of hourly or monthly (730 hours).
    hourly: Option<String>,
    monthly: Option<String>,
    vcpus: String,
    memory_gb: String,
}

fn price(origin: &str, field: &str, text: &str) -> Result<Money, CostError> {
    Money::parse(text).map_err(|e| CostError::Sheet(format!("{origin}: `{field}`: {e}")))
}

/// Parses one sheet from TOML text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Sheet, CostError> {
    let raw: RawSheet = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(", line {l}")).unwrap_or_default();
        CostError::Sheet(format!("{origin}{at}: {}", e.message()))
    })?;
    if raw.name.is_empty() || !raw.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(CostError::Sheet(format!("{origin}: `name` must be lowercase letters, digits and `-`, not `{}`", raw.name)));
    }
    let function = raw
        .function
        .map(|f| -> Result<FunctionPrices, CostError> {
            if f.granularity_ms == 0 {
                return Err(CostError::Sheet(format!("{origin}: `function.granularity_ms` must be at least 1")));
            }
            Ok(FunctionPrices {
                per_million_requests: price(origin, "function.per_million_requests", &f.per_million_requests)?,
                per_gb_second: price(origin, "function.per_gb_second", &f.per_gb_second)?,
                per_vcpu_second: f.per_vcpu_second.as_deref().map(|p| price(origin, "function.per_vcpu_second", p)).transpose()?.unwrap_or_default(),
                granularity_ms: f.granularity_ms,
                free_requests: f.free_requests.into(),
                free_gb_seconds: f.free_gb_seconds.into(),
                free_vcpu_seconds: f.free_vcpu_seconds.into(),
                max_duration_s: f.max_duration_s,
            })
        })
        .transpose()?;
    let provisioned = raw
        .provisioned
        .map(|p| -> Result<ProvisionedPrices, CostError> {
            Ok(ProvisionedPrices {
                per_gb_second: price(origin, "provisioned.per_gb_second", &p.per_gb_second)?,
                duration_per_gb_second: price(origin, "provisioned.duration_per_gb_second", &p.duration_per_gb_second)?,
                per_million_requests: price(origin, "provisioned.per_million_requests", &p.per_million_requests)?,
            })
        })
        .transpose()?;
    let service = match (raw.service, raw.machine) {
        (Some(_), Some(_)) => return Err(CostError::Sheet(format!("{origin}: give `[service]` prices or a `[machine]`, not both"))),
        (Some(s), None) => Some(ServicePrices {
            per_vcpu_hour: price(origin, "service.per_vcpu_hour", &s.per_vcpu_hour)?,
            per_gb_hour: price(origin, "service.per_gb_hour", &s.per_gb_hour)?,
        }),
        (None, Some(m)) => Some(machine(origin, &m)?),
        (None, None) => None,
    };
    if function.is_none() && provisioned.is_none() && service.is_none() {
        return Err(CostError::Sheet(format!("{origin}: the sheet prices nothing; give [function], [provisioned], [service] or [machine]")));
    }
    Ok(Sheet { name: raw.name, title: raw.title, source: raw.source, as_of: raw.as_of, origin: origin.to_string(), function, provisioned, service })
}

/// A whole machine's price as per-vCPU and per-GiB hourly prices: half of it follows the
/// vCPUs, half the memory.
fn machine(origin: &str, m: &RawMachine) -> Result<ServicePrices, CostError> {
    let hourly = match (&m.hourly, &m.monthly) {
        (Some(h), None) => price(origin, "machine.hourly", h)?.pico(),
        (None, Some(mo)) => div_round(price(origin, "machine.monthly", mo)?.pico(), HOURS_PER_MONTH),
        _ => return Err(CostError::Sheet(format!("{origin}: `[machine]` needs one of `hourly` or `monthly`"))),
    };
    // vCPUs and GiB to 3 places, as thousandths.
    let amount = |field: &str, text: &str| -> Result<u128, CostError> {
        match parse_fixed(text, 3) {
            Ok(0) => Err(CostError::Sheet(format!("{origin}: `machine.{field}` must be more than 0"))),
            Ok(v) => Ok(v),
            Err(e) => Err(CostError::Sheet(format!("{origin}: `machine.{field}`: {e}"))),
        }
    };
    let (vcpus, memory) = (amount("vcpus", &m.vcpus)?, amount("memory_gb", &m.memory_gb)?);
    Ok(ServicePrices { per_vcpu_hour: Money(div_round(hourly * 1000, 2 * vcpus)), per_gb_hour: Money(div_round(hourly * 1000, 2 * memory)) })
}

/// Every sheet the server knows: built in, then the user's (which may replace a built-in one
/// of the same name).
#[derive(Debug, Clone, Default)]
pub struct Sheets {
    by_name: BTreeMap<String, Sheet>,
}

impl Sheets {
    /// The built-in sheets.
    pub fn builtin() -> Sheets {
        let mut s = Sheets::default();
        for text in BUILTIN {
            // Built-in sheets are tested to parse; one that does not is left out, not a panic.
            if let Ok(sheet) = parse(text, "builtin") {
                s.by_name.insert(sheet.name.clone(), sheet);
            }
        }
        s
    }

    /// The built-in sheets and every `*.toml` in `dir` (if it exists).
    pub fn load(dir: Option<&Path>) -> Result<Sheets, CostError> {
        let mut s = Sheets::builtin();
        let Some(dir) = dir.filter(|d| d.is_dir()) else { return Ok(s) };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| CostError::Sheet(format!("{}: {e}", dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| CostError::Sheet(format!("{}: {e}", path.display())))?;
            let sheet = parse(&text, &path.display().to_string())?;
            s.by_name.insert(sheet.name.clone(), sheet);
        }
        Ok(s)
    }

    pub fn get(&self, name: &str) -> Result<&Sheet, CostError> {
        self.by_name.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            CostError::Invalid(format!("no price sheet `{name}`; known: {} (`hangar prices ls`)", known.join(", ")))
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &Sheet> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_sheets_parse_with_the_published_prices() {
        for text in BUILTIN {
            parse(text, "builtin").unwrap();
        }
        let s = Sheets::builtin();
        assert_eq!(s.all().count(), BUILTIN.len());
        let x86 = s.get("aws-lambda-x86").unwrap().function.clone().unwrap();
        assert_eq!((x86.per_million_requests.to_string(), x86.per_gb_second.to_string()), ("0.2".into(), "0.0000166667".into()));
        assert_eq!((x86.free_requests, x86.free_gb_seconds), (1_000_000, 400_000));
        assert_eq!(s.get("aws-lambda-arm").unwrap().function.as_ref().unwrap().per_gb_second.to_string(), "0.0000133334");
        // t4g.medium: $0.0336 an hour, half over 2 vCPUs, half over 4 GiB.
        let vm = s.get("aws-ec2-t4g-medium").unwrap().service.clone().unwrap();
        assert_eq!((vm.per_vcpu_hour.to_string(), vm.per_gb_hour.to_string()), ("0.0084".into(), "0.0042".into()));
        assert!(s.get("nope").unwrap_err().to_string().contains("aws-lambda-x86"));
    }

    #[test]
    fn bad_sheets_name_the_file_and_line() {
        let err = parse(
            "name = \"mine\"\ntitle = \"t\"\nsource = \"s\"\nas_of = \"2026-01-01\"\n[service]\nper_vcpu_hour = \"-1\"\nper_gb_hour = \"1\"\n",
            "mine.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mine.toml") && err.contains("per_vcpu_hour"), "{err}");
        let err = parse("name = \"mine\"\ntitle = \"t\"\nsource = \"s\"\nas_of = \"x\"\n[service]\nper_vcpu_hour = \"1\"\nper_gb_hr = \"1\"\n", "mine.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mine.toml, line 7") && err.contains("per_gb_hr"), "{err}");
        let err = parse("name = \"mine\"\ntitle = \"t\"\nsource = \"s\"\nas_of = \"x\"\n", "m.toml").unwrap_err().to_string();
        assert!(err.contains("prices nothing"), "{err}");
        // Self-hosted: $120 a month for 16 vCPUs and 64 GiB.
        let own = parse("name = \"self-hosted\"\ntitle = \"t\"\nsource = \"my invoice\"\nas_of = \"2026-11-01\"\n[machine]\nmonthly = \"120\"\nvcpus = \"16\"\nmemory_gb = \"64\"\n", "own.toml").unwrap();
        let s = own.service.unwrap();
        // 120 / 730 = 0.164383561644 an hour; half over 16 vCPUs, half over 64 GiB.
        assert_eq!(s.per_vcpu_hour.to_string(), "0.005136986301");
        assert_eq!(s.per_gb_hour.to_string(), "0.001284246575");
    }
}
