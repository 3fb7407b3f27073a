//! Warm functions on one node that kept the ring of a stream carry the
//! stream's next use over it without asking the agent, and tell it
//! afterwards (docs/PROTOCOL.md, "Held rings"). What a user checks: every
//! stream arrives whole and shows in the agent's status with the path it
//! took, a new producer process still reaches a consumer that waits on its
//! held ring, and an end that dies mid-stream fails the other end instead
//! of handing it a short stream.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use floki_client::blocking;
use floki_tests::{
    cluster::{ClusterNode, local_edge_probe},
    links::{finished_in_order, one_edge_on_one_node, probe_seed, receive, send, stream_here},
    node::{assert_success, wait_within},
    pattern,
};

const LIMIT: Duration = Duration::from_secs(60);

/// How a stream on one node went, as the agent's status says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RingPath {
    /// A ring the agent made for it.
    New,
    /// The ring both ends kept, rewound by the agent.
    Kept,
    /// The ring both ends kept, without a word to the agent until it was
    /// over.
    Held,
}

fn paths(node: &ClusterNode, count: usize) -> Vec<RingPath> {
    finished_in_order(&node.agent, "wf/e/p>q", count)
        .iter()
        .map(|stream| {
            assert_eq!(stream["transport"], "shm", "{stream:#}");
            let note = stream["note"].as_str().unwrap_or_default();
            let reason = stream["reason"].as_str().unwrap_or_default();
            if note.contains("over the ring its ends held") {
                RingPath::Held
            } else if reason.contains("kept from their last channel") {
                RingPath::Kept
            } else {
                RingPath::New
            }
        })
        .collect()
}

#[test]
fn warm_functions_stream_over_the_ring_they_hold_and_the_agent_shows_it() {
    let (cluster, _, producer, consumer) = one_edge_on_one_node();
    // Sizes that fit the edge's 1 MiB ring and one that wraps it 3 times.
    let sizes = [64 << 10, 3 << 20, 1, (256 << 10) + 3];
    for (i, size) in sizes.into_iter().enumerate() {
        stream_here(&producer, &consumer, size, i as u64);
    }
    let node = cluster.node("node-a");
    assert_eq!(
        paths(node, sizes.len()),
        [
            RingPath::New,
            RingPath::Held,
            RingPath::Held,
            RingPath::Held
        ]
    );
    let streams = finished_in_order(&node.agent, "wf/e/p>q", sizes.len());
    for (stream, size) in streams.iter().zip(sizes) {
        assert_eq!(stream["bytes"], size as u64, "{stream:#}");
    }
}

#[test]
fn a_new_producer_process_reaches_a_consumer_waiting_on_its_held_ring() {
    let (cluster, token, producer, consumer) = one_edge_on_one_node();
    let node = cluster.node("node-a");
    stream_here(&producer, &consumer, 64 << 10, 1);
    // This process's consumer waits on the ring it holds with this
    // process's producer; a new producer process (a retry, say) comes to
    // the agent instead, which withdraws the ring: the consumer asks it.
    let size = 1 << 20;
    let consuming = std::thread::spawn({
        let opts = consumer.clone();
        move || receive(&opts)
    });
    std::thread::sleep(Duration::from_millis(300));
    let other = local_edge_probe(node, "send", &token, "e", "p", size as u64, &["--live"]);
    assert_success(&wait_within(other, LIMIT), "the new producer");
    let got = consuming.join().expect("the consumer");
    assert!(
        got == pattern(size, probe_seed()),
        "the new producer's stream"
    );
    // This process's producer, whose ring went unused, streams again.
    stream_here(&producer, &consumer, 64 << 10, 3);
    let paths = paths(node, 3);
    assert_eq!(paths[..2], [RingPath::New, RingPath::New], "{paths:?}");
    assert_ne!(paths[2], RingPath::Held, "the agent withdrew it: {paths:?}");
}

#[test]
fn a_producer_killed_mid_stream_over_its_held_ring_fails_its_consumer() {
    let (cluster, token, _, consumer) = one_edge_on_one_node();
    let node = cluster.node("node-a");
    // One producer process, two streams of 4 MiB, the second after a pause
    // in which this consumer waits on the ring they hold. The ring holds
    // 1 MiB: the producer is mid-stream until this consumer reads on.
    let size: usize = 4 << 20;
    let extra = [
        "--live",
        "--streams",
        "2",
        "--chunk",
        "65536",
        "--pause-ms",
        "300",
        "--blocking",
    ];
    let mut producer = local_edge_probe(node, "send", &token, "e", "p", size as u64, &extra);
    assert!(
        receive(&consumer) == pattern(size, probe_seed()),
        "the first stream"
    );
    let mut rx = blocking::Receiver::connect(&consumer).expect("receiver");
    let mut got = vec![0u8; 1 << 20];
    rx.read_exact(&mut got)
        .expect("the second stream's first MiB");
    producer.kill().expect("killing the producer");
    producer.wait().expect("the producer");
    let mut rest = Vec::new();
    let err = rx
        .read_to_end(&mut rest)
        .expect_err("a cut stream is an error, never a short success");
    assert!(got.len() + rest.len() < size, "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    drop(rx);
    // The consumer told the agent: the cut stream shows, failed.
    assert_failed_held(node);
}

/// The agent's status shows a failed stream of the edge over the held
/// ring, as an end told it.
fn assert_failed_held(node: &ClusterNode) {
    let status = node.agent.status();
    let failed = status["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .any(|c| {
            c["name"] == "wf/e/p>q"
                && c["state"] == "failed"
                && c["note"]
                    .as_str()
                    .is_some_and(|note| note.contains("over the ring its ends held"))
        });
    assert!(failed, "{status:#}");
}

#[test]
fn a_consumer_killed_mid_stream_over_its_held_ring_fails_its_producer_and_the_next_consumer_gets_the_next()
 {
    let (cluster, token, producer, _) = one_edge_on_one_node();
    let node = cluster.node("node-a");
    // One consumer process reading two streams of 4 MiB.
    let size: usize = 4 << 20;
    let extra = ["--streams", "2", "--blocking"];
    let mut consumer = local_edge_probe(node, "recv", &token, "e", "q", size as u64, &extra);
    send(&producer, size, probe_seed());
    // Its receiver waits on the ring they hold; the second stream goes
    // over it, and the consumer dies after its first MiB.
    std::thread::sleep(Duration::from_millis(300));
    let data = pattern(size, probe_seed());
    let sent = (|| -> Result<(), String> {
        let mut tx = blocking::Sender::open(&producer).map_err(|e| e.to_string())?;
        tx.write_all(&data[..1 << 20]).map_err(|e| e.to_string())?;
        consumer.kill().expect("killing the consumer");
        consumer.wait().expect("the consumer");
        tx.write_all(&data[1 << 20..]).map_err(|e| e.to_string())?;
        tx.finish().map(drop).map_err(|e| e.to_string())
    })();
    let err = sent.expect_err("a consumer that died mid-stream never verified it");
    assert!(err.contains("receiver"), "{err}");
    assert_failed_held(node);
    // A new consumer gets the next stream whole.
    let next = local_edge_probe(node, "recv", &token, "e", "q", 64 << 10, &[]);
    std::thread::sleep(Duration::from_millis(300));
    send(&producer, 64 << 10, probe_seed());
    assert_success(&wait_within(next, LIMIT), "the next consumer");
}

#[test]
fn a_stream_long_enough_for_progress_reports_keeps_its_ring_too() {
    let (cluster, _, producer, consumer) = one_edge_on_one_node();
    for i in 0..3u64 {
        let consuming = std::thread::spawn({
            let opts = consumer.clone();
            move || receive(&opts)
        });
        std::thread::sleep(Duration::from_millis(100));
        // Longer than the 500 ms between progress reports: both ends'
        // reporters run, and still hand their connections back.
        let data = pattern(2000, i);
        let mut tx = blocking::Sender::open(&producer).expect("sender");
        tx.write_all(&data[..1000]).expect("write");
        std::thread::sleep(Duration::from_millis(700));
        tx.write_all(&data[1000..]).expect("write");
        tx.finish().expect("the consumer verified the stream");
        assert!(consuming.join().expect("the consumer") == data);
    }
    assert_eq!(
        paths(cluster.node("node-a"), 3),
        [RingPath::New, RingPath::Held, RingPath::Held]
    );
}

#[test]
fn a_deleted_workflows_held_rings_carry_nothing_more() {
    let (cluster, _, producer, consumer) = one_edge_on_one_node();
    stream_here(&producer, &consumer, 64 << 10, 1);
    stream_here(&producer, &consumer, 64 << 10, 2);
    // The consumer waits on the ring it holds when the workflow goes: it
    // wakes and meets the deletion, as does the producer.
    let waiting = std::thread::spawn({
        let opts = consumer.clone();
        move || blocking::Receiver::connect(&opts).map(drop)
    });
    std::thread::sleep(Duration::from_millis(300));
    cluster.node("node-a").delete("wf").expect("delete");
    let refused = |err: floki_client::ClientError| {
        let message = err.to_string();
        assert!(message.contains("no such workflow channel"), "{message}");
    };
    refused(
        waiting
            .join()
            .expect("the consumer")
            .expect_err("a deleted workflow's consumer"),
    );
    refused(
        blocking::Sender::open(&producer)
            .map(drop)
            .expect_err("a deleted workflow's producer"),
    );
}

#[test]
fn warm_tokio_functions_on_an_edge_hold_their_ring_too() {
    // Both ends processes of the tokio client (floki-probe without
    // --blocking), each with three streams of the edge in turn.
    let (cluster, token, _, _) = one_edge_on_one_node();
    let node = cluster.node("node-a");
    let size: usize = 64 << 10;
    let consumer = local_edge_probe(
        node,
        "recv",
        &token,
        "e",
        "q",
        size as u64,
        &["--streams", "3"],
    );
    // The consumer waits first, as a warm consumer does.
    std::thread::sleep(Duration::from_millis(300));
    let extra = ["--streams", "3", "--live", "--pause-ms", "300"];
    let producer = local_edge_probe(node, "send", &token, "e", "p", size as u64, &extra);
    assert_success(&wait_within(producer, LIMIT), "the producer");
    assert_success(
        &wait_within(consumer, LIMIT),
        "the consumer (each stream checked)",
    );
    assert_eq!(
        paths(node, 3),
        [RingPath::New, RingPath::Held, RingPath::Held]
    );
}
