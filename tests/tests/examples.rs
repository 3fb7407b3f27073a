//! The examples in `examples/` work as the README says.

use std::{process::Command, time::Duration};

use floki_tests::{
    agent_binary,
    node::{assert_success, run_within},
    require_root,
};

fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn the_two_node_example_streams_byte_identical() {
    require_root();
    let out = run_within(
        Command::new("bash")
            .arg(examples_dir().join("two-nodes.sh"))
            .arg("16M")
            .env("FLOKI_AGENT_BIN", agent_binary()),
        Duration::from_secs(120),
    );
    assert_success(&out, "examples/two-nodes.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("received byte-identical"), "{stdout}");
    // The consumer's agent handed it the link, or lent it before the start
    // if the consumer waited first (docs/PROTOCOL.md, "Lent links").
    assert!(
        stdout.contains("handed to the consumer") || stdout.contains("lent to the consumer"),
        "{stdout}"
    );
    // The script stops what it started: no agent of its nodes outlives it.
    let tag = stdout
        .split_whitespace()
        .find_map(|word| {
            word.strip_suffix("-a")
                .filter(|w| w.starts_with("floki-ex-"))
        })
        .expect("the script names its namespaces");
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains("floki-agent") && cmdline.contains(tag))
        .collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
