//! The data path does not depend on the agent process: streams in flight
//! finish byte-identical if it is killed, and a graceful stop lets them finish
//! before it detaches.

use std::time::{Duration, Instant};

use floki_tests::{
    agent::{AgentOptions, TestAgent},
    node::{TestNode, assert_success, spawn, wait_within},
};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);

fn wait_active(agent: &TestAgent, channel: &str) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let status = agent.status();
        let active = status["channels"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == channel))
            .is_some_and(|c| c["state"] == "active" && c["bytes"].as_u64().unwrap_or(0) > 0);
        if active {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "channel {channel} never became active"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killing_the_agent_does_not_break_a_spliced_stream() {
    let mut node = TestNode::start_ebpf("kill-agent");
    let bytes = 512 * MIB;
    let recv = spawn(&mut node.probe("recv", "survivor", bytes));
    let send = spawn(
        node.probe("send", "survivor", bytes)
            .args(["--rate", &(256 * MIB).to_string()]),
    );
    wait_active(&node.agent, "survivor");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.agent.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // Both ends still complete and verify every byte.
    assert_success(
        &wait_within(send, LIMIT),
        "sender after the agent was killed",
    );
    assert_success(
        &wait_within(recv, LIMIT),
        "receiver after the agent was killed",
    );

    // A new agent on the same cgroup and pin directory takes over the stale
    // pins and splices new channels.
    node.agent.relaunch(&node.cgroup, AgentOptions::default());
    assert_eq!(node.agent.status()["datapath"]["mode"], "ebpf");
    let recv = spawn(&mut node.probe("recv", "after", 16 * MIB));
    assert_success(
        &wait_within(spawn(&mut node.probe("send", "after", 16 * MIB)), LIMIT),
        "sender on the restarted agent",
    );
    assert_success(&wait_within(recv, LIMIT), "receiver on the restarted agent");
    assert_eq!(
        node.agent.wait_finished("after", LIMIT)["transport"],
        "splice"
    );
}

#[test]
fn sigterm_lets_active_streams_finish_then_detaches() {
    let mut node = TestNode::start_ebpf("sigterm");
    let bytes = 256 * MIB;
    let recv = spawn(&mut node.probe("recv", "inflight", bytes));
    let send = spawn(
        node.probe("send", "inflight", bytes)
            .args(["--rate", &(128 * MIB).to_string()]),
    );
    wait_active(&node.agent, "inflight");
    // A receiver still waiting for its sender is told the agent is stopping.
    let waiting = spawn(&mut node.cli("recv", "never-paired"));
    std::thread::sleep(Duration::from_millis(300));

    assert!(
        node.agent.stop(),
        "the agent did not exit cleanly:\n{}",
        node.agent.log()
    );
    assert_success(&wait_within(send, LIMIT), "sender during a graceful stop");
    assert_success(&wait_within(recv, LIMIT), "receiver during a graceful stop");
    let waiting = wait_within(waiting, Duration::from_secs(10));
    assert!(!waiting.status.success());
    let message = String::from_utf8_lossy(&waiting.stderr);
    assert!(
        message.contains("shutting down"),
        "the waiting receiver was told: {message}"
    );

    let log = node.agent.log();
    assert!(log.contains("channel finished"), "{log}");
    assert!(
        !node.agent.pin_dir.exists(),
        "pins left behind in {}",
        node.agent.pin_dir.display()
    );
    assert!(!node.agent.admin.exists(), "admin socket left behind");
}
