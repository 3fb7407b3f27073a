//! Errors of the client library.

use std::{io, net::SocketAddr, time::Duration};

pub use floki_proto::stream::StreamError;
use floki_proto::{
    ProtocolError,
    control::{Refusal, Role},
};

/// Setting a channel up, or finishing it, failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent could not be reached.
    #[error(
        "cannot reach the Floki agent at {agent} (is `floki-agent run` listening there? give its address with --agent or agent=, or set FLOKI_AGENT)"
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

impl ClientError {
    /// A stream failure of `channel`, from the `io::Error` a read or write
    /// returned (`context` if it carries no [`StreamError`]).
    pub(crate) fn stream(
        channel: &str,
        err: &io::Error,
        context: &'static str,
        bytes: u64,
    ) -> Self {
        let source = StreamError::from_io(err)
            .cloned()
            .unwrap_or_else(|| StreamError::io(context, bytes, err));
        Self::Stream {
            channel: channel.to_owned(),
            source,
        }
    }
}

/// An error and its causes, `: `-separated, for logs and answers.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}
