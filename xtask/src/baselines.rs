//! Installs what the object-storage comparison needs, when it is missing:
//! s3s-fs (an S3 server keeping objects as files; it needs a newer compiler
//! than stable, so the pinned nightly builds it), Debian's redis-server, and
//! a font for the plots. Idempotent.

use std::{path::Path, process::Command};

use crate::toolchain::{self, apt_install, ebpf_toolchain};

/// The s3s-fs release the benchmark is written against.
const S3S_FS_VERSION: &str = "0.17.0";
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Makes sure s3s-fs, redis-server and the plots' font are installed.
pub fn ensure() -> anyhow::Result<()> {
    ensure_s3s_fs()?;
    if !Path::new("/usr/bin/redis-server").exists() {
        eprintln!("xtask: installing redis-server (Debian) for the benchmark's Redis baseline");
        apt_install(&["redis-server"])?;
    }
    if !Path::new(FONT).exists() {
        eprintln!("xtask: installing fonts-dejavu-core for the benchmark's plots");
        apt_install(&["fonts-dejavu-core"])?;
    }
    Ok(())
}

fn ensure_s3s_fs() -> anyhow::Result<()> {
    let installed = Command::new("s3s-fs")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(S3S_FS_VERSION));
    if installed {
        return Ok(());
    }
    let nightly = ebpf_toolchain()?;
    eprintln!("xtask: building s3s-fs {S3S_FS_VERSION} with {nightly} (a few minutes, once)");
    toolchain::run(Command::new("cargo").args([
        &format!("+{nightly}"),
        "install",
        "s3s-fs",
        "--locked",
        "--version",
        S3S_FS_VERSION,
        "--features",
        "binary",
    ]))
}
