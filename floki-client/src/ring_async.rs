//! The shared-memory ring for the async client: copies happen on the
//! caller's task, and only a wait (a full ring for the sender, an empty one
//! for the receiver, the receiver's verdict) moves to tokio's blocking pool,
//! where the ring's own futex wait runs, for at most 50 ms at a time (see
//! `RingWaiter::brief`): a process with more waiting ends than the pool has
//! threads still makes progress.

use std::{
    future::Future as _,
    pin::Pin,
    task::{Context, Poll, ready},
};

use floki_proto::{
    ring::{RingReader, RingWriter},
    stream::StreamError,
};
use tokio::task::JoinHandle;

/// A wait running on the blocking pool.
#[derive(Default)]
struct Wait(Option<JoinHandle<Result<(), StreamError>>>);

impl Wait {
    /// Polls the wait `start` begins (unless one is already running).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        start: impl FnOnce() -> JoinHandle<Result<(), StreamError>>,
    ) -> Poll<Result<(), StreamError>> {
        let task = self.0.get_or_insert_with(start);
        let done = ready!(Pin::new(task).poll(cx));
        self.0 = None;
        Poll::Ready(done.unwrap_or_else(|err| {
            Err(StreamError::Protocol(format!(
                "waiting on the shared-memory ring failed: {err}"
            )))
        }))
    }
}

/// A sender's ring, async.
pub(crate) struct AsyncRingWriter {
    pub ring: RingWriter,
    wait: Wait,
    ended: bool,
}

impl AsyncRingWriter {
    pub fn new(ring: RingWriter) -> Self {
        Self {
            ring,
            wait: Wait::default(),
            ended: false,
        }
    }

    /// Copies at least one byte of `buf` (not empty) into the ring.
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, StreamError>> {
        loop {
            match self.ring.try_write(buf)? {
                0 => {
                    let (waiter, head) = (self.ring.waiter().brief(), self.ring.sent());
                    ready!(self.wait.poll(cx, || {
                        tokio::task::spawn_blocking(move || waiter.room(head))
                    }))?;
                }
                n => return Poll::Ready(Ok(n)),
            }
        }
    }

    /// Waits until the ring has room for at least one byte.
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamError>> {
        while self.ring.try_reserve(1)?.is_empty() {
            let (waiter, head) = (self.ring.waiter().brief(), self.ring.sent());
            ready!(self.wait.poll(cx, || {
                tokio::task::spawn_blocking(move || waiter.room(head))
            }))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Publishes the end mark (once) and waits for the receiver's verdict.
    pub fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamError>> {
        if !self.ended {
            self.ended = true;
            self.ring.publish_end();
        }
        loop {
            if let Some(verdict) = self.ring.try_ack() {
                return Poll::Ready(verdict);
            }
            let (waiter, sent) = (self.ring.waiter().brief(), self.ring.sent());
            ready!(
                self.wait
                    .poll(cx, || tokio::task::spawn_blocking(move || waiter.ack(sent)))
            )?;
        }
    }
}

/// A receiver's ring, async.
pub(crate) struct AsyncRingReader {
    pub ring: RingReader,
    wait: Wait,
}

impl AsyncRingReader {
    pub fn new(ring: RingReader) -> Self {
        Self {
            ring,
            wait: Wait::default(),
        }
    }

    /// Copies the next bytes into `buf`; 0 once the stream ended verified.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<usize, StreamError>> {
        loop {
            if let Some(n) = self.ring.try_read(buf)? {
                return Poll::Ready(Ok(n));
            }
            let (waiter, tail) = (self.ring.waiter().brief(), self.ring.received());
            ready!(self.wait.poll(cx, || tokio::task::spawn_blocking(move || {
                waiter.data(tail)
            })))?;
        }
    }
}
