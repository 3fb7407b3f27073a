//! The channel core: which ends belong to which channel, how each channel's
//! bytes are carried, and how it ended. It knows nothing of sessions (who
//! joins is an [`EndKind`]), nor of metrics or status (it tells
//! [`ChannelEvent`]s to whoever subscribed, and shows [`ChannelView`]s).
//!
//! A channel is born when its first end joins. Two local ends with the same
//! name are paired: the [`Carriers`] set the carrier up (a ring, a splice,
//! plain TCP) and each end learns its part ([`Paired`]). A local end whose
//! peer is on another node joins alone, its carrier the link to that node.
//! Ends report through their [`Membership`] and leave by dropping it; once
//! both are over the channel moves to a bounded history.

mod carrier;
mod ends;
mod membership;
mod pairing;
#[cfg(test)]
mod tests;
mod view;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

pub use carrier::{Carrier, LinkEnd};
use ends::Ends;
use floki_common::{ChannelRecord, ROLE_SENDER};
use floki_proto::control::{ClientReport, Refusal, Role, Transport};
pub use membership::Membership;
pub use pairing::{
    Carriers, EndKind, JoinRequest, Joined, LocalEnd, Paired, Pairing, RingPart, RingSetUp, SetUp,
};
use tokio::sync::oneshot;
use tracing::{debug, info};
pub use view::{ChannelTotals, ChannelView, Phase};

use crate::agent::datapath::SpliceHandle;

/// Smallest and largest flow-control window a receiver may ask for.
pub const WINDOW_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(1 << 30);

/// A refusal with its explanation, as the end is told.
pub type Refused = (Refusal, String);

/// How long an end waits for the previous stream of its channel to end
/// before it is refused as busy.
pub const FINISHING_WAIT: Duration = Duration::from_millis(500);

/// What happened to a channel, for subscribers (metrics).
#[derive(Clone, Debug)]
pub enum ChannelEvent {
    /// Two ends were paired and their carrier set up.
    Paired {
        /// Channel id.
        id: u32,
        /// The carrier's transport.
        transport: Transport,
        /// From the second end's arrival to both ends told their part.
        set_up: Duration,
    },
    /// A channel is over.
    Finished(ChannelView),
}

type Subscriber = Box<dyn Fn(&ChannelEvent) + Send + Sync>;

/// A stream one end carried over the link (or two ends over the ring) it
/// held ([`Channels::record_held`]).
pub struct HeldStream {
    /// The stream's channel name.
    pub name: String,
    /// This node's end of it.
    pub role: Role,
    /// The other end's node, if not this one.
    pub peer_node: Option<String>,
    /// What the ends held.
    pub via: HeldVia,
    /// Whether it went across complete and verified.
    pub ok: bool,
    /// Payload bytes moved.
    pub bytes: u64,
    /// What went wrong, when not ok.
    pub error: Option<String>,
}

/// What the ends of a held stream kept from its last use and carried it
/// over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldVia {
    /// The agents' link across nodes: one end's report per node.
    Link,
    /// A ring on this node: the receiver's report.
    Ring,
}

/// How a waiting end hears of its pairing.
type PairingNotice = oneshot::Sender<Result<Paired, Refused>>;

enum Stage {
    /// One local end waits for its peer.
    Waiting {
        role: Role,
        end: LocalEnd,
        /// Whether the waiting end is the agent's store.
        store: bool,
        notify: PairingNotice,
    },
    /// The carrier is set up.
    Active {
        carrier: Carrier,
        /// Why this carrier.
        reason: Option<String>,
        paired_at: Instant,
    },
}

struct Live {
    name: String,
    created: Instant,
    stage: Stage,
    ends: Ends,
    /// Which end is the agent's store, if one is.
    store: Option<Role>,
}

#[derive(Default)]
struct Inner {
    next_id: u32,
    live: HashMap<u32, Live>,
    /// Names of live channels, for pairing: one channel per name at a time.
    by_name: HashMap<String, u32>,
    history: VecDeque<ChannelView>,
    finished: ChannelTotals,
    closing: bool,
}

/// All channels of this agent.
pub struct Channels {
    carriers: Arc<dyn Carriers>,
    default_window: u64,
    history_limit: usize,
    inner: Mutex<Inner>,
    changed: tokio::sync::Notify,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl Channels {
    /// No channels yet; `carriers` sets up same-node ones.
    pub fn new(carriers: Arc<dyn Carriers>, default_window: u64, history_limit: usize) -> Self {
        Self {
            carriers,
            default_window,
            history_limit,
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
            changed: tokio::sync::Notify::new(),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// Calls `subscriber` with every event from now on (with the core's lock
    /// held: it must not call back into the core).
    pub fn subscribe(&self, subscriber: impl Fn(&ChannelEvent) + Send + Sync + 'static) {
        self.subscribers
            .lock()
            .expect("subscribers lock")
            .push(Box::new(subscriber));
    }

    fn emit(&self, event: &ChannelEvent) {
        for subscriber in self.subscribers.lock().expect("subscribers lock").iter() {
            subscriber(event);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("channels lock")
    }

    /// The default flow-control window.
    pub fn default_window(&self) -> u64 {
        self.default_window
    }

    /// Adds an end to its channel: a local end waits for its peer or pairs
    /// with the one waiting; a remote end's channel is active at once. The
    /// end stays a member until the returned membership is dropped.
    pub fn join(self: &Arc<Self>, request: JoinRequest) -> Result<Joined, Refused> {
        if request.role == Role::Send {
            self.carriers.sender_came(&request.name);
        }
        let mut inner = self.lock();
        if inner.closing {
            return Err((
                Refusal::ShuttingDown,
                "the agent is shutting down and takes no new channels; retry on the restarted agent"
                    .into(),
            ));
        }
        let JoinRequest {
            name,
            role,
            end,
            window,
        } = request;
        let (id, pairing) = match (end, inner.by_name.get(&name).copied()) {
            (EndKind::Remote(carrier), None) => (
                self.open_remote(&mut inner, name, role, carrier),
                Pairing::Elsewhere,
            ),
            (EndKind::Remote(_), Some(_)) => {
                return Err((
                    Refusal::Busy,
                    format!("channel '{name}' already has a {role} on this node"),
                ));
            }
            (EndKind::Local(end), None) => self.wait_for_peer(&mut inner, name, role, end, false),
            (EndKind::Store(end), None) => self.wait_for_peer(&mut inner, name, role, end, true),
            (EndKind::Local(end), Some(id)) => {
                (id, self.pair(&mut inner, id, role, (end, false), window)?)
            }
            (EndKind::Store(end), Some(id)) => {
                (id, self.pair(&mut inner, id, role, (end, true), window)?)
            }
        };
        self.changed.notify_waiters();
        Ok(Joined {
            membership: Membership::new(self.clone(), id, role),
            pairing,
        })
    }

    /// [`Self::join`], but an end whose place in its channel is taken by
    /// an end of the stream before (paired, of the same role) first waits
    /// up to [`FINISHING_WAIT`] for that stream to end: a function run
    /// again at once, or a bridge taking the next stream, comes while the
    /// reports of the last one are still on their way to the agent.
    pub async fn join_when_free(self: &Arc<Self>, request: JoinRequest) -> Result<Joined, Refused> {
        let deadline = tokio::time::Instant::now() + FINISHING_WAIT;
        loop {
            // Registered before the check: no change is missed in between.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.is_taken(&request.name, request.role)
                || tokio::time::timeout_at(deadline, changed).await.is_err()
            {
                return self.join(request);
            }
        }
    }

    /// Whether channel `name` is paired and has an end of `role`.
    fn is_taken(&self, name: &str, role: Role) -> bool {
        let inner = self.lock();
        inner
            .by_name
            .get(name)
            .and_then(|id| inner.live.get(id))
            .is_some_and(|live| {
                matches!(live.stage, Stage::Active { .. }) && live.ends[role].joined
            })
    }

    fn new_channel(
        inner: &mut Inner,
        name: String,
        stage: Stage,
        ends: Ends,
        store: Option<Role>,
    ) -> u32 {
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1).max(1);
        inner.by_name.insert(name.clone(), id);
        inner.live.insert(
            id,
            Live {
                name,
                created: Instant::now(),
                stage,
                ends,
                store,
            },
        );
        id
    }

    fn wait_for_peer(
        &self,
        inner: &mut Inner,
        name: String,
        role: Role,
        end: LocalEnd,
        store: bool,
    ) -> (u32, Pairing) {
        let (notify, wait) = oneshot::channel();
        let stage = Stage::Waiting {
            role,
            end,
            store,
            notify,
        };
        let store = store.then_some(role);
        let id = Self::new_channel(inner, name.clone(), stage, Ends::joined(role), store);
        // One `info` line per channel, when it finishes: at thousands of
        // channels a second, a line per step cost the agent more than the
        // steps.
        debug!(channel = %name, id, %role, "waiting for the other end");
        (id, Pairing::Later(wait))
    }

    fn open_remote(&self, inner: &mut Inner, name: String, role: Role, carrier: Carrier) -> u32 {
        let mut ends = Ends::joined(role);
        // The far end reports to its own agent.
        ends.left(role.peer());
        let (reason, store) = match &carrier {
            Carrier::LinkHanded(end) | Carrier::LinkRelayed { end, .. } => (
                Some(format!("the other end is on node {}", end.peer_node)),
                end.store.then_some(role),
            ),
            _ => (None, None),
        };
        let stage = Stage::Active {
            carrier,
            reason,
            paired_at: Instant::now(),
        };
        let id = Self::new_channel(inner, name.clone(), stage, ends, store);
        info!(channel = %name, id, %role, "cross-node stream opened");
        id
    }

    /// Pairs `end` (`true`: the agent's store) with the end waiting on
    /// channel `id`.
    fn pair(
        &self,
        inner: &mut Inner,
        id: u32,
        role: Role,
        (end, store): (LocalEnd, bool),
        window: Option<u64>,
    ) -> Result<Pairing, Refused> {
        let started = Instant::now();
        let (name, waiting, waiting_store, notify) = Self::take_waiting(inner, id, role)?;
        let store = match (store, waiting_store) {
            (true, _) => Some(role),
            (_, true) => Some(role.peer()),
            _ => None,
        };
        let (sender, receiver) = match role {
            Role::Send => (&end, &waiting),
            Role::Recv => (&waiting, &end),
        };
        let window = window
            .or(receiver.hello.window)
            .unwrap_or(self.default_window);
        let mut set_up = match self.carriers.set_up(id, &name, sender, receiver, window) {
            Ok(set_up) => set_up,
            Err(reason) => {
                self.remove(inner, id);
                tracing::warn!(channel = %name, id, %reason, "channel refused at pairing");
                let refused = (Refusal::TransportUnavailable, reason);
                let _ = notify.send(Err(refused.clone()));
                return Err(refused);
            }
        };
        let transport = set_up.carrier.transport();
        let (to_sender, to_receiver) = set_up.paired(window, store);
        let live = inner.live.get_mut(&id).expect("still live");
        live.store = store;
        live.stage = Stage::Active {
            carrier: set_up.carrier,
            reason: Some(set_up.reason),
            paired_at: Instant::now(),
        };
        live.ends[role].joined = true;
        let (mine, theirs) = match role {
            Role::Send => (to_sender, to_receiver),
            Role::Recv => (to_receiver, to_sender),
        };
        // If the waiting end just left, its membership is gone and the
        // channel fails: the newcomer learns it from its data connection
        // (or, over a ring, from the socket beside it).
        let _ = notify.send(Ok(theirs));
        self.emit(&ChannelEvent::Paired {
            id,
            transport,
            set_up: started.elapsed(),
        });
        debug!(channel = %name, id, %transport, "paired");
        Ok(Pairing::Now(mine))
    }

    /// The end waiting on channel `id`, if an end of `role` may pair with
    /// it; the channel is left without a stage's end until it is set up.
    fn take_waiting(
        inner: &mut Inner,
        id: u32,
        role: Role,
    ) -> Result<(String, LocalEnd, bool, PairingNotice), Refused> {
        let live = inner.live.get_mut(&id).expect("named channels are live");
        let name = live.name.clone();
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
            Stage::Active { .. } if live.ends[role].outcome.is_some() => {
                let peer = role.peer();
                return Err((
                    Refusal::Busy,
                    format!(
                        "channel '{name}' still has its previous stream: its {role} ended, \
                         its {peer} has not; wait until that {peer} ends or pick another name"
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
        let placeholder = Stage::Active {
            carrier: Carrier::Tcp,
            reason: None,
            paired_at: Instant::now(),
        };
        match std::mem::replace(&mut live.stage, placeholder) {
            Stage::Waiting {
                end, store, notify, ..
            } => Ok((name, end, store, notify)),
            Stage::Active { .. } => unreachable!("checked above"),
        }
    }

    /// Takes channel `id` out of the live ones; its name is free again.
    fn remove(&self, inner: &mut Inner, id: u32) -> Option<Live> {
        let live = inner.live.remove(&id)?;
        if inner.by_name.get(&live.name) == Some(&id) {
            inner.by_name.remove(&live.name);
        }
        self.changed.notify_waiters();
        Some(live)
    }

    /// Records a report of end `role` of channel `id`.
    fn report(&self, id: u32, role: Role, report: ClientReport) {
        let mut inner = self.lock();
        if let Some(live) = inner.live.get_mut(&id) {
            live.ends.report(role, report);
            self.finish_if_over(&mut inner, id);
        }
    }

    /// End `role` of cross-node channel `id` leaves before its stream
    /// began here: the channel goes without a trace in the history, as a
    /// local end's that left before its peer joined.
    fn withdraw(&self, id: u32, role: Role) {
        let mut inner = self.lock();
        let remote = inner.live.get(&id).is_some_and(|live| {
            matches!(
                live.stage,
                Stage::Active {
                    carrier: Carrier::LinkHanded(_),
                    ..
                }
            )
        });
        if !remote {
            return;
        }
        if let Some(live) = self.remove(&mut inner, id) {
            info!(channel = %live.name, id, %role, "left before its stream started here");
        }
    }

    /// End `role` of channel `id` is gone.
    fn leave(&self, id: u32, role: Role) {
        let mut inner = self.lock();
        let Some(live) = inner.live.get_mut(&id) else {
            return;
        };
        if let Stage::Waiting { role: waiting, .. } = &live.stage
            && *waiting == role
        {
            let name = live.name.clone();
            self.remove(&mut inner, id);
            info!(channel = %name, id, %role, "left before its peer joined");
            return;
        }
        live.ends.left(role);
        self.finish_if_over(&mut inner, id);
    }

    fn attach_splice(&self, id: u32, handle: SpliceHandle) {
        let mut inner = self.lock();
        match inner.live.get_mut(&id).map(|live| &mut live.stage) {
            Some(Stage::Active {
                carrier: Carrier::LinkRelayed { splice, .. },
                ..
            }) => *splice = Some(handle),
            _ => self.carriers.release(&handle),
        }
    }

    fn finish_if_over(&self, inner: &mut Inner, id: u32) {
        let over = inner
            .live
            .get(&id)
            .is_some_and(|live| matches!(live.stage, Stage::Active { .. }) && live.ends.over());
        if !over {
            return;
        }
        let live = self.remove(inner, id).expect("checked above");
        let view = self.view(id, &live);
        self.retire(inner, &live, view);
    }

    /// Moves a channel that is over to the history.
    fn retire(&self, inner: &mut Inner, live: &Live, view: ChannelView) {
        if let Stage::Active { carrier, .. } = &live.stage
            && let Some(handle) = carrier.splice()
        {
            self.carriers.release(handle);
        }
        self.file(inner, view);
    }

    /// Workflow `name` was deleted: its streams' ends may no longer set a
    /// stream up between themselves (the carriers withdraw what they may
    /// still hold, [`Carriers::forget_workflow`]).
    pub fn forget_workflow(&self, name: &str) {
        self.carriers.forget_workflow(name);
    }

    /// Records a stream that one end carried over the link it held (or two
    /// ends over the ring they held), without joining: told by that end
    /// once it was over (docs/PROTOCOL.md, "Held links", "Held rings"). It
    /// takes an id, counts in the totals and the metrics, and shows in the
    /// history like any other.
    pub fn record_held(&self, held: HeldStream) {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1).max(1);
        let view = ChannelView {
            id,
            name: held.name,
            phase: if held.ok { Phase::Done } else { Phase::Failed },
            transport: Some(match held.via {
                HeldVia::Link => Transport::Tcp,
                HeldVia::Ring => Transport::Shm,
            }),
            bytes: held.bytes,
            stream_bytes: held.bytes,
            kernel_bytes: None,
            peer_node: held.peer_node,
            ends: vec![held.role],
            age: Duration::ZERO,
            duration: None,
            error: held.error,
            note: Some(
                match held.via {
                    HeldVia::Link => "over the link its end held, told afterwards",
                    HeldVia::Ring => "over the ring its ends held, told afterwards",
                }
                .to_owned(),
            ),
            reason: Some(
                match held.via {
                    HeldVia::Link => "held link: the stream's last use kept it",
                    HeldVia::Ring => "held ring: the stream's last use kept it",
                }
                .to_owned(),
            ),
            store: None,
        };
        self.file(&mut inner, view);
    }

    /// Files a finished channel's view: totals, the log, subscribers, the
    /// history.
    fn file(&self, inner: &mut Inner, view: ChannelView) {
        match view.transport {
            Some(Transport::Tcp) => inner.finished.tcp_bytes += view.bytes,
            Some(Transport::Shm) => inner.finished.shm_bytes += view.bytes,
            _ => {}
        }
        match view.phase {
            Phase::Done => inner.finished.done += 1,
            Phase::Failed => inner.finished.failed += 1,
            // Adopted channels' ends judged the stream themselves.
            Phase::Closed | Phase::Waiting | Phase::Active => {}
        }
        info!(
            channel = %view.name,
            id = view.id,
            state = ?view.phase,
            transport = %view.transport.map_or_else(|| "none".to_owned(), |t| t.to_string()),
            bytes = view.bytes,
            error = view.error.as_deref().unwrap_or(""),
            "channel finished"
        );
        self.emit(&ChannelEvent::Finished(view.clone()));
        inner.history.push_front(view);
        inner.history.truncate(self.history_limit);
    }

    fn view(&self, id: u32, live: &Live) -> ChannelView {
        let mut view = ChannelView {
            id,
            name: live.name.clone(),
            phase: Phase::Waiting,
            transport: None,
            bytes: 0,
            stream_bytes: live.ends.stream_bytes(),
            kernel_bytes: None,
            peer_node: None,
            ends: live.ends.roles(),
            age: live.created.elapsed(),
            duration: None,
            error: None,
            note: None,
            reason: None,
            store: live.store,
        };
        let Stage::Active {
            carrier,
            reason,
            paired_at,
        } = &live.stage
        else {
            return view;
        };
        // Counted by the kernel program, framing included.
        view.kernel_bytes = carrier
            .splice()
            .and_then(|handle| self.carriers.record(handle))
            .map(|record| record.bytes[ROLE_SENDER as usize]);
        let route = carrier.route(view.kernel_bytes, &live.ends);
        view.transport = Some(route.transport);
        view.bytes = route.bytes;
        view.note = route.note;
        view.peer_node = route.peer_node;
        view.reason.clone_from(reason);
        let over = live.ends.over();
        view.phase = match over.then(|| live.ends.verdict()) {
            None => Phase::Active,
            Some(Ok(())) => Phase::Done,
            Some(Err(err)) => {
                view.error = Some(err);
                Phase::Failed
            }
        };
        view.duration = over.then(|| paired_at.elapsed());
        view
    }

    /// Lists the spliced channels a previous agent left in flight (found in
    /// the pinned maps) as active, and numbers new channels after them.
    pub fn adopt(&self, channels: &[(u32, ChannelRecord)]) {
        let mut inner = self.lock();
        for (id, record) in channels {
            let mut name = record.name().to_owned();
            if name.is_empty() || inner.by_name.contains_key(&name) {
                name = format!("adopted-{id}");
            }
            let mut ends = Ends::joined(Role::Send);
            ends[Role::Recv].joined = true;
            let stage = Stage::Active {
                carrier: Carrier::Adopted(SpliceHandle::adopted(*id)),
                reason: Some("adopted from the pinned maps after the agent restarted".into()),
                paired_at: Instant::now(),
            };
            info!(channel = %name, id, bytes = record.bytes[ROLE_SENDER as usize], "adopted a spliced channel in flight");
            inner.by_name.insert(name.clone(), *id);
            let created = Instant::now();
            let live = Live {
                name,
                created,
                stage,
                ends,
                store: None,
            };
            inner.live.insert(*id, live);
            inner.next_id = inner.next_id.max(id.wrapping_add(1).max(1));
        }
    }

    /// Moves adopted channels whose sockets have both closed to the history
    /// (`closed`); returns how many are still in flight.
    pub fn reap_adopted(&self) -> usize {
        let mut inner = self.lock();
        let adopted = |live: &Live| match &live.stage {
            Stage::Active {
                carrier: Carrier::Adopted(handle),
                ..
            } => Some(handle.clone()),
            _ => None,
        };
        let over: Vec<u32> = inner
            .live
            .iter()
            .filter_map(|(id, live)| adopted(live).map(|handle| (*id, handle)))
            .filter(|(_, handle)| {
                self.carriers
                    .record(handle)
                    .is_none_or(|record| !record.in_flight())
            })
            .map(|(id, _)| id)
            .collect();
        for id in over {
            let live = self.remove(&mut inner, id).expect("listed above");
            let mut view = self.view(id, &live);
            view.phase = Phase::Closed;
            view.note = Some(
                "its sockets closed after the agent restarted: the ends checked the stream \
                 themselves; bytes as the kernel spliced them"
                    .into(),
            );
            if let Stage::Active { paired_at, .. } = &live.stage {
                view.duration = Some(paired_at.elapsed());
            }
            self.retire(&mut inner, &live, view);
        }
        inner.live.values().filter(|l| adopted(l).is_some()).count()
    }

    /// Channels (live first, by id, then the history, newest first) and the
    /// totals.
    pub fn snapshot(&self) -> (Vec<ChannelView>, ChannelTotals) {
        let inner = self.lock();
        let mut views: Vec<ChannelView> = inner
            .live
            .iter()
            .map(|(id, live)| self.view(*id, live))
            .collect();
        views.sort_by_key(|view| view.id);
        let active = |transport| -> u64 {
            views
                .iter()
                .filter(|view| view.transport == Some(transport))
                .map(|view| view.bytes)
                .sum()
        };
        let totals = ChannelTotals {
            tcp_bytes: inner.finished.tcp_bytes + active(Transport::Tcp),
            shm_bytes: inner.finished.shm_bytes + active(Transport::Shm),
            active: views.iter().filter(|v| v.phase == Phase::Active).count() as u64,
            done: inner.finished.done,
            failed: inner.finished.failed,
        };
        views.extend(inner.history.iter().cloned());
        (views, totals)
    }

    /// Stops taking channels: waiting ends are told, active ones carry on.
    pub fn close(&self) {
        let mut inner = self.lock();
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
        let mut inner = self.lock();
        self.refuse_waiting_in(&mut inner, prefix, Refusal::NotAllowed, |name| {
            format!("the workflow of channel '{name}' was deleted before its other end came")
        });
    }

    fn refuse_waiting_in(
        &self,
        inner: &mut Inner,
        prefix: &str,
        error: Refusal,
        message: impl Fn(&str) -> String,
    ) {
        let waiting: Vec<u32> = inner
            .live
            .iter()
            .filter(|(_, live)| {
                live.name.starts_with(prefix) && matches!(live.stage, Stage::Waiting { .. })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            if let Some(Live {
                name,
                stage: Stage::Waiting { notify, .. },
                ..
            }) = self.remove(inner, id)
            {
                let _ = notify.send(Err((error, message(&name))));
            }
        }
    }

    /// The role of the end waiting alone on channel `name`, if one is.
    pub fn waiting_role(&self, name: &str) -> Option<Role> {
        let inner = self.lock();
        let live = inner.live.get(inner.by_name.get(name)?)?;
        match &live.stage {
            Stage::Waiting { role, .. } => Some(*role),
            Stage::Active { .. } => None,
        }
    }

    /// Whether channel `name` has an end on this node now.
    pub fn is_open(&self, name: &str) -> bool {
        self.lock().by_name.contains_key(name)
    }

    /// Number of live channels (waiting or active).
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }

    /// Waits until no channel is live, or `limit` passes; returns how many
    /// are still live.
    pub async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            let live = self.live();
            if live == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.live();
            }
        }
    }
}
