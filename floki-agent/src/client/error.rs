//! Errors of the client library.

use std::{io, net::SocketAddr, time::Duration};

use crate::protocol::{
    ProtocolError,
    control::{Refusal, Role},
};

/// Setting a channel up failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent could not be reached.
    #[error(
        "cannot reach the Floki agent at {agent} (is `floki-agent run` listening there? see --agent)"
    )]
    AgentUnreachable {
        /// Address tried.
        agent: String,
        /// Why.
        source: io::Error,
    },
    /// The agent refused the channel.
    #[error("the agent refused channel '{channel}' ({reason:?}): {message}")]
    Refused {
        /// Channel name.
        channel: String,
        /// Machine-readable reason.
        reason: Refusal,
        /// The agent's explanation.
        message: String,
    },
    /// The agent went away before the channel was paired.
    #[error(
        "the agent closed the connection before channel '{channel}' was paired; is it still running?"
    )]
    AgentClosed {
        /// Channel name.
        channel: String,
    },
    /// The other end did not join in time.
    #[error("no {peer} joined channel '{channel}' within {timeout:?}")]
    PairTimeout {
        /// Channel name.
        channel: String,
        /// The end that was awaited.
        peer: Role,
        /// How long we waited.
        timeout: Duration,
    },
    /// The sender could not connect to the receiver's data listener.
    #[error("cannot connect to the receiver of channel '{channel}' at {addr}")]
    ReceiverUnreachable {
        /// Channel name.
        channel: String,
        /// Receiver's data address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The paired sender never opened its data connection.
    #[error("the sender of channel '{channel}' did not connect within {timeout:?} after pairing")]
    SenderTimeout {
        /// Channel name.
        channel: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The peer or the agent broke the protocol.
    #[error("protocol error on channel '{channel}'")]
    Protocol {
        /// Channel name.
        channel: String,
        /// What was wrong.
        source: ProtocolError,
    },
    /// The stream itself failed (truncated, corrupted, peer gone).
    #[error("channel '{channel}'")]
    Stream {
        /// Channel name.
        channel: String,
        /// What happened.
        source: StreamError,
    },
    /// A local socket operation failed.
    #[error("channel '{channel}': {context}")]
    Io {
        /// Channel name.
        channel: String,
        /// What we were doing.
        context: &'static str,
        /// Why it failed.
        source: io::Error,
    },
}

/// A stream failed. Returned inside `io::Error` by the `AsyncRead` /
/// `AsyncWrite` implementations (`io::Error::get_ref` gives it back).
#[derive(Clone, Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection ended before the end mark.
    #[error(
        "stream truncated: the sender's connection ended after {bytes} bytes without the end mark (sender killed or connection reset)"
    )]
    Truncated {
        /// Bytes received before the end.
        bytes: u64,
    },
    /// The end mark does not match what arrived.
    #[error(
        "stream corrupted: the end mark announces {expected_bytes} bytes with xxh3 {expected_checksum:016x}, but {bytes} bytes with xxh3 {checksum:016x} arrived"
    )]
    Corrupted {
        /// Bytes received.
        bytes: u64,
        /// Checksum of what was received.
        checksum: u64,
        /// Bytes the sender sent.
        expected_bytes: u64,
        /// Checksum the sender computed.
        expected_checksum: u64,
    },
    /// The sender aborted.
    #[error("the sender aborted the stream after {bytes} bytes: {reason}")]
    Aborted {
        /// Bytes received before the abort.
        bytes: u64,
        /// The sender's reason.
        reason: String,
    },
    /// The receiver went away before confirming the end.
    #[error(
        "the receiver closed the channel after {bytes} bytes were sent, without confirming the end (receiver gone or failed)"
    )]
    ReceiverGone {
        /// Bytes sent.
        bytes: u64,
    },
    /// The receiver refused the stream.
    #[error("the receiver rejected the stream: {reason}")]
    Rejected {
        /// The receiver's reason.
        reason: String,
    },
    /// The peer broke the frame protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The socket failed.
    #[error("{context} after {bytes} bytes: {kind:?}: {message}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// Bytes moved before the failure.
        bytes: u64,
        /// The I/O error kind.
        kind: io::ErrorKind,
        /// The I/O error text.
        message: String,
    },
    /// The stream was already finished or failed.
    #[error("the stream is closed")]
    Closed,
}

impl StreamError {
    pub(crate) fn io(context: &'static str, bytes: u64, err: &io::Error) -> Self {
        Self::Io {
            context,
            bytes,
            kind: err.kind(),
            message: err.to_string(),
        }
    }

    fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            Self::Corrupted { .. } | Self::Protocol(_) => io::ErrorKind::InvalidData,
            Self::Aborted { .. } => io::ErrorKind::ConnectionAborted,
            Self::ReceiverGone { .. } | Self::Closed => io::ErrorKind::BrokenPipe,
            Self::Rejected { .. } => io::ErrorKind::ConnectionRefused,
            Self::Io { kind, .. } => *kind,
        }
    }
}

impl From<StreamError> for io::Error {
    fn from(err: StreamError) -> Self {
        io::Error::new(err.kind(), err)
    }
}
