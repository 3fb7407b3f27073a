//! Installs what building the kernel programs needs, when it is missing:
//! the pinned nightly with rust-src, LLVM 22 from Debian, and bpf-linker
//! built against it (recipe: ../shared/KERNEL-NOTES.md). Idempotent: a
//! machine that has everything pays three quick checks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// bpf-linker release that matches LLVM 22 and the pinned nightly.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// The pinned nightly for the eBPF crate (floki-ebpf/rust-toolchain.toml).
pub fn ebpf_toolchain() -> anyhow::Result<String> {
    let file = workspace_root().join("floki-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|line| line.trim().strip_prefix("channel = "))
        .map(|value| value.trim_matches('"').to_owned())
        .with_context(|| format!("{} names no channel", file.display()))
}

/// Makes sure the nightly, LLVM 22 and bpf-linker are installed.
pub fn ensure() -> anyhow::Result<()> {
    let toolchain = ebpf_toolchain()?;
    ensure_nightly(&toolchain)?;
    ensure_bpf_linker()?;
    Ok(())
}

fn ensure_nightly(toolchain: &str) -> anyhow::Result<()> {
    let has = |component: &str| {
        Command::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", toolchain])
            .output()
            .is_ok_and(|out| {
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains(component)
            })
    };
    if has("rust-src") && has("clippy") {
        return Ok(());
    }
    eprintln!("xtask: installing the {toolchain} toolchain (rust-src, clippy) for the eBPF crate");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        toolchain,
        "--profile",
        "minimal",
        "--component",
        "rust-src,clippy,rustfmt",
    ]))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION));
    if installed {
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        eprintln!(
            "xtask: installing LLVM 22 ({}) for bpf-linker",
            LLVM_PACKAGES.join(" ")
        );
        apt_install(LLVM_PACKAGES)?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX))
}

/// Installs Debian packages (needs root), refreshing the index once if needed.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if install().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    if !install()
        .with_context(|| format!("running apt-get install {}", packages.join(" ")))?
        .success()
    {
        bail!(
            "apt-get install {} failed (are you root?)",
            packages.join(" ")
        );
    }
    Ok(())
}

/// Where `program` is installed, looking where Debian puts programs (root's
/// PATH may lack the sbin directories).
pub fn find_program(program: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// Runs `cmd`, failing with its command line if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
