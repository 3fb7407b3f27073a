//! The project's Python: a virtual environment under `target/` (never the
//! system Python, which may be externally managed) with the packages the
//! tests and benchmarks use, pinned; and the `floki` wheel, built by maturin
//! from `floki-py` and installed into it. Idempotent: the environment is
//! made once and refreshed only when the pins change.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::toolchain::{run, workspace_root};

/// What the environment holds, pinned.
const REQUIREMENTS: &[&str] = &[
    "maturin==1.16.0",
    "pytest==9.2.0",
    "numpy==2.4.6",
    "boto3==1.44.8",
    "xxhash==4.1.0",
    // The deploy tests' schema check of the Kubernetes manifests.
    "kubernetes-validate==1.37.0",
];

/// The environment's directory.
pub fn venv() -> PathBuf {
    workspace_root().join("target/venv")
}

/// Its interpreter.
pub fn python() -> PathBuf {
    venv().join("bin/python")
}

/// Makes the environment, or refreshes it when the pins changed.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let venv = venv();
    let stamp = venv.join(".floki-requirements");
    let wanted = REQUIREMENTS.join("\n");
    if fs::read_to_string(&stamp).is_ok_and(|have| have == wanted) && python().exists() {
        return Ok(python());
    }
    if !python().exists() {
        eprintln!("xtask: creating the Python environment {}", venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("python3 -m venv (Debian: apt-get install python3-venv)")?;
    }
    eprintln!("xtask: installing {} into it", REQUIREMENTS.join(" "));
    run(Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(REQUIREMENTS))?;
    fs::write(&stamp, wanted)?;
    Ok(python())
}

/// Builds the `floki` wheel (abi3: one wheel for CPython 3.9+) and installs
/// it into the environment; returns the wheel.
pub fn install_wheel() -> anyhow::Result<PathBuf> {
    let python = ensure()?;
    let out = workspace_root().join("target/wheels");
    // Only this build's wheel in the directory.
    let _ = fs::remove_dir_all(&out);
    eprintln!("xtask: building the floki wheel (maturin)");
    run(Command::new(venv().join("bin/maturin"))
        .args(["build", "--release", "--quiet", "-m"])
        .arg(workspace_root().join("floki-py/Cargo.toml"))
        .arg("-o")
        .arg(&out)
        .arg("--interpreter")
        .arg(&python))?;
    let wheel = fs::read_dir(&out)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .context("maturin wrote no wheel")?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--force-reinstall",
            "--no-deps",
        ])
        .arg(&wheel))?;
    Ok(wheel)
}

/// Runs the Python tests (pytest) against real agents, lent by `floki-lab`.
pub fn pytest(lab: &Path) -> anyhow::Result<()> {
    eprintln!("xtask: Python tests (pytest, floki-py/tests)");
    run(Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(workspace_root().join("floki-py/tests"))
        .env("FLOKI_LAB_BIN", lab))
}

/// Installs the same wheel into every other CPython 3.9+ found on the
/// machine and streams through it there (same-node channels, buffers read
/// and filled in place): the abi3 promise, checked.
pub fn check_abi3(wheel: &Path, lab: &Path) -> anyhow::Result<Vec<String>> {
    let mut checked = Vec::new();
    for interpreter in other_pythons() {
        let version = version_of(&interpreter)?;
        let env = workspace_root().join(format!("target/abi3/{version}"));
        let python = env.join("bin/python");
        if !python.exists() {
            run(Command::new(&interpreter).arg("-m").arg("venv").arg(&env))?;
            run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "pytest>=8"]))?;
        }
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--force-reinstall",
                "--no-deps",
            ])
            .arg(wheel))?;
        eprintln!("xtask: the floki wheel on CPython {version}");
        run(Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k"])
            .arg("python_to_python and (100KB or 16MiB-view)")
            .arg(workspace_root().join("floki-py/tests/test_channels.py"))
            .env("FLOKI_LAB_BIN", lab))
        .with_context(|| format!("the abi3 wheel on CPython {version}"))?;
        checked.push(version);
    }
    Ok(checked)
}

/// CPython interpreters 3.9 and later other than the environment's own:
/// `python3.X` on the PATH and pyenv's versions.
fn other_pythons() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = (9..=14)
        .filter_map(|minor| crate::toolchain::find_program(&format!("python3.{minor}")))
        .collect();
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"))
        .join("versions");
    if let Ok(entries) = fs::read_dir(pyenv) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let minor = name
                .strip_prefix("3.")
                .and_then(|rest| rest.split('.').next()?.parse::<u32>().ok());
            if minor.is_some_and(|minor| minor >= 9) {
                found.push(entry.path().join("bin/python3"));
            }
        }
    }
    let own = version_of(&python()).ok();
    let mut versions = Vec::new();
    found.retain(|path| {
        let version = version_of(path).ok();
        let keep = version.is_some() && version != own && !versions.contains(&version);
        versions.push(version);
        keep
    });
    found
}

fn version_of(python: &Path) -> anyhow::Result<String> {
    let out = Command::new(python)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
