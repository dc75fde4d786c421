//! `hangar prices ls` and `hangar cost calc`: the price sheets, and what a traffic shape costs
//! a month under each execution model (computed by the server, which knows the user's sheets).

use anyhow::{Context, Result};
use hangar_api::cost::{AdviceList, CalcAnswer, CalcRequest, PriceSheetList, UsageList};
use reqwest::Method;

use crate::args::{Cli, CostCommand, Output, PricesCommand};
use crate::util::{client, ns_query, print_json, table};

pub async fn run_prices(cli: &Cli, cmd: &PricesCommand) -> Result<()> {
    let client = client(cli);
    match cmd {
        PricesCommand::Ls => {
            let list: PriceSheetList = client.json(client.request(Method::GET, "/v1/prices")).await?;
            if cli.output == Output::Json {
                return print_json(&list);
            }
            let mut t = table(&["NAME", "PRICES", "AS OF", "SOURCE", "FROM"]);
            for s in &list.items {
                t.add_row(vec![
                    s.name.clone(),
                    s.models.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
                    s.as_of.clone(),
                    s.source.clone(),
                    s.origin.clone(),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

/// Dollars as `$1,234.56` (cents, rounded half up), from the exact decimal string.
fn dollars(exact: &str) -> String {
    let Ok(m) = hangar_cost::Money::parse(exact) else { return exact.to_string() };
    let cents = m.cents();
    let (whole, frac) = cents.split_once('.').unwrap_or((&cents, "00"));
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("${grouped}.{frac}")
}

pub async fn run_cost(cli: &Cli, cmd: &CostCommand) -> Result<()> {
    let client = client(cli);
    match cmd {
        CostCommand::Calc { rps, duration, memory, cpus, peak_rps, concurrency, target_utilization, sheet, service_sheet } => {
            let req = CalcRequest {
                rps: rps.clone(),
                duration: duration.clone(),
                memory_mb: *memory,
                cpus: cpus.clone(),
                peak_rps: peak_rps.clone(),
                concurrency: *concurrency,
                target_utilization: *target_utilization,
                sheet: sheet.clone(),
                service_sheet: service_sheet.clone(),
            };
            let answer: CalcAnswer = client.json(client.request(Method::POST, "/v1/cost/calc").json(&req)).await?;
            if cli.output == Output::Json {
                return print_json(&answer);
            }
            let mut t = table(&["MODEL", "SHEET", "PER MONTH", "INSTANCES", "NOTES"]);
            for e in &answer.estimates {
                t.add_row(vec![
                    e.model.to_string(),
                    e.sheet.clone(),
                    dollars(&e.monthly),
                    e.instances.map(|n| n.to_string()).unwrap_or_default(),
                    e.notes.join("; "),
                ]);
            }
            println!("{t}");
            match &answer.break_even_rps {
                Some(r) => println!("break-even: above {r} requests/s on average, the always-on service costs less than the function"),
                None => println!("break-even: none up to 1,000,000 requests/s; the function stays cheaper than the service"),
            }
            println!("cheapest: {} (monthly = 730 hours; exact figures with -o json)", answer.cheapest);
        }
    }
    Ok(())
}

/// `hangar usage`: what workloads used, per hour or day.
pub async fn run_usage(cli: &Cli, a: &crate::args::UsageArgs) -> Result<()> {
    let client = client(cli);
    let mut q = ns_query(cli.namespace.as_deref());
    let pairs = [
        ("name", a.name.as_deref()),
        ("kind", a.kind.as_deref()),
        ("since", a.since.as_deref()),
        ("until", a.until.as_deref()),
        ("per", Some(a.per.as_str())),
        ("sheet", a.sheets.sheet.as_deref()),
        ("service_sheet", a.sheets.service_sheet.as_deref()),
    ];
    for (k, v) in pairs {
        if let Some(v) = v {
            q.push((k, v.to_string()));
        }
    }
    let list: UsageList = client.json(client.request(Method::GET, "/v1/usage").query(&q)).await?;
    if cli.output == Output::Json {
        return print_json(&list);
    }
    let mut t =
        table(&["PERIOD", "KIND", "NAME", "REQUESTS", "ERRORS", "COLD", "GB-S", "VCPU-S", "RUNNING S", "PAUSED S", "STANDBY S", "STANDBY GB-H", "COST"]);
    for r in &list.items {
        t.add_row(vec![
            r.period.clone(),
            r.kind.to_string(),
            r.name.clone(),
            r.requests.to_string(),
            r.errors.to_string(),
            r.cold_starts.to_string(),
            r.gb_seconds.clone(),
            r.vcpu_seconds.clone(),
            r.running_seconds.clone(),
            r.paused_seconds.clone(),
            r.standby_seconds.clone(),
            r.standby_gb_hours.clone(),
            if r.cost.is_empty() { "-".into() } else { format!("${} ({})", r.cost, r.priced_with) },
        ]);
    }
    println!("{t}");
    Ok(())
}

/// `hangar advise`: the advisor's recommendation for each function and service, with its
/// reasons.
pub async fn run_advise(cli: &Cli, args: &crate::args::AdviseArgs) -> Result<()> {
    let client = client(cli);
    let mut q = ns_query(cli.namespace.as_deref());
    let objective_ms = args
        .objective
        .as_deref()
        .map(|o| humantime::parse_duration(o).map(|d| d.as_millis().to_string()).with_context(|| format!("--objective `{o}` is not a duration like 200ms")))
        .transpose()?;
    let concurrency = args.concurrency.map(|c| c.to_string());
    let pairs = [
        ("name", args.name.as_deref()),
        ("kind", args.kind.as_deref()),
        ("since", args.since.as_deref()),
        ("sheet", args.sheets.sheet.as_deref()),
        ("service_sheet", args.sheets.service_sheet.as_deref()),
        ("concurrency", concurrency.as_deref()),
        ("objective_ms", objective_ms.as_deref()),
    ];
    for (k, v) in pairs {
        if let Some(v) = v {
            q.push((k, v.to_string()));
        }
    }
    let list: AdviceList = client.json(client.request(Method::GET, "/v1/advice").query(&q)).await?;
    if cli.output == Output::Json {
        return print_json(&list);
    }
    if list.items.is_empty() {
        println!("no function or service had requests in the window: nothing to advise on yet");
    }
    for a in &list.items {
        let saving = match a.monthly_saving.strip_prefix('-') {
            Some(more) => format!("costs {} a month more than it does as a {} now", dollars(more), a.kind),
            None if a.recommendation == hangar_api::Model::from(a.kind) => format!("stays a {}", a.kind),
            None => format!("saves {} a month against it as a {} now", dollars(&a.monthly_saving), a.kind),
        };
        println!("{} ({}): run as {} ({saving})", a.name, a.kind, a.recommendation);
        for r in &a.reasons {
            println!("  - {r}");
        }
    }
    Ok(())
}
