//! `cargo xtask`: Floki's developer tasks.

mod peer;
mod toolchain;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the kernel programs (installs the pinned nightly, LLVM 22 and bpf-linker when missing).
    BuildEbpf,
    /// A benchmark or demo endpoint (internal: xtask spawns itself).
    #[command(subcommand, hide = true)]
    Peer(peer::Peer),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf => build_ebpf(),
        Task::Peer(p) => peer::run(p),
    }
}

fn build_ebpf() -> anyhow::Result<()> {
    toolchain::ensure()?;
    Ok(())
}
