//! `cargo xtask bench channels`: many channels on one agent, driven by one
//! process with the tokio client, so that the figures are the agent's.
//!
//! * **Concurrent**: N receivers wait, then N senders open and each writes
//!   64 KiB; once every sender has written, all N channels are open at
//!   once, and the agent's RSS and descriptors, the node's shared memory and
//!   the kernel maps' entries are sampled. Then all finish, each verified. Set-up is a sender's open to the first
//!   byte its receiver read. Waves of 1,000 and 10,000.
//! * **Sequential**: channels one after another, each of its own, then
//!   one channel again and again (over the connections and the ring its
//!   ends kept); the agent's RSS and descriptors and the kernel maps'
//!   entries before and after (a leak shows as what does not come back).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use floki_client::{ChannelOptions, Receiver, Sender};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::report;
use crate::lab::{self, Lab};

#[derive(Debug, Args)]
pub struct Options {
    /// Channels open at once, largest wave.
    #[arg(long, default_value_t = 10_000)]
    pub concurrent: usize,
    /// Channels one after another over the agent's Unix socket (rings) for
    /// the leak check.
    #[arg(long, default_value_t = 100_000)]
    pub sequential: usize,
    /// Channels one after another over its TCP port (spliced), first: each
    /// leaves TCP connections in TIME_WAIT for a minute, and past the port
    /// range (64,000 in the bench's namespace) every connect searches for a
    /// free port, so tens of thousands in a row measure the port search, not
    /// the agent.
    #[arg(long, default_value_t = 5_000)]
    pub sequential_spliced: usize,
    /// Channels one after another over rings on one channel name, last: a
    /// warm function's stream again, over the connections and the ring its
    /// two ends kept.
    #[arg(long, default_value_t = 10_000)]
    pub sequential_same: usize,
    /// Print only; leave docs/BENCHMARKS.md alone.
    #[arg(long)]
    pub no_write: bool,
}

/// Bytes per channel.
const STREAM: usize = 64 << 10;

/// What the agent and the node hold, sampled from /proc and bpffs.
#[derive(Clone, Copy, Debug, Default)]
struct Footprint {
    rss_kib: u64,
    fds: u64,
    shmem_kib: u64,
    map_entries: u64,
}

impl Footprint {
    fn sample(agent_pid: u32, pin_dir: &Path) -> Self {
        let status =
            std::fs::read_to_string(format!("/proc/{agent_pid}/status")).unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss_kib: field(&status, "VmRSS:"),
            fds: std::fs::read_dir(format!("/proc/{agent_pid}/fd"))
                .map_or(0, |dir| dir.count() as u64),
            shmem_kib: field(&meminfo, "Shmem:"),
            map_entries: map_entries(pin_dir),
        }
    }
}

/// Entries in the agent's pinned maps of endpoints, channels and sockets.
fn map_entries(pin_dir: &Path) -> u64 {
    use aya::maps::{HashMap, Map, MapData, SockHash};
    use floki_common::{ChannelEnd, ChannelRecord, EndpointKey, map};
    let open = |name: &str| MapData::from_pin(pin_dir.join(name)).ok();
    let mut total = 0;
    if let Some(data) = open(map::ENDPOINTS)
        && let Ok(endpoints) = HashMap::<_, EndpointKey, ChannelEnd>::try_from(Map::HashMap(data))
    {
        total += endpoints.keys().count() as u64;
    }
    if let Some(data) = open(map::CHANNELS)
        && let Ok(channels) = HashMap::<_, u32, ChannelRecord>::try_from(Map::HashMap(data))
    {
        total += channels.keys().count() as u64;
    }
    if let Some(data) = open(map::SOCKETS)
        && let Ok(sockets) = SockHash::<_, ChannelEnd>::try_from(Map::SockHash(data))
    {
        total += sockets.keys().count() as u64;
    }
    total
}

/// How the driver reaches the agent, and so the path its channels take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// The agent's TCP port, sockets in its cgroup: spliced.
    Splice,
    /// The agent's Unix socket: a ring in shared memory per channel.
    Shm,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Self::Splice => "splice",
            Self::Shm => "shm",
        }
    }

    /// Descriptors the driver holds per channel: two ends, each with its
    /// connection to the agent and its data socket (and the receiver's
    /// listener while it waits: at 4 per channel, 4,936 channels ran out);
    /// over shm each end's ring and its socket beside it.
    fn driver_fds_per_channel(self) -> u64 {
        match self {
            Self::Splice => 5,
            Self::Shm => 6,
        }
    }

    fn addr(self, lab: &Lab) -> String {
        match self {
            Self::Splice => lab.addr(),
            Self::Shm => lab.socket_addr(),
        }
    }
}

/// One wave's figures.
struct Wave {
    path: Route,
    channels: usize,
    seconds: f64,
    /// Set-up latencies in µs of the wave's own channels, opened all at
    /// once (the driver's queueing included), sorted.
    setup_us: Vec<f64>,
    /// Set-up latencies in µs of new channels opened one at a time while
    /// the wave's are all open, sorted.
    loaded_us: Vec<f64>,
    peak: Footprint,
}

/// `n` channels open at once on `agent`, `prefix-i` each.
async fn wave(
    path: Route,
    agent: &str,
    prefix: &str,
    n: usize,
    sample: impl Fn() -> Footprint,
) -> anyhow::Result<Wave> {
    let base = Instant::now();
    let ns = move || base.elapsed().as_nanos() as u64;
    let opened: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let first: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    // Every sender wrote its stream, then waits here with the others before
    // it finishes, so that all channels are open at the sample.
    let all_written = Arc::new(tokio::sync::Barrier::new(n + 1));
    // ...and finishes once the driver has measured.
    let release = Arc::new(tokio::sync::Barrier::new(n + 1));
    let options = |i: usize| {
        let mut opts = ChannelOptions::new(agent, format!("{prefix}-{i}"));
        opts.live = true;
        opts.pair_timeout = Some(Duration::from_secs(120));
        opts
    };
    let started = Instant::now();
    let mut receivers = tokio::task::JoinSet::new();
    for i in 0..n {
        let (opts, first) = (options(i), first.clone());
        receivers.spawn(async move {
            let mut rx = Receiver::connect(&opts).await?;
            let mut buf = vec![0u8; STREAM];
            loop {
                let n = rx.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                let _ = first[i].compare_exchange(0, ns(), Ordering::Relaxed, Ordering::Relaxed);
            }
            let summary = rx.finish().await?;
            anyhow::ensure!(
                summary.bytes == STREAM as u64,
                "channel {}: {} bytes",
                opts.channel,
                summary.bytes
            );
            Ok(())
        });
    }
    // The receivers' hellos reach the agent before the senders open.
    tokio::time::sleep(Duration::from_millis(200 + n as u64 / 10)).await;
    let data = Arc::new(floki_tests::pattern(STREAM, 3));
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..n {
        let (opts, opened, data, all_written, release) = (
            options(i),
            opened.clone(),
            data.clone(),
            all_written.clone(),
            release.clone(),
        );
        senders.spawn(async move {
            opened[i].store(ns(), Ordering::Relaxed);
            let written = async {
                let mut tx = Sender::open(&opts).await?;
                tx.write_all(&data).await?;
                tx.flush().await?;
                Ok::<_, anyhow::Error>(tx)
            }
            .await;
            // A sender that failed still comes to the barrier, or the
            // others would wait for it for ever; its error follows.
            all_written.wait().await;
            release.wait().await;
            written
                .with_context(|| format!("channel {}", opts.channel))?
                .finish()
                .await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    all_written.wait().await;
    let peak = sample();
    // New channels, one at a time, while all the others are open.
    let mut loaded_us = Vec::new();
    for i in 0..LOADED_PROBES {
        loaded_us.push(one_setup(agent, &format!("{prefix}-probe-{i}")).await?);
    }
    loaded_us.sort_by(f64::total_cmp);
    release.wait().await;
    // Every end's outcome: a sender that failed may have failed because
    // its receiver did, which says why.
    let mut failed: [Vec<String>; 2] = Default::default();
    for (ends, failed) in [&mut receivers, &mut senders].into_iter().zip(&mut failed) {
        while let Some(done) = ends.join_next().await {
            if let Err(err) = done.context("an end's task").and_then(|ended| ended) {
                failed.push(format!("{err:#}"));
            }
        }
    }
    let [receivers_failed, senders_failed] = failed;
    if !receivers_failed.is_empty() || !senders_failed.is_empty() {
        let first = |failed: &[String]| failed.first().cloned().unwrap_or_default();
        anyhow::bail!(
            "{} receivers and {} senders of the wave's {n} channels failed; the first receiver: {}; the first sender: {}",
            receivers_failed.len(),
            senders_failed.len(),
            first(&receivers_failed),
            first(&senders_failed),
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut setup_us: Vec<f64> = (0..n)
        .map(|i| {
            let open = opened[i].load(Ordering::Relaxed);
            first[i].load(Ordering::Relaxed).saturating_sub(open) as f64 / 1e3
        })
        .collect();
    setup_us.sort_by(f64::total_cmp);
    Ok(Wave {
        path,
        channels: n,
        seconds,
        setup_us,
        loaded_us,
        peak,
    })
}

/// New channels measured one at a time while a wave is open.
const LOADED_PROBES: usize = 200;

/// The set-up of one channel of 1 KiB, in µs: its receiver waiting, the
/// sender's open to the first byte read.
async fn one_setup(agent: &str, name: &str) -> anyhow::Result<f64> {
    let mut opts = ChannelOptions::new(agent, name);
    opts.live = true;
    let rx_opts = opts.clone();
    let receiver = tokio::spawn(async move {
        let mut rx = Receiver::connect(&rx_opts).await?;
        let mut buf = vec![0u8; 1024];
        let n = rx.read(&mut buf).await?;
        let first = Instant::now();
        anyhow::ensure!(n > 0, "channel {}: empty", rx_opts.channel);
        let mut rest = Vec::new();
        rx.read_to_end(&mut rest).await?;
        rx.finish().await?;
        Ok(first)
    });
    // Its hello reaches the agent first.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let opened = Instant::now();
    let mut tx = Sender::open(&opts).await?;
    tx.write_all(&[7u8; 1024]).await?;
    tx.finish().await?;
    let first = receiver.await.context("a receiver task")??;
    Ok(first.saturating_duration_since(opened).as_secs_f64() * 1e6)
}

/// `n` channels one after another, `prefix-i` each, or all on channel
/// `prefix` if `same`.
async fn sequential(agent: &str, prefix: &str, n: usize, same: bool) -> anyhow::Result<f64> {
    let data = floki_tests::pattern(STREAM, 5);
    let started = Instant::now();
    for i in 0..n {
        let name = if same {
            prefix.to_owned()
        } else {
            format!("{prefix}-{i}")
        };
        let mut opts = ChannelOptions::new(agent, name);
        opts.live = true;
        let rx_opts = opts.clone();
        let receiver = tokio::spawn(async move {
            let mut rx = Receiver::connect(&rx_opts).await?;
            let mut sink = Vec::with_capacity(STREAM);
            rx.read_to_end(&mut sink).await?;
            let summary = rx.finish().await?;
            anyhow::ensure!(summary.bytes == STREAM as u64, "{} bytes", summary.bytes);
            Ok(())
        });
        let mut tx = Sender::open(&opts).await?;
        tx.write_all(&data).await?;
        tx.finish().await?;
        receiver.await.context("a receiver task")??;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let at = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[at.min(values.len() - 1)]
}

/// This process may hold a descriptor per end (two per channel, and
/// more): raise its limit as far as the kernel allows.
fn raise_descriptor_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let wanted = hard.max(nr_open.min(1 << 20));
    // Beyond the hard limit takes CAP_SYS_RESOURCE, which a container may
    // not have: then up to the hard limit.
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// The widest range of ports the kernel hands out for `bind(port 0)` and
/// `connect`, set in the bench's own network namespace.
const PORT_RANGE: &str = "1024 65535";

/// Moves this process, and so the agent and the threads it starts later,
/// into a network namespace of its own, with loopback up and the port range
/// widened to [`PORT_RANGE`]. Every channel over the TCP port takes about
/// four ports (two control connections, the receiver's data listener, the
/// sender's data connection) that stay in TIME_WAIT for a minute after it
/// closes: on the host, with its default range of about 28,000 ports and
/// what earlier runs left in TIME_WAIT, a receiver's `bind` searched the
/// range for seconds (`inet_csk_get_port` in a profile), so that hellos came
/// after the agent's 5 s limit. Here the run starts with no TIME_WAIT and
/// twice the range.
fn own_network_namespace() -> anyhow::Result<()> {
    floki_tests::netns::enter_own(PORT_RANGE).context(
        "moving into a network namespace of the bench's own with a wider port range (needs root)",
    )
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    // Before any thread starts: a thread takes its creator's namespace.
    own_network_namespace()?;
    let limit = raise_descriptor_limit()?;
    let fit = |path: Route| (limit.saturating_sub(256) / path.driver_fds_per_channel()) as usize;
    let mut limited = Vec::new();
    for path in [Route::Splice, Route::Shm] {
        if fit(path) < opts.concurrent {
            limited.push(format!(
                "{} channels at once over {} do not fit in this machine's descriptor limit \
                 ({limit}, a hard limit this process cannot raise without CAP_SYS_RESOURCE; the \
                 driver holds {} per channel): the largest wave is {}. The agent, too, holds a \
                 control connection per end, two per channel: {} channels need {} descriptors in \
                 the agent alone, so no driver reaches them under this limit.",
                opts.concurrent,
                path.label(),
                path.driver_fds_per_channel(),
                fit(path),
                opts.concurrent,
                2 * opts.concurrent,
            ));
        }
    }
    for line in &limited {
        eprintln!("xtask: bench channels: {line}");
    }
    let binaries = lab::Binaries::beside_me()?;
    let lab = Lab::start(&binaries, "bench-channels", false)?;
    // The driver's sockets in the agent's cgroup: spliced, as functions'.
    lab.cgroup.enter().context("joining the agent's cgroup")?;
    let pid = lab.agent.pid();
    let pin_dir = lab.agent.pin_dir.clone();
    let sample = || Footprint::sample(pid, &pin_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let idle = sample();
    // Spliced channels one after another first, before the waves' TCP
    // connections fill TIME_WAIT (see `--sequential-spliced`).
    let mut leaks = Vec::new();
    let mut in_a_row = |path: Route, n: usize, same: bool| -> anyhow::Result<()> {
        let what = if same {
            format!("{} on one channel", path.label())
        } else {
            path.label().to_owned()
        };
        eprintln!("xtask: bench channels, {n} one after another over {what}");
        // The driver keeps its last connections (and their rings) for its
        // next channels, as a function does: closed before each sample,
        // so that the counts are the agent's own.
        floki_client::close_kept_connections();
        std::thread::sleep(Duration::from_secs(2));
        let before = sample();
        let seconds = runtime.block_on(sequential(
            &path.addr(&lab),
            &format!("seq-{}", path.label()),
            n,
            same,
        ))?;
        floki_client::close_kept_connections();
        std::thread::sleep(Duration::from_secs(2));
        leaks.push((what, n, seconds, before, sample()));
        Ok(())
    };
    in_a_row(Route::Splice, opts.sequential_spliced, false)?;
    let mut waves = Vec::new();
    for path in [Route::Splice, Route::Shm] {
        let agent = path.addr(&lab);
        runtime.block_on(async {
            // Warm-up.
            wave(path, &agent, &format!("warm-{}", path.label()), 100, sample).await?;
            let largest = opts.concurrent.min(fit(path));
            let sizes = if largest > 1_000 {
                vec![1_000, largest]
            } else {
                vec![largest]
            };
            for n in sizes {
                floki_client::close_kept_connections();
                eprintln!("xtask: bench channels, {n} at once over {}", path.label());
                let prefix = format!("wave{n}-{}", path.label());
                waves.push(wave(path, &agent, &prefix, n, sample).await?);
            }
            anyhow::Ok(())
        })?;
    }
    in_a_row(Route::Shm, opts.sequential, false)?;
    in_a_row(Route::Shm, opts.sequential_same, true)?;

    let mut table = String::from(
        "| path | channels open at once | all verified | wall time | set-up p50, all opened at once | set-up p99, all opened at once | set-up p50, one more | set-up p99, one more | agent RSS | agent descriptors | node shared memory added | kernel map entries |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let added_shmem = |w: &Wave| w.peak.shmem_kib.saturating_sub(idle.shmem_kib);
    let mut json_waves = Vec::new();
    for w in &waves {
        table.push_str(&format!(
            "| {} | {} | {} of {} | {:.2} s | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.1} MiB | {} | {:.1} MiB | {} |\n",
            w.path.label(),
            w.channels,
            w.setup_us.len(),
            w.channels,
            w.seconds,
            quantile(&w.setup_us, 0.5),
            quantile(&w.setup_us, 0.99),
            quantile(&w.loaded_us, 0.5),
            quantile(&w.loaded_us, 0.99),
            mib(w.peak.rss_kib),
            w.peak.fds,
            mib(added_shmem(w)),
            w.peak.map_entries,
        ));
        json_waves.push(json!({
            "path": w.path.label(), "channels": w.channels, "seconds": w.seconds,
            "setup_p50_us": quantile(&w.setup_us, 0.5), "setup_p99_us": quantile(&w.setup_us, 0.99),
            "one_more_setup_p50_us": quantile(&w.loaded_us, 0.5), "one_more_setup_p99_us": quantile(&w.loaded_us, 0.99),
            "agent_rss_kib": w.peak.rss_kib, "agent_fds": w.peak.fds,
            "shmem_added_kib": added_shmem(w),
            "map_entries": w.peak.map_entries,
        }));
    }
    let mut leak = String::from(
        "| one after another | wall time | agent RSS before → after | agent descriptors before → after | kernel map entries before → after | node shared memory before → after |\n|---|---|---|---|---|---|\n",
    );
    let mut json_leaks = Vec::new();
    let mut leak_floors = String::new();
    for (what, n, seconds, before, after) in &leaks {
        leak.push_str(&format!(
            "| {n} over {what} | {seconds:.1} s | {:.1} → {:.1} MiB | {} → {} | {} → {} | {:.1} → {:.1} MiB |\n",
            mib(before.rss_kib),
            mib(after.rss_kib),
            before.fds,
            after.fds,
            before.map_entries,
            after.map_entries,
            mib(before.shmem_kib),
            mib(after.shmem_kib),
        ));
        leak_floors.push_str(&format!(
            "- no leak after {n} channels one after another over {what} (issue 16): descriptors {} to {}, map entries {} to {}, {}\n",
            before.fds,
            after.fds,
            before.map_entries,
            after.map_entries,
            if after.fds <= before.fds && after.map_entries <= before.map_entries { "met" } else { "NOT met" },
        ));
        json_leaks.push(json!({"path": what, "channels": n, "seconds": seconds,
            "before": {"rss_kib": before.rss_kib, "fds": before.fds, "map_entries": before.map_entries, "shmem_kib": before.shmem_kib},
            "after": {"rss_kib": after.rss_kib, "fds": after.fds, "map_entries": after.map_entries, "shmem_kib": after.shmem_kib}}));
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut floors = String::new();
    for path in [Route::Splice, Route::Shm] {
        let of_path: Vec<&Wave> = waves.iter().filter(|w| w.path == path).collect();
        let (thousand, largest) = (of_path[0], of_path[of_path.len() - 1]);
        floors.push_str(&format!(
            "- {path}: all {} channels at once succeed (issue 16, 10,000 asked): {} verified, {}\n\
             - {path}: set-up p99 under 1 ms at 1,000 concurrent (issue 16): {:.0} µs for one more channel while {} are open, {}; {:.0} µs for the {} opened all at once\n\
             - {path}: agent RSS under 128 MiB at {} (issue 16): {:.1} MiB, {}\n\
             - {path}: node's added shared memory under 2 GiB at {} (issue 16): {:.1} MiB, {}\n",
            largest.channels,
            largest.setup_us.len(),
            verdict(largest.setup_us.len() == largest.channels),
            quantile(&thousand.loaded_us, 0.99),
            thousand.channels,
            verdict(quantile(&thousand.loaded_us, 0.99) < 1000.0),
            quantile(&thousand.setup_us, 0.99),
            thousand.channels,
            largest.channels,
            mib(largest.peak.rss_kib),
            verdict(largest.peak.rss_kib < 128 * 1024),
            largest.channels,
            mib(added_shmem(largest)),
            verdict(added_shmem(largest) < 2 << 20),
            path = path.label(),
        ));
    }
    floors.push_str(&leak_floors);
    println!("{table}\n{leak}\n{floors}");
    if !opts.no_write {
        let markdown = format!(
            "## Many channels on one agent\n\n\
             Measured {} on {}.\n\
             Reproduce: `cargo xtask bench channels` (as root).\n\n\
             One driver process (the tokio client, two worker threads) and the agent, in a \
             network namespace of their own with the port range widened to {PORT_RANGE} (a \
             channel over the TCP port holds about four ports, in TIME_WAIT for a minute after \
             it closes: in the host's range of about 28,000, a receiver's `bind` searched it for \
             seconds); the driver's sockets in the \
             agent's cgroup: on the agent's TCP port (`splice`: spliced, as functions' sockets \
             are) and on its Unix socket (`shm`: a ring per channel). A wave of N: N \
             receivers wait, then N senders open and each writes 64 KiB; the sample is taken \
             when every sender has written and none has finished, so all N channels are open \
             at once. Then, with all N open, {} more channels of 1 KiB are opened one at a time \
             (`one more`: the set-up a function sees on a busy agent); then every stream is \
             finished and verified. Set-up is a sender's open to the first byte its \
             receiver read, as the driver sees it (its own queueing included). Kernel map \
             entries count the agent's endpoint, channel and socket maps. Then channels one \
             after another, 64 KiB each: spliced ones first (their TCP connections' TIME_WAIT \
             fills the port range, so a longer row would measure the kernel's port search), \
             rings last, each on a channel of its own; then rings on one channel, again and \
             again (a warm function's stream: its two ends keep their connections to the \
             agent and their ring). The driver keeps its last connections for its next \
             channels, as any process with the client does: it closes them before each \
             sample, so that the counts are the agent's.\n\n\
             {}{table}\n{leak}\n\
             Floors:\n{floors}",
            report::today(),
            report::machine(),
            LOADED_PROBES,
            limited
                .iter()
                .map(|l| format!("{l}\n\n"))
                .collect::<String>(),
        );
        let json = json!({"bench": "channels", "date": report::today(), "machine": report::machine(),
            "waves": json_waves, "sequential": json_leaks});
        report::write_section("channels", &markdown, &json)?;
    }
    Ok(())
}
