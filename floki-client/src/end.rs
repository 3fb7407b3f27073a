//! What both clients keep about their end of a channel: which channel, how
//! its stream ended, and the reports to the agent.

use std::io;

use super::{ClientError, StreamError, Summary, Transport, reporter::Reporter};

/// One end of a channel, as both clients track it.
pub(crate) struct EndState {
    pub channel: String,
    pub channel_id: u32,
    pub transport: Transport,
    pub reporter: Reporter,
    /// The other end is the agent's store (said at pairing, or by a
    /// `Stored` frame across nodes).
    pub stored: bool,
    failed: Option<StreamError>,
}

impl EndState {
    pub fn new(channel: String, channel_id: u32, transport: Transport, reporter: Reporter) -> Self {
        Self {
            channel,
            channel_id,
            transport,
            reporter,
            stored: false,
            failed: None,
        }
    }

    /// Records the stream's failure (the first one counts) and reports it to
    /// the agent; returns it.
    pub fn fail(&mut self, err: StreamError, bytes: u64) -> StreamError {
        if self.failed.is_none() {
            self.reporter.finish(bytes, Some(err.to_string()));
            self.failed = Some(err.clone());
        }
        err
    }

    /// The failure recorded, if any, as the error to return again.
    pub fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(err) => Err(err.clone().into()),
            None => Ok(()),
        }
    }

    /// The failure recorded, if any.
    pub fn failure(&self) -> Option<&StreamError> {
        self.failed.as_ref()
    }

    /// What a completed stream moved.
    pub fn summary(&self, bytes: u64, checksum: u64) -> Summary {
        Summary {
            channel_id: self.channel_id,
            transport: self.transport,
            bytes,
            checksum,
            stored: self.stored,
        }
    }

    /// A receiver's summary at `finish`: complete only after the verified
    /// end of the stream (`ended`).
    pub fn received(
        &mut self,
        bytes: u64,
        checksum: u64,
        ended: bool,
    ) -> Result<Summary, StreamError> {
        match (self.failure(), ended) {
            (Some(err), _) => Err(err.clone()),
            (None, true) => Ok(self.summary(bytes, checksum)),
            (None, false) => {
                let err =
                    StreamError::Protocol("finish() called before the end of the stream".into());
                Err(self.fail(err, bytes))
            }
        }
    }

    /// `source` as this channel's error.
    pub fn error(&self, source: StreamError) -> ClientError {
        ClientError::Stream {
            channel: self.channel.clone(),
            source,
        }
    }
}

/// A sender's socket error: the receiver is gone (EPIPE or ECONNRESET from
/// TCP, EACCES from a refused redirect), or what the socket said.
pub(crate) fn write_failure(context: &'static str, sent: u64, err: &io::Error) -> StreamError {
    match err.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::PermissionDenied => StreamError::ReceiverGone { bytes: sent },
        _ => StreamError::io(context, sent, err),
    }
}

/// A receiver's socket error: a reset connection without the end mark is a
/// truncated stream.
pub(crate) fn read_failure(received: u64, err: &io::Error) -> StreamError {
    match err.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            StreamError::Truncated { bytes: received }
        }
        _ => StreamError::io("reading the stream", received, err),
    }
}

/// Whether a sender's data connection, after a verified stream, can carry
/// the stream's next use: it is the agents' link (`is_link`), the
/// receiver's ack was read and nothing after it, and the kernel still has
/// the connection established.
pub(crate) fn sender_link_reusable(
    is_link: bool,
    outbound: &floki_proto::stream::Outbound,
    socket: std::os::fd::BorrowedFd<'_>,
) -> bool {
    is_link && outbound.settled() && floki_proto::handoff::link_established(socket)
}
