//! The processes a benchmark or the demo measures: plain TCP endpoints (no
//! agent), Floki channel ends through the client library, and ping-pong
//! pairs for latency. Each prints one JSON line with what it measured.
//! (`floki-lab peer ...`: the lab spawns itself.)

use std::{
    io::{Read, Write as _},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use floki_client::{ChannelOptions, Receiver, Sender, blocking};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Debug, Subcommand)]
pub enum Peer {
    /// Accepts one TCP connection and reads BYTES.
    TcpSink(Stream),
    /// Connects and writes BYTES.
    TcpSource(Stream),
    /// Receives BYTES on a Floki channel.
    FlokiRecv(Stream),
    /// Sends BYTES on a Floki channel.
    FlokiSend(Stream),
    /// Echoes COUNT messages over TCP (server side).
    TcpPong(PingPong),
    /// Times COUNT round trips over TCP.
    TcpPing(PingPong),
    /// Echoes COUNT messages from channel `<name>.ping` to `<name>.pong`.
    FlokiPong(PingPong),
    /// Times COUNT round trips over channels `<name>.ping` / `<name>.pong`.
    FlokiPing(PingPong),
    /// A producer on a workflow edge: BYTES on each of its streams.
    EdgeSend(EdgePeer),
    /// A consumer on a workflow edge: reads all its streams at once.
    EdgeRecv(EdgePeer),
    /// Plain TCP producer: BYTES to each address in --to, a chunk to each in turn.
    TcpFanSend(TcpFan),
    /// Plain TCP consumer: accepts --from connections, reads them all at once.
    TcpFanRecv(TcpFan),
    /// `bench small`'s consumer: waits on each stream in turn.
    SmallRecv(crate::bench::small::peers::SmallPeer),
    /// `bench small`'s producer: opens each stream when told to.
    SmallSend(crate::bench::small::peers::SmallPeer),
    /// `bench small`'s ceiling: the broker of a bare hand-off.
    HandoffBroker(crate::bench::small::handoff::HandoffPeer),
    /// The bare hand-off's consumer: reads each message as it comes.
    HandoffRecv(crate::bench::small::handoff::HandoffPeer),
    /// The bare hand-off's producer: writes a message when told to.
    HandoffSend(crate::bench::small::handoff::HandoffPeer),
    /// A function of the paper benchmark: PLAN (JSON) says what it does.
    PaperEndpoint {
        plan: String,
        /// Stay running, connected: run the plan once per `go` on stdin.
        #[arg(long)]
        serve: bool,
    },
    /// Deletes a paper benchmark run's objects: ACCESS and KEYS (JSON).
    PaperClean { access: String, keys: String },
}

#[derive(Debug, Args)]
pub struct EdgePeer {
    /// The agent's address on this node.
    #[arg(long)]
    pub addr: String,
    /// Workflow.
    #[arg(long)]
    pub workflow: String,
    /// Its token.
    #[arg(long)]
    pub token: String,
    /// Edge.
    #[arg(long)]
    pub edge: String,
    /// This function.
    #[arg(long = "as")]
    pub function: String,
    /// Bytes per stream.
    #[arg(long)]
    pub bytes: u64,
    /// Write (and read) size.
    #[arg(long, default_value_t = 1 << 20)]
    pub chunk: usize,
}

#[derive(Debug, Args)]
pub struct TcpFan {
    /// Producer: addresses to send to. Consumer: address to listen on.
    #[arg(long, num_args = 1..)]
    pub addr: Vec<String>,
    /// Consumer: how many producers connect.
    #[arg(long, default_value_t = 1)]
    pub from: usize,
    /// Bytes per stream.
    #[arg(long)]
    pub bytes: u64,
    /// Write (and read) size.
    #[arg(long, default_value_t = 1 << 20)]
    pub chunk: usize,
}

#[derive(Debug, Args)]
pub struct Stream {
    /// TCP address (listen or connect), or the agent's address.
    #[arg(long)]
    pub addr: String,
    /// Channel name (Floki peers).
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Bytes to move.
    #[arg(long)]
    pub bytes: u64,
    /// Size of each write (and read).
    #[arg(long)]
    pub chunk: usize,
    /// Flow-control window (Floki receivers; the agent's default if absent).
    #[arg(long)]
    pub window: Option<u64>,
    /// Which Floki client to use.
    #[arg(long, value_enum, default_value_t = Client::Blocking)]
    pub client: Client,
}

/// The Floki client library flavour a peer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Client {
    /// `floki_client::blocking` (std::io).
    Blocking,
    /// `floki_client` (tokio).
    Async,
}

#[derive(Debug, Args)]
pub struct PingPong {
    /// TCP address (listen or connect), or the agent's address.
    #[arg(long)]
    pub addr: String,
    /// Channel name prefix (Floki peers).
    #[arg(long, default_value = "rtt")]
    pub channel: String,
    /// Round trips.
    #[arg(long)]
    pub count: usize,
    /// Message size.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Which Floki client to use.
    #[arg(long, value_enum, default_value_t = Client::Blocking)]
    pub client: Client,
}

/// What a peer measured.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct Measured {
    /// Bytes moved.
    pub bytes: u64,
    /// Seconds from the first byte to the last.
    pub seconds: f64,
    /// Transport (Floki peers).
    pub transport: Option<String>,
    /// Round-trip times in microseconds, sorted (ping peers).
    pub rtt_us: Vec<f64>,
}

pub fn run(peer: Peer) -> anyhow::Result<()> {
    let measured = match peer {
        Peer::PaperEndpoint { plan, serve } => {
            return if serve {
                crate::bench::paper::endpoint::serve(&plan)
            } else {
                crate::bench::paper::endpoint::run(&plan)
            };
        }
        Peer::PaperClean { access, keys } => {
            return crate::bench::paper::endpoint::clean(&access, &keys);
        }
        Peer::SmallRecv(args) => return crate::bench::small::peers::consumer(&args),
        Peer::SmallSend(args) => return crate::bench::small::peers::producer(&args),
        Peer::HandoffBroker(args) => return crate::bench::small::handoff::broker(&args),
        Peer::HandoffRecv(args) => return crate::bench::small::handoff::consumer(&args),
        Peer::HandoffSend(args) => return crate::bench::small::handoff::producer(&args),
        Peer::TcpSink(args) => tcp_sink(&args)?,
        Peer::TcpSource(args) => tcp_source(&args)?,
        Peer::TcpPong(args) => tcp_pong(&args)?,
        Peer::TcpPing(args) => tcp_ping(&args)?,
        Peer::EdgeSend(args) => edge_send(&args)?,
        Peer::EdgeRecv(args) => edge_recv(&args)?,
        Peer::TcpFanSend(args) => tcp_fan_send(&args)?,
        Peer::TcpFanRecv(args) => tcp_fan_recv(&args)?,
        Peer::FlokiRecv(args) if args.client == Client::Blocking => floki_recv_blocking(&args)?,
        Peer::FlokiSend(args) if args.client == Client::Blocking => floki_send_blocking(&args)?,
        Peer::FlokiPong(args) if args.client == Client::Blocking => floki_pong_blocking(&args)?,
        Peer::FlokiPing(args) if args.client == Client::Blocking => floki_ping_blocking(&args)?,
        Peer::FlokiRecv(args) => runtime()?.block_on(floki_recv(&args))?,
        Peer::FlokiSend(args) => runtime()?.block_on(floki_send(&args))?,
        Peer::FlokiPong(args) => runtime()?.block_on(floki_pong(&args))?,
        Peer::FlokiPing(args) => runtime()?.block_on(floki_ping(&args))?,
    };
    println!("{}", serde_json::to_string(&measured)?);
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

fn tcp_sink(args: &Stream) -> anyhow::Result<Measured> {
    let listener =
        TcpListener::bind(&args.addr).with_context(|| format!("binding {}", args.addr))?;
    let (mut stream, _) = listener.accept()?;
    let mut buf = vec![0u8; args.chunk];
    let mut got = 0u64;
    let mut started = None;
    while got < args.bytes {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("tcp source closed after {got} of {} bytes", args.bytes);
        }
        started.get_or_insert_with(Instant::now);
        got += n as u64;
    }
    Ok(Measured {
        bytes: got,
        seconds: started.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        ..Measured::default()
    })
}

fn tcp_source(args: &Stream) -> anyhow::Result<Measured> {
    let mut stream = connect_retrying(&args.addr)?;
    let buf = floki_tests::pattern(args.chunk, 7);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.bytes {
        let n = (args.bytes - sent).min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let _ = stream.read(&mut [0u8; 1]);
    Ok(Measured {
        bytes: sent,
        seconds: started.elapsed().as_secs_f64(),
        ..Measured::default()
    })
}

fn connect_retrying(addr: &str) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => return Err(err).with_context(|| format!("connecting to {addr}")),
        }
    }
}

async fn floki_recv(args: &Stream) -> anyhow::Result<Measured> {
    let mut rx = Receiver::connect(&recv_options(args)).await?;
    let mut buf = vec![0u8; args.chunk];
    let mut started = None;
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        started.get_or_insert_with(Instant::now);
    }
    let seconds = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let summary = rx.finish().await?;
    if summary.bytes != args.bytes {
        bail!("received {} bytes, expected {}", summary.bytes, args.bytes);
    }
    Ok(Measured {
        bytes: summary.bytes,
        seconds,
        transport: Some(summary.transport.to_string()),
        ..Measured::default()
    })
}

async fn floki_send(args: &Stream) -> anyhow::Result<Measured> {
    let mut tx = Sender::connect(&ChannelOptions::new(&args.addr, &args.channel)).await?;
    let buf = floki_tests::pattern(args.chunk, 7);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.bytes {
        let n = (args.bytes - sent).min(buf.len() as u64) as usize;
        tx.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    let summary = tx.finish().await?;
    Ok(Measured {
        bytes: summary.bytes,
        seconds: started.elapsed().as_secs_f64(),
        transport: Some(summary.transport.to_string()),
        ..Measured::default()
    })
}

fn tcp_pong(args: &PingPong) -> anyhow::Result<Measured> {
    let listener =
        TcpListener::bind(&args.addr).with_context(|| format!("binding {}", args.addr))?;
    let (mut stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; args.size];
    for _ in 0..args.count {
        stream.read_exact(&mut buf)?;
        stream.write_all(&buf)?;
    }
    Ok(Measured::default())
}

fn tcp_ping(args: &PingPong) -> anyhow::Result<Measured> {
    let mut stream = connect_retrying(&args.addr)?;
    let mut buf = floki_tests::pattern(args.size, 3);
    let mut rtt = Vec::with_capacity(args.count);
    for _ in 0..args.count {
        let t = Instant::now();
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtt.sort_by(f64::total_cmp);
    Ok(Measured {
        rtt_us: rtt,
        ..Measured::default()
    })
}

async fn floki_pong(args: &PingPong) -> anyhow::Result<Measured> {
    let opts = |suffix: &str| ChannelOptions::new(&args.addr, format!("{}.{suffix}", args.channel));
    let mut rx = Receiver::connect(&opts("ping")).await?;
    let mut tx = Sender::connect(&opts("pong")).await?;
    let mut buf = vec![0u8; args.size];
    for _ in 0..args.count {
        rx.read_exact(&mut buf).await?;
        tx.write_all(&buf).await?;
        tx.flush().await?;
    }
    // The pinger finishes its channel first: read it to its end mark, then
    // finish ours (finishing first would wait on a pinger that waits on us).
    let mut rest = Vec::new();
    rx.read_to_end(&mut rest).await?;
    tx.finish().await?;
    Ok(Measured::default())
}

async fn floki_ping(args: &PingPong) -> anyhow::Result<Measured> {
    let opts = |suffix: &str| ChannelOptions::new(&args.addr, format!("{}.{suffix}", args.channel));
    let mut tx = Sender::connect(&opts("ping")).await?;
    let mut rx = Receiver::connect(&opts("pong")).await?;
    let mut buf = floki_tests::pattern(args.size, 3);
    let mut rtt = Vec::with_capacity(args.count);
    for _ in 0..args.count {
        let t = Instant::now();
        tx.write_all(&buf).await?;
        tx.flush().await?;
        rx.read_exact(&mut buf).await?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let transport = tx.transport().map(|t| t.to_string()).unwrap_or_default();
    tx.finish().await?;
    let mut sink = Vec::new();
    rx.read_to_end(&mut sink).await?;
    rx.finish().await?;
    rtt.sort_by(f64::total_cmp);
    Ok(Measured {
        rtt_us: rtt,
        transport: Some(transport),
        ..Measured::default()
    })
}

fn recv_options(args: &Stream) -> ChannelOptions {
    let mut opts = ChannelOptions::new(&args.addr, &args.channel);
    opts.window = args.window;
    opts
}

/// Reads as a consumer that processes bytes where they are would: over shm
/// in place in the ring (`BufRead`), over a socket into its own buffer.
fn floki_recv_blocking(args: &Stream) -> anyhow::Result<Measured> {
    use std::io::BufRead as _;
    let mut rx = blocking::Receiver::connect(&recv_options(args))?;
    let in_place = rx.transport() == floki_client::Transport::Shm;
    let mut buf = vec![0u8; args.chunk];
    let mut started = None;
    loop {
        let n = if in_place {
            let n = rx.fill_buf()?.len().min(args.chunk);
            rx.consume(n);
            n
        } else {
            rx.read(&mut buf)?
        };
        if n == 0 {
            break;
        }
        started.get_or_insert_with(Instant::now);
    }
    let seconds = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let summary = rx.finish()?;
    if summary.bytes != args.bytes {
        bail!("received {} bytes, expected {}", summary.bytes, args.bytes);
    }
    Ok(Measured {
        bytes: summary.bytes,
        seconds,
        transport: Some(summary.transport.to_string()),
        ..Measured::default()
    })
}

fn floki_send_blocking(args: &Stream) -> anyhow::Result<Measured> {
    let mut tx = blocking::Sender::connect(&ChannelOptions::new(&args.addr, &args.channel))?;
    let buf = floki_tests::pattern(args.chunk, 7);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.bytes {
        let n = (args.bytes - sent).min(buf.len() as u64) as usize;
        tx.write_all(&buf[..n])?;
        sent += n as u64;
    }
    let summary = tx.finish()?;
    Ok(Measured {
        bytes: summary.bytes,
        seconds: started.elapsed().as_secs_f64(),
        transport: Some(summary.transport.to_string()),
        ..Measured::default()
    })
}

fn floki_pong_blocking(args: &PingPong) -> anyhow::Result<Measured> {
    let opts = |suffix: &str| ChannelOptions::new(&args.addr, format!("{}.{suffix}", args.channel));
    let mut rx = blocking::Receiver::connect(&opts("ping"))?;
    let mut tx = blocking::Sender::connect(&opts("pong"))?;
    let mut buf = vec![0u8; args.size];
    for _ in 0..args.count {
        rx.read_exact(&mut buf)?;
        tx.write_all(&buf)?;
        tx.flush()?;
    }
    // As in the async pong: drain the pinger's channel before finishing ours.
    std::io::copy(&mut rx, &mut std::io::sink())?;
    tx.finish()?;
    rx.finish()?;
    Ok(Measured::default())
}

fn floki_ping_blocking(args: &PingPong) -> anyhow::Result<Measured> {
    let opts = |suffix: &str| ChannelOptions::new(&args.addr, format!("{}.{suffix}", args.channel));
    let mut tx = blocking::Sender::connect(&opts("ping"))?;
    let mut rx = blocking::Receiver::connect(&opts("pong"))?;
    let mut buf = floki_tests::pattern(args.size, 3);
    let mut rtt = Vec::with_capacity(args.count);
    for _ in 0..args.count {
        let t = Instant::now();
        tx.write_all(&buf)?;
        tx.flush()?;
        rx.read_exact(&mut buf)?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let transport = tx.transport().map(|t| t.to_string()).unwrap_or_default();
    tx.finish()?;
    std::io::copy(&mut rx, &mut std::io::sink())?;
    rx.finish()?;
    rtt.sort_by(f64::total_cmp);
    Ok(Measured {
        rtt_us: rtt,
        transport: Some(transport),
        ..Measured::default()
    })
}

fn edge_options(args: &EdgePeer) -> floki_client::workflow::EdgeOptions {
    floki_client::workflow::EdgeOptions::new(
        &args.addr,
        &args.workflow,
        &args.token,
        &args.edge,
        &args.function,
    )
}

/// Every stream of a producer gets `bytes`, a chunk to each in turn (a
/// broadcast writes the same data; the benchmark only measures).
fn edge_send(args: &EdgePeer) -> anyhow::Result<Measured> {
    let (_, mut senders) = floki_client::workflow::blocking::senders(&edge_options(args))?;
    let buf = floki_tests::pattern(args.chunk, 7);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.bytes {
        let n = (args.bytes - sent).min(buf.len() as u64) as usize;
        for (_, tx) in &mut senders {
            tx.write_all(&buf[..n])?;
        }
        sent += n as u64;
    }
    let mut total = 0;
    for (_, tx) in senders {
        total += tx.finish()?.bytes;
    }
    Ok(Measured {
        bytes: total,
        seconds: started.elapsed().as_secs_f64(),
        ..Measured::default()
    })
}

/// All of a consumer's streams at once; measures from the first byte of any
/// to the last byte of all.
fn edge_recv(args: &EdgePeer) -> anyhow::Result<Measured> {
    let (_, receivers) = floki_client::workflow::blocking::receivers(&edge_options(args))?;
    read_all(
        receivers
            .into_iter()
            .map(|(_, rx)| Box::new(FinishOnEof(Some(rx))) as Box<dyn Read + Send>)
            .collect(),
        args.chunk,
    )
}

/// Reads a Floki receiver to its end, then finishes it (reports to the agent).
struct FinishOnEof(Option<blocking::Receiver>);

impl Read for FinishOnEof {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(rx) = &mut self.0 else { return Ok(0) };
        let n = rx.read(buf)?;
        if n == 0 {
            self.0
                .take()
                .expect("present")
                .finish()
                .map_err(std::io::Error::other)?;
        }
        Ok(n)
    }
}

/// Reads every source to its end in parallel; first byte to last.
fn read_all(sources: Vec<Box<dyn Read + Send>>, chunk: usize) -> anyhow::Result<Measured> {
    let first = std::sync::OnceLock::new();
    let results: Vec<std::io::Result<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .into_iter()
            .map(|mut source| {
                let first = &first;
                scope.spawn(move || {
                    let mut buf = vec![0u8; chunk];
                    let mut got = 0u64;
                    loop {
                        let n = source.read(&mut buf)?;
                        if n == 0 {
                            return Ok(got);
                        }
                        first.get_or_init(Instant::now);
                        got += n as u64;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .collect()
    });
    let mut bytes = 0;
    for result in results {
        bytes += result?;
    }
    Ok(Measured {
        bytes,
        seconds: first.get().map_or(0.0, |t| t.elapsed().as_secs_f64()),
        ..Measured::default()
    })
}

fn tcp_fan_send(args: &TcpFan) -> anyhow::Result<Measured> {
    let mut streams: Vec<TcpStream> = args
        .addr
        .iter()
        .map(|a| connect_retrying(a))
        .collect::<anyhow::Result<_>>()?;
    let buf = floki_tests::pattern(args.chunk, 7);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.bytes {
        let n = (args.bytes - sent).min(buf.len() as u64) as usize;
        for stream in &mut streams {
            stream.write_all(&buf[..n])?;
        }
        sent += n as u64;
    }
    for stream in &mut streams {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    Ok(Measured {
        bytes: sent * streams.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        ..Measured::default()
    })
}

fn tcp_fan_recv(args: &TcpFan) -> anyhow::Result<Measured> {
    let listener =
        TcpListener::bind(&args.addr[0]).with_context(|| format!("binding {}", args.addr[0]))?;
    let sources = (0..args.from)
        .map(|_| {
            listener
                .accept()
                .map(|(s, _)| Box::new(s) as Box<dyn Read + Send>)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    read_all(sources, args.chunk)
}
