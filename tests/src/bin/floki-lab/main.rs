//! `floki-lab`: the demo and the benchmarks, run by `cargo xtask demo` and
//! `cargo xtask bench ...` once everything is built (as root: the agent loads
//! eBPF programs). Every endpoint is this program too (`floki-lab peer ...`),
//! and `floki-lab cluster` lends real agents to the Python tests.

mod bench;
mod cluster;
mod demo;
mod lab;
mod peer;
mod soak;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "floki-lab", about = "Floki's demo and benchmarks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Start an agent on this machine and stream through a spliced channel.
    Demo(demo::Options),
    /// Benchmarks; results go to docs/BENCHMARKS.md.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Streams killed at random points (sender, receiver, agents, link);
    /// results go to docs/RELIABILITY.md.
    Soak(soak::Options),
    /// Network-namespace nodes with an agent each, for tests outside Rust:
    /// prints them as one JSON line, keeps them until stdin closes.
    Cluster(cluster::Options),
    /// A benchmark or demo endpoint (the lab spawns itself).
    #[command(subcommand, hide = true)]
    Peer(peer::Peer),
}

fn main() -> anyhow::Result<()> {
    let task = Cli::parse().task;
    // The lab's endpoints own nothing of the lab's: they keep the default.
    if !matches!(task, Task::Peer(_)) {
        clean_up_on_signal()?;
    }
    match task {
        Task::Demo(opts) => demo::run(&opts),
        Task::Bench(bench) => bench::run(bench),
        Task::Cluster(opts) => cluster::run(&opts),
        Task::Soak(opts) => soak::run(&opts),
        Task::Peer(peer) => peer::run(peer),
    }
}

/// Stopped by Ctrl-C or SIGTERM (which end a process without running its
/// destructors), the lab still deletes the network namespaces and bridges
/// it made, so that none is left behind. (On Ctrl-C the agents and
/// functions it started get the signal too, and stop themselves.)
fn clean_up_on_signal() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("floki-lab: stopped: deleting this run's network namespaces and bridges");
        floki_tests::netns::delete_owned();
        std::process::exit(130);
    })?;
    Ok(())
}
