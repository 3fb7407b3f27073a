//! The shared-memory ring for the async client: copies happen on the
//! caller's task, and a wait (a full ring for the sender, an empty one for
//! the receiver, the receiver's verdict) parks the task in a ring hub, one
//! thread of which sleeps on up to 127 rings' futexes at once
//! (`floki_proto::ring::RingWaiter::poll`): no thread per waiting end, so a
//! process with thousands of channels waiting neither runs out of threads
//! nor queues new channels behind old ones.

use std::task::{Context, Poll, ready};

use floki_proto::{
    ring::{Awaited, HubSlot, KeptRing, RingReader, RingWriter},
    stream::StreamError,
};

/// A sender's ring, async.
pub(crate) struct AsyncRingWriter {
    pub ring: RingWriter,
    slot: HubSlot,
    ended: bool,
}

impl AsyncRingWriter {
    pub fn new(ring: RingWriter) -> Self {
        Self {
            ring,
            slot: HubSlot::default(),
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
                0 => ready!(self.poll_wait(
                    cx,
                    Awaited::Room {
                        head: self.ring.sent()
                    }
                ))?,
                n => return Poll::Ready(Ok(n)),
            }
        }
    }

    /// Waits until the ring has room for at least one byte.
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamError>> {
        while self.ring.try_reserve(1)?.is_empty() {
            ready!(self.poll_wait(
                cx,
                Awaited::Room {
                    head: self.ring.sent()
                }
            ))?;
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
            ready!(self.poll_wait(
                cx,
                Awaited::Ack {
                    sent: self.ring.sent()
                }
            ))?;
        }
    }

    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        awaited: Awaited,
    ) -> Poll<Result<(), StreamError>> {
        self.ring.waiter().poll(awaited, &mut self.slot, cx)
    }

    /// The ring, to keep after a verified stream ([`RingWriter::keep`]):
    /// its wait leaves the hub first. `None` while the hub still holds it.
    pub fn keep(self) -> Option<KeptRing> {
        let Self { ring, slot, .. } = self;
        drop(slot);
        ring.keep()
    }
}

/// A receiver's ring, async.
pub(crate) struct AsyncRingReader {
    pub ring: RingReader,
    slot: HubSlot,
}

impl AsyncRingReader {
    pub fn new(ring: RingReader) -> Self {
        Self {
            ring,
            slot: HubSlot::default(),
        }
    }

    /// The ring, to keep after a verified stream ([`RingReader::keep`]):
    /// its wait leaves the hub first. `None` while the hub still holds it.
    pub fn keep(&mut self) -> Option<KeptRing> {
        self.slot = HubSlot::default();
        self.ring.keep()
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
            let awaited = Awaited::Data {
                tail: self.ring.received(),
            };
            ready!(self.ring.waiter().poll(awaited, &mut self.slot, cx))?;
        }
    }
}
