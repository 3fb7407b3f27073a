//! `cargo xtask bench splice`: plain TCP loopback between two processes (no
//! agent), Floki spliced, Floki over a shared-memory ring and Floki without
//! eBPF, and the machine's own ceilings (the kernel's bare redirect, a bare
//! ring, memcpy: [`ceilings`]), all in one run, runs interleaved so that the
//! machine's noise falls on all of them alike.

use std::{net::TcpListener, str::FromStr as _};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::{
    ceilings::{self, BareRedirect},
    report::{self, Spread},
};
use crate::lab::{self, Lab, measured};

#[derive(Debug, Args)]
pub struct Options {
    /// Bytes per throughput run.
    #[arg(long, default_value = "1GiB")]
    pub size: String,
    /// Runs per measurement; the table shows medians and the range.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 20_000)]
    pub round_trips: usize,
    /// Print only; leave docs/BENCHMARKS.md alone.
    #[arg(long)]
    pub no_write: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Tcp,
    /// Floki spliced, blocking client.
    Splice,
    /// Floki spliced, async (tokio) client.
    SpliceAsync,
    /// Floki without eBPF, blocking client.
    Fallback,
    /// Floki over a shared-memory ring: blocking client on the agent's Unix
    /// socket.
    Shm,
    /// Ceiling: two plain TCP peers spliced by Floki's kernel programs, no
    /// framing, credits or checks.
    BareRedirect,
    /// Ceiling: a ring in shared memory between two threads, no checksum.
    BareRing,
    /// Ceiling: memcpy on one CPU.
    Memcpy,
    /// XXH3-64 on one CPU: what each end of a Floki stream adds.
    Xxh3,
}

impl System {
    const ALL: [Self; 9] = [
        Self::Tcp,
        Self::Splice,
        Self::SpliceAsync,
        Self::Fallback,
        Self::Shm,
        Self::BareRedirect,
        Self::BareRing,
        Self::Memcpy,
        Self::Xxh3,
    ];
    /// The systems whose 64-byte round trips are timed too.
    const ROUND_TRIPS: [Self; 5] = [
        Self::Tcp,
        Self::Splice,
        Self::SpliceAsync,
        Self::Fallback,
        Self::Shm,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Tcp => "plain TCP",
            Self::Splice => "Floki splice",
            Self::SpliceAsync => "Floki splice, async client",
            Self::Fallback => "Floki, no eBPF",
            Self::Shm => "Floki shm",
            Self::BareRedirect => "bare redirect",
            Self::BareRing => "bare ring",
            Self::Memcpy => "memcpy",
            Self::Xxh3 => "XXH3",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Splice => "splice",
            Self::SpliceAsync => "splice_async",
            Self::Fallback => "fallback",
            Self::Shm => "shm",
            Self::BareRedirect => "bare_redirect",
            Self::BareRing => "bare_ring",
            Self::Memcpy => "memcpy",
            Self::Xxh3 => "xxh3",
        }
    }

    /// `--client` for Floki peers.
    fn client(self) -> &'static str {
        if self == Self::SpliceAsync {
            "async"
        } else {
            "blocking"
        }
    }
}

struct Labs {
    splice: Lab,
    fallback: Lab,
    bare: BareRedirect,
}

impl Labs {
    fn of(&self, system: System) -> &Lab {
        match system {
            // Plain TCP peers run in the fallback lab's cgroup: no programs
            // there (the ceilings do not use a lab).
            System::Tcp | System::Fallback => &self.fallback,
            _ => &self.splice,
        }
    }
}

/// Where `value` is in `values` (listed).
fn idx_of(values: &[usize], value: usize) -> usize {
    values.iter().position(|v| *v == value).expect("listed")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The receiving and sending peers' arguments: each verb followed by `common`.
fn peers(verbs: [&str; 2], common: &[String]) -> [Vec<String>; 2] {
    verbs.map(|verb| {
        std::iter::once(verb.to_owned())
            .chain(common.iter().cloned())
            .collect()
    })
}

/// `--addr` and, for Floki, `--channel` and `--client`: where the peers meet.
fn meeting(lab: &Lab, system: System, channel: String) -> anyhow::Result<Vec<String>> {
    Ok(match system {
        System::Tcp => vec!["--addr".into(), format!("127.0.0.1:{}", free_port()?)],
        // The Unix socket: the agent hands both ends the ring there.
        System::Shm => vec![
            "--addr".into(),
            lab.socket_addr(),
            "--channel".into(),
            channel,
        ],
        _ => vec![
            "--addr".into(),
            lab.addr(),
            "--channel".into(),
            channel,
            "--client".into(),
            system.client().into(),
        ],
    })
}

/// Receiver-side throughput in GB/s.
fn throughput(
    labs: &Labs,
    system: System,
    bytes: u64,
    write: usize,
    run: usize,
) -> anyhow::Result<f64> {
    match system {
        System::BareRedirect => return labs.bare.throughput(bytes, write),
        System::BareRing => return ceilings::bare_ring(bytes, write),
        System::Memcpy => return ceilings::memcpy(bytes, write),
        System::Xxh3 => return ceilings::xxh3(bytes, write),
        _ => {}
    }
    let lab = labs.of(system);
    let mut common = meeting(lab, system, format!("bench-{}-{write}-{run}", system.key()))?;
    common.extend([
        "--bytes".into(),
        bytes.to_string(),
        "--chunk".into(),
        write.to_string(),
    ]);
    let verbs = match system {
        System::Tcp => ["tcp-sink", "tcp-source"],
        _ => ["floki-recv", "floki-send"],
    };
    let [recv_args, send_args] = peers(verbs, &common);
    // Each end on its own CPU, for every system alike: left to the scheduler
    // (this kernel packs vCPUs), both ends sometimes share one CPU and a run
    // measures that instead.
    let receiver = lab.peer(&recv_args, Some(0))?;
    let sender = lab.peer(&send_args, Some(1))?;
    let got = measured(receiver)?;
    measured(sender)?;
    if let Some(transport) = &got.transport {
        let expected = match system {
            System::Fallback => "tcp",
            System::Shm => "shm",
            _ => "splice",
        };
        anyhow::ensure!(
            transport == expected,
            "{} ran over {transport}",
            system.label()
        );
    }
    Ok(got.bytes as f64 / got.seconds / 1e9)
}

/// Round-trip p50 in µs, ping and pong on the given CPUs.
fn round_trip(
    labs: &Labs,
    system: System,
    count: usize,
    cpus: (usize, usize),
    run: usize,
) -> anyhow::Result<f64> {
    let lab = labs.of(system);
    let channel = format!("rtt-{}-{}{}-{run}", system.key(), cpus.0, cpus.1);
    let mut common = meeting(lab, system, channel)?;
    common.extend(["--count".into(), count.to_string()]);
    let verbs = match system {
        System::Tcp => ["tcp-pong", "tcp-ping"],
        _ => ["floki-pong", "floki-ping"],
    };
    let [pong, ping] = peers(verbs, &common);
    let ponger = lab.peer(&pong, Some(cpus.0))?;
    let pinger = lab.peer(&ping, Some(cpus.1))?;
    let got = measured(pinger)?;
    measured(ponger)?;
    let rtt = got.rtt_us;
    anyhow::ensure!(!rtt.is_empty(), "no round trips measured");
    Ok(rtt[rtt.len() / 2])
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let bytes = bytesize::ByteSize::from_str(&opts.size)
        .map_err(|err| anyhow::anyhow!("--size {}: {err}", opts.size))?
        .as_u64();
    let binaries = lab::Binaries::beside_me()?;
    let labs = Labs {
        splice: Lab::start(&binaries, "bench-splice", false)?,
        fallback: Lab::start(&binaries, "bench-fallback", true)?,
        bare: BareRedirect::start(&binaries)?,
    };
    let writes = [64 << 10, 1 << 20];
    let placements = [(0, 0), (0, 1)];

    // Warm-up: page cache, binaries, first-connection costs.
    for system in System::ALL {
        throughput(&labs, system, 64 << 20, 1 << 20, usize::MAX)?;
    }

    let mut rates = vec![vec![Vec::new(); System::ALL.len()]; writes.len()];
    let mut rtts = vec![vec![Vec::new(); System::ROUND_TRIPS.len()]; placements.len()];
    for run in 0..opts.runs {
        eprintln!("xtask: bench splice, run {} of {}", run + 1, opts.runs);
        for (w, &write) in writes.iter().enumerate() {
            for (s, &system) in System::ALL.iter().enumerate() {
                let rate = throughput(&labs, system, bytes, write, run)
                    .with_context(|| format!("{} with {write}-byte writes", system.label()))?;
                rates[w][s].push(rate);
            }
        }
        for (p, &cpus) in placements.iter().enumerate() {
            for (s, &system) in System::ROUND_TRIPS.iter().enumerate() {
                let rtt = round_trip(&labs, system, opts.round_trips, cpus, run)
                    .with_context(|| format!("{} round trips", system.label()))?;
                rtts[p][s].push(rtt);
            }
        }
    }

    let size_label = bytesize::ByteSize(bytes).display().iec().to_string();
    let mut table = String::from(
        "| measure | plain TCP | Floki shm | Floki splice | Floki splice, async client | Floki, no eBPF | bare redirect | bare ring | memcpy | XXH3 | splice / bare redirect | shm / bare ring | shm / two-pass reference | splice / TCP | shm / TCP |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    // Columns in table order.
    let shown = [
        System::Tcp,
        System::Shm,
        System::Splice,
        System::SpliceAsync,
        System::Fallback,
        System::BareRedirect,
        System::BareRing,
        System::Memcpy,
        System::Xxh3,
    ];
    let idx = |systems: &[System], system: System| {
        systems.iter().position(|s| *s == system).expect("listed")
    };
    let keyed = |systems: &[System],
                 values: Vec<serde_json::Value>|
     -> serde_json::Map<String, serde_json::Value> {
        systems
            .iter()
            .zip(values)
            .map(|(system, value)| (system.key().to_owned(), value))
            .collect()
    };
    let mut json_rows = Vec::new();
    // Per write size: [splice / redirect, shm / ring, splice / TCP, shm / TCP,
    // shm / two-pass reference].
    let mut ratios_by_write = Vec::new();
    for (w, write) in writes.iter().enumerate() {
        let spreads: Vec<Spread> = rates[w].iter().map(|r| Spread::of(r)).collect();
        let median = |system: System| spreads[idx(&System::ALL, system)].median;
        let ratios = [
            median(System::Splice) / median(System::BareRedirect),
            median(System::Shm) / median(System::BareRing),
            median(System::Splice) / median(System::Tcp),
            median(System::Shm) / median(System::Tcp),
            // One CPU hashing and copying every byte in two passes over
            // memory: 1 / (1 / memcpy + 1 / XXH3).
            median(System::Shm) * (1.0 / median(System::Memcpy) + 1.0 / median(System::Xxh3)),
        ];
        ratios_by_write.push(ratios);
        let cells: Vec<String> = shown
            .iter()
            .map(|&system| spreads[idx(&System::ALL, system)].cell(2))
            .collect();
        table.push_str(&format!(
            "| {size_label}, {} KiB writes, GB/s | {} | **{:.2}x** | **{:.2}x** | {:.2}x | {:.2}x | {:.2}x |\n",
            write >> 10,
            cells.join(" | "),
            ratios[0],
            ratios[1],
            ratios[4],
            ratios[2],
            ratios[3],
        ));
        let mut row = keyed(&System::ALL, spreads.iter().map(|s| json!(s)).collect());
        row.insert("measure".into(), json!("throughput_gb_s"));
        row.insert("write_bytes".into(), json!(write));
        row.insert("bytes".into(), json!(bytes));
        row.insert("splice_over_bare_redirect".into(), json!(ratios[0]));
        row.insert("shm_over_bare_ring".into(), json!(ratios[1]));
        row.insert("splice_over_tcp".into(), json!(ratios[2]));
        row.insert("shm_over_tcp".into(), json!(ratios[3]));
        row.insert("shm_over_two_pass_reference".into(), json!(ratios[4]));
        row.insert(
            "runs".into(),
            json!(keyed(
                &System::ALL,
                rates[w].iter().map(|r| json!(r)).collect()
            )),
        );
        json_rows.push(serde_json::Value::Object(row));
    }
    let mut rtt_ratio = [[0.0; 2]; 2];
    for (p, cpus) in placements.iter().enumerate() {
        let spreads: Vec<Spread> = rtts[p].iter().map(|r| Spread::of(r)).collect();
        let median = |system: System| spreads[idx(&System::ROUND_TRIPS, system)].median;
        let splice_ratio = median(System::Splice) / median(System::Tcp);
        let shm_ratio = median(System::Shm) / median(System::Tcp);
        rtt_ratio[p] = [splice_ratio, shm_ratio];
        let placement = if cpus.0 == cpus.1 {
            "both on one CPU"
        } else {
            "on two CPUs"
        };
        let cells: Vec<String> = shown
            .iter()
            .map(
                |&system| match System::ROUND_TRIPS.iter().position(|s| *s == system) {
                    Some(i) => spreads[i].cell(1),
                    None => String::new(),
                },
            )
            .collect();
        table.push_str(&format!(
            "| 64 B round trip p50, {placement}, µs | {} | | | | **{splice_ratio:.2}x** | **{shm_ratio:.2}x** |\n",
            cells.join(" | "),
        ));
        let mut row = keyed(
            &System::ROUND_TRIPS,
            spreads.iter().map(|s| json!(s)).collect(),
        );
        row.insert("measure".into(), json!("round_trip_p50_us"));
        row.insert("cpus".into(), json!([cpus.0, cpus.1]));
        row.insert("splice_over_tcp".into(), json!(splice_ratio));
        row.insert("shm_over_tcp".into(), json!(shm_ratio));
        row.insert(
            "runs".into(),
            json!(keyed(
                &System::ROUND_TRIPS,
                rtts[p].iter().map(|r| json!(r)).collect()
            )),
        );
        json_rows.push(serde_json::Value::Object(row));
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut floors = String::new();
    for (write, ratios) in writes.iter().zip(&ratios_by_write) {
        floors.push_str(&format!(
            "- {} KiB writes: splice at least 0.9x the bare redirect (issue 16): {:.2}x, {}; shm at least 0.8x the bare ring (issue 16): {:.2}x, {} ({:.2}x of the two-pass reference)\n",
            write >> 10,
            ratios[0],
            verdict(ratios[0] >= 0.9),
            ratios[1],
            verdict(ratios[1] >= 0.8),
            ratios[4],
        ));
    }
    let at_1m = ratios_by_write[idx_of(&writes, 1 << 20)];
    floors.push_str(&format!(
        "- splice 64 B round-trip p50 at most 0.7x plain TCP (issue 2): {:.2}x on one CPU ({}), {:.2}x on two CPUs ({})\n\
         - shm 64 B round-trip p50 at most 0.2x plain TCP (issue 6): {:.2}x on one CPU ({}), {:.2}x on two CPUs ({})\n\
         - for the record, against plain TCP at 1 MiB writes (issues 2 and 6, floors set before the ceilings were measured): splice {:.2}x, shm {:.2}x\n",
        rtt_ratio[0][0],
        verdict(rtt_ratio[0][0] <= 0.7),
        rtt_ratio[1][0],
        verdict(rtt_ratio[1][0] <= 0.7),
        rtt_ratio[0][1],
        verdict(rtt_ratio[0][1] <= 0.2),
        rtt_ratio[1][1],
        verdict(rtt_ratio[1][1] <= 0.2),
        at_1m[2],
        at_1m[3],
    ));
    println!("{table}\n{floors}");

    if !opts.no_write {
        let markdown = format!(
            "## Splice: Floki against the machine's ceilings and plain TCP on one node\n\n\
             Measured {} on {}.\n\
             Reproduce: `cargo xtask bench splice` (as root; {} runs, medians with the range in brackets).\n\n\
             Throughput is what the receiving process reads, first byte to last; both ends are \
             separate processes moving in-memory data, pinned to CPUs 0 and 1, every receiver \
             reading 128 KiB at a time. Floki goes through \
             the client library with its framing, flow control and end-to-end XXH3 check: the \
             blocking client (`floki_client::blocking`, what `floki-agent send/recv` use) \
             and, for comparison, the tokio client; plain TCP is raw, blocking. Over a socket \
             both clients gather writes under 128 KiB into frames of up to 512 KiB, as a \
             `BufWriter` would (the kernel redirect moves large writes much faster), so Floki's \
             64 KiB row is the application's writes, not its system calls; the ceilings and \
             plain TCP write each 64 KiB as it comes. Round trips are \
             {} ping-pongs of 64 bytes, ping and pong pinned as stated. `splice / TCP` compares \
             the blocking Floki client with blocking TCP. `Floki shm` is the same blocking client \
             on the agent's Unix socket, where the agent hands both ends a ring in shared memory \
             (the channel's window, 8 MiB by default); its receiver reads the bytes in place in the \
             ring (`BufRead`), and reader and writer wait on a futex after a few `sched_yield`s, \
             never spinning.\n\n\
             The ceilings are measured in the same run, interleaved with the rest: \
             `bare redirect` is two plain TCP peers (the `plain TCP` programs) whose sockets \
             Floki's own kernel programs splice, loaded by the benchmark on a cgroup of its \
             own, with no framing, credits, end mark or checksum (the kernel's count of \
             redirected bytes is checked); `bare ring` is a ring of 8 MiB in a memory file \
             between two threads pinned to CPUs 0 and 1, the writer copying each write in, \
             the reader copying 128 KiB at a time out, no checksum, waits by `sched_yield`; \
             `memcpy` is one CPU copying each write into an 8 MiB buffer, `XXH3` one CPU \
             hashing it (Floki's checksum, computed by both ends); `two-pass reference` is \
             1 / (1 / memcpy + 1 / XXH3), one CPU hashing and copying every byte in two \
             passes over memory (Floki's writer hashes each 32 KiB piece while it is in cache, \
             so it can beat it). Floki is held to \
             a fraction of these, which carries from one machine to another; its ratio to \
             plain TCP does not.\n\n\
             {table}\n\
             Floors:\n{floors}",
            report::today(),
            report::machine(),
            opts.runs,
            opts.round_trips,
        );
        let json = json!({"bench": "splice", "date": report::today(), "machine": report::machine(),
            "runs": opts.runs, "results": json_rows});
        report::write_section("splice", &markdown, &json)?;
    }
    Ok(())
}
