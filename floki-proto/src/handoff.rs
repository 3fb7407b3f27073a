//! Descriptor hand-off on the agent's Unix socket: after an `accepted` or
//! `paired` message that names a [`Handoff`], the agent sends one byte that
//! carries the descriptors (`SCM_RIGHTS`). The client then owns them: the
//! data path runs between the functions' own sockets (or their shared ring).
//! The agent keeps a copy of two kinds only, neither of which it reads while
//! a stream runs: a ring's memory file (for status and to rewind it), and
//! the agents' link of a stream across nodes (which may carry the stream's
//! next use, [`link_established`]).

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use tokio::{io::Interest, net::UnixStream};

/// What kind of socket follows a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handoff {
    /// A listening TCP socket: the receiver accepts its sender's data
    /// connection on it (same node).
    Listener,
    /// A connected TCP socket: the data connection itself (a sender's, or
    /// either end of the link between two nodes' agents).
    Connection,
    /// Two descriptors: the shared-memory ring of the `shm` transport (a
    /// memory file) and this end of the socket pair beside it.
    Ring,
    /// None: the ring of this end's last channel on this control
    /// connection, which the end kept and the agent rewound (the hello said
    /// `kept_ring`; docs/PROTOCOL.md, "Kept connections").
    KeptRing,
    /// None: the link of this end's last stream on this control
    /// connection, which the end kept and the agent started again (the
    /// hello said `kept_link`; docs/PROTOCOL.md, "Kept connections").
    KeptLink,
}

impl Handoff {
    /// How many descriptors follow.
    pub fn descriptors(self) -> usize {
        match self {
            Self::Listener | Self::Connection => 1,
            Self::Ring => 2,
            Self::KeptRing | Self::KeptLink => 0,
        }
    }
}

/// The byte that carries the descriptor.
const CARRIER: u8 = 0;

/// Sends `socket` to the client at the other end of `stream`.
pub async fn send_socket(stream: &UnixStream, socket: BorrowedFd<'_>) -> io::Result<()> {
    send_fds(stream, &[socket]).await
}

/// Sends descriptors to the client at the other end of `stream`, in one
/// message.
pub async fn send_fds(stream: &UnixStream, descriptors: &[BorrowedFd<'_>]) -> io::Result<()> {
    let fds: Vec<RawFd> = descriptors.iter().map(|fd| fd.as_raw_fd()).collect();
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[IoSlice::new(&[CARRIER])],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        })
        .await?;
    if sent == 1 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the socket hand-off was not sent",
        ))
    }
}

/// Receives the socket the agent sends after a message naming a hand-off.
pub async fn recv_socket(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut fds = recv_fds(stream, 1).await?;
    Ok(fds.remove(0))
}

/// Receives the `count` descriptors the agent sends after a message naming
/// a hand-off.
pub async fn recv_fds(stream: &UnixStream, count: usize) -> io::Result<Vec<OwnedFd>> {
    stream
        .async_io(Interest::READABLE, || {
            let mut byte = [0u8; 1];
            let mut iov = [IoSliceMut::new(&mut byte)];
            let mut space = nix::cmsg_space!([RawFd; 2]);
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            if msg.bytes == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut received = Vec::new();
            for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    for fd in fds {
                        // SAFETY: the kernel just installed `fd` in this
                        // process for us; nothing else owns it.
                        received.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            if received.len() == count {
                Ok(received)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the agent announced {count} descriptors but sent {}",
                        received.len()
                    ),
                ))
            }
        })
        .await
}

/// Whether the kernel has the TCP connection `link` in the established
/// state: neither end shut its side down and nothing reset it, so it may
/// carry another stream (docs/PROTOCOL.md, "Kept connections").
pub fn link_established(link: BorrowedFd<'_>) -> bool {
    /// `TCP_ESTABLISHED` of the kernel's `include/net/tcp_states.h`.
    const ESTABLISHED: u8 = 1;
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable `tcp_info` of `len` bytes, and `link`
    // is an open descriptor for the duration of the call.
    let got = unsafe {
        libc::getsockopt(
            link.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // SAFETY: zeroed, then filled by the kernel up to `len`; every field is
    // an integer, valid whatever its bytes.
    got == 0 && unsafe { info.assume_init() }.tcpi_state == ESTABLISHED
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn a_socket_crosses_and_works() {
        let (agent, client) = UnixStream::pair().expect("pair");
        let (mut kept, handed) = UnixStream::pair().expect("pair");
        send_socket(&agent, handed.as_fd()).await.expect("send");
        drop(handed);
        let fd = recv_socket(&client).await.expect("receive");
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true).expect("nonblocking");
        let mut received = UnixStream::from_std(std).expect("tokio");
        received.write_all(b"over").await.expect("write");
        let mut buf = [0u8; 4];
        kept.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"over");
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error() {
        let (mut agent, client) = UnixStream::pair().expect("pair");
        agent.write_all(&[CARRIER]).await.expect("write");
        let err = recv_socket(&client).await.expect_err("no descriptor");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
