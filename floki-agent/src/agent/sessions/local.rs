//! An end whose peer is on this node: it joins the channel core, is
//! accepted, waits for its peer and is told its part (where to connect, or a
//! ring), then reports until it hangs up. A client on the Unix socket gets
//! its data socket from the agent: a receiver the listener (bound in the
//! agent's namespace, so any sender on the node reaches it: with `paired`,
//! and only when the pairing is not over a ring, if its hello said
//! `listener_at_pairing`; else with `accepted`), a sender the connection to
//! its receiver; or, over `shm`, both the ring.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd as _, BorrowedFd},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use floki_proto::{
    control::{
        AgentMessage, ClientReport, ControlStream, Handoff, Hello, Refusal, Role, encode_key,
        write_message, write_messages,
    },
    handoff::send_fds,
};
use tokio::{
    net::TcpStream,
    sync::oneshot,
    time::{Sleep, timeout},
};
use tokio_util::either::Either;
use tracing::warn;

use super::{
    Kept, KeptRingEnd, ReportReader, WhileWaiting, handshake::refuse_quietly, is_unix, reports,
};
use crate::agent::{
    Agent,
    channels::{
        EndKind, JoinRequest, Joined, LocalEnd, Membership, Paired, Pairing, Refused, RingPart,
    },
    store::ends::{self, Meeting},
    transport::{RingFile, listener_failed, open_loopback_listener},
};

/// How long the agent waits to connect a Unix-socket sender to its receiver.
const DATA_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the session knows of a same-node end beyond its hello.
#[derive(Default)]
pub struct Local {
    /// The channel's window when it is not the receiver's (a workflow
    /// edge's buffer).
    pub window: Option<u64>,
    /// A sender whose stream the store may take if its receiver does not
    /// come: how the store meets the channel.
    pub storable: Option<Meeting>,
    /// The end was told `accepted` already (a producer whose consumer's
    /// node is unreachable, moved here from a cross-node stream).
    pub accepted: bool,
    /// The store takes the stream at once (that producer waited already).
    pub store_now: bool,
    /// The caller serves the client's next request on this connection
    /// after the end's `done` (the end is told `again`).
    pub again: bool,
}

/// Serves an end of a same-node channel (a function, or the agent's store
/// when the hello says so). A function's connection comes back once its end
/// said `done`: it may carry the function's next request.
pub fn serve(
    connection: Kept,
    hello: Hello,
    local: Local,
    agent: &Agent,
) -> impl Future<Output = Option<Kept>> + Send + '_ {
    // The set-up is on the heap, and only while the end joins, waits and
    // is handed its part: what stays in the connection's task for the
    // channel's life is the reading of its reports (`bench channels`: the
    // agent's RSS per channel).
    let setting_up = Box::pin(set_up(connection, hello, local, agent));
    async move { setting_up.await?.report().await }
}

/// An end paired and handed its part: what remains is its reports.
struct Handed {
    control: ControlStream,
    reader: ReportReader,
    membership: Membership,
    name: String,
    /// The channel's ring, which the end may keep with its connection.
    ring: Option<Arc<RingFile>>,
    again: bool,
}

impl Handed {
    /// Passes the end's reports on until it hangs up, or until its `done`
    /// when it may send another request (then its connection comes back).
    async fn report(self) -> Option<Kept> {
        let Self {
            control,
            reader,
            membership,
            name,
            ring,
            again,
        } = self;
        let (control, reader, done) = reports(control, &membership, &name, reader, again).await;
        // The end leaves its channel before its connection closes (or
        // carries its next request), so that neither comes before the
        // leave.
        let role = membership.role();
        drop(membership);
        done.map(|_| Kept {
            stream: control,
            reader,
            ring: ring.map(|file| KeptRingEnd { file, role }),
            link: None,
        })
    }
}

/// Joins the end to its channel, waits for its peer and hands it its part;
/// `None` if it was refused or hung up meanwhile.
async fn set_up(connection: Kept, mut hello: Hello, local: Local, agent: &Agent) -> Option<Handed> {
    let Kept {
        stream: mut control,
        mut reader,
        ring: kept_ring,
        // A link is kept for its own stream across nodes only.
        link: _,
    } = connection;
    let name = hello.channel.clone();
    let role = hello.role;
    // The store's ends are the agent's own, one connection per stream.
    let again = local.again && !hello.store;
    let window = local.window;
    // What a sender may hold before pairing; a receiver hears its own.
    let holds = window
        .or(hello.window)
        .unwrap_or(agent.channels.default_window());
    let reach = match &control {
        Either::Left(tcp) => tcp
            .local_addr()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |addr| addr.ip()),
        Either::Right(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let listener = match act_for_unix_client(&control, &mut hello, agent) {
        Ok(listener) => listener,
        Err(message) => {
            refuse_quietly(agent, &mut control, Refusal::Internal, message).await;
            return None;
        }
    };
    // The ring of this connection's last channel, if the client still
    // holds it.
    let kept_ring = kept_ring.filter(|_| hello.kept_ring).map(|kept| kept.file);
    let end = LocalEnd {
        hello,
        reach,
        kept_ring,
    };
    let request = JoinRequest {
        name: name.clone(),
        role,
        end: if end.hello.store {
            EndKind::Store(end)
        } else {
            EndKind::Local(end)
        },
        window,
    };
    let Joined {
        membership,
        pairing,
    } = match agent.channels.join_when_free(request).await {
        Ok(joined) => joined,
        Err((refusal, message)) => {
            refuse_quietly(agent, &mut control, refusal, message).await;
            return None;
        }
    };
    let accepted = AgentMessage::Accepted {
        channel_id: membership.id(),
        node: agent.node.clone(),
        window: Some(holds),
        socket: listener.as_ref().map(|_| Handoff::Listener),
    };
    let handed: Vec<BorrowedFd<'_>> = listener.iter().map(|l| l.as_fd()).collect();
    // An end paired at once hears `accepted` with its `paired`, in one
    // write: woken once, it finds its pairing with its acceptance.
    let mut untold = None;
    if !local.accepted {
        if matches!(pairing, Pairing::Now(_)) && handed.is_empty() {
            untold = Some(accepted);
        } else if !tell(&mut control, &[&accepted], &handed).await {
            return None;
        }
    }
    drop(listener);
    let paired = match pairing {
        Pairing::Now(paired) => Ok(paired),
        Pairing::Later(wait) => {
            let storable = local.storable.map(|meeting| (meeting, local.store_now));
            let waited = wait_for_peer(&mut control, &mut reader, wait, storable, agent);
            waited.await?
        }
        Pairing::Elsewhere => unreachable!("a local end pairs on this node"),
    };
    match paired {
        Ok(paired) => {
            let ring = paired.ring_file.clone();
            let told = Told {
                before: untold.as_ref(),
                again,
            };
            if hand_over(&mut control, &membership, paired, agent, &name, told).await {
                return Some(Handed {
                    control,
                    reader,
                    membership,
                    name,
                    ring,
                    again,
                });
            }
        }
        Err((error, message)) => {
            let _ = write_message(&mut control, &AgentMessage::Refused { error, message }).await;
        }
    }
    None
}

/// Waits for the peer; `None` if the end hung up meanwhile. A storable
/// sender's stream goes to the store once the sender has had nothing more
/// to buffer (it said `waiting`: its window is full) for the store's grace
/// period, or at once when it is finishing (its whole stream buffered).
async fn wait_for_peer(
    control: &mut ControlStream,
    reader: &mut ReportReader,
    wait: oneshot::Receiver<Result<Paired, Refused>>,
    storable: Option<(Meeting, bool)>,
    agent: &Agent,
) -> Option<Result<Paired, Refused>> {
    let now = storable.as_ref().is_some_and(|(_, now)| *now);
    let mut storable = storable.map(|(meeting, _)| meeting);
    let mut grace: Option<Pin<Box<Sleep>>> =
        now.then(|| Box::pin(tokio::time::sleep(Duration::ZERO)));
    tokio::pin!(wait);
    let mut said = 0;
    loop {
        tokio::select! {
            paired = &mut wait => return paired.ok(),
            report = reader.next_while_waiting(control, &mut said) => match report {
                // Finishing: the whole stream is in the sender's buffer, and
                // storing it costs a copy of at most that; waiting would
                // cost the producer's time.
                WhileWaiting::Waiting { finishing: true } if storable.is_some() => {
                    grace = Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
                }
                WhileWaiting::Waiting { .. } if storable.is_some() && grace.is_none() => {
                    grace = Some(Box::pin(tokio::time::sleep(agent.store.config().grace)));
                }
                WhileWaiting::Waiting { .. } => {}
                WhileWaiting::Gone => return None,
            },
            () = async { grace.as_mut().expect("checked").await }, if grace.is_some() => {
                grace = None;
                if let Some(meeting) = storable.take() {
                    ends::take_in(agent.store.clone(), meeting);
                }
            }
        }
    }
}

/// A client on the Unix socket: the agent acts for it in its own network
/// namespace (it connects for senders, opens a receiver's listener); the
/// ring is offered there only.
fn act_for_unix_client(
    control: &ControlStream,
    hello: &mut Hello,
    agent: &Agent,
) -> Result<Option<std::net::TcpListener>, String> {
    hello.shm &= is_unix(control);
    if !is_unix(control) {
        return Ok(None);
    }
    match hello.role {
        Role::Send => hello.netns_cookie = agent.netns_cookie,
        // The agent opens the listener at pairing, if the pairing needs one.
        Role::Recv if hello.listen.is_none() && hello.listener_at_pairing => {
            hello.netns_cookie = agent.netns_cookie;
        }
        Role::Recv if hello.listen.is_none() => {
            let bound = open_loopback_listener().map_err(|err| listener_failed(&err))?;
            hello.netns_cookie = agent.netns_cookie;
            hello.listen = bound.local_addr().ok();
            return Ok(Some(bound));
        }
        Role::Recv => {}
    }
    Ok(None)
}

/// Tells the end its part: the `paired` message, with the ring or (for a
/// sender on the Unix socket) the connection to its receiver. `false` if the
/// end could not be told.
async fn hand_over(
    control: &mut ControlStream,
    membership: &Membership,
    paired: Paired,
    agent: &Agent,
    name: &str,
    told: Told<'_>,
) -> bool {
    let unix_sender = is_unix(control) && membership.role() == Role::Send;
    let mut message = paired_message(&paired, told.again);
    let mut data = None;
    match &paired.ring {
        Some(RingPart::Handed(memory, peer)) => {
            set_socket(&mut message, Handoff::Ring);
            return tell(
                control,
                &told.with(&message),
                &[memory.as_fd(), peer.as_fd()],
            )
            .await;
        }
        // Both ends hold it already.
        Some(RingPart::Kept) => {
            set_socket(&mut message, Handoff::KeptRing);
            return tell(control, &told.with(&message), &[]).await;
        }
        None => {}
    }
    if let Some(listener) = &paired.listener {
        set_socket(&mut message, Handoff::Listener);
        return tell(control, &told.with(&message), &[listener.as_fd()]).await;
    }
    if unix_sender {
        match connect_for_sender(paired.connect_to).await {
            Ok(stream) => {
                set_socket(&mut message, Handoff::Connection);
                if let AgentMessage::Paired { peer, .. } = &mut message {
                    *peer = None;
                }
                data = Some(stream);
            }
            Err(err) => {
                warn!(channel = %name, %err, "could not connect a local sender to its receiver");
                let message = format!("the agent could not connect to the receiver: {err}");
                membership.report(ClientReport::Done {
                    ok: false,
                    bytes: 0,
                    error: Some(message.clone()),
                });
                refuse_quietly(agent, control, Refusal::Internal, message).await;
                return false;
            }
        }
    }
    let handed: Vec<BorrowedFd<'_>> = data.iter().map(|d| d.as_fd()).collect();
    tell(control, &told.with(&message), &handed).await
}

/// How an end hears its `paired`.
struct Told<'a> {
    /// Its `accepted`, if it was paired at once and not told yet: both go
    /// in one write.
    before: Option<&'a AgentMessage>,
    /// It may send its next hello on this connection after its `done`.
    again: bool,
}

impl<'a> Told<'a> {
    /// The messages to write: `paired`, after `accepted` if still untold.
    fn with(&self, paired: &'a AgentMessage) -> Vec<&'a AgentMessage> {
        self.before.into_iter().chain([paired]).collect()
    }
}

/// The `paired` message of `paired`; `again`: the end may send its next
/// hello on this connection after its `done`.
fn paired_message(paired: &Paired, again: bool) -> AgentMessage {
    AgentMessage::Paired {
        transport: paired.transport,
        peer: paired.connect_to,
        key: encode_key(&paired.key),
        window: paired.window,
        socket: None,
        stored: paired.stored,
        again,
        link: false,
        key_sent: false,
        eager: paired.eager,
        unstarted: false,
    }
}

fn set_socket(message: &mut AgentMessage, handoff: Handoff) {
    if let AgentMessage::Paired { socket, .. } = message {
        *socket = Some(handoff);
    }
}

/// Writes `messages` (in one write) and hands `fds` over after them (Unix
/// socket only); `false` if the client is gone.
async fn tell(
    control: &mut ControlStream,
    messages: &[&AgentMessage],
    fds: &[BorrowedFd<'_>],
) -> bool {
    if write_messages(control, messages).await.is_err() {
        return false;
    }
    match (&*control, fds.is_empty()) {
        (_, true) => true,
        (Either::Right(unix), false) => send_fds(unix, fds).await.is_ok(),
        (Either::Left(_), false) => false,
    }
}

/// The data connection of a sender on the Unix socket, opened by the agent
/// in its own namespace, and only to an address of that namespace.
async fn connect_for_sender(peer: Option<SocketAddr>) -> Result<TcpStream, String> {
    let peer = peer.ok_or("the receiver has no data address")?;
    crate::agent::transport::check_own_address(peer, "the receiver's data address")?;
    let stream = timeout(DATA_CONNECT_TIMEOUT, TcpStream::connect(peer))
        .await
        .map_err(|_| format!("{peer} did not answer"))?
        .map_err(|err| format!("connecting to {peer}: {err}"))?;
    stream.set_nodelay(true).ok();
    Ok(stream)
}
