//! Tells the agent how a channel end is doing, on the control connection,
//! without ever holding the data path up: if the agent is gone the reports
//! are dropped and the stream carries on.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{runtime::Handle, sync::oneshot, task::JoinHandle, time::MissedTickBehavior};

use floki_proto::control::{ClientReport, ControlStream, write_message};

const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long finishing waits for the last report to reach the agent.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// The final word on an end.
struct Outcome {
    ok: bool,
    error: Option<String>,
}

/// Handle to the reporting task of one channel end.
pub(crate) struct Reporter {
    progress: Arc<AtomicU64>,
    outcome: Option<oneshot::Sender<Outcome>>,
    task: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts reporting on `control`.
    pub fn spawn(control: ControlStream) -> Self {
        Self::start(|progress, outcome| tokio::spawn(report(control, progress, outcome)))
    }

    /// Starts reporting on `control` from `runtime`, which need not be the
    /// one `control` was opened on: the connection moves over.
    pub fn spawn_on(runtime: &Handle, control: ControlStream) -> Self {
        let detached = crate::control::detach(control);
        Self::start(|progress, outcome| {
            runtime.spawn(async move {
                // Either way fails only if the kernel refuses an epoll
                // registration; the reports are then lost, never the stream.
                if let Ok(control) = detached.and_then(crate::control::attach) {
                    report(control, progress, outcome).await;
                }
            })
        })
    }

    /// The handle around the reporting task `spawn` starts.
    fn start(
        spawn: impl FnOnce(Arc<AtomicU64>, oneshot::Receiver<Outcome>) -> JoinHandle<()>,
    ) -> Self {
        let progress = Arc::new(AtomicU64::new(0));
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let task = spawn(progress.clone(), outcome_rx);
        Self {
            progress,
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
            let _ = tx.send(Outcome {
                ok: error.is_none(),
                error,
            });
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
    mut control: ControlStream,
    progress: Arc<AtomicU64>,
    mut outcome: oneshot::Receiver<Outcome>,
) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = 0;
    let mut agent_gone = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut outcome => break outcome,
            _ = tick.tick(), if !agent_gone => {
                let bytes = progress.load(Ordering::Relaxed);
                if bytes != last {
                    last = bytes;
                    agent_gone = write_message(&mut control, &ClientReport::Progress { bytes }).await.is_err();
                }
            }
        }
    };
    if agent_gone {
        return;
    }
    let report = match outcome {
        Ok(Outcome { ok, error }) => ClientReport::Done {
            ok,
            bytes: progress.load(Ordering::Relaxed),
            error,
        },
        Err(_) => ClientReport::Done {
            ok: false,
            bytes: progress.load(Ordering::Relaxed),
            error: Some("the client dropped the channel before the end of the stream".into()),
        },
    };
    if write_message(&mut control, &report).await.is_ok() {
        use tokio::io::AsyncWriteExt as _;
        let _ = control.shutdown().await;
    }
}
