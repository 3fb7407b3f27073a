//! Agent-to-agent messages, on the agents' own port (`--peer-listen`): the
//! preamble `FLKA` + version (u16), the mutual proof of the cluster secret
//! ([`super::auth`]), then length-prefixed JSON as on the client protocol.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use floki_proto::{ProtocolError, VERSION};

use crate::workflow::{SpecError, StreamId};

/// First bytes of an agent-to-agent connection.
pub const PEER_MAGIC: [u8; 4] = *b"FLKA";

/// What one agent asks another.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PeerRequest {
    /// Opens a link: "I am this node". The answer is the peer's `Hello`;
    /// then the link carries `Install` and `Ping`.
    Hello {
        /// The caller's node name.
        node: String,
    },
    /// First phase of an apply: validate and hold.
    Prepare {
        /// The workflow's YAML.
        yaml: String,
        /// Its token.
        token: String,
    },
    /// Second phase: apply what was prepared.
    Commit {
        /// Workflow name.
        name: String,
    },
    /// Second phase, failed elsewhere: forget what was prepared.
    Abort {
        /// Workflow name.
        name: String,
    },
    /// Remove an applied workflow.
    Delete {
        /// Workflow name.
        name: String,
    },
    /// Apply a workflow another agent already committed (after a restart).
    Install {
        /// The workflow's YAML.
        yaml: String,
        /// Its token.
        token: String,
    },
    /// Opens the connection of a cross-node stream, producer side to
    /// consumer side, ahead of the functions. After `Ok`, the connection
    /// waits; its start ([`LinkStart`]) says the producer is there, then it
    /// carries the stream, byte for byte, both ways.
    ///
    /// The pairing key both functions present is not sent: both agents
    /// derive it from their authenticated session.
    OpenStream {
        /// The stream.
        stream: StreamId,
    },
    /// Link keep-alive.
    Ping,
}

pub use floki_proto::link_start::{LinkStart, START, START_LIVE, START_RUN};

/// The answer to a [`PeerRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum PeerAnswer {
    /// Link opened: the answering node's name.
    Hello {
        /// Node name.
        node: String,
    },
    /// Done.
    Ok,
    /// The workflow is invalid on this node.
    Invalid {
        /// What is wrong, per field.
        errors: Vec<SpecError>,
    },
    /// Refused or failed.
    Error {
        /// Why.
        message: String,
    },
    /// Keep-alive answer.
    Pong,
}

/// Writes the agent-to-agent preamble.
pub async fn write_preamble<W: AsyncWrite + Unpin>(w: &mut W) -> Result<(), ProtocolError> {
    let mut preamble = [0u8; 6];
    preamble[..4].copy_from_slice(&PEER_MAGIC);
    preamble[4..].copy_from_slice(&VERSION.to_be_bytes());
    w.write_all(&preamble).await?;
    Ok(())
}

/// The largest message between agents: they are authenticated before any
/// request, and an install carries a whole workflow spec (400 edges took
/// 38 KB, past the 16 KiB functions may send).
pub const MAX_PEER_MESSAGE_LEN: u32 = 4 << 20;

/// Reads one request (after the preamble and the authentication).
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<PeerRequest>, ProtocolError> {
    floki_proto::control::read_message_within(r, MAX_PEER_MESSAGE_LEN).await
}

/// Reads one answer to a request.
pub async fn read_answer<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<PeerAnswer>, ProtocolError> {
    floki_proto::control::read_message_within(r, MAX_PEER_MESSAGE_LEN).await
}

/// Writes one request or answer (after the authentication).
pub async fn write<W: AsyncWrite + Unpin, T: serde::Serialize>(
    w: &mut W,
    message: &T,
) -> Result<(), ProtocolError> {
    floki_proto::control::write_message_within(w, message, MAX_PEER_MESSAGE_LEN).await
}
