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
//! throughput on virtual machines ([`wait`]). Every operation of
//! [`RingWriter`] and [`RingReader`] also exists without the wait
//! (`try_*`), and [`RingWaiter`] does only the waiting: an async client
//! copies on its task and polls the wait, parked meanwhile in a [`hub`]
//! thread that sleeps on many rings' futexes at once.
//!
//! Layout: a 4 KiB header (below, one cache line per word that changes),
//! then the data, `capacity` bytes, a power of two. Positions are byte
//! counts since the start of the stream; byte `n` lives at `n % capacity`.

mod held;
mod hub;
mod reader;
mod wait;
mod writer;

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

pub use held::{HeldWait, withdraw, withdrawn_while_waiting};
pub use hub::HubSlot;
use memmap2::MmapMut;
pub use reader::RingReader;
pub use wait::{Awaited, RingWaiter};
pub use writer::RingWriter;

use super::stream::StreamError;

/// Bytes before the data.
pub const HEADER_LEN: usize = 4096;
/// "FLKR" and the layout version.
const MAGIC: u64 = 0x464c_4b52_0000_0001;
/// Smallest and largest ring.
pub const CAPACITY_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(1 << 30);
/// How often a waiting end checks that its peer is alive.
pub const LIVENESS: Duration = Duration::from_millis(50);
/// Bytes hashed and copied at a time: half of a 32 KiB L1 data cache, so
/// that the copy's destination lines do not push the piece out before the
/// copy reads it (32 KiB pieces moved about 15% fewer bytes per second:
/// docs/BENCHMARKS.md, "Ring pieces").
const PIECE: usize = 16 << 10;
/// On a ring's first lap, the fewest bytes that go through the file rather
/// than the mapping: below this, the system call costs more than mapping
/// the page once (small messages share their pages).
const THROUGH_FILE: usize = 16 << 10;
/// Within one write, how many bytes the writer publishes between wakes of
/// a sleeping reader (a multiple of [`PIECE`]).
const WAKE_EVERY: usize = 256 << 10;

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
    /// The next stream between two ends that kept the ring, set up without
    /// the agent ([`held`]): a futex the waiting receiver sleeps on.
    held: Line<AtomicU32>,
    /// Set (to 1) by the agent, through the file: the ends set no stream up
    /// over `held` until the agent rewinds the ring ([`held`]).
    withdrawn: Line<AtomicU32>,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_LEN);

/// Creates a ring of `capacity` bytes (rounded up to a power of two within
/// [`CAPACITY_RANGE`]): the memory file to hand to both ends.
pub fn create(capacity: u64) -> io::Result<(OwnedFd, u64)> {
    let fd = nix::sys::memfd::memfd_create(c"floki-ring", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    initialize(fd, capacity)
}

/// [`create`], in an unnamed file of the filesystem whose root is `dir`
/// (a tmpfs of huge pages, say): only those handed its descriptor reach it,
/// as with a memory file.
pub fn create_in(dir: BorrowedFd<'_>, capacity: u64) -> io::Result<(OwnedFd, u64)> {
    use nix::{fcntl::OFlag, sys::stat::Mode};
    let fd = nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )?;
    initialize(fd, capacity)
}

/// The capacity of a ring made for a window of `window` bytes: within
/// [`CAPACITY_RANGE`], rounded up to a power of two.
pub fn capacity_for(window: u64) -> u64 {
    window
        .clamp(*CAPACITY_RANGE.start(), *CAPACITY_RANGE.end())
        .next_power_of_two()
}

/// Makes a ring whose stream ended ready for the next stream between the
/// same two ends: positions, futex words, end mark and verdict back to
/// zero, through the file (the agent maps no ring). Its pages stay
/// allocated, and mapped where the ends mapped them. Only for a ring
/// neither end uses: both are done with their last stream over it.
pub fn rewind(memory: &OwnedFd) -> io::Result<()> {
    let from = std::mem::offset_of!(Header, head);
    let zeros = [0u8; std::mem::size_of::<Header>()];
    let file = std::fs::File::from(memory.try_clone()?);
    std::os::unix::fs::FileExt::write_all_at(&file, &zeros[from..], from as u64)
}

/// A ring an end keeps, mapped, after a verified stream, for its next
/// stream with the same peer (the agent [rewinds](rewind) it first): no
/// memory file, socket pair, mapping or page allocation for that stream.
pub struct KeptRing {
    ring: Arc<Mapped>,
    /// Kept by the sender of its last stream (else by the receiver).
    sender: bool,
    /// This end's mapping of the data area (pages stay mapped).
    pages: EndPages,
}

/// An end's view of a ring's data area, from its start: how much of it this
/// end's mapping maps, and how much earlier streams over the ring allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct EndPages {
    /// Bytes mapped here ([`Mapped::populate`]'s progress).
    populated: u64,
    /// Bytes whose pages exist, written by a stream over the ring before
    /// this one (by either end): the end maps them rather than going
    /// through the file, which would copy twice as often.
    allocated: u64,
}

impl KeptRing {
    /// Bytes of memory the ring holds while it is kept (the pages its
    /// streams touched, at most its capacity).
    pub fn footprint(&self) -> u64 {
        self.pages.allocated
    }

    /// The ring's data capacity: the window of a stream over it.
    pub fn capacity(&self) -> u64 {
        self.ring.capacity
    }

    /// Whether the sender of the ring's last stream kept it (else its
    /// receiver did).
    pub fn kept_by_sender(&self) -> bool {
        self.sender
    }

    /// The kept ring, checked to be rewound before an end takes it up
    /// again: the words only this end writes (`mine`: the sender's head and
    /// end mark, the receiver's tail and verdict) are back to zero. The
    /// peer's may have moved already: it may be paired and streaming first.
    fn rewound(self, mine: fn(&Header) -> bool) -> Result<(Arc<Mapped>, EndPages), StreamError> {
        if !mine(self.ring.header()) {
            return Err(StreamError::Protocol(
                "the agent paired this end over its kept ring without rewinding it".into(),
            ));
        }
        Ok((self.ring, self.pages))
    }

    /// [`KeptRing::rewound`] for the sender.
    fn for_writer(self) -> Result<(Arc<Mapped>, EndPages), StreamError> {
        self.rewound(|header| {
            header.head.0.load(Ordering::Acquire) == 0
                && header.end.0.load(Ordering::Acquire) == END_OPEN
        })
    }

    /// [`KeptRing::rewound`] for the receiver.
    fn for_reader(self) -> Result<(Arc<Mapped>, EndPages), StreamError> {
        self.rewound(|header| {
            header.tail.0.load(Ordering::Acquire) == 0
                && header.ack.0.load(Ordering::Acquire) == ACK_NONE
        })
    }
}

/// Sizes `fd` for a ring of `capacity` (rounded as [`create`] says) and
/// writes its header.
fn initialize(fd: OwnedFd, capacity: u64) -> io::Result<(OwnedFd, u64)> {
    let capacity = capacity_for(capacity);
    let file = std::fs::File::from(fd);
    file.set_len(HEADER_LEN as u64 + capacity)?;
    // Written through the file, not a mapping: the agent creates a ring per
    // channel, and unmapping one in a multi-threaded process interrupts
    // the other CPUs to flush their TLBs. The ends map the file only after
    // it was handed to them, so they see these bytes.
    let mut start = [0u8; std::mem::offset_of!(Header, head)];
    let at = |offset: usize| offset..offset + 8;
    start[at(std::mem::offset_of!(Header, magic))].copy_from_slice(&MAGIC.to_ne_bytes());
    start[at(std::mem::offset_of!(Header, capacity))].copy_from_slice(&capacity.to_ne_bytes());
    std::os::unix::fs::FileExt::write_all_at(&file, &start, 0)?;
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

/// A mapped ring and the end's socket to its peer, shared by an end and
/// its waiter.
struct Mapped {
    map: MmapMut,
    capacity: u64,
    peer: OwnedFd,
    /// The memory file, for a caller that maps it itself.
    memory: OwnedFd,
}

impl Mapped {
    fn open(memory: OwnedFd, peer: OwnedFd) -> Result<Arc<Self>, StreamError> {
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
        Ok(Arc::new(Self {
            map,
            capacity,
            peer,
            memory: file.into(),
        }))
    }

    fn header(&self) -> &Header {
        // SAFETY: checked in `open`; lives as long as the mapping.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data follows the header inside the mapping.
        unsafe { self.map.as_ptr().cast_mut().add(HEADER_LEN) }
    }

    /// Writes `bytes` at offset `at` of the data area through the file,
    /// not the mapping; `false` if the kernel did not take them all.
    ///
    /// Why: the first lap of a fresh ring lands on pages no process has
    /// mapped yet, and mapping a page costs more than copying it (about
    /// 2.3 µs per page on a guest with shadow page tables, against 0.07 µs
    /// to copy it; docs/BENCHMARKS.md, "Small streams"): the kernel's copy
    /// maps nothing.
    fn write_at(&self, at: usize, bytes: &[u8]) -> bool {
        let mut done = 0;
        while done < bytes.len() {
            let rest = &bytes[done..];
            // SAFETY: `rest` is a live slice; the offset lies in the file.
            let n = unsafe {
                libc::pwrite(
                    self.memory.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    (HEADER_LEN + at + done) as libc::off_t,
                )
            };
            if n <= 0 {
                return false;
            }
            done += n as usize;
        }
        true
    }

    /// Whether `len` bytes from stream position `position` go through the
    /// file: on the ring's first lap, past the pages earlier streams
    /// allocated (`pages`; a fresh page is what costs more to map than to
    /// copy), and [`THROUGH_FILE`] bytes or more. A kept ring's second
    /// stream maps the pages its first allocated, once (one `madvise` per
    /// end, about as long as one more copy through the file): from then on
    /// the writer copies with no system call, and a reader through
    /// `BufRead` reads in place instead of copying into a buffer.
    fn through_file(&self, pages: &EndPages, position: u64, len: usize) -> bool {
        len >= THROUGH_FILE && position >= pages.allocated && position + len as u64 <= self.capacity
    }

    /// Of `len` bytes from stream position `position`, those that lie in
    /// the pages earlier streams allocated (all of them past those pages):
    /// an end maps those pages, and goes through the file after them.
    fn within_allocated(&self, pages: &EndPages, position: u64, len: usize) -> usize {
        match pages.allocated.checked_sub(position) {
            Some(left) if left > 0 => len.min(left as usize),
            _ => len,
        }
    }

    /// Maps the data area's pages up to stream position `to` (on the first
    /// lap) into this end's mapping, in one system call (`advice`:
    /// `MADV_POPULATE_WRITE` or `_READ`), before they are touched: one fault
    /// per 4 KiB page costs more than the copy itself (1 MiB into a fresh
    /// ring: 430 µs faulting, 270 µs populated, on a 2-vCPU VM). Only what
    /// is about to be touched: a small stream never allocates the whole
    /// ring. Best effort: a kernel without the advice (before 5.14) faults
    /// as before.
    fn populate(&self, pages: &mut EndPages, to: u64, advice: libc::c_int) {
        let capacity = self.capacity;
        if pages.populated >= capacity {
            return;
        }
        let page = 4096;
        let end = to.min(capacity).next_multiple_of(page).min(capacity);
        if end <= pages.populated {
            return;
        }
        // SAFETY: a page-aligned range of this end's own mapping of the
        // data area; populating maps pages and changes no byte.
        unsafe {
            libc::madvise(
                self.data().add(pages.populated as usize).cast(),
                (end - pages.populated) as usize,
                advice,
            );
        }
        pages.populated = end;
    }

    /// Reads into `buf` from offset `at` of the data area through the file
    /// (see [`Mapped::write_at`]); how many bytes it read, 0 on an error.
    fn read_at(&self, at: usize, buf: &mut [u8]) -> usize {
        // SAFETY: `buf` is a live, writable slice; the offset lies in the file.
        let n = unsafe {
            libc::pread(
                self.memory.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                (HEADER_LEN + at) as libc::off_t,
            )
        };
        usize::try_from(n).unwrap_or(0)
    }
}

fn io_error(context: &'static str, err: &io::Error) -> StreamError {
    StreamError::io(context, 0, err)
}

/// The stream bytes a ring has carried, for the agent's status: it keeps a
/// descriptor of the ring and reads the header through it when asked. Not
/// a mapping: the agent makes a ring per channel, and unmapping one in a
/// multi-threaded process interrupts the other CPUs to flush their TLBs.
pub struct RingObserver {
    memory: OwnedFd,
}

impl RingObserver {
    /// An observer of the ring in `memory` (a descriptor of its own).
    pub fn new(memory: &OwnedFd) -> io::Result<Self> {
        Ok(Self {
            memory: memory.try_clone()?,
        })
    }

    /// The ring's memory file (the observer's own descriptor of it).
    pub fn memory(&self) -> &OwnedFd {
        &self.memory
    }

    /// Stream bytes the sender has published (0 if the header cannot be
    /// read). The sender stores the count as one aligned 8-byte word; a
    /// read racing with that store may see an older count, as a relaxed
    /// load would.
    pub fn sent(&self) -> u64 {
        let mut word = [0u8; 8];
        let at = std::mem::offset_of!(Header, head) as libc::off_t;
        match nix::sys::uio::pread(&self.memory, &mut word, at) {
            Ok(8) => u64::from_ne_bytes(word),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    pub(super) fn pair(capacity: u64) -> (RingWriter, RingReader, RingObserver) {
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

    /// The whole stream, read `chunk` bytes at a time until its verified end.
    fn read_to_end(reader: &mut RingReader, chunk: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = reader.read(&mut buf).expect("read");
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&buf[..n]);
        }
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
        let got = read_to_end(&mut reader, 30_000);
        assert!(got == expected);
        assert_eq!(sender.join().expect("sender"), reader.checksum());
        assert_eq!(observer.sent(), expected.len() as u64);
    }

    #[test]
    fn an_end_mark_right_behind_the_last_bytes_is_never_taken_for_corruption() {
        // The sender publishes its last bytes and its end mark back to back
        // while the receiver polls: a receiver that saw no new bytes, then
        // the end mark, once verified a stream it had not read to its end.
        for round in 0..20_000u32 {
            let (mut writer, mut reader, _) = pair(64 << 10);
            let go = std::sync::Arc::new(std::sync::Barrier::new(2));
            let sender = std::thread::spawn({
                let go = go.clone();
                move || {
                    go.wait();
                    writer.write(&round.to_le_bytes()).expect("write");
                    writer.publish_end();
                    writer
                }
            });
            go.wait();
            let mut got = Vec::new();
            loop {
                match reader.try_fill() {
                    Ok(None) => std::hint::spin_loop(),
                    Ok(Some([])) => break,
                    Ok(Some(bytes)) => {
                        let bytes = bytes.to_vec();
                        reader.consume(&bytes);
                        got.extend_from_slice(&bytes);
                    }
                    Err(err) => panic!("round {round}: {err}"),
                }
            }
            assert_eq!(got, round.to_le_bytes());
            drop(sender.join().expect("sender"));
        }
    }

    #[test]
    fn bytes_read_through_the_file_on_the_first_lap_and_in_place_after_arrive_whole() {
        // 256 KiB of ring, 1 MiB of stream: the first lap is written and
        // staged through the file, the next three go through the mapping;
        // the reader mixes copied and in-place fills, `consume` and
        // `consume_len`, and partial consumes.
        let (mut writer, mut reader, _) = pair(256 << 10);
        let data: Vec<u8> = (0..(1u32 << 20) + 4321)
            .map(|i| (i * 31 % 247) as u8)
            .collect();
        let expected = data.clone();
        let sender = std::thread::spawn(move || {
            for chunk in data.chunks(70_001) {
                let mut pos = 0;
                while pos < chunk.len() {
                    pos += writer.write(&chunk[pos..]).expect("write");
                }
            }
            writer.finish().expect("verified");
            writer.checksum()
        });
        let mut got = Vec::new();
        for turn in 0usize.. {
            let bytes = if turn % 3 == 2 {
                reader.fill().expect("fill")
            } else {
                reader.fill_copied().expect("fill")
            };
            if bytes.is_empty() {
                break;
            }
            let take = if turn % 2 == 0 {
                bytes.len()
            } else {
                bytes.len().div_ceil(3)
            };
            got.extend_from_slice(&bytes[..take]);
            if turn % 4 == 1 {
                let taken = bytes[..take].to_vec();
                reader.consume(&taken);
            } else {
                reader.consume_len(take);
            }
        }
        assert!(got == expected);
        assert_eq!(sender.join().expect("sender"), reader.checksum());
    }

    #[test]
    fn a_fill_in_place_after_a_copied_one_consumes_what_it_returned() {
        // The first lap is staged through the file by a copied fill; a fill
        // in place right after returns the ring's bytes from the same point,
        // and consuming them all must consume them all, not the stage's.
        let (mut writer, mut reader, _) = pair(256 << 10);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let write = |writer: &mut RingWriter, bytes: &[u8]| {
            let mut pos = 0;
            while pos < bytes.len() {
                pos += writer.write(&bytes[pos..]).expect("write");
            }
        };
        write(&mut writer, &data[..50_000]);
        assert_eq!(reader.fill_copied().expect("fill").len(), 50_000);
        reader.consume_len(10);
        // More comes after the stage was filled.
        write(&mut writer, &data[50_000..]);
        let in_place = reader.fill().expect("fill").to_vec();
        assert_eq!(in_place.len(), 99_990);
        assert_eq!(in_place[..], data[10..10 + in_place.len()]);
        reader.consume_len(in_place.len());
        assert_eq!(reader.received(), 10 + in_place.len() as u64);
    }

    #[test]
    fn a_stream_filled_in_place_arrives_whole_and_verified() {
        let (mut writer, mut reader, _) = pair(64 << 10);
        let data: Vec<u8> = (0..777_777u32).map(|i| (i * 13 % 253) as u8).collect();
        let expected = data.clone();
        let sender = std::thread::spawn(move || {
            let mut src: &[u8] = &data;
            while !src.is_empty() {
                // As a file read straight into the ring would: a region,
                // partly filled, then committed.
                let region = writer.reserve(20_000).expect("room");
                assert!(!region.is_empty() && region.len() <= 20_000);
                let n = std::io::Read::read(&mut src, region).expect("read");
                writer.commit(n);
            }
            writer.finish().expect("verified");
            writer.checksum()
        });
        let got = read_to_end(&mut reader, 50_000);
        assert!(got == expected);
        assert_eq!(sender.join().expect("sender"), reader.checksum());
    }

    #[test]
    fn the_non_blocking_calls_never_wait_and_the_waiter_waits_for_them() {
        let (mut writer, mut reader, _) = pair(64 << 10);
        assert!(reader.try_fill().expect("nothing yet").is_none());
        assert_eq!(writer.try_write(&[7; 100 << 10]), Ok(64 << 10));
        assert_eq!(
            writer.try_write(&[7; 10]),
            Ok(0),
            "a full ring takes nothing"
        );
        let waiter = writer.waiter();
        let head = writer.sent();
        let room = std::thread::spawn(move || waiter.room(head));
        let n = reader.try_fill().expect("data").expect("published").len();
        reader.consume_len(n);
        room.join().expect("waiter").expect("room after the read");
        writer.publish_end();
        assert!(writer.try_ack().is_none());
        assert!(
            reader
                .try_fill()
                .expect("verified")
                .expect("end")
                .is_empty()
        );
        assert_eq!(writer.try_ack(), Some(Ok(())));
    }

    #[test]
    fn a_receiver_that_refuses_fails_the_sender_with_its_reason() {
        let (mut writer, mut reader, _) = pair(64 << 10);
        writer.write(&[1; 100]).expect("write");
        reader.reject("the store is full");
        let refused = loop {
            match writer.write(&[2; 8192]) {
                Ok(_) => {}
                Err(err) => break err,
            }
        };
        assert_eq!(
            refused,
            StreamError::Rejected {
                reason: "the store is full".into()
            }
        );
        assert!(writer.finish().is_err());
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

    /// Writes `data` whole on a thread of its own and finishes it (the
    /// receiver verifies it meanwhile); the writer, to keep, comes back.
    fn send_on_a_thread(
        mut writer: RingWriter,
        data: Vec<u8>,
    ) -> std::thread::JoinHandle<RingWriter> {
        std::thread::spawn(move || {
            let mut pos = 0;
            while pos < data.len() {
                pos += writer.write(&data[pos..]).expect("write");
            }
            writer.finish().expect("verified");
            writer
        })
    }

    /// Both ends of a ring, kept after a verified stream, rewound through
    /// the agent's descriptor (the observer's) and taken up again.
    #[test]
    fn a_kept_ring_carries_the_next_stream_once_rewound() {
        let (mut writer, mut reader, agents) = pair(64 << 10);
        for round in 0..3u8 {
            // 100 KiB: each stream wraps the 64 KiB ring.
            let data: Vec<u8> = (0..100_000u32).map(|i| (i as u8) ^ round).collect();
            let expected = data.clone();
            let sender = send_on_a_thread(writer, data);
            let got = read_to_end(&mut reader, 30_000);
            assert!(got == expected, "round {round}");
            let (kept_writer, kept_reader) = (
                sender
                    .join()
                    .expect("sender")
                    .keep()
                    .expect("a verified sender keeps"),
                reader.keep().expect("a verified receiver keeps"),
            );
            rewind(agents.memory()).expect("rewind");
            (writer, reader) = (
                RingWriter::reopen(kept_writer).expect("rewound"),
                RingReader::reopen(kept_reader).expect("rewound"),
            );
        }
        // Not rewound: an end refuses to take it up.
        writer.write(b"unfinished").expect("write");
        writer.publish_end();
        reader.read(&mut [0u8; 64]).expect("read");
        assert_eq!(reader.read(&mut [0u8; 64]).expect("end"), 0);
        let kept = reader.keep().expect("verified");
        assert!(matches!(
            RingReader::reopen(kept),
            Err(StreamError::Protocol(_))
        ));
        assert!(writer.keep().is_some(), "verified: kept");
    }

    /// A kept ring's pages: the first stream goes through the file (its
    /// pages are fresh); the next ones map what earlier streams allocated,
    /// at both ends, and go through the file only past it.
    #[test]
    fn a_kept_ring_maps_the_pages_earlier_streams_allocated() {
        let (mut writer, mut reader, agents) = pair(1 << 20);
        let mut pages = Vec::new();
        for (round, size) in [256usize << 10, 512 << 10, 512 << 10]
            .into_iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ round as u8).collect();
            let expected = data.clone();
            let sender = send_on_a_thread(writer, data);
            // In pieces of the size `BufRead` asks for, as a function reads.
            let mut got = Vec::new();
            loop {
                let piece = reader.fill_copied().expect("fill");
                if piece.is_empty() {
                    break;
                }
                let n = piece.len().min(48 << 10);
                got.extend_from_slice(&piece[..n]);
                reader.consume_len(n);
            }
            assert!(got == expected, "round {round}");
            let (kept_writer, kept_reader) = (
                sender.join().expect("sender").keep().expect("kept"),
                reader.keep().expect("kept"),
            );
            pages.push((kept_writer.pages, kept_reader.pages));
            rewind(agents.memory()).expect("rewind");
            (writer, reader) = (
                RingWriter::reopen(kept_writer).expect("rewound"),
                RingReader::reopen(kept_reader).expect("rewound"),
            );
        }
        let at = |populated: u64, allocated: u64| EndPages {
            populated,
            allocated,
        };
        // Through the file; then the first 256 KiB mapped and the rest
        // through the file; then all of it mapped.
        assert_eq!(pages[0], (at(0, 256 << 10), at(0, 256 << 10)));
        assert_eq!(
            pages[1],
            (at(256 << 10, 512 << 10), at(256 << 10, 512 << 10))
        );
        assert_eq!(
            pages[2],
            (at(512 << 10, 512 << 10), at(512 << 10, 512 << 10))
        );
    }

    #[test]
    fn an_unverified_stream_keeps_no_ring() {
        let (mut writer, mut reader, _) = pair(64 << 10);
        writer.write(b"half").expect("write");
        assert!(reader.keep().is_none(), "the receiver has not seen the end");
        assert!(writer.keep().is_none(), "no verdict");
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
