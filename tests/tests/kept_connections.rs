//! A function that opens one channel after another (a warm function, or
//! one with several peers) keeps its connection to the agent between them:
//! the agent takes the next hello on it after the end's `done`, and two
//! ends that shared a ring share it again on their next stream. What a
//! user checks: every stream arrives whole, the agent's counters show fewer
//! connections than requests, status says which streams went over a kept
//! ring, and an agent that restarted in between costs nothing but a new
//! connection. Across nodes the two functions keep the agents' link of
//! their stream: the stream's next use goes over it again, and a function
//! that did not keep it (a new process) is handed the link that was
//! started. The tokio client keeps them as the blocking one does.

use std::{
    io::{Read as _, Write as _},
    time::{Duration, Instant},
};

use floki_client::{ChannelOptions, blocking, workflow::EdgeOptions};
use floki_tests::{
    agent::AgentOptions,
    cluster::{Spec, local_edge_probe},
    links::{
        LinkPath::{Held, Kept, Lent, New},
        finished_in_order, one_edge_across_nodes, paths_on,
    },
    metrics::{get, node_with_metrics, sample},
    node::{TestNode, assert_success, spawn, wait_within},
    pattern, stream_seed,
};

const STREAMS: usize = 10;

/// Sends `STREAMS` streams one after another from this process, the `i`th
/// on channel `name(i)`, to a receiving thread of this process that reads
/// them in turn; each arrives whole. `lend(i)`: the receiver hands out its
/// ring's memory on stream `i` (as the Python package's views do).
fn streams_in_turn(
    agent: &str,
    name: impl Fn(usize) -> String + Send + Copy + 'static,
    sizes: impl Fn(usize) -> usize,
    lend: impl Fn(usize) -> bool + Send + 'static,
) {
    let receiving = std::thread::spawn({
        let agent = agent.to_owned();
        move || {
            (0..STREAMS)
                .map(|i| {
                    let opts = ChannelOptions::new(&agent, name(i));
                    let mut rx = blocking::Receiver::connect(&opts).expect("receiver");
                    if lend(i) {
                        assert!(rx.ring_memory().is_some(), "over a ring");
                    }
                    let mut got = Vec::new();
                    rx.read_to_end(&mut got).expect("a verified stream");
                    rx.finish().expect("verified");
                    got
                })
                .collect::<Vec<_>>()
        }
    });
    for i in 0..STREAMS {
        // Live: a sender that finishes before its receiver came is never
        // stored (a stored stream of a plain channel is replayed to every
        // later receiver of that name).
        let mut opts = ChannelOptions::new(agent, name(i));
        opts.live = true;
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
    let (node, metrics) = node_with_metrics("kept");
    let agent = format!("unix:{}", node.agent.socket.display());
    // From 1 byte to 3 MiB: streams that fit their ring and streams that
    // wrap around it.
    streams_in_turn(
        &agent,
        |i| format!("kept-{i}"),
        |i| 1 + i * 350_000,
        |_| false,
    );

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
        // A new channel name, but the same two ends: each took a
        // connection that held the last ring, and the agent rewound it.
        let reason = channel["reason"].as_str().expect("reason");
        let kept = reason.contains("kept from their last channel");
        assert_eq!(kept, i > 0, "stream {i}: {reason}");
    }
}

#[test]
fn a_connection_kept_to_an_agent_that_restarted_is_replaced_unseen() {
    let mut node = TestNode::start("kept-restart", AgentOptions::default());
    let agent = format!("unix:{}", node.agent.socket.display());
    streams_in_turn(&agent, |i| format!("before-{i}"), |_| 100_000, |_| false);
    // The connections this process keeps now lead to a process that is
    // gone; the next streams open as if nothing happened.
    node.agent.relaunch(&node.cgroup, AgentOptions::default());
    streams_in_turn(&agent, |i| format!("after-{i}"), |_| 100_000, |_| false);
    let channel = node
        .agent
        .wait_finished(&format!("after-{}", STREAMS - 1), LIMIT);
    assert_eq!(channel["state"], "done", "{channel:#}");
}

#[test]
fn a_stream_again_between_the_same_ends_goes_over_the_ring_they_kept() {
    let node = TestNode::start("kept-ring", AgentOptions::default());
    let agent = format!("unix:{}", node.agent.socket.display());
    // The same channel again and again; the receiver lends its ring's
    // memory out on stream 5, so that ring is not kept: stream 6 gets a
    // new one. Sizes from 1 byte to 20 MiB, in a ring of 8 MiB.
    let size = |i: usize| [1, 20 << 20, 64 << 10, 3 << 20][i % 4] + i;
    streams_in_turn(&agent, |_| "again".to_owned(), size, |i| i == 5);
    // A held stream takes its id when its end tells the agent, after the
    // next stream may have joined: each stream is known by its size.
    for stream in finished_in_order(&node.agent, "again", STREAMS) {
        let bytes = stream["bytes"].as_u64();
        let i = (0..STREAMS)
            .find(|&i| Some(size(i) as u64) == bytes)
            .expect("a stream of a size sent");
        assert_eq!(stream["transport"], "shm", "{stream:#}");
        let reason = stream["reason"].as_str().expect("reason");
        // Rewound by the agent, or held by the two (the receiver waited
        // first: docs/PROTOCOL.md, "Held rings").
        let kept = reason.contains("kept from their last channel") || reason.contains("held ring");
        assert_eq!(kept, !matches!(i, 0 | 6), "stream {i}: {reason}");
        // Rings on huge pages (the default) are kept like any other.
        assert_eq!(
            reason.contains("a new one on 2 MiB pages"),
            !kept,
            "stream {i}: {reason}"
        );
    }
}

#[test]
fn a_tokio_functions_streams_one_after_another_keep_their_connections_and_ring() {
    let (node, metrics) = node_with_metrics("kept-async");
    let agent = format!("unix:{}", node.agent.socket.display());
    // Sizes from 1 byte to 20 MiB, in a ring of 8 MiB.
    let size = |i: usize| [1, 20 << 20, 64 << 10, 3 << 20][i % 4] + i;
    let runtime = tokio_runtime();
    let got = runtime.block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let receiving = tokio::spawn({
            let opts = ChannelOptions::new(&agent, "again-async");
            async move {
                let mut got = Vec::new();
                for _ in 0..STREAMS {
                    let mut rx = floki_client::Receiver::connect(&opts)
                        .await
                        .expect("receiver");
                    let mut bytes = Vec::new();
                    rx.read_to_end(&mut bytes).await.expect("a verified stream");
                    rx.finish().await.expect("verified");
                    got.push(bytes);
                }
                got
            }
        });
        for i in 0..STREAMS {
            let mut opts = ChannelOptions::new(&agent, "again-async");
            opts.live = true;
            let mut tx = floki_client::Sender::open(&opts).await.expect("sender");
            tx.write_all(&pattern(size(i), i as u64))
                .await
                .expect("write");
            tx.finish().await.expect("the receiver verified the stream");
        }
        receiving.await.expect("the receiving task")
    });
    for (i, bytes) in got.iter().enumerate() {
        assert!(
            *bytes == pattern(size(i), i as u64),
            "stream {i} arrived changed ({} bytes)",
            bytes.len()
        );
    }

    let streams = finished_in_order(&node.agent, "again-async", STREAMS);
    let mut held = 0;
    for (i, stream) in streams.iter().enumerate() {
        assert_eq!(stream["transport"], "shm", "{stream:#}");
        let reason = stream["reason"].as_str().expect("reason");
        // Rewound by the agent, or held by the two, which asked nothing.
        let is_held = reason.contains("held ring");
        held += usize::from(is_held);
        let kept = reason.contains("kept from their last channel") || is_held;
        assert_eq!(kept, i > 0, "stream {i}: {reason}");
    }
    let (_, body) = get(&metrics, "/metrics");
    let requests = sample(&body, "floki_client_requests_total");
    let connections = sample(&body, "floki_client_connections_total");
    assert_eq!(requests, (2 * (STREAMS - held)) as f64, "{body}");
    assert!(
        connections <= STREAMS as f64,
        "{connections} connections for {requests} requests"
    );
}

#[test]
fn a_kept_connection_to_a_stopping_agent_is_given_up_like_a_new_one() {
    // The harness's agents wait 10 s for active channels when stopped.
    let node = TestNode::start("kept-stop", AgentOptions::default());
    let agent = format!("unix:{}", node.agent.socket.display());
    streams_in_turn(&agent, |i| format!("kept-stop-{i}"), |_| 1000, |_| false);
    // A stream in flight holds the agent in its graceful stop: it takes no
    // new channel, and its socket is gone.
    let mut receiver = spawn(&mut node.local_probe("recv", "in-flight", 1 << 30));
    let mut sender = spawn(
        node.local_probe("send", "in-flight", 1 << 30)
            .args(["--stall-after", "1048576"]),
    );
    let deadline = Instant::now() + LIMIT;
    while node.agent.status()["channels"]
        .as_array()
        .is_none_or(|channels| {
            !channels
                .iter()
                .any(|c| c["name"] == "in-flight" && c["bytes"].as_u64() > Some(0))
        })
    {
        assert!(Instant::now() < deadline, "the stream never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.agent.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    while node.agent.socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the agent never stopped taking channels"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // This process still holds connections to the stopping agent: the
    // hello on one of them is refused, then goes to the socket path as a
    // new connection would, and finds no agent.
    let refused = blocking::Sender::open(&ChannelOptions::new(&agent, "kept-stop-0")).err();
    // The stalled sender sleeps until it is killed: before any assertion.
    for probe in [&mut sender, &mut receiver] {
        let _ = probe.kill();
        let _ = probe.wait();
    }
    let refused = refused.expect("no agent takes the channel");
    assert!(
        matches!(refused, floki_client::ClientError::AgentUnreachable { .. }),
        "{refused}"
    );
}

#[test]
fn a_warm_function_asks_what_its_edge_looks_like_once_per_token() {
    let (node, metrics) = node_with_metrics("kept-describe");
    let agent = format!("unix:{}", node.agent.socket.display());
    let spec = |consumers: &[&str]| {
        let mut spec = Spec::new("wf").function("p", "test-node");
        for consumer in consumers {
            spec = spec.function(consumer, "test-node");
        }
        spec.edge("e", &["p"], consumers, "broadcast", "1MiB")
    };
    let token = node.agent.apply(&spec(&["q"]).yaml()).expect("apply");
    // Live: a consumer thread slow to start must not have its stream
    // stored, whose ends would be requests of the store's own.
    let mut producer = EdgeOptions::new(&agent, "wf", &token, "e", "p");
    producer.live = true;
    let consumer = EdgeOptions::new(&agent, "wf", &token, "e", "q");
    // A warm producer and consumer, run after run.
    const RUNS: usize = 3;
    for run in 0..RUNS {
        let data = pattern(100_000 + run, run as u64);
        let consuming = std::thread::spawn({
            let consumer = consumer.clone();
            move || {
                let (_, receivers) =
                    floki_client::workflow::blocking::receivers(&consumer).expect("receivers");
                receivers
                    .into_iter()
                    .map(|(_, mut rx)| {
                        let mut got = Vec::new();
                        rx.read_to_end(&mut got).expect("a verified stream");
                        rx.finish().expect("verified");
                        got
                    })
                    .collect::<Vec<_>>()
            }
        });
        let (info, senders) =
            floki_client::workflow::blocking::senders(&producer).expect("senders");
        assert_eq!(info.peers, ["q"]);
        for (_, mut tx) in senders {
            tx.write_all(&data).expect("write");
            tx.finish().expect("the consumer verified the stream");
        }
        let got = consuming.join().expect("the consumer");
        assert!(got == [data], "run {run}: the stream arrived changed");
    }
    // Each function asked once; then one hello per stream and end (the
    // last end's may still be on its way).
    let expected = (2 + 2 * RUNS) as f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (requests, body) = loop {
        let (_, body) = get(&metrics, "/metrics");
        let requests = sample(&body, "floki_client_requests_total");
        if requests >= expected || std::time::Instant::now() > deadline {
            break (requests, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(requests, expected, "{body}");

    // A changed spec is applied (after a delete) with a new token: asked
    // anew, it describes the new edge. The old token's answer is still
    // known here, but its streams are refused as any unknown token's.
    node.agent.delete("wf").expect("delete");
    let token_now = node.agent.apply(&spec(&["q", "r"]).yaml()).expect("apply");
    assert_ne!(token_now, token, "a new spec, a new token");
    let now = EdgeOptions::new(&agent, "wf", &token_now, "e", "p");
    let info = floki_client::workflow::blocking::describe(&now).expect("describe");
    assert_eq!(info.peers, ["q", "r"]);
    let (_, body) = get(&metrics, "/metrics");
    assert_eq!(
        sample(&body, "floki_client_requests_total"),
        (3 + 2 * RUNS) as f64,
        "{body}"
    );
    let refused = floki_client::workflow::blocking::senders(&producer)
        .err()
        .expect("the old token is refused");
    assert!(
        refused
            .to_string()
            .contains("no such workflow channel for this token"),
        "{refused}"
    );
}

#[test]
fn a_stream_across_nodes_again_goes_over_the_link_its_functions_kept() {
    let (cluster, token, producer, consumer) = one_edge_across_nodes();
    let (a, b) = (cluster.node("node-a"), cluster.node("node-b"));
    // Who runs each end of each stream: this process (which keeps its
    // connections and links between streams) or a new probe process.
    let ends = [
        (Here, Here),
        (Here, Here),
        // A new producer: the spare link; the consumer here is handed it
        // in place of the one it kept.
        (Probe, Here),
        // The producer here starts the link it kept; the new consumer is
        // handed it, and so is the consumer here next, which kept another.
        (Here, Probe),
        (Here, Here),
        (Here, Here),
    ];
    // The data a probe sends and checks (its default seed).
    let seed = stream_seed(1, floki_client::Pattern::OneToOne, "p", "q");
    for (i, (sends, receives)) in ends.into_iter().enumerate() {
        // From 1 byte to 3 MiB in a window of 1 MiB.
        let size = [1, 3 << 20, 64 << 10][i % 3] + i;
        let consuming = match receives {
            Here => Consuming::Thread(std::thread::spawn({
                let opts = consumer.clone();
                move || {
                    let mut rx = blocking::Receiver::connect(&opts).expect("receiver");
                    let mut got = Vec::new();
                    rx.read_to_end(&mut got).expect("a verified stream");
                    rx.finish().expect("verified");
                    got
                }
            })),
            Probe => Consuming::Probe(local_edge_probe(
                b,
                "recv",
                &token,
                "e",
                "q",
                size as u64,
                &[],
            )),
        };
        match sends {
            Here => {
                let mut tx = blocking::Sender::open(&producer).expect("sender");
                tx.write_all(&pattern(size, seed)).expect("write");
                tx.finish().expect("the consumer verified the stream");
            }
            Probe => assert_success(
                &wait_within(
                    local_edge_probe(a, "send", &token, "e", "p", size as u64, &["--live"]),
                    LIMIT,
                ),
                "a new producer",
            ),
        }
        match consuming {
            Consuming::Thread(thread) => {
                let got = thread.join().expect("the consumer");
                let want = pattern(size, seed);
                let first = got.iter().zip(&want).position(|(g, w)| g != w);
                assert!(
                    got == want,
                    "stream {i} arrived changed: {} bytes of {size}, first difference at {first:?}",
                    got.len()
                );
            }
            // The probe checks the bytes of its own pattern.
            Consuming::Probe(child) => assert_success(&wait_within(child, LIMIT), "a new consumer"),
        }
    }
    // Which streams went over a link their end held, as each agent's
    // status says: the producer here starts the link it kept whoever
    // consumes; the consumer here reads the link it kept when that is the
    // one started, and is told to ask otherwise (a new producer's spare
    // link, or the link a new consumer was handed since).
    assert_eq!(
        paths_on(a, ends.len()),
        [New, Held, New, Held, Held, Held],
        "producer's node"
    );
    // Whether it reads the start itself or its agent does depends on who
    // came first: a start that comes before the consumer waits goes back
    // to the agent, which hands the consumer the same link in place. A
    // link of its own is handed, or lent to a consumer that waited first.
    let consumed = paths_on(b, ends.len());
    let reused = consumed
        .iter()
        .map(|path| matches!(path, Kept | Held))
        .collect::<Vec<_>>();
    assert_eq!(
        reused,
        [false, true, false, false, false, true],
        "consumer's node: {consumed:?}"
    );
}

#[test]
fn a_producer_that_bounds_its_pairing_across_nodes_waits_for_its_consumer_within_it() {
    let (_cluster, _, mut producer, consumer) = one_edge_across_nodes();
    producer.pair_timeout = Some(Duration::from_secs(10));
    // Its consumer comes a little later, three times: over a new link, then
    // over the one both kept. The producer writes only once the consumer
    // said it is there (its first credit), which over a kept link is all
    // it hears before the ack.
    for i in 0..3 {
        let size = (64 << 10) + i;
        let consuming = std::thread::spawn({
            let opts = consumer.clone();
            move || {
                std::thread::sleep(Duration::from_millis(200));
                let mut rx = blocking::Receiver::connect(&opts).expect("receiver");
                let mut got = Vec::new();
                rx.read_to_end(&mut got).expect("a verified stream");
                rx.finish().expect("verified");
                got
            }
        });
        let mut tx = blocking::Sender::open(&producer).expect("sender");
        tx.write_all(&pattern(size, i as u64)).expect("write");
        tx.finish().expect("the consumer verified the stream");
        let got = consuming.join().expect("the consumer");
        assert!(got == pattern(size, i as u64), "stream {i} arrived changed");
    }
    // A consumer that does not come: the producer says so within its bound.
    producer.pair_timeout = Some(Duration::from_millis(300));
    let started = Instant::now();
    let failed = blocking::Sender::open(&producer).and_then(|mut tx| {
        let _ = tx.write_all(b"no one reads this");
        tx.finish()
    });
    let err = failed.expect_err("no consumer came").to_string();
    assert!(
        err.contains("no receiver joined channel") && err.contains("300ms"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The tokio runtime a function of these tests runs on.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn a_tokio_functions_stream_across_nodes_again_goes_over_the_link_it_kept() {
    let (cluster, _, producer, consumer) = one_edge_across_nodes();
    const AGAIN: usize = 4;
    // From 1 byte to 3 MiB in a window of 1 MiB.
    let size = |i: usize| [1, 3 << 20, 64 << 10][i % 3] + i;
    let runtime = tokio_runtime();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for i in 0..AGAIN {
            let consuming = tokio::spawn({
                let opts = consumer.clone();
                async move {
                    let mut rx = floki_client::Receiver::connect(&opts)
                        .await
                        .expect("receiver");
                    let mut got = Vec::new();
                    rx.read_to_end(&mut got).await.expect("a verified stream");
                    rx.finish().await.expect("verified");
                    got
                }
            });
            let mut tx = floki_client::Sender::open(&producer).await.expect("sender");
            tx.write_all(&pattern(size(i), i as u64))
                .await
                .expect("write");
            tx.finish().await.expect("the consumer verified the stream");
            let got = consuming.await.expect("the consumer");
            assert!(
                got == pattern(size(i), i as u64),
                "stream {i} arrived changed: {} bytes of {}",
                got.len(),
                size(i)
            );
        }
    });
    // Every stream after the first went over the link both functions held
    // (the consumer reads the start itself when it waited first; its agent
    // hands it the same link in place otherwise).
    assert_eq!(
        paths_on(cluster.node("node-a"), AGAIN),
        [New, Held, Held, Held],
        "node-a"
    );
    // The first over a link of its own: handed, or lent to the consumer
    // if it waited first.
    let consumed = paths_on(cluster.node("node-b"), AGAIN);
    assert!(
        matches!(consumed[0], New | Lent)
            && consumed[1..].iter().all(|path| matches!(path, Held | Kept)),
        "node-b: {consumed:?}"
    );
}

/// Who runs an end of a stream across nodes.
#[derive(Clone, Copy)]
enum End {
    /// This test's process.
    Here,
    /// A new `floki-probe` on the end's node.
    Probe,
}
use End::{Here, Probe};

enum Consuming {
    Thread(std::thread::JoinHandle<Vec<u8>>),
    Probe(std::process::Child),
}

const LIMIT: Duration = Duration::from_secs(60);
