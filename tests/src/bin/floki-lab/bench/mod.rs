//! `cargo xtask bench ...`: benchmarks whose results are written into
//! docs/BENCHMARKS.md with the machine they ran on.

mod ceilings;
pub mod channels;
mod function;
pub mod paper;
pub mod patterns;
pub mod python;
pub mod report;
pub mod small;
pub mod splice;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Floki splice and shm against the machine's ceilings (the bare kernel
    /// redirect, a bare ring, memcpy), plain TCP and Floki without eBPF:
    /// throughput at 64 KiB and 1 MiB writes, 64-byte round trips.
    Splice(splice::Options),
    /// Small streams and set-up with the functions already running: set-up
    /// latency and 1 KiB to 1 MiB streams end to end, one node and two.
    Small(small::Options),
    /// Many channels on one agent: 1,000 and 10,000 open at once (set-up,
    /// agent RSS and descriptors, shared memory), then 100,000 one after
    /// another (no leak).
    Channels(channels::Options),
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
        Bench::Small(opts) => small::run(&opts),
        Bench::Channels(opts) => channels::run(&opts),
        Bench::Patterns(opts) => patterns::run(&opts),
        Bench::Paper(opts) => paper::run(&opts),
        Bench::Python(opts) => python::run(&opts),
    }
}
