//! Floki's client library: what a function links to send or receive a
//! channel's stream, in-process. [`Sender`] and [`Receiver`] are tokio
//! `AsyncWrite` / `AsyncRead`; [`blocking`] has the same for code without an
//! async runtime (`std::io::Write` / `Read` / `BufRead`).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
//! use floki_client::{ChannelOptions, Receiver, Sender};
//!
//! // Producer
//! let mut tx = Sender::connect(&ChannelOptions::new("127.0.0.1:7878", "results")).await?;
//! tx.write_all(b"hello").await?;
//! let summary = tx.finish().await?; // returns once the receiver verified the stream
//!
//! // Consumer (elsewhere)
//! let mut rx = Receiver::connect(&ChannelOptions::new("127.0.0.1:7878", "results")).await?;
//! let mut data = Vec::new();
//! rx.read_to_end(&mut data).await?; // EOF only after the end mark and checksum verified
//! # Ok(()) }
//! ```
//!
//! A stream that ends without the sender's end mark, or whose checksum does
//! not match, is an error at the receiver, never a short success. On the
//! agent's Unix socket both clients take a shared-memory ring when their
//! peer is on the same node and can take one too.
//!
//! The crate builds on stable Rust alone: it carries the wire format
//! (`floki-proto`) and tokio, nothing of the agent.
#![deny(missing_docs)]

pub mod blocking;
mod checksum_beside;
mod control;
mod described;
mod end;
mod error;
mod held_ring;
mod held_watch;
mod idle;
mod receiver;
mod reporter;
mod ring_async;
mod sender;
mod setup;
mod spare_buffers;
mod speaks;
pub mod workflow;

use std::{net::SocketAddr, time::Duration};

pub use error::{ClientError, StreamError, error_chain};
pub use floki_proto::control::{Pattern, Role, StreamRef, Transport};
pub use idle::close_kept_connections;
pub use receiver::Receiver;
pub use sender::Sender;

/// Which writes a sender gathers into one frame, like a `BufWriter` (call
/// `flush` to push them out early): those smaller than `below`, up to `cap`
/// bytes in all.
#[derive(Clone, Copy, Debug)]
struct Gathering {
    below: usize,
    cap: usize,
}

/// Over a ring a write is published in place: only small ones are gathered.
const GATHER_FOR_RING: Gathering = Gathering {
    below: 16 * 1024,
    cap: 64 * 1024,
};
/// Over a socket every frame is a system call, and the kernel's redirect
/// moves 512 KiB writes far faster than 64 KiB ones (5.7 against 3.5 GB/s
/// for a spliced stream of 64 KiB writes, `bench splice`): the copy into
/// the buffer costs less than the calls it saves.
const GATHER_FOR_SOCKET: Gathering = Gathering {
    below: 128 * 1024,
    cap: 512 * 1024,
};
/// Receivers read headers and small payloads through a buffer of this size,
/// so that a small message costs one read; bulk payloads go straight to the
/// caller's buffer.
const STAGING: usize = 8 * 1024;
/// `write_from`'s buffer (both clients), where it needs one.
const COPY_CHUNK: usize = 1 << 20;
/// Most bytes `write_from` reads into a ring at a time: small enough that
/// they are still in cache when they are hashed at the commit.
const RING_REGION: usize = 256 * 1024;

/// Where the agent listens by default.
pub const DEFAULT_AGENT: &str = "127.0.0.1:7878";
/// The agent's Unix socket by default. Reach it as `unix:/run/floki/floki.sock`:
/// there the agent hands a client its data socket (or a shared-memory ring),
/// and across nodes the agents' link itself, so no byte of the stream passes
/// through an agent.
pub const DEFAULT_SOCKET: &str = "/run/floki/floki.sock";

/// How to open a channel.
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    /// The agent: `host:port`, or `unix:PATH` for its Unix socket.
    pub agent: String,
    /// Channel name.
    pub channel: String,
    /// Receivers: flow-control window in bytes (the agent's default if `None`).
    pub window: Option<u64>,
    /// Receivers: address to bind the data listener to and advertise to the
    /// sender. Default: the address this client reaches the agent from, port 0.
    pub data_addr: Option<SocketAddr>,
    /// Give up if the other end has not joined within this time (default: wait).
    pub pair_timeout: Option<Duration>,
    /// Receivers: how long to wait for the paired sender's data connection.
    pub connect_timeout: Duration,
    /// A workflow stream (set by [`workflow`]'s helpers).
    pub stream: Option<StreamRef>,
    /// Insist on a transport (experiments): the agent refuses the channel
    /// if it cannot provide it. Default: the agent picks.
    pub transport: Option<Transport>,
    /// Offer to take a shared-memory ring (on the agent's Unix socket, with
    /// a peer on the same node that takes one too). Default: yes.
    pub ring: bool,
    /// Senders: wait for the receiver rather than let the agent store the
    /// stream when the receiver is not there. Default: no (the agent
    /// stores it, and `finish` says so).
    pub live: bool,
    /// This end is an agent's own store. Only an agent sets it (for its own
    /// ends, on its own Unix socket); any other client is refused.
    pub store: bool,
    /// Plain channels: a secret both ends present; the agent pairs this end
    /// only with one that presented the same (docs/SECURITY.md).
    pub secret: Option<String>,
    /// The run this function belongs to (an orchestrator's execution id).
    /// A consumer is then served only a stored stream of its own run, and
    /// its producer's stored stream keeps it (docs/WORKFLOWS.md, "Runs").
    pub run: Option<String>,
}

impl ChannelOptions {
    /// Options for `channel` through the agent at `agent`.
    pub fn new(agent: impl Into<String>, channel: impl Into<String>) -> Self {
        Self {
            agent: agent.into(),
            channel: channel.into(),
            window: None,
            data_addr: None,
            pair_timeout: None,
            connect_timeout: Duration::from_secs(30),
            stream: None,
            transport: None,
            ring: true,
            live: false,
            store: false,
            secret: None,
            run: None,
        }
    }

    /// Insists on `transport` (experiments).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Sets the flow-control window (receivers).
    pub fn window(mut self, bytes: u64) -> Self {
        self.window = Some(bytes);
        self
    }

    /// Sets the data listener address (receivers).
    pub fn data_addr(mut self, addr: SocketAddr) -> Self {
        self.data_addr = Some(addr);
        self
    }

    /// Sets how long to wait for the other end.
    pub fn pair_timeout(mut self, timeout: Duration) -> Self {
        self.pair_timeout = Some(timeout);
        self
    }

    /// Waits for the receiver however long instead of letting the agent
    /// store the stream (senders).
    pub fn live(mut self) -> Self {
        self.live = true;
        self
    }

    /// Belongs to run `run` (see the field of the same name).
    pub fn run(mut self, run: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self
    }

    /// Pairs only with an end that presents the same secret (plain
    /// channels).
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }
}

/// What a completed stream moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Agent-wide channel id.
    pub channel_id: u32,
    /// How the bytes travelled.
    pub transport: Transport,
    /// Stream bytes (payload, without framing).
    pub bytes: u64,
    /// xxh3-64 of the stream, verified by the receiver.
    pub checksum: u64,
    /// The other end was an agent's store: the sender's stream is stored for
    /// its receiver, which has not read it yet; the receiver read a stored
    /// stream.
    pub stored: bool,
}
