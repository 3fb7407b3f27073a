//! `floki._floki.Sender`: the blocking client's sender, for the Python
//! `floki.Sender`. Every call that can wait (for the receiver, for room in
//! the window) or copy runs with the GIL released.

use std::sync::Mutex;

use floki_client::{Summary, blocking};
use pyo3::prelude::*;

use crate::{
    buffer::Exported,
    errors::Failure,
    options::{self, Stream},
};

/// What a finished stream moved: channel id, transport, bytes, XXH3-64,
/// and whether the other end was the agent's store.
pub type SummaryTuple = (u32, String, u64, u64, bool);

/// The summary `finish` returns to Python.
pub fn summary(summary: &Summary) -> SummaryTuple {
    (
        summary.channel_id,
        summary.transport.to_string(),
        summary.bytes,
        summary.checksum,
        summary.stored,
    )
}

/// A channel's sending end.
#[pyclass(module = "floki._floki", name = "Sender")]
pub struct NativeSender {
    /// `None` once finished or aborted.
    sender: Mutex<Option<blocking::Sender>>,
}

impl NativeSender {
    /// Wraps an opened sender.
    pub fn new(sender: blocking::Sender) -> Self {
        Self {
            sender: Mutex::new(Some(sender)),
        }
    }

    /// Runs `f` on the open sender (without the GIL, when called inside
    /// `Python::detach`).
    fn with<R>(
        &self,
        f: impl FnOnce(&mut blocking::Sender) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        let mut sender = self
            .sender
            .lock()
            .map_err(|_| Failure::new("Error", "the sender failed in another thread"))?;
        match sender.as_mut() {
            Some(sender) => f(sender),
            None => Err(Failure::new(
                "Error",
                "the stream is finished or aborted; open another Sender",
            )),
        }
    }

    fn take(&self) -> Result<blocking::Sender, Failure> {
        self.sender
            .lock()
            .map_err(|_| Failure::new("Error", "the sender failed in another thread"))?
            .take()
            .ok_or_else(|| Failure::new("Error", "the stream is already finished or aborted"))
    }
}

#[pymethods]
impl NativeSender {
    /// Opens `channel` as its sender through `agent`; returns once the agent
    /// accepted it (writes then fill the channel's window until the receiver
    /// is there, or the agent's store takes the stream unless `live`).
    #[new]
    #[pyo3(signature = (agent, channel, *, timeout=None, transport=None, stream=None, live=false, secret=None, run=None))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn open(
        py: Python<'_>,
        agent: String,
        channel: String,
        timeout: Option<f64>,
        transport: Option<String>,
        stream: Option<Stream>,
        live: bool,
        secret: Option<String>,
        run: Option<String>,
    ) -> PyResult<Self> {
        let mut opts = options::channel(agent, channel, timeout, transport, stream)?;
        opts.live = live;
        opts.secret = secret;
        opts.run = run;
        let sender = py
            .detach(|| blocking::Sender::open(&opts))
            .map_err(|err| Failure::client(&err))?;
        Ok(Self::new(sender))
    }

    /// Writes all of `data` (any object with the buffer protocol), read in
    /// place; returns its length.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let exported = Exported::readable(data)?;
        let bytes = exported.bytes();
        py.detach(|| {
            self.with(|sender| {
                std::io::Write::write_all(sender, bytes)
                    .map_err(|err| Failure::io(&err, sender.setup_error()))
            })
        })?;
        Ok(bytes.len())
    }

    /// Sends the small writes gathered so far.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            self.with(|sender| {
                std::io::Write::flush(sender).map_err(|err| Failure::io(&err, sender.setup_error()))
            })
        })?;
        Ok(())
    }

    /// Sends the end mark without waiting for the receiver's verdict, which
    /// `finish` then waits for.
    fn end(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.with(|sender| sender.end().map_err(|err| Failure::client(&err))))?;
        Ok(())
    }

    /// Sends the end mark (unless `end` did) and waits until the receiver
    /// verified the stream.
    fn finish(&self, py: Python<'_>) -> PyResult<SummaryTuple> {
        let sender = self.take()?;
        let finished = py.detach(|| sender.finish());
        Ok(summary(&finished.map_err(|err| Failure::client(&err))?))
    }

    /// Gives up on the stream: the receiver fails with `reason`.
    fn abort(&self, py: Python<'_>, reason: &str) -> PyResult<()> {
        if let Ok(sender) = self.take() {
            py.detach(|| sender.abort(reason));
        }
        Ok(())
    }

    /// How the bytes travel (`None` until the receiver is there).
    #[getter]
    fn transport(&self) -> Option<String> {
        self.with(|sender| Ok(sender.transport()))
            .ok()
            .flatten()
            .map(|transport| transport.to_string())
    }

    /// The agent-wide channel id.
    #[getter]
    fn channel_id(&self) -> Option<u32> {
        self.with(|sender| Ok(sender.channel_id())).ok()
    }

    /// Stream bytes written so far.
    #[getter]
    fn bytes_sent(&self) -> u64 {
        self.with(|sender| Ok(sender.bytes_sent())).unwrap_or(0)
    }
}
