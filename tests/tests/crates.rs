//! What a function author compiles: `floki-client` and the wire format,
//! nothing of the daemon (no eBPF loader, no HTTP server, no DNS resolver,
//! no metrics, no build script that needs the pinned nightly, LLVM or
//! bpf-linker).

use std::{collections::BTreeSet, process::Command};

/// Crates of the daemon a function must never compile.
const DAEMON_ONLY: &[&str] = &[
    "floki-agent",
    "floki-ebpf",
    "aya",
    "aya-build",
    "aya-log",
    "hyper",
    "hickory-resolver",
    "prometheus-client",
];

fn dependencies(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-p", package, "-e", "normal,build"])
        .args(["--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_client_crate_carries_nothing_of_the_daemon() {
    for package in ["floki-client", "floki-proto"] {
        let crates = dependencies(package);
        assert!(crates.contains("tokio"), "{package}: {crates:?}");
        let found: Vec<&&str> = DAEMON_ONLY
            .iter()
            .filter(|name| crates.contains(**name))
            .collect();
        assert!(found.is_empty(), "{package} pulls in {found:?}");
    }
}

#[test]
fn the_agent_builds_on_both_libraries() {
    let crates = dependencies("floki-agent");
    for name in ["floki-client", "floki-proto", "aya"] {
        assert!(crates.contains(name), "floki-agent without {name}");
    }
}
