//! Functions on the agent's Unix socket: the agent hands them their data
//! sockets (the receiver a listener, the sender a connection), in any mix
//! with clients on the TCP port, and the kernel still splices the stream
//! between socket clients.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use floki_client::{ChannelOptions, blocking};
use floki_tests::{
    agent::AgentOptions,
    cluster::Cluster,
    netns::NetNs,
    node::{Door, TestNode, assert_success, spawn, wait_within},
    pattern,
    proc_stats::tcp_out_segments_in,
};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn local_clients_are_spliced_in_any_mix_with_tcp_clients() {
    // A node of its own (a network namespace): its TCP counters see only
    // this test's traffic.
    let cluster = Cluster::start(&["node-a"]);
    let node = cluster.node("node-a");
    assert_eq!(node.agent.status()["datapath"]["mode"], "ebpf");
    let agent = node.agent.pid();
    let bytes = 128 * MIB;
    let count = bytes.to_string();
    for (sender_local, receiver_local) in [(true, true), (true, false), (false, true)] {
        for receiver_first in [true, false] {
            let channel = format!("mix-{sender_local}-{receiver_local}-{receiver_first}");
            let probe = |verb: &str, local: bool| {
                // Socket clients: two that take rings would get one.
                let args = [
                    verb,
                    "--channel",
                    &channel,
                    "--bytes",
                    &count,
                    "--no-ring",
                    "--writes",
                    "mixed",
                    "--seed",
                    "7",
                ];
                spawn(&mut if local {
                    node.probe_local(&args)
                } else {
                    node.probe(&args)
                })
            };
            let before = tcp_out_segments_in(agent);
            let (first, second) = if receiver_first {
                let recv = probe("recv", receiver_local);
                std::thread::sleep(Duration::from_millis(200));
                (recv, probe("send", sender_local))
            } else {
                let send = probe("send", sender_local);
                std::thread::sleep(Duration::from_millis(200));
                (send, probe("recv", receiver_local))
            };
            // The probes check every byte against the pattern.
            assert_success(&wait_within(first, LIMIT), &format!("{channel}: first"));
            assert_success(&wait_within(second, LIMIT), &format!("{channel}: second"));
            let segments = tcp_out_segments_in(agent) - before;
            let status = node.agent.wait_finished(&channel, LIMIT);
            assert_eq!(status["state"], "done", "{status:#}");
            assert_eq!(status["transport"], "splice", "{status:#}");
            assert!(
                status["kernel_bytes"].as_u64().unwrap_or(0) >= bytes,
                "{status:#}"
            );
            assert!(
                segments < 400,
                "{channel}: {segments} TCP segments for a spliced 128 MiB stream"
            );
        }
    }
}

#[test]
fn a_local_file_transfer_with_the_cli() {
    let node = TestNode::start_ebpf("local-cli");
    let input = std::env::temp_dir().join(format!("floki-local-{}.in", std::process::id()));
    let output = std::env::temp_dir().join(format!("floki-local-{}.out", std::process::id()));
    let data: Vec<u8> = (0..3 * MIB + 17).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&input, &data).expect("input");
    let recv = spawn(node.local_cli("recv", "files").arg("-o").arg(&output));
    let send = spawn(node.local_cli("send", "files").arg(&input));
    assert_success(&wait_within(send, LIMIT), "send");
    assert_success(&wait_within(recv, LIMIT), "recv");
    let received = std::fs::read(&output).expect("output");
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    assert!(
        received == data,
        "the received file differs from the sent one"
    );
    // The CLI takes a ring: on one node, both on the Unix socket, that is shm.
    assert_eq!(node.agent.wait_finished("files", LIMIT)["transport"], "shm");
}

#[test]
fn the_local_socket_refuses_what_the_tcp_port_refuses() {
    let node = TestNode::start_ebpf("local-refusals");
    // A bad channel name gets the same clear refusal on either door.
    let out = std::process::Command::new(floki_tests::agent_binary())
        .args(["send", "bad name!"])
        .arg("--agent")
        .arg(format!("unix:{}", node.agent.socket.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running send");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("BadChannelName"), "{stderr}");
    // And the agent keeps serving.
    let recv = spawn(&mut node.local_probe("recv", "after", MIB));
    assert_success(
        &wait_within(spawn(&mut node.local_probe("send", "after", MIB)), LIMIT),
        "send",
    );
    assert_success(&wait_within(recv, LIMIT), "recv");
}

#[test]
fn the_tokio_client_takes_a_ring_too_in_any_mix_with_the_blocking_one() {
    let node = TestNode::start_ebpf("async-ring");
    let bytes = 64 * MIB;
    // (sender blocking, receiver blocking)
    for (sender_blocking, receiver_blocking) in [(false, false), (false, true), (true, false)] {
        let channel = format!("ring-{sender_blocking}-{receiver_blocking}");
        let probe = |verb: &str, blocking: bool| {
            let mut cmd = node.local_probe(verb, &channel, bytes);
            cmd.args(["--writes", "mixed", "--seed", "11"]);
            if blocking {
                cmd.arg("--blocking");
            }
            spawn(&mut cmd)
        };
        let recv = probe("recv", receiver_blocking);
        let send = probe("send", sender_blocking);
        // The probes check every byte against the pattern.
        assert_success(&wait_within(send, LIMIT), &format!("{channel}: sender"));
        assert_success(&wait_within(recv, LIMIT), &format!("{channel}: receiver"));
        let status = node.agent.wait_finished(&channel, LIMIT);
        assert_eq!(status["state"], "done", "{status:#}");
        assert_eq!(status["transport"], "shm", "{status:#}");
        assert!(status["bytes"].as_u64().unwrap_or(0) >= bytes, "{status:#}");
    }
    // Senders that hand a reader to `write_from`: it reads straight into
    // the ring, in regions of its own sizes.
    for blocking in [false, true] {
        let channel = format!("ring-write-from-{blocking}");
        let recv = spawn(&mut node.local_probe("recv", &channel, bytes));
        let mut send = node.local_probe("send", &channel, bytes);
        send.args(["--writes", "from-reader"]);
        if blocking {
            send.arg("--blocking");
        }
        assert_success(
            &wait_within(spawn(&mut send), LIMIT),
            &format!("{channel}: sender"),
        );
        assert_success(&wait_within(recv, LIMIT), &format!("{channel}: receiver"));
        let status = node.agent.wait_finished(&channel, LIMIT);
        assert_eq!(status["transport"], "shm", "{status:#}");
        assert_eq!(status["state"], "done", "{status:#}");
    }
    // A tokio sender that dies mid-stream: the tokio receiver says truncated.
    let recv = spawn(&mut node.local_probe("recv", "ring-killed", bytes));
    let mut send = spawn(
        node.local_probe("send", "ring-killed", bytes)
            .args(["--stall-after", &(8 * MIB).to_string()]),
    );
    std::thread::sleep(Duration::from_millis(500));
    send.kill().expect("killing the sender");
    let _ = send.wait();
    let recv = wait_within(recv, LIMIT);
    assert!(
        !recv.status.success(),
        "a truncated stream must not succeed"
    );
    let said = String::from_utf8_lossy(&recv.stderr);
    assert!(said.contains("truncated"), "{said}");
}

#[test]
fn a_ring_channel_needs_no_tcp_port_and_a_socket_channel_says_when_none_is_free() {
    // A node whose only ephemeral port is the agent's own channel port: no
    // listener can be bound on port 0 there.
    let netns = NetNs::new("noport");
    let sysctl = netns
        .command("sysctl")
        .args(["-w", "net.ipv4.ip_local_port_range=61000 61000"])
        .output()
        .expect("running sysctl");
    assert_success(&sysctl, "narrowing the namespace's ephemeral ports");
    let node = TestNode::start(
        "noport",
        AgentOptions {
            netns: Some(netns.name().to_owned()),
            ..AgentOptions::default()
        },
    );
    assert_eq!(node.agent.addr.port(), 61000, "the agent took the one port");

    // Over a ring the receiver is handed no listener, so it needs none.
    node.probe_stream(Door::Unix, "ring-without-ports", 4 * MIB);
    let status = node.agent.wait_finished("ring-without-ports", LIMIT);
    assert_eq!(status["transport"], "shm", "{status:#}");
    assert_eq!(status["state"], "done", "{status:#}");

    // A socket receiver needs one: both ends hear why there is none.
    let probe = |verb: &str| {
        let mut cmd = node.local_probe(verb, "socket-without-ports", MIB);
        cmd.args(["--no-ring", "--pair-timeout", "30"]);
        spawn(&mut cmd)
    };
    let recv = probe("recv");
    let send = probe("send");
    for (end, out) in [
        ("sender", wait_within(send, LIMIT)),
        ("receiver", wait_within(recv, LIMIT)),
    ] {
        assert!(!out.status.success(), "the {end} cannot have succeeded");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("could not open a data listener") && said.contains("ip_local_port_range"),
            "the {end} must say why: {said}"
        );
    }

    // The agent keeps serving rings.
    node.probe_stream(Door::Unix, "ring-after-refusal", MIB);
}

/// The kernel's count of huge pages allocated for files (tmpfs, memfd).
fn huge_file_pages_allocated() -> u64 {
    let vmstat = std::fs::read_to_string("/proc/vmstat").expect("reading /proc/vmstat");
    vmstat
        .lines()
        .find_map(|line| line.strip_prefix("thp_file_alloc "))
        .and_then(|n| n.trim().parse().ok())
        .expect("thp_file_alloc in /proc/vmstat")
}

#[test]
fn rings_are_on_huge_pages_by_default_and_memory_files_when_told() {
    for (tag, extra, huge) in [
        ("huge-rings", vec![], true),
        ("memfd-rings", vec!["--huge-rings=false".to_owned()], false),
    ] {
        let node = TestNode::start(
            tag,
            AgentOptions {
                extra,
                ..AgentOptions::default()
            },
        );
        assert_eq!(
            node.agent.log().contains("rings on a tmpfs of huge pages"),
            huge,
            "{}",
            node.agent.log()
        );
        let before = huge_file_pages_allocated();
        for (channel, bytes) in [("ring-small", 64 << 10), ("ring-large", 40 * MIB)] {
            node.probe_stream(Door::Unix, channel, bytes);
            let status = node.agent.wait_finished(channel, LIMIT);
            assert_eq!(status["transport"], "shm", "{status:#}");
            assert_eq!(status["state"], "done", "{status:#}");
            assert_eq!(status["bytes"], bytes, "{status:#}");
            // The channel's note says which pages its ring is on.
            let reason = status["reason"].as_str().expect("reason");
            assert_eq!(reason.contains("on 2 MiB pages"), huge, "{reason}");
        }
        // The rings' pages were huge ones (node memory files get none:
        // their policy is the machine's, `never` unless an operator
        // changed it).
        if huge {
            assert!(
                huge_file_pages_allocated() >= before + 2,
                "no huge pages were allocated for the rings"
            );
        }
    }
}

#[test]
fn streams_a_sender_ended_are_verified_before_it_finishes_any() {
    // A function with several small streams writes them all, ends them all,
    // then finishes each: its receivers verify at once, over a ring and
    // over a socket, and a write after the end is refused.
    let node = TestNode::start("ended", AgentOptions::default());
    let agent = format!("unix:{}", node.agent.socket.display());
    const STREAMS: usize = 3;
    let size = |i: usize| 200_000 + i;
    for (ring, transport) in [(true, "shm"), (false, "splice")] {
        let name = |i: usize| format!("ended-{transport}-{i}");
        let options = |i: usize| {
            let mut opts = ChannelOptions::new(&agent, name(i));
            opts.ring = ring;
            opts.live = true;
            opts
        };
        let (verified, heard) = std::sync::mpsc::channel();
        let receivers: Vec<_> = (0..STREAMS)
            .map(|i| {
                let (opts, verified) = (options(i), verified.clone());
                std::thread::spawn(move || {
                    let mut rx = blocking::Receiver::connect(&opts).expect("receiver");
                    let mut got = Vec::new();
                    rx.read_to_end(&mut got).expect("a verified stream");
                    rx.finish().expect("verified");
                    verified.send(i).expect("the test waits");
                    got
                })
            })
            .collect();
        let mut senders: Vec<_> = (0..STREAMS)
            .map(|i| {
                let mut tx = blocking::Sender::open(&options(i)).expect("sender");
                tx.write_all(&pattern(size(i), i as u64)).expect("write");
                tx.end().expect("the end mark goes out");
                tx
            })
            .collect();
        // No `finish` yet: the end marks alone let every receiver verify.
        for _ in 0..STREAMS {
            heard
                .recv_timeout(LIMIT)
                .expect("every receiver verifies a stream its sender ended");
        }
        let refused = senders[0]
            .write_all(b"more")
            .expect_err("a write after the end");
        assert!(
            refused
                .to_string()
                .contains("a write after the end of the stream"),
            "{refused}"
        );
        for (i, tx) in senders.into_iter().enumerate() {
            let summary = tx.finish().expect("the receiver's verdict");
            assert_eq!(summary.bytes, size(i) as u64);
        }
        for (i, receiving) in receivers.into_iter().enumerate() {
            let got = receiving.join().expect("the receiver");
            assert!(
                got == pattern(size(i), i as u64),
                "stream {i} arrived changed"
            );
            let channel = node.agent.wait_finished(&name(i), LIMIT);
            assert_eq!(channel["transport"], transport, "{channel:#}");
        }
    }
}
