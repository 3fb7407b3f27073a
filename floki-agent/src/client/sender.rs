//! The producing end of a channel: an `AsyncWrite` that frames the stream,
//! stays within the receiver's credit and ends with a verified end mark.

use std::{
    hash::Hasher as _,
    io::{self, IoSlice},
    mem,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    time::timeout,
};
use twox_hash::XxHash3_64;

use super::{
    ChannelOptions, ClientError, StreamError, Summary, Transport, broker, reporter::Reporter,
};
use crate::protocol::{
    ProtocolError,
    control::Role,
    frame::{
        FrameHeader, FrameKind, HEADER_LEN, MAX_CONTROL_LEN, MAX_DATA_LEN, control_frame, seal,
        unseal,
    },
};

/// Writes smaller than this are gathered into one frame (like a `BufWriter`):
/// call `flush` to push them out early.
const COALESCE_BELOW: usize = 16 * 1024;
/// Size of the gathering buffer.
const COALESCE_CAP: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    Open,
    /// `End` queued or written; waiting for the receiver's `Ack`.
    Ending,
    Done,
    Failed(StreamError),
}

/// The sending end of a channel. Write the stream, then call
/// [`Sender::finish`]: it returns once the receiver has verified every byte.
/// Dropping a `Sender` without finishing makes the receiver fail with a
/// truncation error, as a crash would.
pub struct Sender {
    channel: String,
    channel_id: u32,
    transport: Transport,
    stream: TcpStream,
    reporter: Reporter,
    state: State,
    // Outgoing.
    pending: Vec<u8>,
    pending_pos: usize,
    header: [u8; HEADER_LEN],
    header_pos: usize,
    frame_left: usize,
    control_out: Vec<u8>,
    control_pos: usize,
    sent: u64,
    wire: u64,
    hasher: XxHash3_64,
    // Incoming: the receiver's credits and acknowledgement.
    limit: u64,
    inbox: Vec<u8>,
    ack: Option<(u64, u64)>,
}

impl Sender {
    /// Opens `opts.channel` as its sender: waits for the receiver, connects to
    /// it and returns once the stream can be written.
    pub async fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let control = broker::connect(opts).await?;
        let pairing = broker::pair(control, opts, Role::Send, None).await?;
        let channel = opts.channel.clone();
        let addr = pairing.peer.ok_or_else(|| ClientError::Protocol {
            channel: channel.clone(),
            source: ProtocolError::BadFrame("paired without the receiver's address".into()),
        })?;
        let unreachable = |source| ClientError::ReceiverUnreachable {
            channel: channel.clone(),
            addr,
            source,
        };
        let mut stream = timeout(opts.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(io::ErrorKind::TimedOut.into()))?
            .map_err(unreachable)?;
        stream.set_nodelay(true).ok();

        // The receiver speaks first, once both sockets are spliced: only then
        // may the first byte of ours go out (see docs/PROTOCOL.md).
        let limit = timeout(opts.connect_timeout, initial_credit(&mut stream))
            .await
            .map_err(|_| unreachable(io::ErrorKind::TimedOut.into()))?
            .map_err(|source| ClientError::Stream {
                channel: channel.clone(),
                source,
            })?;
        stream
            .write_all(&control_frame(FrameKind::Hello, &pairing.key))
            .await
            .map_err(|source| ClientError::Io {
                channel: channel.clone(),
                context: "sending the pairing key to the receiver",
                source,
            })?;

        Ok(Self {
            channel,
            channel_id: pairing.channel_id,
            transport: pairing.transport,
            stream,
            reporter: Reporter::spawn(pairing.control),
            state: State::Open,
            pending: Vec::with_capacity(COALESCE_CAP),
            pending_pos: 0,
            header: [0; HEADER_LEN],
            header_pos: HEADER_LEN,
            frame_left: 0,
            control_out: Vec::new(),
            control_pos: 0,
            sent: 0,
            wire: 0,
            hasher: XxHash3_64::new(),
            limit,
            inbox: Vec::with_capacity(HEADER_LEN + MAX_CONTROL_LEN as usize),
            ack: None,
        })
    }

    /// How the bytes travel.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Agent-wide channel id.
    pub fn channel_id(&self) -> u32 {
        self.channel_id
    }

    /// Stream bytes written so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Ends the stream: sends the end mark and waits until the receiver has
    /// verified length and checksum.
    pub async fn finish(mut self) -> Result<Summary, ClientError> {
        let result = self.shutdown().await;
        self.reporter.flushed().await;
        result.map_err(|err| self.stream_error(err))?;
        Ok(Summary {
            channel_id: self.channel_id,
            transport: self.transport,
            bytes: self.sent,
            checksum: self.hasher.finish(),
        })
    }

    /// Gives up on the stream: the receiver fails with `reason`.
    pub async fn abort(mut self, reason: &str) {
        let frame = control_frame(FrameKind::Abort, reason.as_bytes());
        if self.header_pos == HEADER_LEN && self.frame_left == 0 {
            let _ = self.stream.write_all(&frame).await;
        }
        self.fail(StreamError::Aborted {
            bytes: self.sent,
            reason: reason.to_owned(),
        });
        self.reporter.flushed().await;
    }

    fn stream_error(&self, err: io::Error) -> ClientError {
        let source = match err.get_ref().and_then(|e| e.downcast_ref::<StreamError>()) {
            Some(stream) => stream.clone(),
            None => StreamError::io("finishing the stream", self.sent, &err),
        };
        ClientError::Stream {
            channel: self.channel.clone(),
            source,
        }
    }

    fn fail(&mut self, err: StreamError) -> io::Error {
        if !matches!(self.state, State::Failed(_)) {
            self.reporter.finish(self.sent, Some(err.to_string()));
            self.state = State::Failed(err.clone());
        }
        err.into()
    }

    fn check_open(&mut self) -> io::Result<()> {
        match &self.state {
            State::Open => Ok(()),
            State::Failed(err) => Err(err.clone().into()),
            State::Ending | State::Done => Err(StreamError::Closed.into()),
        }
    }

    fn io_failure(&mut self, context: &'static str, err: &io::Error) -> io::Error {
        let stream_err = match err.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::PermissionDenied => StreamError::ReceiverGone { bytes: self.sent },
            _ => StreamError::io(context, self.sent, err),
        };
        self.fail(stream_err)
    }

    /// Sends at least one byte of `src`, opening a frame when needed.
    fn poll_send(&mut self, cx: &mut Context<'_>, src: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            if self.header_pos < HEADER_LEN {
                let take = src.len().min(self.frame_left);
                let bufs = [
                    IoSlice::new(&self.header[self.header_pos..]),
                    IoSlice::new(&src[..take]),
                ];
                let n = match ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &bufs)) {
                    Ok(0) => {
                        return Poll::Ready(Err(
                            self.io_failure("writing", &io::ErrorKind::WriteZero.into())
                        ));
                    }
                    Ok(n) => n,
                    Err(err) => return Poll::Ready(Err(self.io_failure("writing", &err))),
                };
                let from_header = n.min(HEADER_LEN - self.header_pos);
                self.header_pos += from_header;
                let payload = n - from_header;
                if payload > 0 {
                    self.account(&src[..payload]);
                    return Poll::Ready(Ok(payload));
                }
                continue;
            }
            if self.frame_left > 0 {
                let take = src.len().min(self.frame_left);
                return match ready!(Pin::new(&mut self.stream).poll_write(cx, &src[..take])) {
                    Ok(0) => Poll::Ready(Err(
                        self.io_failure("writing", &io::ErrorKind::WriteZero.into())
                    )),
                    Ok(n) => {
                        self.account(&src[..n]);
                        Poll::Ready(Ok(n))
                    }
                    Err(err) => Poll::Ready(Err(self.io_failure("writing", &err))),
                };
            }
            // A new frame, within the credit the receiver granted.
            ready!(self.poll_credit(cx, HEADER_LEN as u64 + 1))?;
            let room = self.limit - self.wire - HEADER_LEN as u64;
            let len = (src.len() as u64).min(room).min(u64::from(MAX_DATA_LEN)) as usize;
            self.header = FrameHeader::new(FrameKind::Data, len as u32).encode();
            self.header_pos = 0;
            self.frame_left = len;
            self.wire += (HEADER_LEN + len) as u64;
        }
    }

    fn account(&mut self, bytes: &[u8]) {
        self.frame_left -= bytes.len();
        self.hasher.write(bytes);
        self.sent += bytes.len() as u64;
        self.reporter.progress(self.sent);
    }

    fn poll_drain_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let pending = mem::take(&mut self.pending);
        let mut pos = self.pending_pos;
        let result = loop {
            if pos == pending.len() {
                break Ok(());
            }
            match self.poll_send(cx, &pending[pos..]) {
                Poll::Ready(Ok(n)) => pos += n,
                Poll::Ready(Err(err)) => break Err(err),
                Poll::Pending => {
                    self.pending = pending;
                    self.pending_pos = pos;
                    return Poll::Pending;
                }
            }
        };
        self.pending = pending;
        self.pending.clear();
        self.pending_pos = 0;
        Poll::Ready(result)
    }

    /// Waits until the receiver's credit leaves room for `need` more bytes.
    fn poll_credit(&mut self, cx: &mut Context<'_>, need: u64) -> Poll<io::Result<()>> {
        while self.limit.saturating_sub(self.wire) < need {
            ready!(self.poll_inbox(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads and handles what the receiver sent (credits, ack, reject).
    fn poll_inbox(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; 512];
        let mut buf = ReadBuf::new(&mut chunk);
        match ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf)) {
            Ok(()) if buf.filled().is_empty() => {
                let bytes = self.sent;
                return Poll::Ready(Err(self.fail(StreamError::ReceiverGone { bytes })));
            }
            Ok(()) => self.inbox.extend_from_slice(buf.filled()),
            Err(err) => {
                return Poll::Ready(Err(self.io_failure("reading the receiver's credit", &err)));
            }
        }
        Poll::Ready(self.parse_inbox())
    }

    fn parse_inbox(&mut self) -> io::Result<()> {
        while self.inbox.len() >= HEADER_LEN {
            let header = FrameHeader::decode(self.inbox[..HEADER_LEN].try_into().expect("8 bytes"))
                .map_err(|err| self.fail(StreamError::Protocol(err.to_string())))?;
            let end = HEADER_LEN + header.len as usize;
            if self.inbox.len() < end {
                break;
            }
            let payload = &self.inbox[HEADER_LEN..end];
            match header.kind {
                FrameKind::Credit => {
                    let limit = u64::from_be_bytes(payload.try_into().expect("8 bytes"));
                    self.limit = self.limit.max(limit);
                }
                FrameKind::Ack => self.ack = unseal(payload),
                FrameKind::Reject => {
                    let reason = String::from_utf8_lossy(payload).into_owned();
                    return Err(self.fail(StreamError::Rejected { reason }));
                }
                other => {
                    return Err(self.fail(StreamError::Protocol(format!(
                        "unexpected {other:?} frame from the receiver"
                    ))));
                }
            }
            self.inbox.drain(..end);
        }
        Ok(())
    }
}

/// Reads the receiver's first frame: its initial credit.
async fn initial_credit(stream: &mut TcpStream) -> Result<u64, StreamError> {
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|err| StreamError::io("waiting for the receiver's first credit", 0, &err))?;
    let header =
        FrameHeader::decode(header).map_err(|err| StreamError::Protocol(err.to_string()))?;
    let mut payload = vec![0u8; header.len as usize];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|err| StreamError::io("waiting for the receiver's first credit", 0, &err))?;
    match header.kind {
        FrameKind::Credit => Ok(u64::from_be_bytes(payload.try_into().expect("8 bytes"))),
        FrameKind::Reject => Err(StreamError::Rejected {
            reason: String::from_utf8_lossy(&payload).into_owned(),
        }),
        other => Err(StreamError::Protocol(format!(
            "expected the receiver's credit, got a {other:?} frame"
        ))),
    }
}

impl AsyncWrite for Sender {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_open()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let idle = this.header_pos == HEADER_LEN && this.frame_left == 0;
        if idle && buf.len() < COALESCE_BELOW {
            if this.pending.len() + buf.len() > COALESCE_CAP {
                ready!(this.poll_drain_pending(cx))?;
            }
            this.pending.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_drain_pending(cx))?;
        this.poll_send(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain_pending(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &this.state {
            State::Done => return Poll::Ready(Ok(())),
            State::Failed(err) => return Poll::Ready(Err(err.clone().into())),
            State::Open => {
                ready!(this.poll_drain_pending(cx))?;
                if this.frame_left > 0 || this.header_pos < HEADER_LEN {
                    let err = StreamError::Protocol(
                        "the stream was ended in the middle of a write (use write_all)".into(),
                    );
                    return Poll::Ready(Err(this.fail(err)));
                }
                this.control_out =
                    control_frame(FrameKind::End, &seal(this.sent, this.hasher.finish()));
                this.control_pos = 0;
                this.state = State::Ending;
            }
            State::Ending => {}
        }
        while this.control_pos < this.control_out.len() {
            match ready!(
                Pin::new(&mut this.stream).poll_write(cx, &this.control_out[this.control_pos..])
            ) {
                Ok(n) if n > 0 => this.control_pos += n,
                Ok(_) => {
                    let err = io::ErrorKind::WriteZero.into();
                    return Poll::Ready(Err(this.io_failure("sending the end mark", &err)));
                }
                Err(err) => return Poll::Ready(Err(this.io_failure("sending the end mark", &err))),
            }
        }
        while this.ack.is_none() {
            ready!(this.poll_inbox(cx))?;
        }
        let expected = (this.sent, this.hasher.finish());
        if this.ack != Some(expected) {
            let err = StreamError::Protocol(format!(
                "the receiver acknowledged {:?} instead of {expected:?} (bytes, checksum)",
                this.ack
            ));
            return Poll::Ready(Err(this.fail(err)));
        }
        this.state = State::Done;
        this.reporter.finish(this.sent, None);
        let _ = Pin::new(&mut this.stream).poll_shutdown(cx);
        Poll::Ready(Ok(()))
    }
}
