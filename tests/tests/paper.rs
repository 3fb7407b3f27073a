//! The object-storage comparison runs its smallest sizes, every pattern,
//! both placements and all three systems, checking every byte: the
//! benchmark cannot rot.

use std::{process::Command, time::Duration};

use floki_tests::{
    node::{assert_success, run_within},
    require_root,
};

#[test]
fn the_paper_benchmark_runs_quick() {
    require_root();
    let out = run_within(
        Command::new(env!("CARGO_BIN_EXE_floki-lab"))
            .args(["bench", "paper", "--quick"])
            .env("FLOKI_AGENT_BIN", floki_tests::agent_binary()),
        Duration::from_secs(300),
    );
    assert_success(&out, "floki-lab bench paper --quick");
    let table = String::from_utf8_lossy(&out.stdout);
    for row in ["one-to-one | one node", "shuffle 4 by 4 | two nodes"] {
        assert!(table.contains(row), "no row {row:?} in:\n{table}");
    }
    // Floki forwards without writing to disk; stored in memory, next to
    // nothing (manifests); spilled, the data once; the object store writes
    // it all.
    let header = table
        .lines()
        .find(|line| line.starts_with("| pattern |") && line.contains("disk written"))
        .unwrap_or_else(|| panic!("no resources table in:\n{table}"));
    let column = |name: &str| {
        header
            .split('|')
            .map(str::trim)
            .position(|cell| cell == name)
            .unwrap_or_else(|| panic!("no column {name:?} in {header}"))
    };
    let resources = table
        .lines()
        .find(|line| {
            line.starts_with("| one-to-one | one node | 16.0 MiB |") && line.contains(" B |")
        })
        .unwrap_or_else(|| panic!("no resources row in:\n{table}"));
    let cells: Vec<&str> = resources.split('|').map(str::trim).collect();
    let written = |system: &str| cells[column(&format!("{system} disk written"))];
    assert_eq!(written("Floki"), "0 B", "Floki wrote to disk: {resources}");
    assert!(
        written("Floki stored (memory)").ends_with("KiB")
            || written("Floki stored (memory)") == "0 B",
        "Floki stored in memory wrote the data: {resources}"
    );
    assert_eq!(written("Floki stored (disk)"), "16.0 MiB", "{resources}");
    assert!(
        written("S3 (s3s-fs)").ends_with("MiB"),
        "S3 wrote otherwise: {resources}"
    );
}
