//! What the core tells about its channels: a view of each (live or
//! finished) and totals. The control plane turns them into status and
//! metrics.

use std::time::Duration;

use floki_proto::control::{Role, Transport};

/// Where a channel is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// One end has joined; waiting for the other.
    Waiting,
    /// Paired: the stream is flowing (or about to).
    Active,
    /// Over, with a verified stream.
    Done,
    /// Over, with a failure or without a verified end.
    Failed,
    /// Adopted after a restart, and its sockets have closed: the ends
    /// checked the stream themselves.
    Closed,
}

/// One channel, as the core sees it.
#[derive(Clone, Debug)]
pub struct ChannelView {
    /// Agent-wide id.
    pub id: u32,
    /// Channel name.
    pub name: String,
    /// Where it is in its life.
    pub phase: Phase,
    /// How the bytes travel (`None` while waiting).
    pub transport: Option<Transport>,
    /// Bytes that went over the carrier (see [`super::Carrier`]).
    pub bytes: u64,
    /// Stream bytes (payload) the ends reported.
    pub stream_bytes: u64,
    /// Bytes the kernel program moved for this channel on this node.
    pub kernel_bytes: Option<u64>,
    /// Cross-node streams: the node of the other end.
    pub peer_node: Option<String>,
    /// The ends that joined.
    pub ends: Vec<Role>,
    /// Since the first end joined.
    pub age: Duration,
    /// From pairing to the end (finished channels).
    pub duration: Option<Duration>,
    /// What went wrong (failed channels).
    pub error: Option<String>,
    /// Anything else an operator should know about the path taken.
    pub note: Option<String>,
    /// Why this carrier.
    pub reason: Option<String>,
    /// Which end is the agent's store, if one is: the receiver (the stream
    /// is being stored) or the sender (a stored stream is replayed).
    pub store: Option<Role>,
}

/// The core's totals since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelTotals {
    /// Bytes of channels over `tcp` (finished and active).
    pub tcp_bytes: u64,
    /// Bytes of channels over `shm` (finished and active).
    pub shm_bytes: u64,
    /// Channels paired and not finished.
    pub active: u64,
    /// Channels finished with a verified stream.
    pub done: u64,
    /// Channels that failed.
    pub failed: u64,
}
