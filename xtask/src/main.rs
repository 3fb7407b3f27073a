//! `cargo xtask`: Floki's developer tasks. It installs what the build needs
//! (the pinned nightly, LLVM 22, bpf-linker), drives cargo, and hands the demo
//! and the benchmarks to `floki-lab` once everything is built.

mod baselines;
mod ebpf;
mod fuzz;
mod kernels;
mod lab;
mod python;
mod test;
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
    /// Build the kernel programs (installs the pinned nightly, LLVM 22 and
    /// bpf-linker when missing).
    BuildEbpf,
    /// Build everything, start an agent on this machine and stream 1 GiB from
    /// a producer to a consumer through a spliced channel (as root).
    Demo {
        /// Options for `floki-lab demo` (e.g. --size 4GiB).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// What CI runs: formatting, clippy (warnings denied), unit and kernel
    /// tests (as root) on this machine's kernel, then the data-path tests on
    /// Debian's 6.1 and 6.12 kernels under QEMU.
    Test(test::Options),
    /// Kill senders, receivers, agents and links at random points of
    /// streams and count what the ends saw (docs/RELIABILITY.md).
    Soak {
        /// Options for `floki-lab soak` (e.g. --runs 100).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz the parsers and state machines that take untrusted bytes
    /// (cargo-fuzz; a million inputs per target by default).
    Fuzz(fuzz::Options),
    /// Benchmarks, written to docs/BENCHMARKS.md: `cargo xtask bench splice`,
    /// `small`, `patterns`, `paper`, `python`.
    Bench {
        /// Which benchmark and its options (see `floki-lab bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::BuildEbpf => ebpf::build().map(drop),
        Task::Demo { args } => lab::run("demo", &args),
        Task::Test(opts) => test::all(&opts),
        Task::Fuzz(opts) => fuzz::run_targets(&opts),
        Task::Soak { args } => lab::run("soak", &args),
        Task::Bench { args } => lab::run("bench", &args),
    }
}
