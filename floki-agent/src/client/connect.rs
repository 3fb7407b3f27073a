//! Setting a channel end up, for both clients: pairing through the agent,
//! then the data connection between the two ends and the key check.

use std::{io, net::SocketAddr, os::fd::OwnedFd, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    time::{Instant, timeout, timeout_at},
};
use tracing::warn;

use super::{ChannelOptions, ClientError, StreamError, broker, end::EndState, reporter::Reporter};
use crate::protocol::{
    KEY_LEN, ProtocolError,
    control::Role,
    frame::{FrameHeader, FrameKind, HEADER_LEN, control_frame},
    stream::Inbound,
};

/// How long a connection to the data listener may take to present its key.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A paired channel end with its data connection open.
pub(crate) struct Established {
    pub end: EndState,
    pub data: DataPath,
    /// Sender: the receiver's initial credit. Receiver: its window.
    pub credit: u64,
}

/// Where an established end's bytes go.
pub(crate) enum DataPath {
    /// A TCP connection to the other end (spliced or not).
    Socket(TcpStream),
    /// A shared-memory ring (its memory file) and this end's socket to the
    /// other end beside it.
    Ring(OwnedFd, OwnedFd),
}

impl DataPath {
    /// The TCP connection, for clients that cannot take a ring (the agent
    /// only gives rings to clients that announced they can).
    pub fn socket(self, channel: &str) -> Result<TcpStream, ClientError> {
        match self {
            Self::Socket(stream) => Ok(stream),
            Self::Ring(..) => Err(ClientError::Protocol {
                channel: channel.to_owned(),
                source: ProtocolError::BadFrame(
                    "the agent handed a shared-memory ring to a client that cannot use one".into(),
                ),
            }),
        }
    }
}

/// Says hello as the sender of `opts.channel`; the agent's acceptance says
/// how much may be buffered until the stream is established.
pub(crate) async fn sender_hello(opts: &ChannelOptions) -> Result<broker::Accepted, ClientError> {
    let control = broker::connect(opts).await?;
    broker::hello(control, opts, Role::Send, None).await
}

/// Establishes an accepted sender's stream: pairing, the receiver's first
/// credit (waited for within the pair timeout: across nodes the receiver may
/// come later), then the pairing key.
pub(crate) async fn sender(
    accepted: broker::Accepted,
    opts: &ChannelOptions,
) -> Result<Established, ClientError> {
    let (mut pairing, _) = broker::paired(accepted, opts, Role::Send).await?;
    let channel = opts.channel.clone();
    if let Some((memory, peer)) = pairing.ring.take() {
        // The agent made the ring for these two ends: no key to check.
        let reporter = Reporter::spawn(pairing.control);
        return Ok(Established {
            end: EndState::new(channel, pairing.channel_id, pairing.transport, reporter),
            data: DataPath::Ring(memory, peer),
            credit: 0,
        });
    }
    let mut data = match pairing.handed.take() {
        // The agent connected on our behalf (its Unix socket).
        Some(data) => data,
        None => {
            let addr = pairing.peer.ok_or_else(|| ClientError::Protocol {
                channel: channel.clone(),
                source: ProtocolError::BadFrame("paired without the receiver's address".into()),
            })?;
            let unreachable = |source| ClientError::ReceiverUnreachable {
                channel: channel.clone(),
                addr,
                source,
            };
            timeout(opts.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| unreachable(io::ErrorKind::TimedOut.into()))?
                .map_err(unreachable)?
        }
    };
    data.set_nodelay(true).ok();

    // The receiver speaks first, once both sockets are spliced: only then
    // may the first byte of ours go out (see docs/PROTOCOL.md).
    let credit = match opts.pair_timeout {
        Some(limit) => timeout(limit, initial_credit(&mut data))
            .await
            .map_err(|_| ClientError::PairTimeout {
                channel: channel.clone(),
                peer: Role::Recv,
                timeout: limit,
            })?,
        None => initial_credit(&mut data).await,
    }
    .map_err(|source| ClientError::Stream {
        channel: channel.clone(),
        source,
    })?;
    data.write_all(&control_frame(FrameKind::Hello, &pairing.key))
        .await
        .map_err(|source| ClientError::Io {
            channel: channel.clone(),
            context: "sending the pairing key to the receiver",
            source,
        })?;
    let reporter = Reporter::spawn(pairing.control);
    Ok(Established {
        end: EndState::new(channel, pairing.channel_id, pairing.transport, reporter),
        data: DataPath::Socket(data),
        credit,
    })
}

/// Opens `opts.channel` as its receiver: binds the data listener (or takes
/// the one the agent hands over on its Unix socket), pairs, and accepts the
/// paired sender's connection (or takes the connection the agent hands over:
/// the link from another node).
pub(crate) async fn receiver(opts: &ChannelOptions) -> Result<Established, ClientError> {
    let control = broker::connect(opts).await?;
    let channel = opts.channel.clone();
    let io_err = |context, source| ClientError::Io {
        channel: channel.clone(),
        context,
        source,
    };
    let bind = match (opts.data_addr, broker::is_unix(&control)) {
        (Some(addr), _) => Some(addr),
        (None, true) => None,
        (None, false) => broker::local_ip(&control)
            .map_err(|e| io_err("reading the control connection's address", e))?
            .map(|ip| SocketAddr::new(ip, 0)),
    };
    let (own, listen) = match bind {
        Some(bind) => {
            let listener = TcpListener::bind(bind)
                .await
                .map_err(|e| io_err("binding the data listener", e))?;
            let listen = listener
                .local_addr()
                .map_err(|e| io_err("reading the data listener's address", e))?;
            (Some(listener), Some(listen))
        }
        None => (None, None),
    };
    let accepted = broker::hello(control, opts, Role::Recv, listen).await?;
    let (mut pairing, handed_listener) = broker::paired(accepted, opts, Role::Recv).await?;
    if let Some((memory, peer)) = pairing.ring.take() {
        let reporter = Reporter::spawn(pairing.control);
        return Ok(Established {
            end: EndState::new(channel, pairing.channel_id, pairing.transport, reporter),
            data: DataPath::Ring(memory, peer),
            credit: pairing.window,
        });
    }
    let data = match (pairing.handed.take(), own.or(handed_listener)) {
        (Some(link), _) => verify_sender(link, &pairing.key, pairing.window, opts).await?,
        (None, Some(listener)) => {
            accept_sender(&listener, &pairing.key, pairing.window, opts).await?
        }
        (None, None) => {
            return Err(ClientError::Protocol {
                channel,
                source: ProtocolError::BadFrame(
                    "paired without a data listener or connection".into(),
                ),
            });
        }
    };
    let reporter = Reporter::spawn(pairing.control);
    Ok(Established {
        end: EndState::new(channel, pairing.channel_id, pairing.transport, reporter),
        data: DataPath::Socket(data),
        credit: pairing.window,
    })
}

/// Reads the receiver's first frame: its initial credit.
async fn initial_credit(stream: &mut TcpStream) -> Result<u64, StreamError> {
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

/// Accepts the paired sender's data connection: the first connection that
/// presents the pairing key. Others are rejected and closed.
async fn accept_sender(
    listener: &TcpListener,
    key: &[u8; KEY_LEN],
    window: u64,
    opts: &ChannelOptions,
) -> Result<TcpStream, ClientError> {
    let deadline = Instant::now() + opts.connect_timeout;
    loop {
        let (mut stream, from) = timeout_at(deadline, listener.accept())
            .await
            .map_err(|_| ClientError::SenderTimeout {
                channel: opts.channel.clone(),
                timeout: opts.connect_timeout,
            })?
            .map_err(|source| ClientError::Io {
                channel: opts.channel.clone(),
                context: "accepting the sender's data connection",
                source,
            })?;
        stream.set_nodelay(true).ok();
        // Speak first: accept() returning means this socket is in the socket
        // map already, and the sender's was inserted when its connect
        // completed, so from here on every byte either way is spliced.
        if stream
            .write_all(&Inbound::initial_credit(window))
            .await
            .is_err()
        {
            continue;
        }
        match timeout(HELLO_TIMEOUT, read_hello(&mut stream)).await {
            Ok(Ok(presented)) if presented == *key => return Ok(stream),
            Ok(Ok(_)) => reject(stream, from, opts, "wrong pairing key").await,
            Ok(Err(reason)) => reject(stream, from, opts, &reason).await,
            Err(_) => reject(stream, from, opts, "no pairing key within 10 s").await,
        }
    }
}

/// Opens a data connection the agent handed over (the link from the
/// producer's node): speaks first, then checks the key. There is no other
/// connection to wait for: a wrong key fails the channel.
async fn verify_sender(
    mut stream: TcpStream,
    key: &[u8; KEY_LEN],
    window: u64,
    opts: &ChannelOptions,
) -> Result<TcpStream, ClientError> {
    let failed = |reason: String| ClientError::Stream {
        channel: opts.channel.clone(),
        source: StreamError::Rejected { reason },
    };
    stream.set_nodelay(true).ok();
    stream
        .write_all(&Inbound::initial_credit(window))
        .await
        .map_err(|source| ClientError::Io {
            channel: opts.channel.clone(),
            context: "sending the first credit on the handed-over connection",
            source,
        })?;
    // The producer may come much later: wait as long as for a pairing.
    let presented =
        match opts.pair_timeout {
            Some(limit) => timeout(limit, read_hello(&mut stream)).await.map_err(|_| {
                ClientError::PairTimeout {
                    channel: opts.channel.clone(),
                    peer: Role::Send,
                    timeout: limit,
                }
            })?,
            None => read_hello(&mut stream).await,
        }
        .map_err(failed)?;
    if presented != *key {
        let _ = stream
            .write_all(&control_frame(FrameKind::Reject, b"wrong pairing key"))
            .await;
        return Err(failed("the sender presented a wrong pairing key".into()));
    }
    Ok(stream)
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

async fn reject(mut stream: TcpStream, from: SocketAddr, opts: &ChannelOptions, reason: &str) {
    warn!(channel = %opts.channel, %from, reason, "rejected a data connection");
    let _ = stream
        .write_all(&control_frame(FrameKind::Reject, reason.as_bytes()))
        .await;
}
