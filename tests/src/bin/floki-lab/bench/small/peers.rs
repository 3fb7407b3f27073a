//! The two functions of `bench small`, already running when they are timed:
//! a consumer that waits on each stream in turn and a producer that opens
//! each stream when the driver says go. Their clocks are the same
//! (`CLOCK_MONOTONIC` is one clock for the whole machine, every network
//! namespace included), so the driver subtracts one's time from the
//! other's.
//!
//! Lines on stdin and stdout, stream `k` numbering every (size, round) in
//! order:
//! * consumer: `ready k` once it began waiting for stream `k`, then
//!   `got k FIRST END` (the first byte readable, the stream verified);
//! * driver to producer: `go k`; producer: `sent k OPEN` (just before it
//!   opened the stream).

use std::{
    io::{BufRead, Write as _},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use floki_client::{ChannelOptions, blocking, workflow};

/// What both functions are told.
#[derive(Clone, Debug, Args)]
pub struct SmallPeer {
    /// The agent's address on this node.
    #[arg(long)]
    pub addr: String,
    /// Plain channels: their names' prefix (`PREFIX-k`).
    #[arg(long)]
    pub channel: Option<String>,
    /// Workflow edges instead: the workflow...
    #[arg(long)]
    pub workflow: Option<String>,
    /// ...its token...
    #[arg(long)]
    pub token: Option<String>,
    /// ...the edges' prefix (`PREFIX<round>`, one edge per round)...
    #[arg(long)]
    pub edge: Option<String>,
    /// ...and this function.
    #[arg(long = "as")]
    pub function: Option<String>,
    /// Stream sizes, in order.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<u64>,
    /// Streams per size.
    #[arg(long)]
    pub rounds: usize,
    /// Consumer: how long it waits on a stream before it says ready, so
    /// that the agent has registered it before the producer opens.
    #[arg(long, default_value_t = 2000)]
    pub head_start_us: u64,
}

impl SmallPeer {
    /// Every stream, in order: (k, round, bytes).
    fn streams(&self) -> impl Iterator<Item = (usize, usize, u64)> + '_ {
        self.sizes
            .iter()
            .flat_map(|&bytes| (0..self.rounds).map(move |round| (round, bytes)))
            .enumerate()
            .map(|(k, (round, bytes))| (k, round, bytes))
    }

    fn channel_options(&self, k: usize) -> Option<ChannelOptions> {
        let prefix = self.channel.as_ref()?;
        let mut opts = ChannelOptions::new(&self.addr, format!("{prefix}-{k}"));
        opts.live = true;
        Some(opts)
    }

    /// A warm function knows its edges: each is described once, before
    /// the first stream, as a function that ran before has done (the
    /// answer is kept for the process, `floki_client::workflow::describe`).
    fn know_edges(&self) -> anyhow::Result<()> {
        if self.channel.is_some() {
            return Ok(());
        }
        for round in 0..self.rounds {
            workflow::blocking::describe(&self.edge_options(round)?)?;
        }
        Ok(())
    }

    fn edge_options(&self, round: usize) -> anyhow::Result<workflow::EdgeOptions> {
        let (Some(workflow), Some(token), Some(edge), Some(function)) =
            (&self.workflow, &self.token, &self.edge, &self.function)
        else {
            bail!("give --channel, or --workflow, --token, --edge and --as");
        };
        let mut opts = workflow::EdgeOptions::new(
            &self.addr,
            workflow,
            token.clone(),
            format!("{edge}{round}"),
            function.clone(),
        );
        opts.live = true;
        Ok(opts)
    }
}

/// Nanoseconds on the machine's monotonic clock.
pub fn now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC exists on Linux");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush().context("writing to the driver")
}

pub fn consumer(args: &SmallPeer) -> anyhow::Result<()> {
    args.know_edges()?;
    for (k, round, bytes) in args.streams() {
        let opts = args.clone();
        let waiting = std::thread::spawn(move || receive(&opts, k, round, bytes));
        std::thread::sleep(Duration::from_micros(args.head_start_us));
        say(&format!("ready {k}"))?;
        let (first, end) = waiting
            .join()
            .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))??;
        say(&format!("got {k} {first} {end}"))?;
    }
    Ok(())
}

/// Stream `k`: when its first byte was readable and when it was verified.
fn receive(args: &SmallPeer, k: usize, round: usize, bytes: u64) -> anyhow::Result<(u64, u64)> {
    let mut rx = match args.channel_options(k) {
        Some(opts) => blocking::Receiver::connect(&opts)?,
        None => {
            let (_, receivers) = workflow::blocking::receivers(&args.edge_options(round)?)?;
            let Some((_, rx)) = receivers.into_iter().next() else {
                bail!("the edge has no producer for this function");
            };
            rx
        }
    };
    let mut first = None;
    loop {
        let n = rx.fill_buf()?.len();
        if n == 0 {
            break;
        }
        first.get_or_insert_with(now_ns);
        rx.consume(n);
    }
    let summary = rx.finish()?;
    let end = now_ns();
    if summary.bytes != bytes {
        bail!(
            "stream {k}: received {} bytes, expected {bytes}",
            summary.bytes
        );
    }
    Ok((first.unwrap_or(end), end))
}

pub fn producer(args: &SmallPeer) -> anyhow::Result<()> {
    let largest = args.sizes.iter().copied().max().unwrap_or(0) as usize;
    let data = floki_tests::pattern(largest, 7);
    args.know_edges()?;
    let mut lines = std::io::stdin().lock().lines();
    for (k, round, bytes) in args.streams() {
        let line = lines.next().context("the driver went away")??;
        if line != format!("go {k}") {
            bail!("expected `go {k}` from the driver, got `{line}`");
        }
        let open = now_ns();
        let mut tx = match args.channel_options(k) {
            Some(opts) => blocking::Sender::open(&opts)?,
            None => {
                let (_, senders) = workflow::blocking::senders(&args.edge_options(round)?)?;
                let Some((_, tx)) = senders.into_iter().next() else {
                    bail!("the edge has no consumer for this function");
                };
                tx
            }
        };
        std::io::Write::write_all(&mut tx, &data[..bytes as usize])?;
        tx.finish()?;
        say(&format!("sent {k} {open}"))?;
    }
    Ok(())
}
