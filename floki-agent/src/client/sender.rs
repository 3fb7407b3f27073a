//! The producing end of a channel, async: an `AsyncWrite` over
//! [`Outbound`](crate::protocol::stream::Outbound).

use std::{
    future::Future as _,
    io::{self, IoSlice},
    mem,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    task::JoinHandle,
};

use super::{
    COALESCE_BELOW, COALESCE_CAP, ChannelOptions, ClientError, StreamError, Summary, Transport,
    connect::{self, Established},
    end::{EndState, write_failure},
};
use crate::protocol::{
    frame::{FrameKind, control_frame},
    stream::Outbound,
};

enum Stage {
    Streaming,
    /// The end mark is being written (`pos` bytes of it so far), then the ack awaited.
    Ending {
        mark: Vec<u8>,
        pos: usize,
    },
    Done,
}

/// An established stream.
struct Open {
    end: EndState,
    stream: TcpStream,
    outbound: Outbound,
    stage: Stage,
}

enum Link {
    /// The agent accepted the channel; pairing and the data connection are
    /// being set up.
    Pairing(JoinHandle<Result<Established, ClientError>>),
    Open(Box<Open>),
    /// Setting the stream up failed.
    Unpaired(StreamError),
}

/// The sending end of a channel. Write the stream, then call
/// [`Sender::finish`]: it returns once the receiver has verified every byte.
/// Dropping a `Sender` without finishing makes the receiver fail with a
/// truncation error, as a crash would.
///
/// [`Sender::open`] returns as soon as the agent accepted the channel: until
/// the receiver is there, writes fill a buffer of the channel's window (the
/// edge's buffer in a workflow) and then wait. Writes smaller than 16 KiB are
/// gathered into larger frames, like a `BufWriter`: `flush` sends them at once.
pub struct Sender {
    channel: String,
    channel_id: u32,
    link: Link,
    pending: Vec<u8>,
    pending_pos: usize,
    /// Bytes `pending` may hold while pairing.
    prebuffer: usize,
}

impl Sender {
    /// Opens `opts.channel` as its sender and returns once the agent has
    /// accepted it; the stream is set up in the background.
    pub async fn open(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let accepted = connect::sender_hello(opts).await?;
        let channel_id = accepted.channel_id;
        let prebuffer = accepted.window.unwrap_or(0) as usize;
        let task_opts = opts.clone();
        let pairing = tokio::spawn(async move { connect::sender(accepted, &task_opts).await });
        Ok(Self {
            channel: opts.channel.clone(),
            channel_id,
            link: Link::Pairing(pairing),
            pending: Vec::new(),
            pending_pos: 0,
            prebuffer,
        })
    }

    /// Opens `opts.channel` as its sender and waits until the receiver is
    /// there and the stream can be written.
    pub async fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let mut sender = Self::open(opts).await?;
        std::future::poll_fn(|cx| sender.poll_link(cx))
            .await
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

    /// Stream bytes written so far (buffered ones included).
    pub fn bytes_sent(&self) -> u64 {
        let sent = match &self.link {
            Link::Open(open) => open.outbound.sent(),
            _ => 0,
        };
        sent + (self.pending.len() - self.pending_pos) as u64
    }

    /// Ends the stream: sends the end mark and waits until the receiver has
    /// verified length and checksum.
    pub async fn finish(mut self) -> Result<Summary, ClientError> {
        let result = self.shutdown().await;
        let channel = self.channel.clone();
        match &mut self.link {
            Link::Open(open) => {
                open.end.reporter.flushed().await;
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
    pub async fn abort(mut self, reason: &str) {
        match &mut self.link {
            Link::Pairing(task) => task.abort(),
            Link::Open(open) => {
                if !open.outbound.mid_frame() {
                    let _ = open
                        .stream
                        .write_all(&control_frame(FrameKind::Abort, reason.as_bytes()))
                        .await;
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
                open.end.reporter.flushed().await;
            }
            Link::Unpaired(_) => {}
        }
    }

    /// Drives the set-up to its end: `Ready(Ok)` once the stream is open.
    fn poll_link(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Link::Pairing(task) = &mut self.link else {
            return Poll::Ready(match &self.link {
                Link::Unpaired(err) => Err(err.clone().into()),
                _ => Ok(()),
            });
        };
        let channel = self.channel.clone();
        self.link = match ready!(Pin::new(task).poll(cx)) {
            Ok(Ok(established)) => match established.data.socket(&channel) {
                Ok(stream) => Link::Open(Box::new(Open {
                    outbound: Outbound::new(established.credit),
                    end: established.end,
                    stream,
                    stage: Stage::Streaming,
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
        self.poll_link(cx)
    }

    fn poll_drain_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_link(cx))?;
        let Link::Open(open) = &mut self.link else {
            unreachable!("poll_link returned Ok");
        };
        let pending = mem::take(&mut self.pending);
        let mut pos = self.pending_pos;
        let result = loop {
            if pos == pending.len() {
                break Ok(());
            }
            match open.poll_send(cx, &pending[pos..]) {
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

impl Open {
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

    /// Writes the end mark and waits for the receiver's ack.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.end.check()?;
        if let Stage::Streaming = self.stage {
            if self.outbound.mid_frame() {
                let err = StreamError::Protocol(
                    "the stream was ended in the middle of a write (use write_all)".into(),
                );
                return Poll::Ready(Err(self.fail(err)));
            }
            self.stage = Stage::Ending {
                mark: self.outbound.end_frame(),
                pos: 0,
            };
        }
        loop {
            match &mut self.stage {
                Stage::Done => return Poll::Ready(Ok(())),
                Stage::Streaming => unreachable!("left above"),
                Stage::Ending { mark, pos } if *pos < mark.len() => {
                    match ready!(Pin::new(&mut self.stream).poll_write(cx, &mark[*pos..])) {
                        Ok(n) if n > 0 => *pos += n,
                        Ok(_) => {
                            let err = io::ErrorKind::WriteZero.into();
                            return Poll::Ready(Err(
                                self.write_failed("sending the end mark", &err)
                            ));
                        }
                        Err(err) => {
                            return Poll::Ready(Err(
                                self.write_failed("sending the end mark", &err)
                            ));
                        }
                    }
                }
                Stage::Ending { .. } => match self.outbound.acked() {
                    None => ready!(self.poll_inbox(cx))?,
                    Some(Err(err)) => return Poll::Ready(Err(self.fail(err))),
                    Some(Ok(())) => {
                        self.stage = Stage::Done;
                        self.end.reporter.finish(self.outbound.sent(), None);
                        let _ = Pin::new(&mut self.stream).poll_shutdown(cx);
                    }
                },
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
        loop {
            match &mut this.link {
                Link::Unpaired(err) => return Poll::Ready(Err(err.clone().into())),
                Link::Pairing(_) => {
                    // The receiver is not there yet: buffer up to the window.
                    let room = this.prebuffer.saturating_sub(this.pending.len());
                    if room > 0 {
                        let take = room.min(buf.len());
                        this.pending.extend_from_slice(&buf[..take]);
                        return Poll::Ready(Ok(take));
                    }
                    ready!(this.poll_link(cx))?;
                }
                Link::Open(open) => {
                    open.end.check()?;
                    if !matches!(open.stage, Stage::Streaming) {
                        return Poll::Ready(Err(StreamError::Closed.into()));
                    }
                    if !open.outbound.mid_frame() && buf.len() < COALESCE_BELOW {
                        if this.pending.len() + buf.len() > COALESCE_CAP {
                            ready!(this.poll_drain_pending(cx))?;
                        }
                        this.pending.extend_from_slice(buf);
                        return Poll::Ready(Ok(buf.len()));
                    }
                    ready!(this.poll_drain_pending(cx))?;
                    let Link::Open(open) = &mut this.link else {
                        unreachable!("drained on an open stream");
                    };
                    return open.poll_send(cx, buf);
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain_pending(cx))?;
        match &mut this.link {
            Link::Open(open) => Pin::new(&mut open.stream).poll_flush(cx),
            // Nothing buffered and not set up yet: nothing to flush.
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_link(cx))?;
        ready!(this.poll_drain_pending(cx))?;
        let Link::Open(open) = &mut this.link else {
            unreachable!("poll_link returned Ok");
        };
        open.poll_end(cx)
    }
}
