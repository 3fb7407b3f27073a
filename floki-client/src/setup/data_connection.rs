//! The data connection between a sender and its receiver, before the
//! stream: the receiver's first credit, the sender's pairing key, and the
//! receiver's check of it.

use std::{net::SocketAddr, os::fd::AsRawFd as _, time::Duration};

use floki_proto::{
    KEY_LEN,
    control::Role,
    frame::{FrameHeader, FrameKind, HEADER_LEN, HELLO_EAGER, control_frame},
    stream::{Inbound, StreamError},
};
use nix::sys::socket::{MsgFlags, recv};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
    time::{Instant, timeout, timeout_at},
};
use tracing::warn;

use crate::{ChannelOptions, ClientError};

/// How long a connection to the data listener may take to present its key.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the receiver's first frame: its initial credit.
pub(super) async fn initial_credit(stream: &mut TcpStream) -> Result<u64, StreamError> {
    let context = "waiting for the receiver's first credit";
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|err| StreamError::io(context, 0, &err))?;
    let header =
        FrameHeader::decode(header).map_err(|err| StreamError::Protocol(err.to_string()))?;
    let mut payload = vec![0u8; header.len as usize];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|err| StreamError::io(context, 0, &err))?;
    match header.kind {
        FrameKind::Credit => Ok(u64::from_be_bytes(payload.try_into().expect("8 bytes"))),
        FrameKind::Reject => Err(StreamError::Rejected {
            reason: String::from_utf8_lossy(&payload).into_owned(),
        }),
        other => Err(StreamError::Protocol(format!(
            "expected the receiver's credit, got a {other:?} frame"
        ))),
    }
}

/// Connections to the data listener checked at once; more wait in the
/// listener's queue.
const CHECKED_AT_ONCE: usize = 64;

/// Accepts the paired sender's data connection: the first connection that
/// presents the pairing key. Every connection is checked at the same time
/// as the others, so connections that stay silent (or are slow to present a
/// key) do not delay the sender; those that present a wrong key are
/// rejected and closed.
pub(super) async fn accept_sender(
    listener: &TcpListener,
    key: &[u8; KEY_LEN],
    window: u64,
    opts: &ChannelOptions,
) -> Result<TcpStream, ClientError> {
    let deadline = Instant::now() + opts.connect_timeout;
    let mut checks = JoinSet::new();
    let (found, sender_found) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = timeout_at(deadline, listener.accept()), if checks.len() < CHECKED_AT_ONCE => {
                let (stream, from) = accepted
                    .map_err(|_| ClientError::SenderTimeout {
                        channel: opts.channel.clone(),
                        timeout: opts.connect_timeout,
                    })?
                    .map_err(|source| ClientError::Io {
                        channel: opts.channel.clone(),
                        context: "accepting the sender's data connection",
                        source,
                    })?;
                checks.spawn(check_sender(
                    stream,
                    from,
                    *key,
                    window,
                    opts.clone(),
                    sender_found.clone(),
                ));
            }
            Some(checked) = checks.join_next() => {
                if let Ok(Some(stream)) = checked {
                    // Connections still being checked are turned away with
                    // a reason, not just dropped.
                    let _ = found.send(true);
                    let _ = timeout(TURN_AWAY_WITHIN, async {
                        while checks.join_next().await.is_some() {}
                    })
                    .await;
                    return Ok(stream);
                }
            }
            () = tokio::time::sleep_until(deadline), if checks.len() >= CHECKED_AT_ONCE => {
                return Err(ClientError::SenderTimeout {
                    channel: opts.channel.clone(),
                    timeout: opts.connect_timeout,
                });
            }
        }
    }
}

/// How long the connections still being checked when the sender is found
/// get to be told they are turned away.
const TURN_AWAY_WITHIN: Duration = Duration::from_millis(100);

/// One connection to the receiver's data listener: the stream if it
/// presents `key`, else rejected (also once `sender_found`: another
/// connection presented the key first).
async fn check_sender(
    mut stream: TcpStream,
    from: SocketAddr,
    key: [u8; KEY_LEN],
    window: u64,
    opts: ChannelOptions,
    mut sender_found: watch::Receiver<bool>,
) -> Option<TcpStream> {
    stream.set_nodelay(true).ok();
    let hello = match take_eager_hello(&stream) {
        // Its sender took the window as this end's first credit, and the
        // kernel program holds it to the window from its first byte: the
        // credit is not owed (docs/PROTOCOL.md, section 2).
        Some(key) => Some(Ok(Ok(key))),
        None => {
            // Speak first: accept() returning means this socket is in the
            // socket map already, and the sender's was inserted when its
            // connect completed, so from here on every byte either way is
            // spliced.
            stream
                .write_all(&Inbound::initial_credit(window))
                .await
                .ok()?;
            tokio::select! {
                hello = timeout(HELLO_TIMEOUT, read_hello(&mut stream)) => Some(hello),
                // Only a sender found: not the receiver giving up (then
                // this check is dropped with it).
                Ok(_) = sender_found.wait_for(|found| *found) => None,
            }
        }
    };
    let reason = match hello {
        Some(Ok(Ok(presented))) if presented == key => return Some(stream),
        Some(Ok(Ok(_))) => "wrong pairing key".to_owned(),
        Some(Ok(Err(reason))) => reason,
        Some(Err(_)) => "no pairing key within 10 s".to_owned(),
        None => {
            warn!(channel = %opts.channel, %from, "turned away a data connection: the sender is connected");
            send_reject(
                stream,
                "another connection presented the pairing key first",
                Duration::ZERO,
            )
            .await;
            return None;
        }
    };
    warn!(channel = %opts.channel, %from, reason, "rejected a data connection");
    send_reject(stream, &reason, REJECT_LINGER).await;
    None
}

/// Opens a data connection the agent handed over (the link from the
/// producer's node): speaks first, then checks the key. There is no other
/// connection to wait for: a wrong key fails the channel.
pub(super) async fn verify_sender(
    mut stream: TcpStream,
    key: &[u8; KEY_LEN],
    window: u64,
    opts: &ChannelOptions,
) -> Result<TcpStream, ClientError> {
    let failed = |reason: String| ClientError::Stream {
        channel: opts.channel.clone(),
        source: StreamError::Rejected { reason },
    };
    // The agent set TCP_NODELAY on the connection it hands over.
    stream
        .write_all(&Inbound::initial_credit(window))
        .await
        .map_err(|source| ClientError::Io {
            channel: opts.channel.clone(),
            context: "sending the first credit on the handed-over connection",
            source,
        })?;
    // The producer may come much later: wait as long as for a pairing.
    let presented = within_pair_timeout(opts, Role::Send, read_hello(&mut stream))
        .await?
        .map_err(failed)?;
    if presented != *key {
        send_reject(stream, "wrong pairing key", REJECT_LINGER).await;
        return Err(failed("the sender presented a wrong pairing key".into()));
    }
    Ok(stream)
}

/// `work`, bounded by `opts.pair_timeout` if set: past it, the end fails
/// as not paired with its `peer`.
pub(super) async fn within_pair_timeout<T>(
    opts: &ChannelOptions,
    peer: Role,
    work: impl std::future::Future<Output = T>,
) -> Result<T, ClientError> {
    match opts.pair_timeout {
        Some(limit) => timeout(limit, work)
            .await
            .map_err(|_| ClientError::PairTimeout {
                channel: opts.channel.clone(),
                peer,
                timeout: limit,
            }),
        None => Ok(work.await),
    }
}

/// How a receiver's wait on the link it held ended.
pub(crate) enum HeldStart {
    /// The producer started the stream on it; its start was read.
    Started,
    /// The agent said the stream started on another link, or the link
    /// closed before any start (the producer's agent went).
    Elsewhere,
    /// The agent closed the connection (it is going): the link is its to
    /// watch again, not this end's to read.
    AgentGone,
}

/// Waits on a link this receiver held for its stream's start (within the
/// pair timeout, if any), and reads it: the producer's start byte (and its
/// run), which the consumer's agent reads when it watches the link. The
/// agent may say meanwhile that the stream started on another link (a new
/// producer process), or go: then the link is not read (docs/PROTOCOL.md,
/// "Held links").
pub(super) async fn held_start(
    link: &mut TcpStream,
    control: &mut floki_proto::control::ControlStream,
    opts: &ChannelOptions,
) -> Result<HeldStart, ClientError> {
    // Whichever speaks first: the start on the link, or the agent.
    let waiting = async {
        tokio::select! {
            biased;
            () = crate::speaks::link_speaks(link) => false,
            () = crate::speaks::agent_speaks(control) => true,
        }
    };
    if !within_pair_timeout(opts, Role::Send, waiting).await? {
        return Ok(if read_link_start(link, opts).await? {
            HeldStart::Started
        } else {
            HeldStart::Elsewhere
        });
    }
    match floki_proto::control::read_message(control).await {
        Ok(Some(floki_proto::control::AgentMessage::StartedElsewhere)) => Ok(HeldStart::Elsewhere),
        Ok(None) | Err(floki_proto::ProtocolError::Io(_)) => Ok(HeldStart::AgentGone),
        Ok(Some(other)) => Err(ClientError::Protocol {
            channel: opts.channel.clone(),
            source: floki_proto::ProtocolError::BadFrame(format!(
                "unexpected {other:?} while holding the stream's link"
            )),
        }),
        Err(source) => Err(ClientError::Protocol {
            channel: opts.channel.clone(),
            source,
        }),
    }
}

/// Tells the agent that the link it lent this receiver before its start
/// goes back unread (`link_unread`).
pub(super) async fn say_link_unread(
    control: &mut floki_proto::control::ControlStream,
    opts: &ChannelOptions,
) -> Result<(), ClientError> {
    let unread = floki_proto::control::ClientReport::LinkUnread;
    floki_proto::control::write_message(control, &unread)
        .await
        .map_err(|source| ClientError::Protocol {
            channel: opts.channel.clone(),
            source,
        })
}

/// Reads the start of the stream on a link this receiver held: its start
/// byte, and the run behind a [`START_RUN`]; `false` if the link closed
/// before it. A link that starts with anything else, or closes within its
/// start, fails the end.
///
/// [`START_RUN`]: floki_proto::link_start::START_RUN
async fn read_link_start(
    stream: &mut TcpStream,
    opts: &ChannelOptions,
) -> Result<bool, ClientError> {
    use floki_proto::link_start::FirstByte;
    let failed = |reason: String| ClientError::Stream {
        channel: opts.channel.clone(),
        source: StreamError::Protocol(reason),
    };
    let io = |e: std::io::Error| failed(format!("the held link closed before its stream: {e}"));
    let mut first = [0u8; 1];
    if stream.read(&mut first).await.map_err(io)? == 0 {
        return Ok(false);
    }
    match FirstByte::of(first[0]) {
        Some(FirstByte::Live | FirstByte::Plain) => Ok(true),
        Some(FirstByte::RunFollows) => {
            let len = stream.read_u8().await.map_err(io)?;
            let mut run = vec![0u8; usize::from(len)];
            stream.read_exact(&mut run).await.map_err(io)?;
            Ok(true)
        }
        None => Err(failed(format!(
            "the held link's stream began with {:#04x}, not a start byte",
            first[0]
        ))),
    }
}

async fn read_hello(stream: &mut TcpStream) -> Result<[u8; KEY_LEN], String> {
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("no hello frame: {e}"))?;
    match FrameHeader::decode(header) {
        Ok(FrameHeader {
            kind: FrameKind::Hello,
            ..
        }) => {}
        Ok(other) => return Err(format!("expected a hello frame, got {:?}", other.kind)),
        Err(err) => return Err(err.to_string()),
    }
    let mut key = [0u8; KEY_LEN];
    stream
        .read_exact(&mut key)
        .await
        .map_err(|e| format!("truncated hello frame: {e}"))?;
    Ok(key)
}

/// The key of an eager hello already in `stream`'s receive queue, taken out
/// of it without waiting; `None` if there is none (yet), or another frame
/// comes first. A receiver finds its sender's there; a sender, its own
/// that the kernel program returned. A hello is queued whole, in one
/// message, so it is there whole or not at all.
pub(super) fn take_eager_hello(stream: &TcpStream) -> Option<[u8; KEY_LEN]> {
    let mut hello = [0u8; HEADER_LEN + KEY_LEN];
    let peek = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    let fd = stream.as_raw_fd();
    if recv(fd, &mut hello, peek).ok()? != hello.len() || hello[1] & HELLO_EAGER == 0 {
        return None;
    }
    let header = FrameHeader::decode(hello[..HEADER_LEN].try_into().expect("8 bytes")).ok()?;
    if header.kind != FrameKind::Hello {
        return None;
    }
    // Peeked whole, so read whole.
    if recv(fd, &mut hello, MsgFlags::MSG_DONTWAIT).ok()? != hello.len() {
        return None;
    }
    Some(hello[HEADER_LEN..].try_into().expect("16 bytes"))
}

/// How long a rejected connection is drained before it is closed.
const REJECT_LINGER: Duration = Duration::from_secs(1);

/// Tells the peer why it is rejected, then closes the connection: the
/// write side first (the reason, then the end of the stream), then what the
/// peer still sends is read and dropped for up to `linger`, so that the
/// connection is not reset with the peer's bytes unread.
async fn send_reject(mut stream: TcpStream, reason: &str, linger: Duration) {
    let _ = stream
        .write_all(&control_frame(FrameKind::Reject, reason.as_bytes()))
        .await;
    let _ = stream.shutdown().await;
    let _ = timeout(linger, tokio::io::copy(&mut stream, &mut tokio::io::sink())).await;
}
