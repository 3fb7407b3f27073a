//! The ceiling of a brokered set-up on this machine, measured in the same
//! run as Floki's: a producer hands a 64-byte message to a broker, which
//! hands it on to a consumer already waiting, over connections opened
//! beforehand. No protocol, no pairing, no data path: the wake-ups of three
//! processes and two socket writes. Any set-up that goes through an agent
//! takes at least this (Floki's adds the agent's answer to the producer and
//! the producer's first write).
//!
//! Lines on stdin and stdout, `k` numbering the hand-offs:
//! * broker: `listening ADDR` (where the consumer connects);
//! * driver to producer: `go k`; producer: `sent k T` (just before its
//!   write);
//! * consumer: `got k T` (just after its read).

use std::{
    io::{BufRead as _, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Args;

use super::peers::now_ns;
use crate::bench::function::Function;

/// One hand-off's message.
const MESSAGE: usize = 64;

/// What the three processes are told.
#[derive(Clone, Debug, Args)]
pub struct HandoffPeer {
    /// Broker: the Unix socket its producer connects to. Producer: the
    /// broker's Unix socket.
    #[arg(long)]
    pub producers: PathBuf,
    /// Broker: where its consumer connects (`unix:PATH`, or `IP:PORT` for
    /// TCP, port 0 for any). Consumer: the address the broker printed.
    #[arg(long)]
    pub consumers: Option<String>,
}

/// A connected stream, Unix or TCP.
trait Connection: Read + Write + Send {}
impl<T: Read + Write + Send> Connection for T {}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush().context("writing to the driver")
}

fn connect(addr: &str) -> anyhow::Result<Box<dyn Connection>> {
    Ok(match addr.strip_prefix("unix:") {
        Some(path) => Box::new(
            UnixStream::connect(path)
                .with_context(|| format!("connecting to the broker at {path}"))?,
        ),
        None => {
            let stream = TcpStream::connect(addr)
                .with_context(|| format!("connecting to the broker at {addr}"))?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
    })
}

/// Accepts one connection on `addr` (`unix:PATH` or `IP:PORT`), printing
/// where it listens first.
fn accept_one(addr: &str) -> anyhow::Result<Box<dyn Connection>> {
    if let Some(path) = addr.strip_prefix("unix:") {
        let listener = UnixListener::bind(path).with_context(|| format!("listening on {path}"))?;
        say(&format!("listening unix:{path}"))?;
        return Ok(Box::new(listener.accept()?.0));
    }
    let bind: SocketAddr = addr
        .parse()
        .with_context(|| format!("--consumers {addr}: unix:PATH or IP:PORT"))?;
    let listener = TcpListener::bind(bind).with_context(|| format!("listening on {bind}"))?;
    say(&format!("listening {}", listener.local_addr()?))?;
    let (stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    Ok(Box::new(stream))
}

pub fn broker(args: &HandoffPeer) -> anyhow::Result<()> {
    let producers = UnixListener::bind(&args.producers)
        .with_context(|| format!("listening on {}", args.producers.display()))?;
    let consumers = args.consumers.as_deref().context("--consumers ADDR")?;
    let mut consumer = accept_one(consumers)?;
    let (mut producer, _) = producers.accept()?;
    let mut message = [0u8; MESSAGE];
    loop {
        match producer.read_exact(&mut message) {
            Ok(()) => consumer.write_all(&message)?,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err).context("reading the producer"),
        }
    }
}

pub fn consumer(args: &HandoffPeer) -> anyhow::Result<()> {
    let mut broker = connect(args.consumers.as_deref().context("--consumers ADDR")?)?;
    say("ready")?;
    let mut message = [0u8; MESSAGE];
    for k in 0.. {
        match broker.read_exact(&mut message) {
            Ok(()) => say(&format!("got {k} {}", now_ns()))?,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err).context("reading the broker"),
        }
    }
    Ok(())
}

pub fn producer(args: &HandoffPeer) -> anyhow::Result<()> {
    let mut broker = UnixStream::connect(&args.producers)
        .with_context(|| format!("connecting to {}", args.producers.display()))?;
    say("ready")?;
    for (k, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line != format!("go {k}") {
            bail!("expected `go {k}` from the driver, got `{line}`");
        }
        let sent = now_ns();
        broker.write_all(&[k as u8; MESSAGE])?;
        say(&format!("sent {k} {sent}"))?;
    }
    Ok(())
}

/// The three processes of the ceiling, started and connected, driven one
/// hand-off at a time.
pub struct Handoff {
    broker: Function,
    producer: Function,
    consumer: Function,
    /// The broker's Unix socket, removed when done.
    producers: PathBuf,
    next: usize,
}

impl Handoff {
    /// Starts the broker, then its consumer (connecting to `consumers`:
    /// `unix:PATH`, or `IP:0` for TCP), then its producer; `command` makes
    /// each one's command from its verb and arguments.
    pub fn start(
        label: &str,
        consumers: &str,
        command: impl Fn(&str, Vec<String>) -> Command,
    ) -> anyhow::Result<Self> {
        let producers =
            std::env::temp_dir().join(format!("floki-handoff-{}-{label}.sock", std::process::id()));
        let _ = std::fs::remove_file(&producers);
        if let Some(path) = consumers.strip_prefix("unix:") {
            let _ = std::fs::remove_file(path);
        }
        let at = |extra: &[&str]| {
            let mut args = vec!["--producers".to_owned(), producers.display().to_string()];
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args
        };
        let mut broker =
            Function::spawn(command("handoff-broker", at(&["--consumers", consumers])))?;
        let line = broker.line()?;
        let addr = line
            .strip_prefix("listening ")
            .with_context(|| format!("the broker said `{line}`"))?
            .to_owned();
        let mut consumer = Function::spawn(command("handoff-recv", at(&["--consumers", &addr])))?;
        anyhow::ensure!(consumer.line()? == "ready", "the hand-off's consumer");
        let mut producer = Function::spawn(command("handoff-send", at(&[])))?;
        anyhow::ensure!(producer.line()? == "ready", "the hand-off's producer");
        Ok(Self {
            broker,
            producer,
            consumer,
            producers,
            next: 0,
        })
    }

    /// One hand-off: the producer's write to the consumer's read, in µs.
    pub fn hop(&mut self) -> anyhow::Result<f64> {
        let k = self.next;
        self.next += 1;
        self.producer.tell(&format!("go {k}"))?;
        let sent = self.producer.expect("sent", k)?[0];
        let got = self.consumer.expect("got", k)?[0];
        Ok(got.saturating_sub(sent) as f64 / 1e3)
    }

    /// Stops the three: the producer's end closes the broker's, which
    /// closes the consumer's.
    pub fn stop(self) -> anyhow::Result<()> {
        self.producer.wait()?;
        self.broker.wait()?;
        self.consumer.wait()?;
        let _ = std::fs::remove_file(&self.producers);
        Ok(())
    }
}
