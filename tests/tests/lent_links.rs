//! A consumer that waits for its stream across nodes is lent one of the
//! stream's links at its hello and reads the start itself, so that the
//! stream's first bytes wake it alone (docs/PROTOCOL.md, "Lent links").
//! What a user checks: the bytes arrive whole, the consumer's agent shows
//! the path, and a stream that starts on another link than the lent one
//! still reaches a waiting consumer.

use std::time::{Duration, Instant};

use floki_tests::{
    cluster::ClusterNode,
    links::{
        LinkPath, another_consumer_receives, finished_in_order, one_edge_across_nodes, paths_on,
        probe_seed, receive, send, stream_here,
    },
};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_waiting_consumer_reads_its_links_start_itself_and_its_agent_shows_it() {
    let (cluster, _, producer, consumer) = one_edge_across_nodes();
    stream_here(&producer, &consumer, 1 << 20, 1);
    assert_eq!(paths_on(cluster.node("node-b"), 1), [LinkPath::Lent]);
    assert_eq!(paths_on(cluster.node("node-a"), 1), [LinkPath::New]);
}

#[test]
fn a_stream_started_on_another_link_than_the_lent_one_still_reaches_its_consumer() {
    let (cluster, token, producer, consumer) = one_edge_across_nodes();
    let b = cluster.node("node-b");
    // This process keeps the stream's link at both ends.
    stream_here(&producer, &consumer, 64 << 10, 1);
    // A new consumer process is lent the spare link, but the warm producer
    // starts the one it holds.
    let size = 1 << 20;
    another_consumer_receives(b, &token, &producer, size);
    // The lent link went back unread and left no failed channel behind:
    // the consumer's agent shows the two streams, both whole, the second
    // over the link the producer started.
    let streams = finished_in_order(&b.agent, "wf/e/p>q", 2);
    assert_eq!(streams[1]["stream_bytes"], size, "{streams:#?}");
    assert_eq!(paths_on(b, 2), [LinkPath::Lent, LinkPath::New]);
    assert_eq!(b.agent.status()["totals"]["failed_channels"], 0);
}

#[test]
fn a_stream_whose_consumer_waits_on_a_lent_link_shows_ready() {
    let (cluster, _, producer, consumer) = one_edge_across_nodes();
    let b = cluster.node("node-b");
    let consuming = std::thread::spawn(move || receive(&consumer));
    // The consumer joined its channel and was lent the stream's one link:
    // none waits at its agent now, yet the stream is ready to go.
    wait_for_channel(b, "wf/e/p>q");
    std::thread::sleep(Duration::from_millis(200));
    let status = b.agent.status();
    let state = &status["workflows"][0]["edges"][0]["streams"][0]["state"];
    assert_eq!(state, "ready", "{status:#}");
    send(&producer, 64 << 10, probe_seed());
    assert_eq!(consuming.join().expect("the consumer").len(), 64 << 10);
    assert_eq!(paths_on(b, 1), [LinkPath::Lent]);
}

/// Waits until `node`'s agent shows a channel `name`.
fn wait_for_channel(node: &ClusterNode, name: &str) {
    let deadline = Instant::now() + LIMIT;
    while !node.agent.status()["channels"]
        .as_array()
        .is_some_and(|all| all.iter().any(|c| c["name"] == name))
    {
        assert!(
            Instant::now() < deadline,
            "no channel {name} on {}",
            node.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
