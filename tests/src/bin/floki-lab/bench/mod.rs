//! `cargo xtask bench ...`: benchmarks whose results are written into
//! docs/BENCHMARKS.md with the machine they ran on.

pub mod report;
pub mod splice;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Floki splice against plain TCP and Floki without eBPF: throughput at
    /// 64 KiB and 1 MiB writes, 64-byte round trips.
    Splice(splice::Options),
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Splice(opts) => splice::run(&opts),
    }
}
