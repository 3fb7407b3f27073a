//! Warm functions that hold their stream's link across nodes carry the
//! stream's next use over it without asking either agent, and tell them
//! afterwards (docs/PROTOCOL.md, "Held links"). What a user checks is that
//! nothing the agents did before is lost on the way: a stream that starts
//! while its consumer is not reading is still stored and read whole later,
//! another consumer process still gets the stream, an end that dies
//! mid-stream fails the other end instead of handing it a short stream, and
//! a deleted workflow's held links carry nothing more.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use floki_client::blocking;
use floki_tests::{
    cluster::local_edge_probe,
    links::{
        LinkPath::Held, another_consumer_receives, one_edge_across_nodes, paths_on, probe_seed,
        receive, send, stream_here,
    },
    node::{assert_success, wait_within},
    pattern,
};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn warm_functions_stream_over_the_link_they_hold_and_both_agents_show_it() {
    let (cluster, _, producer, consumer) = one_edge_across_nodes();
    for i in 0..4 {
        stream_here(&producer, &consumer, (256 << 10) + i, i as u64);
    }
    for node in ["node-a", "node-b"] {
        let paths = paths_on(cluster.node(node), 4);
        assert!(
            paths[1..].iter().all(|path| *path == Held),
            "{node}: {paths:?}"
        );
    }
}

#[test]
fn a_start_while_its_consumer_is_not_reading_is_stored_and_read_whole_later() {
    let (_cluster, _, mut producer, consumer) = one_edge_across_nodes();
    // Stored if its consumer is not there.
    producer.live = false;
    stream_here(&producer, &consumer, 64 << 10, 1);
    // The consumer process holds the link and reads nothing: the producer's
    // stream is given back to its agent, which stores it; the producer is
    // done without its consumer.
    let sent = send(&producer, 3 << 20, 2);
    assert!(sent.stored, "the consumer's agent stored the stream");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        receive(&consumer) == pattern(3 << 20, 2),
        "the stored stream arrived changed"
    );
}

#[test]
fn another_consumer_process_gets_the_stream_while_this_one_holds_its_link() {
    let (cluster, token, producer, consumer) = one_edge_across_nodes();
    let b = cluster.node("node-b");
    stream_here(&producer, &consumer, 64 << 10, 1);
    // A new consumer process (a retry, say) waits, while this process holds
    // the link and reads nothing.
    another_consumer_receives(b, &token, &producer, 1 << 20);
    // This process's next stream still comes.
    stream_here(&producer, &consumer, 64 << 10, 2);
}

#[test]
fn a_producer_killed_mid_stream_over_its_held_link_fails_its_consumer() {
    let (cluster, token, _, consumer) = one_edge_across_nodes();
    let a = cluster.node("node-a");
    // One producer process, two streams of 4 MiB at 4 MiB/s, one after the
    // other: the second over the link it held.
    let size: usize = 4 << 20;
    let rate = size.to_string();
    let mut producer = local_edge_probe(
        a,
        "send",
        &token,
        "e",
        "p",
        size as u64,
        &[
            "--live",
            "--streams",
            "2",
            "--rate",
            &rate,
            "--chunk",
            "65536",
        ],
    );
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
}

#[test]
fn a_consumer_killed_mid_stream_over_its_held_link_fails_its_producer() {
    let (cluster, token, producer, _) = one_edge_across_nodes();
    let b = cluster.node("node-b");
    // One consumer process reading two streams of 4 MiB at 4 MiB/s.
    let size: usize = 4 << 20;
    let rate = size.to_string();
    let mut consumer = local_edge_probe(
        b,
        "recv",
        &token,
        "e",
        "q",
        size as u64,
        &["--streams", "2", "--rate", &rate],
    );
    send(&producer, size, probe_seed());
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        consumer.kill().expect("killing the consumer");
        consumer.wait().expect("the consumer");
    });
    let sent = (|| -> Result<(), String> {
        let mut tx = blocking::Sender::open(&producer).map_err(|e| e.to_string())?;
        tx.write_all(&pattern(size, probe_seed()))
            .map_err(|e| e.to_string())?;
        tx.finish().map(drop).map_err(|e| e.to_string())
    })();
    killer.join().expect("the killer");
    let err = sent.expect_err("a consumer that died mid-stream never verified it");
    assert!(err.contains("without confirming the end"), "{err}");
    // A new consumer gets the next stream whole.
    let next = local_edge_probe(b, "recv", &token, "e", "q", 64 << 10, &[]);
    std::thread::sleep(Duration::from_millis(300));
    send(&producer, 64 << 10, probe_seed());
    assert_success(&wait_within(next, LIMIT), "the next consumer");
}

#[test]
fn a_deleted_workflows_held_links_carry_nothing_more() {
    let (cluster, _, producer, consumer) = one_edge_across_nodes();
    stream_here(&producer, &consumer, 64 << 10, 1);
    stream_here(&producer, &consumer, 64 << 10, 2);
    cluster.node("node-a").delete("wf").expect("delete");
    std::thread::sleep(Duration::from_millis(300));
    let refused = |err: floki_client::ClientError| {
        let message = err.to_string();
        assert!(message.contains("no such workflow channel"), "{message}");
    };
    refused(
        blocking::Sender::open(&producer)
            .and_then(|mut tx| {
                let _ = tx.write_all(b"after the delete");
                tx.finish()
            })
            .expect_err("the producer's held link is gone with the workflow"),
    );
    refused(
        blocking::Receiver::connect(&consumer)
            .err()
            .expect("the consumer's held link is gone with the workflow"),
    );
}
