//! Held rings: the next stream between two ends that kept a ring, set up
//! without the agent (docs/PROTOCOL.md, "Held rings"). Two words of the
//! header decide who sets the stream up:
//!
//! * `held`, which the two ends change by compare-and-swap: the receiver,
//!   when its next receiver of the same stream opens, says that it waits
//!   ([`WAITS`]) and sleeps on the word; the sender, when its next sender
//!   of that stream opens, takes a waiting ring ([`TAKING`]), rewinds it
//!   itself and says the stream started ([`STARTED`]);
//! * `withdrawn`, which only the agent sets, through the file (it maps no
//!   ring: a function could shrink the file under a mapping and kill the
//!   agent with `SIGBUS`), when that stream's sender comes to it instead (a
//!   new process, or one that came before its receiver waited): from then
//!   on neither end sets up over `held`, and a waiting receiver, which
//!   looks at the word with its peer's liveness (every
//!   [`LIVENESS`](super::LIVENESS)), asks the agent. Only the agent's
//!   rewind, when it pairs the two over the ring itself, clears it.
//!
//! A sender that takes a wait just as the agent withdraws the ring still
//! streams: the withdrawal holds from the next stream on.

use std::{
    io,
    os::fd::OwnedFd,
    sync::atomic::{AtomicU32, Ordering, fence},
};

use super::{Header, KeptRing, RingWaiter, wait::futex_wake};

/// Nobody waits (also: the agent rewound the ring).
const IDLE: u32 = 0;
/// The receiver waits for its next stream over the ring.
pub(super) const WAITS: u32 = 1;
/// The sender took the wait and is rewinding the ring.
const TAKING: u32 = 2;
/// The sender rewound the ring: the stream starts at position 0.
const STARTED: u32 = 3;

/// How a receiver's wait on its held ring ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HeldWait {
    /// The sender started the stream: read it from position 0.
    Started,
    /// The wait was withdrawn (by the agent, or by this end, which gave
    /// up): ask the agent.
    AskAgent,
}

impl KeptRing {
    fn held(&self) -> &AtomicU32 {
        &self.ring.header().held.0
    }

    fn withdrawn(&self) -> bool {
        fence(Ordering::SeqCst);
        self.ring.header().withdrawn.0.load(Ordering::Acquire) != 0
    }

    /// Receiver: says that it waits for its next stream over this ring;
    /// `false` if the agent withdrew the ring (ask it instead).
    pub fn announce_wait(&self) -> bool {
        let announced = !self.withdrawn()
            && self
                .held()
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                    matches!(word, IDLE | STARTED).then_some(WAITS)
                })
                .is_ok();
        // The agent writes `withdrawn`, then reads `held` to tell a waiting
        // receiver ([`withdrawn_while_waiting`]); this end writes `held`,
        // then reads `withdrawn` again: one of the two sees the other.
        if announced && self.withdrawn() {
            return self.end_wait() == HeldWait::Started;
        }
        announced
    }

    /// Receiver, after its wait was woken ([`KeptRing::waiter`] with
    /// [`Awaited::Start`](super::Awaited::Start)) or given up on (the peer
    /// died, its agent's connection closed, its pair timeout, the agent
    /// withdrew the ring): `Started` if the sender took the wait (it may
    /// still be rewinding: this waits for it), else the wait is over.
    pub fn end_wait(&self) -> HeldWait {
        let held = self.held();
        loop {
            match held.compare_exchange(WAITS, IDLE, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return HeldWait::AskAgent,
                Err(STARTED) => return HeldWait::Started,
                // A few stores away: the sender rewinds between the two.
                Err(TAKING) => std::thread::yield_now(),
                Err(_) => return HeldWait::AskAgent,
            }
        }
    }

    /// The ring's waiter: a receiver waits on it for
    /// [`Awaited::Start`](super::Awaited::Start).
    pub fn waiter(&self) -> RingWaiter {
        RingWaiter {
            ring: self.ring.clone(),
        }
    }

    /// Sender: takes the ring for its stream's next use if its receiver
    /// waits on it, rewinds it (every word from `head` to `ack`, as the
    /// agent would) and wakes the receiver; `false` if the receiver does
    /// not wait (or the agent withdrew the ring): ask the agent.
    pub fn take_held(&self) -> bool {
        let held = self.held();
        if self.withdrawn()
            || held
                .compare_exchange(WAITS, TAKING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        rewind_words(self.ring.header());
        held.store(STARTED, Ordering::Release);
        futex_wake(held);
        true
    }
}

/// Zeroes the words of the last stream (positions, futex words, end mark,
/// verdict) in place: the sender of a held ring does what the agent's
/// [`super::rewind`] does through the file, but for `held` and
/// `withdrawn`.
fn rewind_words(header: &Header) {
    for word in [
        &header.head.0,
        &header.tail.0,
        &header.total.0,
        &header.checksum.0,
    ] {
        word.store(0, Ordering::Relaxed);
    }
    for word in [
        &header.data_seq.0,
        &header.receiver_waiting.0,
        &header.space_seq.0,
        &header.sender_waiting.0,
        &header.end.0,
        &header.ack.0,
    ] {
        word.store(0, Ordering::Relaxed);
    }
}

/// Agent: withdraws the ring in `memory` from its ends' own set-up, through
/// the file (one aligned 4-byte write; no mapping): from their next stream
/// on, both ask the agent, and a receiver waiting on it now does within
/// [`LIVENESS`](super::LIVENESS).
pub fn withdraw(memory: &OwnedFd) -> io::Result<()> {
    let at = std::mem::offset_of!(Header, withdrawn);
    let file = std::fs::File::from(memory.try_clone()?);
    std::os::unix::fs::FileExt::write_all_at(&file, &1u32.to_ne_bytes(), at as u64)
}

/// Agent: whether the ring in `memory` is withdrawn while its receiver
/// waits on it (read through the file): the agent tells that receiver on
/// its connection (`started_elsewhere`), rather than leave it to see the
/// word within [`LIVENESS`](super::LIVENESS).
pub fn withdrawn_while_waiting(memory: &OwnedFd) -> io::Result<bool> {
    // Through the agent's own descriptor: no duplicate per look.
    let word = |at: usize| -> io::Result<u32> {
        let mut bytes = [0u8; 4];
        match nix::sys::uio::pread(memory, &mut bytes, at as libc::off_t)? {
            4 => Ok(u32::from_ne_bytes(bytes)),
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    };
    Ok(word(std::mem::offset_of!(Header, withdrawn))? != 0
        && word(std::mem::offset_of!(Header, held))? == WAITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Awaited, RingReader, RingWriter, create, socket_pair};
    use std::os::fd::AsFd as _;

    /// A ring whose first stream went through verified, kept by both ends;
    /// and the agent's descriptor of it.
    fn kept_pair() -> (KeptRing, KeptRing, OwnedFd) {
        let (memory, _) = create(64 << 10).expect("ring");
        let agents = memory.as_fd().try_clone_to_owned().expect("dup");
        let second = memory.as_fd().try_clone_to_owned().expect("dup");
        let (a, b) = socket_pair().expect("socket pair");
        let mut writer = RingWriter::open(memory, a).expect("writer");
        let mut reader = RingReader::open(second, b).expect("reader");
        stream(&mut writer, &mut reader, b"first");
        let reader_kept = reader.keep().expect("receiver keeps");
        drop(reader);
        (writer.keep().expect("sender keeps"), reader_kept, agents)
    }

    fn stream(writer: &mut RingWriter, reader: &mut RingReader, data: &[u8]) {
        let data = data.to_vec();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                writer.write(&data).expect("write");
                writer.finish().expect("verified");
            });
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                let n = reader.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, data);
        });
    }

    #[test]
    fn a_waiting_receiver_gets_the_next_stream_from_its_sender_without_the_agent() {
        let (sender, receiver, _agent) = kept_pair();
        assert!(!sender.take_held(), "nobody waits yet: ask the agent");
        assert!(receiver.announce_wait());
        assert!(sender.take_held());
        assert_eq!(receiver.end_wait(), HeldWait::Started);
        let mut writer = RingWriter::reopen(sender).expect("rewound for the writer");
        let mut reader = RingReader::reopen(receiver).expect("rewound for the reader");
        stream(&mut writer, &mut reader, b"second, held");
        // And again, as a warm pair does.
        let receiver = reader.keep().expect("kept again");
        drop(reader);
        let sender = writer.keep().expect("kept again");
        assert!(receiver.announce_wait());
        assert!(sender.take_held());
        assert_eq!(receiver.end_wait(), HeldWait::Started);
    }

    #[test]
    fn the_agent_withdraws_a_wait_and_both_ends_ask_it_until_it_rewinds_the_ring() {
        let (sender, receiver, agent) = kept_pair();
        assert!(receiver.announce_wait());
        assert!(!withdrawn_while_waiting(&agent).expect("read"));
        withdraw(&agent).expect("withdraw");
        assert!(
            withdrawn_while_waiting(&agent).expect("read"),
            "the agent sees a receiver to tell"
        );
        assert!(Awaited::Start.holds(&receiver.ring), "the wait is over");
        assert!(!sender.take_held(), "withdrawn: the sender asks the agent");
        assert_eq!(receiver.end_wait(), HeldWait::AskAgent);
        assert!(!withdrawn_while_waiting(&agent).expect("read"), "it left");
        assert!(!receiver.announce_wait(), "still withdrawn");
        crate::ring::rewind(&agent).expect("the agent pairs them over it");
        assert!(receiver.announce_wait(), "rewound: held again");
        assert!(sender.take_held());
    }

    #[test]
    fn a_receiver_that_gives_up_leaves_nothing_for_its_sender_to_take() {
        let (sender, receiver, _agent) = kept_pair();
        assert!(receiver.announce_wait());
        assert_eq!(receiver.end_wait(), HeldWait::AskAgent);
        assert!(!sender.take_held());
    }
}
