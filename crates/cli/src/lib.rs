//! The `hangar` command line as a library: the clap definitions ([`args`]), the API client,
//! the manifest planner and one module per command group. The binary parses [`Cli`], serves
//! `hangar up` itself and hands every other command to [`run`].
#![forbid(unsafe_code)]

pub mod access;
pub mod args;
pub mod client;
mod code;
pub mod cost;
pub mod events;
pub mod functions;
pub mod images;
pub mod logs;
pub mod manifest;
pub mod nodes;
pub mod sandboxes;
pub mod services;
mod terminal;
pub mod traces;
pub mod util;

pub use args::{Cli, Command, Output, UpArgs};

/// Runs a client command (anything but `up`, which the binary serves) and gives the process's
/// exit code.
pub async fn run(cli: &Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Up(_) => anyhow::bail!("`hangar up` starts a server; the binary runs it, not the client library"),
        Command::Function(cmd) => functions::run_fn(cli, cmd).await?,
        Command::Invoke(a) => return functions::run_invoke(cli, a).await,
        Command::Logs { name, follow, limit, query, kind, since } => {
            util::check_limit(*limit)?;
            match name {
                Some(name) if query.is_none() && kind.is_none() && since.is_none() => functions::run_logs(cli, name, *follow, *limit).await?,
                _ => logs::search(cli, name.as_deref(), query.as_deref(), kind.as_deref(), since.as_deref(), *limit, *follow).await?,
            }
        }
        Command::Invocations { name, status, since, limit } => {
            util::check_limit(*limit)?;
            functions::run_invocations(cli, name.as_deref(), status.as_deref(), since.as_deref(), *limit).await?
        }
        Command::Deploy { file } => {
            let client = util::client(cli);
            manifest::deploy(&client, file, cli.namespace.as_deref(), cli.output).await?
        }
        Command::Image(cmd) => images::run(cli, cmd).await?,
        Command::Prices(cmd) => cost::run_prices(cli, cmd).await?,
        Command::Advise(args) => cost::run_advise(cli, args).await?,
        Command::Usage(args) => cost::run_usage(cli, args).await?,
        Command::Cost(cmd) => cost::run_cost(cli, cmd).await?,
        Command::Service(cmd) => services::run(cli, cmd).await?,
        Command::Sandbox(cmd) => return sandboxes::run(cli, cmd).await,
        Command::Async(cmd) => events::run(cli, cmd).await?,
        Command::Triggers(cmd) => events::run_triggers(cli, cmd).await?,
        Command::Events(cmd) => events::run_events(cli, cmd).await?,
        Command::Namespace(cmd) => access::run_ns(cli, cmd).await?,
        Command::Key(cmd) => access::run_key(cli, cmd).await?,
        Command::Nodes { command } => nodes::run(cli, command.as_ref()).await?,
        Command::Traces { name, status, since, min_duration, limit } => {
            util::check_limit(*limit)?;
            traces::list(cli, name.as_deref(), status.as_deref(), since, min_duration.as_deref(), *limit).await?
        }
        Command::Trace { id } => traces::show(cli, id).await?,
    }
    Ok(0)
}

/// The exit code for a command that failed: the API's failure class, else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.downcast_ref::<client::Failure>().map_or(1, client::Failure::exit_code)
}

/// Applies a manifest as `hangar deploy` does, against the server at `url` with `key`
/// (`hangar up --apply`).
pub async fn apply(url: String, key: Option<String>, manifest: &std::path::Path) -> anyhow::Result<()> {
    let client = client::Client::new(url, key);
    manifest::deploy(&client, manifest, None, Output::Table).await
}
