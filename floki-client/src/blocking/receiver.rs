//! The blocking receiver: frames over a socket (spliced or TCP), or a
//! shared-memory ring.

use std::{
    io::{self, BufRead, Read, Write},
    net::TcpStream,
    ops::Range,
    os::fd::BorrowedFd,
};

use floki_proto::{
    ring::RingReader,
    stream::{Inbound, Want},
};

use super::{background, into_blocking, on_this_thread, read_retrying};
use crate::{
    ChannelOptions, ClientError, STAGING, StreamError, Summary, Transport,
    end::{EndState, read_failure},
    setup::{self, DataPath},
};

/// The receiving end of a channel, blocking. `read` returns 0 only after the
/// sender's end mark and checksum were verified; a stream cut short is an
/// error (kind `UnexpectedEof`, carrying a [`StreamError`]).
///
/// It is also a [`BufRead`]: over `shm`, `fill_buf` hands out the bytes in
/// place in the shared ring (no copy at all); over a socket, from a buffer
/// of its own.
pub struct Receiver {
    end: EndState,
    path: Path,
    reported: bool,
    /// The ring's memory was handed out ([`Receiver::ring_memory`]): views
    /// of it may outlive the stream, so the ring is never kept for the
    /// next one (which would write over what they show).
    lent: std::sync::atomic::AtomicBool,
    /// `BufRead` over a socket: what was read and not consumed yet.
    buffer: Vec<u8>,
    buffered: Range<usize>,
}

enum Path {
    Socket(SocketPath),
    Ring(RingReader),
}

/// Frames, credits and the end mark over a socket.
struct SocketPath {
    stream: TcpStream,
    inbound: Inbound,
    staging: Box<[u8; STAGING]>,
    staged: Range<usize>,
    /// The connection is the agents' link, kept after a verified stream
    /// ([`setup::Established::link`]): never shut down.
    link: bool,
}

impl Receiver {
    /// Opens `opts.channel` as its receiver (waits for the sender).
    pub fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let open = on_this_thread(setup::receiver(opts, Some(background().handle())))?;
        Self::established(open, opts)
    }

    /// The receiver of a stream set up (by [`setup::receiver`]) with its
    /// reports on the background runtime.
    pub(crate) fn established(
        open: setup::Established,
        opts: &ChannelOptions,
    ) -> Result<Self, ClientError> {
        let path = match open.data {
            DataPath::Socket(stream) => Path::Socket(SocketPath {
                stream: into_blocking(stream, &open.end.channel)?,
                inbound: crate::receiver::inbound(open.credit, opts),
                staging: Box::new([0; STAGING]),
                staged: 0..0,
                link: open.link,
            }),
            DataPath::Ring(ring) => {
                Path::Ring(ring.reader().map_err(|source| ClientError::Stream {
                    channel: opts.channel.clone(),
                    source,
                })?)
            }
        };
        Ok(Self {
            end: open.end,
            path,
            reported: false,
            lent: std::sync::atomic::AtomicBool::new(false),
            buffer: Vec::new(),
            buffered: 0..0,
        })
    }

    /// How the bytes travel.
    pub fn transport(&self) -> Transport {
        self.end.transport
    }

    /// Agent-wide channel id.
    pub fn channel_id(&self) -> u32 {
        self.end.channel_id
    }

    /// Stream bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.path.progress().0
    }

    /// Over `shm`: the ring's memory file, for a caller that maps it itself
    /// (the Python package hands out read-only views of it).
    pub fn ring_memory(&self) -> Option<BorrowedFd<'_>> {
        match &self.path {
            Path::Ring(ring) => {
                self.lent.store(true, std::sync::atomic::Ordering::Relaxed);
                Some(ring.memory())
            }
            Path::Socket(_) => None,
        }
    }

    /// Over `shm`: where the next bytes of the stream lie in the ring's
    /// memory file (offset, length), waiting for the sender; length 0 once
    /// the stream ended verified. Hand what was used to
    /// [`BufRead::consume`]. `None` over a socket.
    pub fn fill_in_ring(&mut self) -> io::Result<Option<(u64, usize)>> {
        if !matches!(self.path, Path::Ring(_)) {
            return Ok(None);
        }
        let (at, len) = {
            let bytes = self.fill_ring(Filled::InPlace)?;
            (bytes.as_ptr(), bytes.len())
        };
        if len == 0 {
            return Ok(Some((0, 0)));
        }
        let Path::Ring(ring) = &self.path else {
            unreachable!("checked above");
        };
        // SAFETY: `at..at + len` is what `fill_buf` just returned, in the
        // ring's mapping, which lives as long as `self`.
        let bytes = unsafe { std::slice::from_raw_parts(at, len) };
        Ok(ring.file_offset(bytes).map(|offset| (offset, len)))
    }

    /// Refuses the stream with `reason`: the sender fails with it.
    pub fn reject(mut self, reason: &str) {
        match &mut self.path {
            Path::Socket(socket) => {
                socket.inbound.reject(reason);
                let _ = socket.stream.write_all(socket.inbound.outgoing());
            }
            Path::Ring(ring) => ring.reject(reason),
        }
        let received = self.path.progress().0;
        self.end.fail(
            StreamError::Rejected {
                reason: reason.to_owned(),
            },
            received,
        );
        background().block_on(self.end.reporter.flushed());
    }

    /// After end of stream: what arrived, once the agent has been told.
    pub fn finish(mut self) -> Result<Summary, ClientError> {
        let (received, checksum) = self.path.progress();
        let result = self.end.received(received, checksum, self.reported);
        background().block_on(self.end.reporter.flushed());
        // A verified stream over a ring: the ring stays with the kept
        // connection, for the next stream from this sender.
        if result.is_ok()
            && !self.lent.load(std::sync::atomic::Ordering::Relaxed)
            && let Path::Ring(ring) = &mut self.path
            && let Some(kept) = ring.keep()
        {
            self.end.reporter.keep_ring(kept);
        }
        let result = result.map_err(|source| self.end.error(source));
        // Over the agents' link, the link, for this stream's next use: the
        // ack went out whole and nothing of the sender's is left unread.
        if result.is_ok()
            && let Path::Socket(socket) = &self.path
            && socket.link
            && socket.staged.is_empty()
            && socket.inbound.outgoing().is_empty()
            && floki_proto::handoff::link_established(std::os::fd::AsFd::as_fd(&socket.stream))
            // The receiver's own descriptor closes with it.
            && let Ok(link) = socket.stream.try_clone()
        {
            self.end.reporter.keep_link(link);
        }
        result
    }

    fn fail(&mut self, err: StreamError) -> io::Error {
        let received = self.path.progress().0;
        self.end.fail(err, received).into()
    }

    /// The verified end of the stream: the agent is told once.
    fn ended(&mut self) {
        if !self.reported {
            self.reported = true;
            let received = self.path.progress().0;
            self.end.reporter.finish_here(received, None);
            if let Path::Socket(socket) = &self.path
                && !socket.link
            {
                let _ = socket.stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}

impl Path {
    /// Stream bytes read and their checksum.
    fn progress(&self) -> (u64, u64) {
        match self {
            Self::Socket(socket) => (socket.inbound.received(), socket.inbound.checksum()),
            Self::Ring(ring) => (ring.received(), ring.checksum()),
        }
    }
}

impl SocketPath {
    /// Writes what the stream owes the sender. A failure here means the
    /// sender is gone; reading will say how the stream ended.
    fn flush_out(&mut self) {
        let out = self.inbound.outgoing();
        if !out.is_empty() {
            let n = out.len();
            if self.stream.write_all(out).is_ok() {
                self.inbound.wrote_out(n);
            }
        }
    }

    /// The outcome of a socket read: bytes, or the stream's error (EOF
    /// before the end mark is a truncation).
    fn read_outcome(&self, read: io::Result<usize>) -> Result<usize, StreamError> {
        match read {
            Ok(0) => Err(self.inbound.eof()),
            Ok(n) => Ok(n),
            Err(err) => Err(read_failure(self.inbound.received(), &err)),
        }
    }

    /// Reads into `buf`: `Ok(None)` at the verified end of the stream.
    fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, StreamError> {
        loop {
            self.flush_out();
            match self.inbound.want() {
                Want::Finished => return Ok(None),
                Want::Payload(left) => {
                    if buf.is_empty() {
                        return Ok(Some(0));
                    }
                    let limit = buf.len().min(left);
                    let n = if self.staged.is_empty() {
                        let read = read_retrying(&mut self.stream, &mut buf[..limit]);
                        self.read_outcome(read)?
                    } else {
                        let n = self.staged.len().min(limit);
                        let start = self.staged.start;
                        buf[..n].copy_from_slice(&self.staging[start..start + n]);
                        self.staged.start += n;
                        n
                    };
                    self.inbound.payload(&buf[..n]);
                    return Ok(Some(n));
                }
                Want::Framing => {
                    if self.staged.is_empty() {
                        let read = read_retrying(&mut self.stream, &mut self.staging[..]);
                        self.staged = 0..self.read_outcome(read)?;
                    }
                    match self.inbound.frame_bytes(&self.staging[self.staged.clone()]) {
                        Ok(n) => self.staged.start += n,
                        Err(err) => {
                            self.flush_out();
                            return Err(err);
                        }
                    }
                }
            }
        }
    }
}

/// Over a socket, `fill_buf` reads into a buffer that starts at `STAGING`
/// (or the size an earlier stream's grew to: `spare_buffers`) and doubles,
/// up to this, each time a read fills it: a small stream keeps a small
/// buffer, a bulk one is read in few large reads.
const FILL_BUF_MAX: usize = 256 * 1024;

/// Where the ring's next bytes are wanted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filled {
    /// In the ring's mapping (the caller needs their place in the file).
    InPlace,
    /// Anywhere: on the first lap, read through the file (cheaper than
    /// mapping the fresh pages).
    Copied,
}

impl Receiver {
    /// The ring's next bytes (`self.path` is a ring), as `filled` says.
    fn fill_ring(&mut self, filled: Filled) -> io::Result<&[u8]> {
        self.end.check()?;
        let next = match &mut self.path {
            Path::Ring(ring) if filled == Filled::InPlace => ring.fill(),
            Path::Ring(ring) => ring.fill_copied(),
            Path::Socket(_) => unreachable!("callers check for a ring"),
        }
        .map(|data| (data.as_ptr(), data.len()));
        match next {
            Ok((_, 0)) => {
                self.ended();
                Ok(&[])
            }
            // SAFETY: published bytes in the ring, or staged by it, which
            // live as long as `self` and stay put until `consume`.
            Ok((at, len)) => Ok(unsafe { std::slice::from_raw_parts(at, len) }),
            Err(err) => Err(self.fail(err)),
        }
    }
}

impl BufRead for Receiver {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Path::Ring(_) = self.path {
            return self.fill_ring(Filled::Copied);
        }
        if self.buffered.is_empty() {
            let mut buffer = std::mem::take(&mut self.buffer);
            if buffer.is_empty() {
                // One an earlier stream grew, if there is one: its pages
                // are touched, and a bulk stream's first read is large.
                buffer = crate::spare_buffers::take();
                let len = buffer.capacity().clamp(STAGING, FILL_BUF_MAX);
                buffer.resize(len, 0);
            }
            let n = self.read(&mut buffer);
            // A bulk stream fills the buffer: grow it for fewer, larger reads.
            if n.as_ref().is_ok_and(|&n| n == buffer.len()) && buffer.len() < FILL_BUF_MAX {
                buffer.resize(buffer.len() * 2, 0);
            }
            self.buffer = buffer;
            self.buffered = 0..n?;
        }
        Ok(&self.buffer[self.buffered.clone()])
    }

    fn consume(&mut self, amt: usize) {
        match &mut self.path {
            Path::Ring(ring) => {
                ring.consume_len(amt);
                let received = ring.received();
                self.end.reporter.progress(received);
            }
            Path::Socket(_) => {
                self.buffered.start = (self.buffered.start + amt).min(self.buffered.end);
            }
        }
    }
}

impl Read for Receiver {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Bytes `fill_buf` buffered come first.
        if !self.buffered.is_empty() {
            let n = self.buffered.len().min(buf.len());
            let start = self.buffered.start;
            buf[..n].copy_from_slice(&self.buffer[start..start + n]);
            self.buffered.start += n;
            return Ok(n);
        }
        self.end.check()?;
        let read = match &mut self.path {
            Path::Socket(socket) => socket.read(buf),
            Path::Ring(ring) => ring
                .read(buf)
                .map(|n| (n > 0 || buf.is_empty()).then_some(n)),
        };
        match read {
            Ok(Some(n)) => {
                let received = self.path.progress().0;
                self.end.reporter.progress(received);
                Ok(n)
            }
            Ok(None) => {
                self.ended();
                Ok(0)
            }
            Err(err) => Err(self.fail(err)),
        }
    }
}

impl Drop for Receiver {
    /// A receiver dropped after a failure (a truncated stream, say) lets
    /// its report of the failure reach the agent first, so that status says
    /// why the channel failed; the wait is bounded.
    fn drop(&mut self) {
        if self.end.failure().is_some() {
            background().block_on(self.end.reporter.flushed());
        }
        crate::spare_buffers::give_back(std::mem::take(&mut self.buffer));
    }
}
