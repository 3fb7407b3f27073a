//! The agent's channels: pairs one sender with one receiver per name,
//! whichever comes first, tracks each channel to its end and keeps a bounded
//! history of finished ones.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use floki_common::{ChannelRecord, ROLE_SENDER};
use rand::RngCore as _;
use tokio::sync::{Notify, oneshot};
use tracing::{info, warn};

use super::{
    datapath::{Datapath, SpliceHandle},
    transport::{self, Plan},
};
use crate::{
    protocol::{
        KEY_LEN,
        control::{
            AgentMessage, ClientReport, Handoff, Hello, Refusal, Role, Transport, encode_key,
        },
        ring::{self, RingObserver},
    },
    status::{ChannelState, ChannelStatus, Totals},
};

/// Smallest and largest flow-control window a receiver may ask for.
pub const WINDOW_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(1 << 30);

/// Why a channel registered for splicing went over TCP.
const NOT_SPLICED: &str = "not spliced: the kernel saw no write of the sender's data socket; \
     are both ends in the agent's cgroup (see --cgroup)?";

/// A refusal with its explanation.
pub type Refused = (Refusal, String);

/// A client that joined a channel.
pub struct Joined {
    /// Channel id.
    pub id: u32,
    /// Which end.
    pub role: Role,
    /// The pairing: immediate if the peer was waiting.
    pub pairing: Pairing,
}

/// When the pairing comes.
pub enum Pairing {
    /// The peer was waiting: here it is.
    Now(PairedEnd),
    /// Wait for the peer (or a refusal if the agent stops or the two ends
    /// cannot agree on a transport).
    Later(oneshot::Receiver<PairedEnd>),
}

/// What the agent tells an end once paired (or refused).
pub struct PairedEnd {
    /// The message.
    pub message: AgentMessage,
    /// Descriptors handed with it (`shm`: the ring and this end's socket).
    pub fds: Vec<OwnedFd>,
}

impl From<AgentMessage> for PairedEnd {
    fn from(message: AgentMessage) -> Self {
        Self {
            message,
            fds: Vec::new(),
        }
    }
}

#[derive(Default)]
struct End {
    joined: bool,
    bytes: u64,
    outcome: Option<Outcome>,
}

/// How an end's stream ended, as far as the agent knows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// It reported a complete, verified stream.
    Complete,
    /// It reported a failure.
    Failed(String),
    /// Its control connection closed without a final report (it exited right
    /// after the stream, or was killed).
    Left,
}

/// The channel's verdict once both ends are over. A sender only reports
/// success after the receiver acknowledged a verified stream, and a receiver
/// only after verifying the end mark, so one `Complete` end proves the stream
/// whole even when the other left without a word.
fn verdict(ends: &[End; 2]) -> Result<(), String> {
    let outcomes = [&ends[0].outcome, &ends[1].outcome];
    let errors: Vec<String> = [Role::Send, Role::Recv]
        .into_iter()
        .zip(outcomes)
        .filter_map(|(role, outcome)| match outcome {
            Some(Outcome::Failed(err)) => Some(format!("{role}: {err}")),
            _ => None,
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    if outcomes.contains(&&Some(Outcome::Complete)) {
        Ok(())
    } else {
        Err("both ends disconnected without reporting the end of the stream".into())
    }
}

enum Stage {
    Waiting {
        role: Role,
        hello: Hello,
        /// The agent's address as this end reaches it.
        reach: IpAddr,
        notify: oneshot::Sender<PairedEnd>,
    },
    Active {
        transport: Transport,
        /// Why this transport (same-node channels).
        reason: Option<String>,
        splice: Option<SpliceHandle>,
        /// `shm`: the ring's header, for the bytes it carried.
        ring: Option<RingObserver>,
        paired_at: Instant,
        /// Cross-node streams: this end's side of the link to the peer agent.
        remote: Option<Remote>,
    },
}

impl Stage {
    fn active(transport: Transport, reason: Option<String>) -> Self {
        Self::Active {
            transport,
            reason,
            splice: None,
            ring: None,
            paired_at: Instant::now(),
            remote: None,
        }
    }
}

/// A same-node channel's transport, set up: its stage, and what each end
/// is told.
struct SetUp {
    stage: Stage,
    /// Senders on sockets: where to connect.
    connect_to: Option<SocketAddr>,
    /// `shm`: each end's descriptors (sender's first).
    ring_fds: Option<[Vec<OwnedFd>; 2]>,
}

impl SetUp {
    fn socket(
        transport: Transport,
        splice: Option<SpliceHandle>,
        connect_to: Option<SocketAddr>,
        plan: &Plan,
    ) -> Self {
        let mut stage = Stage::active(transport, Some(plan.reason.clone()));
        if let Stage::Active { splice: slot, .. } = &mut stage {
            *slot = splice;
        }
        Self {
            stage,
            connect_to,
            ring_fds: None,
        }
    }

    /// A ring of `window` bytes and the socket pair beside it.
    fn ring(window: u64, reason: String) -> Result<Self, String> {
        let (memory, _) =
            ring::create(window).map_err(|err| format!("creating the ring: {err}"))?;
        let observer =
            RingObserver::new(&memory).map_err(|err| format!("mapping the ring: {err}"))?;
        let (a, b) =
            ring::socket_pair().map_err(|err| format!("creating the socket pair: {err}"))?;
        let second = memory
            .as_fd()
            .try_clone_to_owned()
            .map_err(|err| format!("duplicating the ring: {err}"))?;
        let mut stage = Stage::active(Transport::Shm, Some(reason));
        if let Stage::Active { ring, .. } = &mut stage {
            *ring = Some(observer);
        }
        Ok(Self {
            stage,
            connect_to: None,
            ring_fds: Some([vec![memory, a], vec![second, b]]),
        })
    }

    fn stage_transport(&self) -> Transport {
        match &self.stage {
            Stage::Active { transport, .. } => *transport,
            Stage::Waiting { .. } => unreachable!("a set-up stage is active"),
        }
    }

    /// The `paired` messages (sender's, receiver's), with their descriptors.
    fn messages(&mut self, window: u64) -> (PairedEnd, PairedEnd) {
        let transport = self.stage_transport();
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        let key = encode_key(&key);
        let message = |peer, socket| AgentMessage::Paired {
            transport,
            peer,
            key: key.clone(),
            window,
            socket,
        };
        match self.ring_fds.take() {
            Some([sender, receiver]) => (
                PairedEnd {
                    message: message(None, Some(Handoff::Ring)),
                    fds: sender,
                },
                PairedEnd {
                    message: message(None, Some(Handoff::Ring)),
                    fds: receiver,
                },
            ),
            None => (
                message(self.connect_to, None).into(),
                message(None, None).into(),
            ),
        }
    }
}

/// The local end of a stream whose other end is on another node.
struct Remote {
    /// The function took the agents' link itself (its Unix socket): the
    /// agent moves none of the bytes.
    handed: bool,
    /// Bytes the agent relay moved towards the consumer.
    relayed: Arc<AtomicU64>,
    /// The local end's role: `Send` on the producer's node.
    role: Role,
    /// The peer agent's node.
    peer_node: String,
}

impl Remote {
    /// Bytes this node moved towards the consumer, and the path they took,
    /// given what the kernel program counted for the stream.
    fn path(&self, kernel: Option<u64>, reported: u64) -> (u64, String) {
        let relayed = self.relayed.load(Ordering::Relaxed);
        let peer = &self.peer_node;
        if self.handed {
            let (direction, function) = match self.role {
                Role::Send => ("to", "producer"),
                Role::Recv => ("from", "consumer"),
            };
            return (
                reported,
                format!(
                    "{direction} node {peer}: the agents' link was handed to the {function}; \
                     no byte passes through the agent (bytes as the {function} reports them)"
                ),
            );
        }
        match (self.role, kernel) {
            (Role::Send, Some(kernel)) => (
                kernel + relayed,
                format!(
                    "to node {peer}: {kernel} B redirected by the kernel from the producer's socket \
                     into the agents' link, {relayed} B relayed by the agent"
                ),
            ),
            (Role::Recv, Some(kernel)) => (
                relayed,
                format!(
                    "from node {peer}: relayed from the agents' link with splice(2), {kernel} B \
                     delivered by the kernel into the consumer's socket"
                ),
            ),
            (Role::Send, None) => (
                relayed,
                format!("to node {peer}: relayed by the agent with splice(2)"),
            ),
            (Role::Recv, None) => (
                relayed,
                format!("from node {peer}: relayed by the agent with splice(2)"),
            ),
        }
    }
}

struct Live {
    id: u32,
    created: Instant,
    stage: Stage,
    ends: [End; 2],
    /// Found in the pinned maps after a restart: its ends report to no one,
    /// so the kernel record says when it is over.
    adopted: bool,
}

struct Inner {
    next_id: u32,
    live: HashMap<String, Live>,
    history: VecDeque<ChannelStatus>,
    fallback_bytes_finished: u64,
    shm_bytes_finished: u64,
    done: u64,
    failed: u64,
    closing: bool,
}

/// All channels of this agent.
pub struct Registry {
    node: String,
    datapath: Arc<Datapath>,
    default_window: u64,
    history_limit: usize,
    inner: Mutex<Inner>,
    changed: Notify,
}

fn slot(role: Role) -> usize {
    match role {
        Role::Send => 0,
        Role::Recv => 1,
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(
        node: String,
        datapath: Arc<Datapath>,
        default_window: u64,
        history_limit: usize,
    ) -> Self {
        Self {
            node,
            datapath,
            default_window,
            history_limit,
            inner: Mutex::new(Inner {
                next_id: 1,
                live: HashMap::new(),
                history: VecDeque::new(),
                fallback_bytes_finished: 0,
                shm_bytes_finished: 0,
                done: 0,
                failed: 0,
                closing: false,
            }),
            changed: Notify::new(),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The datapath.
    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    /// Adds a client to its channel, pairing it if its peer is waiting.
    /// `window` overrides the receiver's (workflow edges have their own).
    /// `reach` is the agent's address as the client reaches it: where a
    /// sender connects when the receiver's listener is the agent's own,
    /// bound to every address.
    pub fn join(
        &self,
        hello: Hello,
        window: Option<u64>,
        reach: IpAddr,
    ) -> Result<Joined, Refused> {
        let role = hello.role;
        let mut inner = self.inner.lock().expect("registry lock");
        if inner.closing {
            return Err((
                Refusal::ShuttingDown,
                "the agent is shutting down and takes no new channels; retry on the restarted agent"
                    .into(),
            ));
        }
        let name = hello.channel.clone();
        let Some(live) = inner.live.get_mut(&name) else {
            let id = inner.next_id;
            inner.next_id = inner.next_id.wrapping_add(1).max(1);
            let (notify, wait) = oneshot::channel();
            let mut ends: [End; 2] = Default::default();
            ends[slot(role)].joined = true;
            inner.live.insert(
                name.clone(),
                Live {
                    id,
                    created: Instant::now(),
                    stage: Stage::Waiting {
                        role,
                        hello,
                        reach,
                        notify,
                    },
                    ends,
                    adopted: false,
                },
            );
            info!(channel = %name, id, %role, "waiting for the other end");
            return Ok(Joined {
                id,
                role,
                pairing: Pairing::Later(wait),
            });
        };
        match &live.stage {
            Stage::Waiting { role: waiting, .. } if *waiting != role => {}
            Stage::Waiting { .. } => {
                return Err((
                    Refusal::Busy,
                    format!(
                        "channel '{name}' already has a {role} waiting; one {role} per channel"
                    ),
                ));
            }
            Stage::Active { .. } => {
                return Err((
                    Refusal::Busy,
                    format!(
                        "channel '{name}' is in use by a sender and a receiver; wait until it ends or pick another name"
                    ),
                ));
            }
        }
        let Stage::Waiting {
            hello: waiting_hello,
            reach: waiting_reach,
            notify,
            ..
        } = std::mem::replace(&mut live.stage, Stage::active(Transport::Tcp, None))
        else {
            unreachable!("checked above");
        };
        live.ends[slot(role)].joined = true;
        let id = live.id;
        let (sender, receiver, sender_reach) = match role {
            Role::Send => (&hello, &waiting_hello, reach),
            Role::Recv => (&waiting_hello, &hello, waiting_reach),
        };
        let window = window.or(receiver.window).unwrap_or(self.default_window);
        let setup_started = Instant::now();
        let set_up = transport::plan(sender, receiver, self.datapath.is_ebpf())
            .and_then(|plan| self.set_up(&name, id, plan, sender, receiver, sender_reach, window));
        let mut set_up = match set_up {
            Ok(set_up) => set_up,
            Err(reason) => {
                inner.live.remove(&name);
                warn!(channel = %name, id, %reason, "channel refused at pairing");
                let message = reason;
                let _ = notify.send(
                    AgentMessage::Refused {
                        error: Refusal::TransportUnavailable,
                        message: message.clone(),
                    }
                    .into(),
                );
                self.changed.notify_waiters();
                return Err((Refusal::TransportUnavailable, message));
            }
        };
        let transport = set_up.stage_transport();
        let (to_sender, to_receiver) = set_up.messages(window);
        live.stage = set_up.stage;
        let (mine, theirs) = match role {
            Role::Send => (to_sender, to_receiver),
            Role::Recv => (to_receiver, to_sender),
        };
        // If the waiting end just left, its session reports it and the
        // channel fails: the newcomer learns it from its data connection
        // (or, over a ring, from the socket beside it).
        let _ = notify.send(theirs);
        super::metrics::observe_setup(setup_started.elapsed());
        info!(channel = %name, id, %transport, "paired");
        self.changed.notify_waiters();
        Ok(Joined {
            id,
            role,
            pairing: Pairing::Now(mine),
        })
    }

    /// Sets up the transport `plan` names; a transport the ends did not insist
    /// on falls back to TCP if it cannot be set up.
    #[allow(clippy::too_many_arguments)]
    fn set_up(
        &self,
        name: &str,
        id: u32,
        plan: Plan,
        sender: &Hello,
        receiver: &Hello,
        sender_reach: IpAddr,
        window: u64,
    ) -> Result<SetUp, String> {
        // Where the sender connects: the receiver's listener, or the agent's
        // (bound to every address) as the sender reaches the agent.
        let connect_to = receiver.listen.map(|listen| {
            if listen.ip().is_unspecified() {
                SocketAddr::new(sender_reach, listen.port())
            } else {
                listen
            }
        });
        let attempt = match plan.transport {
            Transport::Shm => SetUp::ring(window, plan.reason.clone()),
            Transport::Splice => match connect_to {
                Some(addr) => self
                    .datapath
                    .install(id, name, sender.netns_cookie, receiver.netns_cookie, addr)
                    .map(|handle| {
                        SetUp::socket(Transport::Splice, Some(handle), connect_to, &plan)
                    }),
                None => Err("the receiver has no data address".into()),
            },
            Transport::Tcp => Ok(SetUp::socket(Transport::Tcp, None, connect_to, &plan)),
        };
        match attempt {
            Ok(set_up) => Ok(set_up),
            Err(reason) if plan.insisted => {
                Err(format!("transport {} failed: {reason}", plan.transport))
            }
            Err(reason) => {
                warn!(channel = %name, id, %reason, transport = %plan.transport, "not set up: plain TCP");
                let plan = Plan {
                    reason: format!("{} could not be set up ({reason})", plan.transport),
                    ..plan
                };
                Ok(SetUp::socket(Transport::Tcp, None, connect_to, &plan))
            }
        }
    }

    /// Adds the local end of a cross-node stream: its other end is on
    /// `peer_node`, reached through the link between the two agents (the
    /// agent relay counts into `relayed`).
    pub fn join_remote(
        &self,
        name: &str,
        role: Role,
        peer_node: &str,
        relayed: Arc<AtomicU64>,
        handed: bool,
    ) -> Result<u32, Refused> {
        let mut inner = self.inner.lock().expect("registry lock");
        if inner.closing {
            return Err((
                Refusal::ShuttingDown,
                "the agent is shutting down and takes no new channels; retry on the restarted agent".into(),
            ));
        }
        if inner.live.contains_key(name) {
            return Err((
                Refusal::Busy,
                format!("channel '{name}' already has a {role} on this node"),
            ));
        }
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1).max(1);
        let mut ends: [End; 2] = Default::default();
        ends[slot(role)].joined = true;
        // The far end reports to its own agent.
        ends[slot(role.peer())].outcome = Some(Outcome::Left);
        let mut stage = Stage::active(
            Transport::Tcp,
            Some(format!("the other end is on node {peer_node}")),
        );
        if let Stage::Active { remote, .. } = &mut stage {
            *remote = Some(Remote {
                handed,
                relayed,
                role,
                peer_node: peer_node.to_owned(),
            });
        }
        inner.live.insert(
            name.to_owned(),
            Live {
                id,
                created: Instant::now(),
                stage,
                ends,
                adopted: false,
            },
        );
        info!(channel = %name, id, %role, "cross-node stream opened");
        self.changed.notify_waiters();
        Ok(id)
    }

    /// Records the kernel's part in cross-node stream `id`: the producer's
    /// writes redirected into the link, or the link's bytes delivered into
    /// the consumer's socket. Undone when the stream ends.
    pub fn attach_splice(&self, name: &str, id: u32, handle: SpliceHandle) {
        let mut inner = self.inner.lock().expect("registry lock");
        match inner.live.get_mut(name) {
            Some(Live {
                id: live_id,
                stage: Stage::Active { splice, .. },
                ..
            }) if *live_id == id => *splice = Some(handle),
            _ => self.datapath.remove(&handle),
        }
    }

    /// Lists the spliced channels a previous agent left in flight (found in
    /// the pinned maps) as active, and numbers new channels after them.
    pub fn adopt(&self, channels: &[(u32, ChannelRecord)]) {
        let mut inner = self.inner.lock().expect("registry lock");
        for (id, record) in channels {
            let mut name = record.name().to_owned();
            if name.is_empty() || inner.live.contains_key(&name) {
                name = format!("adopted-{id}");
            }
            let mut stage = Stage::active(
                Transport::Splice,
                Some("adopted from the pinned maps after the agent restarted".into()),
            );
            if let Stage::Active { splice, .. } = &mut stage {
                *splice = Some(SpliceHandle::adopted(*id));
            }
            let mut ends: [End; 2] = Default::default();
            for end in &mut ends {
                end.joined = true;
            }
            info!(channel = %name, id, bytes = record.bytes[ROLE_SENDER as usize], "adopted a spliced channel in flight");
            inner.live.insert(
                name,
                Live {
                    id: *id,
                    created: Instant::now(),
                    stage,
                    ends,
                    adopted: true,
                },
            );
            inner.next_id = inner.next_id.max(id.wrapping_add(1).max(1));
        }
    }

    /// Moves adopted channels whose sockets have both closed to the
    /// history (`closed`); returns how many are still in flight.
    pub fn reap_adopted(&self) -> usize {
        let mut inner = self.inner.lock().expect("registry lock");
        let over: Vec<String> = inner
            .live
            .iter()
            .filter(|(_, live)| live.adopted)
            .filter(|(_, live)| match &live.stage {
                Stage::Active {
                    splice: Some(handle),
                    ..
                } => self
                    .datapath
                    .record(handle)
                    .is_none_or(|record| !record.in_flight()),
                _ => true,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in over {
            let live = inner.live.remove(&name).expect("listed above");
            let mut status = self.describe(&name, &live);
            status.state = ChannelState::Closed;
            status.note = Some(
                "its sockets closed after the agent restarted: the ends checked the stream \
                 themselves; bytes as the kernel spliced them"
                    .into(),
            );
            if let Stage::Active {
                splice: Some(handle),
                paired_at,
                ..
            } = &live.stage
            {
                status.duration_secs = Some(paired_at.elapsed().as_secs_f64());
                self.datapath.remove(handle);
            }
            info!(channel = %name, id = status.id, bytes = status.bytes, "adopted channel closed");
            inner.history.push_front(status);
            inner.history.truncate(self.history_limit);
            self.changed.notify_waiters();
        }
        inner.live.values().filter(|live| live.adopted).count()
    }

    /// Records a report of an end.
    pub fn report(&self, name: &str, role: Role, report: ClientReport) {
        let mut inner = self.inner.lock().expect("registry lock");
        let Some(live) = inner.live.get_mut(name) else {
            return;
        };
        let end = &mut live.ends[slot(role)];
        match report {
            ClientReport::Progress { bytes } => end.bytes = bytes,
            ClientReport::Done { ok, bytes, error } => {
                end.bytes = bytes;
                end.outcome = Some(if ok {
                    Outcome::Complete
                } else {
                    Outcome::Failed(error.unwrap_or_else(|| "failed without a reason".into()))
                });
            }
        }
        self.finish_if_over(&mut inner, name);
    }

    /// An end's control connection closed.
    pub fn left(&self, name: &str, role: Role, id: u32) {
        let mut inner = self.inner.lock().expect("registry lock");
        let Some(live) = inner.live.get_mut(name) else {
            return;
        };
        if live.id != id {
            return;
        }
        if let Stage::Waiting { role: waiting, .. } = &live.stage
            && *waiting == role
        {
            inner.live.remove(name);
            info!(channel = %name, id, %role, "left before its peer joined");
            return;
        }
        let end = &mut live.ends[slot(role)];
        if end.outcome.is_none() {
            end.outcome = Some(Outcome::Left);
        }
        self.finish_if_over(&mut inner, name);
    }

    fn finish_if_over(&self, inner: &mut Inner, name: &str) {
        let over = inner.live.get(name).is_some_and(|live| {
            matches!(live.stage, Stage::Active { .. })
                && live.ends.iter().all(|end| end.outcome.is_some())
        });
        if !over {
            return;
        }
        let live = inner.live.remove(name).expect("checked above");
        let status = self.describe(name, &live);
        if let Stage::Active {
            splice: Some(handle),
            ..
        } = &live.stage
        {
            self.datapath.remove(handle);
        }
        match status.transport {
            Some(Transport::Tcp) => inner.fallback_bytes_finished += status.bytes,
            Some(Transport::Shm) => inner.shm_bytes_finished += status.bytes,
            _ => {}
        }
        match status.state {
            ChannelState::Done => inner.done += 1,
            _ => {
                inner.failed += 1;
                super::metrics::count_failed_channel();
            }
        }
        info!(
            channel = %name,
            id = status.id,
            state = ?status.state,
            bytes = status.bytes,
            error = status.error.as_deref().unwrap_or(""),
            "channel finished"
        );
        inner.history.push_front(status);
        inner.history.truncate(self.history_limit);
        self.changed.notify_waiters();
    }

    fn describe(&self, name: &str, live: &Live) -> ChannelStatus {
        let mut status = ChannelStatus {
            id: live.id,
            name: name.to_owned(),
            state: ChannelState::Waiting,
            transport: None,
            bytes: 0,
            stream_bytes: live.ends.iter().map(|end| end.bytes).max().unwrap_or(0),
            kernel_bytes: None,
            peer_node: None,
            ends: [Role::Send, Role::Recv]
                .into_iter()
                .filter(|role| live.ends[slot(*role)].joined)
                .map(|role| role.to_string())
                .collect(),
            age_secs: live.created.elapsed().as_secs_f64(),
            duration_secs: None,
            error: None,
            note: None,
            reason: None,
        };
        let Stage::Active {
            transport,
            reason,
            splice,
            ring,
            paired_at,
            remote,
        } = &live.stage
        else {
            return status;
        };
        // Counted by the kernel program, framing included.
        let kernel = splice
            .as_ref()
            .and_then(|handle| self.datapath.record(handle))
            .map(|record| record.bytes[ROLE_SENDER as usize]);
        status.kernel_bytes = kernel;
        status.transport = Some(*transport);
        status.reason.clone_from(reason);
        let received = live.ends[slot(Role::Recv)].bytes;
        match remote {
            // What the sender published into the ring, read from its header.
            _ if ring.is_some() => {
                status.bytes = ring.as_ref().map_or(0, RingObserver::sent).max(received);
            }
            Some(remote) => {
                let (bytes, note) = remote.path(kernel, live.ends[slot(remote.role)].bytes);
                status.bytes = bytes;
                status.note = Some(note);
                status.peer_node = Some(remote.peer_node.clone());
            }
            // Proof over claims: a splice the kernel never carried a byte of
            // (an end outside the agent's cgroup) is reported as TCP.
            None => match kernel {
                Some(0) if status.stream_bytes > 0 => {
                    status.transport = Some(Transport::Tcp);
                    status.bytes = received;
                    status.note = Some(NOT_SPLICED.to_owned());
                }
                Some(bytes) => status.bytes = bytes,
                None => status.bytes = received,
            },
        }
        let over = live.ends.iter().all(|end| end.outcome.is_some());
        status.state = match over.then(|| verdict(&live.ends)) {
            None => ChannelState::Active,
            Some(Ok(())) => ChannelState::Done,
            Some(Err(err)) => {
                status.error = Some(err);
                ChannelState::Failed
            }
        };
        status.duration_secs = over.then(|| paired_at.elapsed().as_secs_f64());
        status
    }

    /// Channels (live first, then history) and the registry's totals.
    pub fn snapshot(&self) -> (Vec<ChannelStatus>, Totals) {
        let inner = self.inner.lock().expect("registry lock");
        let mut live: Vec<ChannelStatus> = inner
            .live
            .iter()
            .map(|(name, live)| self.describe(name, live))
            .collect();
        live.sort_by_key(|status| status.id);
        let active = |transport| -> u64 {
            live.iter()
                .filter(|status| status.transport == Some(transport))
                .map(|status| status.bytes)
                .sum()
        };
        let totals = Totals {
            fallback_bytes: inner.fallback_bytes_finished + active(Transport::Tcp),
            shm_bytes: inner.shm_bytes_finished + active(Transport::Shm),
            active_channels: live
                .iter()
                .filter(|status| status.state == ChannelState::Active)
                .count() as u64,
            done_channels: inner.done,
            failed_channels: inner.failed,
            ..Totals::default()
        };
        live.extend(inner.history.iter().cloned());
        (live, totals)
    }

    /// Stops taking channels: waiting ends are told, active ones carry on.
    pub fn close(&self) {
        let mut inner = self.inner.lock().expect("registry lock");
        inner.closing = true;
        self.refuse_waiting_in(&mut inner, "", Refusal::ShuttingDown, |name| {
            format!(
                "the agent is shutting down before channel '{name}' was paired; retry on the restarted agent"
            )
        });
    }

    /// Refuses the waiting ends of channels named `prefix...` (a deleted
    /// workflow's): they hear it at once instead of waiting for a peer that
    /// can no longer come.
    pub fn refuse_waiting(&self, prefix: &str) {
        let mut inner = self.inner.lock().expect("registry lock");
        self.refuse_waiting_in(&mut inner, prefix, Refusal::NotAllowed, |name| {
            format!("the workflow of channel '{name}' was deleted before its other end came")
        });
    }

    /// Drops the waiting ends of channels named `prefix...`, telling each
    /// why.
    fn refuse_waiting_in(
        &self,
        inner: &mut Inner,
        prefix: &str,
        error: Refusal,
        message: impl Fn(&str) -> String,
    ) {
        let waiting: Vec<String> = inner
            .live
            .iter()
            .filter(|(name, live)| {
                name.starts_with(prefix) && matches!(live.stage, Stage::Waiting { .. })
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in waiting {
            if let Some(Live {
                stage: Stage::Waiting { notify, .. },
                ..
            }) = inner.live.remove(&name)
            {
                let refused = AgentMessage::Refused {
                    error,
                    message: message(&name),
                };
                let _ = notify.send(refused.into());
            }
        }
        self.changed.notify_waiters();
    }

    /// Number of paired channels not finished yet.
    pub fn active(&self) -> usize {
        self.inner.lock().expect("registry lock").live.len()
    }

    /// Waits until no channel is live, or `limit` passes; returns how many
    /// are still live.
    pub async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            let live = self.active();
            if live == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.active();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(sender: Option<Outcome>, receiver: Option<Outcome>) -> [End; 2] {
        [
            End {
                joined: true,
                bytes: 0,
                outcome: sender,
            },
            End {
                joined: true,
                bytes: 0,
                outcome: receiver,
            },
        ]
    }

    #[test]
    fn one_complete_end_proves_the_stream() {
        assert_eq!(
            verdict(&ends(Some(Outcome::Complete), Some(Outcome::Left))),
            Ok(())
        );
        assert_eq!(
            verdict(&ends(Some(Outcome::Left), Some(Outcome::Complete))),
            Ok(())
        );
        assert_eq!(
            verdict(&ends(Some(Outcome::Complete), Some(Outcome::Complete))),
            Ok(())
        );
    }

    #[test]
    fn failures_and_silence_fail_the_channel() {
        let failed = verdict(&ends(
            Some(Outcome::Complete),
            Some(Outcome::Failed("x".into())),
        ));
        assert_eq!(failed, Err("receiver: x".into()));
        assert!(verdict(&ends(Some(Outcome::Left), Some(Outcome::Left))).is_err());
    }
}
