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
    Transport, connect,
    end::{EndState, read_failure, write_failure},
    receiver::finished,
};
use crate::protocol::{
    frame::{FrameKind, control_frame},
    stream::{Inbound, Outbound, Want},
};

/// Runs channel set-up and the agent reports for blocking clients.
fn background() -> &'static Runtime {
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
/// [`Sender::finish`]. Small writes are gathered like a `BufWriter`'s.
pub struct Sender {
    end: EndState,
    stream: TcpStream,
    outbound: Outbound,
    pending: Vec<u8>,
}

impl Sender {
    /// Opens `opts.channel` as its sender (waits for the receiver).
    pub fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let open = background().block_on(connect::sender(opts))?;
        Ok(Self {
            stream: into_blocking(open.data, &open.end.channel)?,
            end: open.end,
            outbound: Outbound::new(open.credit),
            pending: Vec::with_capacity(COALESCE_CAP),
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

    /// Ends the stream: sends the end mark and waits until the receiver has
    /// verified length and checksum.
    pub fn finish(mut self) -> Result<Summary, ClientError> {
        let result = self.end_stream();
        background().block_on(self.end.reporter.flushed());
        let sent = self.outbound.sent();
        result.map_err(|err| {
            ClientError::stream(&self.end.channel, &err, "finishing the stream", sent)
        })?;
        Ok(self.end.summary(sent, self.outbound.checksum()))
    }

    /// Gives up on the stream: the receiver fails with `reason`.
    pub fn abort(mut self, reason: &str) {
        if !self.outbound.mid_frame() {
            let _ = self
                .stream
                .write_all(&control_frame(FrameKind::Abort, reason.as_bytes()));
        }
        let sent = self.outbound.sent();
        let reason = reason.to_owned();
        self.end.fail(
            StreamError::Aborted {
                bytes: sent,
                reason,
            },
            sent,
        );
        background().block_on(self.end.reporter.flushed());
    }

    fn end_stream(&mut self) -> io::Result<()> {
        self.end.check()?;
        self.flush()?;
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
            let bufs = [
                IoSlice::new(next.header),
                IoSlice::new(&src[..next.payload]),
            ];
            let n = match self.stream.write_vectored(&bufs) {
                Ok(0) => {
                    let err = io::ErrorKind::WriteZero.into();
                    return Err(self.write_failed("writing", &err));
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(self.write_failed("writing", &err)),
            };
            let written = self.outbound.wrote(n, src);
            self.end.reporter.progress(self.outbound.sent());
            if written > 0 {
                return Ok(written);
            }
        }
    }
}

impl Write for Sender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.end.check()?;
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.outbound.mid_frame() && buf.len() < COALESCE_BELOW {
            if self.pending.len() + buf.len() > COALESCE_CAP {
                self.flush()?;
            }
            self.pending.extend_from_slice(buf);
            return Ok(buf.len());
        }
        self.flush()?;
        self.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let mut pos = 0;
        while pos < pending.len() {
            match self.send(&pending[pos..]) {
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
