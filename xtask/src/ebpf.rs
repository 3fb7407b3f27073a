//! `cargo xtask build-ebpf`: the kernel object, built the way the agent's
//! build.rs (aya-build) builds it, for inspection (llvm-objdump, bpftool).

use std::{path::PathBuf, process::Command};

use crate::toolchain::{self, workspace_root};

/// Builds `target/bpfel-unknown-none/release/floki` and returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    toolchain::ensure()?;
    let toolchain = toolchain::ebpf_toolchain()?;
    let root = workspace_root();
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    toolchain::run(
        Command::new("rustup")
            .args([
                "run",
                &toolchain,
                "cargo",
                "build",
                "--package",
                "floki-ebpf",
                "--bins",
            ])
            .args([
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env_remove("RUSTC")
            .env_remove("RUSTUP_TOOLCHAIN")
            .current_dir(&root),
    )?;
    let object = root.join("target/bpfel-unknown-none/release/floki");
    eprintln!("xtask: kernel object at {}", object.display());
    Ok(object)
}
