//! The `hangar` binary: parses the command line, serves `hangar up` (wiring in [`up`]) and
//! hands every other command to `hangar-cli`. No capability lives here.
#![forbid(unsafe_code)]

mod up;

use clap::Parser;
use hangar_cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            hangar_cli::exit_code(&e)
        }
    };
    // Do not wait for lingering blocking tasks (e.g. a stdin reader).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let Command::Up(a) = &cli.command else {
        return hangar_cli::run(&cli).await;
    };
    init_tracing();
    up::run(up::UpOptions {
        data_dir: hangar_cli::util::data_dir(cli.data_dir.clone()),
        listen: a.listen,
        store: a.store.clone(),
        bus: a.bus.clone(),
        heartbeat: a.heartbeat,
        role: a.role.parse().map_err(|e: String| anyhow::anyhow!("--role: {e}"))?,
        advertise: a.advertise,
        cluster_secret: a.cluster_secret.clone(),
        max_node_instances: a.max_node_instances,
        limits: hangar_gateway::Limits { max_code_bytes: a.max_code_bytes, max_payload_bytes: a.max_payload_bytes, max_image_bytes: a.max_image_bytes },
        max_log_bytes: a.max_log_bytes,
        pool_instances: a.pool_instances,
        apply: a.apply.clone(),
        keep_alive: a.keep_alive,
        pause_after: a.pause_after,
        prewarm: a.prewarm as usize,
        reconcile_every: a.reconcile_every,
        async_concurrency: a.async_concurrency,
        async_queue: hangar_events::QueueLimits { max_events: a.async_queue_events as usize, max_bytes: (a.async_queue_mb as usize) << 20 },
        namespace_concurrency: a.namespace_concurrency,
        usage_retention: a.usage_retention,
        log_retention: a.log_retention,
        meter_every: a.meter_every,
        metering: a.metering == "on",
        adapt_every: a.adapt_every,
        adapt_window: a.adapt_window,
        region: a.region.clone(),
        domain: hangar_gateway::hosts::Domain::new(&a.domain).map_err(|e| anyhow::anyhow!("--domain: {e}"))?,
        otlp_endpoint: a.otlp_endpoint.clone(),
        tracing: match a.trace_sample.as_str() {
            "off" => None,
            ratio => {
                let ratio: f64 = ratio
                    .parse()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| anyhow::anyhow!("--trace-sample `{ratio}`: give a share of traces from 0 to 1 (e.g. 0.01), or `off`"))?;
                Some(hangar_trace::store::Settings {
                    ratio,
                    per_second: 1,
                    slow: a.trace_slow,
                    max_spans: a.trace_max_spans as usize,
                    retention: a.trace_retention,
                })
            }
        },
    })
    .await?;
    Ok(0)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HANGAR_LOG").unwrap_or_else(|_| EnvFilter::new("info,wasmtime=warn,cranelift=warn,wasmtime_wasi_http=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
