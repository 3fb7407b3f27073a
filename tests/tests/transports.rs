//! How the agent picks a channel's transport (shm for clients that take a
//! ring, splice for socket clients, tcp without eBPF), what `--transport`
//! overrides, and the errors a user sees when an override cannot be met.

use std::{path::PathBuf, process::Output, time::Duration};

use floki_tests::{
    agent::AgentOptions,
    node::{Door, TestNode, spawn, wait_within},
};

const LIMIT: Duration = Duration::from_secs(60);

/// A small file to send, and where to receive it.
struct Files {
    input: PathBuf,
    output: PathBuf,
    data: Vec<u8>,
}

impl Files {
    fn new(tag: &str) -> Self {
        let base =
            std::env::temp_dir().join(format!("floki-transports-{}-{tag}", std::process::id()));
        let data: Vec<u8> = (0..(1u32 << 20) + 3)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let input = base.with_extension("in");
        std::fs::write(&input, &data).expect("input file");
        Self {
            input,
            output: base.with_extension("out"),
            data,
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.input);
        let _ = std::fs::remove_file(&self.output);
    }
}

/// One CLI transfer: each end through its door, with its own extra flags.
fn transfer(
    node: &TestNode,
    channel: &str,
    (send_door, send_flags): (Door, &[&str]),
    (recv_door, recv_flags): (Door, &[&str]),
) -> (Output, Output, Files) {
    let files = Files::new(channel);
    let recv = spawn(
        node.cli_at(recv_door, "recv", channel)
            .arg("-o")
            .arg(&files.output)
            .args(recv_flags),
    );
    std::thread::sleep(Duration::from_millis(100));
    let send = spawn(
        node.cli_at(send_door, "send", channel)
            .arg(&files.input)
            .args(send_flags),
    );
    let send = wait_within(send, LIMIT);
    let recv = wait_within(recv, LIMIT);
    (send, recv, files)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a transfer went through whole over `transport`, and returns the
/// channel's status entry.
fn assert_over(
    node: &TestNode,
    channel: &str,
    result: &(Output, Output, Files),
    transport: &str,
) -> serde_json::Value {
    let (send, recv, files) = result;
    assert!(
        send.status.success(),
        "{channel}: send failed: {}",
        stderr(send)
    );
    assert!(
        recv.status.success(),
        "{channel}: recv failed: {}",
        stderr(recv)
    );
    assert!(
        std::fs::read(&files.output).expect("output") == files.data,
        "{channel}: the received file differs from the sent one"
    );
    assert!(
        stderr(recv).contains(&format!("via {transport}")),
        "{channel}: recv said: {}",
        stderr(recv)
    );
    let status = node.agent.wait_finished(channel, LIMIT);
    assert_eq!(status["state"], "done", "{status:#}");
    assert_eq!(status["transport"], transport, "{status:#}");
    status
}

#[test]
fn the_agent_picks_shm_then_splice_and_says_why() {
    let node = TestNode::start_ebpf("pick");
    let none: &[&str] = &[];
    // Both on the Unix socket with the CLI: a ring.
    let both = transfer(&node, "both-unix", (Door::Unix, none), (Door::Unix, none));
    let status = assert_over(&node, "both-unix", &both, "shm");
    assert!(
        status["reason"].as_str().unwrap().contains("ring"),
        "{status:#}"
    );
    // A sender on the TCP port cannot take a ring: the kernel splice.
    let mixed = transfer(&node, "mixed", (Door::Tcp, none), (Door::Unix, none));
    let status = assert_over(&node, "mixed", &mixed, "splice");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("sender cannot take a ring"),
        "{status:#}"
    );
    // `floki-agent status` prints the choice and the reason.
    let text = node.agent.status_text();
    assert!(
        text.contains("shm") && text.contains("take a shared-memory ring"),
        "{text}"
    );
}

#[test]
fn transport_overrides_are_honoured() {
    let node = TestNode::start_ebpf("override");
    let none: &[&str] = &[];
    for (channel, flag, transport) in [
        ("force-splice", ["--transport", "splice"], "splice"),
        ("force-tcp", ["--transport", "tcp"], "tcp"),
    ] {
        let result = transfer(&node, channel, (Door::Unix, &flag), (Door::Unix, none));
        let status = assert_over(&node, channel, &result, transport);
        assert!(
            status["reason"].as_str().unwrap().contains("asked for"),
            "{status:#}"
        );
    }
    // The receiver may insist too.
    let result = transfer(
        &node,
        "recv-forces-tcp",
        (Door::Unix, none),
        (Door::Unix, &["--transport", "tcp"]),
    );
    assert_over(&node, "recv-forces-tcp", &result, "tcp");
}

#[test]
fn overrides_that_cannot_be_met_are_refused_to_both_ends() {
    let node = TestNode::start_ebpf("refuse");
    let none: &[&str] = &[];
    // shm with a receiver on the TCP port: both ends hear why, nothing is written.
    let (send, recv, files) = transfer(
        &node,
        "no-ring",
        (Door::Unix, &["--transport", "shm"]),
        (Door::Tcp, none),
    );
    for (end, out) in [("send", &send), ("recv", &recv)] {
        assert!(!out.status.success(), "{end} succeeded");
        let message = stderr(out);
        assert!(
            message.contains("TransportUnavailable") && message.contains("the receiver cannot"),
            "{end} said: {message}"
        );
    }
    assert!(
        !files.output.exists(),
        "a refused channel left an output file"
    );
    // Two ends insisting on different transports.
    let (send, recv, _files) = transfer(
        &node,
        "disagree",
        (Door::Unix, &["--transport", "shm"]),
        (Door::Unix, &["--transport", "tcp"]),
    );
    for out in [&send, &recv] {
        assert!(!out.status.success());
        assert!(
            stderr(out).contains("insists on transport shm"),
            "{}",
            stderr(out)
        );
    }
    // An unknown transport is a usage error naming the choices.
    let out = node
        .cli_at(Door::Unix, "send", "x")
        .args(["--transport", "carrier-pigeon"])
        .output()
        .expect("send");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("use shm, splice or tcp"),
        "{}",
        stderr(&out)
    );
    // The agent keeps serving.
    let again = transfer(&node, "after", (Door::Unix, none), (Door::Unix, none));
    assert_over(&node, "after", &again, "shm");
}

#[test]
fn without_ebpf_splice_is_refused_and_shm_still_serves() {
    let node = TestNode::start(
        "no-ebpf-choice",
        AgentOptions {
            no_ebpf: true,
            ..AgentOptions::default()
        },
    );
    let none: &[&str] = &[];
    let (send, recv, _files) = transfer(
        &node,
        "want-splice",
        (Door::Unix, &["--transport", "splice"]),
        (Door::Unix, none),
    );
    for out in [&send, &recv] {
        assert!(!out.status.success());
        assert!(stderr(out).contains("eBPF datapath"), "{}", stderr(out));
    }
    let result = transfer(
        &node,
        "fallback-shm",
        (Door::Unix, none),
        (Door::Unix, none),
    );
    assert_over(&node, "fallback-shm", &result, "shm");
    let result = transfer(&node, "fallback-tcp", (Door::Tcp, none), (Door::Unix, none));
    let status = assert_over(&node, "fallback-tcp", &result, "tcp");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("eBPF datapath not active"),
        "{status:#}"
    );
}

#[test]
fn the_agent_probes_the_kernel_and_falls_back_on_a_missing_feature() {
    let node = TestNode::start_ebpf("kernel-probe");
    let kernel = &node.agent.status()["datapath"]["kernel"];
    let release = nix::sys::utsname::uname().unwrap();
    assert_eq!(kernel["release"], release.release().to_str().unwrap());
    let features = kernel["features"].as_array().unwrap();
    for name in ["sock_ops", "sk_msg", "sockhash", "msg_redirect_hash"] {
        let feature = features.iter().find(|f| f["name"] == name);
        assert_eq!(
            feature.map(|f| &f["supported"]),
            Some(&serde_json::Value::Bool(true)),
            "{kernel:#}"
        );
    }
    drop(node);

    // A kernel without sk_msg: the agent says so at start, loads nothing and
    // still serves every channel.
    let node = TestNode::start(
        "kernel-lacks",
        AgentOptions {
            extra: vec!["--pretend-kernel-lacks".into(), "sk_msg".into()],
            ..AgentOptions::default()
        },
    );
    let status = node.agent.status();
    assert_eq!(status["datapath"]["mode"], "fallback", "{status:#}");
    let reason = status["datapath"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("lacks BPF_PROG_TYPE_SK_MSG programs (sk_msg)"),
        "{reason}"
    );
    assert_eq!(status["programs"].as_array().map(Vec::len), Some(0));
    let sk_msg = status["datapath"]["kernel"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "sk_msg")
        .cloned()
        .unwrap();
    assert_eq!(sk_msg["supported"], false, "{sk_msg:#}");
    let none: &[&str] = &[];
    let result = transfer(&node, "lacks-tcp", (Door::Tcp, none), (Door::Tcp, none));
    assert_over(&node, "lacks-tcp", &result, "tcp");
    let result = transfer(&node, "lacks-shm", (Door::Unix, none), (Door::Unix, none));
    assert_over(&node, "lacks-shm", &result, "shm");
    let human = node.agent.status_text();
    assert!(
        human.contains("lacks or could not probe: sk_msg"),
        "{human}"
    );
}
