//! `cargo xtask bench ...`: benchmarks whose results are written into
//! docs/BENCHMARKS.md with the machine they ran on.

pub mod paper;
pub mod patterns;
pub mod python;
pub mod report;
pub mod splice;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Floki splice against plain TCP and Floki without eBPF: throughput at
    /// 64 KiB and 1 MiB writes, 64-byte round trips.
    Splice(splice::Options),
    /// Every communication pattern across three namespace nodes, Floki
    /// against the same traffic over plain TCP.
    Patterns(patterns::Options),
    /// Floki from Python: streams against the Rust client, and a Python
    /// workflow (examples/python) against the same functions over boto3 and S3.
    Python(python::Options),
    /// The Floki paper's comparison: the same workflows through Floki, an S3
    /// object store and Redis, 1 MiB to 4 GiB, one node and two.
    Paper(paper::Options),
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Splice(opts) => splice::run(&opts),
        Bench::Patterns(opts) => patterns::run(&opts),
        Bench::Paper(opts) => paper::run(&opts),
        Bench::Python(opts) => python::run(&opts),
    }
}
