//! Waits for a peer to say something, on sockets whose tokio readiness may
//! be stale: a socket that was read outside tokio (descriptors received
//! with `recvmsg`, peeks) or just made can be reported readable with
//! nothing to read. A look that takes nothing (`MSG_PEEK`) tells.

use std::os::fd::{AsRawFd as _, RawFd};

use floki_proto::control::ControlStream;
use tokio::{io::Interest, net::TcpStream};
use tokio_util::either::Either;

/// `Ok` if `fd` has a byte to read or is closed; `WouldBlock` if not yet.
fn something_there(fd: RawFd) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let flags = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
    match nix::sys::socket::recv(fd, &mut byte, flags) {
        Err(nix::errno::Errno::EAGAIN) => Err(std::io::ErrorKind::WouldBlock.into()),
        _ => Ok(()),
    }
}

/// Returns once the agent closes `control` or writes on it: on a kept
/// connection it says nothing unasked but its close.
pub(crate) async fn agent_speaks(control: &ControlStream) {
    let looked = match control {
        Either::Left(tcp) => {
            tcp.async_io(Interest::READABLE, || something_there(tcp.as_raw_fd()))
                .await
        }
        Either::Right(unix) => {
            unix.async_io(Interest::READABLE, || something_there(unix.as_raw_fd()))
                .await
        }
    };
    // An error is the agent gone too.
    drop(looked);
}

/// Returns once `link` has a byte to read or is closed (or failed).
pub(crate) async fn link_speaks(link: &TcpStream) {
    let looked = link
        .async_io(Interest::READABLE, || something_there(link.as_raw_fd()))
        .await;
    drop(looked);
}
