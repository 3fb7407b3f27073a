//! What users see when something goes wrong: a dead peer is an error at the
//! other end (never a short success, never a hang); bad handshakes get a
//! reason and the agent keeps serving; nobody can inject into a channel.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use floki_tests::{
    node::{Door, TestNode, assert_success, spawn, wait_within},
    raw::hello,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);

/// Waits until the channel has moved at least `bytes`.
fn wait_progress(node: &TestNode, channel: &str, bytes: u64) {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        let status = node.agent.status();
        let moved = status["channels"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == channel))
            .map(|c| {
                let reported = c["stream_bytes"].as_u64().unwrap_or(0);
                reported.max(c["bytes"].as_u64().unwrap_or(0))
            })
            .unwrap_or(0);
        if moved >= bytes {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("channel {channel} never reached {bytes} bytes");
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn killed_sender_fails_the_receiver() {
    killed_sender(Door::Tcp, "splice");
}

#[test]
fn killed_sender_fails_the_receiver_over_shm() {
    killed_sender(Door::Unix, "shm");
}

fn killed_sender(door: Door, transport: &str) {
    let node = TestNode::start_ebpf(&format!("killed-sender-{transport}"));
    let output = std::env::temp_dir().join(format!(
        "floki-killed-sender-{transport}-{}",
        std::process::id()
    ));
    let recv = spawn(node.cli_at(door, "recv", "victim").arg("-o").arg(&output));
    let mut send = spawn(
        node.probe_at(door, "send", "victim", 1 << 30)
            .args(["--stall-after", &(64 * MIB).to_string()]),
    );
    wait_progress(&node, "victim", 64 * MIB);
    send.kill().unwrap();
    let _ = send.wait();

    let out = wait_within(recv, Duration::from_secs(20));
    assert!(
        !out.status.success(),
        "recv succeeded on a truncated stream"
    );
    let message = stderr(&out);
    assert!(message.contains("truncated"), "recv said: {message}");
    assert!(
        !output.exists(),
        "a truncated stream left an output file behind"
    );
    let channel = node.agent.wait_finished("victim", LIMIT);
    assert_eq!(channel["state"], "failed", "{channel:#}");
    assert_eq!(channel["transport"], transport, "{channel:#}");
    assert!(
        channel["error"].as_str().unwrap().contains("truncated"),
        "{channel:#}"
    );
}

#[test]
fn vanished_receiver_fails_the_sender() {
    vanished_receiver(Door::Tcp, "splice");
}

#[test]
fn vanished_receiver_fails_the_sender_over_shm() {
    vanished_receiver(Door::Unix, "shm");
}

fn vanished_receiver(door: Door, transport: &str) {
    let node = TestNode::start_ebpf(&format!("vanished-receiver-{transport}"));
    let mut recv = spawn(
        node.probe_at(door, "recv", "orphan", 1 << 30)
            .args(["--stall-after", &(16 * MIB).to_string()]),
    );
    let send = spawn(&mut node.probe_at(door, "send", "orphan", 1 << 30));
    wait_progress(&node, "orphan", 16 * MIB);
    // The receiver stopped reading: the sender is now held by its credit.
    std::thread::sleep(Duration::from_millis(300));
    recv.kill().unwrap();
    let _ = recv.wait();

    let out = wait_within(send, Duration::from_secs(20));
    assert!(!out.status.success(), "send succeeded without a receiver");
    let message = stderr(&out);
    assert!(message.contains("receiver"), "send said: {message}");
    let channel = node.agent.wait_finished("orphan", LIMIT);
    assert_eq!(channel["state"], "failed", "{channel:#}");
    assert_eq!(channel["transport"], transport, "{channel:#}");
}

/// Sends raw bytes to the agent and returns its answer (a refusal) and how
/// long it took.
fn raw_handshake(addr: SocketAddr, bytes: &[u8]) -> (Value, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .expect("the agent answered nothing");
    let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut json).unwrap();
    // The agent closes after a refusal.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    (serde_json::from_slice(&json).unwrap(), started.elapsed())
}

#[test]
fn malformed_handshakes_are_refused_and_the_agent_keeps_serving() {
    let node = TestNode::start_ebpf("handshakes");
    let addr = node.agent.addr;
    // A transfer runs through all of it.
    let recv = spawn(&mut node.probe("recv", "steady", 128 * MIB));
    let send = spawn(
        node.probe("send", "steady", 128 * MIB)
            .args(["--rate", &(64 * MIB).to_string()]),
    );

    let garbage: Vec<u8> = (0..1024u32).map(|i| (i * 7919 % 251) as u8).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random bytes", garbage, "bad_handshake"),
        (
            "unknown version",
            b"FLKI\x00\x63".to_vec(),
            "unsupported_version",
        ),
        (
            "oversized name",
            hello(&format!(
                r#"{{"channel":"{}","role":"send"}}"#,
                "n".repeat(300)
            )),
            "bad_channel_name",
        ),
        (
            "oversized message",
            b"FLKI\x00\x01\xff\xff\xff\xff".to_vec(),
            "bad_handshake",
        ),
        ("not json", hello("{{{{"), "bad_handshake"),
        (
            "receiver without address",
            hello(r#"{"channel":"x","role":"recv"}"#),
            "bad_request",
        ),
    ];
    for (what, bytes, expected) in cases {
        let (answer, _) = raw_handshake(addr, &bytes);
        assert_eq!(answer["event"], "refused", "{what}: {answer}");
        assert_eq!(answer["error"], expected, "{what}: {answer}");
        assert!(
            !answer["message"].as_str().unwrap().is_empty(),
            "{what}: {answer}"
        );
    }
    // Half a handshake, then silence: refused after the handshake timeout.
    let (answer, took) = raw_handshake(addr, b"FLKI\x00\x01\x00\x00");
    assert_eq!(answer["error"], "bad_handshake", "{answer}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "{took:?}"
    );

    assert_success(&wait_within(send, LIMIT), "send during bad handshakes");
    assert_success(&wait_within(recv, LIMIT), "recv during bad handshakes");
    assert_eq!(node.agent.wait_finished("steady", LIMIT)["state"], "done");
}

#[test]
fn a_second_sender_is_refused_and_cannot_inject() {
    let node = TestNode::start_ebpf("busy");
    let bytes = 64 * MIB;
    let recv = spawn(node.probe("recv", "busy", bytes).args(["--seed", "1"]));
    let send = spawn(node.probe("send", "busy", bytes).args([
        "--seed",
        "1",
        "--rate",
        &(32 * MIB).to_string(),
    ]));
    wait_progress(&node, "busy", MIB);

    let intruder = wait_within(
        spawn(node.probe("send", "busy", bytes).args(["--seed", "2"])),
        LIMIT,
    );
    assert!(!intruder.status.success(), "a second sender was accepted");
    let message = stderr(&intruder);
    assert!(
        message.contains("busy") || message.contains("in use"),
        "intruder was told: {message}"
    );

    // The receiver checks every byte against the first sender's pattern.
    assert_success(&wait_within(send, LIMIT), "first sender");
    assert_success(&wait_within(recv, LIMIT), "receiver");
}

/// The data port of a process's listening socket (from `ss`).
fn listening_port(pid: u32) -> Option<u16> {
    let out = Command::new("ss").args(["-Htlnp"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|line| line.contains(&format!("pid={pid},")))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|local| local.rsplit(':').next())
        .and_then(|port| port.parse().ok())
}

#[test]
fn an_impostor_on_the_data_port_is_rejected() {
    let node = TestNode::start_ebpf("impostor");
    let bytes = 32 * MIB;
    let recv = spawn(&mut node.probe("recv", "guarded", bytes));
    let deadline = Instant::now() + LIMIT;
    let port = loop {
        if let Some(port) = listening_port(recv.id()) {
            break port;
        }
        assert!(Instant::now() < deadline, "the receiver never listened");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Someone connects straight to the data port, ahead of the real sender,
    // and presents a made-up key once the receiver (paired now) accepts it.
    let mut impostor = TcpStream::connect(("127.0.0.1", port)).unwrap();
    impostor
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let send = spawn(&mut node.probe("send", "guarded", bytes));
    let mut credit = [0u8; 16];
    impostor.read_exact(&mut credit).unwrap();
    assert_eq!(credit[0], 0x11, "the receiver speaks first with a credit");
    let mut forged = vec![0x01, 0, 0, 0, 0, 0, 0, 16];
    forged.extend_from_slice(&[0xaa; 16]);
    forged.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 0, 4, b'e', b'v', b'i', b'l']);
    impostor.write_all(&forged).unwrap();
    let mut answer = Vec::new();
    let _ = impostor.read_to_end(&mut answer);
    assert_eq!(
        answer.first(),
        Some(&0x13),
        "the impostor was not rejected: {answer:?}"
    );

    assert_success(&wait_within(send, LIMIT), "sender");
    assert_success(&wait_within(recv, LIMIT), "receiver (checks every byte)");
}
