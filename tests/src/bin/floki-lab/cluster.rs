//! `floki-lab cluster`: real agents for tests written outside Rust (the
//! Python package's pytest suite). Starts network-namespace nodes, an agent
//! in each (eBPF, its own cgroup, the others as peers), prints one JSON
//! line describing them, and keeps them until its standard input closes
//! (the test runner exited, or closed the pipe); then it tears down.

use std::io::{BufRead as _, Write as _};

use clap::Args;
use floki_tests::{agent_binary, cluster::Cluster};

#[derive(Debug, Args)]
pub struct Options {
    /// Node names, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "node-a,node-b")]
    nodes: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let names: Vec<&str> = opts.nodes.iter().map(String::as_str).collect();
    let cluster = Cluster::start(&names);
    cluster.wait_connected();
    let nodes: Vec<serde_json::Value> = cluster
        .nodes
        .iter()
        .map(|node| {
            serde_json::json!({
                "name": node.name,
                "ip": node.ip,
                "netns": format!("/var/run/netns/{}", node.ns.name()),
                "cgroup": node.cgroup.path(),
                "tcp": format!("{}:{}", node.ip, floki_tests::cluster::AGENT_PORT),
                "unix": format!("unix:{}", node.agent.socket.display()),
                "admin": node.agent.admin,
                "datapath": node.agent.status()["datapath"]["mode"],
            })
        })
        .collect();
    let description = serde_json::json!({
        "agent_bin": agent_binary(),
        "nodes": nodes,
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{description}")?;
    stdout.flush()?;
    drop(stdout);
    // Until the runner is done: EOF on stdin (or a read error).
    let mut line = String::new();
    while std::io::stdin()
        .lock()
        .read_line(&mut line)
        .is_ok_and(|n| n > 0)
    {
        line.clear();
    }
    drop(cluster);
    Ok(())
}
