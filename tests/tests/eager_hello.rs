//! A spliced sender sends its pairing key eager, right after it connects,
//! and its stream after it, without waiting for the receiver's first
//! credit; the kernel program delivers that hello only into a receiver's
//! socket that is spliced already, and returns it into the sender's own
//! socket otherwise, so that no byte of the stream goes over TCP ahead of
//! spliced ones.

use std::{process::Command, time::Duration};

use floki_tests::{
    node::{TestNode, assert_success, spawn, wait_within},
    probe_binary,
};

const BYTES: u64 = 3 << 20;
const LIMIT: Duration = Duration::from_secs(30);

/// Streams `channel` from a probe sender in the agent's cgroup to the
/// receiver `recv` (a probe, which checks every byte against the pattern
/// it expects); asserts both succeeded and the channel is done over
/// `transport`, and returns the agent's kernel totals.
fn stream(
    node: &TestNode,
    channel: &str,
    recv: &mut Command,
    transport: &str,
) -> serde_json::Value {
    let recv = spawn(recv);
    let send = spawn(&mut node.probe("send", channel, BYTES));
    assert_success(&wait_within(send, LIMIT), "sender");
    assert_success(&wait_within(recv, LIMIT), "receiver");
    let finished = node.agent.wait_finished(channel, Duration::from_secs(10));
    assert_eq!(finished["state"], "done", "{finished:#}");
    assert_eq!(finished["transport"], transport, "{finished:#}");
    node.agent.status()["totals"].clone()
}

#[test]
fn a_spliced_senders_eager_hello_is_delivered_and_its_stream_spliced() {
    let node = TestNode::start_ebpf("eager");
    let totals = stream(
        &node,
        "eager",
        &mut node.probe("recv", "eager", BYTES),
        "splice",
    );
    // Both sockets were spliced before the hello: nothing returned,
    // nothing went over TCP, and every byte of the stream was spliced.
    assert_eq!(totals["eager_returns"], 0, "{totals:#}");
    assert_eq!(totals["passed_msgs"], 0, "{totals:#}");
    assert!(
        totals["spliced_bytes"].as_u64().unwrap() > BYTES,
        "{totals:#}"
    );
}

#[test]
fn an_eager_hello_to_a_receiver_never_spliced_comes_back_and_the_stream_arrives_over_tcp() {
    let node = TestNode::start_ebpf("eager-refused");
    // Outside the agent's cgroup: the receiver's data socket is never
    // enrolled, while the sender's is.
    let mut recv = Command::new(probe_binary());
    recv.arg("recv")
        .args(["--agent", &node.agent.addr.to_string()])
        .args(["--channel", "refused"])
        .args(["--bytes", &BYTES.to_string()]);
    let totals = stream(&node, "refused", &mut recv, "tcp");
    // The eager hello came back to the sender, which waited for the credit
    // and sent its hello and stream over TCP, which the kernel let through.
    assert_eq!(totals["eager_returns"], 1, "{totals:#}");
    assert!(totals["passed_msgs"].as_u64().unwrap() > 0, "{totals:#}");
    assert_eq!(totals["spliced_bytes"], 0, "{totals:#}");
}
