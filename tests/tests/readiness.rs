//! Readers driven by epoll (tokio) never stall on spliced sockets, including
//! the case that kernels with commit 929e30f93125 (6.6.128+, 6.12.75+,
//! 6.18.14+) break for sockets in a sockhash: bytes that reach an enrolled
//! socket over TCP instead of the splice.

use std::{process::Command, time::Duration};

use floki_tests::{
    node::{TestNode, assert_success, spawn, wait_within},
    probe_binary,
};

/// Many small messages, each flushed on its own and paced, so that the
/// receiver goes back to epoll between nearly every one: a lost wake-up
/// shows up as a stall (the test's time limit), not as slowness.
fn small_messages(node: &TestNode, channel: &str, sender_in_cgroup: bool) -> serde_json::Value {
    let bytes = 5_000 * 200;
    let recv = spawn(node.probe("recv", channel, bytes).args(["--chunk", "256"]));
    let mut send = if sender_in_cgroup {
        node.probe("send", channel, bytes)
    } else {
        // Outside the agent's cgroup: its socket is never enrolled.
        let mut cmd = Command::new(probe_binary());
        cmd.arg("send")
            .args(["--agent", &node.agent.addr.to_string()])
            .args(["--channel", channel])
            .args(["--bytes", &bytes.to_string()]);
        cmd
    };
    let send = spawn(send.args(["--writes", "fixed:200", "--flush-each", "--rate", "2000000"]));
    assert_success(&wait_within(send, Duration::from_secs(30)), "sender");
    assert_success(
        &wait_within(recv, Duration::from_secs(30)),
        "epoll-driven receiver",
    );
    node.agent.wait_finished(channel, Duration::from_secs(10))
}

#[test]
fn epoll_readers_keep_up_with_small_spliced_messages() {
    let node = TestNode::start_ebpf("readiness");
    let channel = small_messages(&node, "small", true);
    assert_eq!(channel["transport"], "splice", "{channel:#}");
    assert_eq!(channel["state"], "done", "{channel:#}");
}

#[test]
fn epoll_readers_keep_up_when_only_one_end_is_enrolled() {
    let node = TestNode::start_ebpf("half-enrolled");
    let channel = small_messages(&node, "half", false);
    assert_eq!(channel["state"], "done", "{channel:#}");
    // The sender's socket was outside the cgroup: nothing was spliced, and
    // status says so.
    assert_eq!(channel["transport"], "tcp", "{channel:#}");
}
