//! The client's side of the control connection to its agent: hello,
//! acceptance, pairing, and the sockets an agent hands over on its Unix
//! socket.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use tokio::{
    net::{TcpListener, TcpStream, UnixStream},
    sync::watch,
    time::timeout,
};
use tokio_util::either::Either;

use floki_proto::{
    KEY_LEN, ProtocolError,
    control::{
        AgentMessage, ClientReport, ClientRequest, ControlStream, Handoff, Hello, Refusal, Role,
        Transport, decode_key, read_message, write_message, write_opening,
    },
    handoff::recv_fds,
    netns::netns_cookie,
    ring::KeptRing,
};

use crate::{held_ring::Waited, idle::KeptLink};

use super::{
    ChannelOptions, ClientError,
    setup::{RingHanded, opening::Nudge},
};

/// A channel end the agent has paired.
pub(crate) struct Pairing {
    pub control: ControlStream,
    pub channel_id: u32,
    pub transport: Transport,
    pub peer: Option<SocketAddr>,
    pub key: [u8; KEY_LEN],
    pub window: u64,
    /// The data connection, when the agent handed it over.
    pub handed: Option<TcpStream>,
    /// The shared-memory ring (`shm`).
    pub ring: Option<RingHanded>,
    /// The other end is the agent's store.
    pub stored: bool,
    /// The agent takes this end's next hello on the same connection after
    /// its `done`.
    pub again: bool,
    /// The data connection handed over (or kept) is the agents' link of a
    /// stream across nodes: after a verified stream it may be kept with the
    /// connection for the stream's next use.
    pub link: bool,
    /// The agent sent the pairing key on the link ahead of the stream: the
    /// sender does not send it again.
    pub key_sent: bool,
    /// A sender over a socket may send its hello eager, before the
    /// receiver's first credit, and its stream right after, taking
    /// `window` as that credit (docs/PROTOCOL.md, section 2).
    pub eager: bool,
    /// The end goes over the link it held, without asking the agent: a
    /// sender starts the link itself, a receiver reads the start itself
    /// (docs/PROTOCOL.md, "Held links").
    pub held: bool,
    /// A receiver handed its stream's link before the stream started on
    /// it: it reads the start itself, as over a link it held
    /// (docs/PROTOCOL.md, "Lent links").
    pub unstarted: bool,
    /// A receiver whose agent leaves it the link after a verified stream
    /// (its hello said `holds_link`): kept, it is watched while idle.
    pub holds: bool,
    /// A held ring's sender: it tells its agent only of a failure (the
    /// receiver's `held` request files the stream).
    pub held_ring_sender: bool,
}

/// Where an agent address points: `host:port`, or `unix:PATH` (a path
/// starting with `/` also means a Unix socket).
fn unix_path(agent: &str) -> Option<&Path> {
    agent
        .strip_prefix("unix:")
        .or_else(|| agent.starts_with('/').then_some(agent))
        .map(Path::new)
}

/// Connects to the agent.
pub(crate) async fn connect(opts: &ChannelOptions) -> Result<ControlStream, ClientError> {
    let unreachable = |source| ClientError::AgentUnreachable {
        agent: opts.agent.clone(),
        source,
    };
    let connecting = async {
        match unix_path(&opts.agent) {
            Some(path) => {
                // A full listen queue (a burst of functions starting at
                // once) refuses a Unix connect with EAGAIN instead of
                // queueing it as TCP does: retry, within the timeout.
                let mut pause = std::time::Duration::from_millis(1);
                loop {
                    match UnixStream::connect(path).await {
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(std::time::Duration::from_millis(50));
                        }
                        connected => break connected.map(Either::Right),
                    }
                }
            }
            None => {
                let control = TcpStream::connect(&opts.agent).await?;
                control.set_nodelay(true).ok();
                Ok(Either::Left(control))
            }
        }
    };
    timeout(opts.connect_timeout, connecting)
        .await
        .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)
}

/// A control connection to say hello on: a new one, or one kept from an
/// earlier channel (no preamble then), with the ring of that channel if it
/// was kept too.
pub(crate) struct Opened {
    pub stream: ControlStream,
    kept: bool,
    ring: Option<KeptRing>,
    link: Option<KeptLink>,
    /// The connection last carried the stream it opens now.
    same_stream: bool,
}

impl Opened {
    /// A kept connection to say hello on, holding no ring or link.
    pub(crate) fn kept(stream: ControlStream) -> Self {
        Self {
            stream,
            kept: true,
            ring: None,
            link: None,
            same_stream: false,
        }
    }

    /// A new connection.
    fn new(stream: ControlStream) -> Self {
        Self {
            stream,
            kept: false,
            ring: None,
            link: None,
            same_stream: false,
        }
    }
}

/// A connection to the agent for a new end of `opts.channel`: one this
/// process kept after an earlier end (see [`crate::idle`]), else a new one.
/// `role`: the end's, if it opens one. `keeps`: the end can take up a
/// kept ring or link, and keeps its own (a function's end, not the agent's
/// store's); without it, another stream's kept ring or link is never given
/// up for this connection.
pub(crate) async fn open(
    opts: &ChannelOptions,
    role: Option<Role>,
    keeps: bool,
) -> Result<Opened, ClientError> {
    let sender = role.map(|role| role == Role::Send);
    if let Some(kept) = crate::idle::take(&opts.agent, &crate::idle::stream_of(opts), sender, keeps)
        && let Ok(stream) = attach(kept.control)
    {
        return Ok(Opened {
            stream,
            kept: true,
            ring: kept.ring.filter(|_| keeps && opts.ring),
            link: kept.link.filter(|_| keeps),
            same_stream: kept.same_stream,
        });
    }
    Ok(Opened::new(connect(opts).await?))
}

/// A control connection taken off the runtime it was opened on, to be
/// handed to another: the blocking client sets a channel up on its caller's
/// thread and reports from its background runtime.
pub(crate) type DetachedControl = Either<std::net::TcpStream, std::os::unix::net::UnixStream>;

/// Takes `control` off its runtime.
pub(crate) fn detach(control: ControlStream) -> std::io::Result<DetachedControl> {
    Ok(match control {
        Either::Left(tcp) => Either::Left(tcp.into_std()?),
        Either::Right(unix) => Either::Right(unix.into_std()?),
    })
}

/// Registers a detached control connection with the runtime this runs on.
pub(crate) fn attach(control: DetachedControl) -> std::io::Result<ControlStream> {
    Ok(match control {
        Either::Left(tcp) => Either::Left(TcpStream::from_std(tcp)?),
        Either::Right(unix) => Either::Right(UnixStream::from_std(unix)?),
    })
}

/// Whether the agent can hand sockets over on this connection.
pub(crate) fn is_unix(control: &ControlStream) -> bool {
    matches!(control, Either::Right(_))
}

/// Where a receiver's data listener goes by default: the address this
/// client reaches the agent from (the agent hands Unix-socket clients a
/// listener instead).
pub(crate) fn local_ip(control: &ControlStream) -> std::io::Result<Option<std::net::IpAddr>> {
    match control {
        Either::Left(tcp) => tcp.local_addr().map(|addr| Some(addr.ip())),
        Either::Right(_) => Ok(None),
    }
}

/// A channel end the agent accepted, not paired yet.
pub(crate) struct Accepted {
    pub control: ControlStream,
    /// The ring of this connection's last channel, which the hello said
    /// this end still holds.
    pub ring: Option<KeptRing>,
    /// The agents' link of this connection's last stream, which the hello
    /// said this end still holds.
    pub link: Option<KeptLink>,
    /// The end goes over `link` without asking the agent (nothing was
    /// said): see [`Pairing::held`].
    pub held: bool,
    pub channel_id: u32,
    /// The channel's window: what a sender may buffer before pairing.
    pub window: Option<u64>,
    /// Unix-socket receivers of an agent that hands the data listener over
    /// with `accepted` (one that ignores `listener_at_pairing`).
    pub listener: Option<TcpListener>,
}

impl Accepted {
    /// Whether the agent's next message, already waiting on the control
    /// connection, pairs this sender so that its stream is set up without
    /// waiting for anything more: over a ring (`paired` follows `accepted`
    /// at once when the peer was there first), or over the agents' link
    /// across nodes (its receiver's first credit is known: see
    /// [`crate::setup::sender`]) unless `bounded` (a pair timeout: the
    /// sender then waits for that credit, within it).
    pub fn paired_at_once(&self, bounded: bool) -> bool {
        if self.held {
            return true;
        }
        let fd = raw_fd(&self.control);
        let peek = |buf: &mut [u8]| {
            nix::sys::socket::recv(
                fd,
                buf,
                nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            )
        };
        let mut header = [0u8; 4];
        if !matches!(peek(&mut header), Ok(4)) {
            return false;
        }
        let Ok(len) = floki_proto::control::message_len(header, floki_proto::MAX_MESSAGE_LEN)
        else {
            return false;
        };
        let mut message = vec![0u8; 4 + len];
        if !matches!(peek(&mut message), Ok(n) if n == message.len()) {
            return false;
        }
        match floki_proto::control::parse_message(&message[4..]) {
            Ok(AgentMessage::Paired {
                transport: Transport::Shm,
                ..
            }) => true,
            Ok(AgentMessage::Paired { link, .. }) => link && !bounded,
            _ => false,
        }
    }
}

/// The descriptor of a control connection, for socket options and peeks.
fn raw_fd(control: &ControlStream) -> std::os::fd::RawFd {
    match control {
        Either::Left(tcp) => tcp.as_raw_fd(),
        Either::Right(unix) => unix.as_raw_fd(),
    }
}

/// Says hello and reads the agent's acceptance.
pub(crate) async fn hello(
    mut opened: Opened,
    opts: &ChannelOptions,
    role: Role,
    listen: Option<SocketAddr>,
) -> Result<Accepted, ClientError> {
    if opened.kept
        && crate::held_ring::eligible(opened.ring.as_ref(), opened.same_stream, opts, role)
    {
        match held_ring(opened, opts, role).await? {
            Either::Left(accepted) => return Ok(accepted),
            Either::Right(ask) => opened = ask,
        }
    }
    let unix = is_unix(&opened.stream);
    if holds(&opened, opts, unix) {
        // The stream's next use over the link this end held: nothing to
        // ask (docs/PROTOCOL.md, "Held links").
        let window = opened.link.as_ref().map(|link| link.window);
        return Ok(Accepted {
            control: opened.stream,
            ring: None,
            link: opened.link,
            held: true,
            channel_id: 0,
            window,
            listener: None,
        });
    }
    let hello = Hello {
        channel: opts.channel.clone(),
        role,
        // On the Unix socket the agent acts for the client in its own
        // namespace (it connects, it opens the listener) and says so itself.
        netns_cookie: (!unix)
            .then(|| netns_cookie(&raw_fd(&opened.stream)).ok())
            .flatten(),
        listen,
        window: opts.window,
        // The agent opens a listener only if the pairing needs one.
        listener_at_pairing: role == Role::Recv && listen.is_none() && unix,
        stream: opts.stream.clone(),
        shm: opts.ring && unix,
        transport: opts.transport,
        live: opts.live,
        store: opts.store,
        secret: opts.secret.clone(),
        kept_ring: opened.ring.is_some(),
        kept_link: opened.link.is_some(),
        // A sender on the Unix socket may be handed the agents' link: the
        // agent's start of it may carry the pairing key too.
        key_ahead: role == Role::Send && unix,
        holds_link: role == Role::Recv && holds_link(opts, unix),
        eager_hello: role == Role::Recv,
        // It waits on its stream's link as on one it holds.
        unstarted_link: role == Role::Recv && holds_link(opts, unix),
        run: opts.run.clone(),
    };
    let (opened, answer) = ask(opened, opts, ClientRequest::Open(hello)).await?;
    accepted(opened, answer, &opts.channel).await
}

/// The stream's next use over the ring this end kept, without a word to
/// the agent (docs/PROTOCOL.md, "Held rings"): accepted as held if the
/// sender took its waiting receiver's ring, or the receiver's sender
/// started; else the connection to say hello on (a new one if the agent
/// closed this one).
async fn held_ring(
    mut opened: Opened,
    opts: &ChannelOptions,
    role: Role,
) -> Result<Either<Accepted, Opened>, ClientError> {
    let ring = opened.ring.as_ref().expect("eligible: a kept ring");
    let started = match role {
        Role::Send => ring.take_held(),
        Role::Recv => match crate::held_ring::wait_for_start(ring, &mut opened.stream, opts).await?
        {
            Waited::Started => true,
            Waited::AskAgent { keep_ring } => {
                if !keep_ring {
                    opened.ring = None;
                }
                false
            }
            Waited::AgentGone => return Ok(Either::Right(Opened::new(connect(opts).await?))),
        },
    };
    if !started {
        return Ok(Either::Right(opened));
    }
    Ok(Either::Left(Accepted {
        control: opened.stream,
        window: None,
        ring: opened.ring,
        link: None,
        held: true,
        channel_id: 0,
        listener: None,
    }))
}

/// Whether an end goes over the link it held from its stream's last use,
/// without a word to the agent: a function's workflow stream, on the Unix
/// socket, on the connection that kept the link, with no transport
/// insisted on.
fn holds(opened: &Opened, opts: &ChannelOptions, unix: bool) -> bool {
    opened.kept
        && opened.link.as_ref().is_some_and(|link| !link.given_back)
        && unix
        && opts.stream.is_some()
        && !opts.store
        && opts.transport.is_none()
}

/// Whether a receiver's hello says `holds_link`: a function's workflow
/// stream on the Unix socket (where links are handed over).
fn holds_link(opts: &ChannelOptions, unix: bool) -> bool {
    unix && opts.stream.is_some() && !opts.store
}

/// Sends a client's request (after the preamble on a new connection) and
/// reads the agent's answer. On a kept connection the agent may have
/// closed meanwhile (its idle limit, a restart) or be stopping: then the
/// request goes again, on a new connection (and without the kept ring and
/// link, which only the old connection's agent knew).
pub(crate) async fn ask(
    opened: Opened,
    opts: &ChannelOptions,
    mut request: ClientRequest,
) -> Result<(Opened, AgentMessage), ClientError> {
    let protocol = |source| ClientError::Protocol {
        channel: opts.channel.clone(),
        source,
    };
    let Opened {
        mut stream,
        kept,
        ring,
        link,
        ..
    } = opened;
    if kept {
        match say(&mut stream, &request, false).await {
            // Closed before it read the request, or stopping (a new agent
            // may already listen in its place): nothing of it took effect.
            Ok(
                None
                | Some(AgentMessage::Refused {
                    error: Refusal::ShuttingDown,
                    ..
                }),
            )
            | Err(ProtocolError::Io(_)) => stream = connect(opts).await?,
            Ok(Some(answer)) => {
                let opened = Opened {
                    stream,
                    kept,
                    ring,
                    link,
                    same_stream: false,
                };
                return Ok((opened, answer));
            }
            Err(source) => return Err(protocol(source)),
        }
        if let ClientRequest::Open(hello) = &mut request {
            hello.kept_ring = false;
            hello.kept_link = false;
        }
    }
    match say(&mut stream, &request, true).await.map_err(protocol)? {
        Some(answer) => Ok((Opened::new(stream), answer)),
        None => Err(ClientError::AgentClosed {
            channel: opts.channel.clone(),
        }),
    }
}

/// Writes `request` (after the preamble on a new connection) and reads the
/// answer; `None` if the agent closed the connection first.
async fn say(
    control: &mut ControlStream,
    request: &ClientRequest,
    preamble: bool,
) -> Result<Option<AgentMessage>, ProtocolError> {
    if preamble {
        write_opening(control, request).await?;
    } else {
        write_message(control, request).await?;
    }
    loop {
        match read_message(control).await? {
            // Said between requests, to an end that had stopped waiting
            // before it came (docs/PROTOCOL.md, "Held rings"): not the
            // answer.
            Some(AgentMessage::StartedElsewhere) => {}
            answer => return Ok(answer),
        }
    }
}

/// The end the agent's `answer` to its hello accepted, or why not.
async fn accepted(
    opened: Opened,
    answer: AgentMessage,
    channel: &str,
) -> Result<Accepted, ClientError> {
    let Opened {
        stream: control,
        ring,
        link,
        ..
    } = opened;
    match answer {
        AgentMessage::Accepted {
            channel_id,
            window,
            socket,
            ..
        } => {
            let listener = match socket {
                Some(Handoff::Listener) => Some(
                    handed(&control, channel)
                        .await
                        .and_then(|fd| listener(fd, channel))?,
                ),
                Some(
                    Handoff::Connection | Handoff::Ring | Handoff::KeptRing | Handoff::KeptLink,
                ) => {
                    return Err(unexpected_socket(channel));
                }
                None => None,
            };
            Ok(Accepted {
                control,
                ring,
                link,
                held: false,
                channel_id,
                window,
                listener,
            })
        }
        AgentMessage::Refused { error, message } => Err(ClientError::Refused {
            channel: channel.to_owned(),
            reason: error,
            message,
        }),
        other => Err(unexpected(channel, &other)),
    }
}

/// Waits until the agent pairs an accepted end with its peer (within
/// `opts.pair_timeout` if set). A sender passes `nudge`: when it fires (the
/// sender has nothing more to buffer), the agent hears `waiting` and may
/// store the stream at once.
pub(crate) async fn paired(
    accepted: Accepted,
    opts: &ChannelOptions,
    role: Role,
    nudge: Option<watch::Receiver<Nudge>>,
) -> Result<(Pairing, Option<TcpListener>), ClientError> {
    let Accepted {
        control,
        channel_id,
        mut listener,
        ring: kept_ring,
        link: kept_link,
        held,
        ..
    } = accepted;
    let channel = &opts.channel;
    if held && let Some(kept) = kept_ring {
        let pairing = Pairing {
            control,
            channel_id,
            transport: Transport::Shm,
            peer: None,
            key: [0; KEY_LEN],
            window: kept.capacity(),
            handed: None,
            ring: Some(RingHanded::Kept(kept)),
            stored: false,
            again: true,
            link: false,
            key_sent: false,
            eager: false,
            held: true,
            unstarted: false,
            holds: false,
            held_ring_sender: role == Role::Send,
        };
        return Ok((pairing, None));
    }
    if held && let Some(kept) = kept_link {
        let pairing = Pairing {
            control,
            channel_id,
            transport: Transport::Tcp,
            peer: None,
            key: kept.key,
            window: kept.window,
            handed: Some(connection(kept.conn.into(), channel)?),
            ring: None,
            stored: false,
            again: true,
            link: true,
            key_sent: false,
            eager: false,
            held: true,
            unstarted: false,
            holds: role == Role::Recv,
            held_ring_sender: false,
        };
        return Ok((pairing, None));
    }
    let protocol = |source: ProtocolError| ClientError::Protocol {
        channel: channel.clone(),
        source,
    };
    let answer = answer_nudged(control, nudge);
    let (control, answer) = match opts.pair_timeout {
        Some(limit) => timeout(limit, answer)
            .await
            .map_err(|_| ClientError::PairTimeout {
                channel: channel.clone(),
                peer: role.peer(),
                timeout: limit,
            })?,
        None => answer.await,
    };
    match answer.map_err(protocol)? {
        Some(AgentMessage::Paired {
            transport,
            peer,
            key,
            window,
            socket,
            stored,
            again,
            link,
            key_sent,
            eager,
            unstarted,
        }) => {
            let (handed, ring) = match socket {
                Some(Handoff::Connection) => (
                    Some(
                        handed(&control, channel)
                            .await
                            .and_then(|fd| connection(fd, channel))?,
                    ),
                    None,
                ),
                Some(Handoff::Ring) => {
                    let mut fds = handed_fds(&control, channel, 2).await?;
                    let peer = fds.pop().expect("two descriptors");
                    let memory = fds.pop().expect("two descriptors");
                    (None, Some(RingHanded::Fresh(memory, peer)))
                }
                // The agent rewound the ring this end kept; nothing follows.
                Some(Handoff::KeptRing) => match kept_ring {
                    Some(kept) => (None, Some(RingHanded::Kept(kept))),
                    None => return Err(unexpected_socket(channel)),
                },
                // The agent started the link this end kept again; nothing
                // follows.
                Some(Handoff::KeptLink) => match kept_link {
                    Some(kept) => (Some(connection(kept.conn.into(), channel)?), None),
                    None => return Err(unexpected_socket(channel)),
                },
                Some(Handoff::Listener) if role == Role::Recv && listener.is_none() => {
                    let handed = handed(&control, channel)
                        .await
                        .and_then(|fd| self::listener(fd, channel))?;
                    listener = Some(handed);
                    (None, None)
                }
                Some(Handoff::Listener) => return Err(unexpected_socket(channel)),
                None => None.unzip(),
            };
            let key = decode_key(&key).ok_or_else(|| {
                protocol(ProtocolError::BadFrame(format!(
                    "pairing key {key:?} is not 32 hex digits"
                )))
            })?;
            let holds = role == Role::Recv && holds_link(opts, is_unix(&control));
            let pairing = Pairing {
                control,
                channel_id,
                transport,
                peer,
                key,
                window,
                handed,
                ring,
                stored,
                again,
                link,
                key_sent,
                eager,
                held: false,
                unstarted: unstarted && role == Role::Recv && link,
                holds,
                held_ring_sender: false,
            };
            Ok((pairing, listener))
        }
        Some(AgentMessage::Refused { error, message }) => Err(ClientError::Refused {
            channel: channel.clone(),
            reason: error,
            message,
        }),
        Some(other) => Err(unexpected(channel, &other)),
        None => Err(ClientError::AgentClosed {
            channel: channel.clone(),
        }),
    }
}

/// The agent's next message; meanwhile, each time `nudge` rises, tells the
/// agent `waiting` (on the write half: a read is never cut in the middle).
async fn answer_nudged(
    control: ControlStream,
    nudge: Option<watch::Receiver<Nudge>>,
) -> (ControlStream, Result<Option<AgentMessage>, ProtocolError>) {
    let (mut reader, mut writer) = tokio::io::split(control);
    let answer = {
        let reading = read_message(&mut reader);
        tokio::pin!(reading);
        let mut nudge = nudge;
        loop {
            tokio::select! {
                answer = &mut reading => break answer,
                changed = async { nudge.as_mut().expect("guarded").changed().await }, if nudge.is_some() => {
                    let level = match (changed, &nudge) {
                        (Ok(()), Some(nudge)) => *nudge.borrow(),
                        _ => Nudge::Writing,
                    };
                    if level == Nudge::Writing {
                        // The sender is gone (or never waited).
                        nudge = None;
                        continue;
                    }
                    let report = ClientReport::Waiting {
                        finishing: level == Nudge::Finishing,
                    };
                    // Best effort: the agent stores after its grace anyway.
                    let _ = write_message(&mut writer, &report).await;
                }
            }
        }
    };
    (reader.unsplit(writer), answer)
}

/// Receives the socket announced by the last message.
async fn handed(control: &ControlStream, channel: &str) -> Result<OwnedFd, ClientError> {
    Ok(handed_fds(control, channel, 1).await?.remove(0))
}

/// Receives the `count` descriptors announced by the last message.
async fn handed_fds(
    control: &ControlStream,
    channel: &str,
    count: usize,
) -> Result<Vec<OwnedFd>, ClientError> {
    let Either::Right(unix) = control else {
        return Err(unexpected_socket(channel));
    };
    recv_fds(unix, count)
        .await
        .map_err(|source| ClientError::Io {
            channel: channel.to_owned(),
            context: "receiving what the agent handed over",
            source,
        })
}

fn listener(fd: OwnedFd, channel: &str) -> Result<TcpListener, ClientError> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(std))
        .map_err(|source| ClientError::Io {
            channel: channel.to_owned(),
            context: "taking over the data listener the agent handed over",
            source,
        })
}

fn connection(fd: OwnedFd, channel: &str) -> Result<TcpStream, ClientError> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(std))
        .map_err(|source| ClientError::Io {
            channel: channel.to_owned(),
            context: "taking over the data connection the agent handed over",
            source,
        })
}

fn unexpected_socket(channel: &str) -> ClientError {
    ClientError::Protocol {
        channel: channel.to_owned(),
        source: ProtocolError::BadFrame("the agent announced a socket this end cannot use".into()),
    }
}

/// A message the agent had no reason to send now.
pub(crate) fn unexpected(channel: &str, message: &AgentMessage) -> ClientError {
    ClientError::Protocol {
        channel: channel.to_owned(),
        source: ProtocolError::BadFrame(format!("unexpected agent message {message:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::unix_path;

    #[test]
    fn agent_addresses() {
        assert_eq!(
            unix_path("unix:/run/floki/floki.sock"),
            Some(std::path::Path::new("/run/floki/floki.sock"))
        );
        assert_eq!(
            unix_path("/run/floki/floki.sock"),
            Some(std::path::Path::new("/run/floki/floki.sock"))
        );
        assert_eq!(unix_path("127.0.0.1:7878"), None);
    }
}
