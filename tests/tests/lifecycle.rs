//! The data path does not depend on the agent process: streams in flight
//! finish byte-identical if it is killed, and a graceful stop lets them finish
//! before it detaches.

use std::time::{Duration, Instant};

use floki_tests::{
    agent::{AgentOptions, TestAgent},
    node::{TestNode, assert_success, spawn, wait_within},
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
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
fn a_killed_agent_restarts_and_adopts_a_spliced_stream_in_flight() {
    let mut node = TestNode::start_ebpf("kill-agent");
    let before = node.agent.status();
    let ids = |status: &serde_json::Value| -> Vec<u64> {
        status["programs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_u64().unwrap())
            .collect()
    };
    let bytes = GIB;
    let recv = spawn(&mut node.probe("recv", "survivor", bytes));
    let send = spawn(
        node.probe("send", "survivor", bytes)
            .args(["--rate", &(192 * MIB).to_string()]),
    );
    wait_active(&node.agent, "survivor");
    let survivor_id = node.agent.channel("survivor")["id"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.agent.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // A new agent on the same cgroup and pin directory, while the stream is
    // still flowing: it adopts the pinned programs and maps instead of
    // loading new ones, and lists the stream with the kernel's count.
    node.agent.relaunch(&node.cgroup, AgentOptions::default());
    let after = node.agent.status();
    assert_eq!(after["datapath"]["mode"], "ebpf", "{after:#}");
    assert_eq!(ids(&after), ids(&before), "the same programs stay attached");
    assert!(
        node.agent.log().contains("adopted the programs and maps"),
        "{}",
        node.agent.log()
    );
    let adopted = node.agent.channel("survivor");
    assert_eq!(adopted["id"].as_u64(), Some(survivor_id), "{adopted:#}");
    assert_eq!(adopted["transport"], "splice", "{adopted:#}");
    assert!(
        adopted["reason"].as_str().unwrap_or("").contains("adopted"),
        "{adopted:#}"
    );
    assert!(
        adopted["state"] == "active" && adopted["bytes"].as_u64().unwrap() < bytes,
        "the stream was not in flight at the restart: {adopted:#}"
    );

    // Both ends complete and verify every byte.
    assert_success(&wait_within(send, LIMIT), "sender across the restart");
    assert_success(&wait_within(recv, LIMIT), "receiver across the restart");
    let closed = node.agent.wait_closed("survivor", LIMIT);
    assert!(
        closed["bytes"].as_u64().unwrap() >= bytes,
        "the kernel's count of the whole stream: {closed:#}"
    );
    let totals = &node.agent.status()["totals"];
    assert!(
        totals["spliced_bytes"].as_u64().unwrap() >= bytes,
        "the counters survive the restart: {totals:#}"
    );

    // New channels are spliced, numbered after the adopted one.
    let recv = spawn(&mut node.probe("recv", "after", 16 * MIB));
    assert_success(
        &wait_within(spawn(&mut node.probe("send", "after", 16 * MIB)), LIMIT),
        "sender on the restarted agent",
    );
    assert_success(&wait_within(recv, LIMIT), "receiver on the restarted agent");
    let after = node.agent.wait_finished("after", LIMIT);
    assert_eq!(after["transport"], "splice", "{after:#}");
    assert!(after["id"].as_u64().unwrap() > survivor_id, "{after:#}");
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

/// `bpftool` (the kernel's own listing), JSON.
fn bpftool(args: &[&str]) -> Option<serde_json::Value> {
    let out = std::process::Command::new("bpftool")
        .arg("--json")
        .args(args)
        .output()
        .expect("running bpftool (cargo xtask test installs it)");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn cleanup(node: &TestNode) -> std::process::Output {
    std::process::Command::new(floki_tests::agent_binary())
        .args(["cleanup", "--pin-dir"])
        .arg(&node.agent.pin_dir)
        .arg("--admin")
        .arg(&node.agent.admin)
        .output()
        .unwrap()
}

#[test]
fn cleanup_detaches_and_unpins_what_a_killed_agent_left() {
    let node = TestNode::start_ebpf("cleanup");
    let cgroup = node.cgroup.path().to_str().unwrap().to_owned();
    let ids: Vec<u64> = node.agent.status()["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    let attached = || -> Vec<u64> {
        bpftool(&["cgroup", "show", &cgroup])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .collect()
    };
    assert!(attached().contains(&ids[0]), "sock_ops not on {cgroup}");

    // A running agent is not cleaned up under its feet.
    let refused = cleanup(&node);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("stop it first"), "{message}");
    assert_eq!(node.agent.status()["datapath"]["mode"], "ebpf");

    // Killed, the agent leaves its programs attached through the pins.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.agent.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(attached().contains(&ids[0]));
    let out = cleanup(&node);
    assert_success(&out, "floki-agent cleanup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sock_ops_link"), "{text}");
    assert!(!node.agent.pin_dir.exists());
    assert!(attached().is_empty(), "still attached to {cgroup}");
    // The kernel frees the programs once nothing references them.
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in &ids {
        while bpftool(&["prog", "show", "id", &id.to_string()]).is_some() {
            assert!(Instant::now() < deadline, "program {id} still loaded");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Nothing left to do the second time.
    assert_success(&cleanup(&node), "a second cleanup");
}
