//! One test node: a cgroup of the test's own and an agent attached to it, with
//! builders for client processes that start inside that cgroup.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::{
    agent::{AgentOptions, TestAgent},
    cgroup::TestCgroup,
    probe_binary, require_root,
};

/// Which door of the agent a test's clients use: its TCP port (socket
/// clients: `splice`, or `tcp` without eBPF) or its Unix socket with clients
/// that take a ring (`shm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    /// The channel port.
    Tcp,
    /// The Unix socket.
    Unix,
}

/// A cgroup and its agent.
pub struct TestNode {
    /// The agent (declared first: it stops before its cgroup goes away).
    pub agent: TestAgent,
    /// The cgroup the agent's `sock_ops` is attached to.
    pub cgroup: TestCgroup,
}

impl TestNode {
    /// Starts a node; fails (never skips) without root.
    pub fn start(label: &str, opts: AgentOptions) -> Self {
        require_root();
        let cgroup = TestCgroup::new(label).expect("creating the test cgroup");
        let agent = TestAgent::start(&cgroup, opts);
        Self { agent, cgroup }
    }

    /// A node whose agent must have the eBPF datapath: fails with the agent's
    /// reason if it fell back.
    pub fn start_ebpf(label: &str) -> Self {
        let node = Self::start(label, AgentOptions::default());
        let status = node.agent.status();
        assert_eq!(
            status["datapath"]["mode"], "ebpf",
            "the agent could not load its eBPF programs: {}",
            status["datapath"]["reason"]
        );
        node
    }

    /// `floki-agent send|recv CHANNEL`, started inside the node's cgroup.
    pub fn cli(&self, verb: &str, channel: &str) -> Command {
        let mut cmd = self.agent.client(verb, channel);
        self.cgroup.spawn_inside(&mut cmd);
        cmd
    }

    /// `floki-agent send|recv CHANNEL` on the agent's Unix socket, started
    /// inside the node's cgroup.
    pub fn local_cli(&self, verb: &str, channel: &str) -> Command {
        let mut cmd = self.agent.local_client(verb, channel);
        self.cgroup.spawn_inside(&mut cmd);
        cmd
    }

    /// `floki-probe send|recv`, started inside the node's cgroup.
    pub fn probe(&self, verb: &str, channel: &str, bytes: u64) -> Command {
        self.probe_via(&self.agent.addr.to_string(), verb, channel, bytes)
    }

    /// `floki-probe send|recv` on the agent's Unix socket.
    pub fn local_probe(&self, verb: &str, channel: &str, bytes: u64) -> Command {
        let agent = format!("unix:{}", self.agent.socket.display());
        self.probe_via(&agent, verb, channel, bytes)
    }

    /// `floki-agent send|recv CHANNEL` through `door`.
    pub fn cli_at(&self, door: Door, verb: &str, channel: &str) -> Command {
        match door {
            Door::Tcp => self.cli(verb, channel),
            Door::Unix => self.local_cli(verb, channel),
        }
    }

    /// `floki-probe send|recv` through `door`: the async client on the TCP
    /// port, the blocking one (which takes rings) on the Unix socket.
    pub fn probe_at(&self, door: Door, verb: &str, channel: &str, bytes: u64) -> Command {
        match door {
            Door::Tcp => self.probe(verb, channel, bytes),
            Door::Unix => {
                let mut cmd = self.local_probe(verb, channel, bytes);
                cmd.arg("--blocking");
                cmd
            }
        }
    }

    /// Streams `bytes` on `channel` through `door` with two probes (the
    /// receiver started first, checking every byte) and asserts both
    /// succeeded.
    pub fn probe_stream(&self, door: Door, channel: &str, bytes: u64) {
        const LIMIT: Duration = Duration::from_secs(60);
        let recv = spawn(&mut self.probe_at(door, "recv", channel, bytes));
        let send = spawn(&mut self.probe_at(door, "send", channel, bytes));
        assert_success(&wait_within(send, LIMIT), &format!("sender on {channel}"));
        assert_success(&wait_within(recv, LIMIT), &format!("receiver on {channel}"));
    }

    fn probe_via(&self, agent: &str, verb: &str, channel: &str, bytes: u64) -> Command {
        let mut cmd = Command::new(probe_binary());
        cmd.arg(verb)
            .args(["--agent", agent])
            .args(["--channel", channel])
            .args(["--bytes", &bytes.to_string()]);
        self.cgroup.spawn_inside(&mut cmd);
        cmd
    }
}

/// Starts `cmd` with its output captured.
pub fn spawn(cmd: &mut Command) -> std::process::Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning a client")
}

/// Runs `cmd` to completion with captured output, failing the test if it
/// takes longer than `limit` (a hang is a failure, not a slow pass).
pub fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    wait_within(spawn(cmd), limit)
}

/// Waits for `child` with captured output, killing it and failing after `limit`.
pub fn wait_within(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if child.try_wait().expect("waiting for a client").is_some() {
            return child.wait_with_output().expect("collecting client output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting client output");
            panic!(
                "client did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts a client succeeded, showing its output if not.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// xxh3-64 of a file, for comparing inputs and outputs.
pub fn file_digest(path: &Path) -> u64 {
    use std::{hash::Hasher as _, io::Read as _};
    let mut file = std::fs::File::open(path).expect("opening a file to hash");
    let mut hasher = twox_hash::XxHash3_64::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("reading a file to hash");
        if n == 0 {
            return hasher.finish();
        }
        hasher.write(&buf[..n]);
    }
}
