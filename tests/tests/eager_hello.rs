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

/// The agent's kernel totals.
fn totals(node: &TestNode) -> serde_json::Value {
    node.agent.status()["totals"].clone()
}

#[test]
fn a_spliced_senders_eager_hello_is_delivered_and_its_stream_spliced() {
    let node = TestNode::start_ebpf("eager");
    let recv = spawn(&mut node.probe("recv", "eager", BYTES));
    let send = spawn(&mut node.probe("send", "eager", BYTES));
    assert_success(&wait_within(send, LIMIT), "sender");
    // The probe checks every byte against the pattern it expects.
    assert_success(&wait_within(recv, LIMIT), "receiver");
    let channel = node.agent.wait_finished("eager", Duration::from_secs(10));
    assert_eq!(channel["state"], "done", "{channel:#}");
    assert_eq!(channel["transport"], "splice", "{channel:#}");
    let totals = totals(&node);
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
    let recv = spawn(&mut recv);
    let send = spawn(&mut node.probe("send", "refused", BYTES));
    assert_success(&wait_within(send, LIMIT), "sender");
    assert_success(&wait_within(recv, LIMIT), "receiver");
    let channel = node.agent.wait_finished("refused", Duration::from_secs(10));
    assert_eq!(channel["state"], "done", "{channel:#}");
    assert_eq!(channel["transport"], "tcp", "{channel:#}");
    let totals = totals(&node);
    // The eager hello came back to the sender, which waited for the credit
    // and sent its hello and stream over TCP, which the kernel let through.
    assert_eq!(totals["eager_returns"], 1, "{totals:#}");
    assert!(totals["passed_msgs"].as_u64().unwrap() > 0, "{totals:#}");
    assert_eq!(totals["spliced_bytes"], 0, "{totals:#}");
}
