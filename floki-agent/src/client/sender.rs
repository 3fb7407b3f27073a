//! The producing end of a channel, async: an `AsyncWrite` over
//! [`Outbound`](crate::protocol::stream::Outbound).

use std::{
    io::{self, IoSlice},
    mem,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};

use super::{
    COALESCE_BELOW, COALESCE_CAP, ChannelOptions, ClientError, StreamError, Summary, Transport,
    connect,
    end::{EndState, write_failure},
};
use crate::protocol::{
    frame::{FrameKind, control_frame},
    stream::Outbound,
};

enum Stage {
    Open,
    /// The end mark is being written (`pos` bytes of it so far), then the ack awaited.
    Ending {
        mark: Vec<u8>,
        pos: usize,
    },
    Done,
}

/// The sending end of a channel. Write the stream, then call
/// [`Sender::finish`]: it returns once the receiver has verified every byte.
/// Dropping a `Sender` without finishing makes the receiver fail with a
/// truncation error, as a crash would. Writes smaller than 16 KiB are gathered
/// into larger frames, like a `BufWriter`: `flush` sends them at once.
pub struct Sender {
    end: EndState,
    stream: TcpStream,
    outbound: Outbound,
    stage: Stage,
    pending: Vec<u8>,
    pending_pos: usize,
}

impl Sender {
    /// Opens `opts.channel` as its sender: waits for the receiver, connects to
    /// it and returns once the stream can be written.
    pub async fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let open = connect::sender(opts).await?;
        Ok(Self {
            end: open.end,
            stream: open.data,
            outbound: Outbound::new(open.credit),
            stage: Stage::Open,
            pending: Vec::with_capacity(COALESCE_CAP),
            pending_pos: 0,
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

    /// Stream bytes written so far.
    pub fn bytes_sent(&self) -> u64 {
        self.outbound.sent()
    }

    /// Ends the stream: sends the end mark and waits until the receiver has
    /// verified length and checksum.
    pub async fn finish(mut self) -> Result<Summary, ClientError> {
        let result = self.shutdown().await;
        self.end.reporter.flushed().await;
        let sent = self.outbound.sent();
        result.map_err(|err| {
            ClientError::stream(&self.end.channel, &err, "finishing the stream", sent)
        })?;
        Ok(self.end.summary(sent, self.outbound.checksum()))
    }

    /// Gives up on the stream: the receiver fails with `reason`.
    pub async fn abort(mut self, reason: &str) {
        if !self.outbound.mid_frame() {
            let _ = self
                .stream
                .write_all(&control_frame(FrameKind::Abort, reason.as_bytes()))
                .await;
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
        self.end.reporter.flushed().await;
    }

    fn fail(&mut self, err: StreamError) -> io::Error {
        self.end.fail(err, self.outbound.sent()).into()
    }

    fn write_failed(&mut self, context: &'static str, err: &io::Error) -> io::Error {
        self.fail(write_failure(context, self.outbound.sent(), err))
    }

    /// Sends at least one byte of `src` (`src` not empty).
    fn poll_send(&mut self, cx: &mut Context<'_>, src: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let Self {
                outbound, stream, ..
            } = self;
            let Some(next) = outbound.next_write(src.len()) else {
                ready!(self.poll_inbox(cx))?;
                continue;
            };
            let bufs = [
                IoSlice::new(next.header),
                IoSlice::new(&src[..next.payload]),
            ];
            let n = match ready!(Pin::new(stream).poll_write_vectored(cx, &bufs)) {
                Ok(0) => {
                    let err = io::ErrorKind::WriteZero.into();
                    return Poll::Ready(Err(self.write_failed("writing", &err)));
                }
                Ok(n) => n,
                Err(err) => return Poll::Ready(Err(self.write_failed("writing", &err))),
            };
            let written = self.outbound.wrote(n, src);
            self.end.reporter.progress(self.outbound.sent());
            if written > 0 {
                return Poll::Ready(Ok(written));
            }
        }
    }

    /// Reads and handles what the receiver sent (credits, ack, reject).
    fn poll_inbox(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; 512];
        let mut buf = ReadBuf::new(&mut chunk);
        match ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf)) {
            Ok(()) if buf.filled().is_empty() => {
                let bytes = self.outbound.sent();
                Poll::Ready(Err(self.fail(StreamError::ReceiverGone { bytes })))
            }
            Ok(()) => {
                let received = self.outbound.receive(buf.filled());
                Poll::Ready(received.map_err(|err| self.fail(err)))
            }
            Err(err) => Poll::Ready(Err(self.write_failed("reading the receiver's credit", &err))),
        }
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
}

impl AsyncWrite for Sender {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.end.check()?;
        if !matches!(this.stage, Stage::Open) {
            return Poll::Ready(Err(StreamError::Closed.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if !this.outbound.mid_frame() && buf.len() < COALESCE_BELOW {
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
        this.end.check()?;
        if let Stage::Open = this.stage {
            ready!(this.poll_drain_pending(cx))?;
            if this.outbound.mid_frame() {
                let err = StreamError::Protocol(
                    "the stream was ended in the middle of a write (use write_all)".into(),
                );
                return Poll::Ready(Err(this.fail(err)));
            }
            this.stage = Stage::Ending {
                mark: this.outbound.end_frame(),
                pos: 0,
            };
        }
        loop {
            match &mut this.stage {
                Stage::Done => return Poll::Ready(Ok(())),
                Stage::Open => unreachable!("left above"),
                Stage::Ending { mark, pos } if *pos < mark.len() => {
                    match ready!(Pin::new(&mut this.stream).poll_write(cx, &mark[*pos..])) {
                        Ok(n) if n > 0 => *pos += n,
                        Ok(_) => {
                            let err = io::ErrorKind::WriteZero.into();
                            return Poll::Ready(Err(
                                this.write_failed("sending the end mark", &err)
                            ));
                        }
                        Err(err) => {
                            return Poll::Ready(Err(
                                this.write_failed("sending the end mark", &err)
                            ));
                        }
                    }
                }
                Stage::Ending { .. } => match this.outbound.acked() {
                    None => ready!(this.poll_inbox(cx))?,
                    Some(Err(err)) => return Poll::Ready(Err(this.fail(err))),
                    Some(Ok(())) => {
                        this.stage = Stage::Done;
                        this.end.reporter.finish(this.outbound.sent(), None);
                        let _ = Pin::new(&mut this.stream).poll_shutdown(cx);
                    }
                },
            }
        }
    }
}
