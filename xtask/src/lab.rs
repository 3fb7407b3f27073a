//! `cargo xtask demo` / `bench`: release builds, then `floki-lab`.

use std::process::Command;

use anyhow::bail;

use crate::{
    baselines,
    toolchain::{self, workspace_root},
};

/// Builds the release binaries and runs `floki-lab TASK ARGS`.
pub fn run(task: &str, args: &[String]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the agent loads eBPF programs: run `cargo xtask {task}` as root");
    }
    toolchain::ensure()?;
    // The demo and the paper benchmark compare with object storage.
    if task == "demo" || args.first().is_some_and(|bench| bench == "paper") {
        baselines::ensure()?;
    }
    eprintln!("xtask: building floki-agent and floki-lab (release)");
    toolchain::run(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "floki-agent",
                "-p",
                "floki-tests",
                "--bins",
            ])
            .current_dir(workspace_root()),
    )?;
    let release = workspace_root().join("target/release");
    toolchain::run(
        Command::new(release.join("floki-lab"))
            .arg(task)
            .args(args)
            .env("FLOKI_AGENT_BIN", release.join("floki-agent")),
    )
}
