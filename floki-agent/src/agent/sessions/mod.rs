//! Sessions: the protocol adapters between a connection and the channel
//! core. A connection to the agent's channel port or its Unix socket is a
//! client (`FLKI`: handshake, pairing, reports); other agents have a port
//! of their own (`control::peer_rpc`). Bad input gets a refusal with a
//! reason and never disturbs other channels.
//!
//! * [`handshake`]: the preamble, the first message, validation, refusals;
//! * [`client`]: routes a hello to a plain channel, a workflow stream on this
//!   node, or one whose other end is on another node;
//! * [`held`]: a kept connection whose function holds its stream's link
//!   across nodes, between the streams it carries over it;
//! * [`local`] and [`remote`]: an end of each kind, from joining the core to
//!   its last report;
//! * [`stored`]: where sessions meet the store.

mod client;
mod handshake;
mod held;
mod local;
mod remote;
mod stored;

pub use stored::{forward_stored, push_ahead};

use std::{net::SocketAddr, sync::Arc};

use floki_proto::{
    MAGIC, MAX_MESSAGE_LEN, ProtocolError, VERSION,
    control::{ClientReport, ControlStream, Refusal},
};
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpStream, UnixStream},
    sync::OwnedSemaphorePermit,
    time::timeout,
};
use tokio_util::either::Either;
use tracing::debug;

use super::{Agent, channels::Membership, control::peers::protocol::PEER_MAGIC};
use handshake::{HANDSHAKE_TIMEOUT, refuse};

/// Serves one connection to the agent's channel port to its end; `unproven`
/// is released once the client's request is read.
pub async fn serve(
    mut stream: TcpStream,
    from: SocketAddr,
    agent: Arc<Agent>,
    unproven: OwnedSemaphorePermit,
) {
    stream.set_nodelay(true).ok();
    let mut preamble = [0u8; 6];
    let read = timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut preamble)).await;
    let version = u16::from_be_bytes([preamble[4], preamble[5]]);
    let refusal = match read {
        Err(_) => Some((Refusal::BadHandshake, handshake::too_slow())),
        Ok(Err(err)) => Some((
            Refusal::BadHandshake,
            ProtocolError::from_read(err).to_string(),
        )),
        Ok(Ok(_)) if preamble[..4] == PEER_MAGIC => Some((
            Refusal::BadHandshake,
            "this is the functions' port: agents talk to each other on the agents' port (--peer-listen), with the cluster secret".to_owned(),
        )),
        Ok(Ok(_)) if preamble[..4] != MAGIC => {
            let magic: [u8; 4] = preamble[..4].try_into().expect("4 bytes");
            Some((
                Refusal::BadHandshake,
                ProtocolError::BadMagic(magic).to_string(),
            ))
        }
        Ok(Ok(_)) if version != VERSION => Some((
            Refusal::UnsupportedVersion,
            ProtocolError::UnsupportedVersion(version).to_string(),
        )),
        Ok(Ok(_)) => None,
    };
    let mut stream = Either::Left(stream);
    let from = from.to_string();
    match refusal {
        Some((refusal, message)) => refuse(&agent, &mut stream, &from, refusal, message).await,
        None => client::serve(stream, from, agent, unproven).await,
    }
}

/// Serves one connection to the agent's Unix socket: a client on this node
/// (never another agent), which may be handed its data sockets.
pub async fn serve_unix(stream: UnixStream, agent: Arc<Agent>, unproven: OwnedSemaphorePermit) {
    let mut stream = Either::Right(stream);
    let from = "the local socket".to_owned();
    match handshake::preamble(&mut stream).await {
        Ok(()) => client::serve(stream, from, agent, unproven).await,
        Err((refusal, message)) => refuse(&agent, &mut stream, &from, refusal, message).await,
    }
}

/// Whether the client is on the agent's Unix socket (where the agent hands
/// sockets over).
fn is_unix(control: &ControlStream) -> bool {
    matches!(control, Either::Right(_))
}

/// Passes an end's reports to its channel until it hangs up, or until its
/// `done` when the end was told it may send another hello after it
/// (`again`). Returns its connection and reader, and, if the client may go
/// on with another request, whether its stream went across verified (its
/// `done` said `ok`): the caller decides when the end leaves its channel and
/// when the connection closes.
async fn reports(
    mut stream: ControlStream,
    membership: &Membership,
    name: &str,
    mut reader: ReportReader,
    again: bool,
) -> (ControlStream, ReportReader, Option<bool>) {
    loop {
        match reader.next(&mut stream).await {
            Ok(Some(report @ ClientReport::Done { ok, .. })) if again => {
                membership.report(report);
                return (stream, reader, Some(ok));
            }
            Ok(Some(report)) => membership.report(report),
            Ok(None) => break,
            Err(err) => {
                let role = membership.role();
                debug!(channel = %name, %role, %err, "control connection ended with an error");
                break;
            }
        }
    }
    (stream, reader, None)
}

/// Room made for a message whose length is not read yet: a report or a
/// hello fits.
const SMALL_MESSAGE: usize = 256;

/// Reads a client's messages (reports, and on a kept connection its next
/// request), one length-prefixed message at a time, and can be cancelled
/// between any two reads without losing a byte (the waits for a peer race
/// it against pairing).
#[derive(Default)]
pub struct ReportReader {
    buf: Vec<u8>,
}

impl ReportReader {
    /// The next report; `None` when the client hung up.
    pub async fn next(
        &mut self,
        stream: &mut ControlStream,
    ) -> Result<Option<ClientReport>, ProtocolError> {
        self.next_message(stream).await
    }

    /// The next message of any kind; `None` when the client hung up.
    pub async fn next_message<T: serde::de::DeserializeOwned>(
        &mut self,
        stream: &mut ControlStream,
    ) -> Result<Option<T>, ProtocolError> {
        loop {
            let wanted = match self.parse()? {
                Parsed::Message(message) => return Ok(Some(message)),
                Parsed::Wants(wanted) => wanted,
            };
            // Read straight into the buffer, room made for the rest of
            // the message: no chunk on this future, which every connection
            // holds while its channel lives.
            self.buf
                .reserve(wanted.saturating_sub(self.buf.len()).max(4));
            let n = stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::Truncated)
                };
            }
        }
    }

    /// The first whole message in the buffer, or how many bytes the
    /// buffer must hold for it (a small message's worth while its length
    /// is not read yet).
    fn parse<T: serde::de::DeserializeOwned>(&mut self) -> Result<Parsed<T>, ProtocolError> {
        let Some(header) = self.buf.get(..4) else {
            return Ok(Parsed::Wants(SMALL_MESSAGE));
        };
        let header = header.try_into().expect("4 bytes");
        let end = 4 + floki_proto::control::message_len(header, MAX_MESSAGE_LEN)?;
        if self.buf.len() < end {
            return Ok(Parsed::Wants(end));
        }
        let message = serde_json::from_slice(&self.buf[4..end]);
        self.buf.drain(..end);
        Ok(Parsed::Message(message?))
    }
}

/// What [`ReportReader::parse`] found.
enum Parsed<T> {
    Message(T),
    /// Bytes the buffer must hold for the next message.
    Wants(usize),
}

/// A client's connection once its end finished, on which it may send its
/// next request (what it sent after its `done` is in `reader`).
pub struct Kept {
    stream: ControlStream,
    reader: ReportReader,
    /// The ring of the end's channel, if it had one it may keep.
    ring: Option<KeptRingEnd>,
    /// The link of the end's stream across nodes, if it went across
    /// verified (the function may keep it for the stream's next use).
    link: Option<HeldLink>,
}

impl Kept {
    /// A connection before its first channel: nothing read ahead, no ring
    /// or link.
    fn new(stream: ControlStream) -> Self {
        Self {
            stream,
            reader: ReportReader::default(),
            ring: None,
            link: None,
        }
    }
}

/// The ring of a connection's last channel, which its end may keep, and
/// which end of that channel it was.
struct KeptRingEnd {
    file: Arc<crate::agent::transport::RingFile>,
    role: floki_proto::control::Role,
}

/// The agents' link of a cross-node stream that the function on a kept
/// connection may still hold, from the stream's last use.
enum HeldLink {
    /// Producer side: this agent's descriptor of it (out of the reactor);
    /// the stream's next use from this connection starts it again instead
    /// of the spare link, or the producer starts it itself and tells this
    /// agent afterwards (`held`).
    Sent(Box<Holding>),
    /// Consumer side, for a consumer that reads its next start itself
    /// (its hello said `holds_link`): this agent's descriptor of the link,
    /// out of the reactor, so that only the consumer reads it. It goes
    /// back among the prepared links ([`HeldLink::release`]) when the
    /// connection carries another request or closes.
    Lent(Box<Holding>),
    /// Consumer side: which link it is ([`Prepared::id`]); the link itself
    /// waits among the prepared links for its next start, for whichever
    /// consumer of the stream comes.
    ///
    /// [`Prepared::id`]: crate::agent::control::links::Prepared::id
    Received(u64),
}

/// A link a function holds, as this agent keeps it (boxed: every kept
/// connection's task carries a [`HeldLink`]).
struct Holding {
    stream: crate::workflow::StreamId,
    link: crate::agent::control::links::Parked,
    /// The node of the stream's other end.
    peer_node: String,
    /// Consumer side: counts the stream ready while its consumer holds
    /// the link.
    _ready: Option<crate::agent::control::links::ConsumerHold>,
}

/// How many `waiting` reports an end may send while it waits for its peer
/// (a client sends one when its window fills and one when it finishes).
const WAITING_REPORTS: u32 = 16;

/// What an end said while waiting for its peer.
enum WhileWaiting {
    /// `waiting`: its window is full, or it is finishing.
    Waiting {
        /// The whole stream is buffered.
        finishing: bool,
    },
    /// It hung up, broke the protocol, or said what an end waiting for its
    /// peer has no reason to say (anything but a few `waiting`): the
    /// session ends, so that no client keeps the agent reading for nothing.
    Gone,
}

impl ReportReader {
    /// The next report of an end waiting for its peer; `said` counts its
    /// `waiting` reports so far.
    async fn next_while_waiting(
        &mut self,
        stream: &mut ControlStream,
        said: &mut u32,
    ) -> WhileWaiting {
        match self.next(stream).await {
            Ok(Some(ClientReport::Waiting { finishing })) if *said < WAITING_REPORTS => {
                *said += 1;
                WhileWaiting::Waiting { finishing }
            }
            Ok(Some(report)) => {
                debug!(
                    ?report,
                    said = *said,
                    "an end waiting for its peer said too much; closed"
                );
                WhileWaiting::Gone
            }
            Ok(None) | Err(_) => WhileWaiting::Gone,
        }
    }
}

/// Until the client closes a connection on which it waits for its peer (or
/// says more than an end waiting has to).
async fn closed(stream: &mut ControlStream, reader: &mut ReportReader) {
    let mut said = 0;
    while let WhileWaiting::Waiting { .. } = reader.next_while_waiting(stream, &mut said).await {}
}
