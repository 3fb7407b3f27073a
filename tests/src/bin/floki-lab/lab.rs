//! What the demo and the benchmarks share: an agent in a cgroup of their own,
//! and peers (`floki-lab peer ...`) started inside it.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};
use floki_tests::{
    agent::{AgentOptions, TestAgent},
    cgroup::TestCgroup,
};

pub use crate::peer::Measured;

/// The agent and this program (whose `peer` subcommand is every endpoint),
/// from the same build (`cargo xtask` builds both before running this).
pub struct Binaries {
    pub agent: PathBuf,
    pub lab: PathBuf,
}

impl Binaries {
    /// The binaries next to this one.
    pub fn beside_me() -> anyhow::Result<Self> {
        let lab = std::env::current_exe().context("locating floki-lab")?;
        let agent = floki_tests::agent_binary();
        Ok(Self { agent, lab })
    }
}

/// An agent and the cgroup it watches.
pub struct Lab {
    pub agent: TestAgent,
    pub cgroup: TestCgroup,
    lab: PathBuf,
}

impl Lab {
    /// Starts an agent (`--no-ebpf` when `no_ebpf`) on a fresh cgroup.
    pub fn start(binaries: &Binaries, label: &str, no_ebpf: bool) -> anyhow::Result<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("the agent loads eBPF programs: run this as root");
        }
        let cgroup = TestCgroup::new(label).context("creating a cgroup for the agent")?;
        let agent = TestAgent::start(
            &cgroup,
            AgentOptions {
                no_ebpf,
                ..AgentOptions::default()
            },
        );
        if !no_ebpf && agent.status()["datapath"]["mode"] != "ebpf" {
            bail!(
                "the agent could not load its eBPF programs: {}",
                agent.status()["datapath"]["reason"]
            );
        }
        Ok(Self {
            agent,
            cgroup,
            lab: binaries.lab.clone(),
        })
    }

    /// `floki-lab peer ARGS`, started inside the cgroup (optionally on one CPU).
    pub fn peer(&self, args: &[String], cpu: Option<usize>) -> anyhow::Result<Child> {
        peer_command(&self.lab, &self.cgroup, args, cpu)
            .spawn()
            .context("starting a peer")
    }

    /// The agent's channel address.
    pub fn addr(&self) -> String {
        self.agent.addr.to_string()
    }

    /// The agent's Unix socket, as clients name it (`unix:PATH`).
    pub fn socket_addr(&self) -> String {
        format!("unix:{}", self.agent.socket.display())
    }
}

/// `floki-lab peer ARGS` inside `cgroup`.
pub fn peer_command(
    lab: &PathBuf,
    cgroup: &TestCgroup,
    args: &[String],
    cpu: Option<usize>,
) -> Command {
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &cpu.to_string()]).arg(lab);
            cmd
        }
        None => Command::new(lab),
    };
    cmd.arg("peer")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cgroup.spawn_inside(&mut cmd);
    cmd
}

/// Waits for a peer and parses what it measured.
pub fn measured(child: Child) -> anyhow::Result<Measured> {
    let out = child.wait_with_output().context("waiting for a peer")?;
    if !out.status.success() {
        bail!(
            "a peer failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("reading a peer's measurement")
}
