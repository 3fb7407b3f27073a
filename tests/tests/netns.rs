//! Two pods with identical addresses and ports never get each other's data:
//! the kernel endpoints carry the network namespace (KERNEL-NOTES, behaviour 5).

use std::time::Duration;

use floki_tests::{
    agent::AgentOptions,
    netns::NetNs,
    node::{TestNode, assert_success, spawn, wait_within},
    probe_binary,
};

const MIB: u64 = 1 << 20;

#[test]
fn identical_addresses_in_two_namespaces_stay_apart() {
    let node = TestNode::start(
        "netns",
        AgentOptions {
            listen_all: true,
            ..AgentOptions::default()
        },
    );
    assert_eq!(node.agent.status()["datapath"]["mode"], "ebpf");
    let port = node.agent.addr.port();
    let subnet = 100 + (std::process::id() % 100);
    let pods: Vec<(NetNs, String)> = (1..=2)
        .map(|i| {
            let ns = NetNs::new(&format!("pod{i}"));
            ns.veth_to_host(
                &format!("10.{subnet}.{i}.1/24"),
                &format!("10.{subnet}.{i}.2/24"),
            );
            (ns, format!("10.{subnet}.{i}.1:{port}"))
        })
        .collect();

    // In both pods: a receiver on 127.0.0.1:45000 and a sender connecting to
    // it, streaming at the same time, each with its own data.
    let bytes = 128 * MIB;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (i, (ns, agent)) in pods.iter().enumerate() {
        let client = |verb: &str, seed: u64| {
            let mut cmd = ns.command(probe_binary());
            cmd.arg(verb)
                .args(["--agent", agent])
                .args(["--channel", &format!("pod-{i}")])
                .args(["--bytes", &bytes.to_string()])
                .args(["--seed", &seed.to_string()]);
            node.cgroup.spawn_inside(&mut cmd);
            cmd
        };
        receivers.push(spawn(
            client("recv", 1000 + i as u64).args(["--data-addr", "127.0.0.1:45000"]),
        ));
        std::thread::sleep(Duration::from_millis(200));
        senders.push(spawn(
            client("send", 1000 + i as u64).args(["--rate", &(64 * MIB).to_string()]),
        ));
    }
    for child in senders.into_iter().chain(receivers) {
        assert_success(
            &wait_within(child, Duration::from_secs(60)),
            "pod client (receivers check every byte)",
        );
    }
    for i in 0..2 {
        let channel = node
            .agent
            .wait_finished(&format!("pod-{i}"), Duration::from_secs(10));
        assert_eq!(channel["state"], "done", "{channel:#}");
        assert_eq!(channel["transport"], "splice", "{channel:#}");
        assert!(channel["bytes"].as_u64().unwrap() >= bytes, "{channel:#}");
    }
}
