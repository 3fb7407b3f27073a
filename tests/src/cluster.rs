//! Several hosts on one machine: network namespaces joined by veth to a
//! bridge, private addresses that exist only inside them, an agent in each
//! (its own cgroup, its peers), functions started inside a node.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    agent::{AgentOptions, TestAgent},
    agent_binary,
    cgroup::TestCgroup,
    intruder_binary,
    netns::{Bridge, NetNs},
    probe_binary, require_root,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The port every agent listens on for functions, inside its own namespace.
pub const AGENT_PORT: u16 = 7878;
/// The port every agent listens on for the other agents.
pub const PEER_PORT: u16 = 7879;
/// Given among a node's extra arguments: its agent keeps its default
/// functions' port (loopback) rather than the cluster's `0.0.0.0:7878`.
pub const DEFAULT_LISTEN: &str = "<default --listen>";
/// The cluster secret of every test cluster's agents.
pub const CLUSTER_SECRET: &str = "floki-test-cluster-secret-0123456789";

/// One node: a namespace, its address, a cgroup and an agent.
pub struct ClusterNode {
    /// Node name.
    pub name: String,
    /// Address inside the namespace.
    pub ip: String,
    /// The agent (declared first: it stops before its cgroup goes away).
    pub agent: TestAgent,
    /// The node's cgroup.
    pub cgroup: TestCgroup,
    /// The node's network namespace.
    pub ns: NetNs,
    opts: AgentOptions,
}

/// Nodes on a bridge.
pub struct Cluster {
    /// The nodes, in the order given.
    pub nodes: Vec<ClusterNode>,
    _bridge: Bridge,
}

impl Cluster {
    /// Starts `names.len()` nodes, each agent knowing all others as peers.
    pub fn start(names: &[&str]) -> Self {
        Self::start_with(names, &[])
    }

    /// As [`Cluster::start`], with more `floki-agent run` arguments.
    pub fn start_with(names: &[&str], extra: &[&str]) -> Self {
        Self::start_with_each(names, |_| extra.iter().map(|s| (*s).to_owned()).collect())
    }

    /// As [`Cluster::start`], with more `floki-agent run` arguments per node.
    pub fn start_with_each(names: &[&str], extra_of: impl Fn(&str) -> Vec<String>) -> Self {
        Self::build(names, true, |name, _| extra_of(name))
    }

    /// Nodes whose agents are given no peers: `extra_of(node, addresses of
    /// all nodes)` says how they find each other.
    pub fn start_unlisted(
        names: &[&str],
        extra_of: impl Fn(&str, &[String]) -> Vec<String>,
    ) -> Self {
        Self::build(names, false, extra_of)
    }

    fn build(
        names: &[&str],
        list_peers: bool,
        extra_of: impl Fn(&str, &[String]) -> Vec<String>,
    ) -> Self {
        require_root();
        let bridge = Bridge::new();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let subnet = format!("10.{}.{}", 20 + std::process::id() % 200, n % 250);
        let nets: Vec<(NetNs, String)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let ns = NetNs::new(name);
                let ip = format!("{subnet}.{}", i + 1);
                ns.veth_to_bridge(bridge.name(), &format!("{ip}/24"));
                (ns, ip)
            })
            .collect();
        let ips: Vec<String> = nets.iter().map(|(_, ip)| ip.clone()).collect();
        let nodes = names
            .iter()
            .zip(nets)
            .map(|(name, (ns, ip))| {
                let cgroup = TestCgroup::new(name).expect("creating a node cgroup");
                let mut extra = extra_of(name, &ips);
                // The agent's default functions' port (loopback) instead of
                // the cluster's (every address).
                let default_listen = extra.iter().any(|arg| arg == DEFAULT_LISTEN);
                extra.retain(|arg| arg != DEFAULT_LISTEN);
                extra.push("--peer-listen".into());
                extra.push(format!("0.0.0.0:{PEER_PORT}"));
                for (other, i) in names.iter().zip(1..) {
                    if list_peers && other != name {
                        extra.push("--peer".into());
                        extra.push(format!("{other}={subnet}.{i}:{PEER_PORT}"));
                    }
                }
                let opts = AgentOptions {
                    netns: Some(ns.name().to_owned()),
                    listen: Some(format!("0.0.0.0:{AGENT_PORT}")),
                    node: Some((*name).to_owned()),
                    extra,
                    default_listen,
                    env: vec![("FLOKI_CLUSTER_SECRET".into(), CLUSTER_SECRET.into())],
                    ..AgentOptions::default()
                };
                let agent = TestAgent::start(&cgroup, opts.clone());
                assert_in_namespace(agent.pid(), ns.name());
                ClusterNode {
                    name: (*name).to_owned(),
                    ip,
                    agent,
                    cgroup,
                    ns,
                    opts,
                }
            })
            .collect();
        Self {
            nodes,
            _bridge: bridge,
        }
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// A node by name, mutable.
    pub fn node_mut(&mut self, name: &str) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Waits until every agent's links to its peers are up.
    pub fn wait_connected(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let status = node.agent.status();
                let peers = status["peers"].as_array().cloned().unwrap_or_default();
                if peers.iter().all(|peer| peer["state"] == "connected") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "peers of {} not connected: {status:#}",
                    node.name
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// Fails unless process `pid` runs in network namespace `name`: a node's
/// traffic (private addresses) must never leave the namespaces.
fn assert_in_namespace(pid: u32, name: &str) {
    use std::os::unix::fs::MetadataExt as _;
    let ns = |path: String| std::fs::metadata(&path).map(|m| (m.dev(), m.ino()));
    let process = ns(format!("/proc/{pid}/ns/net")).expect("the agent's network namespace");
    let wanted = ns(format!("/var/run/netns/{name}")).expect("the node's network namespace");
    assert_eq!(
        process, wanted,
        "agent {pid} is not in network namespace {name}"
    );
}

impl ClusterNode {
    /// Starts the node's agent again, as after a crash (same options).
    pub fn restart_agent(&mut self) {
        self.agent.relaunch(&self.cgroup, self.opts.clone());
        assert_in_namespace(self.agent.pid(), self.ns.name());
    }

    /// `floki-agent ARGS` inside this node (namespace and cgroup).
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = self.ns.command(agent_binary());
        cmd.args(args);
        self.cgroup.spawn_inside(&mut cmd);
        cmd
    }

    /// `floki-probe ARGS` inside this node, aimed at its agent.
    pub fn probe(&self, args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
        let mut cmd = self.ns.command(probe_binary());
        cmd.args(args)
            .args(["--agent", &format!("127.0.0.1:{AGENT_PORT}")]);
        self.cgroup.spawn_inside(&mut cmd);
        cmd
    }

    /// `floki-intruder ARGS` inside this node (its root, without the
    /// cluster secret unless given one): its JSON report.
    pub fn intruder(&self, args: &[&str]) -> serde_json::Value {
        let out = self
            .ns
            .command(intruder_binary())
            .args(args)
            .output()
            .expect("running floki-intruder");
        assert!(
            out.status.success(),
            "floki-intruder {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("floki-intruder prints JSON")
    }

    /// `floki-probe ARGS` inside this node, aimed at its agent's Unix socket
    /// (where the agent hands the data sockets over).
    pub fn probe_local(&self, args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
        let mut cmd = self.ns.command(probe_binary());
        cmd.args(args)
            .arg("--agent")
            .arg(format!("unix:{}", self.agent.socket.display()));
        self.cgroup.spawn_inside(&mut cmd);
        cmd
    }

    /// `floki-agent apply` of `yaml` on this node; returns the token.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        self.agent.apply(yaml)
    }

    /// `floki-agent delete NAME` on this node.
    pub fn delete(&self, name: &str) -> Result<(), String> {
        self.agent.delete(name)
    }
}

/// Builds a workflow spec for tests.
#[derive(Default)]
pub struct Spec {
    name: String,
    functions: Vec<(String, String)>,
    edges: Vec<String>,
}

impl Spec {
    /// A workflow called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Adds `function` on `node`.
    pub fn function(mut self, function: &str, node: &str) -> Self {
        self.functions.push((function.to_owned(), node.to_owned()));
        self
    }

    /// Adds an edge.
    pub fn edge(
        mut self,
        name: &str,
        from: &[&str],
        to: &[&str],
        pattern: &str,
        buffer: &str,
    ) -> Self {
        self.edges.push(format!(
            "    - name: {name}\n      from: [{}]\n      to: [{}]\n      pattern: {pattern}\n      buffer: {buffer}\n",
            from.join(", "),
            to.join(", ")
        ));
        self
    }

    /// Adds `key: value` to the last edge (`store: false`, `retain: 1h`).
    pub fn edge_option(mut self, key: &str, value: &str) -> Self {
        let edge = self.edges.last_mut().expect("an edge to set an option of");
        edge.push_str(&format!("      {key}: {value}\n"));
        self
    }

    /// The YAML.
    pub fn yaml(&self) -> String {
        let mut yaml = format!(
            "apiVersion: floki.dev/v1\nkind: Workflow\nmetadata:\n  name: {}\nspec:\n  functions:\n",
            self.name
        );
        for (function, node) in &self.functions {
            yaml.push_str(&format!("    - {{ name: {function}, node: {node} }}\n"));
        }
        yaml.push_str("  edges:\n");
        for edge in &self.edges {
            yaml.push_str(edge);
        }
        yaml
    }
}

/// `floki-probe` arguments for `function` on `edge` of workflow `wf` (the
/// workflow every cluster test applies): `verb` (`send` or `recv`) `bytes`
/// on each of its streams, then `extra`.
pub fn edge_probe_args(
    verb: &str,
    token: &str,
    edge: &str,
    function: &str,
    bytes: u64,
    extra: &[&str],
) -> Vec<String> {
    let bytes = bytes.to_string();
    let mut args = vec![
        verb,
        "--workflow",
        "wf",
        "--edge",
        edge,
        "--as",
        function,
        "--token",
        token,
        "--bytes",
        &bytes,
    ];
    args.extend_from_slice(extra);
    args.into_iter().map(str::to_owned).collect()
}

/// A `floki-probe` started on `node` for `function` on `edge` of workflow
/// `wf`, on its agent's TCP port ([`edge_probe_args`]).
pub fn edge_probe(
    node: &ClusterNode,
    verb: &str,
    token: &str,
    edge: &str,
    function: &str,
    bytes: u64,
    extra: &[&str],
) -> std::process::Child {
    crate::node::spawn(&mut node.probe(&edge_probe_args(verb, token, edge, function, bytes, extra)))
}

/// The same on its agent's Unix socket (the agent hands the link over).
pub fn local_edge_probe(
    node: &ClusterNode,
    verb: &str,
    token: &str,
    edge: &str,
    function: &str,
    bytes: u64,
    extra: &[&str],
) -> std::process::Child {
    crate::node::spawn(
        &mut node.probe_local(&edge_probe_args(verb, token, edge, function, bytes, extra)),
    )
}
