//! The trust boundaries (docs/SECURITY.md), tried the way an attacker
//! would: a process with root on one node and no cluster secret, a peer
//! that replays a start, functions that name addresses they should not
//! reach. Each test is one attack of issue 13 and asserts what the victim
//! would check: its bytes, its token, the errors it sees.

use std::time::Duration;

use floki_tests::{
    cluster::{CLUSTER_SECRET, Cluster, PEER_PORT, Spec},
    node::{assert_success, spawn, wait_within},
};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;
/// The attacker's token, for a workflow it wants to take over.
const EVIL_TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn edge_spec() -> Spec {
    Spec::new("wf")
        .function("p", "node-a")
        .function("q", "node-b")
        .edge("e", &["p"], &["q"], "one-to-one", "1MiB")
}

fn edge_args(verb: &str, token: &str, function: &str, bytes: u64, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        verb,
        "--workflow",
        "wf",
        "--edge",
        "e",
        "--as",
        function,
        "--token",
        token,
        "--bytes",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(bytes.to_string());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn workflows_on(cluster: &Cluster, node: &str) -> Vec<Value> {
    cluster.node(node).agent.status()["workflows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Attack 1: anyone who reaches an agent's port speaks for an agent. Every
/// agent-to-agent request, sent without the cluster secret or with a wrong
/// one, gets no answer and changes nothing: the workflow keeps its token
/// and its streams, and the agents' port is not the functions' one.
#[test]
fn an_outsider_on_the_agents_port_changes_nothing_and_learns_nothing() {
    let cluster = Cluster::start(&["node-a", "node-b"]);
    cluster.wait_connected();
    let spec = edge_spec();
    let token = cluster.node("node-a").apply(&spec.yaml()).expect("apply");
    let stream = json!({"workflow": "wf", "edge": "e", "producer": "p", "consumer": "q"});
    let requests = [
        json!({"op": "install", "yaml": spec.yaml(), "token": EVIL_TOKEN}),
        json!({"op": "prepare", "yaml": spec.yaml(), "token": EVIL_TOKEN}),
        json!({"op": "commit", "name": "wf"}),
        json!({"op": "open_stream", "stream": stream, "key": "00000000000000000000000000000000"}),
        json!({"op": "delete", "name": "wf"}),
        json!({"op": "hello", "node": "node-z"}),
    ];
    for (from, to) in [("node-b", "node-a"), ("node-a", "node-b")] {
        let target = format!("{}:{PEER_PORT}", cluster.node(to).ip);
        for request in &requests {
            let request = request.to_string();
            for secret in [None, Some("not-the-cluster-secret-at-all")] {
                let mut args = vec!["peer", "--addr", &target, "--request", &request];
                if let Some(secret) = secret {
                    args.extend(["--secret", secret]);
                }
                let report = cluster.node(from).intruder(&args);
                assert!(
                    report["answer"].is_null(),
                    "{to} answered an unauthenticated {request}: {report:#}"
                );
                if secret.is_some() {
                    assert_ne!(report["authenticated"], json!(true), "{report:#}");
                }
            }
        }
    }
    // The agents' protocol on the functions' port is refused with a reason.
    let report = cluster.node("node-a").intruder(&[
        "peer",
        "--addr",
        "127.0.0.1:7878",
        "--request",
        r#"{"op":"hello","node":"node-z"}"#,
    ]);
    let said = report["received"].as_str().unwrap_or_default();
    assert!(said.contains("--peer-listen"), "{report:#}");
    assert!(
        cluster
            .node("node-a")
            .agent
            .log()
            .contains("did not authenticate"),
        "the refusals are logged"
    );

    // Nothing changed: the workflow is still applied on both nodes, its
    // token carries its stream, and the attacker's token opens nothing.
    for node in ["node-a", "node-b"] {
        let listed = workflows_on(&cluster, node);
        assert!(
            listed.iter().any(|w| w["name"] == "wf"),
            "{node} lost the workflow: {listed:#?}"
        );
    }
    let consumer =
        spawn(
            &mut cluster
                .node("node-b")
                .probe(&edge_args("recv", &token, "q", MIB, &[])),
        );
    let producer =
        spawn(
            &mut cluster
                .node("node-a")
                .probe(&edge_args("send", &token, "p", MIB, &[])),
        );
    assert_success(&wait_within(producer, LIMIT), "the producer, real token");
    assert_success(&wait_within(consumer, LIMIT), "the consumer, real token");
    let out = wait_within(
        spawn(
            &mut cluster
                .node("node-a")
                .probe(&edge_args("send", EVIL_TOKEN, "p", 1, &[])),
        ),
        LIMIT,
    );
    assert!(
        !out.status.success(),
        "the attacker's token opened a channel"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no such workflow channel for this token"),
        "{said}"
    );
}

/// Attack 1, its worst part: a second start of a cross-node stream
/// replaced the first, so injected bytes reached the consumer as a verified
/// stream. Now the pairing key comes from the agents' authenticated session
/// and a second start, even from a peer that knows the secret, is refused
/// while the first producer waits: the consumer gets the real bytes.
#[test]
fn a_second_start_of_a_stream_never_replaces_the_first() {
    let cluster = Cluster::start(&["node-a", "node-b"]);
    cluster.wait_connected();
    let token = cluster
        .node("node-a")
        .apply(&edge_spec().yaml())
        .expect("apply");
    // The real producer starts first and waits for its consumer.
    let producer =
        spawn(
            &mut cluster
                .node("node-a")
                .probe(&edge_args("send", &token, "p", MIB, &["--live"])),
        );
    std::thread::sleep(Duration::from_millis(1500));
    let stream = json!({"workflow": "wf", "edge": "e", "producer": "p", "consumer": "q"});
    let report = cluster.node("node-a").intruder(&[
        "start",
        "--addr",
        &format!("{}:{PEER_PORT}", cluster.node("node-b").ip),
        "--stream",
        &stream.to_string(),
        "--secret",
        CLUSTER_SECRET,
        "--bytes",
        "65536",
    ]);
    assert_eq!(report["authenticated"], json!(true), "{report:#}");
    assert_eq!(
        report["closed_by_agent"],
        json!(true),
        "the second start was kept: {report:#}"
    );
    let consumer =
        spawn(
            &mut cluster
                .node("node-b")
                .probe(&edge_args("recv", &token, "q", MIB, &[])),
        );
    assert_success(
        &wait_within(consumer, LIMIT),
        "the consumer (the real bytes)",
    );
    assert_success(&wait_within(producer, LIMIT), "the real producer");
    assert!(
        cluster
            .node("node-b")
            .agent
            .log()
            .contains("a second start of a stream"),
        "the refusal is logged"
    );
}
