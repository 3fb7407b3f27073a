//! The `shm` transport: a fixed-size ring in a shared memory file (memfd)
//! that the agent creates and hands to both ends of a channel, with one end
//! each of a socket pair beside it. The sender copies the stream into the
//! ring; the receiver reads it in place. Same guarantees as the socket
//! transports:
//!
//! * **end mark and integrity**: the sender publishes the stream's length
//!   and XXH3-64 after its last byte; the receiver reports the end of the
//!   stream only once both match what it read, and says so in the ring (the
//!   ack), which `finish` waits for;
//! * **bounded memory**: the ring's size, whatever the stream's; a sender
//!   with a full ring waits;
//! * **no hang on a dead peer**: the socket pair closes when a process
//!   dies; every wait checks it at least every [`LIVENESS`].
//!
//! Waiting is a futex on a word of the ring (shared between processes),
//! after a few `sched_yield`s: no spinning with PAUSE, which collapses
//! throughput on virtual machines.
//!
//! Layout: a 4 KiB header (below, one cache line per word that changes),
//! then the data, `capacity` bytes, a power of two. Positions are byte
//! counts since the start of the stream; byte `n` lives at `n % capacity`.

use std::{
    hash::Hasher as _,
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
    time::Duration,
};

use memmap2::MmapMut;
use twox_hash::XxHash3_64;

use super::stream::StreamError;

/// Bytes before the data.
pub const HEADER_LEN: usize = 4096;
/// "FLKR" and the layout version.
const MAGIC: u64 = 0x464c_4b52_0000_0001;
/// Smallest and largest ring.
pub const CAPACITY_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(1 << 30);
/// How often a waiting end checks that its peer is alive.
pub const LIVENESS: Duration = Duration::from_millis(50);
/// Bytes hashed and copied at a time: small enough to stay in the L1/L2
/// cache between the two passes.
const PIECE: usize = 32 << 10;
/// `sched_yield`s before sleeping on the futex.
const YIELDS: u32 = 16;

const END_OPEN: u32 = 0;
const END_DONE: u32 = 1;
const END_ABORTED: u32 = 2;
const ACK_NONE: u32 = 0;
const ACK_VERIFIED: u32 = 1;
const ACK_REJECTED: u32 = 2;

#[repr(C, align(64))]
struct Line<T>(T);

/// The header, in shared memory.
#[repr(C)]
struct Header {
    magic: Line<AtomicU64>,
    capacity: Line<AtomicU64>,
    /// Stream bytes published by the sender.
    head: Line<AtomicU64>,
    /// Stream bytes the receiver is done with.
    tail: Line<AtomicU64>,
    /// Futex: bumped when `head` moves while the receiver sleeps.
    data_seq: Line<AtomicU32>,
    receiver_waiting: Line<AtomicU32>,
    /// Futex: bumped when `tail` moves while the sender sleeps.
    space_seq: Line<AtomicU32>,
    sender_waiting: Line<AtomicU32>,
    /// [`END_OPEN`], [`END_DONE`] (with `total` and `checksum`), or
    /// [`END_ABORTED`] (the reason goes over the socket pair).
    end: Line<AtomicU32>,
    total: Line<AtomicU64>,
    checksum: Line<AtomicU64>,
    /// The receiver's verdict, a futex the sender waits on.
    ack: Line<AtomicU32>,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_LEN);

/// Creates a ring of `capacity` bytes (rounded up to a power of two within
/// [`CAPACITY_RANGE`]): the memory file to hand to both ends.
pub fn create(capacity: u64) -> io::Result<(OwnedFd, u64)> {
    let capacity = capacity
        .clamp(*CAPACITY_RANGE.start(), *CAPACITY_RANGE.end())
        .next_power_of_two();
    let fd = nix::sys::memfd::memfd_create(c"floki-ring", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let file = std::fs::File::from(fd);
    file.set_len(HEADER_LEN as u64 + capacity)?;
    // SAFETY: a fresh memory file nobody else maps yet.
    let map = unsafe { MmapMut::map_mut(&file)? };
    // SAFETY: the mapping is page-aligned and at least HEADER_LEN long.
    let header = unsafe { &*map.as_ptr().cast::<Header>() };
    header.capacity.0.store(capacity, Ordering::Relaxed);
    header.magic.0.store(MAGIC, Ordering::Release);
    Ok((file.into(), capacity))
}

/// The socket pair beside a ring: one end for each side, whose hang-up
/// tells the other that its peer died.
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )?)
}

/// A mapped ring and the end's socket to its peer.
struct Mapped {
    map: MmapMut,
    capacity: u64,
    peer: OwnedFd,
}

impl Mapped {
    fn open(memory: OwnedFd, peer: OwnedFd) -> Result<Self, StreamError> {
        let file = std::fs::File::from(memory);
        let len = file
            .metadata()
            .map_err(|e| io_error("sizing the ring", &e))?
            .len();
        if len < HEADER_LEN as u64 {
            return Err(StreamError::Protocol(
                "the ring is smaller than its header".into(),
            ));
        }
        // SAFETY: shared memory that both ends only touch through the
        // atomics of the header and the byte ranges the protocol gives each.
        let map =
            unsafe { MmapMut::map_mut(&file) }.map_err(|e| io_error("mapping the ring", &e))?;
        // SAFETY: page-aligned, at least HEADER_LEN long.
        let header = unsafe { &*map.as_ptr().cast::<Header>() };
        let capacity = header.capacity.0.load(Ordering::Acquire);
        if header.magic.0.load(Ordering::Acquire) != MAGIC
            || !capacity.is_power_of_two()
            || !CAPACITY_RANGE.contains(&capacity)
            || HEADER_LEN as u64 + capacity > len
        {
            return Err(StreamError::Protocol(
                "not a Floki ring of this version".into(),
            ));
        }
        Ok(Self {
            map,
            capacity,
            peer,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: checked in `open`; lives as long as the mapping.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data follows the header inside the mapping.
        unsafe { self.map.as_ptr().cast_mut().add(HEADER_LEN) }
    }

    /// Whether the peer's process still holds its end of the socket pair.
    fn peer_alive(&self) -> bool {
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
    /// `waiting`); `Err` if the peer died meanwhile.
    fn wait(
        &self,
        seq: &AtomicU32,
        waiting: &AtomicU32,
        ready: impl Fn() -> bool,
        gone: impl Fn() -> StreamError,
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
        }
    }

    /// Wakes the peer if it sleeps on `seq`.
    fn wake(seq: &AtomicU32, waiting: &AtomicU32) {
        fence(Ordering::SeqCst);
        if waiting.load(Ordering::SeqCst) != 0 {
            seq.fetch_add(1, Ordering::SeqCst);
            futex_wake(seq);
        }
    }
}

fn io_error(context: &'static str, err: &io::Error) -> StreamError {
    StreamError::io(context, 0, err)
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
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

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above.
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

/// The sender's end of a ring.
pub struct RingWriter {
    ring: Mapped,
    head: u64,
    hasher: XxHash3_64,
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
        })
    }

    /// Copies as much of `buf` as fits into the ring (at least one byte,
    /// waiting for room if it is full).
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, StreamError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let header = self.ring.header();
        let capacity = self.ring.capacity;
        let head = self.head;
        let room = || capacity - (head - header.tail.0.load(Ordering::Acquire).min(head));
        if room() == 0 {
            let sent = self.head;
            self.ring.wait(
                &header.space_seq.0,
                &header.sender_waiting.0,
                || room() > 0,
                || StreamError::ReceiverGone { bytes: sent },
            )?;
        }
        let n = (room() as usize).min(buf.len());
        // Hash and copy piece by piece: the copy reads what the hash just
        // brought into the cache (one pass over memory instead of two).
        let mut done = 0;
        while done < n {
            let at = ((head + done as u64) % capacity) as usize;
            let len = (n - done).min(PIECE).min(capacity as usize - at);
            let piece = &buf[done..done + len];
            self.hasher.write(piece);
            // SAFETY: `[at, at + len)` lies in the data area, in the part the
            // receiver does not read until `head` moves past it.
            unsafe {
                std::ptr::copy_nonoverlapping(piece.as_ptr(), self.ring.data().add(at), len);
            }
            done += len;
        }
        self.head += n as u64;
        header.head.0.store(self.head, Ordering::Release);
        Mapped::wake(&header.data_seq.0, &header.receiver_waiting.0);
        Ok(n)
    }

    /// Publishes the end mark and waits until the receiver verified the
    /// stream.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        let header = self.ring.header();
        header.total.0.store(self.head, Ordering::Relaxed);
        header
            .checksum
            .0
            .store(self.hasher.finish(), Ordering::Relaxed);
        header.end.0.store(END_DONE, Ordering::Release);
        Mapped::wake(&header.data_seq.0, &header.receiver_waiting.0);
        let sent = self.head;
        // The receiver wakes the ack word unconditionally: nobody needs to
        // announce that they wait on it.
        let announced = AtomicU32::new(0);
        self.ring.wait(
            &header.ack.0,
            &announced,
            || header.ack.0.load(Ordering::Acquire) != ACK_NONE,
            || StreamError::ReceiverGone { bytes: sent },
        )?;
        match header.ack.0.load(Ordering::Acquire) {
            ACK_VERIFIED => Ok(()),
            _ => Err(StreamError::Rejected {
                reason: "the receiver found the stream corrupted".into(),
            }),
        }
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

/// The receiver's end of a ring.
pub struct RingReader {
    ring: Mapped,
    tail: u64,
    hasher: XxHash3_64,
    finished: bool,
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
        })
    }

    /// The next bytes of the stream, in place in the ring (waiting for the
    /// sender if there are none yet); empty once the stream ended and was
    /// verified. Hand what was used to [`RingReader::consume`].
    pub fn fill(&mut self) -> Result<&[u8], StreamError> {
        let header = self.ring.header();
        let capacity = self.ring.capacity;
        loop {
            if self.finished {
                return Ok(&[]);
            }
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
                // SAFETY: `[at, at + len)` is published (below `head`) and
                // not reused by the sender until `tail` moves past it.
                return Ok(unsafe { std::slice::from_raw_parts(self.ring.data().add(at), len) });
            }
            match header.end.0.load(Ordering::Acquire) {
                END_DONE => return self.verify().map(|()| &[][..]),
                END_ABORTED => return Err(self.aborted()),
                END_OPEN => {}
                other => {
                    return Err(StreamError::Protocol(format!("unknown end state {other}")));
                }
            }
            let tail = self.tail;
            self.ring.wait(
                &header.data_seq.0,
                &header.receiver_waiting.0,
                || {
                    header.head.0.load(Ordering::Acquire) != tail
                        || header.end.0.load(Ordering::Acquire) != END_OPEN
                },
                || StreamError::Truncated { bytes: tail },
            )?;
        }
    }

    /// Marks `n` bytes of the last [`RingReader::fill`] as read.
    pub fn consume(&mut self, data_read: &[u8]) {
        self.hasher.write(data_read);
        self.advance(data_read.len() as u64);
    }

    /// Marks the first `n` bytes of the last [`RingReader::fill`] as read
    /// (at most what it returned).
    pub fn consume_len(&mut self, n: usize) {
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
        self.tail += n;
        let header = self.ring.header();
        header.tail.0.store(self.tail, Ordering::Release);
        Mapped::wake(&header.space_seq.0, &header.sender_waiting.0);
    }

    /// Copies the next bytes into `buf`; 0 once the stream ended verified.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        let (at, len) = {
            let available = self.fill()?;
            (available.as_ptr(), available.len())
        };
        let n = len.min(buf.len());
        // SAFETY: the published range `fill` just returned; the sender does
        // not reuse it until `advance` moves the tail past it.
        let available = unsafe { std::slice::from_raw_parts(at, n) };
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
        Ok(n)
    }

    fn verify(&mut self) -> Result<(), StreamError> {
        let header = self.ring.header();
        let (total, checksum) = (
            header.total.0.load(Ordering::Acquire),
            header.checksum.0.load(Ordering::Acquire),
        );
        let ok = total == self.tail && checksum == self.hasher.finish();
        header.ack.0.store(
            if ok { ACK_VERIFIED } else { ACK_REJECTED },
            Ordering::Release,
        );
        fence(Ordering::SeqCst);
        futex_wake(&header.ack.0);
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

/// The stream bytes a ring has carried, for the agent's status: it keeps
/// the header mapped (only the header).
pub struct RingObserver {
    map: memmap2::Mmap,
}

impl RingObserver {
    /// Maps the header of `memory` read-only.
    pub fn new(memory: &OwnedFd) -> io::Result<Self> {
        // SAFETY: read-only view of the header; the ends write it atomically.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(HEADER_LEN)
                .map(memory.as_raw_fd())?
        };
        Ok(Self { map })
    }

    /// Stream bytes the sender has published.
    pub fn sent(&self) -> u64 {
        // SAFETY: page-aligned header mapping; atomics only read.
        let header = unsafe { &*self.map.as_ptr().cast::<Header>() };
        header.head.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn pair(capacity: u64) -> (RingWriter, RingReader, RingObserver) {
        let (memory, _) = create(capacity).expect("ring");
        let (a, b) = socket_pair().expect("socket pair");
        let observer = RingObserver::new(&memory).expect("observer");
        let second = memory.as_fd().try_clone_to_owned().expect("dup");
        (
            RingWriter::open(memory, a).expect("writer"),
            RingReader::open(second, b).expect("reader"),
            observer,
        )
    }

    #[test]
    fn a_stream_larger_than_the_ring_arrives_whole_and_verified() {
        let (mut writer, mut reader, observer) = pair(64 << 10);
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let expected = data.clone();
        let sender = std::thread::spawn(move || {
            let mut pos = 0;
            while pos < data.len() {
                pos += writer
                    .write(&data[pos..(pos + 10_007).min(data.len())])
                    .expect("write");
            }
            writer.finish().expect("verified");
            writer.checksum()
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 30_000];
        loop {
            let n = reader.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == expected);
        assert_eq!(sender.join().expect("sender"), reader.checksum());
        assert_eq!(observer.sent(), expected.len() as u64);
    }

    #[test]
    fn a_dead_sender_is_a_truncation_not_an_end() {
        let (mut writer, mut reader, _) = pair(64 << 10);
        writer.write(&[1; 1000]).expect("write");
        drop(writer);
        let mut buf = [0u8; 4096];
        assert_eq!(reader.read(&mut buf).expect("the bytes before"), 1000);
        let err = reader.read(&mut buf).expect_err("no end mark");
        assert_eq!(err, StreamError::Truncated { bytes: 1000 });
    }

    #[test]
    fn a_gone_receiver_fails_a_blocked_sender() {
        let (mut writer, reader, _) = pair(64 << 10);
        drop(reader);
        let mut sent = 0;
        let err = loop {
            match writer.write(&[0; 8192]) {
                Ok(n) => sent += n,
                Err(err) => break err,
            }
        };
        assert_eq!(sent, 64 << 10);
        assert_eq!(err, StreamError::ReceiverGone { bytes: 64 << 10 });
    }

    #[test]
    fn an_abort_reaches_the_receiver_with_its_reason() {
        let (mut writer, mut reader, _) = pair(64 << 10);
        writer.write(b"partial").expect("write");
        writer.abort("input file vanished");
        let mut buf = [0u8; 64];
        assert_eq!(reader.read(&mut buf).expect("partial"), 7);
        match reader.read(&mut buf) {
            Err(StreamError::Aborted { bytes: 7, reason }) => {
                assert_eq!(reason, "input file vanished");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_forged_write_position_is_a_protocol_error() {
        let (writer, mut reader, _) = pair(64 << 10);
        writer
            .ring
            .header()
            .head
            .0
            .store(10 << 20, Ordering::Release);
        assert!(matches!(reader.fill(), Err(StreamError::Protocol(_))));
    }
}
