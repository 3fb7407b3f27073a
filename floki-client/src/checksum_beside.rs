//! The stream checksum computed on a helper thread while the sending thread
//! is in `write(2)`: the integrity check then costs the sender's critical
//! path nothing when the machine has a core to spare. The writing stays on
//! the caller's thread, so each large write costs one hand-off, not two
//! thread switches.

use std::{io, sync::mpsc, thread};

use floki_proto::stream::HashedAhead;

/// A slice to hash, and the checksum state to hash it into.
struct Job {
    data: *const u8,
    len: usize,
    ahead: HashedAhead,
}

// SAFETY: `data` points into a slice that `Beside::run` keeps borrowed until
// the helper has answered for this job (`Pending` waits even on unwinding),
// and the helper only reads it.
unsafe impl Send for Job {}

/// A helper thread for one sender.
pub(crate) struct Beside {
    jobs: mpsc::Sender<Job>,
    answers: mpsc::Receiver<HashedAhead>,
}

impl Beside {
    /// Starts the helper; it ends when this is dropped.
    pub fn start() -> io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (answer_tx, answers) = mpsc::channel();
        thread::Builder::new()
            .name("floki-checksum".into())
            .spawn(move || {
                while let Ok(mut job) = job_rx.recv() {
                    // SAFETY: see `Job`: the slice outlives this job.
                    let data = unsafe { std::slice::from_raw_parts(job.data, job.len) };
                    job.ahead.hash(data);
                    if answer_tx.send(job.ahead).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self { jobs, answers })
    }

    /// Runs `write` on this thread while the helper hashes `data` into
    /// `ahead`. `None`: the helper is gone; hash on this thread instead.
    pub fn run<R>(
        &self,
        ahead: HashedAhead,
        data: &[u8],
        write: impl FnOnce() -> R,
    ) -> (R, Option<HashedAhead>) {
        let job = Job {
            data: data.as_ptr(),
            len: data.len(),
            ahead,
        };
        if self.jobs.send(job).is_err() {
            return (write(), None);
        }
        let pending = Pending {
            answers: &self.answers,
            waited: false,
        };
        let result = write();
        (result, pending.wait())
    }
}

/// A helper started at the first write that wants it: a stream whose
/// writes are all small never pays for a thread (starting one costs about
/// as much as hashing 64 KiB).
pub(crate) enum OnDemand {
    NotYet,
    Running(Beside),
    /// It could not start: hash inline.
    Inline,
}

impl OnDemand {
    /// The helper, started now if this is the first call.
    pub fn get(&mut self) -> Option<&Beside> {
        if matches!(self, Self::NotYet) {
            *self = Beside::start().map_or(Self::Inline, Self::Running);
        }
        match self {
            Self::Running(beside) => Some(beside),
            Self::NotYet | Self::Inline => None,
        }
    }
}

/// A job in flight: its answer is awaited before the slice may go away.
struct Pending<'a> {
    answers: &'a mpsc::Receiver<HashedAhead>,
    waited: bool,
}

impl Pending<'_> {
    fn wait(mut self) -> Option<HashedAhead> {
        self.waited = true;
        self.answers.recv().ok()
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.waited {
            // Unwinding out of `write`: the helper may still be reading.
            let _ = self.answers.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floki_proto::stream::Outbound;

    #[test]
    fn hashes_beside_a_write_like_inline() {
        let beside = Beside::start().expect("helper");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 249) as u8).collect();
        let mut inline = Outbound::new(1 << 30).ahead();
        let mut helped = Outbound::new(1 << 30).ahead();
        for chunk in data.chunks(700_001) {
            inline.hash(chunk);
            let (written, answer) = beside.run(helped, chunk, || chunk.len());
            assert_eq!(written, chunk.len());
            helped = answer.expect("answer");
        }
        assert_eq!(inline.checksum(), helped.checksum());
    }

    #[test]
    fn on_demand_starts_at_first_use_only() {
        let mut helper = OnDemand::NotYet;
        assert!(helper.get().is_some(), "the first use starts the helper");
        assert!(matches!(helper, OnDemand::Running(_)));
        // The next use keeps that helper, and it hashes.
        let data = [7u8; 1000];
        let mut inline = Outbound::new(1 << 20).ahead();
        inline.hash(&data);
        let beside = helper.get().expect("still running");
        let (_, answer) = beside.run(Outbound::new(1 << 20).ahead(), &data, || ());
        assert_eq!(answer.expect("answer").checksum(), inline.checksum());
        assert!(matches!(helper, OnDemand::Running(_)));
    }
}
