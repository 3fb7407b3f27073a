//! The start of a stream on the agents' link across nodes: the bytes that
//! tell the consumer's side that a producer is there, and whether its
//! stream may be stored. The producer's agent writes them, or the producer
//! itself on a link it holds; the consumer's agent reads them, or the
//! consumer itself on a link it holds (docs/PROTOCOL.md, "Held links").

/// Byte that starts a prepared stream connection: the consumer's agent may
/// store the stream if the consumer is not there.
pub const START: u8 = 0x5a;
/// Byte that starts a prepared stream connection whose producer waits for
/// its consumer (`--live`): never stored.
pub const START_LIVE: u8 = 0x5b;
/// Byte that starts a prepared stream connection as [`START`] does, for a
/// producer that said its run: one length byte and the run follow, and a
/// stream the consumer's agent stores keeps it.
pub const START_RUN: u8 = 0x5c;

/// What a link's first byte says of the start it begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstByte {
    /// [`START_LIVE`]: the whole start, of a live producer.
    Live,
    /// [`START`]: the whole start.
    Plain,
    /// [`START_RUN`]: one length byte and the run follow.
    RunFollows,
}

impl FirstByte {
    /// The start `byte` begins; `None` if it begins none (the link is
    /// closed).
    pub fn of(byte: u8) -> Option<Self> {
        match byte {
            START_LIVE => Some(Self::Live),
            START => Some(Self::Plain),
            START_RUN => Some(Self::RunFollows),
            _ => None,
        }
    }
}

/// How a producer's agent starts a prepared stream connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStart {
    /// The producer waits for its consumer: never stored.
    pub live: bool,
    /// The producer's run (1 to 255 bytes), kept with a stored stream.
    pub run: Option<String>,
}

impl LinkStart {
    /// The start of the stream of a producer that said `hello`.
    pub fn of(hello: &crate::control::Hello) -> Self {
        Self {
            live: hello.live,
            run: hello.run.clone(),
        }
    }

    /// Its bytes on the link. A live stream is never stored, so its run
    /// does not go.
    pub fn bytes(&self) -> Vec<u8> {
        let run = self
            .run
            .as_deref()
            .filter(|run| crate::control::valid_run(run));
        match (self.live, run) {
            (true, _) => vec![START_LIVE],
            (false, None) => vec![START],
            (false, Some(run)) => {
                let mut bytes = vec![START_RUN, run.len() as u8];
                bytes.extend_from_slice(run.as_bytes());
                bytes
            }
        }
    }
}
