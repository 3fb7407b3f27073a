//! The native core of the `floki` Python package: the blocking client of
//! `floki-client` behind a small PyO3 module, `floki._floki`. The Python
//! package (`python/floki`) builds the API on it: file-like `Sender` and
//! `Receiver`, workflow edges, one-call helpers, exceptions.
//!
//! Every call that can wait or copy a stream's bytes releases the GIL;
//! buffers are read and filled in place.

mod buffer;
mod edge;
mod errors;
mod options;
mod receiver;
mod sender;

use pyo3::prelude::*;

/// Closes the connections this process keeps to agents between channels,
/// with their rings (`floki_client::close_kept_connections`).
#[pyfunction]
fn close_kept_connections() {
    floki_client::close_kept_connections();
}

/// `floki._floki`.
#[pymodule]
fn _floki(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<sender::NativeSender>()?;
    module.add_class::<receiver::NativeReceiver>()?;
    module.add_function(wrap_pyfunction!(edge::describe, module)?)?;
    module.add_function(wrap_pyfunction!(edge::senders, module)?)?;
    module.add_function(wrap_pyfunction!(edge::receivers, module)?)?;
    module.add_function(wrap_pyfunction!(close_kept_connections, module)?)?;
    module.add("DEFAULT_AGENT", floki_client::DEFAULT_AGENT)?;
    module.add("RING_HEADER_LEN", floki_proto::ring::HEADER_LEN)?;
    Ok(())
}
