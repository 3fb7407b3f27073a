//! Joins two TCP connections byte for byte, both ways: the stream's
//! direction with `splice(2)` through a pipe, so the agent forwards a
//! cross-node stream without copying it through user space; the reverse
//! direction (credits and the final ack, a few bytes) through a small buffer.
//! That direction is read with `recv`: on the consumer's node the kernel
//! program delivers the consumer's answers into the socket map's queue of the
//! agent's socket, which `splice(2)` does not see. Memory per relay: one pipe
//! and one buffer.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use nix::{
    fcntl::{OFlag, SpliceFFlags, splice},
    unistd::pipe2,
};
use tokio::{io::Interest, net::TcpStream, sync::oneshot};

/// Most bytes moved per `splice` call (a pipe's default capacity).
const CHUNK: usize = 64 * 1024;
/// Buffer of the reverse direction, which carries only frame headers.
const COPY_BUFFER: usize = 4096;

/// How a relay ended.
#[derive(Debug)]
pub struct Relayed {
    /// Bytes from the first connection to the second.
    pub forward: u64,
    /// Bytes from the second to the first.
    pub backward: u64,
    /// The first failure, if either direction failed (the other end is then
    /// closed at once, so that both sides see the break).
    pub error: Option<io::Error>,
}

/// Relays `a` (the sender's side) and `b` (the receiver's) until both
/// directions end. A clean end of one direction is passed on as a half
/// close; a failure ends both. Nothing goes from `a` to `b` before `b`
/// spoke (or hung up): the receiver speaks first, once its socket is
/// spliced (docs/PROTOCOL.md, section 2), and a sender across nodes may
/// have sent its stream into the link before that.
pub async fn relay(a: TcpStream, b: TcpStream, forward: Arc<AtomicU64>) -> Relayed {
    let a = Arc::new(a);
    let b = Arc::new(b);
    let backward = Arc::new(AtomicU64::new(0));
    let (spoke, heard) = oneshot::channel();
    let (ab, ba) = tokio::join!(
        async {
            // Sent, or dropped when that direction ended without a byte.
            let _ = heard.await;
            pump(a.clone(), b.clone(), forward.clone()).await
        },
        copy(b.clone(), a.clone(), backward.clone(), spoke)
    );
    // Both connections close when this returns: the far ends see the end
    // (or, after a failure, an end without the end mark: an error for them).
    let error = ab.err().or(ba.err());
    Relayed {
        forward: forward.load(Ordering::Relaxed),
        backward: backward.load(Ordering::Relaxed),
        error,
    }
}

/// Moves bytes from `from` to `to` until `from` ends, then half-closes `to`.
async fn pump(from: Arc<TcpStream>, to: Arc<TcpStream>, moved: Arc<AtomicU64>) -> io::Result<()> {
    let (pipe_out, pipe_in): (OwnedFd, OwnedFd) =
        pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        // Socket -> pipe.
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe_in.as_fd(), None, CHUNK, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        };
        if filled == 0 {
            // End of stream: pass the half close on.
            shutdown_write(&to);
            return Ok(());
        }
        // Pipe -> socket.
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe_out.as_fd(), None, to.as_fd(), None, left, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => {
                    left -= n;
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
    }
}

/// Moves bytes from `from` to `to` through a buffer until `from` ends, then
/// half-closes `to`; says when `from` first spoke.
async fn copy(
    from: Arc<TcpStream>,
    to: Arc<TcpStream>,
    moved: Arc<AtomicU64>,
    spoke: oneshot::Sender<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut spoke = Some(spoke);
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_read(&mut buf) {
                Ok(n) => break n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        };
        if n == 0 {
            shutdown_write(&to);
            return Ok(());
        }
        if let Some(spoke) = spoke.take() {
            let _ = spoke.send(());
        }
        let mut written = 0;
        while written < n {
            to.writable().await?;
            match to.try_write(&buf[written..n]) {
                Ok(w) => written += w,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Half-closes a socket shared by both directions of a relay: the far end
/// sees the end of this direction while the other keeps flowing.
fn shutdown_write(stream: &TcpStream) {
    let _ = nix::sys::socket::shutdown(stream.as_raw_fd(), nix::sys::socket::Shutdown::Write);
}

/// Sends what starts a prepared stream connection (its [`LinkStart`], and
/// the pairing key's frame if it goes ahead: a few bytes, in one write,
/// nothing else is in the link's buffer then).
///
/// [`LinkStart`]: crate::agent::control::peers::protocol::LinkStart The link may be
/// shared with a function, whose client may have made it blocking (the
/// flag belongs to the open file, not to a descriptor): so the write says
/// `MSG_DONTWAIT` itself.
pub async fn start(stream: &TcpStream, start: &[u8]) -> io::Result<()> {
    let sent = stream
        .async_io(Interest::WRITABLE, || send_start(stream, start))
        .await?;
    started(sent, start)
}

/// [`start`] for a link parked out of the reactor (a link a function kept
/// for the stream's next use): a link between two streams has nothing
/// left to send, so the start goes out at once, and a link that cannot
/// take it now is not sound.
pub fn start_parked(link: &std::net::TcpStream, start: &[u8]) -> io::Result<()> {
    started(send_start(link, start)?, start)
}

fn send_start(link: &impl std::os::fd::AsFd, bytes: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(link).send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

fn started(sent: usize, bytes: &[u8]) -> io::Result<()> {
    if sent == bytes.len() {
        Ok(())
    } else {
        Err(io::ErrorKind::WriteZero.into())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    /// A connected pair: (the relay's side, the far end); the accepting
    /// and the connecting side of any TCP connection a test needs.
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (near, _) = listener.accept().await.unwrap();
        (near, far)
    }

    #[tokio::test]
    async fn nothing_goes_forward_before_the_receiver_spoke() {
        let (a, mut sender) = pair().await;
        let (b, mut receiver) = pair().await;
        let relay = tokio::spawn(relay(a, b, Arc::default()));
        // The sender's stream is there before the receiver said anything.
        sender.write_all(b"stream").await.unwrap();
        let mut byte = [0u8; 1];
        let early =
            tokio::time::timeout(Duration::from_millis(200), receiver.read(&mut byte)).await;
        assert!(
            early.is_err(),
            "bytes went forward before the receiver spoke"
        );
        // The receiver speaks (its credit); then the stream comes.
        receiver.write_all(b"credit").await.unwrap();
        let mut heard = [0u8; 6];
        sender.read_exact(&mut heard).await.unwrap();
        assert_eq!(&heard, b"credit");
        let mut got = [0u8; 6];
        receiver.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"stream");
        drop((sender, receiver));
        let relayed = relay.await.unwrap();
        assert_eq!((relayed.forward, relayed.backward), (6, 6));
    }
}
