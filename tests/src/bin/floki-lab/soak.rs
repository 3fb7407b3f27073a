//! `cargo xtask soak`: streams killed at random points. Each run streams
//! 8 MiB between two probes (the receiver checks every byte against the
//! pattern), then kills one party at a random moment: the sender, the
//! receiver, the agent, and across nodes also the consumer's agent or the
//! link between the nodes (down for a second). Every end still alive must
//! then either finish the stream verified or fail with an error; the
//! outcomes are counted per transport and victim, and written to
//! docs/RELIABILITY.md:
//!
//! * **intact**: the receiver verified every byte (the kill came too late to
//!   matter, or the path survived it; a sender succeeds only on its
//!   receiver's ack of the verified stream, so a receiver killed after it
//!   counts here too);
//! * **clear error**: every surviving end failed with an error;
//! * **silent truncation**: an end reported success for a stream that was
//!   not whole (a receiver that ended short or read other bytes, a sender
//!   whose receiver failed): what must never happen;
//! * **hang**: an end neither finished nor failed within 30 s.

use std::{
    fmt::Write as _,
    process::{Child, Output},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use floki_tests::{
    agent::AgentOptions,
    cluster::{Cluster, Spec},
    node::{TestNode, spawn},
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use crate::bench::report;

const BYTES: u64 = 8 << 20;
const HANG: Duration = Duration::from_secs(30);
/// Seconds an end waits for its peer: one whose peer died before it came
/// (or a retry that never comes) fails with a clear error then, well within
/// [`HANG`].
const PAIR_TIMEOUT: &str = "10";

#[derive(Debug, Args)]
pub struct Options {
    /// Runs per transport.
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Transports: shm, splice, tcp (one node), cross-node (two).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "shm,splice,tcp,cross-node"
    )]
    pub transports: Vec<String>,
    /// Only these victims: sender, receiver, agent, consumer-agent, link
    /// [default: all that apply].
    #[arg(long, value_delimiter = ',')]
    pub victims: Vec<String>,
    /// Seed of the kill points and victims.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the results [default: docs/RELIABILITY.md].
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Victim {
    Sender,
    Receiver,
    Agent,
    ConsumerAgent,
    Link,
}

impl Victim {
    fn key(self) -> &'static str {
        match self {
            Self::Sender => "sender",
            Self::Receiver => "receiver",
            Self::Agent => "agent",
            Self::ConsumerAgent => "consumer-agent",
            Self::Link => "link",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Sender => "sender",
            Self::Receiver => "receiver",
            Self::Agent => "agent (producer's)",
            Self::ConsumerAgent => "consumer's agent",
            Self::Link => "link (down 1 s)",
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Tally {
    runs: u32,
    intact: u32,
    clear: u32,
    silent: u32,
    hangs: u32,
}

/// The outcomes of one transport: per victim, and notes on the runs that
/// were not intact or clear errors.
struct Results {
    transport: String,
    tallies: Vec<(Victim, Tally)>,
    notes: Vec<String>,
}

/// One node's or two nodes' place for the runs of a transport.
enum Place {
    Node {
        node: Box<TestNode>,
        opts: AgentOptions,
        unix: bool,
    },
    Cluster {
        cluster: Cluster,
        token: String,
    },
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut results: Vec<Results> = Vec::new();
    let started = Instant::now();
    for transport in &opts.transports {
        let mut place = place(transport)?;
        let victims: &[Victim] = match place {
            Place::Node { .. } => &[Victim::Sender, Victim::Receiver, Victim::Agent],
            Place::Cluster { .. } => &[
                Victim::Sender,
                Victim::Receiver,
                Victim::Agent,
                Victim::ConsumerAgent,
                Victim::Link,
            ],
        };
        let chosen: Vec<Victim> = victims
            .iter()
            .copied()
            .filter(|v| opts.victims.is_empty() || opts.victims.iter().any(|n| n == v.key()))
            .collect();
        let victims = &chosen[..];
        let mut tallies: Vec<(Victim, Tally)> =
            victims.iter().map(|v| (*v, Tally::default())).collect();
        let mut notes = Vec::new();
        for i in 0..opts.runs {
            let victim = victims[rng.random_range(0..victims.len())];
            // 8 MiB at 16-64 MiB/s: 0.125-0.5 s; the kill lands anywhere in
            // it, or just before, or after.
            let rate = rng.random_range(16u64..64) << 20;
            let kill_after = Duration::from_millis(rng.random_range(0..600));
            let outcome = one_run(&mut place, transport, i, victim, rate, kill_after)?;
            let tally = &mut tallies
                .iter_mut()
                .find(|(v, _)| *v == victim)
                .expect("listed")
                .1;
            tally.runs += 1;
            match outcome {
                Outcome::Intact => tally.intact += 1,
                Outcome::Clear => tally.clear += 1,
                Outcome::Silent(note) => {
                    tally.silent += 1;
                    notes.push(format!("run {i} ({}): {note}", victim.name()));
                }
                Outcome::Hang(note) => {
                    tally.hangs += 1;
                    notes.push(format!("run {i} ({}): {note}", victim.name()));
                }
            }
        }
        let total = tallies.iter().fold(Tally::default(), |mut sum, (_, t)| {
            sum.runs += t.runs;
            sum.intact += t.intact;
            sum.clear += t.clear;
            sum.silent += t.silent;
            sum.hangs += t.hangs;
            sum
        });
        eprintln!(
            "soak {transport}: {} runs, {} intact, {} clear errors, {} silent truncations, {} hangs",
            total.runs, total.intact, total.clear, total.silent, total.hangs
        );
        results.push(Results {
            transport: transport.clone(),
            tallies,
            notes,
        });
    }
    write(opts, &results, started.elapsed())
}

fn place(transport: &str) -> anyhow::Result<Place> {
    Ok(match transport {
        "shm" | "splice" | "tcp" => {
            let opts = AgentOptions {
                no_ebpf: transport == "tcp",
                rust_log: Some("warn".into()),
                ..AgentOptions::default()
            };
            let node = TestNode::start(&format!("soak-{transport}"), opts.clone());
            Place::Node {
                node: Box::new(node),
                opts,
                unix: transport == "shm",
            }
        }
        "cross-node" => {
            let cluster = Cluster::start(&["node-a", "node-b"]);
            cluster.wait_connected();
            let spec = Spec::new("wf")
                .function("p", "node-a")
                .function("q", "node-b")
                .edge("e", &["p"], &["q"], "one-to-one", "1MiB")
                .edge_option("store", "false");
            let token = cluster
                .node("node-a")
                .apply(&spec.yaml())
                .map_err(anyhow::Error::msg)
                .context("applying the soak's workflow")?;
            Place::Cluster { cluster, token }
        }
        other => anyhow::bail!("no transport {other:?}: shm, splice, tcp or cross-node"),
    })
}

enum Outcome {
    Intact,
    Clear,
    Silent(String),
    Hang(String),
}

fn one_run(
    place: &mut Place,
    transport: &str,
    i: usize,
    victim: Victim,
    rate: u64,
    kill_after: Duration,
) -> anyhow::Result<Outcome> {
    let rate = rate.to_string();
    let bytes = BYTES.to_string();
    let (mut receiver, mut sender) = match &*place {
        Place::Node { node, unix, .. } => {
            let channel = format!("soak-{transport}-{i}");
            let probe = |verb: &str| {
                let mut cmd = if *unix {
                    node.local_probe(verb, &channel, BYTES)
                } else {
                    node.probe(verb, &channel, BYTES)
                };
                cmd.args(["--live", "--rate", &rate, "--pair-timeout", PAIR_TIMEOUT]);
                if verb == "recv" {
                    cmd.args(["--window", "1048576"]);
                }
                spawn(&mut cmd)
            };
            (probe("recv"), probe("send"))
        }
        Place::Cluster { cluster, token } => {
            let args = |verb: &str, function: &str| {
                vec![
                    verb.to_owned(),
                    "--workflow".into(),
                    "wf".into(),
                    "--edge".into(),
                    "e".into(),
                    "--as".into(),
                    function.into(),
                    "--token".into(),
                    token.clone(),
                    "--bytes".into(),
                    bytes.clone(),
                    "--rate".into(),
                    rate.clone(),
                    "--pair-timeout".into(),
                    PAIR_TIMEOUT.into(),
                ]
            };
            (
                spawn(&mut cluster.node("node-b").probe(&args("recv", "q"))),
                spawn(&mut cluster.node("node-a").probe(&args("send", "p"))),
            )
        }
    };
    std::thread::sleep(kill_after);
    // The victim.
    // An end that already exited is not killed: the kill came too late.
    let mut killed_end = None;
    match victim {
        Victim::Sender if matches!(sender.try_wait(), Ok(None)) => {
            sender.kill().ok();
            killed_end = Some("sender");
        }
        Victim::Receiver if matches!(receiver.try_wait(), Ok(None)) => {
            receiver.kill().ok();
            killed_end = Some("receiver");
        }
        Victim::Sender | Victim::Receiver => {}
        Victim::Agent | Victim::ConsumerAgent => kill_agent(place, victim),
        Victim::Link => cut_link(place)?,
    }
    let deadline = Instant::now() + HANG;
    let sent = finish(sender, deadline, killed_end == Some("sender"));
    let received = finish(receiver, deadline, killed_end == Some("receiver"));
    restart_agents(place, victim);
    Ok(classify(sent, received))
}

/// What an end did: `None` if it was the victim.
enum End {
    Ok,
    Failed(String),
    /// What it had said on stderr when it was killed.
    Hung(String),
}

fn finish(mut child: Child, deadline: Instant, victim: bool) -> Option<End> {
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            let said = child
                .wait_with_output()
                .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
                .unwrap_or_default();
            return (!victim).then_some(End::Hung(said));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out: Output = child.wait_with_output().ok()?;
    if victim {
        return None;
    }
    Some(if out.status.success() {
        End::Ok
    } else {
        End::Failed(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

fn classify(sent: Option<End>, received: Option<End>) -> Outcome {
    let short = |said: &str| {
        // The probe's own checks: the library said the stream ended (or
        // gave bytes) where it had not.
        said.contains("the test expected") || said.contains("differs from what the sender wrote")
    };
    match (&sent, &received) {
        (Some(End::Hung(said)), _) => Outcome::Hang(format!("the sender hung: {said}")),
        (_, Some(End::Hung(said))) => Outcome::Hang(format!("the receiver hung: {said}")),
        (_, Some(End::Failed(said))) if short(said) => Outcome::Silent(format!(
            "the receiver was given a short or wrong stream: {said}"
        )),
        (Some(End::Ok), Some(End::Failed(said))) => Outcome::Silent(format!(
            "the sender succeeded while its receiver failed: {said}"
        )),
        // A sender succeeds only on its receiver's ack, sent once every
        // byte was verified: the receiver died after it.
        (Some(End::Ok), None) | (_, Some(End::Ok)) => Outcome::Intact,
        _ => Outcome::Clear,
    }
}

fn kill_agent(place: &mut Place, victim: Victim) {
    match place {
        Place::Node { node, .. } => node.agent.kill(),
        Place::Cluster { cluster, .. } => {
            let name = if victim == Victim::Agent {
                "node-a"
            } else {
                "node-b"
            };
            cluster.node(name).agent.kill();
        }
    }
}

fn restart_agents(place: &mut Place, victim: Victim) {
    match place {
        Place::Node { node, opts, .. } if victim == Victim::Agent => {
            node.agent.relaunch(&node.cgroup, opts.clone());
        }
        Place::Cluster { cluster, .. }
            if matches!(victim, Victim::Agent | Victim::ConsumerAgent) =>
        {
            let name = if victim == Victim::Agent {
                "node-a"
            } else {
                "node-b"
            };
            cluster.node_mut(name).restart_agent();
            cluster.wait_connected();
            wait_ready(cluster);
        }
        Place::Cluster { cluster, .. } if victim == Victim::Link => wait_ready(cluster),
        _ => {}
    }
}

/// Until the edge's link is prepared again (after a restart or a cut).
fn wait_ready(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let status = cluster.node("node-a").agent.status();
        let ready = status["workflows"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["name"] == "wf"))
            .and_then(|w| w["edges"].as_array())
            .is_some_and(|edges| edges.iter().all(|e| e["state"] == "ready"));
        if ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Takes node-a's link to the bridge down for a second.
fn cut_link(place: &Place) -> anyhow::Result<()> {
    let Place::Cluster { cluster, .. } = place else {
        return Ok(());
    };
    let ns = cluster.node("node-a").ns.name().to_owned();
    let out = std::process::Command::new("ip")
        .args(["-n", &ns, "-o", "link", "show", "type", "veth"])
        .output()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let name = listing
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.trim_end_matches(':').split('@').next())
        .context("node-a's veth")?
        .to_owned();
    let ip = |state: &str| {
        std::process::Command::new("ip")
            .args(["-n", &ns, "link", "set", &name, state])
            .status()
    };
    ip("down")?;
    std::thread::sleep(Duration::from_secs(1));
    ip("up")?;
    Ok(())
}

fn write(opts: &Options, results: &[Results], took: Duration) -> anyhow::Result<()> {
    let mut md = String::new();
    writeln!(
        md,
        "# Reliability\n\nWhat happens to a stream when a party dies or the network breaks in its middle. \
         `cargo xtask soak` (tests/src/bin/floki-lab/soak.rs) streams 8 MiB between two probes \
         (the receiver checks every byte, sender paced at 16-64 MiB/s), kills one party at a \
         random moment in the first 0.6 s, and waits 30 s at most for the ends still alive \
         (an end gives up on a peer that never comes after 10 s). \
         An end must finish the stream verified or fail with an error: a **silent truncation** \
         is an end that reported success for a stream that was not whole, a **hang** an end \
         that did neither.\n\nRun {} on {} ({} runs per transport, seed {}, {:.0} min); the \
         fuzzing figures are below it.\n",
        report::today(),
        report::machine(),
        opts.runs,
        opts.seed,
        took.as_secs_f64() / 60.0
    )?;
    writeln!(
        md,
        "| transport | killed | runs | intact | clear errors | silent truncations | hangs |\n|---|---|---:|---:|---:|---:|---:|"
    )?;
    for Results {
        transport, tallies, ..
    } in results
    {
        for (victim, t) in tallies {
            writeln!(
                md,
                "| {transport} | {} | {} | {} | {} | {} | {} |",
                victim.name(),
                t.runs,
                t.intact,
                t.clear,
                t.silent,
                t.hangs
            )?;
        }
    }
    for Results {
        transport, notes, ..
    } in results
    {
        for note in notes {
            writeln!(md, "\n- {transport}, {note}")?;
        }
    }
    let path = opts.out.clone().unwrap_or_else(|| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/RELIABILITY.md")
    });
    // Keep what follows the soak's section (the fuzzing figures).
    let rest = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| text.find("\n## Fuzzing").map(|at| text[at..].to_owned()))
        .unwrap_or_default();
    std::fs::write(&path, md + &rest).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("soak: written to {}", path.display());
    Ok(())
}
