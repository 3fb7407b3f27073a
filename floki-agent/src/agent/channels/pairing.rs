//! Joining a channel: who joins ([`JoinRequest`]), what they get back
//! ([`Joined`]), and what the core needs from the node to pair two local
//! ends ([`Carriers`]).

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::OwnedFd,
    sync::Arc,
};

use floki_common::ChannelRecord;
use floki_proto::{
    KEY_LEN,
    control::{Hello, Role, Transport},
};
use rand::RngCore as _;
use tokio::sync::oneshot;

use super::{Carrier, Membership, Refused};
use crate::agent::{datapath::SpliceHandle, transport::RingFile};

/// An end that asks to join a channel.
pub struct JoinRequest {
    /// The channel's name (a workflow stream's is derived from the stream).
    pub name: String,
    /// Which end.
    pub role: Role,
    /// What kind of end it is.
    pub end: EndKind,
    /// The channel's window, when it is not the receiver's to choose (a
    /// workflow edge's buffer).
    pub window: Option<u64>,
}

/// The kinds of ends.
pub enum EndKind {
    /// A function on this node whose peer is on this node too: the two are
    /// paired, and a carrier is set up between them.
    Local(LocalEnd),
    /// A function on this node whose peer is on another node: the carrier
    /// is the agents' link ([`Carrier::LinkHanded`] or
    /// [`Carrier::LinkRelayed`]).
    Remote(Carrier),
    /// The agent's store, as an end on this node: a receiver taking in a
    /// stream whose consumer is not there, or a sender replaying a stored
    /// one. It pairs like a local end; its peer hears that it is a store.
    Store(LocalEnd),
}

/// A function on this node, as it introduced itself.
pub struct LocalEnd {
    /// Its hello (as the agent completed it for clients on its Unix socket).
    pub hello: Hello,
    /// The agent's address as this end reaches it: where a sender connects
    /// when the receiver's listener is the agent's own, bound to every
    /// address.
    pub reach: IpAddr,
    /// The ring of this end's last channel on its connection, which its
    /// client still holds (its hello said `kept_ring`): if the peer holds
    /// the same one, the channel goes over it again.
    pub kept_ring: Option<Arc<RingFile>>,
}

/// A member of a channel, and how it learns its part.
pub struct Joined {
    /// The end's membership: dropping it leaves the channel.
    pub membership: Membership,
    /// When and how the end is paired.
    pub pairing: Pairing,
}

/// When a joining end learns its part.
pub enum Pairing {
    /// Its peer was waiting: here is its part.
    Now(Paired),
    /// Wait for the peer (or a refusal, if the agent stops or the two ends
    /// cannot agree on a transport).
    Later(oneshot::Receiver<Result<Paired, Refused>>),
    /// The peer is on another node: the link is the end's to take.
    Elsewhere,
}

/// An end's part in a paired channel.
pub struct Paired {
    /// The carrier's transport.
    pub transport: Transport,
    /// Senders on sockets: where to connect.
    pub connect_to: Option<SocketAddr>,
    /// Pairing key: the sender presents it on the data connection.
    pub key: [u8; KEY_LEN],
    /// Flow-control window.
    pub window: u64,
    /// `shm`: what this end gets of the ring.
    pub ring: Option<RingPart>,
    /// `shm`: the channel's ring, which this end may be paired over again
    /// on its next channel (none on huge pages).
    pub ring_file: Option<Arc<RingFile>>,
    /// A receiver whose listener the agent opened at pairing: that
    /// listener, to hand over.
    pub listener: Option<TcpListener>,
    /// A sender over a socket whose receiver takes an eager hello: it need
    /// not wait for the receiver's first credit.
    pub eager: bool,
    /// The other end is the agent's store.
    pub stored: bool,
}

/// What an end gets of its channel's ring.
pub enum RingPart {
    /// A new ring: its memory file and this end's socket beside it, to hand
    /// over.
    Handed(OwnedFd, OwnedFd),
    /// The ring this end kept from its last channel, rewound.
    Kept,
}

/// A ring set up for two ends: new (handed to both) or kept by both.
pub struct RingSetUp {
    /// Each end's descriptors (sender's, receiver's) of a new ring; `None`:
    /// both ends hold the ring already.
    pub handed: Option<[(OwnedFd, OwnedFd); 2]>,
    /// The ring, for the ends' next channel.
    pub file: Option<Arc<RingFile>>,
}

/// A same-node carrier, set up.
pub struct SetUp {
    /// The carrier.
    pub carrier: Carrier,
    /// Why this one, for status.
    pub reason: String,
    /// Senders on sockets: where to connect.
    pub connect_to: Option<SocketAddr>,
    /// `shm`: the ring.
    pub ring: Option<RingSetUp>,
    /// The receiver's data listener, when the agent opened it at pairing
    /// (a Unix-socket receiver whose hello said `listener_at_pairing`).
    pub listener: Option<TcpListener>,
    /// Sockets: the receiver takes an eager hello (its hello said
    /// `eager_hello`), so its sender may write before its first credit.
    pub eager: bool,
}

impl SetUp {
    /// Each end's part (sender's, receiver's), under one fresh key;
    /// `store` is the end that is the agent's store, if one is.
    pub(super) fn paired(&mut self, window: u64, store: Option<Role>) -> (Paired, Paired) {
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        let transport = self.carrier.transport();
        let part = |connect_to, ring, ring_file, listener, role: Role| Paired {
            transport,
            connect_to,
            key,
            window,
            ring,
            ring_file,
            listener,
            eager: self.eager && role == Role::Send,
            stored: store == Some(role.peer()),
        };
        match self.ring.take() {
            Some(RingSetUp { handed, file }) => {
                let (sender, receiver) = match handed {
                    Some([(memory, peer), (memory_r, peer_r)]) => (
                        RingPart::Handed(memory, peer),
                        RingPart::Handed(memory_r, peer_r),
                    ),
                    None => (RingPart::Kept, RingPart::Kept),
                };
                (
                    part(None, Some(sender), file.clone(), None, Role::Send),
                    part(None, Some(receiver), file, None, Role::Recv),
                )
            }
            None => (
                part(self.connect_to, None, None, None, Role::Send),
                part(None, None, None, self.listener.take(), Role::Recv),
            ),
        }
    }
}

/// What the core needs from the node: setting up the carrier of two local
/// ends when they meet, and the kernel's part of spliced channels. The
/// agent's is [`crate::agent::transport::NodeCarriers`]; tests bring their
/// own.
pub trait Carriers: Send + Sync {
    /// Sets up the carrier of channel `id` between `sender` and `receiver`
    /// (both on this node), with a window of `window` bytes; `Err` says why
    /// the two ends cannot have what they insist on.
    fn set_up(
        &self,
        id: u32,
        name: &str,
        sender: &LocalEnd,
        receiver: &LocalEnd,
        window: u64,
    ) -> Result<SetUp, String>;

    /// The kernel's record of a spliced channel.
    fn record(&self, handle: &SpliceHandle) -> Option<ChannelRecord>;

    /// Forgets a spliced channel in the kernel.
    fn release(&self, handle: &SpliceHandle);

    /// A sender of channel `name` joins here: whatever its last ends may
    /// still set up between themselves (a held ring) is withdrawn, so that
    /// its receiver comes here too.
    fn sender_came(&self, _name: &str) {}

    /// Workflow `name` was deleted: what the ends of its streams may still
    /// set up between themselves is withdrawn.
    fn forget_workflow(&self, _name: &str) {}
}
