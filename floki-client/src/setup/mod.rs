//! Setting a channel end up, for both clients: pairing through the agent,
//! then the data connection between the two ends and the key check (or the
//! ring the agent made for the two). [`opening`] is the state a sender is in
//! meanwhile, shared by both clients.

mod data_connection;
pub(crate) mod opening;

use std::{io, net::SocketAddr, os::fd::OwnedFd};

use floki_proto::{
    ProtocolError,
    control::Role,
    frame::{FrameKind, control_frame, eager_hello},
    link_start::LinkStart,
    ring::{KeptRing, RingReader, RingWriter},
    stream::StreamError,
};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    runtime::Handle,
    sync::watch,
    time::timeout,
};

use crate::{
    ChannelOptions, ClientError,
    control::{self, Accepted, Pairing},
    end::EndState,
    reporter::Reporter,
    setup::data_connection::HeldStart,
};

/// A paired channel end with its data path open.
pub(crate) struct Established {
    pub end: EndState,
    pub data: DataPath,
    /// Sender: the receiver's initial credit. Receiver: its window.
    pub credit: u64,
    /// The data connection is the agents' link of a stream across nodes
    /// (the agent said `link`), which may carry the stream's next use: no
    /// end shuts it down, and an end keeps it with its connection
    /// after a verified stream.
    pub link: bool,
}

/// Where an established end's bytes go.
pub(crate) enum DataPath {
    /// A TCP connection to the other end (spliced or not).
    Socket(TcpStream),
    /// A shared-memory ring.
    Ring(RingHanded),
}

/// The ring an end was paired over.
pub(crate) enum RingHanded {
    /// A new one: its memory file and this end's socket to the other end
    /// beside it, handed over by the agent.
    Fresh(OwnedFd, OwnedFd),
    /// The ring this end kept from its last channel on its connection,
    /// rewound by the agent.
    Kept(KeptRing),
}

impl RingHanded {
    /// The sender's end of the ring.
    pub fn writer(self) -> Result<RingWriter, StreamError> {
        match self {
            Self::Fresh(memory, peer) => RingWriter::open(memory, peer),
            Self::Kept(kept) => RingWriter::reopen(kept),
        }
    }

    /// The receiver's end of the ring.
    pub fn reader(self) -> Result<RingReader, StreamError> {
        match self {
            Self::Fresh(memory, peer) => RingReader::open(memory, peer),
            Self::Kept(kept) => RingReader::reopen(kept),
        }
    }
}

impl Established {
    /// The end of `pairing`, whose data path is `data`; reports to the
    /// agent on the control connection from now on, from `reports_on` (by
    /// default the runtime this runs on).
    fn new(
        opts: &ChannelOptions,
        pairing: Pairing,
        data: DataPath,
        credit: u64,
        reports_on: Option<&Handle>,
    ) -> Self {
        // Kept for the next channel once this end finished, if the agent
        // takes another hello on it. Not the agent's own store ends: the
        // rings they would keep are the functions' to use.
        let keep = (pairing.again && !opts.store).then(|| crate::reporter::Keep {
            agent: opts.agent.clone(),
            stream: crate::idle::stream_of(opts),
            link_terms: pairing
                .link
                .then_some((pairing.key, pairing.window, pairing.holds)),
            last: match (pairing.held, pairing.held_ring_sender) {
                (false, _) => crate::reporter::Final::Done,
                (true, false) => crate::reporter::Final::Held,
                (true, true) => crate::reporter::Final::HeldIfFailed,
            },
        });
        let reporter = match reports_on {
            Some(runtime) => Reporter::deferred_on(runtime, pairing.control, keep),
            None => Reporter::spawn(pairing.control, keep),
        };
        let mut end = EndState::new(
            opts.channel.clone(),
            pairing.channel_id,
            pairing.transport,
            reporter,
        );
        end.stored = pairing.stored;
        let link = pairing.link && matches!(data, DataPath::Socket(_));
        Self {
            end,
            data,
            credit,
            link,
        }
    }
}

/// Says hello as the sender of `opts.channel`; the agent's acceptance says
/// how much may be buffered until the stream is established.
pub(crate) async fn sender_hello(opts: &ChannelOptions) -> Result<Accepted, ClientError> {
    control::hello(
        control::open(opts, Some(Role::Send), !opts.store).await?,
        opts,
        Role::Send,
        None,
    )
    .await
}

/// Establishes an accepted sender's stream: pairing, the receiver's first
/// credit (waited for within the pair timeout: across nodes the receiver may
/// come later; over the agents' link handed over, without a pair timeout,
/// the window of `paired`), then the pairing key. The end reports from
/// `reports_on` (by default the runtime this runs on).
pub(crate) async fn sender(
    accepted: Accepted,
    opts: &ChannelOptions,
    nudge: watch::Receiver<opening::Nudge>,
    reports_on: Option<&Handle>,
) -> Result<Established, ClientError> {
    let (mut pairing, _) = control::paired(accepted, opts, Role::Send, Some(nudge)).await?;
    if let Some(ring) = pairing.ring.take() {
        // The agent made the ring for these two ends: no key to check.
        return Ok(Established::new(
            opts,
            pairing,
            DataPath::Ring(ring),
            0,
            reports_on,
        ));
    }
    let mut data = match pairing.handed.take() {
        // The agent connected on our behalf (its Unix socket), or handed
        // its link over, with TCP_NODELAY set: one system call fewer.
        Some(data) => data,
        None => connect_to_receiver(pairing.peer, opts).await?,
    };

    // Over a link this end held, the start is this end's to write, with
    // the key: its receiver waits for them before anything else
    // (docs/PROTOCOL.md, "Held links").
    if pairing.held {
        let start = LinkStart {
            live: opts.live,
            run: opts.run.clone(),
        };
        send_key(&mut data, start.bytes(), &pairing.key, opts).await?;
    }
    // An eager hello goes out only spliced (or over plain TCP, where there
    // is no splice to wait for): then the window of `paired` is the
    // receiver's first credit, and the stream follows at once. Returned,
    // it is as if it had not been sent.
    let eager = pairing.eager && !pairing.link && !pairing.held && !pairing.key_sent;
    let eager_sent = eager && send_eager_hello(&mut data, &pairing.key, opts).await?;
    // Otherwise the receiver speaks first, once both sockets are spliced:
    // only then may the first byte of ours go out (see docs/PROTOCOL.md).
    // The agents' link handed over is spliced nowhere, and its receiver's
    // first credit is the window of `paired`: the stream goes out at once.
    // A sender that bounds its pairing with a timeout waits for that
    // credit, within it.
    let credit = if eager_sent || (pairing.link && opts.pair_timeout.is_none()) {
        Ok(pairing.window)
    } else {
        let first = data_connection::initial_credit(&mut data);
        data_connection::within_pair_timeout(opts, Role::Recv, first).await?
    }
    .map_err(|source| ClientError::Stream {
        channel: opts.channel.clone(),
        source,
    })?;
    // Over the agents' link, the agent may have sent the key with the
    // link's start: one segment less across the nodes.
    if !pairing.key_sent && !pairing.held && !eager_sent {
        send_key(&mut data, Vec::new(), &pairing.key, opts).await?;
    }
    Ok(Established::new(
        opts,
        pairing,
        DataPath::Socket(data),
        credit,
        reports_on,
    ))
}

/// Sends `first` (a held link's start, or nothing) and the pairing key's
/// hello frame, in one write.
async fn send_key(
    data: &mut TcpStream,
    mut first: Vec<u8>,
    key: &[u8; floki_proto::KEY_LEN],
    opts: &ChannelOptions,
) -> Result<(), ClientError> {
    first.extend_from_slice(&control_frame(FrameKind::Hello, key));
    write_hello(data, &first, opts).await
}

/// Writes `bytes`, which end with the pairing key's hello frame.
async fn write_hello(
    data: &mut TcpStream,
    bytes: &[u8],
    opts: &ChannelOptions,
) -> Result<(), ClientError> {
    data.write_all(bytes)
        .await
        .map_err(|source| ClientError::Io {
            channel: opts.channel.clone(),
            context: "sending the pairing key to the receiver",
            source,
        })
}

/// Sends the pairing key's hello eager, in a write of its own: `true` if it
/// went out, `false` if the kernel program returned it (the receiver's
/// socket is not spliced yet), which this takes back out of the socket.
async fn send_eager_hello(
    data: &mut TcpStream,
    key: &[u8; floki_proto::KEY_LEN],
    opts: &ChannelOptions,
) -> Result<bool, ClientError> {
    write_hello(data, &eager_hello(key), opts).await?;
    // The program returns it within the write, so it is there by now or
    // never (nothing else comes before the receiver's credit).
    Ok(data_connection::take_eager_hello(data).is_none())
}

/// The sender's data connection to the receiver's listener at `peer`,
/// with TCP_NODELAY set.
async fn connect_to_receiver(
    peer: Option<SocketAddr>,
    opts: &ChannelOptions,
) -> Result<TcpStream, ClientError> {
    let addr = peer.ok_or_else(|| ClientError::Protocol {
        channel: opts.channel.clone(),
        source: ProtocolError::BadFrame("paired without the receiver's address".into()),
    })?;
    let unreachable = |source| ClientError::ReceiverUnreachable {
        channel: opts.channel.clone(),
        addr,
        source,
    };
    let data = timeout(opts.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable(io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)?;
    data.set_nodelay(true).ok();
    Ok(data)
}

/// Opens `opts.channel` as its receiver: binds the data listener (or takes
/// the one the agent hands over on its Unix socket), pairs, and accepts the
/// paired sender's connection (or takes the connection the agent hands over:
/// the link from another node, or a ring). The end reports from
/// `reports_on` (by default the runtime this runs on).
pub(crate) async fn receiver(
    opts: &ChannelOptions,
    reports_on: Option<&Handle>,
) -> Result<Established, ClientError> {
    let mut control = control::open(opts, Some(Role::Recv), !opts.store).await?;
    loop {
        match receiver_on(control, opts, reports_on).await? {
            Received::Established(established) => return Ok(*established),
            Received::AskAgain(opened) => control = opened,
        }
    }
}

/// Where [`receiver_on`] leaves a receiver.
enum Received {
    Established(Box<Established>),
    /// It held its stream's link, but the stream started on another (or
    /// its agent went): it says hello on this connection.
    AskAgain(control::Opened),
}

/// [`receiver`] on the connection `control`.
async fn receiver_on(
    control: control::Opened,
    opts: &ChannelOptions,
    reports_on: Option<&Handle>,
) -> Result<Received, ClientError> {
    let own = bind_listener(&control.stream, opts).await?;
    let listen = match &own {
        Some(listener) => Some(listener.local_addr().map_err(|source| ClientError::Io {
            channel: opts.channel.clone(),
            context: "reading the data listener's address",
            source,
        })?),
        None => None,
    };
    let accepted = control::hello(control, opts, Role::Recv, listen).await?;
    let (mut pairing, handed_listener) = control::paired(accepted, opts, Role::Recv, None).await?;
    let window = pairing.window;
    if let Some(ring) = pairing.ring.take() {
        return Ok(Received::Established(Box::new(Established::new(
            opts,
            pairing,
            DataPath::Ring(ring),
            window,
            reports_on,
        ))));
    }
    let data = match (pairing.handed.take(), own.or(handed_listener)) {
        (Some(mut link), _) => {
            // A link it held, or one lent before its start: the start is
            // this end's to read (docs/PROTOCOL.md, "Held links", "Lent
            // links").
            if pairing.held || pairing.unstarted {
                match data_connection::held_start(&mut link, &mut pairing.control, opts).await? {
                    HeldStart::Started => {}
                    // The link it held goes back to the agent with the
                    // hello (or with the connection): never read here. A
                    // lent one is said unread first: its end leaves the
                    // channel the hello was paired in.
                    HeldStart::Elsewhere => {
                        if pairing.unstarted {
                            data_connection::say_link_unread(&mut pairing.control, opts).await?;
                        }
                        let opened = control::Opened::kept(pairing.control);
                        return Ok(Received::AskAgain(opened));
                    }
                    HeldStart::AgentGone => {
                        let opened = control::open(opts, Some(Role::Recv), true).await?;
                        return Ok(Received::AskAgain(opened));
                    }
                }
            }
            data_connection::verify_sender(link, &pairing.key, window, opts).await?
        }
        (None, Some(listener)) => {
            data_connection::accept_sender(&listener, &pairing.key, window, opts).await?
        }
        (None, None) => {
            return Err(ClientError::Protocol {
                channel: opts.channel.clone(),
                source: ProtocolError::BadFrame(
                    "paired without a data listener or connection".into(),
                ),
            });
        }
    };
    Ok(Received::Established(Box::new(Established::new(
        opts,
        pairing,
        DataPath::Socket(data),
        window,
        reports_on,
    ))))
}

/// The receiver's own data listener: on `opts.data_addr`, else on the
/// address this client reaches the agent from. None on the Unix socket
/// without a `data_addr`: the agent hands one over.
async fn bind_listener(
    control: &floki_proto::control::ControlStream,
    opts: &ChannelOptions,
) -> Result<Option<TcpListener>, ClientError> {
    let io_err = |context, source| ClientError::Io {
        channel: opts.channel.clone(),
        context,
        source,
    };
    let bind = match (opts.data_addr, control::is_unix(control)) {
        (Some(addr), _) => Some(addr),
        (None, true) => None,
        (None, false) => control::local_ip(control)
            .map_err(|e| io_err("reading the control connection's address", e))?
            .map(|ip| SocketAddr::new(ip, 0)),
    };
    match bind {
        Some(bind) => TcpListener::bind(bind)
            .await
            .map(Some)
            .map_err(|e| io_err("binding the data listener", e)),
        None => Ok(None),
    }
}
