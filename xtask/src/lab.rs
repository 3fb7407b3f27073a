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
    let bench = args.first().map(String::as_str);
    // The demo and the paper and Python benchmarks compare with object storage.
    if task == "demo" || matches!(bench, Some("paper" | "python")) {
        baselines::ensure()?;
    }
    // The Python benchmark runs the floki wheel from the project's venv.
    if bench == Some("python") {
        crate::python::install_wheel()?;
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
