//! The data stream's state, without I/O: framing, credits, the running
//! checksum and the end mark, for each direction of a channel. The async and
//! blocking clients are thin loops that move bytes between sockets and these.

use std::{hash::Hasher as _, io};

use twox_hash::XxHash3_64;

use super::frame::{
    FrameHeader, FrameKind, HEADER_LEN, MAX_CONTROL_LEN, MAX_DATA_LEN, control_frame, seal, unseal,
};

/// Why a stream failed. Carried inside `io::Error` by the clients' `Read` /
/// `Write` implementations (`io::Error::get_ref` gives it back).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The connection ended before the end mark.
    #[error(
        "stream truncated: the sender's connection ended after {bytes} bytes without the end mark (sender killed or connection reset)"
    )]
    Truncated {
        /// Bytes received before the end.
        bytes: u64,
    },
    /// The end mark does not match what arrived.
    #[error(
        "stream corrupted: the end mark announces {expected_bytes} bytes with xxh3 {expected_checksum:016x}, but {bytes} bytes with xxh3 {checksum:016x} arrived"
    )]
    Corrupted {
        /// Bytes received.
        bytes: u64,
        /// Checksum of what was received.
        checksum: u64,
        /// Bytes the sender sent.
        expected_bytes: u64,
        /// Checksum the sender computed.
        expected_checksum: u64,
    },
    /// The sender aborted.
    #[error("the sender aborted the stream after {bytes} bytes: {reason}")]
    Aborted {
        /// Bytes received before the abort.
        bytes: u64,
        /// The sender's reason.
        reason: String,
    },
    /// The receiver went away before confirming the end.
    #[error(
        "the receiver closed the channel after {bytes} bytes were sent, without confirming the end (receiver gone or failed)"
    )]
    ReceiverGone {
        /// Bytes sent.
        bytes: u64,
    },
    /// The receiver refused the stream.
    #[error("the receiver rejected the stream: {reason}")]
    Rejected {
        /// The receiver's reason.
        reason: String,
    },
    /// The peer broke the frame protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The socket failed.
    #[error("{context} after {bytes} bytes: {message}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// Bytes moved before the failure.
        bytes: u64,
        /// The I/O error kind.
        kind: io::ErrorKind,
        /// The I/O error text.
        message: String,
    },
    /// The stream could not be set up (no receiver within the timeout, the
    /// agent refused it or went away).
    #[error("the stream could not be set up: {reason}")]
    NotPaired {
        /// Why.
        reason: String,
    },
    /// The stream was already finished or failed.
    #[error("the stream is closed")]
    Closed,
}

/// `EACCES` on Linux (no libc in this crate).
const EACCES: i32 = 13;

impl StreamError {
    /// An I/O failure while `context`, after `bytes`.
    pub fn io(context: &'static str, bytes: u64, err: &io::Error) -> Self {
        // On a spliced socket, EACCES is the kernel program refusing bytes
        // past the window the receiver granted.
        let message = if err.raw_os_error() == Some(EACCES) {
            format!(
                "{err}: the kernel refused bytes past the window the receiver granted (the sender ignored flow control)"
            )
        } else {
            err.to_string()
        };
        Self::Io {
            context,
            bytes,
            kind: err.kind(),
            message,
        }
    }

    fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            Self::Corrupted { .. } | Self::Protocol(_) => io::ErrorKind::InvalidData,
            Self::Aborted { .. } => io::ErrorKind::ConnectionAborted,
            Self::ReceiverGone { .. } | Self::Closed => io::ErrorKind::BrokenPipe,
            Self::NotPaired { .. } => io::ErrorKind::NotConnected,
            Self::Rejected { .. } => io::ErrorKind::ConnectionRefused,
            Self::Io { kind, .. } => *kind,
        }
    }

    /// The `StreamError` inside an `io::Error` made from one, if any.
    pub fn from_io(err: &io::Error) -> Option<&Self> {
        err.get_ref().and_then(|inner| inner.downcast_ref::<Self>())
    }
}

impl From<StreamError> for io::Error {
    fn from(err: StreamError) -> Self {
        io::Error::new(err.kind(), err)
    }
}

/// The next write a sender owes: `header` bytes still due, then up to
/// `payload` stream bytes (write them with one vectored write).
#[derive(Debug)]
pub struct NextWrite<'a> {
    /// Frame header bytes not written yet (empty within a frame).
    pub header: &'a [u8],
    /// How many stream bytes may follow.
    pub payload: usize,
}

/// A checksum state computed ahead of a write ([`Outbound::ahead`]).
pub struct HashedAhead {
    hasher: XxHash3_64,
    len: usize,
}

impl HashedAhead {
    /// Advances the state over `payload`, the next bytes to go out.
    pub fn hash(&mut self, payload: &[u8]) {
        self.hasher.write(payload);
        self.len += payload.len();
    }

    /// The checksum of everything hashed so far.
    pub fn checksum(&self) -> u64 {
        self.hasher.finish()
    }
}

/// A stream's last frame and its end mark ([`Outbound::last_frame`]).
pub struct LastFrame {
    /// The frame's header.
    pub header: [u8; HEADER_LEN],
    /// The end mark, sealing the stream with the frame's payload.
    pub end: Vec<u8>,
    /// The checksum state over the payload, for [`Outbound::wrote_ahead`].
    pub ahead: HashedAhead,
}

/// The sender's side of a stream.
pub struct Outbound {
    limit: u64,
    wire: u64,
    sent: u64,
    hasher: XxHash3_64,
    header: [u8; HEADER_LEN],
    header_pos: usize,
    frame_left: usize,
    inbox: Vec<u8>,
    ack: Option<(u64, u64)>,
    stored: bool,
}

impl Outbound {
    /// A stream whose receiver granted `credit` bytes.
    pub fn new(credit: u64) -> Self {
        Self {
            limit: credit,
            wire: 0,
            sent: 0,
            hasher: XxHash3_64::new(),
            header: [0; HEADER_LEN],
            header_pos: HEADER_LEN,
            frame_left: 0,
            inbox: Vec::with_capacity(HEADER_LEN + MAX_CONTROL_LEN as usize),
            ack: None,
            stored: false,
        }
    }

    /// What to write next for `avail` (> 0) stream bytes at hand, opening a
    /// frame if none is in progress. `None`: the receiver's credit is used
    /// up; read what it sent and pass it to [`Outbound::receive`].
    pub fn next_write(&mut self, avail: usize) -> Option<NextWrite<'_>> {
        if !self.mid_frame() {
            let room = self.limit.saturating_sub(self.wire);
            if room <= HEADER_LEN as u64 {
                return None;
            }
            let len = (avail as u64)
                .min(room - HEADER_LEN as u64)
                .min(u64::from(MAX_DATA_LEN)) as usize;
            self.header = FrameHeader::new(FrameKind::Data, len as u32).encode();
            self.header_pos = 0;
            self.frame_left = len;
            self.wire += (HEADER_LEN + len) as u64;
        }
        Some(NextWrite {
            header: &self.header[self.header_pos..],
            payload: avail.min(self.frame_left),
        })
    }

    /// Records that `n` bytes of the last [`NextWrite`] went out (the header
    /// first, then the start of `payload`); returns how many were stream bytes.
    pub fn wrote(&mut self, n: usize, payload: &[u8]) -> usize {
        let from_header = n.min(HEADER_LEN - self.header_pos);
        self.header_pos += from_header;
        let stream = n - from_header;
        self.frame_left -= stream;
        self.hasher.write(&payload[..stream]);
        self.sent += stream as u64;
        stream
    }

    /// The checksum state so far, to be advanced over the next payload on
    /// another thread while the write is in flight ([`HashedAhead::hash`]),
    /// then handed to [`Outbound::wrote_ahead`].
    pub fn ahead(&self) -> HashedAhead {
        HashedAhead {
            hasher: self.hasher.clone(),
            len: 0,
        }
    }

    /// [`Outbound::wrote`], with the checksum computed ahead for the whole
    /// payload: taken if the whole payload went out, recomputed otherwise.
    pub fn wrote_ahead(&mut self, n: usize, payload: &[u8], ahead: HashedAhead) -> usize {
        let from_header = n.min(HEADER_LEN - self.header_pos);
        if n - from_header != ahead.len {
            return self.wrote(n, payload);
        }
        self.header_pos += from_header;
        self.frame_left -= ahead.len;
        self.hasher = ahead.hasher;
        self.sent += ahead.len as u64;
        ahead.len
    }

    /// Whether a frame is partly written (its rest must come next).
    pub fn mid_frame(&self) -> bool {
        self.header_pos < HEADER_LEN || self.frame_left > 0
    }

    /// Handles bytes from the receiver: credits, its ack, a rejection.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.inbox.extend_from_slice(bytes);
        while self.inbox.len() >= HEADER_LEN {
            let header = FrameHeader::decode(self.inbox[..HEADER_LEN].try_into().expect("8 bytes"))
                .map_err(|err| StreamError::Protocol(err.to_string()))?;
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
                FrameKind::Stored => self.stored = true,
                FrameKind::Reject => {
                    return Err(StreamError::Rejected {
                        reason: String::from_utf8_lossy(payload).into_owned(),
                    });
                }
                other => {
                    return Err(StreamError::Protocol(format!(
                        "unexpected {other:?} frame from the receiver"
                    )));
                }
            }
            self.inbox.drain(..end);
        }
        Ok(())
    }

    /// `payload` as the stream's last frame, with the end mark after it,
    /// to go out in one write: one segment less, and a receiver that finds
    /// the end with the data. `None` (write as usual) if a frame is partly
    /// written, or `payload` is empty or does not fit one frame of the
    /// credit at hand. Opens the frame: account for the write with
    /// [`Outbound::wrote_ahead`] and [`LastFrame::ahead`].
    pub fn last_frame(&mut self, payload: &[u8]) -> Option<LastFrame> {
        let wire = (HEADER_LEN + payload.len()) as u64;
        let fits = !self.mid_frame()
            && payload.len() <= MAX_DATA_LEN as usize
            && self.limit.saturating_sub(self.wire) >= wire;
        if !fits || payload.is_empty() {
            return None;
        }
        let next = self.next_write(payload.len()).expect("credit checked");
        debug_assert_eq!(next.payload, payload.len());
        let mut ahead = self.ahead();
        ahead.hash(payload);
        let total = self.sent + payload.len() as u64;
        Some(LastFrame {
            header: self.header,
            end: control_frame(FrameKind::End, &seal(total, ahead.checksum())),
            ahead,
        })
    }

    /// The end mark for what was sent so far.
    pub fn end_frame(&self) -> Vec<u8> {
        control_frame(FrameKind::End, &seal(self.sent, self.hasher.finish()))
    }

    /// The receiver's verdict on the end mark: `None` until its ack arrived.
    pub fn acked(&self) -> Option<Result<(), StreamError>> {
        let ack = self.ack?;
        let expected = (self.sent, self.hasher.finish());
        Some(if ack == expected {
            Ok(())
        } else {
            Err(StreamError::Protocol(format!(
                "the receiver acknowledged {ack:?} instead of {expected:?} (bytes, checksum)"
            )))
        })
    }

    /// Whether the receiver's ack came and nothing after it: the
    /// connection is silent, ready to carry another stream.
    pub fn settled(&self) -> bool {
        self.ack.is_some() && self.inbox.is_empty()
    }

    /// Stream bytes sent.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Whether the receiver said it is an agent's store (a `Stored` frame).
    pub fn stored(&self) -> bool {
        self.stored
    }

    /// XXH3-64 of the stream bytes sent.
    pub fn checksum(&self) -> u64 {
        self.hasher.finish()
    }
}

/// What a receiver should read next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Framing (a header, a control payload): read into a staging buffer and
    /// pass it to [`Inbound::frame_bytes`].
    Framing,
    /// Up to this many stream bytes, straight into the caller's buffer, then
    /// [`Inbound::payload`].
    Payload(usize),
    /// The stream is complete and verified (once `outgoing` is written).
    Finished,
}

#[derive(Debug)]
enum InState {
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
    Finished,
}

/// The receiver's side of a stream.
pub struct Inbound {
    window: u64,
    granted: u64,
    consumed: u64,
    received: u64,
    hasher: XxHash3_64,
    state: InState,
    out: Vec<u8>,
    /// Held acks wait for [`Inbound::release_ack`].
    hold: bool,
    held: Option<Vec<u8>>,
}

impl Inbound {
    /// A stream with a flow-control window of `window` bytes, whose initial
    /// credit ([`Inbound::initial_credit`]) has been sent.
    pub fn new(window: u64) -> Self {
        Self {
            window,
            granted: window,
            consumed: 0,
            received: 0,
            hasher: XxHash3_64::new(),
            state: InState::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            },
            out: Vec::new(),
            hold: false,
            held: None,
        }
    }

    /// Holds the ack of a verified end mark until [`Inbound::release_ack`]:
    /// an agent's store acknowledges a stream only once it has kept it.
    pub fn hold_ack(&mut self) {
        self.hold = true;
    }

    /// Sends the held ack, if there is one.
    pub fn release_ack(&mut self) {
        if let Some(ack) = self.held.take() {
            self.out.extend_from_slice(&ack);
        }
    }

    /// The receiver's first frame: credit for `window` bytes.
    pub fn initial_credit(window: u64) -> Vec<u8> {
        control_frame(FrameKind::Credit, &window.to_be_bytes())
    }

    /// What to read next.
    pub fn want(&self) -> Want {
        match self.state {
            InState::Header { .. } | InState::Control { .. } => Want::Framing,
            InState::Payload { left } => Want::Payload(left),
            InState::Finished => Want::Finished,
        }
    }

    /// Consumes framing from the front of `input` (headers, control
    /// payloads), up to the next stream bytes; returns how many bytes it took.
    /// After an error the stream is over: it takes nothing more.
    pub fn frame_bytes(&mut self, input: &[u8]) -> Result<usize, StreamError> {
        let taken = self.take_framing(input);
        if taken.is_err() {
            self.state = InState::Finished;
        }
        taken
    }

    fn take_framing(&mut self, input: &[u8]) -> Result<usize, StreamError> {
        let mut taken = 0;
        loop {
            let rest = &input[taken..];
            match &mut self.state {
                InState::Header { buf, have } => {
                    let n = rest.len().min(HEADER_LEN - *have);
                    buf[*have..*have + n].copy_from_slice(&rest[..n]);
                    *have += n;
                    taken += n;
                    if *have < HEADER_LEN {
                        return Ok(taken);
                    }
                    let header = FrameHeader::decode(*buf)
                        .map_err(|err| StreamError::Protocol(err.to_string()))?;
                    self.on_header(header)?;
                }
                InState::Control { buf, need, .. } => {
                    let n = rest.len().min(*need - buf.len());
                    buf.extend_from_slice(&rest[..n]);
                    taken += n;
                    if buf.len() < *need {
                        return Ok(taken);
                    }
                    self.on_control()?;
                }
                InState::Payload { .. } | InState::Finished => return Ok(taken),
            }
        }
    }

    fn on_header(&mut self, header: FrameHeader) -> Result<(), StreamError> {
        self.state = match header.kind {
            FrameKind::Data => {
                // The credit says how far the sender may write, headers
                // included: a sender past it ignores flow control, and its
                // bytes are what a window exists to bound.
                let end = self.consumed + HEADER_LEN as u64 + u64::from(header.len);
                if end > self.granted {
                    let reason = format!(
                        "the sender wrote past the window it was granted ({} bytes, up to {end}): it ignores flow control",
                        self.granted
                    );
                    self.reject(&reason);
                    return Err(StreamError::Protocol(reason));
                }
                self.consumed += HEADER_LEN as u64;
                if header.len == 0 {
                    InState::Header {
                        buf: [0; HEADER_LEN],
                        have: 0,
                    }
                } else {
                    InState::Payload {
                        left: header.len as usize,
                    }
                }
            }
            FrameKind::End | FrameKind::Abort => InState::Control {
                kind: header.kind,
                buf: Vec::with_capacity(header.len as usize),
                need: header.len as usize,
            },
            other => {
                return Err(StreamError::Protocol(format!(
                    "unexpected {other:?} frame from the sender"
                )));
            }
        };
        Ok(())
    }

    fn on_control(&mut self) -> Result<(), StreamError> {
        let InState::Control { kind, buf, .. } =
            std::mem::replace(&mut self.state, InState::Finished)
        else {
            unreachable!("called in the control state");
        };
        if kind == FrameKind::Abort {
            return Err(StreamError::Aborted {
                bytes: self.received,
                reason: String::from_utf8_lossy(&buf).into_owned(),
            });
        }
        let (total, checksum) = unseal(&buf).unwrap_or_default();
        let actual = self.hasher.finish();
        if (total, checksum) != (self.received, actual) {
            let err = StreamError::Corrupted {
                bytes: self.received,
                checksum: actual,
                expected_bytes: total,
                expected_checksum: checksum,
            };
            self.out.extend_from_slice(&control_frame(
                FrameKind::Reject,
                err.to_string().as_bytes(),
            ));
            return Err(err);
        }
        let ack = control_frame(FrameKind::Ack, &seal(total, checksum));
        if self.hold {
            self.held = Some(ack);
        } else {
            self.out.extend_from_slice(&ack);
        }
        Ok(())
    }

    /// Accounts stream bytes handed to the application, in order. Grants more
    /// credit once a quarter of the window has been consumed.
    pub fn payload(&mut self, data: &[u8]) {
        let InState::Payload { left } = &mut self.state else {
            unreachable!("payload outside a data frame");
        };
        *left -= data.len();
        if *left == 0 {
            self.state = InState::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            };
        }
        self.hasher.write(data);
        self.received += data.len() as u64;
        self.consumed += data.len() as u64;
        let limit = self.consumed + self.window;
        if limit - self.granted >= self.window / 4 {
            self.granted = limit;
            self.out
                .extend_from_slice(&control_frame(FrameKind::Credit, &limit.to_be_bytes()));
        }
    }

    /// The connection ended: an error unless the stream is finished.
    pub fn eof(&self) -> StreamError {
        StreamError::Truncated {
            bytes: self.received,
        }
    }

    /// Says, ahead of the ack, that this receiver is an agent's store.
    pub fn mark_stored(&mut self) {
        self.out
            .extend_from_slice(&control_frame(FrameKind::Stored, &[]));
    }

    /// Refuses the stream with `reason`: the sender fails with it. Nothing
    /// more is read.
    pub fn reject(&mut self, reason: &str) {
        self.out
            .extend_from_slice(&control_frame(FrameKind::Reject, reason.as_bytes()));
        self.state = InState::Finished;
    }

    /// Frames owed to the sender (credits, the ack, a rejection).
    pub fn outgoing(&self) -> &[u8] {
        &self.out
    }

    /// Records that `n` bytes of [`Inbound::outgoing`] were written.
    pub fn wrote_out(&mut self, n: usize) {
        self.out.drain(..n);
    }

    /// Stream bytes received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// XXH3-64 of the stream bytes received.
    pub fn checksum(&self) -> u64 {
        self.hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a sender's stream into a receiver through a byte pipe, handing
    /// the receiver `chunk` bytes at a time.
    fn transfer(data: &[u8], window: u64, chunk: usize) -> (Vec<u8>, Result<(), StreamError>) {
        let mut inbound = Inbound::new(window);
        let mut outbound = Outbound::new(window);
        let mut wire = Vec::new();
        let mut received = Vec::new();
        let mut pos = 0;
        let mut ended = false;
        loop {
            // Receiver -> sender.
            let out = inbound.outgoing().to_vec();
            inbound.wrote_out(out.len());
            if let Err(err) = outbound.receive(&out) {
                return (received, Err(err));
            }
            if let Some(verdict) = outbound.acked() {
                return (received, verdict);
            }
            // Sender -> wire.
            while pos < data.len() {
                let Some(next) = outbound.next_write(data.len() - pos) else {
                    break;
                };
                let (header, payload) = (next.header.to_vec(), next.payload);
                wire.extend_from_slice(&header);
                wire.extend_from_slice(&data[pos..pos + payload]);
                pos += outbound.wrote(header.len() + payload, &data[pos..]);
            }
            if pos == data.len() && !ended {
                wire.extend_from_slice(&outbound.end_frame());
                ended = true;
            }
            // Wire -> receiver, `chunk` at a time.
            let mut input = &wire[..];
            while !input.is_empty() {
                let step = match inbound.want() {
                    Want::Framing => inbound.frame_bytes(&input[..input.len().min(chunk)]),
                    Want::Payload(left) => {
                        let n = left.min(chunk).min(input.len());
                        received.extend_from_slice(&input[..n]);
                        inbound.payload(&input[..n]);
                        Ok(n)
                    }
                    Want::Finished => break,
                };
                match step {
                    Ok(n) => input = &input[n..],
                    Err(err) => return (received, Err(err)),
                }
            }
            wire.clear();
        }
    }

    #[test]
    fn streams_arrive_whole_whatever_the_window_and_chunking() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for window in [64 << 10, 1 << 20] {
            for chunk in [1, 7, 4096, 1 << 20] {
                let (received, verdict) = transfer(&data, window, chunk);
                assert_eq!(verdict, Ok(()), "window {window}, chunk {chunk}");
                assert_eq!(received, data);
            }
        }
        let (received, verdict) = transfer(&[], 64 << 10, 3);
        assert_eq!((received.len(), verdict), (0, Ok(())));
    }

    #[test]
    fn a_sender_past_its_credit_is_refused_with_the_reason() {
        let mut inbound = Inbound::new(64 << 10);
        // Within the window: fine.
        let header = FrameHeader::new(FrameKind::Data, 32 << 10).encode();
        assert_eq!(inbound.frame_bytes(&header), Ok(HEADER_LEN));
        inbound.payload(&[7; 32 << 10]);
        // A frame that would end past the credit, as from a sender that
        // ignores flow control.
        let header = FrameHeader::new(FrameKind::Data, 64 << 10).encode();
        let err = inbound.frame_bytes(&header).unwrap_err();
        assert!(err.to_string().contains("past the window"), "{err}");
        // After the credit for what was read, the sender hears why.
        let out = inbound.outgoing();
        assert_eq!(out[0], FrameKind::Credit as u8);
        assert_eq!(out[HEADER_LEN + 8], FrameKind::Reject as u8);
        assert_eq!(inbound.want(), Want::Finished);
    }

    #[test]
    fn a_checksum_computed_ahead_equals_the_one_computed_after() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let (mut plain, mut ahead) = (Outbound::new(1 << 20), Outbound::new(1 << 20));
        let mut pos = 0;
        for (i, step) in [50_000, 1, 80_000, 69_999].into_iter().enumerate() {
            let next = plain.next_write(step).expect("credit");
            let n = next.header.len() + next.payload;
            plain.wrote(n, &data[pos..pos + step]);
            let next = ahead.next_write(step).expect("credit");
            let n = next.header.len() + next.payload;
            let mut hashed = ahead.ahead();
            hashed.hash(&data[pos..pos + step]);
            // Every other write goes out short: the ahead state is dropped.
            let n = if i % 2 == 1 { n } else { n - 10 };
            let moved = ahead.wrote_ahead(n, &data[pos..pos + step], hashed);
            if moved < step {
                let rest = step - moved;
                let next = ahead.next_write(rest).expect("mid frame");
                assert_eq!(next.header.len(), 0);
                ahead.wrote(rest, &data[pos + moved..pos + step]);
            }
            pos += step;
        }
        assert_eq!(plain.checksum(), ahead.checksum());
        assert_eq!(plain.sent(), ahead.sent());
    }

    #[test]
    fn a_last_frame_and_its_end_mark_close_the_stream_even_written_short() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 13 % 249) as u8).collect();
        // Past the credit, or nothing to send: written as usual.
        assert!(Outbound::new(512).last_frame(&data).is_none());
        assert!(Outbound::new(1 << 20).last_frame(&[]).is_none());
        let (first, rest) = data.split_at(100);
        for short in [None, Some(3), Some(HEADER_LEN + 10)] {
            let mut outbound = Outbound::new(64 << 10);
            let mut wire = Vec::new();
            let next = outbound.next_write(first.len()).expect("credit");
            wire.extend_from_slice(next.header);
            outbound.wrote(HEADER_LEN + first.len(), first);
            wire.extend_from_slice(first);
            let last = outbound.last_frame(rest).expect("fits the credit");
            let end = last.end.clone();
            wire.extend_from_slice(&last.header);
            wire.extend_from_slice(rest);
            wire.extend_from_slice(&end);
            // The write took `n` bytes; the rest of the frame goes as usual.
            let frame = HEADER_LEN + rest.len();
            let n = short.unwrap_or(frame + end.len());
            let mut sent = outbound.wrote_ahead(n.min(frame), rest, last.ahead);
            while sent < rest.len() {
                // The header's rest first, if it was cut; no new frame.
                let next = outbound.next_write(rest.len() - sent).expect("mid frame");
                assert!(next.header.len() < HEADER_LEN, "{short:?}");
                let n = next.header.len() + next.payload;
                sent += outbound.wrote(n, &rest[sent..]);
            }
            assert_eq!(end, outbound.end_frame(), "{short:?}");
            // The receiver takes it for the whole stream.
            let mut inbound = Inbound::new(64 << 10);
            let mut input = &wire[..];
            let mut received = Vec::new();
            loop {
                let n = match inbound.want() {
                    Want::Framing => inbound.frame_bytes(input).expect("a sound frame"),
                    Want::Payload(left) => {
                        let n = left.min(input.len());
                        received.extend_from_slice(&input[..n]);
                        inbound.payload(&input[..n]);
                        n
                    }
                    Want::Finished => break,
                };
                input = &input[n..];
            }
            assert_eq!(received, data, "{short:?}");
            assert!(input.is_empty(), "{short:?}");
        }
    }

    #[test]
    fn the_sender_stays_within_the_credit() {
        let mut outbound = Outbound::new(64 << 10);
        let mut framed = 0;
        while let Some(next) = outbound.next_write(1 << 20) {
            let n = next.header.len() + next.payload;
            framed += n;
            outbound.wrote(n, &vec![0; 1 << 20]);
        }
        assert_eq!(framed, 64 << 10);
        outbound
            .receive(&control_frame(
                FrameKind::Credit,
                &(128u64 << 10).to_be_bytes(),
            ))
            .unwrap();
        assert!(outbound.next_write(1).is_some());
    }

    #[test]
    fn a_stream_without_its_end_mark_is_truncated() {
        let mut inbound = Inbound::new(1 << 20);
        let mut frame = FrameHeader::new(FrameKind::Data, 3).encode().to_vec();
        frame.extend_from_slice(b"abc");
        let n = inbound.frame_bytes(&frame).unwrap();
        inbound.payload(&frame[n..]);
        assert_eq!(inbound.want(), Want::Framing);
        assert_eq!(inbound.eof(), StreamError::Truncated { bytes: 3 });
    }

    #[test]
    fn a_wrong_end_mark_is_rejected() {
        let mut inbound = Inbound::new(1 << 20);
        let mut frame = FrameHeader::new(FrameKind::Data, 3).encode().to_vec();
        frame.extend_from_slice(b"abc");
        let n = inbound.frame_bytes(&frame).unwrap();
        inbound.payload(&frame[n..]);
        let end = control_frame(FrameKind::End, &seal(3, 12345));
        let err = inbound.frame_bytes(&end).unwrap_err();
        assert!(
            matches!(err, StreamError::Corrupted { bytes: 3, .. }),
            "{err}"
        );
        assert_eq!(inbound.outgoing()[0], FrameKind::Reject as u8);
    }

    #[test]
    fn an_abort_carries_its_reason() {
        let mut inbound = Inbound::new(1 << 20);
        let err = inbound
            .frame_bytes(&control_frame(FrameKind::Abort, b"disk full"))
            .unwrap_err();
        assert_eq!(
            err,
            StreamError::Aborted {
                bytes: 0,
                reason: "disk full".into()
            }
        );
    }
}
