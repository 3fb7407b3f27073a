//! Builds the kernel programs (`floki-ebpf`) with the pinned nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask` installs the toolchain first; `AYA_BUILD_SKIP=1` skips this.

use std::fs;

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let toolchain_file = format!("{manifest_dir}/../floki-ebpf/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={toolchain_file}");
    let text =
        fs::read_to_string(&toolchain_file).with_context(|| format!("reading {toolchain_file}"))?;
    let toolchain = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("channel = "))
        .map(|value| value.trim_matches('"').to_owned())
        .ok_or_else(|| anyhow!("{toolchain_file} names no channel"))?;
    // aya-build relays the inner cargo's stderr as warnings; keep only what
    // matters (errors and real warnings), not every "Compiling" line.
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let ebpf = aya_build::Package {
        name: "floki-ebpf",
        root_dir: &format!("{manifest_dir}/../floki-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(&toolchain)).with_context(|| {
        format!(
            "building the kernel programs with {toolchain} failed; `cargo xtask build-ebpf` \
             installs the toolchain and bpf-linker"
        )
    })
}
