//! The kernel matrix: the data-path tests inside Debian's 6.1 and 6.12
//! kernels, each booted under QEMU, besides the host's own run.
//!
//! Each kernel comes from Debian's packages (`apt-get download`, unpacked with
//! `dpkg-deb -x`, cached in `target/kernels/`; never installed as the
//! machine's kernel). The guest boots from an initramfs holding busybox, the
//! tools the tests drive (iproute2, nsenter, ss, taskset) with their
//! libraries, the kernel's veth and bridge modules, the agent, the probe and
//! the test binaries. Its `/init` runs `floki-agent kernel` (what the kernel
//! offers), then the suite, and prints one `FLOKI-RESULT` line per test
//! binary on the serial console, which the host reads. QEMU runs with TCG:
//! this host is itself a VM without nested KVM.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::toolchain::{apt_install, find_program, run, workspace_root};

/// One kernel of the matrix.
pub struct GuestKernel {
    /// Short name (`--kernels 6.1`).
    pub label: &'static str,
    /// The Debian package: the newest name matching this pattern.
    package: &'static str,
}

/// The kernels besides the host's: Debian 12's own and its backport.
pub const KERNELS: &[GuestKernel] = &[
    GuestKernel {
        label: "6.1",
        package: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
    },
    GuestKernel {
        label: "6.12",
        package: r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
    },
];

/// The tests run in each guest: test binary and name filters (all its tests
/// when empty). Splice integrity at several sizes, truncation detection,
/// bounded memory under a slow reader, the fallbacks (no eBPF, a missing
/// kernel feature), epoll-driven readers, netns isolation, an eager hello
/// delivered or returned to its sender.
const SUITE: &[(&str, &[&str])] = &[
    ("transfer", &[]),
    ("eager_hello", &[]),
    ("failures", &["killed_sender", "vanished_receiver"]),
    ("memory", &["slow_receiver_keeps"]),
    ("readiness", &[]),
    ("netns", &[]),
    (
        "transports",
        &["without_ebpf", "the_agent_picks", "the_agent_probes"],
    ),
];

/// Kernel modules the tests need that Debian builds as modules, in load order.
const MODULES: &[&str] = &[
    "drivers/net/veth",
    "net/llc/llc",
    "net/802/stp",
    "net/bridge/bridge",
];

/// Host programs copied into the guest with their libraries.
const TOOLS: &[&str] = &["ip", "nsenter", "ss", "taskset"];

/// Streams in the guest are this many times smaller (`FLOKI_TEST_SCALE`):
/// emulation runs a few times slower than the host, the assertions are the
/// same.
const SCALE: u32 = 4;

/// A whole guest run may take this long before it counts as hung.
const GUEST_LIMIT: Duration = Duration::from_secs(20 * 60);

/// How one kernel did.
pub struct Outcome {
    /// Label.
    pub label: String,
    /// `uname -r` in the guest (or the package, before it booted).
    pub release: String,
    /// Passed, failed, or not supported, with the detail.
    pub verdict: Verdict,
    /// Test binaries run and their exit codes.
    pub binaries: Vec<(String, i32)>,
    /// Wall time of the boot and the suite.
    pub elapsed: Duration,
}

/// A kernel's result.
pub enum Verdict {
    /// Every test passed.
    Passed,
    /// Something failed; what.
    Failed(String),
    /// `floki-agent kernel` found a feature missing (the agent falls back).
    NotSupported(String),
}

/// Runs the suite in every kernel named in `labels`.
pub fn run_matrix(labels: &[String]) -> anyhow::Result<Vec<Outcome>> {
    let kernels: Vec<&GuestKernel> = labels
        .iter()
        .map(|label| {
            KERNELS.iter().find(|k| k.label == label).with_context(|| {
                let known: Vec<_> = KERNELS.iter().map(|k| k.label).collect();
                format!("unknown kernel {label}; known: {}", known.join(", "))
            })
        })
        .collect::<anyhow::Result<_>>()?;
    ensure_tools()?;
    let cache = workspace_root().join("target/kernels");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let binaries = test_binaries()?;
    let mut outcomes = Vec::new();
    for kernel in kernels {
        let unpacked = fetch(kernel, &cache)?;
        let initramfs = build_initramfs(kernel, &unpacked, &binaries, &cache)?;
        eprintln!("xtask: booting Linux {} under QEMU", unpacked.release);
        outcomes.push(boot(kernel, &unpacked, &initramfs, &cache)?);
    }
    Ok(outcomes)
}

/// Prints the per-kernel table; fails if a kernel failed.
pub fn report(outcomes: &[Outcome]) -> anyhow::Result<()> {
    eprintln!("xtask: kernel matrix");
    let mut failed = Vec::new();
    for outcome in outcomes {
        let (word, detail) = match &outcome.verdict {
            Verdict::Passed => ("passed", String::new()),
            Verdict::Failed(why) => {
                failed.push(outcome.label.clone());
                ("FAILED", why.clone())
            }
            Verdict::NotSupported(why) => ("not supported", why.clone()),
        };
        let binaries: Vec<String> = outcome
            .binaries
            .iter()
            .map(|(name, rc)| {
                if *rc == 0 {
                    name.clone()
                } else {
                    format!("{name} (exit {rc})")
                }
            })
            .collect();
        eprintln!(
            "  {:<5} {:<28} {:<13} {:>5.0} s  {} {detail}",
            outcome.label,
            outcome.release,
            word,
            outcome.elapsed.as_secs_f64(),
            binaries.join(", ")
        );
    }
    if !failed.is_empty() {
        bail!(
            "the kernel tests failed on {} (console logs in target/kernels/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// QEMU, busybox (static: it runs before any library is in place), cpio and
/// xz, from Debian's packages when missing.
fn ensure_tools() -> anyhow::Result<()> {
    let installed = |package: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
    };
    let missing: Vec<&str> = ["qemu-system-x86", "busybox-static", "cpio", "xz-utils"]
        .into_iter()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {}", missing.join(" "));
        apt_install(&missing)?;
    }
    Ok(())
}

/// Test binary name -> executable, from cargo's own report.
fn test_binaries() -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let out = Command::new("cargo")
        // The host run's selection, so that cargo reuses its build.
        .args([
            "test",
            "--workspace",
            "--exclude",
            "floki-ebpf",
            "--exclude",
            "floki-py",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the kernel tests failed");
    }
    let mut found = BTreeMap::new();
    for line in out.stdout.split(|&b| b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"))
            && message["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("#floki-tests@"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    for (name, _) in SUITE {
        if !found.contains_key(*name) {
            bail!("cargo built no test binary called {name}");
        }
    }
    Ok(found)
}

/// A kernel package unpacked.
struct Unpacked {
    /// `boot/vmlinuz-*`.
    vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    modules: PathBuf,
    /// The release (`6.1.0-56-cloud-amd64`).
    release: String,
}

/// Downloads and unpacks the newest package for `kernel`, unless cached.
fn fetch(kernel: &GuestKernel, cache: &Path) -> anyhow::Result<Unpacked> {
    let package = match newest_package(kernel.package)? {
        Some(package) => package,
        None => {
            run(Command::new("apt-get").args(["update", "-q"]))?;
            newest_package(kernel.package)?.with_context(|| {
                format!(
                    "no Debian package matches {} (is deb.debian.org bookworm reachable?)",
                    kernel.package
                )
            })?
        }
    };
    let dir = cache.join(&package);
    if !dir.join("boot").is_dir() {
        eprintln!("xtask: fetching {package}");
        let download = cache.join("download");
        fs::create_dir_all(&download)?;
        run(Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(&download))?;
        let deb = fs::read_dir(&download)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("apt-get download left no .deb for {package}"))?;
        let partial = cache.join(format!("{package}.partial"));
        let _ = fs::remove_dir_all(&partial);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        fs::rename(&partial, &dir)?;
        fs::remove_file(&deb)?;
    }
    let vmlinuz = only_entry(&dir.join("boot"), "vmlinuz-")?;
    let modules_root = dir.join("lib/modules");
    let modules = fs::read_dir(&modules_root)
        .with_context(|| format!("reading {}", modules_root.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .with_context(|| format!("{} is empty", modules_root.display()))?;
    let release = modules
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_owned();
    Ok(Unpacked {
        vmlinuz,
        modules,
        release,
    })
}

fn newest_package(pattern: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", pattern])
        .output()
        .context("running apt-cache search")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    // Debian's ABI numbers and point releases grow: sort them as numbers.
    names.sort_by_key(|name| version_key(name));
    Ok(names.pop())
}

fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect()
}

fn only_entry(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

/// Builds `target/kernels/<label>.cpio`.
fn build_initramfs(
    kernel: &GuestKernel,
    unpacked: &Unpacked,
    binaries: &BTreeMap<String, PathBuf>,
    cache: &Path,
) -> anyhow::Result<PathBuf> {
    let root = cache.join(format!("root-{}", kernel.label));
    let _ = fs::remove_dir_all(&root);
    for dir in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "etc",
        "var",
        "floki/deps",
        "modules",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    std::os::unix::fs::symlink("/run", root.join("var/run"))?;
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox")?;
    fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/tmp:/bin/sh\n")?;
    for tool in TOOLS {
        let path = find_program(tool)
            .with_context(|| format!("{tool} not found (install iproute2 and util-linux)"))?;
        copy_with_libraries(&path, &root)?;
    }
    let target = workspace_root().join("target/debug");
    for bin in ["floki-agent", "floki-probe"] {
        let from = target.join(bin);
        strip_into(&from, &root.join("floki").join(bin))?;
        copy_libraries(&from, &root)?;
    }
    for (name, _) in SUITE {
        strip_into(&binaries[*name], &root.join("floki/deps").join(name))?;
    }
    for module in MODULES {
        let base = unpacked.modules.join("kernel").join(module);
        let name = Path::new(module)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module");
        let into = root.join("modules").join(format!("{name}.ko"));
        let plain = base.with_extension("ko");
        let xz = base.with_extension("ko.xz");
        if plain.is_file() {
            fs::copy(&plain, &into)?;
        } else if xz.is_file() {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .context("running xz")?;
            if !out.status.success() {
                bail!("xz -d {} failed", xz.display());
            }
            fs::write(&into, out.stdout)?;
        } else {
            bail!("{} has no {module}.ko", unpacked.modules.display());
        }
    }
    let suite: String = SUITE
        .iter()
        .map(|(name, filters)| format!("{name} {}\n", filters.join(" ")))
        .collect();
    fs::write(root.join("floki/suite"), suite)?;
    let init = root.join("init");
    fs::write(&init, init_script())?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let cpio = cache.join(format!("initramfs-{}.cpio", kernel.label));
    let file = fs::File::create(&cpio)?;
    // Uncompressed: unpacking gzip under emulation costs more than reading
    // the larger file.
    run(Command::new("sh")
        .args(["-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet"])
        .current_dir(&root)
        .stdout(file))?;
    Ok(cpio)
}

/// The guest's PID 1.
fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /sys/fs/cgroup /sys/fs/bpf /dev/shm
mount -t cgroup2 none /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
ip link set lo up
for m in veth llc stp bridge; do insmod /modules/$m.ko || echo "FLOKI-MODULE-FAILED $m"; done
echo "FLOKI-KERNEL $(uname -r)"
export CI=true HOME=/tmp FLOKI_TEST_SCALE={SCALE} RUST_BACKTRACE=1
cd /tmp
if /floki/floki-agent kernel > /tmp/kernel.txt 2>&1; then
  while read t filters; do
    echo "FLOKI-START $t"
    /floki/deps/$t --test-threads=1 $filters 2>&1
    echo "FLOKI-RESULT $t $?"
  done < /floki/suite
else
  cat /tmp/kernel.txt
  echo "FLOKI-UNSUPPORTED $(tail -n 1 /tmp/kernel.txt)"
fi
echo FLOKI-DONE
poweroff -f
"#
    )
}

/// Copies `path` to the same place under `root`, with the libraries it loads.
fn copy_with_libraries(path: &Path, root: &Path) -> anyhow::Result<()> {
    copy_to_same_place(path, root)?;
    copy_libraries(path, root)
}

fn copy_libraries(path: &Path, root: &Path) -> anyhow::Result<()> {
    let out = Command::new("ldd")
        .arg(path)
        .output()
        .context("running ldd")?;
    for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if word.starts_with('/') {
            copy_to_same_place(Path::new(word), root)?;
        }
    }
    Ok(())
}

fn copy_to_same_place(path: &Path, root: &Path) -> anyhow::Result<()> {
    let into = root.join(path.strip_prefix("/").unwrap_or(path));
    if into.exists() {
        return Ok(());
    }
    fs::create_dir_all(into.parent().expect("absolute path"))?;
    fs::copy(path, &into).with_context(|| format!("copying {}", path.display()))?;
    Ok(())
}

/// Copies a binary without its debug info (the guest's RAM holds it).
fn strip_into(from: &Path, to: &Path) -> anyhow::Result<()> {
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from))
}

/// Boots the guest and reads its verdict from the serial console.
fn boot(
    kernel: &GuestKernel,
    unpacked: &Unpacked,
    initramfs: &Path,
    cache: &Path,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let log_path = cache.join(format!("console-{}.log", kernel.label));
    let mut log = fs::File::create(&log_path)?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&unpacked.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut outcome = Outcome {
        label: kernel.label.to_owned(),
        release: unpacked.release.clone(),
        verdict: Verdict::Failed("the guest stopped before reporting".into()),
        binaries: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut done = false;
    let mut failures = Vec::new();
    loop {
        let left = GUEST_LIMIT.saturating_sub(started.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                outcome.verdict = Verdict::Failed(format!(
                    "no verdict within {} min",
                    GUEST_LIMIT.as_secs() / 60
                ));
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let line = line.trim_end_matches('\r').to_owned();
        writeln!(log, "{line}")?;
        let line = strip_terminal_codes(&line);
        if let Some(release) = line.strip_prefix("FLOKI-KERNEL ") {
            outcome.release = release.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("FLOKI-RESULT ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or("?").to_owned();
            let rc = words.next().and_then(|w| w.parse().ok()).unwrap_or(-1);
            if rc != 0 {
                failures.push(name.clone());
            }
            outcome.binaries.push((name, rc));
        } else if let Some(why) = line.strip_prefix("FLOKI-UNSUPPORTED ") {
            outcome.verdict = Verdict::NotSupported(why.trim().to_owned());
        } else if let Some(module) = line.strip_prefix("FLOKI-MODULE-FAILED ") {
            failures.push(format!("insmod {module}"));
        } else if line == "FLOKI-DONE" {
            done = true;
        } else if line.starts_with("test ") || line.starts_with("---- ") {
            eprintln!("  [{}] {line}", kernel.label);
        }
    }
    let _ = child.wait();
    outcome.elapsed = started.elapsed();
    if done && !matches!(outcome.verdict, Verdict::NotSupported(_)) {
        let missing: Vec<&str> = SUITE
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !outcome.binaries.iter().any(|(n, _)| n == name))
            .collect();
        outcome.verdict = if !failures.is_empty() {
            Verdict::Failed(format!("failed: {}", failures.join(", ")))
        } else if !missing.is_empty() {
            Verdict::Failed(format!("did not run: {}", missing.join(", ")))
        } else {
            Verdict::Passed
        };
    }
    if !matches!(outcome.verdict, Verdict::Passed) {
        eprintln!(
            "xtask: Linux {}: console log in {}",
            outcome.release,
            log_path.display()
        );
    }
    Ok(outcome)
}

/// The console starts with the firmware's screen-clearing escapes.
fn strip_terminal_codes(line: &str) -> &str {
    line.rfind("FLOKI-")
        .filter(|&i| i > 0 && line[..i].contains('\u{1b}'))
        .map_or(line, |i| &line[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_numbers_sort_as_numbers() {
        let mut names = [
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "linux-image-6.1.0-47-cloud-amd64-unsigned",
        ];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names[2], "linux-image-6.1.0-56-cloud-amd64-unsigned");
    }

    #[test]
    fn console_escapes_before_a_marker_are_dropped() {
        assert_eq!(
            strip_terminal_codes("\u{1b}[?7l\u{1b}[2JFLOKI-KERNEL 6.1.0"),
            "FLOKI-KERNEL 6.1.0"
        );
        assert_eq!(strip_terminal_codes("test x ... ok"), "test x ... ok");
    }
}
