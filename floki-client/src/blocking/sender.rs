//! The blocking sender: frames over a socket (spliced or TCP), or a
//! shared-memory ring.

use std::{
    io::{self, IoSlice, Write},
    net::TcpStream,
};

use floki_proto::{
    frame::{FrameKind, HEADER_LEN, control_frame},
    ring::RingWriter,
    stream::Outbound,
};

use super::{background, into_blocking, on_this_thread, read_retrying};
use crate::{
    COPY_CHUNK, ChannelOptions, ClientError, RING_REGION, StreamError, Summary, Transport,
    checksum_beside::OnDemand,
    control::{self, Accepted},
    end::{EndState, write_failure},
    setup::{
        self, DataPath, Established,
        opening::{Nudge, Opening, Pending},
    },
};

/// Writes at least this large get their checksum computed beside the write.
const HASH_BESIDE_ABOVE: usize = 256 * 1024;

/// The sending end of a channel, blocking. Write the stream, then call
/// [`Sender::finish`]. [`Sender::open`] returns once the agent accepted the
/// channel; until the receiver is there, writes fill a buffer of the
/// channel's window and then wait. Small writes are gathered like a
/// `BufWriter`'s. On the agent's Unix socket, with its receiver there too,
/// the stream goes through a ring in shared memory (`shm`).
pub struct Sender {
    channel: String,
    channel_id: u32,
    opening: Opening<Open>,
    pending: Pending,
}

struct Open {
    end: EndState,
    path: Path,
    /// The end mark went out ([`Sender::end`]).
    ended: bool,
}

/// Where the bytes go.
enum Path {
    Socket(SocketOut),
    Ring(RingWriter),
}

/// Frames, credits and the end mark over a socket.
struct SocketOut {
    stream: TcpStream,
    outbound: Outbound,
    /// Computes the checksum of large writes beside them (`None`: inline).
    beside: Option<OnDemand>,
    /// The connection is the agents' link, kept after a verified stream
    /// ([`Established::link`]): never shut down.
    link: bool,
}

impl Sender {
    /// Opens `opts.channel` as its sender and returns once the agent has
    /// accepted it; the stream is set up in the background (or at once, on
    /// this thread, when its receiver was there first and they share a
    /// ring).
    pub fn open(opts: &ChannelOptions) -> Result<Self, ClientError> {
        Self::accepted(opts, on_this_thread(setup::sender_hello(opts))?)
    }

    /// The sender of `opts.channel` whose pairing (over a ring or the
    /// agents' link) the agent already sent, set up on this thread; its
    /// reports go from the background runtime.
    fn paired_here(opts: &ChannelOptions, accepted: Accepted) -> Self {
        let channel_id = accepted.channel_id;
        let (pending, nudged) = Pending::new(accepted.window.unwrap_or(0));
        let reports_on = background().handle();
        let established = on_this_thread(setup::sender(accepted, opts, nudged, Some(reports_on)));
        Self {
            channel: opts.channel.clone(),
            channel_id,
            opening: Opening::settled(established, Open::new),
            pending,
        }
    }

    /// The sender of `opts.channel` the agent accepted (said hello on this
    /// thread); the stream is set up in the background.
    pub(crate) fn accepted(opts: &ChannelOptions, accepted: Accepted) -> Result<Self, ClientError> {
        // The agent sends `paired` right after `accepted` when the receiver
        // was there first (or, across nodes, at once), but waking this
        // thread may have preempted it on its CPU: yield once to let it
        // finish. A ring, or the agents' link, is set up at once: here,
        // with no hand-off to the background and back, and the first write
        // goes straight into it. (Any other path may wait for its receiver:
        // in the background, while the caller writes ahead.)
        let bounded = opts.pair_timeout.is_some();
        let at_once = accepted.paired_at_once(bounded) || {
            std::thread::yield_now();
            accepted.paired_at_once(bounded)
        };
        if at_once {
            return Ok(Self::paired_here(opts, accepted));
        }
        let Accepted {
            control,
            channel_id,
            window,
            listener: _,
            ring,
            link,
            held,
        } = accepted;
        let (pending, nudged) = Pending::new(window.unwrap_or(0));
        let moving = |channel: &str, source| ClientError::Io {
            channel: channel.to_owned(),
            context: "moving the control connection to the background runtime",
            source,
        };
        // Pairing goes on in the background while the caller writes.
        let control = control::detach(control).map_err(|e| moving(&opts.channel, e))?;
        let task_opts = opts.clone();
        let task = background().spawn(async move {
            let accepted = Accepted {
                control: control::attach(control).map_err(|e| moving(&task_opts.channel, e))?,
                channel_id,
                window,
                listener: None,
                ring,
                link,
                held,
            };
            // Deferred like any blocking end's reports: its task starts
            // only if a report is due that the caller cannot write, and its
            // connection may be kept for the next channel.
            setup::sender(accepted, &task_opts, nudged, Some(background().handle())).await
        });
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
    pub fn connect(opts: &ChannelOptions) -> Result<Self, ClientError> {
        let mut sender = Self::open(opts)?;
        // Waiting with nothing buffered: the agent may store the stream.
        sender.pending.nudge(Nudge::Waiting);
        match sender.open_stream() {
            Ok(_) => Ok(sender),
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

    /// Ends the stream: sends the end mark (unless [`Sender::end`] did) and
    /// waits until the receiver has verified length and checksum.
    pub fn finish(mut self) -> Result<Summary, ClientError> {
        let result = self
            .send_end()
            .and_then(|()| self.open_stream()?.await_verdict());
        let channel = self.channel.clone();
        match self.opening.open_mut() {
            Some(open) => {
                background().block_on(open.end.reporter.flushed());
                let sent = open.path.sent();
                result.map_err(|err| {
                    ClientError::stream(&channel, &err, "finishing the stream", sent)
                })?;
                let mut summary = open.end.summary(sent, open.path.checksum());
                summary.stored |= open.path.stored();
                // A verified stream over a ring: the ring stays with the
                // kept connection, for the next stream with this receiver;
                // over the agents' link, the link, for this stream's next
                // use.
                if let Opening::Open(Open { mut end, path, .. }) = self.opening {
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
                            ) {
                                end.reporter.keep_link(socket.stream);
                            }
                        }
                    }
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
    /// not into a buffer and then into the ring (`floki-agent send FILE`).
    /// Over a socket, and before the receiver is there, through a buffer
    /// as [`io::copy`] does. An error is `src`'s or the stream's; the
    /// stream's also comes back from `finish`.
    pub fn write_from(&mut self, src: &mut dyn io::Read) -> io::Result<u64> {
        let mut total = 0;
        let mut buf = Vec::new();
        loop {
            if !self.opening.is_pairing() {
                self.flush()?;
                if let Some(result) = self.open_stream()?.read_into_ring(src) {
                    return result.map(|n| total + n);
                }
            }
            if buf.is_empty() {
                buf = vec![0; COPY_CHUNK];
            }
            let n = match src.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            self.write_all(&buf[..n])?;
            total += n as u64;
        }
    }

    /// Sends the end mark and returns without waiting for the receiver's
    /// verdict, which [`Sender::finish`] then waits for. A function with
    /// several streams ends them all, then finishes each: their receivers
    /// verify them at once, not one after another as each `finish` would
    /// have them. Waits for the receiver if it is not there yet (what is
    /// buffered must reach it first). No write is taken after it.
    pub fn end(&mut self) -> Result<(), ClientError> {
        self.send_end().map_err(|err| {
            self.opening.take_failure().unwrap_or_else(|| {
                ClientError::stream(&self.channel, &err, "ending the stream", self.bytes_sent())
            })
        })
    }

    /// Flushes what is buffered and sends the end mark, once.
    fn send_end(&mut self) -> io::Result<()> {
        self.pending.nudge(Nudge::Finishing);
        // What is buffered (a small stream: all of it) and the end mark in
        // one write, where they fit the credit at hand.
        if (1..HASH_BESIDE_ABOVE).contains(&self.pending.len()) {
            let open = self.opening.wait_open(background(), Open::new)?;
            if open.send_last(self.pending.unsent())? {
                self.pending.sent(self.pending.len());
                return Ok(());
            }
        }
        self.flush()?;
        self.open_stream()?.send_end()
    }

    /// Gives up on the stream: the receiver fails with `reason`.
    pub fn abort(mut self, reason: &str) {
        self.opening.cancel();
        let Some(open) = self.opening.open_mut() else {
            return;
        };
        match &mut open.path {
            Path::Socket(socket) if !socket.outbound.mid_frame() => {
                let _ = socket
                    .stream
                    .write_all(&control_frame(FrameKind::Abort, reason.as_bytes()));
            }
            Path::Socket(_) => {}
            Path::Ring(ring) => ring.abort(reason),
        }
        let sent = open.path.sent();
        open.end.fail(
            StreamError::Aborted {
                bytes: sent,
                reason: reason.to_owned(),
            },
            sent,
        );
        background().block_on(open.end.reporter.flushed());
    }

    /// The established stream, waiting for the set-up if needed.
    fn open_stream(&mut self) -> io::Result<&mut Open> {
        self.opening.wait_open(background(), Open::new)
    }
}

impl Open {
    fn new(established: Established) -> Result<Self, ClientError> {
        let channel = &established.end.channel;
        let path = match established.data {
            DataPath::Socket(stream) => Path::Socket(SocketOut {
                // Over TCP the sender's core also runs the stack (the
                // receiving side too, on one machine), so it is the one to
                // unload; spliced, both ends do one copy each and the hash
                // is cheapest inline, on data still in cache.
                beside: (established.end.transport == Transport::Tcp).then_some(OnDemand::NotYet),
                stream: into_blocking(stream, channel)?,
                outbound: Outbound::new(established.credit),
                link: established.link,
            }),
            DataPath::Ring(ring) => {
                Path::Ring(ring.writer().map_err(|source| ClientError::Stream {
                    channel: channel.clone(),
                    source,
                })?)
            }
        };
        Ok(Self {
            end: established.end,
            path,
            ended: false,
        })
    }

    /// Sends `last` and the end mark in one write, over a socket where
    /// `last` fits the credit at hand; `false`: nothing went out (send
    /// `last`, then the end, as usual).
    fn send_last(&mut self, last: &[u8]) -> io::Result<bool> {
        self.end.check()?;
        if self.ended {
            return Err(self.written_after_end());
        }
        let Path::Socket(socket) = &mut self.path else {
            return Ok(false);
        };
        match socket.send_last(last) {
            Ok(false) => Ok(false),
            Ok(true) => {
                self.ended = true;
                self.end.reporter.progress(self.path.sent());
                Ok(true)
            }
            Err(err) => {
                self.ended = true;
                Err(self.end.fail(err, self.path.sent()).into())
            }
        }
    }

    /// Sends the end mark (once).
    fn send_end(&mut self) -> io::Result<()> {
        self.end.check()?;
        if self.ended {
            return Ok(());
        }
        let sent = match &mut self.path {
            Path::Socket(socket) => socket.send_end(),
            Path::Ring(ring) => {
                ring.publish_end();
                Ok(())
            }
        };
        self.ended = true;
        sent.map_err(|err| self.end.fail(err, self.path.sent()).into())
    }

    /// Waits for the receiver's verdict on the end mark, and reports it.
    fn await_verdict(&mut self) -> io::Result<()> {
        self.end.check()?;
        let verdict = match &mut self.path {
            Path::Socket(socket) => socket.await_verdict(),
            Path::Ring(ring) => ring.verdict(),
        };
        let sent = self.path.sent();
        match verdict {
            Ok(()) => {
                self.end.reporter.finish_here(sent, None);
                Ok(())
            }
            Err(err) => Err(self.end.fail(err, sent).into()),
        }
    }

    /// Sends at least one byte of `src` (`src` not empty).
    fn send(&mut self, src: &[u8]) -> io::Result<usize> {
        if self.ended {
            return Err(self.written_after_end());
        }
        let sent = match &mut self.path {
            Path::Socket(socket) => socket.send(src),
            Path::Ring(ring) => ring.write(src),
        };
        match sent {
            Ok(n) => {
                self.end.reporter.progress(self.path.sent());
                Ok(n)
            }
            Err(err) => Err(self.end.fail(err, self.path.sent()).into()),
        }
    }

    /// The error of a write after [`Sender::end`].
    fn written_after_end(&self) -> io::Error {
        io::Error::other(format!(
            "channel {}: a write after the end of the stream; write everything before `end`",
            self.end.channel
        ))
    }

    /// Reads `src` to its end straight into the ring (`None` over a
    /// socket): a region reserved, read into, committed.
    fn read_into_ring(&mut self, src: &mut dyn io::Read) -> Option<io::Result<u64>> {
        if self.ended {
            return Some(Err(self.written_after_end()));
        }
        let Path::Ring(ring) = &mut self.path else {
            return None;
        };
        let mut total = 0;
        Some(loop {
            let region = match ring.reserve(RING_REGION) {
                Ok(region) => region,
                Err(err) => {
                    let sent = ring.sent();
                    break Err(self.end.fail(err, sent).into());
                }
            };
            match src.read(region) {
                Ok(0) => break Ok(total),
                Ok(n) => {
                    ring.commit(n);
                    total += n as u64;
                    self.end.reporter.progress(ring.sent());
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
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
            Self::Ring(ring) => ring.sent(),
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
            Self::Ring(ring) => ring.checksum(),
        }
    }
}

impl SocketOut {
    /// Sends `src` and the end mark after it in one write, if `src` fits
    /// one frame of the credit at hand; `false`: nothing went out (send
    /// and end as usual).
    fn send_last(&mut self, src: &[u8]) -> Result<bool, StreamError> {
        let Some(last) = self.outbound.last_frame(src) else {
            return Ok(false);
        };
        let bufs = [
            IoSlice::new(&last.header),
            IoSlice::new(src),
            IoSlice::new(&last.end),
        ];
        let n = loop {
            match self.stream.write_vectored(&bufs) {
                Ok(0) => {
                    let err = io::ErrorKind::WriteZero.into();
                    return Err(write_failure("writing", self.outbound.sent(), &err));
                }
                Ok(n) => break n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(write_failure("writing", self.outbound.sent(), &err)),
            }
        };
        // A short write: the rest of the frame, then the rest of the mark.
        let frame = last.header.len() + src.len();
        let mut sent = self.outbound.wrote_ahead(n.min(frame), src, last.ahead);
        while sent < src.len() {
            sent += self.send(&src[sent..])?;
        }
        self.stream
            .write_all(&last.end[n.saturating_sub(frame)..])
            .map_err(|err| write_failure("sending the end mark", self.outbound.sent(), &err))?;
        Ok(true)
    }

    fn send_end(&mut self) -> Result<(), StreamError> {
        if self.outbound.mid_frame() {
            return Err(StreamError::Protocol(
                "the stream was ended in the middle of a write".into(),
            ));
        }
        let mark = self.outbound.end_frame();
        self.stream
            .write_all(&mark)
            .map_err(|err| write_failure("sending the end mark", self.outbound.sent(), &err))
    }

    fn await_verdict(&mut self) -> Result<(), StreamError> {
        loop {
            match self.outbound.acked() {
                Some(result) => break result?,
                None => self.read_inbox()?,
            }
        }
        // A link may carry the stream's next use: left open.
        if !self.link {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    fn read_inbox(&mut self) -> Result<(), StreamError> {
        let mut chunk = [0u8; 512];
        match read_retrying(&mut self.stream, &mut chunk) {
            Ok(0) => Err(StreamError::ReceiverGone {
                bytes: self.outbound.sent(),
            }),
            Ok(n) => self.outbound.receive(&chunk[..n]),
            Err(err) => Err(write_failure(
                "reading the receiver's credit",
                self.outbound.sent(),
                &err,
            )),
        }
    }

    /// Sends at least one byte of `src` (`src` not empty).
    fn send(&mut self, src: &[u8]) -> Result<usize, StreamError> {
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
            let helper = match &mut self.beside {
                Some(helper) if payload.len() >= HASH_BESIDE_ABOVE => helper.get(),
                _ => None,
            };
            let (result, ahead) = match helper {
                Some(beside) => {
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
                    return Err(write_failure("writing", self.outbound.sent(), &err));
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(write_failure("writing", self.outbound.sent(), &err)),
            };
            let written = match ahead {
                Some(ahead) => self.outbound.wrote_ahead(n, src, ahead),
                None => self.outbound.wrote(n, src),
            };
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
        if let Some(open) = self.opening.open()
            && open.ended
        {
            return Err(open.written_after_end());
        }
        if self.opening.is_pairing() {
            // The receiver is not there yet: buffer up to the window.
            let held = self.pending.hold(buf);
            if held > 0 {
                return Ok(held);
            }
        }
        let open = self.open_stream()?;
        open.end.check()?;
        if let Some(gathering) = open.gathering()
            && let Some(full) = self.pending.gathers(buf.len(), gathering)
        {
            if full {
                self.flush()?;
            }
            self.pending.gather(buf);
            return Ok(buf.len());
        }
        self.flush()?;
        self.open_stream()?.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.len() > 0 {
            self.pending.nudge(Nudge::Waiting);
        }
        while self.pending.len() > 0 {
            let open = self.opening.wait_open(background(), Open::new)?;
            let n = open.send(self.pending.unsent())?;
            self.pending.sent(n);
        }
        Ok(())
    }
}
