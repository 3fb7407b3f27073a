//! A sender from `open` until its stream is established, for both clients:
//! pairing and the data path are set up on a task while the sender's writes
//! fill a buffer of the channel's window. The async client polls the task,
//! the blocking one waits for it; everything else is this one state machine.

use std::{
    future::Future as _,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::{
    runtime::Runtime,
    sync::watch,
    task::{JoinError, JoinHandle},
};

use super::Established;
use crate::{ClientError, StreamError, error_chain};

/// The task that sets a sender's stream up.
pub(crate) type SetupTask = JoinHandle<Result<Established, ClientError>>;

/// Where a sender's stream is.
pub(crate) enum Opening<T> {
    /// Pairing and the data path are being set up.
    Pairing(SetupTask),
    /// The stream is established: `T` is the client's open stream.
    Open(T),
    /// Setting the stream up failed: what writes return, and the set-up's
    /// own error (`None` if its task died).
    Failed(StreamError, Option<ClientError>),
}

impl<T> Opening<T> {
    /// The open stream, if it is.
    pub fn open(&self) -> Option<&T> {
        match self {
            Self::Open(open) => Some(open),
            _ => None,
        }
    }

    /// The open stream, if it is.
    pub fn open_mut(&mut self) -> Option<&mut T> {
        match self {
            Self::Open(open) => Some(open),
            _ => None,
        }
    }

    /// Why setting the stream up failed, if it did.
    pub fn failure(&self) -> Option<&ClientError> {
        match self {
            Self::Failed(_, cause) => cause.as_ref(),
            _ => None,
        }
    }

    /// Takes the set-up's error out, if it failed.
    pub fn take_failure(&mut self) -> Option<ClientError> {
        match self {
            Self::Failed(_, cause) => cause.take(),
            _ => None,
        }
    }

    /// Whether the stream is still being set up.
    pub fn is_pairing(&self) -> bool {
        matches!(self, Self::Pairing(_))
    }

    /// Stops setting the stream up.
    pub fn cancel(&mut self) {
        if let Self::Pairing(task) = self {
            task.abort();
        }
    }

    /// Drives the set-up to its end (async): `Ready(Ok)` once the stream is
    /// open, turned into `T` by `start`.
    pub fn poll_open(
        &mut self,
        cx: &mut Context<'_>,
        start: impl FnOnce(Established) -> Result<T, ClientError>,
    ) -> Poll<io::Result<&mut T>> {
        if let Self::Pairing(task) = self {
            let done = ready!(Pin::new(task).poll(cx));
            self.settle(done, start);
        }
        Poll::Ready(self.outcome())
    }

    /// A set-up that already ended (done on the caller's thread).
    pub fn settled(
        done: Result<Established, ClientError>,
        start: impl FnOnce(Established) -> Result<T, ClientError>,
    ) -> Self {
        let mut opening = Self::Failed(StreamError::Closed, None);
        opening.settle(Ok(done), start);
        opening
    }

    /// Waits for the set-up to end (blocking, on `runtime`).
    pub fn wait_open(
        &mut self,
        runtime: &Runtime,
        start: impl FnOnce(Established) -> Result<T, ClientError>,
    ) -> io::Result<&mut T> {
        if let Self::Pairing(task) = self {
            let done = runtime.block_on(task);
            self.settle(done, start);
        }
        self.outcome()
    }

    fn settle(
        &mut self,
        done: Result<Result<Established, ClientError>, JoinError>,
        start: impl FnOnce(Established) -> Result<T, ClientError>,
    ) {
        let not_paired = |err: ClientError| {
            Self::Failed(
                StreamError::NotPaired {
                    reason: error_chain(&err),
                },
                Some(err),
            )
        };
        *self = match done {
            Ok(Ok(established)) => match start(established) {
                Ok(open) => Self::Open(open),
                Err(err) => not_paired(err),
            },
            Ok(Err(err)) => not_paired(err),
            Err(err) => Self::Failed(
                StreamError::NotPaired {
                    reason: err.to_string(),
                },
                None,
            ),
        };
    }

    fn outcome(&mut self) -> io::Result<&mut T> {
        match self {
            Self::Open(open) => Ok(open),
            Self::Failed(err, _) => Err(err.clone().into()),
            Self::Pairing(_) => unreachable!("settled before"),
        }
    }
}

/// Bytes a sender holds before they go out: written while the stream was
/// being set up (up to the channel's window), or small writes gathered into
/// one frame.
pub(crate) struct Pending {
    buf: Vec<u8>,
    /// Bytes of `buf` already sent.
    sent: usize,
    /// What may be held while the stream is being set up.
    while_pairing: usize,
    /// Tells the set-up task that the sender has nothing more to buffer.
    nudge: watch::Sender<Nudge>,
}

/// What a sender that has not met its receiver tells its agent: nothing
/// yet, that it waits (nothing more to buffer), or that it is finishing
/// (its whole stream is buffered). Only ever rises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Nudge {
    /// Still buffering.
    #[default]
    Writing,
    /// Nothing more to buffer.
    Waiting,
    /// Finishing: the whole stream is buffered.
    Finishing,
}

impl Pending {
    /// A buffer that may hold `while_pairing` bytes before the stream
    /// opens, and the set-up task's nudge (see [`Pending::nudge`]).
    pub fn new(while_pairing: u64) -> (Self, watch::Receiver<Nudge>) {
        let (nudge, nudged) = watch::channel(Nudge::Writing);
        let pending = Self {
            buf: crate::spare_buffers::take(),
            sent: 0,
            while_pairing: usize::try_from(while_pairing).unwrap_or(usize::MAX),
            nudge,
        };
        (pending, nudged)
    }

    /// Before the stream opens: takes what fits of `data`; 0 when full
    /// (and then the agent hears that this sender waits: [`Pending::nudge`]).
    pub fn hold(&mut self, data: &[u8]) -> usize {
        let room = self.while_pairing.saturating_sub(self.buf.len());
        let take = room.min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if take < data.len() {
            self.nudge(Nudge::Waiting);
        }
        take
    }

    /// Tells the agent that the sender has nothing more to buffer before
    /// its receiver is there (or is finishing): the agent may store the
    /// stream. Said once per level.
    pub fn nudge(&mut self, level: Nudge) {
        self.nudge.send_if_modified(|now| {
            let rises = level > *now;
            if rises {
                *now = level;
            }
            rises
        });
    }

    /// Whether a write of `len` bytes should be gathered with others
    /// rather than sent as a frame of its own; `Some(true)` if the buffer
    /// must be sent first to make room.
    pub fn gathers(&self, len: usize, gathering: crate::Gathering) -> Option<bool> {
        (len < gathering.below).then(|| self.buf.len() - self.sent + len > gathering.cap)
    }

    /// Adds a small write.
    pub fn gather(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// What is still to be sent.
    pub fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// `n` more bytes were sent; the buffer is emptied once all were.
    pub fn sent(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
    }

    /// Bytes held and not sent.
    pub fn len(&self) -> usize {
        self.buf.len() - self.sent
    }
}

impl Drop for Pending {
    /// The buffer, its pages touched, goes to the next sender.
    fn drop(&mut self) {
        crate::spare_buffers::give_back(std::mem::take(&mut self.buf));
    }
}
