//! What carries a channel's bytes, once its ends are paired: one variant per
//! carrier, each with what only it has (the ring's header, the kernel's
//! record of a splice, the link to the other node), and each able to say
//! how many bytes went over it and by which path.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use floki_proto::{
    control::{Role, Transport},
    ring::RingObserver,
};

use super::ends::Ends;
use crate::agent::{datapath::SpliceHandle, transport::HugeRing};

/// Why a channel registered for splicing went over TCP.
const NOT_SPLICED: &str = "not spliced: the kernel saw no write of the sender's data socket; \
     are both ends in the agent's cgroup (see --cgroup)?";

/// A channel's carrier.
pub enum Carrier {
    /// A ring in shared memory between the two ends (its header, read
    /// through the agent's descriptor, counts the bytes), and its place
    /// among the rings on huge pages if it is one.
    Ring(RingObserver, Option<Arc<HugeRing>>),
    /// The two ends' sockets, spliced by the kernel.
    Splice(SpliceHandle),
    /// Plain TCP between the two ends' sockets.
    Tcp,
    /// The other end is on another node, and the function on this one took
    /// the agents' link itself (the agent moves none of the bytes).
    LinkHanded(LinkEnd),
    /// The other end is on another node, and this agent relays the
    /// function's data connection over the link; with eBPF the kernel
    /// redirects the bytes between them (`splice`, set once it is).
    LinkRelayed {
        /// Which end and where the other is.
        end: LinkEnd,
        /// Bytes the agent's relay moved towards the consumer.
        relayed: Arc<AtomicU64>,
        /// The kernel's part, if any.
        splice: Option<SpliceHandle>,
    },
    /// A spliced channel a previous agent left in flight, found in the
    /// pinned maps after a restart: its ends report to no one.
    Adopted(SpliceHandle),
}

/// This node's end of a cross-node stream.
#[derive(Clone, Debug)]
pub struct LinkEnd {
    /// `Send` on the producer's node, `Recv` on the consumer's.
    pub role: Role,
    /// The other end's node.
    pub peer_node: String,
    /// This end is the agent's store, taking in a stream pushed ahead of
    /// its consumer.
    pub store: bool,
    /// The function kept the link from the stream's last use (set once
    /// the link is known: on the consumer's side, when the producer's agent
    /// started it).
    pub kept: Arc<std::sync::atomic::AtomicBool>,
    /// The consumer was lent the link at its hello, before the stream
    /// started on it, and read the start itself.
    pub lent: Arc<std::sync::atomic::AtomicBool>,
}

/// Where a channel's bytes went, for its view.
pub(super) struct Route {
    pub transport: Transport,
    pub bytes: u64,
    pub note: Option<String>,
    pub peer_node: Option<String>,
}

impl Carrier {
    /// The transport the ends were told.
    pub fn transport(&self) -> Transport {
        match self {
            Self::Ring(..) => Transport::Shm,
            Self::Splice(_) | Self::Adopted(_) => Transport::Splice,
            Self::Tcp | Self::LinkHanded(_) | Self::LinkRelayed { .. } => Transport::Tcp,
        }
    }

    /// The kernel's part in the channel, if it has one.
    pub fn splice(&self) -> Option<&SpliceHandle> {
        match self {
            Self::Splice(handle) | Self::Adopted(handle) => Some(handle),
            Self::LinkRelayed { splice, .. } => splice.as_ref(),
            Self::Ring(..) | Self::Tcp | Self::LinkHanded(_) => None,
        }
    }

    /// Bytes that went over the carrier and the path they took, given what
    /// the kernel counted for the channel (frames included) and what the
    /// ends reported. Proof over claims: a splice the kernel never carried a
    /// byte of (an end outside the agent's cgroup) is reported as TCP.
    pub(super) fn route(&self, kernel: Option<u64>, ends: &Ends) -> Route {
        let received = ends[Role::Recv].bytes;
        let route = |transport, bytes, note: Option<String>| Route {
            transport,
            bytes,
            note,
            peer_node: None,
        };
        match self {
            // What the sender published into the ring, read from its header.
            Self::Ring(ring, _) => route(Transport::Shm, ring.sent().max(received), None),
            Self::Splice(_) | Self::Adopted(_) => match kernel {
                Some(0) if ends.stream_bytes() > 0 => {
                    route(Transport::Tcp, received, Some(NOT_SPLICED.to_owned()))
                }
                Some(bytes) => route(Transport::Splice, bytes, None),
                None => route(Transport::Splice, received, None),
            },
            Self::Tcp => route(Transport::Tcp, received, None),
            Self::LinkHanded(end) => {
                let (direction, function) = match end.role {
                    Role::Send => ("to", "producer"),
                    Role::Recv => ("from", "consumer"),
                };
                let handed = if end.kept.load(Ordering::Relaxed) {
                    format!("the {function} kept the agents' link from the stream's last use")
                } else if end.lent.load(Ordering::Relaxed) {
                    format!(
                        "the agents' link was lent to the {function} before the stream started, and it read the start itself"
                    )
                } else {
                    format!("the agents' link was handed to the {function}")
                };
                let note = format!(
                    "{direction} node {}: {handed}; \
                     no byte passes through the agent (bytes as the {function} reports them)",
                    end.peer_node
                );
                Route {
                    peer_node: Some(end.peer_node.clone()),
                    ..route(Transport::Tcp, ends[end.role].bytes, Some(note))
                }
            }
            Self::LinkRelayed { end, relayed, .. } => {
                let relayed = relayed.load(Ordering::Relaxed);
                let (bytes, note) = relayed_path(end, relayed, kernel);
                Route {
                    peer_node: Some(end.peer_node.clone()),
                    ..route(Transport::Tcp, bytes, Some(note))
                }
            }
        }
    }
}

/// Bytes this node moved towards the consumer of a relayed cross-node
/// stream, and how.
fn relayed_path(end: &LinkEnd, relayed: u64, kernel: Option<u64>) -> (u64, String) {
    let peer = &end.peer_node;
    match (end.role, kernel) {
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
