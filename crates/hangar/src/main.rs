//! The `hangar` binary: parses the command line and wires the libraries together. No
//! capability lives here.
#![forbid(unsafe_code)]

mod cli;
mod client;
mod code;
mod cost;
mod events;
mod images;
mod manifest;
mod sandboxes;
mod services;
mod terminal;
mod up;

use clap::Parser;
use cli::{Cli, Command};

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
            let code = e.downcast_ref::<client::Failure>().map_or(1, client::Failure::exit_code);
            eprintln!("error: {e:#}");
            code
        }
    };
    // Do not wait for lingering blocking tasks (e.g. a stdin reader).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Up(a) => {
            init_tracing();
            up::run(up::UpOptions {
                data_dir: cli::data_dir(cli.data_dir.clone()),
                listen: a.listen,
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
                meter_every: a.meter_every,
                metering: a.metering == "on",
                adapt_every: a.adapt_every,
                adapt_window: a.adapt_window,
                region: a.region.clone(),
            })
            .await?;
        }
        Command::Function(cmd) => cli::run_fn(&cli, cmd).await?,
        Command::Invoke(a) => return cli::run_invoke(&cli, a).await,
        Command::Logs { name, follow, limit } => {
            cli::check_limit(*limit)?;
            cli::run_logs(&cli, name, *follow, *limit).await?
        }
        Command::Invocations { name, status, since, limit } => {
            cli::check_limit(*limit)?;
            cli::run_invocations(&cli, name.as_deref(), status.as_deref(), since.as_deref(), *limit).await?
        }
        Command::Deploy { file } => {
            let client = cli::client(&cli);
            manifest::deploy(&client, file, cli.namespace.as_deref(), cli.output).await?
        }
        Command::Image(cmd) => images::run(&cli, cmd).await?,
        Command::Prices(cmd) => cost::run_prices(&cli, cmd).await?,
        Command::Advise(args) => cost::run_advise(&cli, args).await?,
        Command::Usage(args) => cost::run_usage(&cli, args).await?,
        Command::Cost(cmd) => cost::run_cost(&cli, cmd).await?,
        Command::Service(cmd) => services::run(&cli, cmd).await?,
        Command::Sandbox(cmd) => return sandboxes::run(&cli, cmd).await,
        Command::Async(cmd) => events::run(&cli, cmd).await?,
        Command::Triggers(cmd) => events::run_triggers(&cli, cmd).await?,
        Command::Events(cmd) => events::run_events(&cli, cmd).await?,
        Command::Namespace(cmd) => cli::run_ns(&cli, cmd).await?,
        Command::Key(cmd) => cli::run_key(&cli, cmd).await?,
    }
    Ok(0)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HANGAR_LOG").unwrap_or_else(|_| EnvFilter::new("info,wasmtime=warn,cranelift=warn,wasmtime_wasi_http=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
