//! `cargo xtask test`: what CI runs. Formatting, clippy with warnings denied
//! (the eBPF crate on its own, as aya-template does), unit tests, then the
//! kernel tests (real programs in the real kernel, as root), then the
//! kernel matrix (the data-path tests inside other kernels, under QEMU).

use std::process::Command;

use anyhow::bail;
use clap::Args;

use crate::toolchain::{self, run, workspace_root};

#[derive(Debug, Args)]
pub struct Options {
    /// Skip formatting and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Kernels of the matrix, booted under QEMU after the host's run
    /// (`none` for none).
    #[arg(long, value_delimiter = ',', default_value = "6.1,6.12")]
    pub kernels: Vec<String>,
    /// Only the kernel matrix: no lint, no tests on the host's kernel.
    #[arg(long)]
    pub kernels_only: bool,
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args).current_dir(workspace_root());
    cmd
}

pub fn all(opts: &Options) -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        let message = "the kernel tests load eBPF programs and need root";
        if ci {
            bail!("{message}: under CI=true they fail rather than skip");
        }
        eprintln!("xtask: {message}; they will fail");
    }
    toolchain::ensure()?;
    if opts.kernels_only {
        ensure_test_tools()?;
        build_bins()?;
        return kernel_matrix(opts);
    }
    // The quick object-storage comparison is part of the suite.
    crate::baselines::ensure()?;
    if !opts.no_lint {
        eprintln!("xtask: cargo fmt --check");
        run(&mut cargo(&["fmt", "--all", "--check"]))?;
        eprintln!("xtask: clippy (workspace)");
        run(&mut cargo(&[
            "clippy",
            "--workspace",
            "--exclude",
            "floki-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        eprintln!("xtask: clippy (floki-ebpf, pinned nightly)");
        let nightly = toolchain::ebpf_toolchain()?;
        run(Command::new("rustup")
            .args([
                "run",
                &nightly,
                "cargo",
                "clippy",
                "--package",
                "floki-ebpf",
                "--all-targets",
            ])
            .args([
                "--",
                "-D",
                "warnings",
                "-C",
                "panic=abort",
                "-Zpanic_abort_tests",
            ])
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .current_dir(workspace_root()))?;
    }
    ensure_nextest()?;
    ensure_test_tools()?;
    // The project's Python environment (pytest, kubernetes-validate for the
    // deploy tests, ...) and the floki wheel in it.
    crate::python::ensure()?;
    let wheel = crate::python::install_wheel()?;
    build_bins()?;
    eprintln!("xtask: unit and kernel tests");
    run(&mut cargo(&[
        "nextest",
        "run",
        "--workspace",
        "--exclude",
        "floki-ebpf",
        "--exclude",
        "floki-py",
        "--no-fail-fast",
        "-E",
        "not binary(memory)",
    ]))?;
    eprintln!("xtask: memory tests (alone: they read machine-wide TCP and shared memory)");
    run(&mut cargo(&[
        "nextest",
        "run",
        "-p",
        "floki-tests",
        "--test",
        "memory",
        "--test-threads",
        "1",
    ]))?;
    run(&mut cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "floki-ebpf",
        "--exclude",
        "floki-py",
        "--doc",
        "--quiet",
    ]))?;
    let lab = workspace_root().join("target/debug/floki-lab");
    crate::python::pytest(&lab)?;
    // A bounded pass of every fuzz target over its corpus (the full runs:
    // `cargo xtask fuzz`, figures in docs/RELIABILITY.md).
    crate::fuzz::run_targets(&crate::fuzz::Options {
        runs: 20_000,
        targets: Vec::new(),
        minimize: false,
    })?;
    let versions = crate::python::check_abi3(&wheel, &lab)?;
    eprintln!(
        "xtask: the abi3 wheel also streams on CPython {}",
        if versions.is_empty() {
            "(no other version here)".to_owned()
        } else {
            versions.join(", ")
        }
    );
    eprintln!("xtask: tests on the host's kernel passed");
    kernel_matrix(opts)?;
    eprintln!("xtask: all tests passed");
    Ok(())
}

/// The kernel tests start the agent and probe binaries: build them first.
fn build_bins() -> anyhow::Result<()> {
    run(&mut cargo(&[
        "build",
        "--workspace",
        "--exclude",
        "floki-ebpf",
        "--exclude",
        "floki-py",
        "--bins",
    ]))
}

fn kernel_matrix(opts: &Options) -> anyhow::Result<()> {
    let labels: Vec<String> = opts
        .kernels
        .iter()
        .filter(|k| k.as_str() != "none")
        .cloned()
        .collect();
    if labels.is_empty() {
        return Ok(());
    }
    let outcomes = crate::kernels::run_matrix(&labels)?;
    crate::kernels::report(&outcomes)
}

/// Programs the kernel tests drive, and the Debian packages that have them:
/// network namespaces and sockets, CPU pinning, the kernel's own listing of
/// BPF programs, a DNS server for peer discovery.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("taskset", "util-linux"),
    ("nsenter", "util-linux"),
    ("bpftool", "bpftool"),
    ("dnsmasq", "dnsmasq-base"),
];

fn ensure_test_tools() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(tool, _)| toolchain::find_program(tool).is_none())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} for the kernel tests",
        missing.join(" ")
    );
    toolchain::apt_install(&missing)
}

fn ensure_nextest() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-nextest");
    run(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))
}
