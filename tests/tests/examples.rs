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
    assert!(stdout.contains("handed to the consumer"), "{stdout}");
}
