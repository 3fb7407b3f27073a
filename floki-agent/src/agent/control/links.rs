//! The links of cross-node streams, prepared before the functions run.
//!
//! The producer's agent keeps, for every stream of an applied workflow that
//! leaves its node, one spare connection open to the consumer's agent
//! (opened at apply, replaced when it breaks or after each use). When the
//! producer connects, its agent takes that connection, sends one start byte
//! and hands it to the producer or relays the producer's data connection
//! over it; the consumer's agent, on the start byte, does the same for the
//! consumer. No set-up round trip between agents happens once a function is
//! there. A link whose stream went across verified to functions on the Unix
//! socket carries the stream's next use again (`sessions::remote`): the
//! consumer's agent waits for its next start byte here ([`PreparedLinks::rearm`]).

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd, AsRawFd as _},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    net::TcpStream,
    sync::{Notify, broadcast, mpsc, oneshot},
};
use tracing::{debug, info, warn};

use super::{
    peers::{
        Peers,
        protocol::{LinkStart, PeerAnswer, PeerRequest},
    },
    workflows::Workflows,
};
use floki_proto::link_start::FirstByte;
use floki_proto::{KEY_LEN, control::read_message};

use crate::workflow::StreamId;

/// A prepared stream connection and the key of this use of the stream.
pub struct Prepared {
    /// Connection between the two agents.
    pub conn: TcpStream,
    /// Pairing key both functions get.
    pub key: [u8; KEY_LEN],
    /// Consumer side: the producer waits for its consumer (never stored).
    pub live: bool,
    /// Which of this agent's links it is: a consumer that kept it from its
    /// last stream is not handed it again.
    pub id: u64,
    /// Consumer side: which start this is (0 before its start byte): the
    /// store's grace period runs for one start, never for a later one.
    pub start: u64,
}

impl Prepared {
    /// Takes the link out of this agent's reactor while a function streams
    /// over it: registered, every segment of the stream would wake the
    /// agent for nothing.
    pub fn park(self) -> std::io::Result<Parked> {
        Ok(Parked {
            conn: self.conn.into_std()?,
            key: self.key,
            id: self.id,
        })
    }
}

/// A link handed to a function, held by this agent for the stream's next
/// use but out of its reactor ([`Prepared::park`]).
pub struct Parked {
    /// This agent's descriptor of the link.
    pub conn: std::net::TcpStream,
    key: [u8; KEY_LEN],
    id: u64,
}

impl Parked {
    /// The pairing key of the stream's uses over this link.
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The link back in the reactor, for its next start. Only between two
    /// streams over it: the function that made the shared open file
    /// blocking does no I/O on it then, and makes it blocking again itself
    /// when it takes the link up.
    pub fn unpark(self) -> std::io::Result<Prepared> {
        self.conn.set_nonblocking(true)?;
        Ok(Prepared {
            conn: TcpStream::from_std(self.conn)?,
            key: self.key,
            live: false,
            id: self.id,
            start: 0,
        })
    }
}

/// A new link's [`Prepared::id`].
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A start byte's [`Prepared::start`].
fn next_start() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One start of a stream on this (the consumer's) node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// The stream.
    pub stream: StreamId,
    /// Which start it is ([`Prepared::start`]).
    pub start: u64,
    /// The producer's run, for the store.
    pub run: Option<String>,
}

type Taker = mpsc::Sender<oneshot::Sender<Prepared>>;

/// What [`PreparedLinks::for_consumer`] found for a waiting consumer.
pub enum ForConsumer {
    /// A link its producer started: the agent read the start.
    Started(Prepared),
    /// A link still waiting for its start, lent to the consumer, which
    /// reads the start itself.
    Unstarted(Prepared),
}

/// Consumer side: a link waiting for its start byte, which a consumer
/// already waiting may be lent instead ([`PreparedLinks::lend_armed`]).
struct Armed {
    id: u64,
    /// Never carried a stream: the link the producer's agent will start
    /// for a new producer process (a rearmed one waits for the producer
    /// that kept it).
    fresh: bool,
    /// Asks its watch to let go of it, unless its start came first.
    withdraw: oneshot::Sender<Withdraw>,
}

/// What the watch of an [`Armed`] link does with it instead of waiting for
/// its start.
enum Withdraw {
    /// Sends it back on this, for a consumer to be lent.
    Lend(oneshot::Sender<Prepared>),
    /// Closes it: its workflow was deleted.
    Close,
}

/// The cross-node streams of this agent.
pub struct PreparedLinks {
    node: String,
    peers: Arc<Peers>,
    workflows: Arc<Workflows>,
    /// Producer side: one keeper per outgoing stream, reached through this.
    keepers: Mutex<HashMap<StreamId, Taker>>,
    /// Producer side: streams whose keeper holds a connection now.
    spare: Mutex<HashSet<StreamId>>,
    /// Consumer side: connections opened by the producer's agent, waiting
    /// for their start byte.
    pending: Mutex<HashMap<StreamId, usize>>,
    /// Consumer side: the links of `pending`, which a waiting consumer may
    /// be lent before their start.
    armed: Mutex<HashMap<StreamId, Vec<Armed>>>,
    /// Consumer side: links consumers hold (lent before their start, or
    /// kept after their stream): the stream is ready while they do.
    held_by_consumers: Arc<Mutex<HashMap<StreamId, usize>>>,
    /// Consumer side: started connections, for the consumer's session.
    started: Mutex<HashMap<StreamId, Prepared>>,
    /// Consumer side: started connections the store claimed (their consumer
    /// did not come), for the store's end.
    held_for_store: Mutex<HashMap<StreamId, Prepared>>,
    /// Producer side: streams whose last attempt to open a connection
    /// failed (the consumer's node cannot be reached now).
    unreachable: Mutex<HashSet<StreamId>>,
    /// Consumer side: a wake-up per stream for the consumers waiting in
    /// [`Self::started`]. One for all of them woke every waiting consumer
    /// at every start: quadratic in the streams of a run.
    arrivals: Mutex<HashMap<StreamId, Arc<Notify>>>,
    /// The applied workflows changed: what keepers wait on.
    applied: Notify,
    /// Consumer side: streams started that the store may take in if their
    /// consumer does not come (not live).
    starts: broadcast::Sender<Start>,
    /// Workflows deleted: the links functions hold of their streams are
    /// closed ([`Self::forgotten`]).
    forgotten: broadcast::Sender<String>,
}

impl PreparedLinks {
    /// The cross-node streams of `node`.
    pub fn new(node: String, peers: Arc<Peers>, workflows: Arc<Workflows>) -> Arc<Self> {
        Arc::new(Self {
            node,
            peers,
            workflows,
            keepers: Mutex::new(HashMap::new()),
            spare: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            armed: Mutex::new(HashMap::new()),
            held_by_consumers: Arc::default(),
            started: Mutex::new(HashMap::new()),
            held_for_store: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashSet::new()),
            arrivals: Mutex::new(HashMap::new()),
            applied: Notify::new(),
            starts: broadcast::channel(1024).0,
            forgotten: broadcast::channel(64).0,
        })
    }

    /// Starts keepers for outgoing streams that have none (after an apply or
    /// a resynchronisation); keepers of removed streams stop by themselves.
    pub fn refresh(self: &Arc<Self>) {
        let outgoing = self.workflows.outgoing_streams(&self.node);
        let mut keepers = self.keepers.lock().expect("keepers lock");
        keepers.retain(|stream, taker| {
            !taker.is_closed() && outgoing.iter().any(|(s, _)| s == stream)
        });
        for (stream, peer_node) in outgoing {
            if keepers.contains_key(&stream) {
                continue;
            }
            let (taker, takes) = mpsc::channel(16);
            keepers.insert(stream.clone(), taker);
            tokio::spawn(self.clone().keep(stream, peer_node, takes));
        }
        self.applied.notify_waiters();
    }

    /// Whether this node is ready for `stream`: a prepared connection held
    /// (producer side) or received (consumer side: waiting for its start,
    /// started, or held by a consumer).
    pub fn ready(&self, stream: &StreamId, producer_side: bool) -> bool {
        if producer_side {
            self.spare.lock().expect("spare lock").contains(stream)
        } else {
            self.pending
                .lock()
                .expect("pending lock")
                .contains_key(stream)
                || self
                    .started
                    .lock()
                    .expect("started lock")
                    .contains_key(stream)
                || self
                    .held_by_consumers
                    .lock()
                    .expect("held lock")
                    .contains_key(stream)
        }
    }

    /// Consumer side: counts a link of `stream` a consumer holds until the
    /// returned guard is dropped ([`Self::ready`]).
    pub fn held_by_consumer(&self, stream: &StreamId) -> ConsumerHold {
        *self
            .held_by_consumers
            .lock()
            .expect("held lock")
            .entry(stream.clone())
            .or_default() += 1;
        ConsumerHold {
            counts: self.held_by_consumers.clone(),
            stream: stream.clone(),
        }
    }

    /// Consumer side: one link of `stream` no longer waits for its start.
    fn unpend(&self, stream: &StreamId) {
        uncount(&mut self.pending.lock().expect("pending lock"), stream);
    }

    fn applied_outgoing(&self, stream: &StreamId) -> bool {
        self.workflows.is_outgoing(&self.node, stream)
    }

    /// Producer side: holds a connection for `stream`, hands it to whoever
    /// asks, and opens the next.
    async fn keep(
        self: Arc<Self>,
        stream: StreamId,
        peer_node: String,
        mut takes: mpsc::Receiver<oneshot::Sender<Prepared>>,
    ) {
        let mut backoff = Duration::from_millis(100);
        while self.applied_outgoing(&stream) {
            let opened = self.open(&stream, &peer_node).await;
            self.set_reachable(&stream, opened.is_ok());
            let mut prepared = match opened {
                Ok(prepared) => {
                    backoff = Duration::from_millis(100);
                    prepared
                }
                Err(err) => {
                    debug!(%stream, peer = %peer_node, %err, "stream connection not ready yet");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.applied.notified() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            self.spare
                .lock()
                .expect("spare lock")
                .insert(stream.clone());
            // Hold it until someone takes it, it breaks (the peer restarted,
            // the workflow went away) or the stream is deleted.
            enum Event {
                Take(Option<oneshot::Sender<Prepared>>),
                Broken,
                Changed,
            }
            let mut probe = [0u8; 1];
            let taken = loop {
                let event = tokio::select! {
                    take = takes.recv() => Event::Take(take),
                    _ = prepared.conn.peek(&mut probe) => Event::Broken,
                    () = self.applied.notified() => Event::Changed,
                };
                match event {
                    Event::Take(Some(reply)) => match reply.send(prepared) {
                        Ok(()) => break true,
                        // The asker gave up: keep it for the next one.
                        Err(back) => prepared = back,
                    },
                    Event::Take(None) => return,
                    Event::Broken => break false,
                    Event::Changed if !self.applied_outgoing(&stream) => break false,
                    Event::Changed => {}
                }
            };
            self.spare.lock().expect("spare lock").remove(&stream);
            if !taken {
                debug!(%stream, "prepared stream connection dropped; opening another");
            }
        }
        self.keepers.lock().expect("keepers lock").remove(&stream);
        self.set_reachable(&stream, true);
    }

    fn set_reachable(&self, stream: &StreamId, reachable: bool) {
        let mut unreachable = self.unreachable.lock().expect("unreachable lock");
        if reachable {
            unreachable.remove(stream);
        } else {
            unreachable.insert(stream.clone());
        }
    }

    /// Producer side: whether the last attempt to open a connection for
    /// `stream` failed. A stream whose keeper is only opening the next
    /// connection (the last one was just used) is not unreachable: its
    /// producer waits for it rather than have its stream stored here.
    pub fn is_unreachable(&self, stream: &StreamId) -> bool {
        self.unreachable
            .lock()
            .expect("unreachable lock")
            .contains(stream)
    }

    /// Opens a stream connection to the consumer's agent; the pairing key
    /// is the authenticated session's.
    async fn open(&self, stream: &StreamId, peer_node: &str) -> Result<Prepared, String> {
        let request = PeerRequest::OpenStream {
            stream: stream.clone(),
        };
        let (mut conn, session) = self
            .peers
            .connect(peer_node, &request)
            .await
            .map_err(|err| err.to_string())?;
        let key = session.stream_key(stream);
        match tokio::time::timeout(Duration::from_secs(10), read_message(&mut conn)).await {
            Ok(Ok(Some(PeerAnswer::Ok))) => {
                info!(%stream, peer = peer_node, "stream prepared");
                Ok(Prepared {
                    conn,
                    key,
                    live: false,
                    id: next_id(),
                    start: 0,
                })
            }
            Ok(Ok(Some(PeerAnswer::Error { message }))) => Err(message),
            Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("no answer".into()),
        }
    }

    /// Producer side: the prepared connection of `stream`, as soon as there
    /// is one.
    pub async fn take(&self, stream: &StreamId) -> Result<Prepared, String> {
        loop {
            let taker = self
                .keepers
                .lock()
                .expect("keepers lock")
                .get(stream)
                .cloned();
            let Some(taker) = taker else {
                return Err(format!("stream {stream} is not prepared on this node"));
            };
            let (reply, prepared) = oneshot::channel();
            if taker.send(reply).await.is_err() {
                continue;
            }
            if let Ok(prepared) = prepared.await {
                return Ok(prepared);
            }
        }
    }

    /// Consumer side: the producer's agent opened `conn` for `stream`, with
    /// the pairing key of their session.
    pub fn accept(
        self: &Arc<Self>,
        stream: StreamId,
        key: [u8; KEY_LEN],
        conn: TcpStream,
    ) -> Result<(), String> {
        let ends_here = self
            .workflows
            .ends_on(&self.node, &stream)
            .ok_or_else(|| format!("no workflow {:?} here", stream.workflow))?;
        if !ends_here {
            return Err(format!(
                "stream {stream} does not end on node {}",
                self.node
            ));
        }
        self.await_start(stream, key, next_id(), conn, true);
        Ok(())
    }

    /// Consumer side: a link whose stream its consumer verified carries the
    /// stream's next use, if the producer's agent starts it again: it waits
    /// for its next start byte as a new one does. A link that either end
    /// shut down or that broke is dropped (the producer's agent then starts
    /// the stream's spare link).
    pub fn rearm(self: &Arc<Self>, stream: StreamId, prepared: Prepared) {
        // A link of a deleted workflow is closed, not watched.
        let ends_here = self.workflows.ends_on(&self.node, &stream) == Some(true);
        if ends_here && reusable(&prepared.conn, true) {
            self.await_start(stream, prepared.key, prepared.id, prepared.conn, false);
        }
    }

    /// Consumer side: lists `conn` as started once its start byte comes;
    /// until then a waiting consumer may be lent it (`fresh`: it never
    /// carried a stream).
    fn await_start(
        self: &Arc<Self>,
        stream: StreamId,
        key: [u8; KEY_LEN],
        id: u64,
        conn: TcpStream,
        fresh: bool,
    ) {
        *self
            .pending
            .lock()
            .expect("pending lock")
            .entry(stream.clone())
            .or_default() += 1;
        let (withdraw, withdrawn) = oneshot::channel();
        self.armed
            .lock()
            .expect("armed lock")
            .entry(stream.clone())
            .or_default()
            .push(Armed {
                id,
                fresh,
                withdraw,
            });
        self.arrived(&stream);
        let this = self.clone();
        tokio::spawn(async move {
            // Nothing is read until the start is there: a link lent before
            // it leaves here whole.
            let woken = tokio::select! {
                biased;
                // Readiness alone may be spurious: a byte (or the close)
                // is there once a peek sees it.
                ready = conn.async_io(tokio::io::Interest::READABLE, || peek(&conn)) => {
                    this.disarm(&stream, id);
                    ready.map(|_| None)
                }
                Ok(withdraw) = withdrawn => Ok(Some(withdraw)),
            };
            let begun = match woken {
                Ok(None) => read_start(&conn).await,
                Ok(Some(withdraw)) => {
                    this.unpend(&stream);
                    let Withdraw::Lend(lend_to) = withdraw else {
                        debug!(%stream, "a link of a deleted workflow closed before its start");
                        return;
                    };
                    let prepared = Prepared {
                        conn,
                        key,
                        live: false,
                        id,
                        start: 0,
                    };
                    // Its consumer's session went meanwhile: watched again.
                    if let Err(prepared) = lend_to.send(prepared) {
                        this.rearm(stream, prepared);
                    }
                    return;
                }
                Err(err) => Err(err),
            };
            let begun = match begun {
                Ok(begun) => begun,
                Err(err) => {
                    warn!(%stream, %err, "a link started wrong; closed");
                    None
                }
            };
            this.unpend(&stream);
            if let Some(LinkStart { live, run }) = begun {
                let prepared = Prepared {
                    conn,
                    key,
                    live,
                    id,
                    start: next_start(),
                };
                let mut started = this.started.lock().expect("started lock");
                match started.get(&stream) {
                    // Never replace a stream whose producer is still there:
                    // the second start is refused (its connection closed,
                    // so its producer fails) and the first goes on.
                    Some(first) if !hung_up(&first.conn) => {
                        drop(started);
                        warn!(%stream, "a second start of a stream whose first is still waiting for its consumer; refused");
                    }
                    // Empty, or a stale start whose producer is gone.
                    _ => {
                        let start = Start {
                            stream: stream.clone(),
                            start: prepared.start,
                            run,
                        };
                        started.insert(stream.clone(), prepared);
                        drop(started);
                        this.arrived(&stream);
                        // The store never takes a live stream in.
                        if !live {
                            let _ = this.starts.send(start);
                        }
                    }
                }
            }
        });
    }

    /// Consumer side: a link of `stream` still waiting for its start, taken
    /// out of this agent's watch for a consumer that waits for the stream
    /// and reads the start itself (docs/PROTOCOL.md, "Lent links"). A link
    /// that never carried a stream goes first: a new producer process is
    /// given its twin. `None` if no link is waiting.
    pub async fn lend_armed(&self, stream: &StreamId) -> Option<Prepared> {
        loop {
            let armed = {
                let mut armed = self.armed.lock().expect("armed lock");
                let waiting = armed.get_mut(stream)?;
                let pick = waiting
                    .iter()
                    .rposition(|link| link.fresh)
                    .unwrap_or(waiting.len().checked_sub(1)?);
                let link = waiting.swap_remove(pick);
                if waiting.is_empty() {
                    armed.remove(stream);
                }
                link
            };
            let (lend_to, lent) = oneshot::channel();
            if armed.withdraw.send(Withdraw::Lend(lend_to)).is_err() {
                continue;
            }
            // Its start came first: it is served as started instead.
            if let Ok(prepared) = lent.await {
                return Some(prepared);
            }
        }
    }

    /// Consumer side: link `id` of `stream` is no longer to be lent (its
    /// start, or its close, came).
    fn disarm(&self, stream: &StreamId, id: u64) {
        let mut armed = self.armed.lock().expect("armed lock");
        if let Some(waiting) = armed.get_mut(stream) {
            waiting.retain(|link| link.id != id);
            if waiting.is_empty() {
                armed.remove(stream);
            }
        }
    }

    /// Consumer side: a started connection of `stream` (its producer is
    /// there), as soon as there is one.
    pub async fn started(&self, stream: &StreamId) -> Prepared {
        match self.for_consumer(stream, false).await {
            ForConsumer::Started(prepared) | ForConsumer::Unstarted(prepared) => prepared,
        }
    }

    /// Consumer side: a started connection of `stream`, or, for a consumer
    /// that reads the start itself (`lend`), one still waiting for its
    /// start ([`Self::lend_armed`]); as soon as there is either.
    pub async fn for_consumer(&self, stream: &StreamId, lend: bool) -> ForConsumer {
        let waiting = Arrival::wait(self, stream);
        loop {
            let arrived = waiting.notify.notified();
            tokio::pin!(arrived);
            // Registered before the check: no start is missed in between.
            arrived.as_mut().enable();
            if let Some(prepared) = self.take_started(stream) {
                return ForConsumer::Started(prepared);
            }
            if lend && let Some(prepared) = self.lend_armed(stream).await {
                return ForConsumer::Unstarted(prepared);
            }
            arrived.await;
        }
    }

    /// Consumer side: returns once `stream` has a started link that no
    /// consumer took, without taking it: what a consumer's held link is
    /// told of (the stream came over another link).
    pub async fn started_untaken(&self, stream: &StreamId) {
        let waiting = Arrival::wait(self, stream);
        loop {
            let arrived = waiting.notify.notified();
            tokio::pin!(arrived);
            // Registered before the check: no start is missed in between.
            arrived.as_mut().enable();
            if self
                .started
                .lock()
                .expect("started lock")
                .contains_key(stream)
            {
                return;
            }
            arrived.await;
        }
    }

    /// Wakes the consumers waiting for `stream` ([`Self::for_consumer`]): a
    /// link of it started, or one waits for its start.
    fn arrived(&self, stream: &StreamId) {
        if let Some(notify) = self.arrivals.lock().expect("arrivals lock").get(stream) {
            notify.notify_waiters();
        }
    }

    /// Consumer side: the started connection of `stream`, if there is one
    /// now. Whoever takes it (the consumer, or the store standing in for
    /// it) has the stream: taking is the decision.
    pub fn take_started(&self, stream: &StreamId) -> Option<Prepared> {
        self.started.lock().expect("started lock").remove(stream)
    }

    /// Consumer side: gives back a started connection a consumer took but
    /// could not use (its channel refused it, it hung up), unless another
    /// start of the stream came meanwhile.
    pub fn put_back(&self, stream: &StreamId, prepared: Prepared) {
        self.started
            .lock()
            .expect("started lock")
            .entry(stream.clone())
            .or_insert(prepared);
        self.arrived(stream);
    }

    /// Consumer side: claims the started connection of `start` for the
    /// store, if it is still there (no consumer took it, and no later start
    /// of the stream replaced it) and its producer lets it be stored (not
    /// live); `false` if the consumer took it first.
    pub fn claim_for_store(&self, start: &Start) -> bool {
        let prepared = {
            let mut started = self.started.lock().expect("started lock");
            match started.get(&start.stream) {
                Some(prepared) if Self::is_storable(prepared, start) => {
                    started.remove(&start.stream)
                }
                _ => None,
            }
        };
        let Some(prepared) = prepared else {
            return false;
        };
        self.held_for_store
            .lock()
            .expect("held lock")
            .insert(start.stream.clone(), prepared);
        true
    }

    fn is_storable(prepared: &Prepared, start: &Start) -> bool {
        !prepared.live && prepared.start == start.start
    }

    /// Consumer side: the connection [`Self::claim_for_store`] claimed, for
    /// the store's end.
    pub fn take_held(&self, stream: &StreamId) -> Option<Prepared> {
        self.held_for_store
            .lock()
            .expect("held lock")
            .remove(stream)
    }

    /// Consumer side: gives a claimed connection back for a consumer to
    /// take, when the store's end could not take it (it did not reach the
    /// agent, or was refused): nothing stays held for a store end that will
    /// not come.
    pub fn release_held(&self, stream: &StreamId) {
        if let Some(prepared) = self.take_held(stream) {
            self.put_back(stream, prepared);
        }
    }

    /// The workflows deleted from now on: a session whose function holds a
    /// link of one of their streams closes it, so that no stream of a
    /// deleted workflow goes over a link without its agent.
    pub fn forgotten(&self) -> broadcast::Receiver<String> {
        self.forgotten.subscribe()
    }

    /// Consumer side: the streams that start from now on.
    pub fn starts(&self) -> broadcast::Receiver<Start> {
        self.starts.subscribe()
    }

    /// Consumer side: whether `start` is still waiting for a consumer (none
    /// took it, and it is the stream's latest start) and may be stored (its
    /// producer is not live). A stream used again and again must not be
    /// stored by the grace period of one of its earlier starts just as a
    /// consumer takes a later one.
    pub fn storable(&self, start: &Start) -> bool {
        self.started
            .lock()
            .expect("started lock")
            .get(&start.stream)
            .is_some_and(|prepared| Self::is_storable(prepared, start))
    }

    /// Forgets the consumer-side connections of a deleted workflow: those
    /// waiting for their start are closed, started ones dropped.
    pub fn forget(&self, workflow: &str) {
        let _ = self.forgotten.send(workflow.to_owned());
        let withdrawn: Vec<Armed> = {
            let mut armed = self.armed.lock().expect("armed lock");
            let streams: Vec<StreamId> = armed
                .keys()
                .filter(|stream| stream.workflow == workflow)
                .cloned()
                .collect();
            streams
                .iter()
                .filter_map(|stream| armed.remove(stream))
                .flatten()
                .collect()
        };
        for link in withdrawn {
            // Its start came first: the `started` entry goes below.
            let _ = link.withdraw.send(Withdraw::Close);
        }
        self.started
            .lock()
            .expect("started lock")
            .retain(|stream, _| stream.workflow != workflow);
        self.held_for_store
            .lock()
            .expect("held lock")
            .retain(|stream, _| stream.workflow != workflow);
    }
}

/// Consumer side: a link of a stream a consumer holds, counted while this
/// lives ([`PreparedLinks::held_by_consumer`]).
pub struct ConsumerHold {
    counts: Arc<Mutex<HashMap<StreamId, usize>>>,
    stream: StreamId,
}

impl Drop for ConsumerHold {
    fn drop(&mut self) {
        uncount(&mut self.counts.lock().expect("held lock"), &self.stream);
    }
}

/// Takes one from `stream`'s count, forgetting the stream at zero.
fn uncount(counts: &mut HashMap<StreamId, usize>, stream: &StreamId) {
    if let Some(n) = counts.get_mut(stream) {
        *n -= 1;
        if *n == 0 {
            counts.remove(stream);
        }
    }
}

/// A consumer's wait in [`PreparedLinks::started`]: its stream's wake-up,
/// forgotten when the last waiter for the stream stops waiting (it took
/// its link, or its session ended).
struct Arrival<'a> {
    links: &'a PreparedLinks,
    stream: &'a StreamId,
    notify: Arc<Notify>,
}

impl<'a> Arrival<'a> {
    fn wait(links: &'a PreparedLinks, stream: &'a StreamId) -> Self {
        let notify = links
            .arrivals
            .lock()
            .expect("arrivals lock")
            .entry(stream.clone())
            .or_default()
            .clone();
        Self {
            links,
            stream,
            notify,
        }
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        let mut arrivals = self.links.arrivals.lock().expect("arrivals lock");
        // Ours and the map's: no other waiter (clones are made only under
        // this lock).
        if Arc::strong_count(&self.notify) == 2 {
            arrivals.remove(self.stream);
        }
    }
}

/// Whether `conn` may carry another stream: both directions open (neither
/// end shut its side down, nothing reset it) and, unless `unread_ok`,
/// nothing unread (after a verified stream a link is silent until its next
/// start byte).
pub fn reusable(conn: &impl AsFd, unread_ok: bool) -> bool {
    floki_proto::handoff::link_established(conn.as_fd()) && (unread_ok || !has_unread(conn))
}

/// Whether `conn` has bytes waiting to be read (or its peer closed it).
fn has_unread(conn: &impl AsFd) -> bool {
    !matches!(peek(conn), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

/// Whether the other end closed `conn` (data still unread is not a hang-up).
fn hung_up(conn: &TcpStream) -> bool {
    match peek(conn) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Peeks at one byte of `conn` without waiting. A link handed to a function
/// shares its open file with the function's descriptor, whose client may
/// have made it blocking: every read of a link here says `MSG_DONTWAIT`.
fn peek(conn: &impl AsFd) -> std::io::Result<usize> {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    socket2::SockRef::from(conn).recv_with_flags(&mut probe, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// The start of a link's next stream; `None` if the link closed. Reads
/// exactly the start, never into the stream behind it.
async fn read_start(conn: &TcpStream) -> std::io::Result<Option<LinkStart>> {
    let mut first = [0u8; 1];
    if !read_exact(conn, &mut first).await? {
        return Ok(None);
    }
    let run = match FirstByte::of(first[0]) {
        Some(FirstByte::Live) => {
            return Ok(Some(LinkStart {
                live: true,
                run: None,
            }));
        }
        Some(FirstByte::Plain) => None,
        Some(FirstByte::RunFollows) => {
            let mut len = [0u8; 1];
            let mut run = vec![0u8; 0];
            if read_exact(conn, &mut len).await? {
                run.resize(usize::from(len[0]), 0);
            }
            if run.is_empty() || !read_exact(conn, &mut run).await? {
                return Err(bad_start("its run was cut short"));
            }
            let run = String::from_utf8(run)
                .ok()
                .filter(|run| floki_proto::control::valid_run(run))
                .ok_or_else(|| bad_start("its run is not printable ASCII"))?;
            Some(run)
        }
        None => {
            let other = first[0];
            return Err(bad_start(&format!("unknown start byte {other:#04x}")));
        }
    };
    Ok(Some(LinkStart { live: false, run }))
}

fn bad_start(why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "the producer's agent started the link wrong: {why} (are both agents the same version?)"
        ),
    )
}

/// Fills `buf` from `conn`; `false` if the link closed first.
async fn read_exact(conn: &TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = conn
            .async_io(tokio::io::Interest::READABLE, || {
                let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
                nix::sys::socket::recv(conn.as_raw_fd(), &mut buf[filled..], flags)
                    .map_err(std::io::Error::from)
            })
            .await?;
        if n == 0 {
            return Ok(false);
        }
        filled += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::control::peers::StaticPeers;
    use floki_proto::link_start::{START_LIVE, START_RUN};

    fn links() -> Arc<PreparedLinks> {
        let peers = Arc::new(Peers::new(
            "node-b".into(),
            Arc::new(StaticPeers(Vec::new())),
            None,
        ));
        PreparedLinks::new("node-b".into(), peers, Arc::new(Workflows::default()))
    }

    fn stream() -> StreamId {
        StreamId {
            workflow: "wf".into(),
            edge: "e".into(),
            producer: "p".into(),
            consumer: "q".into(),
        }
    }

    /// The `n`th start of the stream.
    fn nth(n: u64) -> Start {
        Start {
            stream: stream(),
            start: n,
            run: None,
        }
    }

    /// A started link, as the producer's agent would open it: its `n`th
    /// start.
    async fn start(links: &PreparedLinks, live: bool, n: u64) -> TcpStream {
        let (producer_side, conn) = link().await;
        let prepared = Prepared {
            conn,
            key: [7; KEY_LEN],
            live,
            id: 1,
            start: n,
        };
        links.started.lock().unwrap().insert(stream(), prepared);
        producer_side
    }

    #[tokio::test]
    async fn the_store_and_the_consumer_never_both_get_a_started_link() {
        let links = links();
        // The store claims first: the consumer finds no link (it is served
        // from the store), the store's end finds it held.
        let _producer = start(&links, false, 1).await;
        assert!(links.claim_for_store(&nth(1)));
        assert!(links.take_started(&stream()).is_none());
        assert!(!links.claim_for_store(&nth(1)));
        assert_eq!(links.take_held(&stream()).unwrap().key, [7; KEY_LEN]);
        assert!(links.take_held(&stream()).is_none());

        // The consumer takes first: the store claims nothing.
        let _producer = start(&links, false, 2).await;
        let taken = links.take_started(&stream()).unwrap();
        assert!(!links.claim_for_store(&nth(2)));
        assert!(links.take_held(&stream()).is_none());
        // Given back (its channel refused it): there for the next taker.
        links.put_back(&stream(), taken);
        assert!(links.claim_for_store(&nth(2)));
        // A store end that never came for it gives it back to consumers.
        links.release_held(&stream());
        assert!(links.take_held(&stream()).is_none());
        assert_eq!(links.take_started(&stream()).unwrap().key, [7; KEY_LEN]);

        // A live producer's stream is never the store's.
        let _producer = start(&links, true, 3).await;
        assert!(!links.claim_for_store(&nth(3)));
        assert!(!links.storable(&nth(3)));
        assert!(links.take_started(&stream()).unwrap().live);
    }

    #[tokio::test]
    async fn the_store_never_takes_a_later_start_than_the_one_it_waited_for() {
        let links = links();
        // The consumer took start 1; start 2 has just come, its consumer
        // about to take it, as the grace period of start 1 ends.
        let _producer = start(&links, false, 2).await;
        assert!(!links.storable(&nth(1)));
        assert!(!links.claim_for_store(&nth(1)));
        assert_eq!(links.take_started(&stream()).unwrap().start, 2);
    }

    /// A connected pair: (what the producer's agent writes into, what the
    /// consumer's agent reads).
    async fn link() -> (TcpStream, TcpStream) {
        let (accepted, connected) = crate::agent::transport::relay::tests::pair().await;
        (connected, accepted)
    }

    #[tokio::test]
    async fn a_start_carries_the_run_and_leaves_the_stream_behind_it_unread() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let starts = [
            LinkStart::default(),
            LinkStart {
                live: true,
                run: Some("ignored: a live stream is never stored".into()),
            },
            LinkStart {
                live: false,
                run: Some("arn:aws:states:eu-west-1:1:execution:etl:7f3a".into()),
            },
        ];
        for start in starts {
            let (mut producer, mut consumer) = link().await;
            producer.write_all(&start.bytes()).await.unwrap();
            producer.write_all(b"FLKS").await.unwrap();
            let read = read_start(&consumer).await.unwrap().unwrap();
            let expected = LinkStart {
                run: start.run.clone().filter(|_| !start.live),
                ..start
            };
            assert_eq!(read, expected);
            let mut behind = [0u8; 4];
            consumer.read_exact(&mut behind).await.unwrap();
            assert_eq!(&behind, b"FLKS");
        }
    }

    #[tokio::test]
    async fn a_start_wakes_only_the_consumer_of_its_stream_and_no_waiter_stays_behind() {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        use tokio::io::AsyncWriteExt as _;
        let links = links();
        let other = StreamId {
            consumer: "r".into(),
            ..stream()
        };
        // A consumer of another stream waits, counting how often it is woken.
        let polls = Arc::new(AtomicUsize::new(0));
        let waiting_other = tokio::spawn({
            let (links, polls, other) = (links.clone(), polls.clone(), other.clone());
            async move {
                let mut started = std::pin::pin!(links.started(&other));
                std::future::poll_fn(|cx| {
                    polls.fetch_add(1, Relaxed);
                    started.as_mut().poll(cx)
                })
                .await
            }
        });
        let waiting = tokio::spawn({
            let links = links.clone();
            async move { links.started(&stream()).await }
        });
        while links.arrivals.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(polls.load(Relaxed), 1);

        // The producer's agent starts this stream's link.
        let (mut producer, conn) = link().await;
        links.await_start(stream(), [7; KEY_LEN], 1, conn, true);
        producer.write_all(&[START_LIVE]).await.unwrap();
        let taken = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the consumer of the stream that started gets its link")
            .unwrap();
        assert_eq!(taken.key, [7; KEY_LEN]);
        assert!(taken.live);

        // The other consumer was not woken, and only its wait is listed.
        tokio::task::yield_now().await;
        assert_eq!(polls.load(Relaxed), 1, "woken by another stream's start");
        assert_eq!(links.arrivals.lock().unwrap().len(), 1);
        // A wait given up (its consumer hung up) leaves nothing behind.
        waiting_other.abort();
        assert!(waiting_other.await.is_err_and(|err| err.is_cancelled()));
        assert!(links.arrivals.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_start_cut_short_or_unknown_is_an_error_not_a_stream() {
        use tokio::io::AsyncWriteExt as _;
        for (bytes, says) in [
            (&[START_RUN, 5, b'r', b'1'][..], "cut short"),
            (&[START_RUN, 2, b' ', b'x'][..], "not printable"),
            (&[0x42][..], "unknown start byte 0x42"),
        ] {
            let (mut producer, consumer) = link().await;
            producer.write_all(bytes).await.unwrap();
            producer.shutdown().await.unwrap();
            let err = read_start(&consumer).await.unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        // Closed before any start: no stream, no error.
        let (producer, consumer) = link().await;
        drop(producer);
        assert!(read_start(&consumer).await.unwrap().is_none());
    }
}
