//! The consuming end of a channel, async: an `AsyncRead` over [`Inbound`]
//! frames on a socket, or over a shared-memory ring.

use std::{
    io,
    ops::Range,
    pin::Pin,
    task::{Context, Poll, ready},
};

use floki_proto::stream::{Inbound, Want};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{
    ChannelOptions, ClientError, STAGING, StreamError, Summary, Transport,
    end::{EndState, read_failure},
    ring_async::AsyncRingReader,
    setup::{self, DataPath},
};

/// The receiving end of a channel. Read until end of stream: `Ok(0)` comes
/// only after the sender's end mark and checksum were verified; a stream cut
/// short is an `io::Error` (kind `UnexpectedEof`, carrying a [`StreamError`]).
pub struct Receiver {
    end: EndState,
    path: Path,
    ended: bool,
    /// An agent's store: the sender's end mark is acknowledged in
    /// [`Receiver::finish`], once the store has kept the stream.
    holds_ack: bool,
}

/// Where the bytes come from.
enum Path {
    Socket(SocketIn),
    Ring(AsyncRingReader),
}

/// Frames, credits and the end mark over a socket.
struct SocketIn {
    stream: TcpStream,
    inbound: Inbound,
    /// Headers and small payloads are read through this buffer, so that a
    /// small message costs one read; bulk payloads go straight to the caller.
    staging: Box<[u8; STAGING]>,
    staged: Range<usize>,
    /// The connection is the agents' link, which may carry the stream's
    /// next use: never shut down.
    link: bool,
}

impl Receiver {
    /// Opens `opts.channel` as its receiver: waits for the sender and its
    /// data connection, and returns once the stream can be read.
    pub async fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let open = setup::receiver(opts, None).await?;
        let holds_ack = opts.store;
        let path = match open.data {
            DataPath::Socket(stream) => {
                let mut inbound = inbound(open.credit, opts);
                if holds_ack {
                    inbound.hold_ack();
                }
                Path::Socket(SocketIn {
                    stream,
                    inbound,
                    staging: Box::new([0; STAGING]),
                    staged: 0..0,
                    link: open.link,
                })
            }
            DataPath::Ring(ring) => {
                let mut ring = ring.reader().map_err(|source| open.end.error(source))?;
                if holds_ack {
                    ring.hold_ack();
                }
                Path::Ring(AsyncRingReader::new(ring))
            }
        };
        Ok(Self {
            end: open.end,
            path,
            ended: false,
            holds_ack,
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

    /// Refuses the stream with `reason`: the sender fails with it (an
    /// agent's store that has no room, a consumer that wants no more).
    pub async fn reject(mut self, reason: &str) {
        use tokio::io::AsyncWriteExt as _;
        match &mut self.path {
            Path::Socket(socket) => {
                socket.inbound.reject(reason);
                let _ = socket.stream.write_all(socket.inbound.outgoing()).await;
            }
            Path::Ring(ring) => ring.ring.reject(reason),
        }
        let received = self.path.progress().0;
        self.end.fail(
            StreamError::Rejected {
                reason: reason.to_owned(),
            },
            received,
        );
        self.end.reporter.flushed().await;
    }

    /// After end of stream: what arrived, once the agent has been told.
    /// An agent's store (`opts.store`) acknowledges the sender's end mark
    /// here, not when it is read: the sender's `finish` returns only once
    /// the store has kept the whole stream.
    pub async fn finish(mut self) -> Result<Summary, ClientError> {
        if self.holds_ack && self.ended {
            self.release_ack().await;
        }
        let (received, checksum) = self.path.progress();
        let result = self.end.received(received, checksum, self.ended);
        self.end.reporter.flushed().await;
        if result.is_ok() {
            self.keep_for_next();
        }
        result.map_err(|source| self.end.error(source))
    }

    /// After a verified stream: over a ring, the ring stays with the kept
    /// connection, for the next stream from this sender; over the agents'
    /// link, the link, for this stream's next use (the ack went out whole
    /// and nothing of the sender's is left unread).
    fn keep_for_next(&mut self) {
        match &mut self.path {
            Path::Ring(ring) => {
                if let Some(kept) = ring.keep() {
                    self.end.reporter.keep_ring(kept);
                }
            }
            Path::Socket(socket) => {
                let link = std::os::fd::AsFd::as_fd(&socket.stream);
                if socket.link
                    && socket.staged.is_empty()
                    && socket.inbound.outgoing().is_empty()
                    && floki_proto::handoff::link_established(link)
                    // The receiver's own descriptor closes with it.
                    && let Ok(link) = link.try_clone_to_owned()
                {
                    self.end.reporter.keep_link(link.into());
                }
            }
        }
    }

    /// Sends the held ack of the verified end mark, then closes.
    async fn release_ack(&mut self) {
        use tokio::io::AsyncWriteExt as _;
        match &mut self.path {
            Path::Socket(socket) => {
                socket.inbound.release_ack();
                let _ = socket.stream.write_all(socket.inbound.outgoing()).await;
                let _ = socket.stream.shutdown().await;
            }
            Path::Ring(ring) => ring.ring.release_ack(),
        }
    }

    /// The verified end of the stream: the agent is told once.
    fn poll_ended(&mut self, cx: &mut Context<'_>) {
        if !self.ended {
            self.ended = true;
            self.end.reporter.finish(self.path.progress().0, None);
            if self.holds_ack {
                // Closed once the held ack is out.
                return;
            }
            if let Path::Socket(socket) = &mut self.path
                && !socket.link
            {
                let _ = Pin::new(&mut socket.stream).poll_shutdown(cx);
            }
        }
    }
}

impl Path {
    /// Stream bytes read and their checksum.
    fn progress(&self) -> (u64, u64) {
        match self {
            Self::Socket(socket) => (socket.inbound.received(), socket.inbound.checksum()),
            Self::Ring(ring) => (ring.ring.received(), ring.ring.checksum()),
        }
    }
}

/// A receiver's stream state; an agent's store says so ahead of its ack.
pub(crate) fn inbound(window: u64, opts: &ChannelOptions) -> Inbound {
    let mut inbound = Inbound::new(window);
    if opts.store {
        inbound.mark_stored();
    }
    inbound
}

/// What one read of the stream gave.
enum Read {
    /// Stream bytes, now at the end of the caller's buffer.
    Bytes,
    /// The end of the stream, verified.
    End,
}

impl SocketIn {
    /// Writes what the stream owes the sender (credits, ack, rejection);
    /// `Pending` leaves it queued.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.inbound.outgoing().is_empty() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, self.inbound.outgoing()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.inbound.wrote_out(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Reads into the staging buffer.
    fn poll_stage(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamError>> {
        let mut rb = ReadBuf::new(&mut self.staging[..]);
        let read = ready!(Pin::new(&mut self.stream).poll_read(cx, &mut rb));
        let n = rb.filled().len();
        Poll::Ready(match read {
            Ok(()) if n == 0 => Err(self.inbound.eof()),
            Ok(()) => {
                self.staged = 0..n;
                Ok(())
            }
            Err(err) => Err(read_failure(self.inbound.received(), &err)),
        })
    }

    /// Reads the next stream bytes into `buf` (which has room).
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<Result<Read, StreamError>> {
        loop {
            // Credits go out as soon as the socket takes them; a full send
            // buffer must not hold reading up.
            let flushed = self.poll_flush_out(cx);
            match self.inbound.want() {
                Want::Finished => {
                    // The stream is verified: whether the ack reaches the
                    // sender (it may be gone) changes nothing for this end.
                    let _ = ready!(flushed);
                    return Poll::Ready(Ok(Read::End));
                }
                Want::Payload(left) => {
                    let n = ready!(self.poll_payload(cx, buf, left))?;
                    let filled = buf.filled();
                    self.inbound.payload(&filled[filled.len() - n..]);
                    let _ = self.poll_flush_out(cx);
                    return Poll::Ready(Ok(Read::Bytes));
                }
                Want::Framing => {
                    if self.staged.is_empty() {
                        ready!(self.poll_stage(cx))?;
                    }
                    let staged = &self.staging[self.staged.clone()];
                    match self.inbound.frame_bytes(staged) {
                        Ok(n) => self.staged.start += n,
                        Err(err) => {
                            // Tell the sender why (a rejection), best effort.
                            let _ = self.poll_flush_out(cx);
                            return Poll::Ready(Err(err));
                        }
                    }
                }
            }
        }
    }

    /// Moves up to `left` payload bytes into `buf`: staged ones first, bulk
    /// straight from the socket.
    fn poll_payload(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        left: usize,
    ) -> Poll<Result<usize, StreamError>> {
        if !self.staged.is_empty() {
            let n = self.staged.len().min(left).min(buf.remaining());
            let start = self.staged.start;
            buf.put_slice(&self.staging[start..start + n]);
            self.staged.start += n;
            return Poll::Ready(Ok(n));
        }
        // SAFETY: `sub` only writes initialised bytes into the unfilled part
        // of `buf`; `assume_init` below covers exactly those.
        let unfilled = unsafe { buf.unfilled_mut() };
        let limit = unfilled.len().min(left);
        let mut sub = ReadBuf::uninit(&mut unfilled[..limit]);
        let read = ready!(Pin::new(&mut self.stream).poll_read(cx, &mut sub));
        let n = sub.filled().len();
        match read {
            Ok(()) if n == 0 => return Poll::Ready(Err(self.inbound.eof())),
            Ok(()) => {}
            Err(err) => return Poll::Ready(Err(read_failure(self.inbound.received(), &err))),
        }
        // SAFETY: `sub` filled (initialised) the first `n` unfilled bytes.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Receiver {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.end.check()?;
        if this.ended || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let read = match &mut this.path {
            Path::Socket(socket) => ready!(socket.poll_read(cx, buf)),
            Path::Ring(ring) => ready!(ring.poll_read(cx, buf.initialize_unfilled())).map(|n| {
                buf.advance(n);
                if n == 0 { Read::End } else { Read::Bytes }
            }),
        };
        Poll::Ready(match read {
            Ok(Read::Bytes) => {
                this.end.reporter.progress(this.path.progress().0);
                Ok(())
            }
            Ok(Read::End) => {
                this.poll_ended(cx);
                Ok(())
            }
            Err(err) => {
                let received = this.path.progress().0;
                Err(this.end.fail(err, received).into())
            }
        })
    }
}
