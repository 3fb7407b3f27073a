//! Waiting on a ring: a futex in the header, announced through a
//! `*_waiting` word so that the other side wakes it only when someone
//! sleeps, and the peer's liveness through the socket pair.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering, fence},
    },
    time::Duration,
};

use super::{ACK_NONE, END_OPEN, LIVENESS, Mapped};
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

    /// Waits until `ready` holds, sleeping on futex `seq` (announced through
    /// `waiting`); `Err` if the peer died meanwhile. `brief`: returns after
    /// one sleep of at most [`LIVENESS`] even if `ready` does not hold yet.
    pub(super) fn wait(
        &self,
        seq: &AtomicU32,
        waiting: &AtomicU32,
        ready: impl Fn() -> bool,
        gone: impl Fn() -> StreamError,
        brief: bool,
    ) -> Result<(), StreamError> {
        for _ in 0..YIELDS {
            if ready() {
                return Ok(());
            }
            std::thread::yield_now();
        }
        loop {
            let seen = seq.load(Ordering::Acquire);
            waiting.store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if ready() {
                waiting.store(0, Ordering::Relaxed);
                return Ok(());
            }
            futex_wait(seq, seen, LIVENESS);
            waiting.store(0, Ordering::Relaxed);
            if ready() {
                return Ok(());
            }
            if !self.peer_alive() {
                // One last look: the peer may have finished just before it
                // went away.
                return if ready() { Ok(()) } else { Err(gone()) };
            }
            if brief {
                return Ok(());
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

/// The waiting half of a ring end, apart from the end itself: an async
/// client hands it to a blocking thread while its task keeps the end.
#[derive(Clone)]
pub struct RingWaiter {
    pub(super) ring: Arc<Mapped>,
    /// See [`RingWaiter::brief`].
    pub(super) brief: bool,
}

impl RingWaiter {
    /// Waits that return after at most [`LIVENESS`] (50 ms) even when what
    /// they wait for has not happened: the caller checks and waits again.
    /// For an async client, whose waits each hold a thread of a bounded
    /// pool: an end never holds one for long, so ends whose peers need that
    /// pool to progress (both ends of many channels in one process) cannot
    /// starve each other.
    pub fn brief(mut self) -> Self {
        self.brief = true;
        self
    }

    /// Sender: waits until the receiver has made room in a ring whose
    /// sender has published `head` bytes.
    pub fn room(&self, head: u64) -> Result<(), StreamError> {
        let header = self.ring.header();
        let capacity = self.ring.capacity;
        // Room, or the receiver's refusal.
        let room = || {
            head - header.tail.0.load(Ordering::Acquire).min(head) < capacity
                || header.ack.0.load(Ordering::Acquire) != ACK_NONE
        };
        self.ring.wait(
            &header.space_seq.0,
            &header.sender_waiting.0,
            room,
            || StreamError::ReceiverGone { bytes: head },
            self.brief,
        )
    }

    /// Receiver: waits until the sender publishes more than `tail` bytes,
    /// or ends the stream.
    pub fn data(&self, tail: u64) -> Result<(), StreamError> {
        let header = self.ring.header();
        self.ring.wait(
            &header.data_seq.0,
            &header.receiver_waiting.0,
            || {
                header.head.0.load(Ordering::Acquire) != tail
                    || header.end.0.load(Ordering::Acquire) != END_OPEN
            },
            || StreamError::Truncated { bytes: tail },
            self.brief,
        )
    }

    /// Sender, after the end mark of `sent` bytes: waits for the receiver's
    /// verdict.
    pub fn ack(&self, sent: u64) -> Result<(), StreamError> {
        let header = self.ring.header();
        // The receiver wakes the ack word unconditionally: nobody needs to
        // announce that they wait on it.
        let announced = AtomicU32::new(0);
        self.ring.wait(
            &header.ack.0,
            &announced,
            || header.ack.0.load(Ordering::Acquire) != ACK_NONE,
            || StreamError::ReceiverGone { bytes: sent },
            self.brief,
        )
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
