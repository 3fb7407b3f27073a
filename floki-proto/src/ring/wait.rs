//! Waiting on a ring: a futex in the header, announced through a
//! `*_waiting` word so that the other side wakes it only when someone
//! sleeps, and the peer's liveness through the socket pair. A thread sleeps
//! on the futex itself; an async task is woken by a [hub](super::hub)
//! thread that sleeps on many rings' futexes at once.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering, fence},
    },
    task::{Context, Poll},
    time::Duration,
};

use super::{
    ACK_NONE, END_OPEN, LIVENESS, Mapped,
    hub::{HubSlot, SlotState},
};
use crate::stream::StreamError;

/// `sched_yield`s before sleeping on the futex.
const YIELDS: u32 = 16;

impl Mapped {
    /// Whether the peer's process still holds its end of the socket pair.
    pub(super) fn peer_alive(&self) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.peer.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
            Ok(0) => true,
            Ok(_) => {
                let revents = fds[0].revents().unwrap_or(nix::poll::PollFlags::empty());
                if revents.intersects(nix::poll::PollFlags::POLLHUP | nix::poll::PollFlags::POLLERR)
                {
                    return false;
                }
                // Readable: a reason (aborts) or the end of the stream.
                let mut byte = [0u8; 1];
                !matches!(
                    nix::sys::socket::recv(
                        self.peer.as_raw_fd(),
                        &mut byte,
                        nix::sys::socket::MsgFlags::MSG_PEEK
                            | nix::sys::socket::MsgFlags::MSG_DONTWAIT
                    ),
                    Ok(0)
                )
            }
            Err(_) => false,
        }
    }

    /// Waits until `awaited` holds, sleeping on its futex (announced
    /// through its `*_waiting` word); `Err` if the peer died meanwhile.
    fn wait(&self, awaited: Awaited) -> Result<(), StreamError> {
        for _ in 0..YIELDS {
            if awaited.holds(self) {
                return Ok(());
            }
            std::thread::yield_now();
        }
        let (seq, waiting) = (awaited.futex(self), awaited.announced(self));
        loop {
            let seen = seq.load(Ordering::Acquire);
            if let Some(waiting) = waiting {
                waiting.store(1, Ordering::SeqCst);
            }
            fence(Ordering::SeqCst);
            if awaited.holds(self) {
                if let Some(waiting) = waiting {
                    waiting.store(0, Ordering::Relaxed);
                }
                return Ok(());
            }
            futex_wait(seq, seen, LIVENESS);
            if let Some(waiting) = waiting {
                waiting.store(0, Ordering::Relaxed);
            }
            if awaited.holds(self) {
                return Ok(());
            }
            if !self.peer_alive() {
                // One last look: the peer may have finished just before it
                // went away.
                return if awaited.holds(self) {
                    Ok(())
                } else {
                    Err(awaited.gone())
                };
            }
        }
    }

    /// Wakes the peer if it sleeps on `seq`.
    pub(super) fn wake(seq: &AtomicU32, waiting: &AtomicU32) {
        fence(Ordering::SeqCst);
        if waiting.load(Ordering::SeqCst) != 0 {
            seq.fetch_add(1, Ordering::SeqCst);
            futex_wake(seq);
        }
    }
}

/// What an end waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaited {
    /// Sender: room in the ring (or the receiver's refusal).
    Room {
        /// Bytes the sender has published.
        head: u64,
    },
    /// Receiver: more bytes, or the end of the stream.
    Data {
        /// Bytes the receiver has read.
        tail: u64,
    },
    /// Sender, after its end mark: the receiver's verdict.
    Ack {
        /// Bytes the sender ended the stream after.
        sent: u64,
    },
    /// Receiver of a kept ring, waiting for its next stream without the
    /// agent: the sender's start, or the agent's withdrawal
    /// ([`super::held`]).
    Start,
}

impl Awaited {
    /// Whether it happened.
    pub(super) fn holds(self, ring: &Mapped) -> bool {
        let header = ring.header();
        match self {
            Self::Room { head } => {
                head - header.tail.0.load(Ordering::Acquire).min(head) < ring.capacity
                    || header.ack.0.load(Ordering::Acquire) != ACK_NONE
            }
            Self::Data { tail } => {
                header.head.0.load(Ordering::Acquire) != tail
                    || header.end.0.load(Ordering::Acquire) != END_OPEN
            }
            Self::Ack { .. } => header.ack.0.load(Ordering::Acquire) != ACK_NONE,
            Self::Start => {
                header.held.0.load(Ordering::Acquire) != super::held::WAITS
                    || header.withdrawn.0.load(Ordering::Acquire) != 0
            }
        }
    }

    /// The futex the other side bumps when it may have happened.
    pub(super) fn futex(self, ring: &Mapped) -> &AtomicU32 {
        let header = ring.header();
        match self {
            Self::Room { .. } => &header.space_seq.0,
            Self::Data { .. } => &header.data_seq.0,
            Self::Ack { .. } => &header.ack.0,
            Self::Start => &header.held.0,
        }
    }

    /// Where a sleeper says it sleeps; `None` for the ack and the start,
    /// whose writers wake unconditionally.
    fn announced(self, ring: &Mapped) -> Option<&AtomicU32> {
        let header = ring.header();
        match self {
            Self::Room { .. } => Some(&header.sender_waiting.0),
            Self::Data { .. } => Some(&header.receiver_waiting.0),
            Self::Ack { .. } | Self::Start => None,
        }
    }

    /// The error when the peer died first.
    fn gone(self) -> StreamError {
        match self {
            Self::Room { head } => StreamError::ReceiverGone { bytes: head },
            Self::Data { tail } => StreamError::Truncated { bytes: tail },
            Self::Ack { sent } => StreamError::ReceiverGone { bytes: sent },
            Self::Start => StreamError::Truncated { bytes: 0 },
        }
    }
}

/// The waiting half of a ring end, apart from the end itself: waits on a
/// thread ([`RingWaiter::wait`]) or polled by an async task
/// ([`RingWaiter::poll`]).
#[derive(Clone)]
pub struct RingWaiter {
    pub(super) ring: Arc<Mapped>,
}

impl RingWaiter {
    /// Blocks until `awaited` happens; `Err` if the peer died first.
    pub fn wait(&self, awaited: Awaited) -> Result<(), StreamError> {
        self.ring.wait(awaited)
    }

    /// Sender: waits until the receiver has made room in a ring whose
    /// sender has published `head` bytes.
    pub fn room(&self, head: u64) -> Result<(), StreamError> {
        self.wait(Awaited::Room { head })
    }

    /// Receiver: waits until the sender publishes more than `tail` bytes,
    /// or ends the stream.
    pub fn data(&self, tail: u64) -> Result<(), StreamError> {
        self.wait(Awaited::Data { tail })
    }

    /// Sender, after the end mark of `sent` bytes: waits for the receiver's
    /// verdict.
    pub fn ack(&self, sent: u64) -> Result<(), StreamError> {
        self.wait(Awaited::Ack { sent })
    }

    /// Polls for `awaited` without blocking: ready once it happened (or
    /// with `Err` once the peer died first); otherwise `cx`'s task is woken
    /// by a [hub](super::hub) thread when the peer bumps the futex, or when
    /// the peer's socket stirs (the hub looks every [`LIVENESS`]). `slot` is
    /// this end's place in the hub, kept between polls.
    pub fn poll(
        &self,
        awaited: Awaited,
        slot: &mut HubSlot,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), StreamError>> {
        let ring = &self.ring;
        let waiting = awaited.announced(ring);
        let done = |slot: &mut HubSlot, result| {
            if let Some(waiting) = waiting {
                waiting.store(0, Ordering::Relaxed);
            }
            slot.clear();
            Poll::Ready(result)
        };
        if awaited.holds(ring) {
            return done(slot, Ok(()));
        }
        match slot.state(awaited) {
            // Still in the hub: nothing moved yet.
            SlotState::Waiting => {
                slot.update_waker(cx.waker());
                return Poll::Pending;
            }
            // The hub fired: the futex moved, or the peer's socket stirred.
            SlotState::Fired if !ring.peer_alive() => {
                let result = if awaited.holds(ring) {
                    Ok(())
                } else {
                    Err(awaited.gone())
                };
                return done(slot, result);
            }
            SlotState::Fired | SlotState::Empty => {}
        }
        let seq = awaited.futex(ring);
        let seen = seq.load(Ordering::Acquire);
        if let Some(waiting) = waiting {
            waiting.store(1, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        if awaited.holds(ring) {
            return done(slot, Ok(()));
        }
        slot.register(ring.clone(), awaited, seen, cx.waker());
        Poll::Pending
    }
}

/// Sleeps on `word` while it holds `expected`, at most `timeout`.
pub(super) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let spec = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid futex word in shared memory, a valid timeout; the
    // call only reads them. (Not FUTEX_PRIVATE: the word is shared between
    // processes.)
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &raw const spec,
            std::ptr::null::<u32>(),
            0,
        );
    }
}

/// Wakes every sleeper on `word`.
pub(super) fn futex_wake(word: &AtomicU32) {
    // SAFETY: a valid futex word in shared memory; no pointer is written.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        );
    }
}
