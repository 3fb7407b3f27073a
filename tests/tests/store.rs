//! The store: producers that exit before their consumers start, on one node
//! and across two; replays; budgets and tiers (memory, disk, S3); restarts,
//! corruption, store full, retention and delete. Real agents, real clients.

use std::{
    path::{Path, PathBuf},
    process::{Child, Output},
    time::{Duration, Instant},
};

use floki_tests::{
    agent::AgentOptions,
    cluster::{self, Cluster, ClusterNode, Spec, local_edge_probe},
    node::{TestNode, assert_success, file_digest, run_within, spawn, wait_within},
    proc_stats::peak_rss_bytes,
    servers::{Place, Server},
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(120);

/// The one JSON line a probe prints, once it exited successfully.
fn probe_report(out: &Output, what: &str) -> Value {
    assert_success(out, what);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("{what} printed {text}"))
}

/// Whether every stream a probe reports went through the agent's store.
fn all_stored(report: &Value) -> bool {
    match report["streams"].as_array() {
        Some(streams) => streams.iter().all(|s| s["stored"] == true),
        None => report["stored"] == true,
    }
}

/// The streams node's agent holds in its store.
fn stored(status: &Value) -> Vec<Value> {
    status["store"]["streams"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until the store of `status_of` holds `n` complete streams.
fn wait_stored(status_of: impl Fn() -> Value, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_of();
        let streams = stored(&status);
        if streams.iter().filter(|s| s["state"] == "complete").count() >= n {
            return streams;
        }
        assert!(
            Instant::now() < deadline,
            "the store did not hold {n} complete streams: {:#}",
            status["store"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files in the store's spill directory.
fn spill_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// A workflow probe on `node`: `verb` as `function` on `edge`.
fn edge_probe(
    node: &ClusterNode,
    unix: bool,
    verb: &str,
    token: &str,
    edge: &str,
    function: &str,
    bytes: u64,
) -> Child {
    if unix {
        local_edge_probe(node, verb, token, edge, function, bytes, &[])
    } else {
        cluster::edge_probe(node, verb, token, edge, function, bytes, &[])
    }
}

/// Waits until `edge` of `wf` is ready on `node`.
fn wait_ready(node: &ClusterNode, edges: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = node.agent.status();
        let ready = status["workflows"][0]["edges"]
            .as_array()
            .map(|all| {
                edges.iter().all(|name| {
                    all.iter()
                        .any(|e| e["name"] == *name && e["state"] == "ready")
                })
            })
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "edges not ready: {status:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One edge of each pattern, functions placed as `place` says (`a`, `b`).
struct Edges {
    /// (edge, pattern, producers, consumers)
    edges: Vec<(String, &'static str, Vec<String>, Vec<String>)>,
}

impl Edges {
    fn every_pattern(tag: &str) -> Self {
        let names = |prefix: &str, n: usize| -> Vec<String> {
            (0..n).map(|i| format!("{tag}-{prefix}{i}")).collect()
        };
        let edges = [
            ("one-to-one", 1, 1),
            ("broadcast", 1, 2),
            ("gather", 2, 1),
            ("shuffle", 2, 2),
        ]
        .into_iter()
        .map(|(pattern, p, c)| {
            let edge = format!("{tag}-{pattern}");
            (
                edge.clone(),
                pattern,
                names(&format!("{pattern}-p"), p),
                names(&format!("{pattern}-c"), c),
            )
        })
        .collect();
        Self { edges }
    }

    fn add_to(&self, mut spec: Spec, producers_on: &str, consumers_on: &str) -> Spec {
        for (edge, pattern, producers, consumers) in &self.edges {
            for p in producers {
                spec = spec.function(p, producers_on);
            }
            for c in consumers {
                spec = spec.function(c, consumers_on);
            }
            let from: Vec<&str> = producers.iter().map(String::as_str).collect();
            let to: Vec<&str> = consumers.iter().map(String::as_str).collect();
            spec = spec.edge(edge, &from, &to, pattern, "4MiB");
        }
        spec
    }
}

#[test]
fn every_pattern_is_stored_when_producers_exit_before_consumers_start() {
    let cluster = Cluster::start(&["node-a", "node-b"]);
    cluster.wait_connected();
    let here = Edges::every_pattern("here");
    let across = Edges::every_pattern("across");
    let spec = across.add_to(
        here.add_to(Spec::new("wf"), "node-a", "node-a"),
        "node-a",
        "node-b",
    );
    let token = cluster.node("node-a").apply(&spec.yaml()).expect("apply");
    let names: Vec<&str> = here
        .edges
        .iter()
        .chain(&across.edges)
        .map(|e| e.0.as_str())
        .collect();
    wait_ready(cluster.node("node-a"), &names);
    wait_ready(cluster.node("node-b"), &names);
    let bytes = 12 * MIB;

    // Producers first, each to completion: their agents store the streams
    // (three times the edge's buffer: the producer is never done early).
    let mut producers = Vec::new();
    for (edges, unix) in [(&here, false), (&across, true)] {
        for (edge, _, from, _) in &edges.edges {
            for p in from {
                producers.push((
                    edge_probe(cluster.node("node-a"), unix, "send", &token, edge, p, bytes),
                    p.clone(),
                ));
            }
        }
    }
    for (child, p) in producers {
        let report = probe_report(&wait_within(child, LIMIT), &format!("producer {p}"));
        assert!(
            all_stored(&report),
            "producer {p} was not told its streams are stored: {report}"
        );
    }
    // Same-node streams are in node-a's store, cross-node ones were pushed
    // ahead into node-b's.
    let streams_of = |edges: &Edges| -> usize {
        edges
            .edges
            .iter()
            .map(|(_, _, p, c)| p.len() * c.len())
            .sum()
    };
    let on_a = wait_stored(|| cluster.node("node-a").agent.status(), streams_of(&here));
    let on_b = wait_stored(
        || cluster.node("node-b").agent.status(),
        streams_of(&across),
    );
    assert!(
        on_a.iter()
            .all(|s| s["name"].as_str().unwrap().starts_with("wf/here-")),
        "{on_a:#?}"
    );
    assert!(
        on_b.iter()
            .all(|s| s["name"].as_str().unwrap().starts_with("wf/across-")),
        "{on_b:#?}"
    );

    // Then the consumers, twice (a retried function): every byte checked.
    for attempt in 0..2 {
        let mut consumers = Vec::new();
        for (edges, node, unix) in [(&here, "node-a", true), (&across, "node-b", false)] {
            for (edge, _, _, to) in &edges.edges {
                for c in to {
                    consumers.push((
                        edge_probe(cluster.node(node), unix, "recv", &token, edge, c, bytes),
                        c.clone(),
                    ));
                }
            }
        }
        for (child, c) in consumers {
            let report = probe_report(
                &wait_within(child, LIMIT),
                &format!("consumer {c}, attempt {attempt}"),
            );
            assert!(
                all_stored(&report),
                "consumer {c} did not read from the store: {report}"
            );
        }
    }
    for node in ["node-a", "node-b"] {
        let status = cluster.node(node).agent.status();
        for stream in stored(&status) {
            assert_eq!(stream["replays"], 2, "{stream:#}");
        }
        assert!(
            status["store"]["replays"].as_u64().unwrap() >= 2,
            "{:#}",
            status["store"]
        );
    }
}

#[test]
fn live_streams_bypass_the_store_and_stored_ones_replay_until_retention_ends() {
    let node = TestNode::start(
        "store-live",
        AgentOptions {
            extra: vec!["--store-retain".into(), "3s".into()],
            ..AgentOptions::default()
        },
    );
    let dir = node.agent.dir().to_owned();
    let input = dir.join("input.bin");
    std::fs::write(&input, floki_tests::pattern(5 * MIB as usize, 7)).unwrap();

    // Both ends there: live, nothing stored, nothing on disk.
    let recv = spawn(
        node.local_cli("recv", "both")
            .arg("-o")
            .arg(dir.join("live.bin")),
    );
    std::thread::sleep(Duration::from_millis(300));
    let send = run_within(node.local_cli("send", "both").arg(&input), LIMIT);
    assert_success(&send, "live sender");
    assert_success(&wait_within(recv, LIMIT), "live receiver");
    let said = String::from_utf8_lossy(&send.stderr);
    assert!(said.contains("the receiver verified it"), "{said}");
    assert_eq!(file_digest(&input), file_digest(&dir.join("live.bin")));
    let status = node.agent.status();
    assert!(stored(&status).is_empty(), "{:#}", status["store"]);
    assert_eq!(status["store"]["memory_bytes"], 0);
    assert!(spill_files(&node.agent.store_dir()).is_empty());

    // No receiver: the sender finishes, told "stored".
    let send = run_within(node.local_cli("send", "later").arg(&input), LIMIT);
    assert_success(&send, "sender without receiver");
    let said = String::from_utf8_lossy(&send.stderr);
    assert!(said.contains("stored by the agent"), "{said}");
    // Read twice, the same bytes; the receiver is told where they came from.
    for attempt in 0..2 {
        let out = dir.join(format!("later-{attempt}.bin"));
        let recv = run_within(node.cli("recv", "later").arg("-o").arg(&out), LIMIT);
        assert_success(&recv, "late receiver");
        assert!(String::from_utf8_lossy(&recv.stderr).contains("from the agent's store"));
        assert_eq!(file_digest(&input), file_digest(&out));
    }

    // `--live`: the sender waits for its receiver, and gives up after its
    // timeout.
    let send = run_within(
        node.local_cli("send", "waits")
            .arg(&input)
            .args(["--live", "--timeout", "2"]),
        LIMIT,
    );
    assert!(!send.status.success());
    let said = String::from_utf8_lossy(&send.stderr);
    assert!(said.contains("no receiver joined"), "{said}");

    // Past its retention the stream is gone: a receiver waits for a sender.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stored(&node.agent.status()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stream outlived its retention"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let recv = run_within(
        node.cli("recv", "later")
            .args(["--timeout", "1", "-o"])
            .arg(dir.join("gone.bin")),
        LIMIT,
    );
    assert!(
        !recv.status.success(),
        "a stream past its retention was served"
    );
}

/// Inputs of `bytes` each for a producer's two runs, different bytes:
/// `first.bin` and `second.bin` in `dir`.
fn two_runs_inputs(dir: &Path, bytes: u64) -> (PathBuf, PathBuf) {
    let (first, second) = (dir.join("first.bin"), dir.join("second.bin"));
    std::fs::write(&first, floki_tests::pattern(bytes as usize, 1)).unwrap();
    std::fs::write(&second, floki_tests::pattern(bytes as usize, 2)).unwrap();
    (first, second)
}

#[test]
fn a_consumer_reading_a_stream_its_producer_replaces_is_told_so_not_given_a_short_one() {
    let node = TestNode::start("store-replaced", AgentOptions::default());
    let dir = node.agent.dir().to_owned();
    let (first, second) = two_runs_inputs(&dir, 32 * MIB);
    assert_success(
        &run_within(node.local_cli("send", "rerun").arg(&first), LIMIT),
        "first run's producer",
    );
    // A consumer of the stored stream that stalls: its output is a pipe
    // nobody reads yet, and its window is the smallest.
    let mut reading = spawn(node.cli("recv", "rerun").args(["--window", "64KiB"]));
    std::thread::sleep(Duration::from_millis(500));
    // The producer runs again: its stream replaces the stored one.
    let send = run_within(node.local_cli("send", "rerun").arg(&second), LIMIT);
    assert_success(&send, "second run's producer");
    assert!(String::from_utf8_lossy(&send.stderr).contains("stored by the agent"));
    let mut read = Vec::new();
    std::io::Read::read_to_end(reading.stdout.as_mut().unwrap(), &mut read).unwrap();
    let recv = wait_within(reading, LIMIT);
    assert!(!recv.status.success(), "a replaced stream read as complete");
    let said = String::from_utf8_lossy(&recv.stderr);
    assert!(
        said.contains("was replaced: its producer ran again"),
        "{said}"
    );
    assert!(read.len() < 32 * MIB as usize, "read {} bytes", read.len());
    // Run again, the consumer reads the second run's stream whole.
    let out = dir.join("again.bin");
    assert_success(
        &run_within(node.cli("recv", "rerun").arg("-o").arg(&out), LIMIT),
        "the consumer run again",
    );
    assert_eq!(file_digest(&second), file_digest(&out));
}

#[test]
fn a_consumer_reads_only_a_stream_stored_in_its_own_run() {
    let node = TestNode::start("store-runs", AgentOptions::default());
    let dir = node.agent.dir().to_owned();
    let (first, second) = two_runs_inputs(&dir, 4 * MIB);

    // Run 1's producer, no consumer yet: its stream is stored with its run.
    let send = run_within(
        node.local_cli("send", "runs")
            .arg(&first)
            .args(["--run", "run-1"]),
        LIMIT,
    );
    assert_success(&send, "run 1's producer");
    assert!(String::from_utf8_lossy(&send.stderr).contains("stored by the agent"));
    let held = stored(&node.agent.status());
    assert_eq!(held[0]["run"], "run-1", "{held:#?}");
    // Run 1's consumer, and its retry: served from the store.
    for attempt in 0..2 {
        let out = dir.join(format!("run-1-{attempt}.bin"));
        let recv = run_within(
            node.cli("recv", "runs")
                .args(["--run", "run-1", "-o"])
                .arg(&out),
            LIMIT,
        );
        assert_success(&recv, "run 1's consumer");
        assert!(String::from_utf8_lossy(&recv.stderr).contains("from the agent's store"));
        assert_eq!(file_digest(&first), file_digest(&out));
    }

    // Run 2's consumer starts before its producer (its run from the
    // environment, as an orchestrator sets it): run 1's stream is not its
    // stream, so it waits.
    let out = dir.join("run-2.bin");
    let mut waiting = spawn(
        node.cli("recv", "runs")
            .env("FLOKI_RUN", "run-2")
            .arg("-o")
            .arg(&out),
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "run 2's consumer did not wait for its producer"
    );
    let send = run_within(
        node.local_cli("send", "runs")
            .arg(&second)
            .env("FLOKI_RUN", "run-2"),
        LIMIT,
    );
    assert_success(&send, "run 2's producer");
    assert!(String::from_utf8_lossy(&send.stderr).contains("the receiver verified it"));
    let recv = wait_within(waiting, LIMIT);
    assert_success(&recv, "run 2's consumer");
    assert!(!String::from_utf8_lossy(&recv.stderr).contains("from the agent's store"));
    assert_eq!(file_digest(&second), file_digest(&out));

    // A consumer that says no run is served whatever is stored.
    let out = dir.join("any.bin");
    assert_success(
        &run_within(node.cli("recv", "runs").arg("-o").arg(&out), LIMIT),
        "a consumer without a run",
    );
    assert_eq!(file_digest(&first), file_digest(&out));

    // A run with a space: refused, with what a run may be.
    let recv = run_within(
        node.cli("recv", "runs")
            .args(["--run", "run 3", "--timeout", "5"]),
        LIMIT,
    );
    assert!(!recv.status.success());
    let said = String::from_utf8_lossy(&recv.stderr);
    assert!(
        said.contains(
            "run \"run 3\" (5 bytes) is invalid: use 1 to 255 printable ASCII characters, no spaces"
        ),
        "{said}"
    );
}

#[test]
fn a_memory_budget_of_64_mib_holds_while_512_mib_are_stored() {
    let node = TestNode::start(
        "store-budget",
        AgentOptions {
            extra: vec!["--store-memory".into(), "64MiB".into()],
            ..AgentOptions::default()
        },
    );
    let before = peak_rss_bytes(node.agent.pid());
    let bytes = 512 * MIB;
    let report = probe_report(
        &run_within(&mut node.local_probe("send", "big", bytes), LIMIT),
        "producer of 512 MiB",
    );
    assert!(all_stored(&report), "{report}");
    let status = node.agent.status();
    let store = &status["store"];
    assert!(
        store["memory_bytes"].as_u64().unwrap() <= 64 * MIB,
        "{store:#}"
    );
    assert_eq!(
        store["disk_bytes"].as_u64().unwrap() >> 20,
        512,
        "{store:#}"
    );
    assert_eq!(stored(&status)[0]["tier"], "disk", "{store:#}");
    // The agent's peak memory: its own, a ring (the window) and at most
    // the budget, never the stream.
    let peak = peak_rss_bytes(node.agent.pid());
    assert!(
        peak < before + 64 * MIB + 8 * MIB + 32 * MIB,
        "the agent peaked at {} MiB (from {} MiB) storing 512 MiB with a 64 MiB budget",
        peak >> 20,
        before >> 20
    );
    // On disk: the stream once, in its records (headers of a few bytes).
    let on_disk: u64 = spill_files(&node.agent.store_dir())
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert!(
        on_disk >= bytes && on_disk < bytes + bytes / 100,
        "{on_disk} bytes on disk"
    );
    let read = probe_report(
        &run_within(&mut node.local_probe("recv", "big", bytes), LIMIT),
        "consumer of 512 MiB",
    );
    assert!(all_stored(&read));
}

#[test]
fn the_memory_budget_counts_what_the_agent_holds_when_a_socket_feeds_the_store() {
    // Over a socket (the TCP port; across nodes, the link), reads return far
    // less than a chunk: what the budget counts is still what the agent
    // holds. 48 MiB kept in memory raise its peak by about that much.
    let node = TestNode::start(
        "store-budget-tcp",
        AgentOptions {
            extra: vec!["--store-memory".into(), "64MiB".into()],
            ..AgentOptions::default()
        },
    );
    let before = peak_rss_bytes(node.agent.pid());
    let bytes = 48 * MIB;
    let report = probe_report(
        // Small, paced writes: the store's reads see one at a time.
        &run_within(
            node.probe("send", "in-memory", bytes).args([
                "--writes",
                "fixed:16384",
                "--rate",
                &(96 * MIB).to_string(),
            ]),
            LIMIT,
        ),
        "producer of 48 MiB over TCP",
    );
    assert!(all_stored(&report), "{report}");
    let in_memory = stored(&node.agent.status())
        .into_iter()
        .find(|s| s["name"] == "in-memory")
        .expect("the stream is stored");
    assert_eq!(in_memory["tier"], "memory", "{in_memory:#}");
    let peak = peak_rss_bytes(node.agent.pid());
    assert!(
        peak < before + bytes + 32 * MIB,
        "the agent peaked at {} MiB (from {} MiB) holding 48 MiB in memory",
        peak >> 20,
        before >> 20
    );
}

/// The data file of the one stream spilled in `dir`.
fn spill_data_file(dir: &Path) -> PathBuf {
    spill_files(dir)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "stream"))
        .unwrap_or_else(|| panic!("no spilled stream in {}", dir.display()))
}

#[test]
fn a_flipped_byte_in_a_spill_file_is_an_error_not_wrong_bytes() {
    let node = TestNode::start(
        "store-flip",
        AgentOptions {
            extra: vec!["--store-memory".into(), "0".into()],
            ..AgentOptions::default()
        },
    );
    let bytes = 24 * MIB;
    let report = probe_report(
        &run_within(&mut node.local_probe("send", "flip", bytes), LIMIT),
        "producer",
    );
    assert!(all_stored(&report));
    let data = spill_data_file(&node.agent.store_dir());
    let mut contents = std::fs::read(&data).unwrap();
    let at = contents.len() / 2;
    contents[at] ^= 0x01;
    std::fs::write(&data, contents).unwrap();

    let out = node.agent.dir().join("flip.bin");
    let recv = run_within(node.local_cli("recv", "flip").arg("-o").arg(&out), LIMIT);
    assert!(!recv.status.success(), "a damaged stream was delivered");
    let said = String::from_utf8_lossy(&recv.stderr);
    assert!(said.contains("corrupted"), "{said}");
    assert!(
        !out.exists(),
        "the output file appeared for a damaged stream"
    );
}

#[test]
fn after_kill_9_spilled_streams_are_read_intact_and_memory_ones_are_lost_with_an_error() {
    let opts = AgentOptions {
        extra: vec!["--store-memory".into(), "16MiB".into()],
        ..AgentOptions::default()
    };
    let mut node = TestNode::start("store-restart", opts.clone());
    let small = 2 * MIB;
    let large = 48 * MIB;
    for (channel, bytes) in [("small", small), ("large", large)] {
        let report = probe_report(
            &run_within(&mut node.local_probe("send", channel, bytes), LIMIT),
            channel,
        );
        assert!(all_stored(&report));
    }
    let tiers: Vec<(String, String)> = stored(&node.agent.status())
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["tier"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [
            ("large".into(), "disk".into()),
            ("small".into(), "memory".into())
        ]
    );

    // relaunch kills the agent with SIGKILL first.
    let cgroup = &node.cgroup;
    node.agent.relaunch(cgroup, opts);
    let status = node.agent.status();
    assert_eq!(
        status["store"]["lost"],
        serde_json::json!(["small"]),
        "{:#}",
        status["store"]
    );

    let read = probe_report(
        &run_within(&mut node.local_probe("recv", "large", large), LIMIT),
        "spilled stream after kill -9",
    );
    assert!(all_stored(&read));
    let out = node.agent.dir().join("small.bin");
    let recv = run_within(node.local_cli("recv", "small").arg("-o").arg(&out), LIMIT);
    assert!(!recv.status.success(), "a lost stream was served");
    let said = String::from_utf8_lossy(&recv.stderr);
    assert!(
        said.contains("is lost") && said.contains("run its producer again"),
        "{said}"
    );
    assert!(!out.exists());
}

#[test]
fn store_full_is_an_error_at_the_producer_and_keeps_what_was_stored() {
    let node = TestNode::start(
        "store-full",
        AgentOptions {
            extra: vec![
                "--store-memory".into(),
                "8MiB".into(),
                "--store-disk".into(),
                "32MiB".into(),
            ],
            ..AgentOptions::default()
        },
    );
    let first = 20 * MIB;
    let report = probe_report(
        &run_within(&mut node.local_probe("send", "fits", first), LIMIT),
        "first producer",
    );
    assert!(all_stored(&report));
    let out = run_within(&mut node.local_probe("send", "too-big", 40 * MIB), LIMIT);
    assert!(
        !out.status.success(),
        "a producer was told a stream the store could not hold is stored"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("store is full") && said.contains("--store-disk"),
        "{said}"
    );
    let status = node.agent.status();
    assert_eq!(status["store"]["refused_full"], 1, "{:#}", status["store"]);
    let streams = stored(&status);
    let names: Vec<&str> = streams
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fits"]);
    let read = probe_report(
        &run_within(&mut node.local_probe("recv", "fits", first), LIMIT),
        "the first stream",
    );
    assert!(all_stored(&read));
}

#[test]
fn an_edge_without_store_waits_and_delete_removes_what_was_stored() {
    let cluster = Cluster::start_with(&["node-a"], &["--store-memory", "4MiB"]);
    let spec = Spec::new("wf")
        .function("p", "node-a")
        .function("q", "node-a")
        .function("r", "node-a")
        .function("s", "node-a")
        .edge("small", &["p"], &["q"], "one-to-one", "1MiB")
        .edge("large", &["r"], &["s"], "one-to-one", "1MiB")
        .edge_option("retain", "1h")
        .edge("waits", &["p"], &["s"], "one-to-one", "1MiB")
        .edge_option("store", "false");
    let node = cluster.node("node-a");
    let token = node.apply(&spec.yaml()).expect("apply");
    wait_ready(node, &["small", "large", "waits"]);
    for (edge, function, bytes) in [("small", "p", MIB), ("large", "r", 16 * MIB)] {
        let report = probe_report(
            &wait_within(
                edge_probe(node, true, "send", &token, edge, function, bytes),
                LIMIT,
            ),
            edge,
        );
        assert!(all_stored(&report), "{report}");
    }
    let streams = wait_stored(|| node.agent.status(), 2);
    let tiers: Vec<&str> = streams
        .iter()
        .map(|s| s["tier"].as_str().unwrap())
        .collect();
    assert_eq!(tiers, ["disk", "memory"], "{streams:#?}");
    // `retain: 1h` counts down; without one, until the workflow goes.
    assert!(streams[0]["expires_in_secs"].as_u64().unwrap() <= 3600);
    assert!(streams[1]["expires_in_secs"].is_null());
    let status = node.agent.status();
    let edge = &status["workflows"][0]["edges"][1]["streams"][0];
    assert!(
        edge["stored"]
            .as_str()
            .unwrap_or_default()
            .starts_with("stored: disk"),
        "{edge:#}"
    );

    // `store: false`: the producer waits for its consumer.
    let out = run_within(
        &mut node.cli(&[
            "send",
            "--workflow",
            "wf",
            "--edge",
            "waits",
            "--as",
            "p",
            "--token",
            &token,
            "--timeout",
            "2",
            "--agent",
            "127.0.0.1:7878",
            "/etc/hostname",
        ]),
        LIMIT,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no receiver joined"));

    assert!(!spill_files(&node.agent.store_dir()).is_empty());
    node.delete("wf").expect("delete");
    let status = node.agent.status();
    assert!(stored(&status).is_empty(), "{:#}", status["store"]);
    assert_eq!(status["store"]["memory_bytes"], 0);
    assert_eq!(status["store"]["disk_bytes"], 0);
    assert!(
        spill_files(&node.agent.store_dir()).is_empty(),
        "{:?}",
        spill_files(&node.agent.store_dir())
    );
}

#[test]
fn the_s3_tier_takes_what_memory_and_disk_cannot_and_survives_a_restart() {
    let s3_root = PathBuf::from("/var/tmp").join(format!("floki-store-s3-{}", std::process::id()));
    let cgroup = floki_tests::cgroup::TestCgroup::new("store-s3-server").expect("cgroup");
    let server = Server::s3s_fs(&Place::Host(&cgroup), &s3_root)
        .expect("s3s-fs (cargo xtask test installs it)");
    let endpoint = server.s3_endpoint("host");
    let opts = AgentOptions {
        extra: vec![
            "--store-memory".into(),
            "4MiB".into(),
            "--store-disk".into(),
            "4MiB".into(),
            "--store-s3".into(),
            format!("s3://{}/floki-store", endpoint.bucket),
        ],
        env: endpoint.env().map(|(k, v)| (k.to_owned(), v)).to_vec(),
        ..AgentOptions::default()
    };
    let mut node = TestNode::start("store-s3", opts.clone());
    let bytes = 40 * MIB;
    let report = probe_report(
        &run_within(&mut node.local_probe("send", "to-s3", bytes), LIMIT),
        "producer",
    );
    assert!(all_stored(&report));
    let streams = stored(&node.agent.status());
    assert_eq!(streams[0]["tier"], "s3", "{streams:#?}");
    let objects: u64 = walk(&s3_root)
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert!(objects >= bytes, "{objects} bytes in the object store");
    assert!(
        spill_files(&node.agent.store_dir())
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "json"))
    );

    let cgroup_of_node = &node.cgroup;
    node.agent.relaunch(cgroup_of_node, opts);
    for attempt in 0..2 {
        let read = probe_report(
            &run_within(&mut node.local_probe("recv", "to-s3", bytes), LIMIT),
            &format!("reading from S3, attempt {attempt}"),
        );
        assert!(all_stored(&read));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&s3_root);
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Waits until every stream of `edge` on `node` is in `state`.
fn wait_edge_state(node: &ClusterNode, edge: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = node.agent.status();
        let streams = status["workflows"][0]["edges"]
            .as_array()
            .and_then(|edges| edges.iter().find(|e| e["name"] == edge))
            .and_then(|e| e["streams"].as_array().cloned())
            .unwrap_or_default();
        if !streams.is_empty() && streams.iter().all(|s| s["state"] == state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "edge {edge} not {state}: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two nodes and workflow `wf` with one edge `e` from `p` on node-a to `q`
/// on node-b (4 MiB buffer), ready on node-a; returns its token.
fn one_edge_across() -> (Cluster, String) {
    let cluster = Cluster::start(&["node-a", "node-b"]);
    cluster.wait_connected();
    let spec = Spec::new("wf")
        .function("p", "node-a")
        .function("q", "node-b")
        .edge("e", &["p"], &["q"], "one-to-one", "4MiB");
    let token = cluster.node("node-a").apply(&spec.yaml()).expect("apply");
    wait_ready(cluster.node("node-a"), &["e"]);
    (cluster, token)
}

#[test]
fn a_stream_for_an_unreachable_node_stays_with_its_producer_then_goes_over() {
    let (mut cluster, token) = one_edge_across();
    // node-b's agent stops: its node cannot be reached, no link is ready.
    assert!(cluster.node_mut("node-b").agent.stop());
    wait_edge_state(cluster.node("node-a"), "e", "preparing");

    let bytes = 12 * MIB;
    let node_a = cluster.node("node-a");
    let report = probe_report(
        &wait_within(
            edge_probe(node_a, true, "send", &token, "e", "p", bytes),
            LIMIT,
        ),
        "producer",
    );
    assert!(all_stored(&report), "{report}");
    let on_a = wait_stored(|| node_a.agent.status(), 1);
    assert_eq!(on_a[0]["name"], "wf/e/p>q", "{on_a:#?}");

    // node-b is back: the stream goes over the link, into node-b's store,
    // and leaves node-a's.
    cluster.node_mut("node-b").restart_agent();
    cluster.wait_connected();
    let on_b = wait_stored(|| cluster.node("node-b").agent.status(), 1);
    assert_eq!(on_b[0]["name"], "wf/e/p>q", "{on_b:#?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stored(&cluster.node("node-a").agent.status()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "node-a kept the forwarded stream"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let read = probe_report(
        &wait_within(
            edge_probe(
                cluster.node("node-b"),
                false,
                "recv",
                &token,
                "e",
                "q",
                bytes,
            ),
            LIMIT,
        ),
        "consumer on the node that was unreachable",
    );
    assert!(all_stored(&read), "{read}");
}

#[test]
fn a_stream_pushed_ahead_across_nodes_keeps_its_run() {
    let (cluster, token) = one_edge_across();
    let (node_a, node_b) = (cluster.node("node-a"), cluster.node("node-b"));
    let bytes = 6 * MIB;
    // Run r1's producer, handed its link; its consumer has not started:
    // node-b's agent stores the stream, with the run the link's start
    // carried.
    let send = local_edge_probe(
        node_a,
        "send",
        &token,
        "e",
        "p",
        bytes,
        &["--run", "r1", "--seed", "11"],
    );
    assert!(all_stored(&probe_report(
        &wait_within(send, LIMIT),
        "r1's producer"
    )));
    let on_b = wait_stored(|| node_b.agent.status(), 1);
    assert_eq!(on_b[0]["run"], "r1", "{on_b:#?}");

    // Run r2's consumer is not served r1's stream: it waits for its own
    // producer, and gives up after its timeout.
    let early = cluster::edge_probe(
        node_b,
        "recv",
        &token,
        "e",
        "q",
        bytes,
        &["--run", "r2", "--seed", "12", "--pair-timeout", "2"],
    );
    let early = wait_within(early, LIMIT);
    assert!(!early.status.success(), "r2's consumer read r1's stream");
    let said = String::from_utf8_lossy(&early.stderr);
    assert!(said.contains("no sender joined"), "{said}");
    // r1's consumer (the probe checks every byte against r1's seed).
    let read = probe_report(
        &wait_within(
            cluster::edge_probe(
                node_b,
                "recv",
                &token,
                "e",
                "q",
                bytes,
                &["--run", "r1", "--seed", "11"],
            ),
            LIMIT,
        ),
        "r1's consumer",
    );
    assert!(all_stored(&read), "{read}");
}

#[test]
fn consumers_that_come_around_the_grace_period_get_their_stream_and_nothing_stays_behind() {
    let (cluster, token) = one_edge_across();
    wait_ready(cluster.node("node-b"), &["e"]);
    let (node_a, node_b) = (cluster.node("node-a"), cluster.node("node-b"));
    let bytes = MIB;

    // Runs one after another, as an orchestrator starts them. In most the
    // consumer comes around the store's grace period (50 ms), when node-b's
    // store claims the pushed-ahead stream: whichever takes the link has
    // the stream, and the other must not wait for it. Every fourth is
    // sequential (its producer done before its consumer starts), right
    // after a run that used the edge's link.
    for run in 0..28u64 {
        let delay_ms = 38 + run;
        let producer = edge_probe(node_a, true, "send", &token, "e", "p", bytes);
        let consumer = if run % 4 == 3 {
            let sent = probe_report(&wait_within(producer, LIMIT), "producer");
            assert!(all_stored(&sent), "run {run}: not stored: {sent}");
            edge_probe(node_b, true, "recv", &token, "e", "q", bytes)
        } else {
            std::thread::sleep(Duration::from_millis(delay_ms));
            let consumer = edge_probe(node_b, true, "recv", &token, "e", "q", bytes);
            probe_report(
                &wait_within(producer, LIMIT),
                &format!("producer, run {run}"),
            );
            consumer
        };
        let read = probe_report(
            &wait_within(consumer, LIMIT),
            &format!("consumer, run {run} ({delay_ms} ms after its producer)"),
        );
        assert_eq!(read["streams"][0]["bytes"], bytes, "run {run}: {read}");
    }
    // node-b was reachable throughout: nothing was kept on the producer's
    // node, and what node-b's store holds is whole (no stream left waiting
    // for a link its consumer took).
    assert!(
        stored(&node_a.agent.status()).is_empty(),
        "node-a stored a stream for a reachable node: {:#}",
        node_a.agent.status()["store"]
    );
    for stream in stored(&node_b.agent.status()) {
        assert_eq!(stream["state"], "complete", "{stream:#}");
    }
}
