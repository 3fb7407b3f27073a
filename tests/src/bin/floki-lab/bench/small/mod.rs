//! `cargo xtask bench small`: small streams and channel set-up, with the
//! functions already running (no process start in any figure). A consumer
//! waits on a stream; the producer opens it when the driver says go; the
//! set-up latency is the producer's open to the first byte readable by the
//! consumer, the end-to-end time the producer's open to the consumer's
//! verified end. On one node over the agent's Unix socket (shm ring) and
//! its TCP port (spliced), and across two namespace nodes (a workflow edge,
//! over the link the agents prepared at apply).

pub mod handoff;
pub mod peers;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use floki_tests::cluster::{Cluster, Spec};
use serde_json::json;

use self::handoff::Handoff;
use super::{
    function::Function,
    paper::scenario::{Pattern, Placement},
    report,
};
use crate::lab::{self, Lab};

#[derive(Debug, Args)]
pub struct Options {
    /// Streams per size and place (the first tenth of each is warm-up,
    /// left out of the figures).
    #[arg(long, default_value_t = 400)]
    pub rounds: usize,
    /// Runs per cell of the paper's patterns at 1 MiB, functions warm (the
    /// first tenth is warm-up).
    #[arg(long, default_value_t = 200)]
    pub pattern_rounds: usize,
    /// Print only; leave docs/BENCHMARKS.md alone.
    #[arg(long)]
    pub no_write: bool,
    /// Only the paper's patterns, functions warm (no set-up or stream
    /// latencies); implies --no-write.
    #[arg(long)]
    pub patterns_only: bool,
    /// Only these patterns [default: all]; implies --no-write.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub patterns: Vec<Pattern>,
    /// Only these placements [default: both]; implies --no-write.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub placements: Vec<Placement>,
    /// Only the set-up and stream latencies, in these places [default:
    /// all] (no patterns); implies --no-write.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        conflicts_with_all = ["patterns_only", "patterns", "placements"]
    )]
    pub places: Vec<Place>,
}

/// Stream sizes.
const SIZES: [u64; 3] = [1 << 10, 64 << 10, 1 << 20];
/// Edges of the two-node workflow: one per round, each used once per size.
const EDGE_PREFIX: &str = "s";

/// Where the two functions run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Place {
    /// One node, the agent's Unix socket: a shared-memory ring.
    Shm,
    /// One node, the agent's TCP port: spliced sockets.
    Splice,
    /// Two namespace nodes: a workflow edge over the prepared link.
    TwoNodes,
}

impl Place {
    fn label(self) -> &'static str {
        match self {
            Self::Shm => "one node, shm",
            Self::Splice => "one node, splice",
            Self::TwoNodes => "two nodes, prepared link",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Shm => "shm",
            Self::Splice => "splice",
            Self::TwoNodes => "two_nodes",
        }
    }
}

/// Latencies of one place, in microseconds, sorted.
struct Latencies {
    /// Set-up, every stream of every size.
    setup: Vec<f64>,
    /// Set-up, per size (a large stream's first write is larger).
    setup_by_size: Vec<Vec<f64>>,
    /// End to end, per size.
    e2e: Vec<Vec<f64>>,
    /// The machine's bare hand-off through a broker, one after each
    /// stream ([`handoff`]): the ceiling of a brokered set-up.
    ceiling: Vec<f64>,
}

/// Runs every stream between `consumer` and `producer` (already started)
/// and returns the latencies.
fn drive(
    mut consumer: Function,
    mut producer: Function,
    mut handoff: Handoff,
    rounds: usize,
) -> anyhow::Result<Latencies> {
    let warmup = rounds / 10;
    let mut ceiling = Vec::new();
    let mut setup = Vec::new();
    let mut setup_by_size = vec![Vec::new(); SIZES.len()];
    let mut e2e = vec![Vec::new(); SIZES.len()];
    for (size, (per_size, setup_of_size)) in e2e.iter_mut().zip(&mut setup_by_size).enumerate() {
        for round in 0..rounds {
            let k = size * rounds + round;
            consumer.expect("ready", k)?;
            producer.tell(&format!("go {k}"))?;
            let open = producer.expect("sent", k)?[0];
            let got = consumer.expect("got", k)?;
            let hop = handoff.hop()?;
            if round < warmup {
                continue;
            }
            ceiling.push(hop);
            let us = |ns: u64| ns.saturating_sub(open) as f64 / 1e3;
            setup.push(us(got[0]));
            setup_of_size.push(us(got[0]));
            per_size.push(us(got[1]));
        }
    }
    consumer.wait()?;
    producer.wait()?;
    handoff.stop()?;
    setup.sort_by(f64::total_cmp);
    ceiling.sort_by(f64::total_cmp);
    for per_size in e2e.iter_mut().chain(&mut setup_by_size) {
        per_size.sort_by(f64::total_cmp);
    }
    Ok(Latencies {
        setup,
        setup_by_size,
        e2e,
        ceiling,
    })
}

/// The functions' common arguments.
fn common(rounds: usize) -> Vec<String> {
    let sizes: Vec<String> = SIZES.iter().map(u64::to_string).collect();
    vec![
        "--sizes".into(),
        sizes.join(","),
        "--rounds".into(),
        rounds.to_string(),
    ]
}

fn one_node(
    lab: &Lab,
    binaries: &lab::Binaries,
    place: Place,
    rounds: usize,
) -> anyhow::Result<Latencies> {
    let addr = match place {
        Place::Shm => lab.socket_addr(),
        _ => lab.addr(),
    };
    let args = |verb: &str| {
        let mut args = vec![
            verb.to_owned(),
            "--addr".into(),
            addr.clone(),
            "--channel".into(),
            format!("small-{}", place.key()),
        ];
        args.extend(common(rounds));
        args
    };
    // Each on its own CPU, as in `bench splice`.
    let consumer = Function::spawn(lab::peer_command(
        &binaries.lab,
        &lab.cgroup,
        &args("small-recv"),
        Some(0),
    ))?;
    let producer = Function::spawn(lab::peer_command(
        &binaries.lab,
        &lab.cgroup,
        &args("small-send"),
        Some(1),
    ))?;
    // The broker floats, as the agent does.
    let handoff = Handoff::start(
        place.key(),
        &format!(
            "unix:{}",
            std::env::temp_dir()
                .join(format!(
                    "floki-handoff-{}-{}-c.sock",
                    std::process::id(),
                    place.key()
                ))
                .display()
        ),
        |verb, args| {
            let cpu = match verb {
                "handoff-recv" => Some(0),
                "handoff-send" => Some(1),
                _ => None,
            };
            let mut all = vec![verb.to_owned()];
            all.extend(args);
            lab::peer_command(&binaries.lab, &lab.cgroup, &all, cpu)
        },
    )?;
    drive(consumer, producer, handoff, rounds)
}

fn two_nodes(binaries: &lab::Binaries, rounds: usize) -> anyhow::Result<Latencies> {
    let cluster = Cluster::start(&["node-a", "node-b"]);
    cluster.wait_connected();
    let mut spec = Spec::new("small")
        .function("p", "node-a")
        .function("q", "node-b");
    for round in 0..rounds {
        spec = spec.edge(
            &format!("{EDGE_PREFIX}{round}"),
            &["p"],
            &["q"],
            "one-to-one",
            "4MiB",
        );
    }
    let token = cluster
        .node("node-a")
        .apply(&spec.yaml())
        .map_err(anyhow::Error::msg)
        .context("applying the benchmark workflow")?;
    let args = |verb: &str, node: &str, function: &str| {
        let mut args = vec![
            verb.to_owned(),
            "--addr".into(),
            format!("unix:{}", cluster.node(node).agent.socket.display()),
            "--workflow".into(),
            "small".into(),
            "--token".into(),
            token.clone(),
            "--edge".into(),
            EDGE_PREFIX.into(),
            "--as".into(),
            function.into(),
        ];
        args.extend(common(rounds));
        args
    };
    let in_node = |node: &str, args: &[String]| {
        let node = cluster.node(node);
        let mut cmd = node.ns.command(&binaries.lab);
        cmd.arg("peer").args(args);
        node.cgroup.spawn_inside(&mut cmd);
        cmd
    };
    let consumer = Function::spawn(in_node("node-b", &args("small-recv", "node-b", "q")))?;
    let producer = Function::spawn(in_node("node-a", &args("small-send", "node-a", "p")))?;
    // The broker and the producer on node A, the consumer on node B,
    // connected to the broker across the nodes as a link is.
    let node_a_ip = cluster.node("node-a").ip.clone();
    let handoff = Handoff::start(
        Place::TwoNodes.key(),
        &format!("{node_a_ip}:0"),
        |verb, args| {
            let node = if verb == "handoff-recv" {
                "node-b"
            } else {
                "node-a"
            };
            let mut all = vec![verb.to_owned()];
            all.extend(args);
            in_node(node, &all)
        },
    )?;
    drive(consumer, producer, handoff, rounds)
}

/// The `q`-quantile of sorted `values`.
fn quantile(values: &[f64], q: f64) -> f64 {
    let at = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[at.min(values.len() - 1)]
}

/// The set-up and end-to-end table of `results`, and its JSON rows.
fn latency_rows(results: &[(Place, Latencies)]) -> (String, Vec<serde_json::Value>) {
    let size_label = |bytes: u64| bytesize::ByteSize(bytes).display().iec().to_string();
    let mut table =
        String::from("| place | set-up p50 | set-up p99 | bare hand-off p50 | bare hand-off p99 |");
    for bytes in SIZES {
        table.push_str(&format!(
            " {} p50 | {} p99 |",
            size_label(bytes),
            size_label(bytes)
        ));
    }
    table.push_str("\n|---|---|---|---|---|");
    table.push_str(&"---|---|".repeat(SIZES.len()));
    table.push('\n');
    let mut json_rows = Vec::new();
    for (place, latencies) in results {
        let mut row = format!(
            "| {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
            place.label(),
            quantile(&latencies.setup, 0.5),
            quantile(&latencies.setup, 0.99),
            quantile(&latencies.ceiling, 0.5),
            quantile(&latencies.ceiling, 0.99)
        );
        let mut e2e = serde_json::Map::new();
        let mut setup_by_size = serde_json::Map::new();
        for (bytes, values) in SIZES.iter().zip(&latencies.setup_by_size) {
            setup_by_size.insert(
                bytes.to_string(),
                json!({"p50_us": quantile(values, 0.5), "p99_us": quantile(values, 0.99)}),
            );
        }
        for (bytes, values) in SIZES.iter().zip(&latencies.e2e) {
            row.push_str(&format!(
                " {:.0} µs | {:.0} µs |",
                quantile(values, 0.5),
                quantile(values, 0.99)
            ));
            e2e.insert(
                bytes.to_string(),
                json!({"p50_us": quantile(values, 0.5), "p99_us": quantile(values, 0.99)}),
            );
        }
        table.push_str(&row);
        table.push('\n');
        json_rows.push(json!({
            "place": place.key(),
            "setup_p50_us": quantile(&latencies.setup, 0.5),
            "setup_p99_us": quantile(&latencies.setup, 0.99),
            "setup_samples": latencies.setup.len(),
            "handoff_p50_us": quantile(&latencies.ceiling, 0.5),
            "handoff_p99_us": quantile(&latencies.ceiling, 0.99),
            "setup_by_size": setup_by_size,
            "e2e": e2e,
        }));
    }
    table.push_str(&setup_by_size_table(results));
    (table, json_rows)
}

/// Set-up p50 and p99 per stream size: the first byte of a larger stream
/// comes with a larger first write.
fn setup_by_size_table(results: &[(Place, Latencies)]) -> String {
    let size_label = |bytes: u64| bytesize::ByteSize(bytes).display().iec().to_string();
    let mut table = String::from("\n| place |");
    for bytes in SIZES {
        table.push_str(&format!(
            " set-up p50, p99 of {} streams |",
            size_label(bytes)
        ));
    }
    table.push_str("\n|---|");
    table.push_str(&"---|".repeat(SIZES.len()));
    table.push('\n');
    for (place, latencies) in results {
        table.push_str(&format!("| {} |", place.label()));
        for values in &latencies.setup_by_size {
            table.push_str(&format!(
                " {:.0}, {:.0} µs |",
                quantile(values, 0.5),
                quantile(values, 0.99)
            ));
        }
        table.push('\n');
    }
    table
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    anyhow::ensure!(opts.rounds >= 20, "--rounds: at least 20");
    let patterns = super::paper::chosen_or_all(&opts.patterns, &Pattern::ALL);
    let placements = super::paper::chosen_or_all(&opts.placements, &Placement::ALL);
    if opts.patterns_only || !opts.patterns.is_empty() || !opts.placements.is_empty() {
        let cells = super::paper::warm::run(opts.pattern_rounds.max(2), &patterns, &placements)?;
        let (table, floor, _) = super::paper::warm::report(&cells, opts.pattern_rounds);
        println!("{table}\n{floor}");
        return Ok(());
    }
    let binaries = lab::Binaries::beside_me()?;
    let lab = Lab::start(&binaries, "bench-small", false)?;
    let mut results = Vec::new();
    for place in super::paper::chosen_or_all(&opts.places, Place::value_variants()) {
        eprintln!("xtask: bench small, {}", place.label());
        let latencies = match place {
            Place::TwoNodes => two_nodes(&binaries, opts.rounds),
            _ => one_node(&lab, &binaries, place, opts.rounds),
        }
        .with_context(|| place.label())?;
        results.push((place, latencies));
    }
    if !opts.places.is_empty() {
        println!("{}", latency_rows(&results).0);
        return Ok(());
    }
    let cells = super::paper::warm::run(opts.pattern_rounds.max(2), &patterns, &placements)?;
    let (patterns_table, patterns_floor, patterns_json) =
        super::paper::warm::report(&cells, opts.pattern_rounds);

    let (table, json_rows) = latency_rows(&results);
    let of = |place: Place| {
        &results
            .iter()
            .find(|(p, _)| *p == place)
            .expect("measured")
            .1
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let one_node_p99 =
        quantile(&of(Place::Shm).setup, 0.99).max(quantile(&of(Place::Splice).setup, 0.99));
    let two_nodes_p99 = quantile(&of(Place::TwoNodes).setup, 0.99);
    let mib = SIZES
        .iter()
        .position(|b| *b == 1 << 20)
        .expect("1 MiB measured");
    let mib_p50 =
        quantile(&of(Place::Shm).e2e[mib], 0.5).min(quantile(&of(Place::Splice).e2e[mib], 0.5));
    let one_node_ceiling =
        quantile(&of(Place::Shm).ceiling, 0.99).max(quantile(&of(Place::Splice).ceiling, 0.99));
    let two_nodes_ceiling = quantile(&of(Place::TwoNodes).ceiling, 0.99);
    let floors = format!(
        "- set-up p99 under 1 ms on one node (issue 16): {one_node_p99:.0} µs (the slower of shm and splice), {}; the bare hand-off's p99 in the same run {one_node_ceiling:.0} µs\n\
         - set-up p99 under 2 ms across nodes (issue 16): {two_nodes_p99:.0} µs, {}; the bare hand-off's p99 in the same run {two_nodes_ceiling:.0} µs\n\
         - a 1 MiB stream on one node under 0.5 ms p50 (issue 16): {mib_p50:.0} µs (the faster of shm and splice), {}\n",
        verdict(one_node_p99 < 1000.0),
        verdict(two_nodes_p99 < 2000.0),
        verdict(mib_p50 < 500.0),
    );
    let floors = floors + &patterns_floor;
    println!("{table}\n{patterns_table}\n{floors}");

    if !opts.no_write {
        let markdown = format!(
            "## Small streams and set-up\n\n\
             Measured {} on {}.\n\
             Reproduce: `cargo xtask bench small` (as root; {} streams per size and place, the \
             first tenth left out as warm-up).\n\n\
             Both functions are already running, each a process of its own (`floki-lab peer \
             small-recv` and `small-send`, the blocking client), so no process start is in any \
             figure. For each stream the consumer begins waiting for it, then the producer opens \
             it, writes it and finishes. **Set-up** is the producer's open to the first byte \
             readable by the consumer; **end to end** is the producer's open to the consumer's \
             verified end (length and XXH3), per stream size. One node: the agent's Unix socket \
             (shm ring) and its TCP port (spliced); two nodes: a workflow edge per round between \
             two network-namespace nodes, over the link the agents prepared at apply, each \
             edge described by both functions before the first stream, as a warm function \
             has (its first stream on an edge in a process otherwise asks its agent to \
             describe the edge first, one round trip more). Both clocks \
             are the machine's `CLOCK_MONOTONIC`. **Bare hand-off** is the ceiling of a brokered \
             set-up on this machine, measured in the same run, one after each stream: three \
             processes placed as the functions and the agent (the broker floats, as the agent \
             does; across nodes the consumer is on the other node), a 64-byte message from the \
             producer to the broker and on to the consumer already waiting, over connections \
             opened before (Unix sockets; across nodes, TCP between the namespaces): the \
             wake-ups of three processes and two writes, no protocol. Any set-up through an \
             agent takes at least that. The second table is the set-up per stream size (a \
             larger stream's first write is larger).\n\n\
             {table}\n\
             The paper's four patterns at 1 MiB (as in `bench paper`: broadcast and shuffle \
             to four consumers, gather from four producers), every function a process already \
             running, its streams' content generated before it is told to go (generating \
             1 MiB of it took longer than handing it over) and, for Redis and bare TCP, its \
             connections open ({} runs per cell and system, the first tenth left out; the three \
             systems take turns of 100 runs, which one goes first rotating, so that the shared \
             machine's drift during a cell moves them alike while each runs warm). Each stream is 1 MiB in \
             one-to-one and broadcast, 256 KiB in gather and 64 KiB in shuffle (16 streams): \
             these two measure set-up more than copying. Every function moves its streams in \
             turn on its own thread, as a function does with streams that fit their buffers: \
             a Floki producer writes and ends each stream (`Sender::end`), then waits for each \
             verdict, so its consumers verify at once; a Redis producer SETs each; consumers \
             read and check each in turn. Floki runs live: the consumers wait, then the producers open their \
             channels; its time is the first producer's start to the last consumer's verified \
             end. Redis runs in the serverless order, its time the producers' SETs plus the \
             consumers' GETs (first start to last end of each), the driver's hand-off between \
             the two not counted. **Bare TCP** is the ceiling of this traffic on this machine: \
             each producer holds a TCP connection to each of its consumers, opened before the \
             runs, and writes each stream on it as its length and its bytes; the consumer \
             checks the bytes and answers one byte. No agent, server, framing, credits or \
             checksum. It runs as Floki does, and **at the ceiling** is its time over each \
             system's: the fraction of the machine's own speed for this traffic that each \
             reaches. Every byte is checked at the consumers. **CPU per run** is the \
             mean, over the runs after the warm-up, of the functions' own CPU time (`getrusage`) \
             plus their servers' (the agents' threads, or the Redis server's, as the scheduler \
             accounts it; bare TCP has none): on two vCPUs, a run whose CPU comes near twice its time is bound by \
             CPU, not by waiting.\n\n\
             {patterns_table}\n\
             Floors:\n{floors}",
            report::today(),
            report::machine(),
            opts.rounds,
            opts.pattern_rounds,
        );
        let json = json!({"bench": "small", "date": report::today(), "machine": report::machine(),
            "rounds": opts.rounds, "results": json_rows, "patterns_warm": patterns_json});
        report::write_section("small", &markdown, &json)?;
    }
    Ok(())
}
