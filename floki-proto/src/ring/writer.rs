//! The sender's end of a ring.

use std::{
    hash::Hasher as _,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, atomic::Ordering},
};

use twox_hash::XxHash3_64;

use super::{
    ACK_NONE, ACK_VERIFIED, END_ABORTED, END_DONE, EndPages, KeptRing, Mapped, PIECE, RingWaiter,
    WAKE_EVERY,
};
use crate::stream::StreamError;

/// The sender's end of a ring.
pub struct RingWriter {
    pub(super) ring: Arc<Mapped>,
    head: u64,
    hasher: XxHash3_64,
    /// This end's mapping of the data area.
    pages: EndPages,
}

impl RingWriter {
    /// The sender's end: the ring's memory file and its end of the pair.
    pub fn open(memory: OwnedFd, peer: OwnedFd) -> Result<Self, StreamError> {
        let ring = Mapped::open(memory, peer)?;
        let head = ring.header().head.0.load(Ordering::Acquire);
        Ok(Self {
            ring,
            head,
            hasher: XxHash3_64::new(),
            pages: EndPages::default(),
        })
    }

    /// The sender's end of a ring it kept from its last stream (see
    /// [`KeptRing`]), rewound by the agent.
    pub fn reopen(kept: KeptRing) -> Result<Self, StreamError> {
        let (ring, pages) = kept.for_writer()?;
        Ok(Self {
            ring,
            head: 0,
            hasher: XxHash3_64::new(),
            pages,
        })
    }

    /// The ring, to keep for the next stream with the same receiver: only
    /// after a verified stream, and when no waiter shares it.
    pub fn keep(self) -> Option<KeptRing> {
        let header = self.ring.header();
        let verified = header.end.0.load(Ordering::Acquire) == END_DONE
            && header.ack.0.load(Ordering::Acquire) == ACK_VERIFIED;
        let pages = EndPages {
            allocated: self.pages.allocated.max(self.head.min(self.ring.capacity)),
            ..self.pages
        };
        (verified && Arc::strong_count(&self.ring) == 1).then_some(KeptRing {
            ring: self.ring,
            sender: true,
            pages,
        })
    }

    /// Copies as much of `buf` as fits into the ring now, never waiting;
    /// 0 when the ring is full. `Err` once the receiver refused the stream.
    pub fn try_write(&mut self, buf: &[u8]) -> Result<usize, StreamError> {
        if let Some(Err(refused)) = self.try_ack() {
            return Err(refused);
        }
        Ok(self.copy_in(buf))
    }

    /// Bytes the ring can take now.
    fn room(&self) -> u64 {
        let tail = self.ring.header().tail.0.load(Ordering::Acquire);
        self.ring.capacity - (self.head - tail.min(self.head))
    }

    fn copy_in(&mut self, buf: &[u8]) -> usize {
        let capacity = self.ring.capacity;
        let head = self.head;
        let n = (self.room() as usize).min(buf.len());
        if n == 0 {
            return 0;
        }
        // Hash and copy piece by piece: the copy reads what the hash just
        // brought into the cache (one pass over memory instead of two).
        // Each piece is published as soon as it is in the ring, so that the
        // reader works on one piece while the writer copies the next,
        // instead of waiting for a whole write.
        let mut done = 0;
        while done < n {
            let position = head + done as u64;
            let at = (position % capacity) as usize;
            let len = (n - done).min(PIECE).min(capacity as usize - at);
            let len = self.ring.within_allocated(&self.pages, position, len);
            let piece = &buf[done..done + len];
            self.hasher.write(piece);
            // Fresh pages through the file (mapping them costs more than
            // the copy: see `Mapped::write_at`), the rest through the
            // mapping.
            if !(self.ring.through_file(&self.pages, position, len)
                && self.ring.write_at(at, piece))
            {
                // Piece by piece: the first piece is published without
                // waiting for the pages of the last.
                self.populate(head + (done + len) as u64);
                // SAFETY: `[at, at + len)` lies in the data area, in the part
                // the receiver does not read until `head` moves past it.
                unsafe {
                    std::ptr::copy_nonoverlapping(piece.as_ptr(), self.ring.data().add(at), len);
                }
            }
            done += len;
            // Every piece is published; a sleeping reader is woken only every
            // WAKE_EVERY bytes and at the end of the write: it reads faster
            // than a fresh ring fills, and a wake per piece (a system call
            // and an interrupt to its CPU) cost more than the copy.
            let wake = done == n || done % WAKE_EVERY < len;
            self.publish_waking(head + done as u64, wake);
        }
        n
    }

    /// Maps the data area's pages up to stream position `to` writable
    /// here, before they are written ([`Mapped::populate`]).
    fn populate(&mut self, to: u64) {
        self.ring
            .populate(&mut self.pages, to, libc::MADV_POPULATE_WRITE);
    }

    /// Moves `head` to `to` (every byte before it is in the ring) and
    /// wakes the reader if it sleeps.
    fn publish(&mut self, to: u64) {
        self.publish_waking(to, true);
    }

    /// [`publish`](Self::publish), waking a sleeping reader only if `wake`.
    fn publish_waking(&mut self, to: u64, wake: bool) {
        let header = self.ring.header();
        self.head = to;
        header.head.0.store(to, Ordering::Release);
        if wake {
            Mapped::wake(&header.data_seq.0, &header.receiver_waiting.0);
        }
    }

    /// A region of the ring to fill in place, waiting for room while the
    /// ring is full: at most `max` bytes (at least one when `max` is not
    /// 0), contiguous, so it may stop short at the ring's end. Fill a
    /// prefix of it and [`commit`](Self::commit) that many bytes: the data
    /// is written into the ring once, not copied from a buffer of the
    /// caller's (a file read straight into the ring, say). `Err` once the
    /// receiver refused the stream.
    pub fn reserve(&mut self, max: usize) -> Result<&mut [u8], StreamError> {
        while max > 0 && self.room() == 0 {
            if let Some(Err(refused)) = self.try_ack() {
                return Err(refused);
            }
            self.waiter().room(self.head)?;
        }
        self.try_reserve(max)
    }

    /// [`reserve`](Self::reserve) without the wait: empty when the ring is
    /// full.
    pub fn try_reserve(&mut self, max: usize) -> Result<&mut [u8], StreamError> {
        if let Some(Err(refused)) = self.try_ack() {
            return Err(refused);
        }
        let capacity = self.ring.capacity as usize;
        let at = (self.head % self.ring.capacity) as usize;
        let len = (self.room() as usize).min(max).min(capacity - at);
        self.populate(self.head + len as u64);
        // SAFETY: `[at, at + len)` lies in the data area, in the part the
        // receiver does not read until `head` moves past it; the region
        // borrows `self` mutably, so nothing else writes it meanwhile.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ring.data().add(at), len) })
    }

    /// Publishes the first `n` bytes of the region [`reserve`](Self::reserve)
    /// returned, hashing them piece by piece while they are still in cache.
    ///
    /// # Panics
    /// If `n` goes beyond the region `reserve` could have returned.
    pub fn commit(&mut self, n: usize) {
        let capacity = self.ring.capacity as usize;
        let at = (self.head % self.ring.capacity) as usize;
        assert!(
            n as u64 <= self.room() && at + n <= capacity,
            "committing {n} bytes beyond the reserved region"
        );
        let mut done = 0;
        while done < n {
            let len = (n - done).min(PIECE);
            // SAFETY: inside the reserved region (checked above), which the
            // receiver does not read until it is published just below.
            let piece = unsafe { std::slice::from_raw_parts(self.ring.data().add(at + done), len) };
            self.hasher.write(piece);
            done += len;
            self.publish(self.head + len as u64);
        }
    }

    /// Copies as much of `buf` as fits into the ring (at least one byte,
    /// waiting for room if it is full).
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, StreamError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.try_write(buf)? {
                0 => self.waiter().room(self.head)?,
                n => return Ok(n),
            }
        }
    }

    /// The waiting half of this end (see [`RingWaiter`]).
    pub fn waiter(&self) -> RingWaiter {
        RingWaiter {
            ring: self.ring.clone(),
        }
    }

    /// Publishes the end mark (length and checksum of what was written).
    pub fn publish_end(&mut self) {
        let header = self.ring.header();
        header.total.0.store(self.head, Ordering::Relaxed);
        header
            .checksum
            .0
            .store(self.hasher.finish(), Ordering::Relaxed);
        header.end.0.store(END_DONE, Ordering::Release);
        Mapped::wake(&header.data_seq.0, &header.receiver_waiting.0);
    }

    /// The receiver's verdict, if it has given one: on the end mark, or a
    /// refusal before it (with the reason it sent beside the ring).
    pub fn try_ack(&self) -> Option<Result<(), StreamError>> {
        match self.ring.header().ack.0.load(Ordering::Acquire) {
            ACK_NONE => None,
            ACK_VERIFIED => Some(Ok(())),
            _ => {
                let mut reason = vec![0u8; 4096];
                let n = nix::sys::socket::recv(
                    self.ring.peer.as_raw_fd(),
                    &mut reason,
                    nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_PEEK,
                )
                .unwrap_or(0);
                let reason = match n {
                    0 => "the receiver found the stream corrupted".into(),
                    n => String::from_utf8_lossy(&reason[..n]).into_owned(),
                };
                Some(Err(StreamError::Rejected { reason }))
            }
        }
    }

    /// Publishes the end mark and waits until the receiver verified the
    /// stream.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.publish_end();
        self.verdict()
    }

    /// After [`publish_end`](Self::publish_end): waits for the receiver's
    /// verdict.
    pub fn verdict(&self) -> Result<(), StreamError> {
        self.waiter().ack(self.head)?;
        self.try_ack()
            .expect("the wait returns once the receiver answered")
    }

    /// Gives up: the receiver fails with `reason`.
    pub fn abort(&mut self, reason: &str) {
        let _ = nix::sys::socket::send(
            self.ring.peer.as_raw_fd(),
            reason.as_bytes(),
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        );
        let header = self.ring.header();
        header.end.0.store(END_ABORTED, Ordering::Release);
        Mapped::wake(&header.data_seq.0, &header.receiver_waiting.0);
    }

    /// Stream bytes written.
    pub fn sent(&self) -> u64 {
        self.head
    }

    /// XXH3-64 of the stream so far.
    pub fn checksum(&self) -> u64 {
        self.hasher.finish()
    }
}
