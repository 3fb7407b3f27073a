//! The consuming end of a channel: an `AsyncRead` that unframes the stream,
//! grants credit as it consumes, and reports end of stream only after the
//! sender's end mark has been verified.

use std::{
    hash::Hasher as _,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, timeout, timeout_at},
};
use tracing::warn;
use twox_hash::XxHash3_64;

use super::{
    ChannelOptions, ClientError, StreamError, Summary, Transport, broker, reporter::Reporter,
};
use crate::protocol::{
    KEY_LEN,
    control::Role,
    frame::{FrameHeader, FrameKind, HEADER_LEN, control_frame, seal, unseal},
};

/// How long a connection to the data listener may take to present its key.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers and small payloads are read through this buffer, so that a small
/// message costs one read; bulk payloads go straight to the caller's buffer.
const STAGING: usize = 8 * 1024;

#[derive(Debug)]
enum State {
    Header {
        buf: [u8; HEADER_LEN],
        have: usize,
    },
    Payload {
        left: usize,
    },
    Control {
        kind: FrameKind,
        buf: Vec<u8>,
        need: usize,
    },
    /// Verified; the `Ack` is being written.
    Acking,
    Done,
    Failed(StreamError),
}

/// The receiving end of a channel. Read until end of stream: `Ok(0)` comes
/// only after the sender's end mark and checksum were verified; a stream cut
/// short is an `io::Error` (kind `UnexpectedEof`, carrying a [`StreamError`]).
pub struct Receiver {
    channel: String,
    channel_id: u32,
    transport: Transport,
    stream: TcpStream,
    reporter: Reporter,
    state: State,
    window: u64,
    granted: u64,
    consumed: u64,
    received: u64,
    hasher: XxHash3_64,
    out: Vec<u8>,
    out_pos: usize,
    staging: Box<[u8; STAGING]>,
    staged: std::ops::Range<usize>,
}

impl Receiver {
    /// Opens `opts.channel` as its receiver: waits for the sender and its
    /// data connection, and returns once the stream can be read.
    pub async fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let control = broker::connect(opts).await?;
        let channel = opts.channel.clone();
        let io_err = |context, source| ClientError::Io {
            channel: channel.clone(),
            context,
            source,
        };
        let bind = match opts.data_addr {
            Some(addr) => addr,
            None => {
                let local = control
                    .local_addr()
                    .map_err(|e| io_err("reading the control connection's address", e))?;
                SocketAddr::new(local.ip(), 0)
            }
        };
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| io_err("binding the data listener", e))?;
        let listen = listener
            .local_addr()
            .map_err(|e| io_err("reading the data listener's address", e))?;
        let pairing = broker::pair(control, opts, Role::Recv, Some(listen)).await?;
        let stream = accept_sender(&listener, &pairing.key, pairing.window, opts).await?;
        Ok(Self {
            channel,
            channel_id: pairing.channel_id,
            transport: pairing.transport,
            stream,
            reporter: Reporter::spawn(pairing.control),
            state: State::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            },
            window: pairing.window,
            granted: pairing.window,
            consumed: 0,
            received: 0,
            hasher: XxHash3_64::new(),
            out: Vec::new(),
            out_pos: 0,
            staging: Box::new([0; STAGING]),
            staged: 0..0,
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

    /// Stream bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// After end of stream: what arrived, once the agent has been told.
    pub async fn finish(mut self) -> Result<Summary, ClientError> {
        let result = match &self.state {
            State::Done => Ok(Summary {
                channel_id: self.channel_id,
                transport: self.transport,
                bytes: self.received,
                checksum: self.hasher.finish(),
            }),
            State::Failed(err) => Err(err.clone()),
            _ => Err(self.fail(StreamError::Protocol(
                "finish() called before the end of the stream".into(),
            ))),
        };
        self.reporter.flushed().await;
        result.map_err(|source| ClientError::Stream {
            channel: self.channel.clone(),
            source,
        })
    }

    fn fail(&mut self, err: StreamError) -> StreamError {
        if !matches!(self.state, State::Failed(_)) {
            self.reporter.finish(self.received, Some(err.to_string()));
            self.state = State::Failed(err.clone());
        }
        err
    }

    fn queue(&mut self, frame: &[u8]) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        self.out.extend_from_slice(frame);
    }

    /// Writes queued frames (credit, ack); `Pending` leaves them queued.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Grants more credit once a quarter of the window has been consumed.
    fn maybe_grant(&mut self) {
        let limit = self.consumed + self.window;
        if limit - self.granted >= self.window / 4 {
            self.granted = limit;
            self.queue(&control_frame(FrameKind::Credit, &limit.to_be_bytes()));
        }
    }

    fn truncated(&mut self) -> io::Error {
        let bytes = self.received;
        self.fail(StreamError::Truncated { bytes }).into()
    }

    fn read_failed(&mut self, err: &io::Error) -> io::Error {
        // A reset connection without the end mark is a truncated stream.
        if matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
        ) {
            return self.truncated();
        }
        let bytes = self.received;
        self.fail(StreamError::io("reading the stream", bytes, err))
            .into()
    }

    /// Reads what the socket has, up to the staging size; `Ok(false)` at EOF.
    fn poll_stage(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        debug_assert!(self.staged.is_empty());
        let mut rb = ReadBuf::new(&mut self.staging[..]);
        match ready!(Pin::new(&mut self.stream).poll_read(cx, &mut rb)) {
            Ok(()) => {
                let n = rb.filled().len();
                self.staged = 0..n;
                Poll::Ready(Ok(n > 0))
            }
            Err(err) => Poll::Ready(Err(self.read_failed(&err))),
        }
    }

    /// Takes up to `n` staged bytes.
    fn take_staged(&mut self, n: usize) -> &[u8] {
        let start = self.staged.start;
        let end = start + n.min(self.staged.len());
        self.staged.start = end;
        &self.staging[start..end]
    }

    fn on_header(&mut self, header: FrameHeader) -> io::Result<()> {
        self.state = match header.kind {
            FrameKind::Data => {
                self.consumed += HEADER_LEN as u64;
                if header.len == 0 {
                    State::Header {
                        buf: [0; HEADER_LEN],
                        have: 0,
                    }
                } else {
                    State::Payload {
                        left: header.len as usize,
                    }
                }
            }
            FrameKind::End | FrameKind::Abort => State::Control {
                kind: header.kind,
                buf: Vec::with_capacity(header.len as usize),
                need: header.len as usize,
            },
            other => {
                return Err(self
                    .fail(StreamError::Protocol(format!(
                        "unexpected {other:?} frame from the sender"
                    )))
                    .into());
            }
        };
        Ok(())
    }

    fn on_control(&mut self, kind: FrameKind, payload: &[u8]) -> io::Result<()> {
        if kind == FrameKind::Abort {
            let reason = String::from_utf8_lossy(payload).into_owned();
            let bytes = self.received;
            return Err(self.fail(StreamError::Aborted { bytes, reason }).into());
        }
        let (total, checksum) = unseal(payload).unwrap_or_default();
        let actual = self.hasher.finish();
        if (total, checksum) != (self.received, actual) {
            let err = StreamError::Corrupted {
                bytes: self.received,
                checksum: actual,
                expected_bytes: total,
                expected_checksum: checksum,
            };
            self.queue(&control_frame(
                FrameKind::Reject,
                err.to_string().as_bytes(),
            ));
            return Err(self.fail(err).into());
        }
        self.queue(&control_frame(FrameKind::Ack, &seal(total, checksum)));
        self.state = State::Acking;
        Ok(())
    }
}

impl AsyncRead for Receiver {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Credits go out as soon as the socket takes them; a full send
            // buffer must not hold reading up.
            if let Poll::Ready(Err(err)) = this.poll_flush_out(cx)
                && !matches!(this.state, State::Failed(_) | State::Done)
            {
                let bytes = this.received;
                let err = StreamError::io("granting credit to the sender", bytes, &err);
                return Poll::Ready(Err(this.fail(err).into()));
            }
            match &mut this.state {
                State::Header { .. } => {
                    if this.staged.is_empty() {
                        match ready!(this.poll_stage(cx)) {
                            Ok(true) => {}
                            Ok(false) => return Poll::Ready(Err(this.truncated())),
                            Err(err) => return Poll::Ready(Err(err)),
                        }
                    }
                    let State::Header {
                        buf: mut header,
                        mut have,
                    } = this.state
                    else {
                        unreachable!("matched above");
                    };
                    let taken = this.take_staged(HEADER_LEN - have).len();
                    let start = this.staged.start - taken;
                    header[have..have + taken].copy_from_slice(&this.staging[start..start + taken]);
                    have += taken;
                    if have < HEADER_LEN {
                        this.state = State::Header { buf: header, have };
                        continue;
                    }
                    let header = match FrameHeader::decode(header) {
                        Ok(header) => header,
                        Err(err) => {
                            let err = StreamError::Protocol(err.to_string());
                            return Poll::Ready(Err(this.fail(err).into()));
                        }
                    };
                    this.on_header(header)?;
                }
                State::Payload { left } => {
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let left_now = *left;
                    let n = if this.staged.is_empty() {
                        // Bulk: straight into the caller's buffer.
                        // SAFETY: `sub` only ever writes initialised bytes into
                        // the unfilled part of `buf`; `assume_init` covers
                        // exactly those.
                        let unfilled = unsafe { buf.unfilled_mut() };
                        let limit = unfilled.len().min(left_now);
                        let mut sub = ReadBuf::uninit(&mut unfilled[..limit]);
                        let n = match ready!(Pin::new(&mut this.stream).poll_read(cx, &mut sub)) {
                            Ok(()) => sub.filled().len(),
                            Err(err) => return Poll::Ready(Err(this.read_failed(&err))),
                        };
                        if n == 0 {
                            return Poll::Ready(Err(this.truncated()));
                        }
                        // SAFETY: `sub` filled (initialised) the first `n` unfilled bytes.
                        unsafe { buf.assume_init(n) };
                        buf.advance(n);
                        n
                    } else {
                        let want = left_now.min(buf.remaining());
                        let start = this.staged.start;
                        let n = this.take_staged(want).len();
                        buf.put_slice(&this.staging[start..start + n]);
                        n
                    };
                    let filled = buf.filled();
                    this.hasher.write(&filled[filled.len() - n..]);
                    this.received += n as u64;
                    this.consumed += n as u64;
                    this.state = if left_now == n {
                        State::Header {
                            buf: [0; HEADER_LEN],
                            have: 0,
                        }
                    } else {
                        State::Payload { left: left_now - n }
                    };
                    this.reporter.progress(this.received);
                    this.maybe_grant();
                    let _ = this.poll_flush_out(cx);
                    return Poll::Ready(Ok(()));
                }
                State::Control {
                    kind,
                    buf: payload,
                    need,
                } => {
                    let (kind, need) = (*kind, *need);
                    let mut payload = std::mem::take(payload);
                    if payload.len() < need && this.staged.is_empty() {
                        match this.poll_stage(cx) {
                            Poll::Ready(Ok(true)) => {}
                            Poll::Ready(Ok(false)) => return Poll::Ready(Err(this.truncated())),
                            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                            Poll::Pending => {
                                this.state = State::Control {
                                    kind,
                                    buf: payload,
                                    need,
                                };
                                return Poll::Pending;
                            }
                        }
                    }
                    let taken = this.take_staged(need - payload.len()).len();
                    let start = this.staged.start - taken;
                    payload.extend_from_slice(&this.staging[start..start + taken]);
                    if payload.len() < need {
                        this.state = State::Control {
                            kind,
                            buf: payload,
                            need,
                        };
                        continue;
                    }
                    if let Err(err) = this.on_control(kind, &payload) {
                        let _ = this.poll_flush_out(cx);
                        return Poll::Ready(Err(err));
                    }
                }
                State::Acking => {
                    if let Err(err) = ready!(this.poll_flush_out(cx)) {
                        let bytes = this.received;
                        let err = StreamError::io("confirming the end to the sender", bytes, &err);
                        return Poll::Ready(Err(this.fail(err).into()));
                    }
                    this.state = State::Done;
                    this.reporter.finish(this.received, None);
                    let _ = Pin::new(&mut this.stream).poll_shutdown(cx);
                    return Poll::Ready(Ok(()));
                }
                State::Done => return Poll::Ready(Ok(())),
                State::Failed(err) => return Poll::Ready(Err(err.clone().into())),
            }
        }
    }
}

/// Accepts the paired sender's data connection: the first connection that
/// presents the pairing key. Others are rejected and closed.
async fn accept_sender(
    listener: &TcpListener,
    key: &[u8; KEY_LEN],
    window: u64,
    opts: &ChannelOptions,
) -> Result<TcpStream, ClientError> {
    let deadline = Instant::now() + opts.connect_timeout;
    loop {
        let (mut stream, from) = timeout_at(deadline, listener.accept())
            .await
            .map_err(|_| ClientError::SenderTimeout {
                channel: opts.channel.clone(),
                timeout: opts.connect_timeout,
            })?
            .map_err(|source| ClientError::Io {
                channel: opts.channel.clone(),
                context: "accepting the sender's data connection",
                source,
            })?;
        stream.set_nodelay(true).ok();
        // Speak first: accept() returning means this socket is in the socket
        // map already, and the sender's was inserted when its connect
        // completed, so from here on every byte either way is spliced.
        let credit = control_frame(FrameKind::Credit, &window.to_be_bytes());
        if stream.write_all(&credit).await.is_err() {
            continue;
        }
        match timeout(HELLO_TIMEOUT, read_hello(&mut stream)).await {
            Ok(Ok(presented)) if presented == *key => return Ok(stream),
            Ok(Ok(_)) => reject(stream, from, opts, "wrong pairing key").await,
            Ok(Err(reason)) => reject(stream, from, opts, &reason).await,
            Err(_) => reject(stream, from, opts, "no pairing key within 10 s").await,
        }
    }
}

async fn read_hello(stream: &mut TcpStream) -> Result<[u8; KEY_LEN], String> {
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("no hello frame: {e}"))?;
    match FrameHeader::decode(header) {
        Ok(FrameHeader {
            kind: FrameKind::Hello,
            ..
        }) => {}
        Ok(other) => return Err(format!("expected a hello frame, got {:?}", other.kind)),
        Err(err) => return Err(err.to_string()),
    }
    let mut key = [0u8; KEY_LEN];
    stream
        .read_exact(&mut key)
        .await
        .map_err(|e| format!("truncated hello frame: {e}"))?;
    Ok(key)
}

async fn reject(mut stream: TcpStream, from: SocketAddr, opts: &ChannelOptions, reason: &str) {
    warn!(channel = %opts.channel, %from, reason, "rejected a data connection");
    let _ = stream
        .write_all(&control_frame(FrameKind::Reject, reason.as_bytes()))
        .await;
}
