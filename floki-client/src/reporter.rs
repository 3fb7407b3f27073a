//! Tells the agent how a channel end is doing, on the control connection,
//! without ever holding the data path up: if the agent is gone the reports
//! are dropped and the stream carries on.
//!
//! An async end reports from a task on its own runtime; once its final
//! report is written, a connection the agent takes another hello on is
//! kept for the process's next channel ([`crate::idle`]). A blocking end's
//! task, on the background runtime, starts only once a report is due that
//! the caller's thread cannot write itself: the first progress report (after
//! [`PROGRESS_EVERY`]), a final report the connection does not take at once,
//! or the failure of an end dropped unfinished. A stream shorter than that
//! (most serverless hand-offs) never wakes the background thread: waking it
//! took the caller's CPU for up to 400 µs when both share one CPU.

use std::{
    io,
    os::fd::{AsRawFd as _, RawFd},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{runtime::Handle, sync::oneshot, task::JoinHandle, time::MissedTickBehavior};
use tokio_util::either::Either;

use crate::control::DetachedControl;
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
    /// writes before it closes (or, for a successful end whose connection
    /// is kept, leaves it open).
    WrittenHere { rest: Vec<u8>, ok: bool },
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
    task: Task,
    /// Whom to keep the connection for (see [`crate::idle`]) once the
    /// final report of a successful end went out whole: from the caller's
    /// thread (a blocking end) or from the task (an async one).
    keep_for: Option<Keep>,
    /// The connection, kept from then on until this handle is dropped
    /// (with the end's ring, if it gives it: [`Reporter::keep_ring`]).
    kept: Option<crate::idle::Kept>,
}

/// The agent and stream a kept connection is kept under.
pub(crate) struct Keep {
    pub agent: String,
    pub stream: String,
    /// The pairing key and window of the link the end may keep with it,
    /// and whether it is a consumer's, watched while idle.
    pub link_terms: Option<([u8; floki_proto::KEY_LEN], u64, bool)>,
    /// The end's final message.
    pub last: Final,
}

/// What an end tells its agent at the end of its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Final {
    /// Its `done` report, after progress reports.
    Done,
    /// A `held` request: the end went over a link or ring it held, without
    /// asking the agent, and sends no progress reports (the agent is not
    /// reading reports on the connection).
    Held,
    /// A `held` request only if the stream failed: the sender of a stream
    /// over a held ring, whose receiver's request files the stream.
    HeldIfFailed,
}

/// The reporting task, if it runs.
enum Task {
    /// Returns whether it left the connection open to be kept.
    Running(JoinHandle<bool>),
    /// A blocking end's, not started until a report is due (see the module
    /// doc).
    Deferred(Box<Deferred>),
    /// Finished, or never needed.
    None,
}

/// What a deferred task starts with.
struct Deferred {
    runtime: Handle,
    control: DetachedControl,
    outcome: oneshot::Receiver<Outcome>,
    /// When the first progress report falls due (never for a held end: see
    /// [`Keep::held`]).
    due: Option<Instant>,
    /// The end's final message (see [`Keep::last`]).
    last: Final,
}

impl Reporter {
    /// Starts reporting on `control`, for an async end. `keep_for`: the
    /// agent takes another hello on this connection after the final report;
    /// a successful end keeps it for the next channel to that agent.
    pub fn spawn(control: ControlStream, keep_for: Option<Keep>) -> Self {
        let keeps = keep_for.is_some();
        let last = keep_for.as_ref().map_or(Final::Done, |keep| keep.last);
        let mut reporter = Self::start(|progress, shared, outcome| {
            tokio::spawn(report(control, progress, shared, outcome, keeps, last))
        });
        reporter.keep_for = keep_for;
        reporter
    }

    /// Reports on `control` from `runtime` (which need not be the one
    /// `control` was opened on: the connection moves over), for a blocking
    /// end: the task starts only once a report is due (see the module doc).
    /// `keep_for`: the agent takes another hello on this connection after
    /// the final report; it is kept for the next channel to that agent.
    pub fn deferred_on(runtime: &Handle, control: ControlStream, keep_for: Option<Keep>) -> Self {
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let last = keep_for.as_ref().map_or(Final::Done, |keep| keep.last);
        // Fails only if the kernel refuses to take the connection out of
        // epoll; the reports are then lost, never the stream.
        let task = match crate::control::detach(control) {
            Ok(control) => Task::Deferred(Box::new(Deferred {
                runtime: runtime.clone(),
                control,
                outcome: outcome_rx,
                // A held end reports once, at its end.
                due: (last == Final::Done).then(|| Instant::now() + PROGRESS_EVERY),
                last,
            })),
            Err(_) => Task::None,
        };
        Self {
            progress: Arc::new(AtomicU64::new(0)),
            shared: Arc::new(Shared::default()),
            outcome: Some(outcome_tx),
            task,
            keep_for,
            kept: None,
        }
    }

    /// Starts a deferred task (a running one stays as it is).
    fn start_deferred(&mut self) {
        let Deferred {
            runtime,
            control,
            outcome,
            last,
            ..
        } = match std::mem::replace(&mut self.task, Task::None) {
            Task::Deferred(deferred) => *deferred,
            other => {
                self.task = other;
                return;
            }
        };
        let (progress, shared) = (self.progress.clone(), self.shared.clone());
        // A stream long enough for progress reports keeps its connection
        // (and its ring or link) too: `flushed` takes it back from the
        // task once the task wrote the final report.
        let keeps = self.keep_for.is_some();
        self.task = Task::Running(runtime.spawn(async move {
            // Fails only if the kernel refuses an epoll registration; the
            // reports are then lost, never the stream.
            match crate::control::attach(control) {
                Ok(control) => report(control, progress, shared, outcome, keeps, last).await,
                Err(_) => false,
            }
        }));
    }

    /// The handle around the reporting task `spawn` starts.
    fn start(
        spawn: impl FnOnce(Arc<AtomicU64>, Arc<Shared>, oneshot::Receiver<Outcome>) -> JoinHandle<bool>,
    ) -> Self {
        let progress = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared::default());
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let task = spawn(progress.clone(), shared.clone(), outcome_rx);
        Self {
            progress,
            shared,
            outcome: Some(outcome_tx),
            task: Task::Running(task),
            keep_for: None,
            kept: None,
        }
    }

    /// Records the stream bytes moved so far (and starts a deferred task
    /// once the first progress report is due).
    pub fn progress(&mut self, bytes: u64) {
        self.progress.store(bytes, Ordering::Relaxed);
        if let Task::Deferred(deferred) = &self.task
            && deferred.due.is_some_and(|due| Instant::now() >= due)
        {
            self.start_deferred();
        }
    }

    /// Records the end of the stream for this end.
    pub fn finish(&mut self, bytes: u64, error: Option<String>) {
        self.progress.store(bytes, Ordering::Relaxed);
        if let Some(tx) = self.outcome.take() {
            let _ = tx.send(Outcome::Report {
                ok: error.is_none(),
                error,
            });
        }
        self.start_deferred();
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
        let last = self.keep_for.as_ref().map_or(Final::Done, |keep| keep.last);
        let message = final_message(last, error.is_none(), bytes, error.clone());
        if let (Task::Deferred(deferred), Ok(message)) = (&self.task, &message) {
            // No task yet: nothing else writes on the connection.
            let written = taken_now(try_write_detached(&deferred.control, message), message);
            self.progress.store(bytes, Ordering::Relaxed);
            if written == message.len() {
                // The agent has the whole report: the connection is kept
                // for the next channel, or closed.
                if let Task::Deferred(deferred) = std::mem::replace(&mut self.task, Task::None) {
                    if self.keep_for.is_some() && error.is_none() {
                        self.kept = Some(crate::idle::Kept::bare(deferred.control));
                    } else {
                        let _ = shutdown_write_fd(detached_fd(&deferred.control));
                    }
                }
                self.outcome = None;
                return;
            }
            let rest = message[written..].to_vec();
            if let Some(tx) = self.outcome.take() {
                let _ = tx.send(Outcome::WrittenHere {
                    rest,
                    ok: error.is_none(),
                });
            }
            return self.start_deferred();
        }
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
        self.progress.store(bytes, Ordering::Relaxed);
        // Nothing else writes now: the task gave up its turn for good.
        let written = taken_now(try_write(control, &message), &message);
        let rest = message[written..].to_vec();
        let done = rest.is_empty();
        let ok = error.is_none();
        if let Some(tx) = self.outcome.take() {
            let _ = tx.send(Outcome::WrittenHere { rest, ok });
        }
        // A kept connection comes back from the task ([`Reporter::flushed`]).
        if done && !(ok && self.keep_for.is_some()) {
            let _ = shutdown_write(control);
            // Nothing left to flush: the task only closes.
            self.task = Task::None;
        }
    }

    /// Waits (briefly) until the final report was written. A deferred task
    /// that never started has written nothing, and stays. An async end's
    /// task that left its connection open for the next channel hands it
    /// over here: the end keeps it ([`Reporter::keep_ring`] adds its ring).
    pub async fn flushed(&mut self) {
        match std::mem::replace(&mut self.task, Task::None) {
            Task::Running(task) => {
                let kept_open =
                    matches!(tokio::time::timeout(FLUSH_LIMIT, task).await, Ok(Ok(true)));
                if kept_open && self.keep_for.is_some() {
                    self.keep_connection();
                }
            }
            other => self.task = other,
        }
    }

    /// Takes the connection the finished task left open, off its runtime,
    /// to keep. The task is over, so this handle holds the only reference
    /// to what they shared; if not, the connection closes with it.
    fn keep_connection(&mut self) {
        if let Some(shared) = Arc::get_mut(&mut self.shared)
            && let Some(control) = shared.control.take()
            && let Ok(control) = crate::control::detach(control)
        {
            self.kept = Some(crate::idle::Kept::bare(control));
        }
    }
}

/// Reports until the end's outcome, then writes the final report. `keeps`:
/// a successful final report leaves the connection open (the agent takes
/// another hello on it) and returns `true`; otherwise the connection is
/// shut down for writing.
async fn report(
    control: ControlStream,
    progress: Arc<AtomicU64>,
    shared: Arc<Shared>,
    mut outcome: oneshot::Receiver<Outcome>,
    keeps: bool,
    ending: Final,
) -> bool {
    let control = shared.control.get_or_init(|| control);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = 0;
    let mut agent_gone = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut outcome => break outcome,
            _ = tick.tick(), if !agent_gone && ending == Final::Done => {
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
        return false;
    }
    let (ok, error) = match outcome {
        Ok(Outcome::Report { ok, error }) => (ok, error),
        Ok(Outcome::WrittenHere { rest, ok }) => {
            if !rest.is_empty() && write_all(control, &rest).await.is_err() {
                return false;
            }
            if keeps && ok {
                return true;
            }
            let _ = shutdown_write(control);
            return false;
        }
        Err(_) => (
            false,
            Some("the client dropped the channel before the end of the stream".into()),
        ),
    };
    let Ok(message) = final_message(ending, ok, progress.load(Ordering::Relaxed), error) else {
        return false;
    };
    if write_all(control, &message).await.is_err() {
        return false;
    }
    if keeps && ok {
        return true;
    }
    let _ = shutdown_write(control);
    false
}

impl Reporter {
    /// Keeps `ring` with the connection for the next channel, if the
    /// connection is kept.
    pub fn keep_ring(&mut self, ring: floki_proto::ring::KeptRing) {
        if let Some(kept) = &mut self.kept {
            kept.ring = Some(ring);
        }
    }

    /// Keeps `link` (the agents' link of a stream across nodes) with the
    /// connection for the stream's next use, if the connection is kept.
    pub fn keep_link(&mut self, link: std::net::TcpStream) {
        let terms = self.keep_for.as_ref().and_then(|keep| keep.link_terms);
        if let (Some(kept), Some((key, window, watched))) = (&mut self.kept, terms) {
            kept.link = Some(crate::idle::KeptLink {
                conn: link,
                key,
                window,
                watched,
                given_back: false,
            });
        }
    }
}

impl Drop for Reporter {
    /// An end dropped before it finished: a deferred task starts, and
    /// reports the failure. One that finished puts its kept connection
    /// where the next end finds it.
    fn drop(&mut self) {
        if self.outcome.is_some() {
            self.start_deferred();
        }
        if let (Some(keep), Some(kept)) = (self.keep_for.take(), self.kept.take()) {
            crate::idle::put(keep.agent, keep.stream, kept);
        }
    }
}

/// An end's final message: its `done` report, or for an end that went over
/// a link or ring it held, the `held` request that tells the agent
/// afterwards (nothing from a held ring's sender whose stream succeeded).
fn final_message(
    last: Final,
    ok: bool,
    bytes: u64,
    error: Option<String>,
) -> Result<Vec<u8>, floki_proto::ProtocolError> {
    match last {
        Final::Done => encode_message(&ClientReport::Done { ok, bytes, error }, MAX_MESSAGE_LEN),
        Final::HeldIfFailed if ok => Ok(Vec::new()),
        Final::Held | Final::HeldIfFailed => {
            let held = floki_proto::control::HeldReport { ok, bytes, error };
            encode_message(
                &floki_proto::control::ClientRequest::Held { held },
                MAX_MESSAGE_LEN,
            )
        }
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

/// Bytes of `message` a non-blocking write `result` disposed of: none if
/// the connection is full; all if the agent is gone (the report is lost, as
/// the task would lose it; the stream's own outcome stands).
fn taken_now(result: io::Result<usize>, message: &[u8]) -> usize {
    match result {
        Ok(n) => n,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => message.len(),
    }
}

/// [`try_write`] on a connection no runtime has (it stays non-blocking).
pub(crate) fn try_write_detached(control: &DetachedControl, buf: &[u8]) -> io::Result<usize> {
    use std::io::Write as _;
    match control {
        Either::Left(tcp) => (&*tcp).write(buf),
        Either::Right(unix) => (&*unix).write(buf),
    }
}

/// Tells the agent nothing more comes on this connection.
fn shutdown_write(control: &ControlStream) -> nix::Result<()> {
    shutdown_write_fd(match control {
        Either::Left(tcp) => tcp.as_raw_fd(),
        Either::Right(unix) => unix.as_raw_fd(),
    })
}

fn detached_fd(control: &DetachedControl) -> RawFd {
    match control {
        Either::Left(tcp) => tcp.as_raw_fd(),
        Either::Right(unix) => unix.as_raw_fd(),
    }
}

fn shutdown_write_fd(fd: RawFd) -> nix::Result<()> {
    nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use floki_proto::control::parse_message;

    use super::*;

    /// A blocking end's reporter on a background runtime, and the agent's
    /// side of its connection.
    fn blocking_end() -> (
        tokio::runtime::Runtime,
        Reporter,
        std::os::unix::net::UnixStream,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (ours, agent) = connection(&runtime);
        let reporter = Reporter::deferred_on(runtime.handle(), Either::Right(ours), None);
        agent.set_nonblocking(false).expect("blocking");
        (runtime, reporter, agent)
    }

    /// A control connection on `runtime`, and the agent's side of it.
    fn connection(
        runtime: &tokio::runtime::Runtime,
    ) -> (tokio::net::UnixStream, std::os::unix::net::UnixStream) {
        let _entered = runtime.enter();
        let (ours, agent) = tokio::net::UnixStream::pair().expect("socket pair");
        (ours, agent.into_std().expect("std socket"))
    }

    /// The reports in `bytes`, whole messages only.
    fn reports(mut bytes: &[u8]) -> Vec<ClientReport> {
        let mut reports = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes(bytes[..4].try_into().expect("length")) as usize;
            reports.push(parse_message(&bytes[4..4 + len]).expect("a whole report"));
            bytes = &bytes[4 + len..];
        }
        reports
    }

    /// Every report the agent hears until the connection ends.
    fn heard(mut agent: std::os::unix::net::UnixStream) -> Vec<ClientReport> {
        let mut heard = Vec::new();
        agent
            .read_to_end(&mut heard)
            .expect("reports, then the end");
        reports(&heard)
    }

    #[test]
    fn a_short_stream_reports_from_the_callers_thread_alone() {
        let (_runtime, mut reporter, agent) = blocking_end();
        reporter.progress(10);
        assert!(
            matches!(reporter.task, Task::Deferred(_)),
            "no report due yet: no task"
        );
        reporter.finish_here(42, None);
        assert!(
            matches!(reporter.task, Task::None),
            "written on this thread: no task, nothing left to flush"
        );
        drop(reporter);
        assert_eq!(
            heard(agent),
            vec![ClientReport::Done {
                ok: true,
                bytes: 42,
                error: None
            }],
            "one report, then the connection ends"
        );
    }

    #[test]
    fn the_task_starts_when_a_progress_report_falls_due() {
        let (runtime, mut reporter, agent) = blocking_end();
        if let Task::Deferred(deferred) = &mut reporter.task {
            deferred.due = Some(Instant::now());
        }
        reporter.progress(1000);
        assert!(matches!(reporter.task, Task::Running(_)));
        // The task writes the progress report on its first tick, then takes
        // the final report from this thread or writes it itself.
        let deadline = Instant::now() + Duration::from_secs(5);
        while reporter.shared.control.get().is_none() {
            assert!(Instant::now() < deadline, "the task never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        reporter.finish_here(2000, None);
        runtime.block_on(reporter.flushed());
        drop(reporter);
        assert_eq!(
            heard(agent),
            vec![
                ClientReport::Progress { bytes: 1000 },
                ClientReport::Done {
                    ok: true,
                    bytes: 2000,
                    error: None
                }
            ]
        );
    }

    #[test]
    fn an_async_ends_final_report_is_written_once_flushed_returns() {
        // One thread: the reporting task runs only while something awaits.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (ours, agent) = connection(&runtime);
        let mut reporter = {
            let _entered = runtime.enter();
            Reporter::spawn(Either::Right(ours), None)
        };
        reporter.finish(5, None);
        runtime.block_on(reporter.flushed());
        // Non-blocking: what has been written by now, nothing more.
        let mut now = vec![0u8; 4096];
        let n = (&agent)
            .read(&mut now)
            .expect("the report is there already");
        assert_eq!(
            reports(&now[..n]),
            vec![ClientReport::Done {
                ok: true,
                bytes: 5,
                error: None
            }],
            "the whole report"
        );
    }

    #[test]
    fn waiting_for_a_task_that_never_started_keeps_the_connection() {
        let (runtime, mut reporter, agent) = blocking_end();
        runtime.block_on(reporter.flushed());
        reporter.finish_here(9, None);
        drop(reporter);
        assert_eq!(
            heard(agent),
            vec![ClientReport::Done {
                ok: true,
                bytes: 9,
                error: None
            }]
        );
    }

    #[test]
    fn an_end_dropped_unfinished_reports_its_failure() {
        let (_runtime, mut reporter, agent) = blocking_end();
        reporter.progress(7);
        drop(reporter);
        let reports = heard(agent);
        assert!(
            matches!(
                &reports[..],
                [ClientReport::Done { ok: false, bytes: 7, error: Some(error) }]
                    if error.contains("dropped the channel")
            ),
            "{reports:?}"
        );
    }
}
