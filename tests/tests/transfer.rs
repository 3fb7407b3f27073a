//! Streams arrive byte-identical over every transport (splice, shm, tcp),
//! whichever end comes first; spliced streams really bypass TCP/IP.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    time::Duration,
};

use floki_tests::{
    Pattern,
    agent::AgentOptions,
    cluster::Cluster,
    node::{Door, TestNode, assert_success, file_digest, run_within, spawn, wait_within},
    proc_stats::tcp_out_segments_in,
    raw, scaled,
};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(120);

/// A file of `size` pattern bytes in /dev/shm, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        Self(PathBuf::from(format!(
            "/dev/shm/floki-test-{}-{tag}",
            std::process::id()
        )))
    }

    fn with_pattern(tag: &str, size: u64, seed: u64) -> Self {
        let file = Self::new(tag);
        let pattern = Pattern::new(seed);
        let mut data = vec![0u8; size.min(16 * MIB) as usize];
        let mut out = fs::File::create(&file.0).expect("creating the input file");
        let mut written = 0;
        while written < size {
            let n = (size - written).min(data.len() as u64) as usize;
            pattern.fill(written, &mut data[..n]);
            std::io::Write::write_all(&mut out, &data[..n]).expect("writing the input file");
            written += n as u64;
        }
        file
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Sends a file with `floki-agent send` and receives it with `recv -o`.
fn cli_transfer(node: &TestNode, door: Door, channel: &str, size: u64, receiver_first: bool) {
    let input = TempFile::with_pattern(&format!("{channel}.in"), size, size ^ 0xf10c1);
    let output = TempFile::new(&format!("{channel}.out"));
    let spawn_recv = || spawn(node.cli_at(door, "recv", channel).arg("-o").arg(&output.0));
    // A sender that starts first is live here: it waits for its receiver
    // (the store has tests of its own, tests/tests/store.rs).
    let spawn_send = || {
        spawn(
            node.cli_at(door, "send", channel)
                .arg(&input.0)
                .arg("--live"),
        )
    };
    let (recv, send) = if receiver_first {
        let recv = spawn_recv();
        std::thread::sleep(Duration::from_millis(200));
        (recv, spawn_send())
    } else {
        let send = spawn_send();
        std::thread::sleep(Duration::from_millis(200));
        (spawn_recv(), send)
    };
    assert_success(&wait_within(send, LIMIT), "send");
    assert_success(&wait_within(recv, LIMIT), "recv");
    assert_eq!(
        file_digest(&input.0),
        file_digest(&output.0),
        "{channel}: the received file differs from the sent one"
    );
    assert_eq!(fs::metadata(&output.0).unwrap().len(), size);
}

fn sizes_arrive_identical(node: &TestNode, door: Door, transport: &str) {
    for (i, size) in [0, 1, 64 * 1024 - 1, MIB, scaled(256 * MIB)]
        .into_iter()
        .enumerate()
    {
        for receiver_first in [true, false] {
            let channel = format!("size-{i}-{}", if receiver_first { "rf" } else { "sf" });
            cli_transfer(node, door, &channel, size, receiver_first);
            let status = node.agent.wait_finished(&channel, LIMIT);
            assert_eq!(status["state"], "done", "{status:#}");
            assert_eq!(status["transport"], transport, "{status:#}");
            assert_eq!(status["stream_bytes"], size, "{status:#}");
        }
    }
    // Writes of random sizes (1 B to 1 MiB), checked byte by byte.
    for receiver_first in [true, false] {
        let channel = format!("mixed-{receiver_first}");
        let bytes = scaled(64 * MIB);
        let probe = |verb| {
            spawn(
                node.probe_at(door, verb, &channel, bytes)
                    .args(["--writes", "mixed", "--seed", "99"]),
            )
        };
        let first = if receiver_first {
            probe("recv")
        } else {
            spawn(
                node.probe_at(door, "send", &channel, bytes)
                    .args(["--writes", "mixed", "--seed", "99", "--live"]),
            )
        };
        std::thread::sleep(Duration::from_millis(200));
        let second = probe(if receiver_first { "send" } else { "recv" });
        assert_success(&wait_within(first, LIMIT), "first probe");
        assert_success(&wait_within(second, LIMIT), "second probe");
        assert_eq!(
            node.agent.wait_finished(&channel, LIMIT)["transport"],
            transport
        );
    }
}

#[test]
fn spliced_streams_arrive_identical() {
    let node = TestNode::start_ebpf("sizes-splice");
    sizes_arrive_identical(&node, Door::Tcp, "splice");
}

#[test]
fn shm_streams_arrive_identical() {
    let node = TestNode::start_ebpf("sizes-shm");
    sizes_arrive_identical(&node, Door::Unix, "shm");
    // The ring's header says what the sender published: status shows it.
    let status = node.agent.channel("size-4-rf");
    assert_eq!(status["bytes"], scaled(256 * MIB), "{status:#}");
    assert!(
        status["reason"].as_str().unwrap().contains("ring"),
        "{status:#}"
    );
    let totals = &node.agent.status()["totals"];
    assert!(
        totals["shm_bytes"].as_u64().unwrap() >= 2 * scaled(256 * MIB),
        "{totals:#}"
    );
    assert_eq!(totals["spliced_bytes"], 0, "{totals:#}");
}

#[test]
fn fallback_streams_arrive_identical() {
    let node = TestNode::start(
        "sizes-tcp",
        AgentOptions {
            no_ebpf: true,
            ..AgentOptions::default()
        },
    );
    let status = node.agent.status();
    assert_eq!(status["datapath"]["mode"], "fallback");
    assert_eq!(status["datapath"]["reason"], "disabled with --no-ebpf");
    assert_eq!(status["programs"].as_array().map(Vec::len), Some(0));
    sizes_arrive_identical(&node, Door::Tcp, "tcp");
    let totals = &node.agent.status()["totals"];
    assert_eq!(totals["spliced_bytes"], 0);
    assert!(
        totals["fallback_bytes"].as_u64().unwrap() >= 2 * scaled(256 * MIB),
        "{totals:#}"
    );
    // Without eBPF, shm is still the transport of clients that take a ring.
    cli_transfer(&node, Door::Unix, "no-ebpf-shm", 3 * MIB + 17, true);
    let status = node.agent.wait_finished("no-ebpf-shm", LIMIT);
    assert_eq!(status["transport"], "shm", "{status:#}");
}

/// The end that comes second is paired at once, and hears `accepted` and
/// `paired` in one write (docs/PROTOCOL.md): one wake-up, not two, for a
/// function whose peer was there first.
#[test]
fn the_second_end_hears_accepted_and_paired_together() {
    let node = TestNode::start_ebpf("together");
    let answer = |stream: &mut TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut buf = vec![0; 16 << 10];
        let n = stream.read(&mut buf).expect("the agent's answer");
        let events: Vec<_> = raw::messages(&buf[..n])
            .iter()
            .map(|m| m["event"].as_str().unwrap_or_default().to_owned())
            .collect();
        events
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = listener.local_addr().unwrap();
    let mut receiver = TcpStream::connect(node.agent.addr).unwrap();
    let hello = format!(r#"{{"channel":"together","role":"recv","listen":"{listen}"}}"#);
    receiver.write_all(&raw::hello(&hello)).unwrap();
    // Alone on its channel: accepted, and nothing more yet.
    assert_eq!(answer(&mut receiver), ["accepted"]);
    let mut sender = TcpStream::connect(node.agent.addr).unwrap();
    sender
        .write_all(&raw::hello(r#"{"channel":"together","role":"send"}"#))
        .unwrap();
    assert_eq!(answer(&mut sender), ["accepted", "paired"]);
    assert_eq!(answer(&mut receiver), ["paired"]);
}

#[test]
fn spliced_stream_bypasses_tcp() {
    // A node of its own (a network namespace): its TCP counters see only
    // this test's traffic, not the other tests'.
    let cluster = Cluster::start(&["node-a"]);
    let node = cluster.node("node-a");
    assert_eq!(node.agent.status()["datapath"]["mode"], "ebpf");
    let agent = node.agent.pid();
    let bytes = scaled(256 * MIB);
    let before_segments = tcp_out_segments_in(agent);
    let before_spliced = node.agent.status()["totals"]["spliced_bytes"]
        .as_u64()
        .unwrap();
    let count = bytes.to_string();
    let args = |verb| [verb, "--channel", "bypass", "--bytes", count.as_str()];
    let recv = spawn(&mut node.probe(&args("recv")));
    assert_success(&run_within(&mut node.probe(&args("send")), LIMIT), "send");
    assert_success(&wait_within(recv, LIMIT), "recv");
    let segments = tcp_out_segments_in(agent) - before_segments;

    let channel = node.agent.wait_finished("bypass", LIMIT);
    assert_eq!(channel["transport"], "splice", "{channel:#}");
    // Counted by the kernel program: the whole stream, framing included.
    assert!(channel["bytes"].as_u64().unwrap() >= bytes, "{channel:#}");
    let totals = &node.agent.status()["totals"];
    assert!(
        totals["spliced_bytes"].as_u64().unwrap() - before_spliced >= bytes,
        "{totals:#}"
    );
    // Plain TCP needs one segment per 64 KiB at best: 4096 for 256 MiB. The
    // splice needs only the handshakes (and whatever else the machine sends).
    let tcp_would_need = bytes / (64 * 1024);
    assert!(
        segments < tcp_would_need / 10,
        "{segments} TCP segments went out during a spliced {bytes} B transfer"
    );
}
