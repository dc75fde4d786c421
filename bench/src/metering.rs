//! Metering overhead: throughput of the same WebAssembly function on two servers side by side,
//! one metering usage (the default) and one with `--metering off`, in alternating wrk runs.
//! Records are written by both; metering adds its hourly rows in the same transactions.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::{Hangar, median, wrk};

pub async fn run(bin: &Path, component: &Path, connections: u32, seconds: u32, runs: usize) -> Result<String> {
    let on = Hangar::start(bin)?;
    let off = Hangar::start_with(bin, &["--metering", "off"])?;
    for h in [&on, &off] {
        h.cli(&["fn", "deploy", "hello", "--code", component.to_str().unwrap_or_default(), "--public"])?;
    }
    let (url_on, url_off) = (format!("{}/fn/default/hello/", on.url), format!("{}/fn/default/hello/", off.url));
    // Warm both.
    wrk(&url_on, connections, 2)?;
    wrk(&url_off, connections, 2)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for run in 0..runs {
        eprintln!("metering run {} of {runs}", run + 1);
        // Alternate which goes first, so drift in the machine's load does not favour one.
        if run % 2 == 0 {
            a.push(wrk(&url_on, connections, seconds)?.rps);
            b.push(wrk(&url_off, connections, seconds)?.rps);
        } else {
            b.push(wrk(&url_off, connections, seconds)?.rps);
            a.push(wrk(&url_on, connections, seconds)?.rps);
        }
    }
    let usage = on.cli(&["-o", "json", "usage", "hello"])?;
    let metered: u64 =
        serde_json::from_str::<serde_json::Value>(&usage)?["items"].as_array().map_or(0, |rows| rows.iter().filter_map(|r| r["requests"].as_u64()).sum());
    let (ra, rb) = (median(a.clone()), median(b.clone()));
    let mut out = String::new();
    writeln!(out, "## Metering\n")?;
    writeln!(out, "Throughput of the same WebAssembly function (`hello`, public) with metering on (the default) and")?;
    writeln!(out, "off (`--metering off`), two servers side by side, {runs} alternating wrk runs of {seconds} s with {connections}")?;
    writeln!(out, "connections each; medians. Both write every invocation record; metering adds the hourly usage rows in the")?;
    writeln!(out, "same batched transactions, nothing on the request path.\n")?;
    writeln!(out, "| measure | metering on | metering off | ratio |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    writeln!(out, "| requests/s | {ra:.0} | {rb:.0} | {:.3}× |", ra / rb)?;
    writeln!(
        out,
        "\nLoss with metering: {:.1} % (goal ≤ 2 %). Runs on: {:?}; off: {:?}.",
        (1.0 - ra / rb) * 100.0,
        a.iter().map(|x| x.round()).collect::<Vec<_>>(),
        b.iter().map(|x| x.round()).collect::<Vec<_>>()
    )?;
    writeln!(out, "The metered server counted {metered} requests of `hello` in its usage rows.\n")?;
    Ok(out)
}
