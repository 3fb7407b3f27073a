//! `floki-probe`: channel ends for the kernel tests. It writes or checks the
//! harness's deterministic pattern through the client library, with the
//! write sizes, rates and failure points a test asks for, and prints one JSON
//! line with what happened. Exit status 0 only for a complete, matching stream.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use floki_client::{
    ChannelOptions, Receiver, Sender, Summary, Transport, blocking,
    workflow::{self, EdgeOptions},
};
use floki_tests::{Pattern as DataPattern, stream_seed};
use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Debug)]
struct Args {
    verb: String,
    agent: String,
    channel: String,
    bytes: u64,
    seed: u64,
    /// `fixed:N`, `mixed` (random sizes from 1 B to 1 MiB), or
    /// `from-reader` (`write_from` a reader whose reads are `mixed`).
    writes: String,
    /// Bytes per second (0: unlimited).
    rate: u64,
    /// Stop (sleep until killed) after this many bytes.
    stall_after: Option<u64>,
    window: Option<u64>,
    data_addr: Option<std::net::SocketAddr>,
    chunk: usize,
    /// Flush after every write (small messages go out one by one).
    flush_each: bool,
    /// Workflow edge: workflow, edge, this function, token.
    workflow: Option<(String, String, String, String)>,
    /// Print `wrote N` on stderr once all bytes are written (before finishing).
    report_written: bool,
    /// Use the blocking client (the async one otherwise; both take
    /// shared-memory rings).
    blocking: bool,
    /// Don't offer to take a ring: a socket client.
    no_ring: bool,
    /// Insist on a transport.
    transport: Option<Transport>,
    /// Wait for the receiver: never let the agent store the stream.
    live: bool,
    /// Plain channels: the secret both ends present.
    secret: Option<String>,
    /// The run this end belongs to.
    run: Option<String>,
    /// Receivers: do not check the bytes against the pattern (a sender of
    /// the security tests writes its own).
    no_check: bool,
    /// Give up if the other end has not come within this time (edges: 60 s
    /// unless given).
    pair_timeout: Option<Duration>,
    /// Edges: this many streams in turn from this one process, as a warm
    /// function moves them (each on its connections and links of the last);
    /// `stream N done` on stderr after each.
    streams: u32,
    /// Edges: the pause before each stream after the first, as between a
    /// warm function's invocations.
    pause: Duration,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let verb = args
        .next()
        .context("usage: floki-probe send|recv --agent A --channel C --bytes N ...")?;
    let mut out = Args {
        verb,
        agent: String::new(),
        channel: String::new(),
        bytes: 0,
        seed: 1,
        writes: "fixed:1048576".into(),
        rate: 0,
        stall_after: None,
        window: None,
        data_addr: None,
        chunk: 1 << 20,
        flush_each: false,
        workflow: None,
        report_written: false,
        blocking: false,
        no_ring: false,
        transport: None,
        live: false,
        secret: None,
        run: None,
        no_check: false,
        pair_timeout: None,
        streams: 1,
        pause: Duration::ZERO,
    };
    let mut edge = (String::new(), String::new(), String::new(), String::new());
    while let Some(flag) = args.next() {
        if flag == "--flush-each" {
            out.flush_each = true;
            continue;
        }
        if flag == "--live" {
            out.live = true;
            continue;
        }
        if flag == "--report-written" {
            out.report_written = true;
            continue;
        }
        if flag == "--no-check" {
            out.no_check = true;
            continue;
        }
        if flag == "--blocking" {
            out.blocking = true;
            continue;
        }
        if flag == "--no-ring" {
            out.no_ring = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agent" => out.agent = value,
            "--channel" => out.channel = value,
            "--bytes" => out.bytes = value.parse()?,
            "--seed" => out.seed = value.parse()?,
            "--writes" => out.writes = value,
            "--rate" => out.rate = value.parse()?,
            "--stall-after" => out.stall_after = Some(value.parse()?),
            "--window" => out.window = Some(value.parse()?),
            "--data-addr" => out.data_addr = Some(value.parse()?),
            "--secret" => out.secret = Some(value),
            "--run" => out.run = Some(value),
            "--pair-timeout" => out.pair_timeout = Some(Duration::from_secs(value.parse()?)),
            "--chunk" => out.chunk = value.parse()?,
            "--streams" => out.streams = value.parse()?,
            "--pause-ms" => out.pause = Duration::from_millis(value.parse()?),
            "--workflow" => edge.0 = value,
            "--edge" => edge.1 = value,
            "--as" => edge.2 = value,
            "--token" => edge.3 = value,
            "--transport" => out.transport = Some(value.parse().map_err(anyhow::Error::msg)?),
            other => bail!("unknown flag {other}"),
        }
    }
    if !edge.0.is_empty() {
        out.workflow = Some(edge);
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let mut opts = ChannelOptions::new(&args.agent, &args.channel);
    opts.window = args.window;
    opts.data_addr = args.data_addr;
    opts.transport = args.transport;
    opts.ring = !args.no_ring;
    opts.live = args.live;
    opts.secret = args.secret.clone();
    opts.run = args.run.clone();
    opts.pair_timeout = args.pair_timeout;
    match (args.verb.as_str(), args.blocking, &args.workflow) {
        ("send" | "recv", true, Some(edge)) => return blocking_edge(&args, edge),
        ("send", true, None) => return blocking_send(&args, &opts),
        ("recv", true, None) => return blocking_recv(&args, &opts),
        _ => {}
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async_main(&args, &opts))
}

async fn async_main(args: &Args, opts: &ChannelOptions) -> anyhow::Result<()> {
    match (args.verb.as_str(), &args.workflow) {
        ("send", None) => send(args, opts).await,
        ("recv", None) => recv(args, opts).await,
        ("send" | "recv", Some(edge)) => {
            for n in 1..=args.streams {
                if n > 1 {
                    tokio::time::sleep(args.pause).await;
                }
                let opts = edge_options(args, edge);
                match args.verb.as_str() {
                    "send" => send_edge(args, opts).await?,
                    _ => recv_edge(args, opts).await?,
                }
                eprintln!("floki-probe: stream {n} done");
            }
            Ok(())
        }
        (other, _) => bail!("unknown verb {other}"),
    }
}

fn edge_options(
    args: &Args,
    (workflow, edge, function, token): &(String, String, String, String),
) -> EdgeOptions {
    let mut opts = EdgeOptions::new(&args.agent, workflow, token, edge, function);
    opts.pair_timeout = Some(args.pair_timeout.unwrap_or(Duration::from_secs(60)));
    opts.transport = args.transport;
    opts.live = args.live;
    opts.run = args.run.clone();
    opts
}

/// A producer's streams on an edge: `--bytes` of its pattern on each.
async fn send_edge(args: &Args, opts: EdgeOptions) -> anyhow::Result<()> {
    let (info, mut senders) = workflow::senders(&opts).await?;
    let patterns: Vec<DataPattern> = senders
        .iter()
        .map(|(consumer, _)| {
            DataPattern::new(stream_seed(
                args.seed,
                info.pattern,
                &opts.function,
                consumer,
            ))
        })
        .collect();
    let mut buf = vec![0u8; args.chunk];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.bytes {
        let n = (args.bytes - sent).min(buf.len() as u64) as usize;
        for ((_, tx), pattern) in senders.iter_mut().zip(&patterns) {
            pattern.fill(sent, &mut buf[..n]);
            tx.write_all(&buf[..n]).await?;
        }
        sent += n as u64;
        pace(args.rate, sent, started).await;
    }
    if args.report_written {
        eprintln!("floki-probe: wrote {sent}");
    }
    let mut report = Vec::new();
    for (consumer, tx) in senders {
        let summary = tx.finish().await?;
        report.push(serde_json::json!({"peer": consumer, "bytes": summary.bytes, "transport": summary.transport.to_string(), "stored": summary.stored}));
    }
    println!(
        "{}",
        serde_json::json!({"streams": report, "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// A consumer's streams on an edge, all at once, each checked byte by byte.
async fn recv_edge(args: &Args, opts: EdgeOptions) -> anyhow::Result<()> {
    let (info, receivers) = workflow::receivers(&opts).await?;
    let started = Instant::now();
    let tasks: Vec<_> = receivers
        .into_iter()
        .map(|(producer, mut rx)| {
            let pattern = DataPattern::new(stream_seed(args.seed, info.pattern, &producer, &opts.function));
            let (expect, chunk, rate) = (args.bytes, args.chunk, args.rate);
            tokio::spawn(async move {
                let mut buf = vec![0u8; chunk];
                let mut expected = vec![0u8; chunk];
                let mut got = 0u64;
                loop {
                    let n = rx.read(&mut buf).await.with_context(|| format!("stream from {producer}"))?;
                    if n == 0 {
                        break;
                    }
                    pattern.fill(got, &mut expected[..n]);
                    if buf[..n] != expected[..n] {
                        bail!("stream from {producer}: byte {got}.. differs from what it sent");
                    }
                    got += n as u64;
                    pace(rate, got, started).await;
                }
                let summary = rx.finish().await?;
                if got != expect {
                    bail!("stream from {producer}: {got} bytes, expected {expect}");
                }
                anyhow::Ok(serde_json::json!({"peer": producer, "bytes": summary.bytes, "transport": summary.transport.to_string(), "stored": summary.stored}))
            })
        })
        .collect();
    let mut report = Vec::new();
    for task in tasks {
        report.push(task.await??);
    }
    println!(
        "{}",
        serde_json::json!({"streams": report, "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

/// How long to wait to keep `done` bytes at `rate` bytes/s since `started`.
fn pace_delay(rate: u64, done: u64, started: Instant) -> Option<Duration> {
    (rate > 0)
        .then(|| Duration::from_secs_f64(done as f64 / rate as f64))
        .and_then(|due| due.checked_sub(started.elapsed()))
}

/// Sleeps as needed to keep `done` bytes at `rate` bytes/s since `started`.
async fn pace(rate: u64, done: u64, started: Instant) {
    if let Some(wait) = pace_delay(rate, done, started) {
        tokio::time::sleep(wait).await;
    }
}

/// The sizes of a sender's writes: `fixed:N`, or `mixed` (1 B to 1 MiB,
/// seeded).
struct WriteSizes {
    fixed: Option<usize>,
    mixed: rand::rngs::StdRng,
}

impl WriteSizes {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let fixed = args
            .writes
            .strip_prefix("fixed:")
            .map(str::parse::<usize>)
            .transpose()?;
        Ok(Self {
            fixed,
            mixed: rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x5eed),
        })
    }

    fn next(&mut self) -> usize {
        self.fixed
            .unwrap_or_else(|| self.mixed.random_range(1..=(1usize << 20)))
    }
}

/// `--writes` for a sender that hands a reader to `write_from`.
const FROM_READER: &str = "from-reader";

/// The pattern as a reader, each read at most a `mixed` write's size: what
/// `write_from` reads straight into a ring.
struct PatternSource {
    pattern: DataPattern,
    at: u64,
    bytes: u64,
    sizes: WriteSizes,
}

impl PatternSource {
    fn new(args: &Args) -> anyhow::Result<Self> {
        Ok(Self {
            pattern: DataPattern::new(args.seed),
            at: 0,
            bytes: args.bytes,
            sizes: WriteSizes::new(args)?,
        })
    }
}

impl std::io::Read for PatternSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.bytes - self.at)
            .min(buf.len() as u64)
            .min(self.sizes.next() as u64) as usize;
        self.pattern.fill(self.at, &mut buf[..n]);
        self.at += n as u64;
        Ok(n)
    }
}

impl tokio::io::AsyncRead for PatternSource {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = std::io::Read::read(self.get_mut(), buf.initialize_unfilled())?;
        buf.advance(n);
        std::task::Poll::Ready(Ok(()))
    }
}

/// Checks `got` received bytes against the pattern at `offset`.
fn check(
    pattern: &DataPattern,
    offset: u64,
    got: &[u8],
    expected: &mut [u8],
) -> anyhow::Result<()> {
    let expected = &mut expected[..got.len()];
    pattern.fill(offset, expected);
    match got.iter().zip(expected.iter()).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => bail!(
            "byte {} differs from what the sender wrote",
            offset + at as u64
        ),
    }
}

fn print_summary(summary: &Summary, started: Instant) {
    println!(
        "{}",
        serde_json::json!({"bytes": summary.bytes, "transport": summary.transport.to_string(), "stored": summary.stored, "seconds": started.elapsed().as_secs_f64()})
    );
}

/// Edges with the blocking client: `--streams` in turn, each of `--bytes`
/// to (or from) every peer, one peer after another, paced at `--rate`.
fn blocking_edge(args: &Args, edge: &(String, String, String, String)) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    for n in 1..=args.streams {
        if n > 1 {
            std::thread::sleep(args.pause);
        }
        let opts = edge_options(args, edge);
        let started = Instant::now();
        let mut buf = vec![0u8; args.chunk];
        let mut expected = vec![0u8; args.chunk];
        if args.verb == "send" {
            let (info, senders) = workflow::blocking::senders(&opts)?;
            for (consumer, mut tx) in senders {
                let pattern = DataPattern::new(stream_seed(
                    args.seed,
                    info.pattern,
                    &opts.function,
                    &consumer,
                ));
                let mut sent = 0u64;
                while sent < args.bytes {
                    let len = (args.bytes - sent).min(buf.len() as u64) as usize;
                    pattern.fill(sent, &mut buf[..len]);
                    tx.write_all(&buf[..len])?;
                    sent += len as u64;
                    if let Some(wait) = pace_delay(args.rate, sent, started) {
                        std::thread::sleep(wait);
                    }
                }
                tx.finish()?;
            }
        } else {
            let (info, receivers) = workflow::blocking::receivers(&opts)?;
            for (producer, mut rx) in receivers {
                let pattern = DataPattern::new(stream_seed(
                    args.seed,
                    info.pattern,
                    &producer,
                    &opts.function,
                ));
                let mut got = 0u64;
                loop {
                    let len = rx.read(&mut buf)?;
                    if len == 0 {
                        break;
                    }
                    pattern.fill(got, &mut expected[..len]);
                    if buf[..len] != expected[..len] {
                        bail!("stream from {producer}: byte {got}.. differs from what it sent");
                    }
                    got += len as u64;
                    if let Some(wait) = pace_delay(args.rate, got, started) {
                        std::thread::sleep(wait);
                    }
                }
                rx.finish()?;
                if got != args.bytes {
                    bail!(
                        "stream from {producer}: {got} bytes, expected {}",
                        args.bytes
                    );
                }
            }
        }
        eprintln!("floki-probe: stream {n} done");
    }
    Ok(())
}

/// `send` with the blocking client.
fn blocking_send(args: &Args, opts: &ChannelOptions) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut tx = blocking::Sender::connect(opts)?;
    if args.writes == FROM_READER {
        let started = Instant::now();
        tx.write_from(&mut PatternSource::new(args)?)?;
        print_summary(&tx.finish()?, started);
        return Ok(());
    }
    let pattern = DataPattern::new(args.seed);
    let mut sizes = WriteSizes::new(args)?;
    let mut buf = Vec::new();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.bytes {
        if args.stall_after.is_some_and(|limit| sent >= limit) {
            tx.flush()?;
            eprintln!("floki-probe: stalling after {sent} bytes");
            std::thread::sleep(Duration::from_secs(3600));
        }
        let n = (args.bytes - sent).min(sizes.next() as u64) as usize;
        buf.resize(buf.len().max(n), 0);
        pattern.fill(sent, &mut buf[..n]);
        tx.write_all(&buf[..n])?;
        sent += n as u64;
        if let Some(wait) = pace_delay(args.rate, sent, started) {
            std::thread::sleep(wait);
        }
    }
    let summary = tx.finish()?;
    print_summary(&summary, started);
    Ok(())
}

/// `recv` with the blocking client, through `BufRead` (over shm: in place
/// in the ring).
fn blocking_recv(args: &Args, opts: &ChannelOptions) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let mut rx = blocking::Receiver::connect(opts)?;
    let pattern = DataPattern::new(args.seed);
    let mut expected = vec![0u8; args.chunk];
    let started = Instant::now();
    let mut got = 0u64;
    loop {
        let data = rx.fill_buf().context("reading the channel")?;
        if data.is_empty() {
            break;
        }
        let n = data.len().min(args.chunk);
        check(&pattern, got, &data[..n], &mut expected)?;
        rx.consume(n);
        got += n as u64;
        if args.stall_after.is_some_and(|limit| got >= limit) {
            eprintln!("floki-probe: stalling after {got} bytes");
            std::thread::sleep(Duration::from_secs(3600));
        }
        if let Some(wait) = pace_delay(args.rate, got, started) {
            std::thread::sleep(wait);
        }
    }
    let summary = rx.finish()?;
    if got != args.bytes {
        bail!("received {got} bytes, the test expected {}", args.bytes);
    }
    print_summary(&summary, started);
    Ok(())
}

async fn send(args: &Args, opts: &ChannelOptions) -> anyhow::Result<()> {
    let mut tx = Sender::connect(opts).await?;
    if args.writes == FROM_READER {
        let started = Instant::now();
        tx.write_from(&mut PatternSource::new(args)?).await?;
        print_summary(&tx.finish().await?, started);
        return Ok(());
    }
    let pattern = DataPattern::new(args.seed);
    let mut sizes = WriteSizes::new(args)?;
    let mut buf = Vec::new();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.bytes {
        if args.stall_after.is_some_and(|limit| sent >= limit) {
            tx.flush().await?;
            eprintln!("floki-probe: stalling after {sent} bytes");
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let n = (args.bytes - sent).min(sizes.next() as u64) as usize;
        buf.resize(buf.len().max(n), 0);
        pattern.fill(sent, &mut buf[..n]);
        tx.write_all(&buf[..n]).await?;
        if args.flush_each {
            tx.flush().await?;
        }
        sent += n as u64;
        pace(args.rate, sent, started).await;
    }
    let summary = tx.finish().await?;
    print_summary(&summary, started);
    Ok(())
}

async fn recv(args: &Args, opts: &ChannelOptions) -> anyhow::Result<()> {
    let mut rx = Receiver::connect(opts).await?;
    let pattern = DataPattern::new(args.seed);
    let mut buf = vec![0u8; args.chunk];
    let mut expected = vec![0u8; args.chunk];
    let started = Instant::now();
    let mut got = 0u64;
    loop {
        let n = rx.read(&mut buf).await.context("reading the channel")?;
        if n == 0 {
            break;
        }
        if !args.no_check {
            check(&pattern, got, &buf[..n], &mut expected)?;
        }
        got += n as u64;
        if args.stall_after.is_some_and(|limit| got >= limit) {
            eprintln!("floki-probe: stalling after {got} bytes");
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        pace(args.rate, got, started).await;
    }
    let summary = rx.finish().await?;
    if got != args.bytes {
        bail!("received {got} bytes, the test expected {}", args.bytes);
    }
    print_summary(&summary, started);
    Ok(())
}
