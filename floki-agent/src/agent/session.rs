//! One connection to the agent's channel port: a client (`FLKI`: handshake,
//! pairing, reports) or another agent (`FLKA`: links, applies, stream
//! connections). Bad input gets a refusal with a reason and never disturbs
//! other channels.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd as _,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream, UnixStream},
    time::timeout,
};
use tokio_util::either::Either;
use tracing::{debug, info, warn};

use super::{
    Agent,
    peers::protocol::{PEER_MAGIC, PeerAnswer, PeerRequest, read_request},
    registry::{PairedEnd, Pairing, Refused, WINDOW_RANGE},
    relay,
    workflows::{Applied, Denied, Resolved},
};
use crate::{
    protocol::{
        MAGIC, ProtocolError, VERSION,
        control::{
            AgentMessage, ClientReport, ClientRequest, ControlStream, EdgeRef, Handoff, Hello,
            Refusal, Role, Transport, encode_key, read_message, read_preamble, valid_channel_name,
            write_message,
        },
        handoff::{send_fds, send_socket},
    },
    workflow::Workflow,
};

/// How long a client has to complete its hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an agent waits for a function's data connection after pairing.
const DATA_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection to its end.
pub async fn serve(mut stream: TcpStream, from: SocketAddr, agent: Arc<Agent>) {
    stream.set_nodelay(true).ok();
    let mut preamble = [0u8; 6];
    let read = timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut preamble)).await;
    let version = u16::from_be_bytes([preamble[4], preamble[5]]);
    let refusal = match read {
        Err(_) => Some((
            Refusal::BadHandshake,
            format!(
                "no complete hello within {HANDSHAKE_TIMEOUT:?}; send the preamble and the hello message at once"
            ),
        )),
        Ok(Err(err)) => Some((
            Refusal::BadHandshake,
            ProtocolError::from_read(err).to_string(),
        )),
        Ok(Ok(_)) if preamble[..4] == PEER_MAGIC && version == VERSION => {
            return peer(stream, from, agent).await;
        }
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
    if let Some((refusal, message)) = refusal {
        return refuse(&mut stream, &from, refusal, message).await;
    }
    client(stream, from, agent).await;
}

/// Serves one connection to the agent's Unix socket: a client on this node
/// (never another agent), which may be handed its data sockets.
pub async fn serve_unix(stream: UnixStream, agent: Arc<Agent>) {
    let mut stream = Either::Right(stream);
    let from = "the local socket".to_owned();
    match timeout(HANDSHAKE_TIMEOUT, read_preamble(&mut stream)).await {
        Ok(Ok(())) => client(stream, from, agent).await,
        Ok(Err(err)) => {
            let refusal = match err {
                ProtocolError::UnsupportedVersion(_) => Refusal::UnsupportedVersion,
                _ => Refusal::BadHandshake,
            };
            refuse(&mut stream, &from, refusal, err.to_string()).await;
        }
        Err(_) => {
            let message = format!(
                "no complete hello within {HANDSHAKE_TIMEOUT:?}; send the preamble and the hello message at once"
            );
            refuse(&mut stream, &from, Refusal::BadHandshake, message).await;
        }
    }
}

async fn client(mut stream: ControlStream, from: String, agent: Arc<Agent>) {
    let request = match timeout(
        HANDSHAKE_TIMEOUT,
        read_message::<_, ClientRequest>(&mut stream),
    )
    .await
    {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => {
            let message = "connection closed before the hello message".to_owned();
            return refuse(&mut stream, &from, Refusal::BadHandshake, message).await;
        }
        Ok(Err(err)) => {
            return refuse(
                &mut stream,
                &from,
                Refusal::BadHandshake,
                format!("bad hello: {err}"),
            )
            .await;
        }
        Err(_) => {
            let message = format!(
                "no complete hello within {HANDSHAKE_TIMEOUT:?}; send the preamble and the hello message at once"
            );
            return refuse(&mut stream, &from, Refusal::BadHandshake, message).await;
        }
    };
    let hello = match request {
        ClientRequest::Describe { describe } => {
            return answer_describe(&mut stream, &from, &agent, describe).await;
        }
        ClientRequest::Open(hello) => hello,
    };
    if let Err((refusal, message)) = validate(&hello, is_unix(&stream)) {
        return refuse(&mut stream, &from, refusal, message).await;
    }
    let Some(stream_ref) = hello.stream.clone() else {
        if agent.workflow_channels_only {
            let message = "this agent serves only workflow channels (--workflow-channels-only); \
                           open the channel with --workflow, --edge, --as and its token"
                .to_owned();
            return refuse(&mut stream, &from, Refusal::WorkflowOnly, message).await;
        }
        return local(stream, hello, None, &agent).await;
    };
    let resolved = agent.workflows.resolve(
        &agent.node,
        &stream_ref.workflow,
        &stream_ref.token,
        &stream_ref.edge,
        &stream_ref.function,
        &stream_ref.peer,
        hello.role,
    );
    match resolved {
        Err(Denied::NotAllowed) => {
            let message = "no such workflow channel for this token".to_owned();
            refuse(&mut stream, &from, Refusal::NotAllowed, message).await;
        }
        Err(Denied::WrongNode(node)) => {
            let message = format!(
                "function {:?} runs on node {node}; connect to that node's agent",
                stream_ref.function
            );
            refuse(&mut stream, &from, Refusal::WrongNode, message).await;
        }
        Ok(resolved) if resolved.peer_node == agent.node => {
            let mut hello = hello;
            hello.channel = resolved.stream.to_string();
            local(stream, hello, Some(resolved.edge.buffer), &agent).await;
        }
        Ok(resolved) => cross_node(stream, hello, resolved, &agent).await,
    }
}

async fn answer_describe(stream: &mut ControlStream, from: &str, agent: &Agent, edge: EdgeRef) {
    match agent
        .workflows
        .describe(&edge.workflow, &edge.token, &edge.edge, &edge.function)
    {
        Ok((edge, role)) => {
            let peers = match role {
                Role::Send => edge.consumers,
                Role::Recv => edge.producers,
            };
            let answer = AgentMessage::Edge {
                pattern: edge.pattern,
                role,
                peers,
                buffer: edge.buffer,
            };
            let _ = write_message(stream, &answer).await;
        }
        Err(_) => {
            let message = "no such workflow channel for this token".to_owned();
            refuse(stream, from, Refusal::NotAllowed, message).await;
        }
    }
}

/// Both ends on this node: pair them; the kernel splices their sockets.
/// A client on the Unix socket gets its data socket from the agent: a
/// receiver the listener (bound in the agent's namespace, so any sender on
/// the node reaches it), a sender the connection to its receiver.
async fn local(mut control: ControlStream, mut hello: Hello, window: Option<u64>, agent: &Agent) {
    let name = hello.channel.clone();
    let reach = match &control {
        Either::Left(tcp) => tcp
            .local_addr()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |addr| addr.ip()),
        Either::Right(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let mut listener = None;
    // Rings are handed over the Unix socket only.
    hello.shm &= is_unix(&control);
    if is_unix(&control) {
        match hello.role {
            // The agent connects for it: from the agent's namespace.
            Role::Send => hello.netns_cookie = agent.netns_cookie,
            Role::Recv if hello.listen.is_none() => match bind_any() {
                Ok(bound) => {
                    hello.netns_cookie = agent.netns_cookie;
                    hello.listen = bound.local_addr().ok();
                    listener = Some(bound);
                }
                Err(err) => {
                    let message = format!("the agent could not open a data listener: {err}");
                    return refuse_quietly(&mut control, Refusal::Internal, message).await;
                }
            },
            Role::Recv => {}
        }
    }
    let joined = match agent.registry.join(hello, window, reach) {
        Ok(joined) => joined,
        Err((refusal, message)) => return refuse_quietly(&mut control, refusal, message).await,
    };
    let (id, role) = (joined.id, joined.role);
    let accepted = AgentMessage::Accepted {
        channel_id: id,
        node: agent.node.clone(),
        window: Some(window.unwrap_or(agent.default_window)),
        socket: listener.as_ref().map(|_| Handoff::Listener),
    };
    let mut sent = write_message(&mut control, &accepted).await.is_ok();
    if let (Some(listener), Either::Right(unix)) = (&listener, &control) {
        sent = sent && send_socket(unix, listener.as_fd()).await.is_ok();
    }
    drop(listener);
    if !sent {
        agent.registry.left(&name, role, id);
        return;
    }
    let paired = match joined.pairing {
        Pairing::Now(paired) => Some(paired),
        Pairing::Later(wait) => {
            tokio::select! {
                paired = wait => paired.ok(),
                () = closed(&mut control) => None,
            }
        }
    };
    let Some(PairedEnd {
        message: mut paired,
        fds,
    }) = paired
    else {
        agent.registry.left(&name, role, id);
        return;
    };
    let is_refusal = matches!(paired, AgentMessage::Refused { .. });
    let mut data = None;
    if let (Either::Right(_), Role::Send, AgentMessage::Paired { peer, socket, .. }) =
        (&control, role, &mut paired)
        && socket.is_none()
    {
        match connect_for_sender(peer.take()).await {
            Ok(stream) => {
                *socket = Some(Handoff::Connection);
                data = Some(stream);
            }
            Err(err) => {
                warn!(channel = %name, %err, "could not connect a local sender to its receiver");
                let failed = ClientReport::Done {
                    ok: false,
                    bytes: 0,
                    error: Some(format!(
                        "the agent could not connect to the receiver: {err}"
                    )),
                };
                agent.registry.report(&name, role, failed);
                let message = format!("the agent could not connect to the receiver: {err}");
                return refuse_quietly(&mut control, Refusal::Internal, message).await;
            }
        }
    }
    let mut sent = write_message(&mut control, &paired).await.is_ok();
    if let Either::Right(unix) = &control {
        let handed: Vec<_> = match &data {
            Some(data) => vec![data.as_fd()],
            None => fds.iter().map(|fd| fd.as_fd()).collect(),
        };
        if !handed.is_empty() {
            sent = sent && send_fds(unix, &handed).await.is_ok();
        }
    }
    drop(data);
    drop(fds);
    if !sent || is_refusal {
        agent.registry.left(&name, role, id);
        return;
    }
    reports(control, agent, &name, role, id).await;
}

/// A listener in the agent's namespace on every address (both families
/// where the node has IPv6), for a receiver on the Unix socket.
fn bind_any() -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))
        .or_else(|_| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
}

/// The data connection of a sender on the Unix socket, opened by the agent.
async fn connect_for_sender(peer: Option<SocketAddr>) -> Result<TcpStream, String> {
    let peer = peer.ok_or("the receiver has no data address")?;
    let stream = timeout(DATA_CONNECT_TIMEOUT, TcpStream::connect(peer))
        .await
        .map_err(|_| format!("{peer} did not answer"))?
        .map_err(|err| format!("connecting to {peer}: {err}"))?;
    stream.set_nodelay(true).ok();
    Ok(stream)
}

/// The other end is on another node: the stream's prepared connection
/// between the two agents carries it. A function on the Unix socket is handed
/// that connection; otherwise the agent relays its data connection over it.
async fn cross_node(
    mut control: ControlStream,
    hello: Hello,
    resolved: Resolved,
    agent: &Arc<Agent>,
) {
    let role = hello.role;
    let name = resolved.stream.to_string();
    let window = resolved.edge.buffer;
    if let Some(transport @ (Transport::Shm | Transport::Splice)) = hello.transport {
        let message = format!(
            "transport {transport} works between two ends on one node; the {} runs on node {}, \
             so this stream goes over tcp: drop --transport",
            role.peer(),
            resolved.peer_node
        );
        return refuse_quietly(&mut control, Refusal::TransportUnavailable, message).await;
    }
    let relayed = Arc::new(AtomicU64::new(0));
    let handed = is_unix(&control);
    let id =
        match agent
            .registry
            .join_remote(&name, role, &resolved.peer_node, relayed.clone(), handed)
        {
            Ok(id) => id,
            Err((refusal, message)) => return refuse_quietly(&mut control, refusal, message).await,
        };
    let accepted = AgentMessage::Accepted {
        channel_id: id,
        node: agent.node.clone(),
        window: Some(window),
        socket: None,
    };
    if write_message(&mut control, &accepted).await.is_err() {
        agent.registry.left(&name, role, id);
        return;
    }
    let prepared = match role {
        // Producer side: the connection this agent keeps to the consumer's.
        Role::Send => tokio::select! {
            prepared = agent.crossnode.take(&resolved.stream) => prepared.ok(),
            () = closed(&mut control) => None,
        },
        // Consumer side: a connection the producer's agent started.
        Role::Recv => tokio::select! {
            prepared = agent.crossnode.started(&resolved.stream) => Some(prepared),
            () = closed(&mut control) => None,
        },
    };
    let Some(mut prepared) = prepared else {
        agent.registry.left(&name, role, id);
        return;
    };
    if let Either::Right(unix) = &mut control {
        if let Err(err) = hand_over(unix, role, &mut prepared, window).await {
            warn!(channel = %name, %err, "cross-node stream not handed over");
            agent.registry.left(&name, role, id);
            return;
        }
        drop(prepared);
        return reports(control, agent, &name, role, id).await;
    }
    let Either::Left(mut control) = control else {
        unreachable!("handled above");
    };
    let end = LocalEnd {
        agent,
        name: &name,
        id,
        hello: &hello,
        window,
    };
    let joined = match role {
        Role::Send => end.accept_producer(&mut control, &mut prepared).await,
        Role::Recv => end.connect_consumer(&mut control, &prepared).await,
    };
    let data = match joined {
        Ok(data) => data,
        Err(err) => {
            warn!(channel = %name, %err, "cross-node stream not started");
            agent.registry.left(&name, role, id);
            return;
        }
    };
    let (a, b) = match role {
        Role::Send => (data, prepared.conn),
        Role::Recv => (prepared.conn, data),
    };
    let stream_name = name.clone();
    tokio::spawn(async move {
        let relayed = relay::relay(a, b, relayed).await;
        let (forward, backward) = (relayed.forward, relayed.backward);
        match relayed.error {
            None => debug!(channel = %stream_name, forward, backward, "relay done"),
            Some(err) => info!(channel = %stream_name, forward, backward, %err, "relay broken"),
        }
    });
    reports(Either::Left(control), agent, &name, role, id).await;
}

/// Hands the agents' link to the function on the Unix socket: its bytes then
/// go between the function's socket and the other node's, never through
/// this agent. The producer's side starts the link first.
async fn hand_over(
    unix: &mut UnixStream,
    role: Role,
    prepared: &mut super::crossnode::Prepared,
    window: u64,
) -> Result<(), String> {
    if role == Role::Send {
        relay::start(&mut prepared.conn)
            .await
            .map_err(|e| format!("starting the link: {e}"))?;
    }
    let paired = AgentMessage::Paired {
        transport: Transport::Tcp,
        peer: None,
        key: encode_key(&prepared.key),
        window,
        socket: Some(Handoff::Connection),
    };
    write_message(unix, &paired)
        .await
        .map_err(|e| e.to_string())?;
    send_socket(unix, prepared.conn.as_fd())
        .await
        .map_err(|e| format!("handing the link over: {e}"))
}

/// The function end of a cross-node stream on this node.
struct LocalEnd<'a> {
    agent: &'a Arc<Agent>,
    name: &'a str,
    id: u32,
    hello: &'a Hello,
    window: u64,
}

impl LocalEnd<'_> {
    /// Producer side: tells the producer where to connect, has the kernel
    /// redirect its writes into the prepared link, accepts it, and starts the
    /// link.
    async fn accept_producer(
        &self,
        control: &mut TcpStream,
        prepared: &mut super::crossnode::Prepared,
    ) -> Result<TcpStream, String> {
        let ip = control.local_addr().map_err(|e| e.to_string())?.ip();
        let listener = TcpListener::bind((ip, 0))
            .await
            .map_err(|e| e.to_string())?;
        let peer = listener.local_addr().map_err(|e| e.to_string())?;
        // The producer writes only after the consumer's first credit, which
        // comes back over the link: by then its socket is in the map.
        match self
            .agent
            .datapath
            .install_outbound(self.id, self.hello, peer, &prepared.conn)
        {
            Ok(handle) => {
                // The redirect cannot wait for room in the link (a producer
                // with a non-blocking socket would get a short write and no
                // wake-up): give it room for the whole window, which the
                // credits never let the stream exceed.
                let room = usize::try_from(self.window.saturating_mul(2)).unwrap_or(usize::MAX);
                if let Err(err) = setsockopt(&prepared.conn, sockopt::SndBufForce, &room) {
                    warn!(channel = %self.name, %err, "sizing the link's send buffer failed");
                }
                self.agent
                    .registry
                    .attach_splice(self.name, self.id, handle);
            }
            Err(reason) => {
                debug!(channel = %self.name, %reason, "producer relayed by the agent");
            }
        }
        let paired = AgentMessage::Paired {
            transport: Transport::Tcp,
            peer: Some(peer),
            key: encode_key(&prepared.key),
            window: self.window,
            socket: None,
        };
        write_message(control, &paired)
            .await
            .map_err(|e| e.to_string())?;
        let (data, _) = timeout(DATA_CONNECT_TIMEOUT, listener.accept())
            .await
            .map_err(|_| "the producer did not connect".to_owned())?
            .map_err(|e| e.to_string())?;
        data.set_nodelay(true).ok();
        relay::start(&mut prepared.conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(data)
    }

    /// Consumer side: pairs the consumer, has the kernel deliver what the
    /// agent writes into the consumer's socket, and connects to its data
    /// listener.
    async fn connect_consumer(
        &self,
        control: &mut TcpStream,
        prepared: &super::crossnode::Prepared,
    ) -> Result<TcpStream, String> {
        let listen = self
            .hello
            .listen
            .ok_or("the consumer advertised no data address")?;
        let installed = self.agent.datapath.install(
            self.id,
            self.name,
            self.agent.netns_cookie,
            self.hello.netns_cookie,
            listen,
        );
        match installed {
            Ok(handle) => self
                .agent
                .registry
                .attach_splice(self.name, self.id, handle),
            Err(reason) => {
                debug!(channel = %self.name, %reason, "consumer fed over TCP by the agent");
            }
        }
        let paired = AgentMessage::Paired {
            transport: Transport::Tcp,
            peer: None,
            key: encode_key(&prepared.key),
            window: self.window,
            socket: None,
        };
        write_message(control, &paired)
            .await
            .map_err(|e| e.to_string())?;
        let data = timeout(DATA_CONNECT_TIMEOUT, TcpStream::connect(listen))
            .await
            .map_err(|_| format!("the consumer's listener {listen} did not answer"))?
            .map_err(|e| format!("connecting to the consumer at {listen}: {e}"))?;
        data.set_nodelay(true).ok();
        Ok(data)
    }
}

/// Reads an end's reports until it hangs up.
async fn reports(mut stream: ControlStream, agent: &Agent, name: &str, role: Role, id: u32) {
    loop {
        match read_message::<_, ClientReport>(&mut stream).await {
            Ok(Some(report)) => agent.registry.report(name, role, report),
            Ok(None) => break,
            Err(err) => {
                debug!(channel = %name, %role, %err, "control connection ended with an error");
                break;
            }
        }
    }
    agent.registry.left(name, role, id);
}

/// Resolves when the client closes a connection on which it should be
/// silent (waiting for its peer).
async fn closed(stream: &mut ControlStream) {
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return,
            // A client must not talk before it is paired; ignore the noise.
            Ok(_) => {}
        }
    }
}

/// Whether the client is on the agent's Unix socket (where the agent hands
/// sockets over).
fn is_unix(control: &ControlStream) -> bool {
    matches!(control, Either::Right(_))
}

/// `unix`: a receiver on the agent's Unix socket may leave its data address
/// out; the agent then opens the listener for it.
fn validate(hello: &Hello, unix: bool) -> Result<(), Refused> {
    if hello.stream.is_none() && !valid_channel_name(&hello.channel) {
        let shown: String = hello.channel.chars().take(64).collect();
        return Err((
            Refusal::BadChannelName,
            format!(
                "channel name {shown:?} ({} bytes) is invalid: use 1 to 255 characters from A-Z a-z 0-9 . _ : / -",
                hello.channel.len()
            ),
        ));
    }
    match hello.role {
        Role::Recv => {
            let listen = match (hello.listen, unix) {
                (Some(listen), _) => Some(listen),
                (None, true) => None,
                (None, false) => {
                    return Err((
                        Refusal::BadRequest,
                        "a receiver must advertise its data address (`listen`)".into(),
                    ));
                }
            };
            if let Some(listen) = listen
                && (listen.port() == 0 || listen.ip().is_unspecified())
            {
                return Err((
                    Refusal::BadRequest,
                    format!(
                        "data address {listen} is not connectable: give a concrete IP and port"
                    ),
                ));
            }
            if let Some(window) = hello.window
                && !WINDOW_RANGE.contains(&window)
            {
                return Err((
                    Refusal::BadRequest,
                    format!(
                        "window of {window} bytes is outside {}..={} bytes",
                        WINDOW_RANGE.start(),
                        WINDOW_RANGE.end()
                    ),
                ));
            }
        }
        Role::Send => {
            if hello.listen.is_some() || hello.window.is_some() {
                return Err((
                    Refusal::BadRequest,
                    "`listen` and `window` are for receivers; a sender sends neither".into(),
                ));
            }
        }
    }
    Ok(())
}

async fn refuse(stream: &mut ControlStream, from: &str, error: Refusal, message: String) {
    info!(%from, ?error, %message, "refused a client");
    refuse_quietly(stream, error, message).await;
}

async fn refuse_quietly(stream: &mut ControlStream, error: Refusal, message: String) {
    super::metrics::count_refusal(error);
    let _ = write_message(stream, &AgentMessage::Refused { error, message }).await;
}

/// A connection from another agent.
async fn peer(mut stream: TcpStream, from: SocketAddr, agent: Arc<Agent>) {
    let request = match timeout(HANDSHAKE_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(Some(request))) => request,
        _ => return debug!(%from, "peer connection without a request"),
    };
    match request {
        PeerRequest::Hello { node } => {
            debug!(%from, peer = %node, "peer link opened");
            let hello = PeerAnswer::Hello {
                node: agent.node.clone(),
            };
            if write_message(&mut stream, &hello).await.is_err() {
                return;
            }
            // The link: installs and keep-alives until it closes.
            while let Ok(Some(request)) = read_request(&mut stream).await {
                let answer = answer_peer(&agent, request);
                if write_message(&mut stream, &answer).await.is_err() {
                    return;
                }
            }
        }
        PeerRequest::OpenStream { stream: id, key } => {
            // Answer before handing the connection over.
            let staged = agent.workflows.get(&id.workflow).is_some();
            let answer = if staged {
                PeerAnswer::Ok
            } else {
                PeerAnswer::Error {
                    message: format!("no workflow {:?} on node {}", id.workflow, agent.node),
                }
            };
            if write_message(&mut stream, &answer).await.is_err() || !staged {
                return;
            }
            if let Err(err) = agent.crossnode.accept(id, &key, stream) {
                warn!(%from, %err, "refused a stream connection");
            }
        }
        other => {
            let answer = answer_peer(&agent, other);
            let _ = write_message(&mut stream, &answer).await;
        }
    }
}

/// Applies one request from another agent.
fn answer_peer(agent: &Arc<Agent>, request: PeerRequest) -> PeerAnswer {
    match request {
        PeerRequest::Ping => PeerAnswer::Pong,
        PeerRequest::Prepare { yaml, token } => {
            match Workflow::parse(&yaml, &agent.peers.known_nodes()) {
                Err(errors) => PeerAnswer::Invalid { errors: errors.0 },
                Ok(workflow) => match agent.workflows.prepare(Applied {
                    workflow,
                    yaml,
                    token,
                }) {
                    Ok(()) => PeerAnswer::Ok,
                    Err(message) => PeerAnswer::Error { message },
                },
            }
        }
        PeerRequest::Commit { name } => {
            if agent.workflows.commit(&name) {
                agent.crossnode.refresh();
                info!(workflow = %name, "workflow applied");
                PeerAnswer::Ok
            } else {
                PeerAnswer::Error {
                    message: format!("workflow {name:?} was not prepared here (prepare expired?)"),
                }
            }
        }
        PeerRequest::Abort { name } => {
            agent.workflows.abort(&name);
            PeerAnswer::Ok
        }
        PeerRequest::Delete { name } => {
            agent.workflows.delete(&name);
            agent.crossnode.forget(&name);
            agent.crossnode.refresh();
            info!(workflow = %name, "workflow deleted");
            PeerAnswer::Ok
        }
        PeerRequest::Install { yaml, token } => {
            match Workflow::parse(&yaml, &agent.peers.known_nodes()) {
                Ok(workflow) => {
                    let name = workflow.name.clone();
                    if agent.workflows.get(&name).is_none() {
                        info!(workflow = %name, "workflow installed from a peer");
                    }
                    agent.workflows.install(Applied {
                        workflow,
                        yaml,
                        token,
                    });
                    agent.crossnode.refresh();
                    PeerAnswer::Ok
                }
                Err(errors) => PeerAnswer::Invalid { errors: errors.0 },
            }
        }
        PeerRequest::Hello { .. } | PeerRequest::OpenStream { .. } => PeerAnswer::Error {
            message: "this request opens its own connection".into(),
        },
    }
}
