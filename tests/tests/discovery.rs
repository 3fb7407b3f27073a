//! Peer discovery through DNS, as on Kubernetes with the DaemonSet's headless
//! Service: a real DNS server (dnsmasq) inside one node's namespace answers
//! the agents' name with every node's address, and no agent is given a peer.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use floki_tests::{
    cluster::{Cluster, PEER_PORT, Spec, edge_probe_args},
    node::{assert_success, spawn, wait_within},
};
use serde_json::Value;

const NAME: &str = "floki-agent.floki-system.svc.cluster.local";
const DNS_PORT: u16 = 5353;
const LIMIT: Duration = Duration::from_secs(60);

/// dnsmasq serving `NAME` from a hosts file, killed on drop.
struct Dns {
    child: Child,
    hosts: PathBuf,
}

impl Dns {
    fn start(cluster: &Cluster, listen: &str, ips: &[&str]) -> Self {
        let hosts = std::env::temp_dir().join(format!("floki-dns-{}.hosts", std::process::id()));
        // Written before dnsmasq starts: a SIGHUP before it installs its
        // handler would end it.
        fs::write(&hosts, records(ips)).unwrap();
        Self {
            child: cluster.nodes[0]
                .ns
                .command("dnsmasq")
                .args(["--keep-in-foreground", "--no-resolv", "--no-hosts"])
                .args(["--conf-file=/dev/null", "--user=root", "--pid-file="])
                .args(["--bind-interfaces", "--log-facility=-", "--local-ttl=1"])
                // Answer for the whole domain itself (no AAAA refused for
                // want of an upstream server), as the cluster DNS does.
                .arg("--local=/cluster.local/")
                .arg(format!("--port={DNS_PORT}"))
                .arg(format!("--listen-address={listen}"))
                .arg(format!("--addn-hosts={}", hosts.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting dnsmasq (cargo xtask test installs dnsmasq-base)"),
            hosts,
        }
    }

    /// Answers `NAME` with `ips` from now on (dnsmasq rereads on SIGHUP).
    fn publish(&self, ips: &[&str]) {
        fs::write(&self.hosts, records(ips)).unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        );
    }
}

fn records(ips: &[&str]) -> String {
    ips.iter().map(|ip| format!("{ip} {NAME}\n")).collect()
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.hosts);
    }
}

/// Waits until `status` of `node` lists exactly `peers`, all connected.
fn wait_peers(cluster: &Cluster, node: &str, peers: &[&str]) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let status = cluster.node(node).agent.status();
        let mut listed: Vec<(String, String)> = status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["node"].as_str().unwrap().to_owned(),
                    p["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        listed.sort();
        let wanted: Vec<(String, String)> = peers
            .iter()
            .map(|p| ((*p).to_owned(), "connected".to_owned()))
            .collect();
        if listed == wanted {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{node} lists {listed:?}, not {wanted:?}:\n{}",
            cluster.node(node).agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agents_find_each_other_through_dns_and_forget_who_leaves() {
    let names = ["node-a", "node-b", "node-c"];
    let cluster = Cluster::start_unlisted(&names, |_, ips| {
        vec![
            "--discover-dns".into(),
            NAME.into(),
            "--discover-dns-server".into(),
            format!("{}:{DNS_PORT}", ips[0]),
            "--discover-every".into(),
            "1".into(),
        ]
    });
    let ips: Vec<&str> = cluster.nodes.iter().map(|n| n.ip.as_str()).collect();
    let dns = Dns::start(&cluster, ips[0], &ips);

    // Each agent learns the others' node names from the agents themselves.
    wait_peers(&cluster, "node-a", &["node-b", "node-c"]);
    wait_peers(&cluster, "node-b", &["node-a", "node-c"]);
    let status = wait_peers(&cluster, "node-c", &["node-a", "node-b"]);
    let peer_a = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == "node-a")
        .cloned()
        .unwrap();
    assert_eq!(
        peer_a["addr"],
        format!("{}:{PEER_PORT}", ips[0]),
        "{peer_a:#}"
    );

    // A workflow across discovered peers works as across listed ones.
    let spec = Spec::new("wf")
        .function("p", "node-a")
        .function("q", "node-c")
        .edge("e", &["p"], &["q"], "one-to-one", "4MiB");
    let token = cluster.node("node-a").apply(&spec.yaml()).expect("apply");
    let args = |verb: &str| {
        let function = if verb == "send" { "p" } else { "q" };
        edge_probe_args(verb, &token, "e", function, 16 << 20, &[])
    };
    let recv = spawn(&mut cluster.node("node-c").probe(&args("recv")));
    let send = spawn(&mut cluster.node("node-a").probe(&args("send")));
    assert_success(&wait_within(send, LIMIT), "producer on node-a");
    assert_success(&wait_within(recv, LIMIT), "consumer on node-c");

    // node-c's record goes away (its pod deleted): the others forget it.
    dns.publish(&ips[..2]);
    wait_peers(&cluster, "node-a", &["node-b"]);
    wait_peers(&cluster, "node-b", &["node-a"]);
}
