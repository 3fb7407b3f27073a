//! The client for code without an async runtime: `std::io::Write` /
//! `std::io::Read` on blocking sockets. Setting up a channel and reporting to
//! the agent run on a small background runtime; the stream itself is plain
//! blocking reads and writes, one system call per message at best.
//!
//! ```no_run
//! use std::io::{Read as _, Write as _};
//! use floki_agent::client::{ChannelOptions, blocking};
//!
//! let opts = ChannelOptions::new("127.0.0.1:7878", "results");
//! let mut tx = blocking::Sender::connect(&opts)?;
//! tx.write_all(b"hello")?;
//! tx.finish()?; // returns once the receiver verified the stream
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Don't call these from inside a tokio runtime: use the async client there.

use std::{
    io::{self, IoSlice, Read, Write},
    net::TcpStream,
    ops::Range,
    sync::OnceLock,
};

use tokio::runtime::Runtime;

use super::{
    COALESCE_BELOW, COALESCE_CAP, ChannelOptions, ClientError, STAGING, StreamError, Summary,
    Transport,
    beside::Beside,
    connect,
    end::{EndState, read_failure, write_failure},
    receiver::finished,
};
use crate::protocol::{
    frame::{FrameKind, HEADER_LEN, control_frame},
    stream::{Inbound, Outbound, Want},
};

/// Runs channel set-up and the agent reports for blocking clients.
pub(crate) fn background() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("floki-client")
            .enable_all()
            .build()
            .expect("starting the Floki client's background runtime")
    })
}

/// Writes at least this large get their checksum computed beside the write.
const HASH_BESIDE_ABOVE: usize = 256 * 1024;

/// Turns an established (tokio) data connection into a blocking one.
fn into_blocking(data: tokio::net::TcpStream, channel: &str) -> Result<TcpStream, ClientError> {
    let io_err = |source| ClientError::Io {
        channel: channel.to_owned(),
        context: "switching the data connection to blocking mode",
        source,
    };
    let stream = data.into_std().map_err(io_err)?;
    stream.set_nonblocking(false).map_err(io_err)?;
    Ok(stream)
}

/// Reads from a blocking socket, retrying interrupted reads.
fn read_retrying(stream: &mut TcpStream, into: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(into) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// The sending end of a channel, blocking. Write the stream, then call
/// [`Sender::finish`]. [`Sender::open`] returns once the agent accepted the
/// channel; until the receiver is there, writes fill a buffer of the
/// channel's window and then wait. Small writes are gathered like a
/// `BufWriter`'s.
pub struct Sender {
    channel: String,
    channel_id: u32,
    link: Link,
    pending: Vec<u8>,
    /// Bytes `pending` may hold while pairing.
    prebuffer: usize,
}

enum Link {
    Pairing(tokio::task::JoinHandle<Result<connect::Established, ClientError>>),
    Open(Box<Open>),
    Unpaired(StreamError),
}

struct Open {
    end: EndState,
    stream: TcpStream,
    outbound: Outbound,
    /// Computes the checksum of large writes beside them (`None`: inline,
    /// if the helper thread could not start).
    beside: Option<Beside>,
}

impl Sender {
    /// Opens `opts.channel` as its sender and returns once the agent has
    /// accepted it; the stream is set up in the background.
    pub fn open(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let accepted = background().block_on(connect::sender_hello(opts))?;
        let channel_id = accepted.channel_id;
        let prebuffer = accepted.window.unwrap_or(0) as usize;
        let task_opts = opts.clone();
        let pairing =
            background().spawn(async move { connect::sender(accepted, &task_opts).await });
        Ok(Self {
            channel: opts.channel.clone(),
            channel_id,
            link: Link::Pairing(pairing),
            pending: Vec::new(),
            prebuffer,
        })
    }

    /// Opens `opts.channel` as its sender and waits until the receiver is
    /// there and the stream can be written.
    pub fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let mut sender = Self::open(opts)?;
        sender
            .open_stream()
            .map_err(|err| ClientError::stream(&opts.channel, &err, "setting up the stream", 0))?;
        Ok(sender)
    }

    /// How the bytes travel (`None` until the stream is set up).
    pub fn transport(&self) -> Option<Transport> {
        match &self.link {
            Link::Open(open) => Some(open.end.transport),
            _ => None,
        }
    }

    /// Agent-wide channel id.
    pub fn channel_id(&self) -> u32 {
        self.channel_id
    }

    /// Ends the stream: sends the end mark and waits until the receiver has
    /// verified length and checksum.
    pub fn finish(mut self) -> Result<Summary, ClientError> {
        let result = self.flush().and_then(|()| self.open_stream()?.end_stream());
        let channel = self.channel.clone();
        match &mut self.link {
            Link::Open(open) => {
                background().block_on(open.end.reporter.flushed());
                let sent = open.outbound.sent();
                result.map_err(|err| {
                    ClientError::stream(&channel, &err, "finishing the stream", sent)
                })?;
                Ok(open.end.summary(sent, open.outbound.checksum()))
            }
            _ => Err(ClientError::stream(
                &channel,
                &result.expect_err("a stream that never opened cannot finish"),
                "setting up the stream",
                0,
            )),
        }
    }

    /// Gives up on the stream: the receiver fails with `reason`.
    pub fn abort(mut self, reason: &str) {
        match &mut self.link {
            Link::Pairing(task) => task.abort(),
            Link::Open(open) => {
                if !open.outbound.mid_frame() {
                    let _ = open
                        .stream
                        .write_all(&control_frame(FrameKind::Abort, reason.as_bytes()));
                }
                let sent = open.outbound.sent();
                let reason = reason.to_owned();
                open.end.fail(
                    StreamError::Aborted {
                        bytes: sent,
                        reason,
                    },
                    sent,
                );
                background().block_on(open.end.reporter.flushed());
            }
            Link::Unpaired(_) => {}
        }
    }

    /// The established stream, waiting for the set-up if needed.
    fn open_stream(&mut self) -> io::Result<&mut Open> {
        if let Link::Pairing(task) = &mut self.link {
            self.link = match background().block_on(task) {
                Ok(Ok(established)) => match into_blocking(established.data, &self.channel) {
                    Ok(stream) => Link::Open(Box::new(Open {
                        // Over TCP the sender's core also runs the stack
                        // (the receiving side too, on one machine), so it
                        // is the one to unload; spliced, both ends do one
                        // copy each and the hash is cheapest inline, on data
                        // still in cache.
                        beside: (established.end.transport == Transport::Tcp)
                            .then(Beside::start)
                            .and_then(Result::ok),
                        end: established.end,
                        stream,
                        outbound: Outbound::new(established.credit),
                    })),
                    Err(err) => Link::Unpaired(StreamError::NotPaired {
                        reason: crate::agent::error_chain(&err),
                    }),
                },
                Ok(Err(err)) => Link::Unpaired(StreamError::NotPaired {
                    reason: crate::agent::error_chain(&err),
                }),
                Err(err) => Link::Unpaired(StreamError::NotPaired {
                    reason: err.to_string(),
                }),
            };
        }
        match &mut self.link {
            Link::Open(open) => Ok(open),
            Link::Unpaired(err) => Err(err.clone().into()),
            Link::Pairing(_) => unreachable!("resolved above"),
        }
    }
}

impl Open {
    fn end_stream(&mut self) -> io::Result<()> {
        self.end.check()?;
        if self.outbound.mid_frame() {
            let err = StreamError::Protocol("the stream was ended in the middle of a write".into());
            return Err(self.fail(err));
        }
        let mark = self.outbound.end_frame();
        self.stream
            .write_all(&mark)
            .map_err(|err| self.write_failed("sending the end mark", &err))?;
        loop {
            match self.outbound.acked() {
                Some(Ok(())) => break,
                Some(Err(err)) => return Err(self.fail(err)),
                None => self.read_inbox()?,
            }
        }
        self.end.reporter.finish(self.outbound.sent(), None);
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        Ok(())
    }

    fn fail(&mut self, err: StreamError) -> io::Error {
        self.end.fail(err, self.outbound.sent()).into()
    }

    fn write_failed(&mut self, context: &'static str, err: &io::Error) -> io::Error {
        self.fail(write_failure(context, self.outbound.sent(), err))
    }

    fn read_inbox(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 512];
        match read_retrying(&mut self.stream, &mut chunk) {
            Ok(0) => {
                let bytes = self.outbound.sent();
                Err(self.fail(StreamError::ReceiverGone { bytes }))
            }
            Ok(n) => self
                .outbound
                .receive(&chunk[..n])
                .map_err(|err| self.fail(err)),
            Err(err) => Err(self.write_failed("reading the receiver's credit", &err)),
        }
    }

    /// Sends at least one byte of `src` (`src` not empty).
    fn send(&mut self, src: &[u8]) -> io::Result<usize> {
        loop {
            let Some(next) = self.outbound.next_write(src.len()) else {
                self.read_inbox()?;
                continue;
            };
            let mut header = [0u8; HEADER_LEN];
            let header_len = next.header.len();
            header[..header_len].copy_from_slice(next.header);
            let payload = &src[..next.payload];
            let bufs = [IoSlice::new(&header[..header_len]), IoSlice::new(payload)];
            // Large writes: the checksum is computed beside the write, on a
            // helper thread, off the sender's critical path.
            let (result, ahead) = match &self.beside {
                Some(beside) if payload.len() >= HASH_BESIDE_ABOVE => {
                    let stream = &mut self.stream;
                    beside.run(self.outbound.ahead(), payload, || {
                        stream.write_vectored(&bufs)
                    })
                }
                _ => (self.stream.write_vectored(&bufs), None),
            };
            let n = match result {
                Ok(0) => {
                    let err = io::ErrorKind::WriteZero.into();
                    return Err(self.write_failed("writing", &err));
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(self.write_failed("writing", &err)),
            };
            let written = match ahead {
                Some(ahead) => self.outbound.wrote_ahead(n, src, ahead),
                None => self.outbound.wrote(n, src),
            };
            self.end.reporter.progress(self.outbound.sent());
            if written > 0 {
                return Ok(written);
            }
        }
    }
}

impl Write for Sender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Link::Pairing(_) = self.link {
            // The receiver is not there yet: buffer up to the window.
            let room = self.prebuffer.saturating_sub(self.pending.len());
            if room > 0 {
                let take = room.min(buf.len());
                self.pending.extend_from_slice(&buf[..take]);
                return Ok(take);
            }
        }
        let open = self.open_stream()?;
        open.end.check()?;
        if !open.outbound.mid_frame() && buf.len() < COALESCE_BELOW {
            if self.pending.len() + buf.len() > COALESCE_CAP {
                self.flush()?;
            }
            self.pending.extend_from_slice(buf);
            return Ok(buf.len());
        }
        self.flush()?;
        self.open_stream()?.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let open = match self.open_stream() {
            Ok(open) => open,
            Err(err) => {
                self.pending = pending;
                return Err(err);
            }
        };
        let mut pos = 0;
        while pos < pending.len() {
            match open.send(&pending[pos..]) {
                Ok(n) => pos += n,
                Err(err) => {
                    self.pending = pending;
                    self.pending.drain(..pos);
                    return Err(err);
                }
            }
        }
        self.pending = pending;
        self.pending.clear();
        Ok(())
    }
}

/// The receiving end of a channel, blocking. `read` returns 0 only after the
/// sender's end mark and checksum were verified; a stream cut short is an
/// error (kind `UnexpectedEof`, carrying a [`StreamError`]).
pub struct Receiver {
    end: EndState,
    stream: TcpStream,
    inbound: Inbound,
    staging: Box<[u8; STAGING]>,
    staged: Range<usize>,
    reported: bool,
}

impl Receiver {
    /// Opens `opts.channel` as its receiver (waits for the sender).
    pub fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let open = background().block_on(connect::receiver(opts))?;
        Ok(Self {
            stream: into_blocking(open.data, &open.end.channel)?,
            end: open.end,
            inbound: Inbound::new(open.credit),
            staging: Box::new([0; STAGING]),
            staged: 0..0,
            reported: false,
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

    /// After end of stream: what arrived, once the agent has been told.
    pub fn finish(mut self) -> Result<Summary, ClientError> {
        let result = finished(&mut self.end, &self.inbound, self.reported);
        background().block_on(self.end.reporter.flushed());
        result.map_err(|source| self.end.error(source))
    }

    fn fail(&mut self, err: StreamError) -> io::Error {
        self.end.fail(err, self.inbound.received()).into()
    }

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
    fn read_outcome(&mut self, read: io::Result<usize>) -> io::Result<usize> {
        match read {
            Ok(0) => Err(self.fail(self.inbound.eof())),
            Ok(n) => Ok(n),
            Err(err) => Err(self.fail(read_failure(self.inbound.received(), &err))),
        }
    }
}

impl Read for Receiver {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.end.check()?;
        loop {
            self.flush_out();
            match self.inbound.want() {
                Want::Finished => {
                    if !self.reported {
                        self.reported = true;
                        self.end.reporter.finish(self.inbound.received(), None);
                        let _ = self.stream.shutdown(std::net::Shutdown::Write);
                    }
                    return Ok(0);
                }
                Want::Payload(left) => {
                    if buf.is_empty() {
                        return Ok(0);
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
                    self.end.reporter.progress(self.inbound.received());
                    return Ok(n);
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
                            return Err(self.fail(err));
                        }
                    }
                }
            }
        }
    }
}
