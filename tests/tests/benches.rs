//! The performance benchmarks run small, so that they cannot rot: the
//! ceilings next to Floki, small streams and set-up, many channels. Their
//! figures are not asserted (a shared machine's timings are not a test);
//! what is asserted is what must hold at any speed: every system and place
//! measured, every channel verified, nothing leaked.

use std::{process::Command, time::Duration};

use floki_tests::{
    node::{assert_success, run_within},
    require_root,
};

/// `floki-lab bench ARGS --no-write`; its table.
fn bench(args: &[&str]) -> String {
    let out = run_within(
        Command::new(env!("CARGO_BIN_EXE_floki-lab"))
            .arg("bench")
            .args(args)
            .arg("--no-write")
            .env("FLOKI_AGENT_BIN", floki_tests::agent_binary()),
        Duration::from_secs(300),
    );
    assert_success(&out, &format!("floki-lab bench {}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_splice_benchmark_measures_the_ceilings_beside_floki() {
    require_root();
    // The bare redirect checks the kernel's own count of redirected bytes:
    // a run whose sockets were not spliced fails.
    let table = bench(&[
        "splice",
        "--runs",
        "1",
        "--size",
        "32MiB",
        "--round-trips",
        "200",
    ]);
    for column in [
        "bare redirect",
        "bare ring",
        "memcpy",
        "splice / bare redirect",
    ] {
        assert!(table.contains(column), "no {column:?} in:\n{table}");
    }
    assert!(
        table.contains("64 KiB writes: splice at least 0.9x the bare redirect"),
        "{table}"
    );
}

#[test]
fn the_small_streams_benchmark_measures_every_place() {
    require_root();
    let table = bench(&["small", "--rounds", "20", "--pattern-rounds", "5"]);
    for row in [
        "| one node, shm |",
        "| one node, splice |",
        "| two nodes, prepared link |",
        "| one-to-one | one node |",
        "| shuffle 4 by 4 | two nodes |",
    ] {
        assert!(table.contains(row), "no row {row:?} in:\n{table}");
    }
    // Each place has its ceiling measured in the same run: the machine's
    // bare hand-off through a broker, which takes some time.
    for place in ["| one node, shm |", "| two nodes, prepared link |"] {
        let row = table
            .lines()
            .find(|line| line.starts_with(place))
            .expect("place row");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let handoff: f64 = cells[4]
            .trim_end_matches(" µs")
            .parse()
            .expect("bare hand-off p50 in µs");
        assert!(handoff > 0.0, "no bare hand-off in {row:?}");
    }
    // Each pattern row ends with the CPU a run took: functions + servers
    // for Floki and Redis, both measured (a run cannot move 1 MiB for free
    // on either side), then the bare TCP ceiling's functions.
    let shuffle = table
        .lines()
        .find(|line| line.starts_with("| shuffle 4 by 4 | one node |"))
        .expect("shuffle row");
    let cells: Vec<&str> = shuffle.split('|').map(str::trim).collect();
    let bare_cpu: f64 = cells[cells.len() - 2]
        .trim_end_matches(" µs")
        .parse()
        .expect("bare TCP CPU in µs");
    assert!(bare_cpu > 0.0, "a bare TCP CPU figure of 0 in {shuffle:?}");
    // The ceiling's time, and each system's share of it.
    let share = cells[cells.len() - 5];
    assert!(
        share.contains("x, ") && share.ends_with('x'),
        "no `Floki, Redis` shares of the ceiling in {shuffle:?}"
    );
    for cpu in &cells[cells.len() - 4..cells.len() - 2] {
        let (functions, servers) = cpu
            .trim_end_matches(" µs")
            .split_once(" + ")
            .unwrap_or_else(|| panic!("no `functions + servers` CPU in {shuffle:?}"));
        for part in [functions, servers] {
            let us: f64 = part.parse().expect("CPU in µs");
            assert!(us > 0.0, "a CPU figure of 0 in {shuffle:?}");
        }
    }
}

#[test]
fn many_channels_are_all_verified_and_leave_nothing_behind() {
    require_root();
    let table = bench(&[
        "channels",
        "--concurrent",
        "300",
        "--sequential",
        "300",
        "--sequential-spliced",
        "300",
        "--sequential-same",
        "300",
    ]);
    for path in ["splice", "shm"] {
        assert!(
            table.contains(&format!("| {path} | 300 | 300 of 300 |")),
            "{table}"
        );
    }
    // Descriptors and kernel map entries come back to where they were,
    // after channels of their own and after one channel again and again.
    for path in ["splice", "shm", "shm on one channel"] {
        let line = table
            .lines()
            .find(|line| line.starts_with(&format!("| 300 over {path} |")))
            .unwrap_or_else(|| panic!("no row of 300 in a row over {path} in:\n{table}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        for (name, cell) in [
            ("agent descriptors", cells[4]),
            ("kernel map entries", cells[5]),
        ] {
            let (before, after) = cell.split_once(" → ").expect("before → after");
            assert_eq!(before, after, "{name} over {path}:\n{table}");
        }
    }
}
