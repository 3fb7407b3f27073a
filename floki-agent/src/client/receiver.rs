//! The consuming end of a channel, async: an `AsyncRead` over
//! [`Inbound`](crate::protocol::stream::Inbound).

use std::{
    io,
    ops::Range,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{
    ChannelOptions, ClientError, STAGING, StreamError, Summary, Transport, connect,
    end::{EndState, read_failure},
};
use crate::protocol::stream::{Inbound, Want};

/// The receiving end of a channel. Read until end of stream: `Ok(0)` comes
/// only after the sender's end mark and checksum were verified; a stream cut
/// short is an `io::Error` (kind `UnexpectedEof`, carrying a [`StreamError`]).
pub struct Receiver {
    end: EndState,
    stream: TcpStream,
    inbound: Inbound,
    /// Headers and small payloads are read through this buffer, so that a
    /// small message costs one read; bulk payloads go straight to the caller.
    staging: Box<[u8; STAGING]>,
    staged: Range<usize>,
    reported: bool,
}

impl Receiver {
    /// Opens `opts.channel` as its receiver: waits for the sender and its
    /// data connection, and returns once the stream can be read.
    pub async fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let open = connect::receiver(opts).await?;
        Ok(Self {
            stream: open.data.socket(&opts.channel)?,
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

    /// Stream bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.inbound.received()
    }

    /// After end of stream: what arrived, once the agent has been told.
    pub async fn finish(mut self) -> Result<Summary, ClientError> {
        let result = finished(
            &mut self.end,
            self.inbound.received(),
            self.inbound.checksum(),
            self.reported,
        );
        self.end.reporter.flushed().await;
        result.map_err(|source| self.end.error(source))
    }

    fn fail(&mut self, err: StreamError) -> io::Error {
        self.end.fail(err, self.inbound.received()).into()
    }

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
    fn poll_stage(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut rb = ReadBuf::new(&mut self.staging[..]);
        let read = ready!(Pin::new(&mut self.stream).poll_read(cx, &mut rb));
        let n = rb.filled().len();
        Poll::Ready(match read {
            Ok(()) if n == 0 => Err(self.fail(self.inbound.eof())),
            Ok(()) => {
                self.staged = 0..n;
                Ok(())
            }
            Err(err) => Err(self.fail(read_failure(self.inbound.received(), &err))),
        })
    }
}

/// A receiver's summary at `finish`: complete only after end of stream.
pub(crate) fn finished(
    end: &mut EndState,
    received: u64,
    checksum: u64,
    reported: bool,
) -> Result<Summary, StreamError> {
    match (end.failure(), reported) {
        (Some(err), _) => Err(err.clone()),
        (None, true) => Ok(end.summary(received, checksum)),
        (None, false) => {
            let err = StreamError::Protocol("finish() called before the end of the stream".into());
            Err(end.fail(err, received))
        }
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
        loop {
            // Credits go out as soon as the socket takes them; a full send
            // buffer must not hold reading up.
            let flushed = this.poll_flush_out(cx);
            match this.inbound.want() {
                Want::Finished => {
                    // The stream is verified: whether the ack reaches the
                    // sender (it may be gone) changes nothing for this end.
                    let _ = ready!(flushed);
                    if !this.reported {
                        this.reported = true;
                        this.end.reporter.finish(this.inbound.received(), None);
                        let _ = Pin::new(&mut this.stream).poll_shutdown(cx);
                    }
                    return Poll::Ready(Ok(()));
                }
                Want::Payload(left) => {
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let n = if this.staged.is_empty() {
                        // Bulk: straight into the caller's buffer.
                        // SAFETY: `sub` only writes initialised bytes into the
                        // unfilled part of `buf`; `assume_init` covers exactly those.
                        let unfilled = unsafe { buf.unfilled_mut() };
                        let limit = unfilled.len().min(left);
                        let mut sub = ReadBuf::uninit(&mut unfilled[..limit]);
                        let read = ready!(Pin::new(&mut this.stream).poll_read(cx, &mut sub));
                        let n = sub.filled().len();
                        match read {
                            Ok(()) if n == 0 => {
                                return Poll::Ready(Err(this.fail(this.inbound.eof())));
                            }
                            Ok(()) => {}
                            Err(err) => {
                                let err = read_failure(this.inbound.received(), &err);
                                return Poll::Ready(Err(this.fail(err)));
                            }
                        }
                        // SAFETY: `sub` filled (initialised) the first `n` unfilled bytes.
                        unsafe { buf.assume_init(n) };
                        buf.advance(n);
                        n
                    } else {
                        let n = this.staged.len().min(left).min(buf.remaining());
                        let start = this.staged.start;
                        buf.put_slice(&this.staging[start..start + n]);
                        this.staged.start += n;
                        n
                    };
                    let filled = buf.filled();
                    this.inbound.payload(&filled[filled.len() - n..]);
                    this.end.reporter.progress(this.inbound.received());
                    let _ = this.poll_flush_out(cx);
                    return Poll::Ready(Ok(()));
                }
                Want::Framing => {
                    if this.staged.is_empty() {
                        ready!(this.poll_stage(cx))?;
                    }
                    let staged = &this.staging[this.staged.clone()];
                    match this.inbound.frame_bytes(staged) {
                        Ok(n) => this.staged.start += n,
                        Err(err) => {
                            // Tell the sender why (a rejection), best effort.
                            let _ = this.poll_flush_out(cx);
                            return Poll::Ready(Err(this.fail(err)));
                        }
                    }
                }
            }
        }
    }
}
