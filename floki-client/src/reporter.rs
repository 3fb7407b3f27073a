//! Tells the agent how a channel end is doing, on the control connection,
//! without ever holding the data path up: if the agent is gone the reports
//! are dropped and the stream carries on.

use std::{
    io,
    os::fd::{AsRawFd as _, RawFd},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{runtime::Handle, sync::oneshot, task::JoinHandle, time::MissedTickBehavior};
use tokio_util::either::Either;

use floki_proto::{
    MAX_MESSAGE_LEN,
    control::{ClientReport, ControlStream, encode_message},
};

const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long finishing waits for the last report to reach the agent.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Whose turn it is to write on the control connection.
const FREE: u8 = 0;
/// The reporting task is writing a progress report.
const TASK: u8 = 1;
/// The final report is being (or was) written from the caller's thread.
const HERE: u8 = 2;

/// How an end finished, as its reporting task hears it.
enum Outcome {
    /// The task writes the final report.
    Report { ok: bool, error: Option<String> },
    /// The caller wrote the final report, but for `rest`, which the task
    /// writes before it closes.
    WrittenHere { rest: Vec<u8> },
}

/// What the reporting task and its handle share.
#[derive(Default)]
struct Shared {
    /// Set once the task has the connection registered with its runtime.
    control: OnceLock<ControlStream>,
    /// [`FREE`], [`TASK`] or [`HERE`].
    turn: AtomicU8,
}

/// Handle to the reporting task of one channel end.
pub(crate) struct Reporter {
    progress: Arc<AtomicU64>,
    shared: Arc<Shared>,
    outcome: Option<oneshot::Sender<Outcome>>,
    task: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts reporting on `control`.
    pub fn spawn(control: ControlStream) -> Self {
        Self::start(|progress, shared, outcome| {
            tokio::spawn(report(control, progress, shared, outcome))
        })
    }

    /// Starts reporting on `control` from `runtime`, which need not be the
    /// one `control` was opened on: the connection moves over.
    pub fn spawn_on(runtime: &Handle, control: ControlStream) -> Self {
        let detached = crate::control::detach(control);
        Self::start(|progress, shared, outcome| {
            runtime.spawn(async move {
                // Either way fails only if the kernel refuses an epoll
                // registration; the reports are then lost, never the stream.
                if let Ok(control) = detached.and_then(crate::control::attach) {
                    report(control, progress, shared, outcome).await;
                }
            })
        })
    }

    /// The handle around the reporting task `spawn` starts.
    fn start(
        spawn: impl FnOnce(Arc<AtomicU64>, Arc<Shared>, oneshot::Receiver<Outcome>) -> JoinHandle<()>,
    ) -> Self {
        let progress = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared::default());
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let task = spawn(progress.clone(), shared.clone(), outcome_rx);
        Self {
            progress,
            shared,
            outcome: Some(outcome_tx),
            task: Some(task),
        }
    }

    /// Records the stream bytes moved so far.
    pub fn progress(&self, bytes: u64) {
        self.progress.store(bytes, Ordering::Relaxed);
    }

    /// Records the end of the stream for this end.
    pub fn finish(&mut self, bytes: u64, error: Option<String>) {
        self.progress(bytes);
        if let Some(tx) = self.outcome.take() {
            let _ = tx.send(Outcome::Report {
                ok: error.is_none(),
                error,
            });
        }
    }

    /// [`finish`](Self::finish) for a blocking client: the final report is
    /// written on the calling thread when the connection takes it at once,
    /// and [`flushed`](Self::flushed) then has nothing to wait for: no
    /// hand-off to the background runtime and back at the end of every
    /// stream. Otherwise (the task is writing a progress report, the
    /// connection is not registered yet or is full) the task writes it, as
    /// `finish` has it do.
    pub fn finish_here(&mut self, bytes: u64, error: Option<String>) {
        if self.outcome.is_none() {
            return;
        }
        let report = ClientReport::Done {
            ok: error.is_none(),
            bytes,
            error: error.clone(),
        };
        let message = encode_message(&report, MAX_MESSAGE_LEN);
        let here = match (self.shared.control.get(), message) {
            (Some(control), Ok(message))
                if self
                    .shared
                    .turn
                    .compare_exchange(FREE, HERE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok() =>
            {
                Some((control, message))
            }
            _ => None,
        };
        let Some((control, message)) = here else {
            return self.finish(bytes, error);
        };
        self.progress(bytes);
        // Nothing else writes now: the task gave up its turn for good.
        let written = match try_write(control, &message) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            // The agent is gone: the report is lost, as the task would lose
            // it; the stream's own outcome stands.
            Err(_) => message.len(),
        };
        let rest = message[written..].to_vec();
        let done = rest.is_empty();
        if let Some(tx) = self.outcome.take() {
            let _ = tx.send(Outcome::WrittenHere { rest });
        }
        if done {
            let _ = shutdown_write(control);
            // Nothing left to flush: the task only closes.
            self.task = None;
        }
    }

    /// Waits (briefly) until the final report was written.
    pub async fn flushed(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(FLUSH_LIMIT, task).await;
        }
    }
}

async fn report(
    control: ControlStream,
    progress: Arc<AtomicU64>,
    shared: Arc<Shared>,
    mut outcome: oneshot::Receiver<Outcome>,
) {
    let control = shared.control.get_or_init(|| control);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = 0;
    let mut agent_gone = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut outcome => break outcome,
            _ = tick.tick(), if !agent_gone => {
                let bytes = progress.load(Ordering::Relaxed);
                let mine = shared
                    .turn
                    .compare_exchange(FREE, TASK, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if bytes != last && mine {
                    last = bytes;
                    agent_gone = write_report(control, &ClientReport::Progress { bytes }).await.is_err();
                }
                if mine {
                    shared.turn.store(FREE, Ordering::Release);
                }
            }
        }
    };
    if agent_gone {
        return;
    }
    let report = match outcome {
        Ok(Outcome::Report { ok, error }) => ClientReport::Done {
            ok,
            bytes: progress.load(Ordering::Relaxed),
            error,
        },
        Ok(Outcome::WrittenHere { rest }) => {
            if !rest.is_empty() && write_all(control, &rest).await.is_ok() {
                let _ = shutdown_write(control);
            }
            return;
        }
        Err(_) => ClientReport::Done {
            ok: false,
            bytes: progress.load(Ordering::Relaxed),
            error: Some("the client dropped the channel before the end of the stream".into()),
        },
    };
    if write_report(control, &report).await.is_ok() {
        let _ = shutdown_write(control);
    }
}

/// Writes `report` whole (the connection is shared with the caller's
/// thread, so it is written through `&`).
async fn write_report(control: &ControlStream, report: &ClientReport) -> io::Result<()> {
    let message = encode_message(report, MAX_MESSAGE_LEN).map_err(io::Error::other)?;
    write_all(control, &message).await
}

async fn write_all(control: &ControlStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match control {
            Either::Left(tcp) => tcp.writable().await?,
            Either::Right(unix) => unix.writable().await?,
        }
        match try_write(control, buf) {
            Ok(n) => buf = &buf[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Writes what the socket takes now, from any thread.
fn try_write(control: &ControlStream, buf: &[u8]) -> io::Result<usize> {
    match control {
        Either::Left(tcp) => tcp.try_write(buf),
        Either::Right(unix) => unix.try_write(buf),
    }
}

/// Tells the agent nothing more comes on this connection.
fn shutdown_write(control: &ControlStream) -> nix::Result<()> {
    let fd: RawFd = match control {
        Either::Left(tcp) => tcp.as_raw_fd(),
        Either::Right(unix) => unix.as_raw_fd(),
    };
    nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use floki_proto::control::parse_message;

    use super::*;

    #[test]
    fn a_final_report_written_here_reaches_the_agent_whole_and_ends_the_connection() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (ours, agent) = {
            let _entered = runtime.enter();
            tokio::net::UnixStream::pair().expect("socket pair")
        };
        let mut reporter = Reporter::spawn_on(runtime.handle(), Either::Right(ours));
        // The task registers the connection on its first poll.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while reporter.shared.control.get().is_none() {
            assert!(std::time::Instant::now() < deadline, "the task never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        reporter.finish_here(42, None);
        assert!(
            reporter.task.is_none(),
            "written on this thread: nothing left to flush"
        );
        let mut agent = agent.into_std().expect("std socket");
        agent.set_nonblocking(false).expect("blocking");
        let mut heard = Vec::new();
        agent
            .read_to_end(&mut heard)
            .expect("the report, then the end");
        let len = u32::from_be_bytes(heard[..4].try_into().expect("length")) as usize;
        assert_eq!(
            heard.len(),
            4 + len,
            "one message, then the connection ends"
        );
        let report: ClientReport = parse_message(&heard[4..]).expect("a report");
        assert_eq!(
            report,
            ClientReport::Done {
                ok: true,
                bytes: 42,
                error: None
            }
        );
    }
}
