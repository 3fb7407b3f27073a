//! Types shared by Floki's kernel programs (`floki-ebpf`) and the agent (`floki-agent`).
//!
//! Every type here is `#[repr(C)]`, `Copy` and free of padding that the kernel
//! could see uninitialised: they are map keys and values, laid out identically
//! on both sides.
#![no_std]
#![deny(missing_docs)]

/// Names of the kernel programs, as the agent looks them up in the object.
pub mod program {
    /// The `sock_ops` program: recognises channel sockets when they connect.
    pub const SOCK_OPS: &str = "floki_sock_ops";
    /// The `sk_msg` program: redirects a channel socket's writes to its peer.
    pub const SK_MSG: &str = "floki_sk_msg";
}

/// Names of the maps, as the agent looks them up in the object.
pub mod map {
    /// `EndpointKey -> ChannelEnd`: the data sockets the agent expects.
    pub const ENDPOINTS: &str = "FLOKI_ENDPOINTS";
    /// `ChannelEnd -> socket`: the channel sockets the kernel splices.
    pub const SOCKETS: &str = "FLOKI_SOCKETS";
    /// `u32 channel -> ChannelRecord`: per-channel presence and counters.
    pub const CHANNELS: &str = "FLOKI_CHANNELS";
    /// Per-socket storage `ChannelEnd`: which channel end a socket is.
    pub const SOCKET_ENDS: &str = "FLOKI_SOCKET_ENDS";
    /// `0 -> DatapathCounters`: totals since the programs were loaded.
    pub const COUNTERS: &str = "FLOKI_COUNTERS";
}

/// The writing end of a channel.
pub const ROLE_SENDER: u32 = 0;
/// The reading end of a channel.
pub const ROLE_RECEIVER: u32 = 1;

/// The data socket that connects to the receiver's listener (the sender's).
pub const SIDE_CONNECT: u32 = 0;
/// The data socket that the receiver's listener accepts.
pub const SIDE_ACCEPT: u32 = 1;

/// One end of one channel. The key of the socket map, the value of the endpoint
/// map and the per-socket storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelEnd {
    /// Channel id, allocated by the agent.
    pub channel: u32,
    /// [`ROLE_SENDER`] or [`ROLE_RECEIVER`].
    pub role: u32,
}

impl ChannelEnd {
    /// The other end of the same channel.
    pub const fn peer(self) -> Self {
        Self {
            channel: self.channel,
            role: self.role ^ 1,
        }
    }
}

/// How `sock_ops` recognises a channel's data socket when it reaches the
/// established state. Keys carry the network namespace, so that identical
/// addresses in two namespaces (two pods using 127.0.0.1) never collide.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Network namespace cookie of the socket's namespace.
    pub netns_cookie: u64,
    /// The receiver's listening address: IPv6, or IPv4 mapped (`::ffff:a.b.c.d`),
    /// in network byte order.
    pub addr: [u8; 16],
    /// The receiver's listening port, host byte order.
    pub port: u32,
    /// [`SIDE_CONNECT`] or [`SIDE_ACCEPT`].
    pub side: u32,
}

/// Bytes of a channel's name its kernel record keeps (longer names are cut at
/// a character boundary).
pub const RECORD_NAME_LEN: usize = 64;

/// What a sender may write beyond its receiver's credit before the kernel
/// refuses its writes: its hello and end frames (which credits do not
/// count), with room to spare.
pub const WINDOW_SLACK: u64 = 64 << 10;

/// Per-channel state that the kernel programs keep and the agent reads. It
/// outlives the agent process (the maps are pinned), so a restarted agent
/// finds its channels here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelRecord {
    /// Socket cookie of each end while it is in the socket map (0: absent),
    /// indexed by role.
    pub cookies: [u64; 2],
    /// Bytes redirected from each end to its peer, indexed by the sending role.
    pub bytes: [u64; 2],
    /// Messages (sendmsg chunks) redirected from each end, indexed by role.
    pub msgs: [u64; 2],
    /// The receiver's latest credit, as `floki_sk_msg` saw it go by, or
    /// the window the agent granted at pairing: the sender may have sent
    /// up to this many bytes of data frames (0: none yet, `u64::MAX`: the
    /// receiver's messages could not be read, no limit).
    /// Past it, plus [`WINDOW_SLACK`], the sender's writes are refused.
    pub granted: u64,
    /// Per sending role: non-zero to redirect into the peer socket's send
    /// queue (a link to another node's agent) instead of its receive queue.
    pub egress: [u32; 2],
    /// The channel's name, NUL-padded (written by the agent only).
    pub name: [u8; RECORD_NAME_LEN],
}

impl Default for ChannelRecord {
    fn default() -> Self {
        Self {
            cookies: [0; 2],
            bytes: [0; 2],
            msgs: [0; 2],
            granted: 0,
            egress: [0; 2],
            name: [0; RECORD_NAME_LEN],
        }
    }
}

impl ChannelRecord {
    /// An empty record for channel `name`.
    pub fn named(name: &str) -> Self {
        let mut record = Self::default();
        let mut len = name.len().min(RECORD_NAME_LEN);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        record.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        record
    }

    /// The name as recorded (possibly cut).
    pub fn name(&self) -> &str {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(RECORD_NAME_LEN);
        core::str::from_utf8(&self.name[..len]).unwrap_or("")
    }

    /// Whether either end's socket is still in the socket map.
    pub fn in_flight(&self) -> bool {
        self.cookies != [0; 2]
    }
}

/// Totals since the programs were loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathCounters {
    /// Bytes redirected socket to socket (into the peer's receive queue).
    pub spliced_bytes: u64,
    /// Bytes redirected into a link to another node (the peer's send queue).
    pub forwarded_bytes: u64,
    /// Messages (sendmsg chunks) redirected.
    pub spliced_msgs: u64,
    /// Messages of channel sockets that went over TCP because the peer was absent.
    pub passed_msgs: u64,
    /// Redirects the kernel refused.
    pub redirect_errors: u64,
    /// Sender writes refused for going past the receiver's credit.
    pub window_refusals: u64,
    /// Eager hellos returned to their sender (into its own receive queue)
    /// because the receiver's socket was not spliced yet; the sender then
    /// waits for the receiver's first credit.
    pub eager_returns: u64,
    /// Sockets inserted into the socket map.
    pub sockets_inserted: u64,
    /// Sockets that matched an endpoint but could not be inserted.
    pub insert_errors: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and arrays without padding.
    unsafe impl aya::Pod for super::ChannelEnd {}
    // SAFETY: as above; `u64, [u8; 16], u32, u32` has no padding.
    unsafe impl aya::Pod for super::EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ChannelRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DatapathCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_cut_at_a_character_boundary() {
        assert_eq!(ChannelRecord::named("wf/edge").name(), "wf/edge");
        let long = "é".repeat(40); // 80 bytes
        let record = ChannelRecord::named(&long);
        assert_eq!(record.name(), "é".repeat(32));
        assert!(!record.in_flight());
    }
}
