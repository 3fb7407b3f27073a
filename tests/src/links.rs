//! Streams across nodes over the agents' links: a cluster with one edge
//! across two nodes, and which path each of its streams took, as each
//! agent's status says.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use floki_client::{ChannelOptions, blocking, workflow::EdgeOptions};

use crate::{
    agent::TestAgent,
    cluster::{Cluster, ClusterNode, Spec},
};

/// Two namespace nodes and a workflow with one edge across them, `p` on
/// node-a to `q` on node-b: the cluster, the token, and the options of
/// the edge's one stream at each end (on the nodes' Unix sockets). Live: a
/// producer that finishes before its consumer came is never stored (a
/// stored stream is replayed to every later consumer).
pub fn one_edge_across_nodes() -> (Cluster, String, ChannelOptions, ChannelOptions) {
    one_edge(&["node-a", "node-b"])
}

/// [`one_edge_across_nodes`], with `q` on node-a too: one node, whose
/// agent pairs the edge's streams over rings.
pub fn one_edge_on_one_node() -> (Cluster, String, ChannelOptions, ChannelOptions) {
    one_edge(&["node-a"])
}

/// One edge from `p` on the first of `nodes` to `q` on the last.
fn one_edge(nodes: &[&str]) -> (Cluster, String, ChannelOptions, ChannelOptions) {
    let (first, last) = (nodes[0], nodes[nodes.len() - 1]);
    let cluster = Cluster::start(nodes);
    cluster.wait_connected();
    let spec = Spec::new("wf")
        .function("p", first)
        .function("q", last)
        .edge("e", &["p"], &["q"], "one-to-one", "1MiB");
    let token = cluster.node(first).apply(&spec.yaml()).expect("apply");
    let unix = |node: &str| format!("unix:{}", cluster.node(node).agent.socket.display());
    let mut producer = EdgeOptions::new(unix(first), "wf", &token, "e", "p");
    producer.live = true;
    let producer = producer.stream("q");
    let consumer = EdgeOptions::new(unix(last), "wf", &token, "e", "q").stream("p");
    (cluster, token, producer, consumer)
}

/// How a stream across nodes went, as one agent's status says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkPath {
    /// Over a link this agent handed (or relayed) for the stream.
    New,
    /// Over the link this node's end kept, started or read by this agent.
    Kept,
    /// Over the link this node's end held, without a word to this agent
    /// until it was over.
    Held,
    /// Over a link this agent lent its consumer before the stream started
    /// on it: the consumer read the start itself.
    Lent,
}

/// How each of the `count` streams of that edge went, as `node`'s agent
/// says.
pub fn paths_on(node: &ClusterNode, count: usize) -> Vec<LinkPath> {
    finished_in_order(&node.agent, "wf/e/p>q", count)
        .iter()
        .map(|c| {
            let note = c["note"].as_str().unwrap_or_default();
            if note.contains("its end held") {
                LinkPath::Held
            } else if note.contains("kept the agents' link") {
                LinkPath::Kept
            } else if note.contains("was lent to the consumer") {
                LinkPath::Lent
            } else {
                LinkPath::New
            }
        })
        .collect()
}

/// The `count` streams of channel `name` in `agent`'s status, in the order
/// they opened; each finished whole.
pub fn finished_in_order(agent: &TestAgent, name: &str, count: usize) -> Vec<serde_json::Value> {
    // An end over a held link tells its agent after its stream is over:
    // its last report may still be on its way.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (status, mut streams) = loop {
        let status = agent.status();
        let streams: Vec<serde_json::Value> = status["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .filter(|c| c["name"] == name)
            .cloned()
            .collect();
        let finished = streams.iter().filter(|c| c["state"] == "done").count();
        if finished >= count || std::time::Instant::now() > deadline {
            break (status, streams);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    streams.sort_by_key(|c| c["id"].as_u64().expect("id"));
    assert_eq!(streams.len(), count, "{status:#}");
    for stream in &streams {
        assert_eq!(stream["state"], "done", "{stream:#}");
    }
    streams
}

/// The data a probe of the edge sends and checks (its default seed).
pub fn probe_seed() -> u64 {
    crate::stream_seed(1, floki_client::Pattern::OneToOne, "p", "q")
}

/// One stream from this process to a consumer thread of this process:
/// `size` bytes of `seed`'s pattern, arrived whole.
pub fn stream_here(producer: &ChannelOptions, consumer: &ChannelOptions, size: usize, seed: u64) {
    let consuming = std::thread::spawn({
        let opts = consumer.clone();
        move || receive(&opts)
    });
    // The consumer waits first, as a warm consumer does.
    std::thread::sleep(Duration::from_millis(100));
    send(producer, size, seed);
    let got = consuming.join().expect("the consumer");
    assert!(
        got == crate::pattern(size, seed),
        "{} bytes of {size} arrived, or changed",
        got.len()
    );
}

/// A new consumer process (a retry, say) on `node` waits for the edge's
/// stream, then this process's `producer` sends `size` bytes: that
/// process gets them whole.
pub fn another_consumer_receives(
    node: &ClusterNode,
    token: &str,
    producer: &ChannelOptions,
    size: usize,
) {
    let other = crate::cluster::local_edge_probe(node, "recv", token, "e", "q", size as u64, &[]);
    std::thread::sleep(Duration::from_millis(300));
    send(producer, size, probe_seed());
    let done = crate::node::wait_within(other, Duration::from_secs(60));
    crate::node::assert_success(&done, "the other consumer");
}

/// `size` bytes of `seed`'s pattern from `producer`, verified.
pub fn send(producer: &ChannelOptions, size: usize, seed: u64) -> floki_client::Summary {
    let mut tx = blocking::Sender::open(producer).expect("sender");
    tx.write_all(&crate::pattern(size, seed)).expect("write");
    tx.finish().expect("the consumer verified the stream")
}

/// One stream at `consumer`, read whole and verified.
pub fn receive(consumer: &ChannelOptions) -> Vec<u8> {
    let mut rx = blocking::Receiver::connect(consumer).expect("receiver");
    let mut got = Vec::new();
    rx.read_to_end(&mut got).expect("a verified stream");
    rx.finish().expect("verified");
    got
}
