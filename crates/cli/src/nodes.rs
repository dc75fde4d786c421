//! `hangar nodes`: the nodes of the cluster, and draining one.

use anyhow::Result;
use hangar_api::nodes::NodeList;
use reqwest::Method;

use crate::args::{Cli, NodesCommand, Output};
use crate::util::{client, print_json, table};

/// `2000` thousandths → `2`, `1500` → `1.5`.
fn cpus(milli: u64) -> String {
    if milli.is_multiple_of(1000) { (milli / 1000).to_string() } else { format!("{:.1}", milli as f64 / 1000.0) }
}

pub async fn run(cli: &Cli, cmd: Option<&NodesCommand>) -> Result<()> {
    let client = client(cli);
    match cmd.unwrap_or(&NodesCommand::Ls) {
        NodesCommand::Ls => {
            let l: NodeList = client.json(client.request(Method::GET, "/v1/nodes")).await?;
            match cli.output {
                Output::Json => print_json(&l)?,
                Output::Table => {
                    let mut t = table(&["ID", "ROLE", "ADDRESS", "CPUS (FREE)", "MEMORY MIB (FREE)", "INSTANCES", "LAST HEARTBEAT", "STATE"]);
                    for n in &l.nodes {
                        let r = &n.report;
                        t.add_row(vec![
                            r.id.clone(),
                            r.role.to_string(),
                            r.address.clone().unwrap_or_else(|| "-".into()),
                            format!("{} ({})", cpus(r.capacity.cpu_milli), cpus(r.free.cpu_milli)),
                            format!("{} ({})", r.capacity.memory_mb, r.free.memory_mb),
                            r.instances.to_string(),
                            n.last_heartbeat.clone(),
                            n.state.to_string(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        NodesCommand::Drain { node } => {
            client.send(client.request(Method::POST, &format!("/v1/nodes/{node}/drain"))).await?;
            println!("node {node} is draining: no new function calls are placed on it; what it runs finishes");
        }
    }
    Ok(())
}
