//! A function that opens one channel after another (a warm function, or
//! one with several peers) keeps its connection to the agent between them:
//! the agent takes the next hello on it after the end's `done`. What a user
//! checks: every stream arrives whole, the agent's counters show fewer
//! connections than requests, and an agent that restarted in between costs
//! nothing but a new connection.

use std::io::{Read as _, Write as _};

use floki_client::{ChannelOptions, blocking};
use floki_tests::{
    agent::AgentOptions,
    metrics::{address, get, sample},
    node::TestNode,
    pattern,
};

const STREAMS: usize = 10;

/// Sends `STREAMS` streams `NAME-0`, `NAME-1`, ... one after another from
/// this process, to a receiving thread of this process that reads them in
/// turn; each arrives whole.
fn streams_in_turn(agent: &str, name: &str, sizes: impl Fn(usize) -> usize) {
    let receiving = std::thread::spawn({
        let (agent, name) = (agent.to_owned(), name.to_owned());
        move || {
            (0..STREAMS)
                .map(|i| {
                    let opts = ChannelOptions::new(&agent, format!("{name}-{i}"));
                    let mut rx = blocking::Receiver::connect(&opts).expect("receiver");
                    let mut got = Vec::new();
                    rx.read_to_end(&mut got).expect("a verified stream");
                    got
                })
                .collect::<Vec<_>>()
        }
    });
    for i in 0..STREAMS {
        let opts = ChannelOptions::new(agent, format!("{name}-{i}"));
        let mut tx = blocking::Sender::open(&opts).expect("sender");
        tx.write_all(&pattern(sizes(i), i as u64)).expect("write");
        tx.finish().expect("the receiver verified the stream");
    }
    let got = receiving.join().expect("the receiving thread");
    for (i, bytes) in got.iter().enumerate() {
        assert!(
            *bytes == pattern(sizes(i), i as u64),
            "stream {i} arrived changed ({} bytes)",
            bytes.len()
        );
    }
}

#[test]
fn streams_one_after_another_keep_their_connections_to_the_agent() {
    let node = TestNode::start(
        "kept",
        AgentOptions {
            extra: vec!["--metrics".into(), "127.0.0.1:0".into()],
            ..AgentOptions::default()
        },
    );
    let metrics = address(&node.agent.status());
    let agent = format!("unix:{}", node.agent.socket.display());
    // From 1 byte to 3 MiB: streams that fit their ring and streams that
    // wrap around it.
    streams_in_turn(&agent, "kept", |i| 1 + i * 350_000);

    let (_, body) = get(&metrics, "/metrics");
    let requests = sample(&body, "floki_client_requests_total");
    let connections = sample(&body, "floki_client_connections_total");
    assert_eq!(requests, (2 * STREAMS) as f64, "{body}");
    // Without kept connections: one per request. Both ends' first
    // connections are new, and an end that opens before the other put its
    // connection back opens another.
    assert!(
        connections <= STREAMS as f64,
        "{connections} connections for {requests} requests"
    );
    for i in 0..STREAMS {
        let channel = node.agent.wait_finished(&format!("kept-{i}"), LIMIT);
        assert_eq!(channel["transport"], "shm", "{channel:#}");
        assert_eq!(channel["state"], "done", "{channel:#}");
    }
}

#[test]
fn a_connection_kept_to_an_agent_that_restarted_is_replaced_unseen() {
    let mut node = TestNode::start("kept-restart", AgentOptions::default());
    let agent = format!("unix:{}", node.agent.socket.display());
    streams_in_turn(&agent, "before", |_| 100_000);
    // The connections this process keeps now lead to a process that is
    // gone; the next streams open as if nothing happened.
    node.agent.relaunch(&node.cgroup, AgentOptions::default());
    streams_in_turn(&agent, "after", |_| 100_000);
    let channel = node
        .agent
        .wait_finished(&format!("after-{}", STREAMS - 1), LIMIT);
    assert_eq!(channel["state"], "done", "{channel:#}");
}

const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
