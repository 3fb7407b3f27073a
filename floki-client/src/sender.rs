//! The producing end of a channel, async: an `AsyncWrite` over
//! [`Outbound`] frames on a socket, or over a shared-memory ring.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use floki_proto::{
    frame::{FrameKind, control_frame},
    stream::Outbound,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};

use crate::{
    COPY_CHUNK, ChannelOptions, ClientError, RING_REGION, StreamError, Summary, Transport,
    end::{EndState, write_failure},
    ring_async::AsyncRingWriter,
    setup::{
        self, DataPath, Established,
        opening::{Nudge, Opening, Pending},
    },
};

/// The sending end of a channel. Write the stream, then call
/// [`Sender::finish`]: it returns once the receiver has verified every byte.
/// Dropping a `Sender` without finishing makes the receiver fail with a
/// truncation error, as a crash would.
///
/// [`Sender::open`] returns as soon as the agent accepted the channel: until
/// the receiver is there, writes fill a buffer of the channel's window (the
/// edge's buffer in a workflow) and then wait. Small writes (under 16 KiB
/// over a ring, under 128 KiB over a socket) are gathered into larger frames,
/// like a `BufWriter`: `flush` sends them at once.
pub struct Sender {
    channel: String,
    channel_id: u32,
    opening: Opening<Open>,
    pending: Pending,
}

/// An established stream.
struct Open {
    end: EndState,
    path: Path,
    finished: bool,
}

/// Where the bytes go.
enum Path {
    Socket(SocketOut),
    Ring(AsyncRingWriter),
}

/// Frames, credits and the end mark over a socket.
struct SocketOut {
    stream: TcpStream,
    outbound: Outbound,
    /// The end mark once the stream is ending, and how much of it is written.
    end_mark: Option<(Vec<u8>, usize)>,
    /// The connection is the agents' link, which may carry the stream's
    /// next use: never shut down.
    link: bool,
}

impl Sender {
    /// Opens `opts.channel` as its sender and returns once the agent has
    /// accepted it; the stream is set up in the background.
    pub async fn open(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let accepted = setup::sender_hello(opts).await?;
        let channel_id = accepted.channel_id;
        let (pending, nudged) = Pending::new(accepted.window.unwrap_or(0));
        let task_opts = opts.clone();
        let task =
            tokio::spawn(async move { setup::sender(accepted, &task_opts, nudged, None).await });
        Ok(Self {
            channel: opts.channel.clone(),
            channel_id,
            opening: Opening::Pairing(task),
            pending,
        })
    }

    /// Opens `opts.channel` as its sender and waits until the receiver is
    /// there (or, unless `opts.live`, the agent's store stands in for it)
    /// and the stream can be written.
    pub async fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let mut sender = Self::open(opts).await?;
        // Waiting with nothing buffered: the agent may store the stream.
        sender.pending.nudge(Nudge::Waiting);
        let opened = std::future::poll_fn(|cx| sender.poll_open(cx).map_ok(|_| ())).await;
        match opened {
            Ok(()) => Ok(sender),
            Err(err) => Err(sender.opening.take_failure().unwrap_or_else(|| {
                ClientError::stream(&opts.channel, &err, "setting up the stream", 0)
            })),
        }
    }

    /// How the bytes travel (`None` until the stream is set up).
    pub fn transport(&self) -> Option<Transport> {
        self.opening.open().map(|open| open.end.transport)
    }

    /// Agent-wide channel id.
    pub fn channel_id(&self) -> u32 {
        self.channel_id
    }

    /// Why the stream could not be set up, once a write or `finish` said it
    /// could not (no receiver within the pair timeout, refused, ...).
    pub fn setup_error(&self) -> Option<&ClientError> {
        self.opening.failure()
    }

    /// Stream bytes written so far (buffered ones included).
    pub fn bytes_sent(&self) -> u64 {
        let sent = self.opening.open().map_or(0, |open| open.path.sent());
        sent + self.pending.len() as u64
    }

    /// Ends the stream: sends the end mark and waits until the receiver has
    /// verified length and checksum.
    pub async fn finish(mut self) -> Result<Summary, ClientError> {
        let result = self.shutdown().await;
        let channel = self.channel.clone();
        match self.opening.open_mut() {
            Some(open) => {
                open.end.reporter.flushed().await;
                let sent = open.path.sent();
                result.map_err(|err| {
                    ClientError::stream(&channel, &err, "finishing the stream", sent)
                })?;
                let mut summary = open.end.summary(sent, open.path.checksum());
                summary.stored |= open.path.stored();
                if let Opening::Open(open) = self.opening {
                    open.keep_for_next();
                }
                Ok(summary)
            }
            None => Err(self.opening.take_failure().unwrap_or_else(|| {
                ClientError::stream(
                    &channel,
                    &result.expect_err("a stream that never opened cannot finish"),
                    "setting up the stream",
                    0,
                )
            })),
        }
    }

    /// Streams everything `src` yields, to its end, and returns how many
    /// bytes that was (then call [`Sender::finish`]). Over a ring, `src`
    /// reads straight into the ring's memory: the bytes are written once,
    /// not into a buffer and then into the ring. Over a socket, and before
    /// the receiver is there, through a buffer as [`tokio::io::copy`] does.
    /// An error is `src`'s or the stream's; the stream's also comes back
    /// from `finish`.
    pub async fn write_from<R>(&mut self, src: &mut R) -> io::Result<u64>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let mut total = 0;
        let mut buf = Vec::new();
        loop {
            if !self.opening.is_pairing() {
                self.flush().await?;
                std::future::poll_fn(|cx| self.poll_open(cx).map_ok(|_| ())).await?;
                let open = self.opening.open_mut().expect("opened just above");
                if let Some(n) = open.read_into_ring(src).await {
                    return n.map(|n| total + n);
                }
            }
            if buf.is_empty() {
                buf = vec![0; COPY_CHUNK];
            }
            let n = match src.read(&mut buf).await? {
                0 => return Ok(total),
                n => n,
            };
            self.write_all(&buf[..n]).await?;
            total += n as u64;
        }
    }

    /// Gives up on the stream: the receiver fails with `reason`.
    pub async fn abort(mut self, reason: &str) {
        self.opening.cancel();
        let Some(open) = self.opening.open_mut() else {
            return;
        };
        match &mut open.path {
            Path::Socket(socket) if !socket.outbound.mid_frame() => {
                let _ = socket
                    .stream
                    .write_all(&control_frame(FrameKind::Abort, reason.as_bytes()))
                    .await;
            }
            Path::Socket(_) => {}
            Path::Ring(ring) => ring.ring.abort(reason),
        }
        let sent = open.path.sent();
        let reason = reason.to_owned();
        open.end.fail(
            StreamError::Aborted {
                bytes: sent,
                reason,
            },
            sent,
        );
        open.end.reporter.flushed().await;
    }

    /// Drives the set-up to its end: `Ready(Ok)` once the stream is open.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut Open>> {
        self.opening.poll_open(cx, Open::new)
    }

    /// Sends what `pending` holds.
    fn poll_drain_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending.len() > 0 {
            let open = ready!(self.opening.poll_open(cx, Open::new))?;
            let n = ready!(open.poll_send(cx, self.pending.unsent()))?;
            self.pending.sent(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl Open {
    fn new(established: Established) -> Result<Self, ClientError> {
        let channel = &established.end.channel;
        let path = match established.data {
            DataPath::Socket(stream) => Path::Socket(SocketOut {
                stream,
                outbound: Outbound::new(established.credit),
                end_mark: None,
                link: established.link,
            }),
            DataPath::Ring(ring) => {
                Path::Ring(AsyncRingWriter::new(ring.writer().map_err(|source| {
                    ClientError::Stream {
                        channel: channel.clone(),
                        source,
                    }
                })?))
            }
        };
        Ok(Self {
            end: established.end,
            path,
            finished: false,
        })
    }

    /// After a verified stream: over a ring, the ring stays with the kept
    /// connection, for the next stream with this receiver; over the agents'
    /// link, the link, for this stream's next use. Both go with the
    /// connection when the end is dropped (`crate::idle`).
    fn keep_for_next(self) {
        let Self { mut end, path, .. } = self;
        match path {
            Path::Ring(ring) => {
                if let Some(kept) = ring.keep() {
                    end.reporter.keep_ring(kept);
                }
            }
            Path::Socket(socket) => {
                if crate::end::sender_link_reusable(
                    socket.link,
                    &socket.outbound,
                    std::os::fd::AsFd::as_fd(&socket.stream),
                ) && let Ok(link) = socket.stream.into_std()
                {
                    end.reporter.keep_link(link);
                }
            }
        }
    }

    /// Sends at least one byte of `src` (`src` not empty).
    fn poll_send(&mut self, cx: &mut Context<'_>, src: &[u8]) -> Poll<io::Result<usize>> {
        let sent = match &mut self.path {
            Path::Socket(socket) => ready!(socket.poll_send(cx, src)),
            Path::Ring(ring) => ready!(ring.poll_write(cx, src)),
        };
        Poll::Ready(match sent {
            Ok(n) => {
                self.end.reporter.progress(self.path.sent());
                Ok(n)
            }
            Err(err) => Err(self.end.fail(err, self.path.sent()).into()),
        })
    }

    /// Reads `src` to its end straight into the ring (`None` over a
    /// socket): a region reserved, read into, committed.
    async fn read_into_ring<R>(&mut self, src: &mut R) -> Option<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let Path::Ring(ring) = &mut self.path else {
            return None;
        };
        let mut total = 0;
        Some(loop {
            let room = std::future::poll_fn(|cx| ring.poll_room(cx)).await;
            let region = match room.and_then(|()| ring.ring.try_reserve(RING_REGION)) {
                Ok(region) => region,
                Err(err) => {
                    let sent = ring.ring.sent();
                    break Err(self.end.fail(err, sent).into());
                }
            };
            match src.read(region).await {
                Ok(0) => break Ok(total),
                Ok(n) => {
                    ring.ring.commit(n);
                    total += n as u64;
                    self.end.reporter.progress(ring.ring.sent());
                }
                Err(err) => break Err(err),
            }
        })
    }

    /// Writes the end mark and waits for the receiver's verdict.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.end.check()?;
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        let ended = match &mut self.path {
            Path::Socket(socket) => ready!(socket.poll_end(cx)),
            Path::Ring(ring) => ready!(ring.poll_finish(cx)),
        };
        let sent = self.path.sent();
        Poll::Ready(match ended {
            Ok(()) => {
                self.finished = true;
                self.end.reporter.finish(sent, None);
                Ok(())
            }
            Err(err) => Err(self.end.fail(err, sent).into()),
        })
    }

    /// Which writes are gathered on this path; none while a frame is
    /// partly written.
    fn gathering(&self) -> Option<crate::Gathering> {
        match &self.path {
            Path::Socket(socket) if socket.outbound.mid_frame() => None,
            Path::Socket(_) => Some(crate::GATHER_FOR_SOCKET),
            Path::Ring(_) => Some(crate::GATHER_FOR_RING),
        }
    }
}

impl Path {
    fn sent(&self) -> u64 {
        match self {
            Self::Socket(socket) => socket.outbound.sent(),
            Self::Ring(ring) => ring.ring.sent(),
        }
    }

    /// Whether the receiver said it is an agent's store (across nodes).
    fn stored(&self) -> bool {
        match self {
            Self::Socket(socket) => socket.outbound.stored(),
            Self::Ring(_) => false,
        }
    }

    fn checksum(&self) -> u64 {
        match self {
            Self::Socket(socket) => socket.outbound.checksum(),
            Self::Ring(ring) => ring.ring.checksum(),
        }
    }
}

impl SocketOut {
    /// Sends at least one byte of `src` (`src` not empty).
    fn poll_send(&mut self, cx: &mut Context<'_>, src: &[u8]) -> Poll<Result<usize, StreamError>> {
        loop {
            let Some(next) = self.outbound.next_write(src.len()) else {
                ready!(self.poll_inbox(cx))?;
                continue;
            };
            let bufs = [
                IoSlice::new(next.header),
                IoSlice::new(&src[..next.payload]),
            ];
            let n = match ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &bufs)) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                other => other,
            }
            .map_err(|err| write_failure("writing", self.outbound.sent(), &err))?;
            let written = self.outbound.wrote(n, src);
            if written > 0 {
                return Poll::Ready(Ok(written));
            }
        }
    }

    /// Reads and handles what the receiver sent (credits, ack, reject).
    fn poll_inbox(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamError>> {
        let mut chunk = [0u8; 512];
        let mut buf = ReadBuf::new(&mut chunk);
        Poll::Ready(
            match ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => Err(StreamError::ReceiverGone {
                    bytes: self.outbound.sent(),
                }),
                Ok(()) => self.outbound.receive(buf.filled()),
                Err(err) => Err(write_failure(
                    "reading the receiver's credit",
                    self.outbound.sent(),
                    &err,
                )),
            },
        )
    }

    /// Writes the end mark and waits for the receiver's ack.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamError>> {
        if self.end_mark.is_none() {
            if self.outbound.mid_frame() {
                return Poll::Ready(Err(StreamError::Protocol(
                    "the stream was ended in the middle of a write (use write_all)".into(),
                )));
            }
            self.end_mark = Some((self.outbound.end_frame(), 0));
        }
        let (mark, pos) = self.end_mark.as_mut().expect("set above");
        while *pos < mark.len() {
            match ready!(Pin::new(&mut self.stream).poll_write(cx, &mark[*pos..])) {
                Ok(n) if n > 0 => *pos += n,
                Ok(_) => {
                    let err = io::ErrorKind::WriteZero.into();
                    let sent = self.outbound.sent();
                    return Poll::Ready(Err(write_failure("sending the end mark", sent, &err)));
                }
                Err(err) => {
                    let sent = self.outbound.sent();
                    return Poll::Ready(Err(write_failure("sending the end mark", sent, &err)));
                }
            }
        }
        loop {
            match self.outbound.acked() {
                None => ready!(self.poll_inbox(cx))?,
                Some(verdict) => {
                    if verdict.is_ok() && !self.link {
                        let _ = Pin::new(&mut self.stream).poll_shutdown(cx);
                    }
                    return Poll::Ready(verdict);
                }
            }
        }
    }
}

impl AsyncWrite for Sender {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.opening.is_pairing() {
            // The receiver is not there yet: buffer up to the window.
            let held = this.pending.hold(buf);
            if held > 0 {
                return Poll::Ready(Ok(held));
            }
        }
        let open = ready!(this.opening.poll_open(cx, Open::new))?;
        open.end.check()?;
        if open.finished {
            return Poll::Ready(Err(StreamError::Closed.into()));
        }
        if let Some(gathering) = open.gathering()
            && let Some(full) = this.pending.gathers(buf.len(), gathering)
        {
            if full {
                ready!(this.poll_drain_pending(cx))?;
            }
            this.pending.gather(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_drain_pending(cx))?;
        let open = ready!(this.opening.poll_open(cx, Open::new))?;
        open.poll_send(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.len() > 0 {
            this.pending.nudge(Nudge::Waiting);
        }
        ready!(this.poll_drain_pending(cx))?;
        match this.opening.open_mut().map(|open| &mut open.path) {
            Some(Path::Socket(socket)) => Pin::new(&mut socket.stream).poll_flush(cx),
            // A ring publishes every write; nothing set up: nothing to flush.
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.pending.nudge(Nudge::Finishing);
        ready!(this.poll_open(cx))?;
        ready!(this.poll_drain_pending(cx))?;
        let open = ready!(this.poll_open(cx))?;
        open.poll_end(cx)
    }
}
