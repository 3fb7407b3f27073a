//! Buffers kept between a process's streams over sockets: senders' gather
//! buffers and blocking receivers' read buffers. A small write over a
//! socket is gathered into a buffer before it goes out as a frame (see
//! [`crate::GATHER_FOR_SOCKET`]), and a blocking receiver reads into a
//! buffer that grows while a bulk stream fills it; a fresh buffer for
//! every stream costs a page fault per 4 KiB it touches, more than the
//! copy itself for a stream of one small write, and a receiver's first
//! reads would be small again. So a finished end's buffer goes back here
//! and the next end takes it, its pages already touched.

use std::sync::Mutex;

/// Buffers kept at most: one per stream a function has open at once.
const KEPT: usize = 16;
/// Larger buffers (one that held a whole window before its receiver came)
/// are freed.
const LARGEST: usize = 1 << 20;

static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer, one kept from an earlier end if there is one.
pub(crate) fn take() -> Vec<u8> {
    // Never waits: a child forked while its parent held the lock would
    // wait for ever, and a new buffer is only slower.
    SPARE
        .try_lock()
        .ok()
        .and_then(|mut spare| spare.pop())
        .unwrap_or_default()
}

/// Keeps `buf` for the next end (emptied), unless it is large or enough
/// are kept.
pub(crate) fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > LARGEST {
        return;
    }
    if let Ok(mut spare) = SPARE.try_lock()
        && spare.len() < KEPT
    {
        buf.clear();
        spare.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_and_a_large_one_is_not() {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(b"old bytes");
        let at = buf.as_ptr();
        give_back(buf);
        give_back(Vec::with_capacity(LARGEST + 1));
        // Other tests of this process may take buffers too: look for ours.
        let taken: Vec<Vec<u8>> = (0..KEPT).map(|_| take()).collect();
        let ours = taken
            .iter()
            .find(|buf| buf.as_ptr() == at)
            .expect("the buffer given back");
        assert!(ours.is_empty(), "given back emptied");
        assert!(taken.iter().all(|buf| buf.capacity() <= LARGEST));
    }
}
