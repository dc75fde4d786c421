//! Tracing overhead: throughput of the same WebAssembly function on three servers side by
//! side: tracing off (`--trace-sample off`), at the default sampling, and with every request
//! sampled and kept (`--trace-sample 1`), in alternating wrk runs.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::{Hangar, median, wrk};

pub async fn run(bin: &Path, component: &Path, connections: u32, seconds: u32, runs: usize) -> Result<String> {
    let off = Hangar::start_with(bin, &["--trace-sample", "off"])?;
    let default = Hangar::start(bin)?;
    let every = Hangar::start_with(bin, &["--trace-sample", "1"])?;
    let servers = [&off, &default, &every];
    let mut urls = Vec::new();
    for h in servers {
        h.cli(&["fn", "deploy", "hello", "--code", component.to_str().unwrap_or_default(), "--public"])?;
        let url = format!("{}/fn/default/hello/", h.url);
        wrk(&url, connections, 2)?;
        urls.push(url);
    }
    let mut rps: [Vec<f64>; 3] = Default::default();
    for run in 0..runs {
        eprintln!("tracing run {} of {runs}", run + 1);
        // Rotate which goes first, so drift in the machine's load favours none.
        for k in 0..3 {
            let i = (run + k) % 3;
            rps[i].push(wrk(&urls[i], connections, seconds)?.rps);
        }
    }
    let kept = every.cli(&["-o", "json", "traces", "hello", "--limit", "1000"])?;
    let kept = serde_json::from_str::<serde_json::Value>(&kept)?["items"].as_array().map_or(0, Vec::len);
    let [o, d, e] = [median(rps[0].clone()), median(rps[1].clone()), median(rps[2].clone())];
    let mut out = String::new();
    writeln!(out, "## Tracing\n")?;
    writeln!(out, "Throughput of the same WebAssembly function (`hello`, public, through its URL) on three servers side by")?;
    writeln!(out, "side: tracing off (`--trace-sample off`), the default sampling (0.01 of traces by id, every error and slow")?;
    writeln!(out, "trace, one per workload per second) and every request sampled and kept (`--trace-sample 1`); {runs} rotating")?;
    writeln!(out, "wrk runs of {seconds} s with {connections} connections each; medians. A traced request records three spans in")?;
    writeln!(out, "memory (the gateway's, the invocation's, how its instance was obtained); none touches the store.\n")?;
    writeln!(out, "| measure | tracing off | default sampling | every request kept |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    writeln!(out, "| requests/s | {o:.0} | {d:.0} | {e:.0} |")?;
    writeln!(out, "| vs off | 1.000× | {:.3}× | {:.3}× |", d / o, e / o)?;
    writeln!(
        out,
        "\nLoss at the default sampling: {:.1} % (goal ≤ 3 %); with every request kept: {:.1} % (goal ≤ 10 %, which also counts OTLP export,",
        (1.0 - d / o) * 100.0,
        (1.0 - e / o) * 100.0
    )?;
    writeln!(out, "not built yet). Runs off: {:?}; default: {:?}; every: {:?}.", rounded(&rps[0]), rounded(&rps[1]), rounded(&rps[2]))?;
    writeln!(out, "The store of the server keeping every trace held the newest {kept} of `hello`'s (it is bounded).\n")?;
    Ok(out)
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.round()).collect()
}
