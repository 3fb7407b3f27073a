//! The receiver's end of a ring.

use std::{
    hash::Hasher as _,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    sync::{
        Arc,
        atomic::{Ordering, fence},
    },
};

use twox_hash::XxHash3_64;

use super::{
    ACK_REJECTED, ACK_VERIFIED, END_ABORTED, END_DONE, END_OPEN, EndPages, KeptRing, Mapped, PIECE,
    RingWaiter, wait::futex_wake,
};
use crate::stream::StreamError;

/// What the ring holds for the reader now.
enum Available {
    /// Published bytes at this offset of the data area.
    Bytes { at: usize, len: usize },
    /// The stream ended and was verified.
    Finished,
    /// Nothing yet.
    Nothing,
}

/// The receiver's end of a ring.
pub struct RingReader {
    ring: Arc<Mapped>,
    tail: u64,
    hasher: XxHash3_64,
    finished: bool,
    /// Hold the ack of a verified stream until [`RingReader::release_ack`].
    hold: bool,
    /// A verified stream whose ack is held.
    held: bool,
    /// First lap: the next bytes of the stream, read from the file rather
    /// than through the mapping (see [`Staged`]).
    staged: Staged,
    /// This end's mapping of the data area.
    pages: EndPages,
}

/// Bytes of the ring's first lap, read through the file into a buffer of
/// this process: mapping a fresh ring's pages costs more than copying them
/// (`Mapped::write_at` says why), and this buffer's pages are mapped once
/// per process, not once per ring.
#[derive(Default)]
struct Staged {
    buffer: Vec<u8>,
    /// `buffer[start..end]` holds the stream's bytes from the reader's
    /// `tail` on.
    start: usize,
    end: usize,
}

/// Most bytes staged at once.
const STAGE: usize = 256 << 10;

/// Staging buffers of ended readers, kept for the next ring of this process
/// (their pages are mapped already).
static SPARE_STAGES: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Spare staging buffers kept at most.
const SPARES: usize = 16;

impl Staged {
    fn bytes(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn advance(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Forgets the staged bytes: they are still in the ring, from the
    /// reader's `tail` on.
    fn discard(&mut self) {
        (self.start, self.end) = (0, 0);
    }

    /// Reads up to `len` bytes at `at` of `ring`'s data area; `false` if
    /// the file gave none (the caller reads through the mapping then).
    fn fill(&mut self, ring: &Mapped, at: usize, len: usize) -> bool {
        if self.buffer.is_empty() {
            let spare = SPARE_STAGES.lock().ok().and_then(|mut spares| spares.pop());
            self.buffer = spare.unwrap_or_else(|| vec![0; STAGE]);
        }
        let len = len.min(self.buffer.len());
        let n = ring.read_at(at, &mut self.buffer[..len]);
        (self.start, self.end) = (0, n);
        n > 0
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.buffer.len() == STAGE
            && let Ok(mut spares) = SPARE_STAGES.lock()
            && spares.len() < SPARES
        {
            spares.push(std::mem::take(&mut self.buffer));
        }
    }
}

impl RingReader {
    /// The receiver's end: the ring's memory file and its end of the pair.
    pub fn open(memory: OwnedFd, peer: OwnedFd) -> Result<Self, StreamError> {
        let ring = Mapped::open(memory, peer)?;
        let tail = ring.header().tail.0.load(Ordering::Acquire);
        Ok(Self {
            ring,
            tail,
            hasher: XxHash3_64::new(),
            finished: false,
            hold: false,
            held: false,
            staged: Staged::default(),
            pages: EndPages::default(),
        })
    }

    /// The receiver's end of a ring it kept from its last stream (see
    /// [`KeptRing`]), rewound by the agent.
    pub fn reopen(kept: KeptRing) -> Result<Self, StreamError> {
        let (ring, pages) = kept.for_reader()?;
        Ok(Self {
            ring,
            tail: 0,
            hasher: XxHash3_64::new(),
            finished: false,
            hold: false,
            held: false,
            staged: Staged::default(),
            pages,
        })
    }

    /// The ring, to keep for the next stream with the same sender: only
    /// after a verified stream whose ack went out, and when no waiter
    /// shares it. This reader stays at the end of its stream (it reads
    /// nothing more of the ring, which the next stream will reuse).
    pub fn keep(&mut self) -> Option<KeptRing> {
        let acked = self.ring.header().ack.0.load(Ordering::Acquire) == ACK_VERIFIED;
        (self.finished && !self.held && acked && Arc::strong_count(&self.ring) == 1).then(|| {
            KeptRing {
                ring: self.ring.clone(),
                sender: false,
                pages: EndPages {
                    allocated: self.pages.allocated.max(self.tail.min(self.ring.capacity)),
                    ..self.pages
                },
            }
        })
    }

    /// Holds the ack of the verified stream until [`RingReader::release_ack`]:
    /// an agent's store acknowledges a stream only once it has kept it.
    pub fn hold_ack(&mut self) {
        self.hold = true;
    }

    /// Tells the sender its stream is verified, if the ack was held.
    pub fn release_ack(&mut self) {
        if std::mem::take(&mut self.held) {
            self.acknowledge(ACK_VERIFIED);
        }
    }

    fn acknowledge(&self, verdict: u32) {
        let header = self.ring.header();
        header.ack.0.store(verdict, Ordering::Release);
        fence(Ordering::SeqCst);
        futex_wake(&header.ack.0);
    }

    /// The ring's memory file (header and data), for a caller that maps it
    /// itself: the Python package hands out views of it.
    pub fn memory(&self) -> BorrowedFd<'_> {
        self.ring.memory.as_fd()
    }

    /// Where `bytes` (from the last fill) lie in the memory file.
    pub fn file_offset(&self, bytes: &[u8]) -> Option<u64> {
        let base = self.ring.map.as_ptr() as usize;
        let at = (bytes.as_ptr() as usize).checked_sub(base)?;
        (at + bytes.len() <= self.ring.map.len()).then_some(at as u64)
    }

    /// The waiting half of this end (see [`RingWaiter`]).
    pub fn waiter(&self) -> RingWaiter {
        RingWaiter {
            ring: self.ring.clone(),
        }
    }

    fn available(&mut self) -> Result<Available, StreamError> {
        if self.finished {
            return Ok(Available::Finished);
        }
        let header = self.ring.header();
        let capacity = self.ring.capacity;
        // The end mark first, then the head: every byte published before
        // the end mark is then seen below. The other order takes a stream
        // whose last bytes and end mark land between the two loads for a
        // corrupted one (its bytes not read yet).
        let end = header.end.0.load(Ordering::Acquire);
        let head = header.head.0.load(Ordering::Acquire);
        if head < self.tail || head - self.tail > capacity {
            return Err(StreamError::Protocol(format!(
                "the ring's write position {head} is impossible at read position {}",
                self.tail
            )));
        }
        if head > self.tail {
            let at = (self.tail % capacity) as usize;
            let len = ((head - self.tail) as usize).min(capacity as usize - at);
            return Ok(Available::Bytes { at, len });
        }
        match end {
            END_DONE => self.verify().map(|()| Available::Finished),
            END_ABORTED => Err(self.aborted()),
            END_OPEN => Ok(Available::Nothing),
            other => Err(StreamError::Protocol(format!("unknown end state {other}"))),
        }
    }

    /// Maps the data area's pages up to stream position `to` here, before
    /// they are read in place ([`Mapped::populate`]).
    fn populate(&mut self, to: u64) {
        self.ring
            .populate(&mut self.pages, to, libc::MADV_POPULATE_READ);
    }

    /// The published bytes at `[at, at + len)` of the data area, in place,
    /// their pages mapped here first ([`Mapped::populate`]).
    fn slice(&mut self, at: usize, len: usize) -> &[u8] {
        self.populate(self.tail + len as u64);
        // SAFETY: `[at, at + len)` is published (below `head`) and not
        // reused by the sender until `tail` moves past it, which takes
        // `&mut self`.
        unsafe { std::slice::from_raw_parts(self.ring.data().add(at), len) }
    }

    /// The next bytes of the stream, in place in the ring, without waiting:
    /// `None` if the sender has published nothing new, empty once the
    /// stream ended and was verified. Hand what was used to
    /// [`RingReader::consume`] or [`RingReader::consume_len`].
    pub fn try_fill(&mut self) -> Result<Option<&[u8]>, StreamError> {
        // What a copied fill staged is in the ring too; a consume after this
        // fill counts bytes of the ring, not of the stage.
        self.staged.discard();
        Ok(match self.available()? {
            Available::Bytes { at, len } => Some(self.slice(at, len)),
            Available::Finished => Some(&[]),
            Available::Nothing => None,
        })
    }

    /// The next bytes of the stream, in place in the ring (waiting for the
    /// sender if there are none yet); empty once the stream ended and was
    /// verified.
    pub fn fill(&mut self) -> Result<&[u8], StreamError> {
        // As in `try_fill`: the stage's bytes are in the ring too.
        self.staged.discard();
        loop {
            match self.available()? {
                Available::Bytes { at, len } => return Ok(self.slice(at, len)),
                Available::Finished => return Ok(&[]),
                Available::Nothing => self.waiter().data(self.tail)?,
            }
        }
    }

    /// [`RingReader::fill`] for a caller that needs the bytes, not where
    /// they lie: on the ring's first lap they are read through the file
    /// into a buffer of this process instead of mapping the ring's fresh
    /// pages, which costs more than the copy.
    pub fn fill_copied(&mut self) -> Result<&[u8], StreamError> {
        loop {
            if !self.staged.is_empty() {
                return Ok(self.staged.bytes());
            }
            match self.available()? {
                Available::Bytes { at, len } => {
                    if self.ring.through_file(&self.pages, self.tail, len)
                        && self.staged.fill(&self.ring, at, len)
                    {
                        return Ok(self.staged.bytes());
                    }
                    let len = self.ring.within_allocated(&self.pages, self.tail, len);
                    return Ok(self.slice(at, len));
                }
                Available::Finished => return Ok(&[]),
                Available::Nothing => self.waiter().data(self.tail)?,
            }
        }
    }

    /// Marks `data_read` (the front of the last fill) as read.
    pub fn consume(&mut self, data_read: &[u8]) {
        self.hasher.write(data_read);
        self.advance(data_read.len() as u64);
    }

    /// Marks the first `n` bytes of the last fill as read (at most what it
    /// returned).
    pub fn consume_len(&mut self, n: usize) {
        if !self.staged.is_empty() {
            let n = n.min(self.staged.bytes().len());
            self.hasher.write(&self.staged.bytes()[..n]);
            self.advance(n as u64);
            return;
        }
        let capacity = self.ring.capacity;
        let at = (self.tail % capacity) as usize;
        let published = self.ring.header().head.0.load(Ordering::Acquire) - self.tail;
        let n = n.min(published as usize).min(capacity as usize - at);
        // SAFETY: published bytes below `head`, not reused by the sender
        // until the tail moves past them.
        let data = unsafe { std::slice::from_raw_parts(self.ring.data().add(at), n) };
        self.hasher.write(data);
        self.advance(n as u64);
    }

    /// Hands `n` read (and hashed) bytes back to the sender.
    fn advance(&mut self, n: u64) {
        self.staged.advance(n as usize);
        self.tail += n;
        let header = self.ring.header();
        header.tail.0.store(self.tail, Ordering::Release);
        Mapped::wake(&header.space_seq.0, &header.sender_waiting.0);
    }

    /// Copies the next bytes into `buf`, without waiting: `None` if there
    /// are none yet, `Some(0)` once the stream ended verified.
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, StreamError> {
        match self.available()? {
            Available::Bytes { at, len } => Ok(Some(self.copy_out(at, len, buf))),
            Available::Finished => Ok(Some(0)),
            Available::Nothing => Ok(None),
        }
    }

    /// Copies the next bytes into `buf`; 0 once the stream ended verified.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        loop {
            match self.try_read(buf)? {
                Some(n) => return Ok(n),
                None => self.waiter().data(self.tail)?,
            }
        }
    }

    fn copy_out(&mut self, at: usize, len: usize, buf: &mut [u8]) -> usize {
        let n = len.min(buf.len());
        // The first lap through the file (see `Staged`), straight into `buf`.
        if self.ring.through_file(&self.pages, self.tail, n) && self.staged.is_empty() {
            let read = self.ring.read_at(at, &mut buf[..n]);
            if read > 0 {
                self.hasher.write(&buf[..read]);
                self.advance(read as u64);
                return read;
            }
        }
        let n = self.ring.within_allocated(&self.pages, self.tail, n);
        self.populate(self.tail + n as u64);
        // SAFETY: the published range `available` just returned; the sender
        // does not reuse it until `advance` moves the tail past it.
        let available = unsafe { std::slice::from_raw_parts(self.ring.data().add(at), n) };
        let mut done = 0;
        // Copy and hash piece by piece: the hash reads the copy while it is
        // still in the cache (and never reads the shared ring twice).
        while done < n {
            let len = (n - done).min(PIECE);
            buf[done..done + len].copy_from_slice(&available[done..done + len]);
            self.hasher.write(&buf[done..done + len]);
            done += len;
        }
        self.advance(n as u64);
        n
    }

    fn verify(&mut self) -> Result<(), StreamError> {
        let header = self.ring.header();
        let (total, checksum) = (
            header.total.0.load(Ordering::Acquire),
            header.checksum.0.load(Ordering::Acquire),
        );
        let ok = total == self.tail && checksum == self.hasher.finish();
        match (ok, self.hold) {
            (true, true) => self.held = true,
            (true, false) => self.acknowledge(ACK_VERIFIED),
            (false, _) => self.acknowledge(ACK_REJECTED),
        }
        if ok {
            self.finished = true;
            Ok(())
        } else {
            Err(StreamError::Corrupted {
                bytes: self.tail,
                checksum: self.hasher.finish(),
                expected_bytes: total,
                expected_checksum: checksum,
            })
        }
    }

    /// Refuses the stream with `reason` (sent beside the ring): the sender
    /// fails with it. Nothing more is read.
    pub fn reject(&mut self, reason: &str) {
        let _ = nix::sys::socket::send(
            self.ring.peer.as_raw_fd(),
            reason.as_bytes(),
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        );
        self.acknowledge(ACK_REJECTED);
        let header = self.ring.header();
        Mapped::wake(&header.space_seq.0, &header.sender_waiting.0);
        self.finished = true;
    }

    fn aborted(&self) -> StreamError {
        let mut reason = vec![0u8; 4096];
        let n = nix::sys::socket::recv(
            self.ring.peer.as_raw_fd(),
            &mut reason,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .unwrap_or(0);
        StreamError::Aborted {
            bytes: self.tail,
            reason: String::from_utf8_lossy(&reason[..n]).into_owned(),
        }
    }

    /// Stream bytes read.
    pub fn received(&self) -> u64 {
        self.tail
    }

    /// XXH3-64 of the stream so far.
    pub fn checksum(&self) -> u64 {
        self.hasher.finish()
    }
}
