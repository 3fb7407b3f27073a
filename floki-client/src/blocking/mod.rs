//! The client for code without an async runtime: `std::io::Write` /
//! `std::io::Read` on blocking sockets, or on a ring in shared memory when
//! both ends are on the agent's Unix socket (`shm`). Setting up a channel and
//! reporting to the agent run on a small background runtime; the stream
//! itself is plain blocking reads and writes, one system call per message at
//! best.
//!
//! ```no_run
//! use std::io::{Read as _, Write as _};
//! use floki_client::{ChannelOptions, blocking};
//!
//! let opts = ChannelOptions::new("127.0.0.1:7878", "results");
//! let mut tx = blocking::Sender::connect(&opts)?;
//! tx.write_all(b"hello")?;
//! tx.finish()?; // returns once the receiver verified the stream
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Don't call these from inside a tokio runtime: use the async client there.

mod receiver;
mod sender;

use std::{io, net::TcpStream, sync::OnceLock};

use tokio::runtime::Runtime;

pub use receiver::Receiver;
pub use sender::Sender;

use crate::ClientError;

/// Runs channel set-up and the agent reports for blocking clients.
pub(crate) fn background() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("floki-client")
            .enable_all()
            .build()
            .expect("starting the Floki client's background runtime")
    })
}

/// Runs `future` (a channel's set-up) on the calling thread, on a small
/// runtime of the thread's own: each message of the set-up is then read by
/// the thread that waits for it, instead of by the background runtime's
/// thread that then wakes it (a round trip on a 2-vCPU VM: 7 µs here,
/// 56 µs through the background runtime). What outlives the set-up moves
/// to the background runtime: the reports, and the sender's pairing.
pub(crate) fn on_this_thread<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static SETUP: Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("starting the Floki client's set-up runtime");
    }
    SETUP.with(|runtime| runtime.block_on(future))
}

/// Turns an established (tokio) data connection into a blocking one.
fn into_blocking(data: tokio::net::TcpStream, channel: &str) -> Result<TcpStream, ClientError> {
    let io_err = |source| ClientError::Io {
        channel: channel.to_owned(),
        context: "switching the data connection to blocking mode",
        source,
    };
    let stream = data.into_std().map_err(io_err)?;
    stream.set_nonblocking(false).map_err(io_err)?;
    Ok(stream)
}

/// Reads from a blocking socket, retrying interrupted reads.
fn read_retrying(stream: &mut TcpStream, into: &mut [u8]) -> io::Result<usize> {
    use std::io::Read as _;
    loop {
        match stream.read(into) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
