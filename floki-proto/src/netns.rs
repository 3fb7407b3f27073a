//! The network namespace of a socket, as a client reports it in its hello.

use std::{io, mem, os::fd::AsRawFd};

/// Cookie of the network namespace `socket` lives in (`SO_NETNS_COOKIE`,
/// Linux 5.14+). The agent keys its endpoints with it so that identical
/// addresses in two namespaces never collide.
pub fn netns_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length for an 8-byte option.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}
