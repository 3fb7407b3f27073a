//! The client's errors as Python exceptions: the classes live in
//! `floki.errors` (so that they can also derive from Python's own
//! `ConnectionError`, `TimeoutError`, ...); the message is the client's.
//!
//! A [`Failure`] is plain Rust data, built where the GIL may not be held
//! (inside `Python::detach`), and raised once it is.

use std::io;

use floki_client::{ClientError, StreamError, error_chain};
use floki_proto::control::Refusal;
use pyo3::{PyErr, Python, types::PyAnyMethods as _};

/// An error on its way to Python: the `floki.errors` class and the message.
#[derive(Debug)]
pub struct Failure {
    class: &'static str,
    message: String,
}

impl Failure {
    /// A failure of class `class` (a name in `floki.errors`).
    pub fn new(class: &'static str, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }

    /// A client error: setting up, or the stream as `finish` saw it.
    pub fn client(err: &ClientError) -> Self {
        let class = match err {
            ClientError::AgentUnreachable { .. } => "AgentUnreachableError",
            ClientError::Refused {
                reason: Refusal::NotAllowed,
                ..
            } => "NotAllowedError",
            ClientError::Refused {
                reason: Refusal::TransportUnavailable,
                ..
            } => "TransportUnavailableError",
            ClientError::Refused {
                reason: Refusal::StreamLost,
                ..
            } => "StreamLostError",
            ClientError::Refused { .. } => "RefusedError",
            ClientError::PairTimeout { .. } => "PairTimeoutError",
            ClientError::Stream { source, .. } => stream_class(source),
            _ => "Error",
        };
        Self::new(class, error_chain(err))
    }

    /// A read or write error; `setup` is why the stream could not be set up,
    /// when that is what the error says.
    pub fn io(err: &io::Error, setup: Option<&ClientError>) -> Self {
        match (StreamError::from_io(err), setup) {
            (Some(StreamError::NotPaired { .. }), Some(setup)) => Self::client(setup),
            (Some(stream), _) => Self::new(stream_class(stream), stream.to_string()),
            (None, _) => Self::new("Error", err.to_string()),
        }
    }
}

fn stream_class(err: &StreamError) -> &'static str {
    match err {
        StreamError::Truncated { .. } => "TruncatedError",
        StreamError::Corrupted { .. } => "CorruptedError",
        StreamError::Aborted { .. } => "AbortedError",
        StreamError::ReceiverGone { .. } => "ReceiverGoneError",
        StreamError::Rejected { .. } => "RejectedError",
        StreamError::NotPaired { .. } => "Error",
        _ => "StreamError",
    }
}

impl From<Failure> for PyErr {
    fn from(failure: Failure) -> Self {
        Python::attach(|py| {
            let class = py
                .import("floki.errors")
                .and_then(|errors| errors.getattr(failure.class));
            match class {
                Ok(class) => match class.call1((failure.message,)) {
                    Ok(exception) => PyErr::from_value(exception),
                    Err(err) => err,
                },
                Err(err) => err,
            }
        })
    }
}

impl From<&ClientError> for Failure {
    fn from(err: &ClientError) -> Self {
        Self::client(err)
    }
}
