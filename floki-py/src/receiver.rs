//! `floki._floki.Receiver`: the blocking client's receiver, for the Python
//! `floki.Receiver`. Reads fill the caller's buffer in place, with the GIL
//! released; over `shm` the Python layer can also map the ring and read the
//! bytes where they lie ([`NativeReceiver::fill_ring`]).

use std::{
    io::{BufRead, Read},
    os::fd::{BorrowedFd, IntoRawFd},
    sync::Mutex,
};

use floki_client::blocking;
use pyo3::{prelude::*, types::PyBytes};

use crate::{
    buffer::Exported,
    errors::Failure,
    options::{self, Stream},
    sender::{SummaryTuple, summary},
};

/// A channel's receiving end.
#[pyclass(module = "floki._floki", name = "Receiver")]
pub struct NativeReceiver {
    /// `None` once finished.
    receiver: Mutex<Option<blocking::Receiver>>,
}

impl NativeReceiver {
    /// Wraps a connected receiver.
    pub fn new(receiver: blocking::Receiver) -> Self {
        Self {
            receiver: Mutex::new(Some(receiver)),
        }
    }

    fn with<R>(
        &self,
        f: impl FnOnce(&mut blocking::Receiver) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        let mut receiver = self
            .receiver
            .lock()
            .map_err(|_| Failure::new("Error", "the receiver failed in another thread"))?;
        match receiver.as_mut() {
            Some(receiver) => f(receiver),
            None => Err(Failure::new("Error", "the stream is finished")),
        }
    }
}

/// Reads until `buf` is full or the stream ended verified.
fn fill(receiver: &mut blocking::Receiver, buf: &mut [u8]) -> Result<usize, Failure> {
    let mut filled = 0;
    while filled < buf.len() {
        match receiver.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Failure::io(&err, None)),
        }
    }
    Ok(filled)
}

#[pymethods]
impl NativeReceiver {
    /// Opens `channel` as its receiver through `agent`; returns once the
    /// sender is there and the stream can be read.
    #[new]
    #[pyo3(signature = (agent, channel, *, timeout=None, transport=None, stream=None, window=None, secret=None, run=None))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn connect(
        py: Python<'_>,
        agent: String,
        channel: String,
        timeout: Option<f64>,
        transport: Option<String>,
        stream: Option<Stream>,
        window: Option<u64>,
        secret: Option<String>,
        run: Option<String>,
    ) -> PyResult<Self> {
        let mut opts = options::channel(agent, channel, timeout, transport, stream)?;
        opts.window = window;
        opts.secret = secret;
        opts.run = run;
        let receiver = py
            .detach(|| blocking::Receiver::connect(&opts))
            .map_err(|err| Failure::client(&err))?;
        Ok(Self::new(receiver))
    }

    /// Fills `buf` (any writable object with the buffer protocol) with the
    /// next bytes; fewer only at the end of the stream, 0 once it ended
    /// verified.
    fn readinto(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut exported = Exported::writable(buf)?;
        let bytes = exported.bytes_mut();
        Ok(py.detach(|| self.with(|receiver| fill(receiver, bytes)))?)
    }

    /// Fills `buf` with at most one read: whatever is there (waiting only if
    /// nothing is), 0 once the stream ended verified.
    fn readinto1(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut exported = Exported::writable(buf)?;
        let bytes = exported.bytes_mut();
        Ok(py.detach(|| {
            self.with(|receiver| {
                loop {
                    match receiver.read(bytes) {
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                        other => return other.map_err(|err| Failure::io(&err, None)),
                    }
                }
            })
        })?)
    }

    /// The next line, `\n` included (at most `limit` bytes if `limit` >= 0);
    /// empty once the stream ended verified.
    #[pyo3(signature = (limit=-1))]
    fn readline<'py>(&self, py: Python<'py>, limit: i64) -> PyResult<Bound<'py, PyBytes>> {
        let line = py.detach(|| {
            self.with(|receiver| {
                let mut line = Vec::new();
                let limit = u64::try_from(limit).unwrap_or(u64::MAX);
                receiver
                    .by_ref()
                    .take(limit)
                    .read_until(b'\n', &mut line)
                    .map_err(|err| Failure::io(&err, None))?;
                Ok(line)
            })
        })?;
        Ok(PyBytes::new(py, &line))
    }

    /// Everything to the verified end of the stream.
    fn readall<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let all = py.detach(|| {
            self.with(|receiver| {
                let mut all = Vec::new();
                receiver
                    .read_to_end(&mut all)
                    .map_err(|err| Failure::io(&err, None))?;
                Ok(all)
            })
        })?;
        Ok(PyBytes::new(py, &all))
    }

    /// Over `shm`: a duplicate of the ring's memory file descriptor (the
    /// caller maps it, then closes it); `None` over a socket.
    fn ring_fd(&self) -> PyResult<Option<i32>> {
        let fd = self.with(|receiver| {
            receiver
                .ring_memory()
                .map(|memory: BorrowedFd<'_>| {
                    memory.try_clone_to_owned().map_err(|err| {
                        Failure::new("Error", format!("duplicating the ring: {err}"))
                    })
                })
                .transpose()
        })?;
        Ok(fd.map(IntoRawFd::into_raw_fd))
    }

    /// Over `shm`: where the next bytes lie in the ring's memory file
    /// (offset, length), waiting for the sender; length 0 once the stream
    /// ended verified. Hand what was used back with `consume`.
    fn fill_ring(&self, py: Python<'_>) -> PyResult<Option<(u64, usize)>> {
        Ok(py.detach(|| {
            self.with(|receiver| {
                receiver
                    .fill_in_ring()
                    .map_err(|err| Failure::io(&err, None))
            })
        })?)
    }

    /// Marks `n` bytes of the last `fill_ring` as read: the sender may
    /// reuse their place.
    fn consume(&self, n: usize) -> PyResult<()> {
        Ok(self.with(|receiver| {
            receiver.consume(n);
            Ok(())
        })?)
    }

    /// After the end of the stream: what arrived (the agent is told).
    fn finish(&self, py: Python<'_>) -> PyResult<SummaryTuple> {
        let receiver = self
            .receiver
            .lock()
            .map_err(|_| Failure::new("Error", "the receiver failed in another thread"))?
            .take()
            .ok_or_else(|| Failure::new("Error", "the stream is already finished"))?;
        let finished = py.detach(|| receiver.finish());
        Ok(summary(&finished.map_err(|err| Failure::client(&err))?))
    }

    /// Closes the end without finishing (the sender sees it gone).
    fn close(&self) {
        if let Ok(mut receiver) = self.receiver.lock() {
            receiver.take();
        }
    }

    /// How the bytes travel.
    #[getter]
    fn transport(&self) -> Option<String> {
        self.with(|receiver| Ok(receiver.transport().to_string()))
            .ok()
    }

    /// The agent-wide channel id.
    #[getter]
    fn channel_id(&self) -> Option<u32> {
        self.with(|receiver| Ok(receiver.channel_id())).ok()
    }

    /// Stream bytes received so far.
    #[getter]
    fn bytes_received(&self) -> u64 {
        self.with(|receiver| Ok(receiver.bytes_received()))
            .unwrap_or(0)
    }
}
