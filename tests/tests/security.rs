//! The trust boundaries (docs/SECURITY.md), tried the way an attacker
//! would: a process with root on one node and no cluster secret, a peer
//! that replays a start, functions that name addresses they should not
//! reach. Each test is one attack of issue 13 and asserts what the victim
//! would check: its bytes, its token, the errors it sees.

use std::time::{Duration, Instant};

use floki_tests::{
    cluster::{CLUSTER_SECRET, Cluster, DEFAULT_LISTEN, PEER_PORT, Spec, edge_probe},
    intruder_binary,
    netns::NetNs,
    node::{assert_success, spawn, wait_within},
    probe_binary,
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
    let consumer = edge_probe(cluster.node("node-b"), "recv", &token, "e", "q", MIB, &[]);
    let producer = edge_probe(cluster.node("node-a"), "send", &token, "e", "p", MIB, &[]);
    assert_success(&wait_within(producer, LIMIT), "the producer, real token");
    assert_success(&wait_within(consumer, LIMIT), "the consumer, real token");
    let out = wait_within(
        edge_probe(cluster.node("node-a"), "send", EVIL_TOKEN, "e", "p", 1, &[]),
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
    let producer = edge_probe(
        cluster.node("node-a"),
        "send",
        &token,
        "e",
        "p",
        MIB,
        &["--live"],
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
    let consumer = edge_probe(cluster.node("node-b"), "recv", &token, "e", "q", MIB, &[]);
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

/// `floki-intruder ARGS` inside `ns`, in the background.
fn intruder_in(ns: &NetNs, args: &[&str]) -> std::process::Child {
    spawn(ns.command(intruder_binary()).args(args))
}

/// The address process `pid` listens on, from `ss` (in its namespace).
fn listener_of(pid: u32, mut ss: std::process::Command) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    ss.arg("-Hltnp");
    loop {
        let out = ss.output().expect("running ss");
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = listing
            .lines()
            .find(|line| line.contains(&format!("pid={pid},")))
        {
            return line
                .split_whitespace()
                .nth(3)
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} listens nowhere: {listing}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn report_of(child: std::process::Child) -> Value {
    let out = wait_within(child, LIMIT);
    assert_success(&out, "floki-intruder");
    serde_json::from_slice(&out.stdout).expect("floki-intruder prints JSON")
}

/// Attack 3: a function without network reached the node's network
/// through the agent, which connected for it to an address it named, and
/// listeners handed to receivers were open to other hosts. From a
/// namespace with only `lo`, on the agent's Unix socket: a receiver naming
/// another host's address is refused, a sender is never connected to one
/// (even when a receiver on the TCP port names it), and a receiver's handed
/// listener is on loopback.
#[test]
fn a_function_without_network_cannot_reach_other_hosts_through_the_agent() {
    let cluster = Cluster::start(&["node-a", "node-b"]);
    let isolated = NetNs::new("iso");
    let a = cluster.node("node-a");
    let socket = format!("unix:{}", a.agent.socket.display());
    let elsewhere = format!("{}:9999", cluster.node("node-b").ip);
    let listener = intruder_in(
        &cluster.node("node-b").ns,
        &["listen", "--addr", &elsewhere, "--secs", "12"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let send_from_isolated = |channel: &str| {
        spawn(isolated.command(probe_binary()).args([
            "send",
            "--agent",
            &socket,
            "--channel",
            channel,
            "--bytes",
            "1024",
            "--live",
        ]))
    };

    // A receiver on the Unix socket that names its own data address.
    let sender = send_from_isolated("escape-1");
    let hello = json!({"channel": "escape-1", "role": "recv", "listen": elsewhere}).to_string();
    let report = report_of(intruder_in(
        &isolated,
        &[
            "hello", "--agent", &socket, "--hello", &hello, "--hold", "2",
        ],
    ));
    let refusal = report["answer"].to_string();
    assert!(
        refusal.contains("gets its data listener from the agent"),
        "{report:#}"
    );
    let mut sender = sender;
    sender.kill().ok();
    sender.wait().ok();

    // An end on node-a's TCP port that says `hello` and holds 4 s.
    let hello_on_tcp_port = |hello: serde_json::Value| {
        let hello = hello.to_string();
        intruder_in(
            &a.ns,
            &[
                "hello",
                "--agent",
                "127.0.0.1:7878",
                "--hello",
                &hello,
                "--hold",
                "4",
            ],
        )
    };

    // A receiver on the TCP port that names another host, and a sender on
    // the Unix socket that the agent would connect there.
    let receiver =
        hello_on_tcp_port(json!({"channel": "escape-2", "role": "recv", "listen": elsewhere}));
    std::thread::sleep(Duration::from_millis(500));
    let out = wait_within(send_from_isolated("escape-2"), LIMIT);
    assert!(!out.status.success(), "the sender was connected elsewhere");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("not an address of the agent's network namespace"),
        "{said}"
    );
    report_of(receiver);
    assert_eq!(
        report_of(listener)["connections"],
        json!(0),
        "the agent connected to another host for a function"
    );

    // The listener the agent hands a receiver at pairing is on loopback
    // (its sender, on the TCP port, is told where and never connects).
    let receiver = spawn(isolated.command(probe_binary()).args([
        "recv",
        "--agent",
        &socket,
        "--channel",
        "handed",
        "--bytes",
        "1",
        "--no-ring",
    ]));
    std::thread::sleep(Duration::from_millis(300));
    let sender = hello_on_tcp_port(json!({"channel": "handed", "role": "send"}));
    let bound = listener_of(receiver.id(), a.ns.command("ss"));
    assert!(
        bound.starts_with("127.0.0.1:"),
        "handed listener on {bound}"
    );
    let port = bound.rsplit(':').next().unwrap_or_default();
    let report =
        cluster
            .node("node-b")
            .intruder(&["connect", "--addr", &format!("{}:{port}", a.ip)]);
    assert_eq!(report["connected"], json!(false), "{report:#}");
    report_of(sender);
    let mut receiver = receiver;
    receiver.kill().ok();
    receiver.wait().ok();
}

/// Attack 4: plain channels belonged to whoever came first, from anywhere.
/// The functions' port is on loopback by default, so another host cannot
/// reach it; on the node, ends that share a channel secret pair only with
/// each other, so an end without it neither takes nor feeds the stream.
#[test]
fn plain_channels_are_off_the_network_and_a_secret_keeps_them_apart() {
    let cluster = Cluster::start_with_each(&["node-a", "node-b"], |name| {
        if name == "node-a" {
            vec![DEFAULT_LISTEN.to_owned()]
        } else {
            Vec::new()
        }
    });
    let a = cluster.node("node-a");
    let report = cluster
        .node("node-b")
        .intruder(&["connect", "--addr", &format!("{}:7878", a.ip)]);
    assert_eq!(
        report["connected"],
        json!(false),
        "another host reached the functions' port: {report:#}"
    );

    // The attacker's ends come first: a receiver without the secret and a
    // sender with a wrong one.
    let probe = |verb: &str, secret: Option<&str>| {
        let mut args = vec![verb, "--channel", "results", "--bytes", "1048576", "--live"];
        if verb == "recv" {
            args.pop();
        }
        if let Some(secret) = secret {
            args.extend(["--secret", secret]);
        }
        spawn(&mut a.probe(&args))
    };
    let mut thief = probe("recv", None);
    let mut forger = probe("send", Some("a-guess-at-the-secret"));
    std::thread::sleep(Duration::from_millis(500));
    let receiver = probe("recv", Some("the-real-channel-secret"));
    let sender = probe("send", Some("the-real-channel-secret"));
    assert_success(&wait_within(sender, LIMIT), "the real sender");
    assert_success(
        &wait_within(receiver, LIMIT),
        "the real receiver (its bytes verified)",
    );
    for (who, child) in [("receiver", &mut thief), ("sender", &mut forger)] {
        assert!(
            child.try_wait().expect("polling").is_none(),
            "the attacker's {who} was paired"
        );
        child.kill().ok();
        child.wait().ok();
    }
    let status = a.agent.status();
    let names: Vec<String> = status["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert!(
        names.iter().any(|name| name.starts_with("results#")),
        "{status:#}"
    );
}

/// Attack 5: exhaustion. Idle connections to the metrics server are closed
/// (header timeout); an end that talks while it waits for its peer is
/// closed instead of being read forever; silent connections to a
/// receiver's data listener no longer hold its sender up, one at a time,
/// 10 s each.
#[test]
fn a_hostile_client_cannot_exhaust_the_agent_or_hold_a_stream_up() {
    // A node of its own (a namespace): its connections do not disturb
    // tests that count the machine's TCP segments.
    let cluster = Cluster::start_with(&["node-a"], &["--metrics", "127.0.0.1:9478"]);
    let node = cluster.node("node-a");
    let report = node.intruder(&[
        "hold",
        "--addr",
        "127.0.0.1:9478",
        "--count",
        "100",
        "--secs",
        "12",
    ]);
    assert_eq!(
        report["closed_by_peer"],
        json!(100),
        "idle metrics connections kept: {report:#}"
    );

    let socket = format!("unix:{}", node.agent.socket.display());
    let hello = json!({"channel": "chatty", "role": "send"}).to_string();
    let report = node.intruder(&[
        "hello", "--agent", &socket, "--hello", &hello, "--hold", "5", "--spam", "1000",
    ]);
    assert_eq!(report["closed_by_agent"], json!(true), "{report:#}");

    // A receiver on the TCP port, five silent connections to its listener,
    // then its sender.
    let bytes = (4u64 << 20).to_string();
    let receiver = spawn(&mut node.probe(&["recv", "--channel", "patient", "--bytes", &bytes]));
    let listener = listener_of(receiver.id(), node.ns.command("ss"));
    let squatters = intruder_in(
        &node.ns,
        &["hold", "--addr", &listener, "--count", "5", "--secs", "40"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let sender = spawn(&mut node.probe(&["send", "--channel", "patient", "--bytes", &bytes]));
    assert_success(&wait_within(sender, LIMIT), "the sender");
    assert_success(&wait_within(receiver, LIMIT), "the receiver");
    let took = started.elapsed();
    // One at a time, the five would have held it 50 s.
    assert!(
        took < Duration::from_secs(9),
        "the stream took {took:?} behind silent connections"
    );
    let mut squatters = squatters;
    squatters.kill().ok();
    squatters.wait().ok();
}

/// The node's TCP memory, in bytes (`/proc/net/sockstat`, all sockets).
fn tcp_memory() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").expect("reading sockstat");
    let pages: u64 = text
        .lines()
        .find(|line| line.starts_with("TCP:"))
        .and_then(|line| line.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|n| n.parse().ok())
        .expect("TCP mem in sockstat");
    pages * 4096
}

/// Attack 2: on the splice path the window was advisory: a paired sender
/// that ignored its credits queued 512 MiB in its receiver's socket in
/// 0.1 s. Now the kernel program refuses its writes past the receiver's
/// credit (the sender fails with EACCES), so the node holds the window and
/// a small slack; over plain TCP, where the kernel's buffers bound it, the
/// receiver refuses the stream with the reason.
#[test]
fn a_sender_that_ignores_its_credits_is_stopped_at_the_window() {
    const WINDOW: u64 = 1 << 20;
    for (label, ebpf) in [("splice", true), ("tcp", false)] {
        // A node of its own: the flood's segments stay in its namespace.
        let extra: &[&str] = if ebpf { &[] } else { &["--no-ebpf"] };
        let cluster = Cluster::start_with(&["node-a"], extra);
        let node = cluster.node("node-a");
        if ebpf {
            assert_eq!(node.agent.status()["datapath"]["mode"], "ebpf");
        }
        // A receiver that reads 256 KiB a second.
        let bytes = (256u64 << 20).to_string();
        let receiver = spawn(
            node.probe(&["recv", "--channel", "flood", "--bytes", &bytes])
                .args([
                    "--window",
                    &WINDOW.to_string(),
                    "--rate",
                    "262144",
                    "--no-check",
                    "--chunk",
                    "65536",
                ]),
        );
        std::thread::sleep(Duration::from_millis(300));
        let before = tcp_memory();
        let mut flood = node.ns.command(intruder_binary());
        flood.args([
            "flood",
            "--agent",
            "127.0.0.1:7878",
            "--channel",
            "flood",
            "--bytes",
            &(256u64 << 20).to_string(),
        ]);
        // In the node's cgroup, so that the kernel splices its socket.
        node.cgroup.spawn_inside(&mut flood);
        let mut flood = spawn(&mut flood);
        // The peak of the node's TCP memory while the flood runs (5 s at
        // most: over TCP it goes at the receiver's pace).
        let mut peak = before;
        let deadline = Instant::now() + Duration::from_secs(5);
        while flood.try_wait().expect("polling").is_none() && Instant::now() < deadline {
            peak = peak.max(tcp_memory());
            std::thread::sleep(Duration::from_millis(20));
        }
        let ended = flood.try_wait().expect("polling").is_some();
        flood.kill().ok();
        let out = flood.wait_with_output().expect("the flood's output");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let held = peak.saturating_sub(before);
        eprintln!("{label}: {report} held {held} bytes above the node's TCP memory before");
        if !ebpf {
            // Over TCP the kernel's buffers hold the flood back, at the
            // receiver's pace; the receiver would read them for a while.
            let mut receiver = receiver;
            receiver.kill().ok();
            receiver.wait().ok();
        } else {
            // The receiver reads what the window let through, then fails:
            // the stream ends without its end mark.
            let receiver = wait_within(receiver, LIMIT);
            let said = String::from_utf8_lossy(&receiver.stderr).into_owned();
            assert!(
                !receiver.status.success(),
                "{label}: the receiver took the flood"
            );
            assert!(
                said.contains("truncat") || said.contains("ended"),
                "{label}: {said}"
            );
        }
        if ebpf {
            assert!(ended, "{label}: the kernel never stopped the flood");
            let error = report["error"].as_str().unwrap_or_default();
            assert!(error.contains("Permission denied"), "{label}: {report:#}");
            assert!(
                report["written"].as_u64().unwrap_or(u64::MAX) <= 4 * WINDOW,
                "{label}: {report:#}"
            );
            let refusals = node.agent.status()["totals"]["window_refusals"]
                .as_u64()
                .unwrap_or_default();
            assert!(refusals >= 1, "{label}: no refusal counted");
        }
        // The window, the slack, and the kernel's own buffers: far below
        // the 256 MiB the flood had to send.
        assert!(held < 16 << 20, "{label}: the node held {held} bytes");
    }
}
