//! Floki's wire protocol, shared by the agent and the client library, with
//! no daemon in it: what a client and an agent say to each other, and what
//! the two ends of a channel say to each other. `docs/PROTOCOL.md` is the
//! description for implementers in other languages.
//!
//! * [`control`]: the handshake between a client and its agent (TCP, or the
//!   agent's Unix socket): a preamble, then length-prefixed JSON messages.
//! * [`handoff`]: on the Unix socket, sockets the agent hands to a client.
//! * [`link_start`]: the start of a stream on the agents' link across nodes.
//! * [`ring`]: the `shm` transport, a ring in shared memory.
//! * [`frame`]: the data stream between a sender and its receiver, on their
//!   own point-to-point socket: binary frames, credits, the end mark.
//! * [`stream`]: each direction's state (framing, credits, checksum), without
//!   I/O; the clients move bytes between sockets and it.
//! * [`netns`]: the network-namespace cookie a client reports.
#![deny(missing_docs)]

pub mod control;
pub mod frame;
pub mod handoff;
pub mod link_start;
pub mod netns;
pub mod ring;
pub mod stream;

use std::io;

/// First bytes a client sends to an agent.
pub const MAGIC: [u8; 4] = *b"FLKI";
/// Protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Largest control message, in bytes of JSON.
pub const MAX_MESSAGE_LEN: u32 = 16 * 1024;
/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME_LEN: usize = 255;
/// Longest run (a hello's `run`), in bytes: a stored stream's run crosses
/// nodes behind one length byte.
pub const MAX_RUN_LEN: usize = 255;
/// Length of the pairing key that proves a data connection comes from the
/// sender the agent paired.
pub const KEY_LEN: usize = 16;

/// What can go wrong reading or writing Floki's wire format.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer does not speak Floki (wrong magic).
    #[error("the peer does not speak the Floki protocol (first bytes {0:02x?}, expected \"FLKI\")")]
    BadMagic([u8; 4]),
    /// The peer speaks another version.
    #[error(
        "unsupported protocol version {0} (this side speaks version {VERSION}); upgrade the older side"
    )]
    UnsupportedVersion(u16),
    /// A control message is larger than allowed.
    #[error("control message of {len} bytes exceeds the {limit}-byte limit")]
    MessageTooLarge {
        /// The message's announced length.
        len: u32,
        /// The most this connection takes.
        limit: u32,
    },
    /// A control message is not the JSON expected.
    #[error("malformed control message: {0}")]
    BadMessage(#[from] serde_json::Error),
    /// A data frame header is invalid.
    #[error("malformed frame: {0}")]
    BadFrame(String),
    /// The connection closed in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ProtocolError {
    /// Maps an I/O error at a message boundary: an early EOF is a truncation.
    pub fn from_read(err: io::Error) -> Self {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            Self::Truncated
        } else {
            Self::Io(err)
        }
    }
}
