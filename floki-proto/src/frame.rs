//! The data stream between a sender and its receiver.
//!
//! Every frame starts with an 8-byte header: kind (u8), flags (u8, 0 but
//! for an eager `Hello`), reserved (u16, 0), payload length (u32
//! big-endian). The receiver speaks first (a `Credit`), so that both
//! sockets are already spliced before the sender writes a byte; the sender
//! answers with `Hello` (the pairing key), then `Data` frames, then `End`.
//! A sender its agent allows to (`paired` says `eager`) sends an eager
//! `Hello` instead, before that credit: the kernel program delivers it only
//! spliced, and returns it to the sender while the receiver's socket is not
//! spliced yet (see [`HELLO_EAGER`]). The receiver grants more `Credit` as it consumes, and
//! confirms a verified stream with `Ack`.

use super::{KEY_LEN, ProtocolError};

/// Size of a frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload of a `Data` frame.
pub const MAX_DATA_LEN: u32 = 4 << 20;
/// Largest payload of any other frame.
pub const MAX_CONTROL_LEN: u32 = 4096;
/// Payload length of `End` and `Ack`: total (u64) and checksum (u64).
pub const SEAL_LEN: usize = 16;

/// Flags of a `Hello` header (byte 1) that make it eager: the sender wrote
/// it right after connecting, before the receiver's first credit, and the
/// kernel program (`floki_sk_msg`) delivers it only into a receiver's
/// socket that is spliced already: while that socket is not in the socket
/// map it puts the hello back into the sender's own receive queue, where
/// the sender finds it at once and waits for the credit as without the
/// flag. So no byte of a spliced stream ever travels over TCP ahead of
/// spliced ones, and the sender spares the credit's round trip.
pub const HELLO_EAGER: u8 = 0x01;

/// Kinds of frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Sender -> receiver, first: the pairing key (16 bytes).
    Hello = 0x01,
    /// Sender -> receiver: stream bytes.
    Data = 0x02,
    /// Sender -> receiver: end mark, total bytes and xxh3-64 of the stream.
    End = 0x03,
    /// Sender -> receiver: the sender gives up; UTF-8 reason.
    Abort = 0x04,
    /// Receiver -> sender: the sender may have sent `Data` frames (header
    /// included) up to this many bytes in total (u64).
    Credit = 0x11,
    /// Receiver -> sender: stream verified; echoes total and checksum.
    Ack = 0x12,
    /// Receiver -> sender: refused (wrong key, failed check, no room to
    /// store it); UTF-8 reason.
    Reject = 0x13,
    /// Receiver -> sender, just before its `Ack`: the receiver is an agent's
    /// store, so the stream was stored for its consumer, not delivered.
    Stored = 0x14,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::Hello,
            0x02 => Self::Data,
            0x03 => Self::End,
            0x04 => Self::Abort,
            0x11 => Self::Credit,
            0x12 => Self::Ack,
            0x13 => Self::Reject,
            0x14 => Self::Stored,
            _ => return None,
        })
    }

    fn max_len(self) -> u32 {
        match self {
            Self::Data => MAX_DATA_LEN,
            Self::Hello => KEY_LEN as u32,
            Self::End | Self::Ack => SEAL_LEN as u32,
            Self::Credit => 8,
            Self::Stored => 0,
            Self::Abort | Self::Reject => MAX_CONTROL_LEN,
        }
    }

    fn fixed_len(self) -> Option<u32> {
        match self {
            Self::Hello => Some(KEY_LEN as u32),
            Self::End | Self::Ack => Some(SEAL_LEN as u32),
            Self::Credit => Some(8),
            Self::Stored => Some(0),
            Self::Data | Self::Abort | Self::Reject => None,
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame is.
    pub kind: FrameKind,
    /// Payload length.
    pub len: u32,
}

impl FrameHeader {
    /// A header for `kind` with a payload of `len` bytes.
    pub const fn new(kind: FrameKind, len: u32) -> Self {
        Self { kind, len }
    }

    /// The 8 bytes on the wire.
    pub fn encode(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.kind as u8;
        out[4..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Parses and validates 8 bytes from the wire.
    pub fn decode(bytes: [u8; HEADER_LEN]) -> Result<Self, ProtocolError> {
        let kind = FrameKind::from_byte(bytes[0]).ok_or_else(|| {
            ProtocolError::BadFrame(format!("unknown frame kind {:#04x}", bytes[0]))
        })?;
        let flags_allowed = if kind == FrameKind::Hello {
            HELLO_EAGER
        } else {
            0
        };
        if bytes[1] & !flags_allowed != 0 || bytes[2..4] != [0, 0] {
            return Err(ProtocolError::BadFrame(format!(
                "non-zero flags or reserved bytes in a {kind:?} header"
            )));
        }
        let len = u32::from_be_bytes(bytes[4..].try_into().expect("4 bytes"));
        if len > kind.max_len() || kind.fixed_len().is_some_and(|fixed| fixed != len) {
            return Err(ProtocolError::BadFrame(format!(
                "{kind:?} frame with a {len}-byte payload"
            )));
        }
        Ok(Self { kind, len })
    }
}

/// Encodes a complete control frame (anything but `Data`).
pub fn control_frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().min(kind.max_len() as usize);
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&FrameHeader::new(kind, len as u32).encode());
    out.extend_from_slice(&payload[..len]);
    out
}

/// An eager `Hello` with `key` (see [`HELLO_EAGER`]).
pub fn eager_hello(key: &[u8; KEY_LEN]) -> Vec<u8> {
    let mut out = control_frame(FrameKind::Hello, key);
    out[1] = HELLO_EAGER;
    out
}

/// Payload of `End` and `Ack`.
pub fn seal(total: u64, checksum: u64) -> [u8; SEAL_LEN] {
    let mut out = [0u8; SEAL_LEN];
    out[..8].copy_from_slice(&total.to_be_bytes());
    out[8..].copy_from_slice(&checksum.to_be_bytes());
    out
}

/// Parses the payload of `End` and `Ack`.
pub fn unseal(payload: &[u8]) -> Option<(u64, u64)> {
    let total = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let checksum = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((total, checksum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for (kind, len) in [
            (FrameKind::Data, 0),
            (FrameKind::Data, MAX_DATA_LEN),
            (FrameKind::Hello, 16),
            (FrameKind::End, 16),
            (FrameKind::Credit, 8),
            (FrameKind::Reject, 12),
        ] {
            let h = FrameHeader::new(kind, len);
            assert_eq!(FrameHeader::decode(h.encode()).unwrap(), h);
        }
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(FrameHeader::decode([0x7f, 0, 0, 0, 0, 0, 0, 1]).is_err());
        assert!(FrameHeader::decode([0x02, 1, 0, 0, 0, 0, 0, 1]).is_err());
        let too_big = FrameHeader::new(FrameKind::Data, MAX_DATA_LEN + 1).encode();
        assert!(FrameHeader::decode(too_big).is_err());
        let short_end = FrameHeader::new(FrameKind::End, 8).encode();
        assert!(FrameHeader::decode(short_end).is_err());
    }

    #[test]
    fn only_a_hello_may_be_eager() {
        let eager = eager_hello(&[7; KEY_LEN]);
        let header = FrameHeader::decode(eager[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(header, FrameHeader::new(FrameKind::Hello, KEY_LEN as u32));
        assert_eq!(&eager[HEADER_LEN..], &[7; KEY_LEN]);
        let mut credit = FrameHeader::new(FrameKind::Credit, 8).encode();
        credit[1] = HELLO_EAGER;
        assert!(FrameHeader::decode(credit).is_err());
        let mut unknown = FrameHeader::new(FrameKind::Hello, KEY_LEN as u32).encode();
        unknown[1] = 0x02;
        assert!(FrameHeader::decode(unknown).is_err());
    }

    #[test]
    fn seals_round_trip() {
        assert_eq!(unseal(&seal(7, u64::MAX)), Some((7, u64::MAX)));
        assert_eq!(unseal(&[0; 3]), None);
    }
}
