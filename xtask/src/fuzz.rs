//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (control messages,
//! frames, the stream state machines, the ring header, the workflow spec),
//! each run for `--runs` inputs from its corpus, which is kept in the
//! repository (fuzz/corpus/TARGET; what libFuzzer finds is added there,
//! `--minimize` shrinks it back). `cargo xtask test` runs a bounded pass.

use std::{process::Command, time::Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::toolchain::{self, run, workspace_root};

/// Every target, in fuzz/fuzz_targets.
pub const TARGETS: [&str; 5] = [
    "control_messages",
    "frames",
    "stream",
    "ring_header",
    "workflow_spec",
];

#[derive(Debug, Args)]
pub struct Options {
    /// Inputs per target.
    #[arg(long, default_value_t = 1_000_000)]
    pub runs: u64,
    /// Targets to run [default: all].
    pub targets: Vec<String>,
    /// Afterwards, shrink each corpus to the inputs that cover the most.
    #[arg(long)]
    pub minimize: bool,
}

fn cargo_fuzz(nightly: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("fuzz")
        .env("RUSTUP_TOOLCHAIN", nightly)
        .env_remove("RUSTC")
        .current_dir(workspace_root().join("fuzz"));
    cmd
}

/// Runs the targets; fails on the first crash (libFuzzer leaves the input
/// in fuzz/artifacts/TARGET).
pub fn run_targets(opts: &Options) -> anyhow::Result<()> {
    let nightly = toolchain::ebpf_toolchain()?;
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if opts.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for target in &opts.targets {
            if !TARGETS.contains(&target.as_str()) {
                bail!("no fuzz target {target:?}: the targets are {TARGETS:?}");
            }
        }
        opts.targets.iter().map(String::as_str).collect()
    };
    eprintln!("xtask: building the fuzz targets (nightly, sanitizers)");
    run(cargo_fuzz(&nightly).args(["build", "-O"]))?;
    for target in targets {
        let started = Instant::now();
        eprintln!("xtask: fuzzing {target} for {} inputs", opts.runs);
        let runs = format!("-runs={}", opts.runs);
        run(cargo_fuzz(&nightly).args(["run", "-O", target, "--", &runs, "-max_len=4096"]))
            .with_context(|| {
                format!("fuzz target {target} failed: the input is in fuzz/artifacts/{target}")
            })?;
        eprintln!(
            "xtask: {target}: {} inputs, no crash, in {:.0} s",
            opts.runs,
            started.elapsed().as_secs_f64()
        );
        if opts.minimize {
            run(cargo_fuzz(&nightly).args(["cmin", "-O", target]))?;
        }
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !present {
        eprintln!("xtask: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}
