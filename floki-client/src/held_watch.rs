//! Watches the links consumers of this process hold while no receiver reads
//! them (docs/PROTOCOL.md, "Held links"). A consumer that kept its stream's
//! link reads the stream's next start itself, so its agent does not watch
//! that link. While the connection waits in [`crate::idle`] for the
//! process's next receiver, a start on the link (a producer came first) is
//! given back with a word on the connection (`give_back`): the agent
//! watches the link again and serves the start, and the connection stays
//! kept with the link, which the process's next receiver of the stream
//! says hello with (its agent hands it the started link in place). A word
//! from the agent (the stream started on another link, or the agent is
//! going) closes the connection, which gives the link back too.
//!
//! One thread per process sleeps on all those connections in one epoll
//! set. Taking a connection for a receiver removes it from the set (one
//! system call, no wake-up of the thread); the thread wakes only when an
//! idle one has something to read.

use std::{
    os::fd::{AsFd, BorrowedFd},
    sync::OnceLock,
};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// The epoll set of this process's watched connections.
struct Watcher {
    epoll: Epoll,
    /// The process that made it: a forked child shares the set with its
    /// parent and must not change it.
    pid: u32,
}

static WATCHER: OnceLock<Option<Watcher>> = OnceLock::new();

/// The watcher, started on first use; `None` if the kernel refused the set
/// or the thread (the links are then not held: see [`Watch::start`]).
fn watcher() -> Option<&'static Watcher> {
    WATCHER
        .get_or_init(|| {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).ok()?;
            std::thread::Builder::new()
                .name("floki-held-links".into())
                .spawn(watch_forever)
                .ok()?;
            Some(Watcher {
                epoll,
                pid: std::process::id(),
            })
        })
        .as_ref()
}

/// The watcher thread: each idle connection with something to read is
/// given up (see the module doc).
fn watch_forever() {
    let mut events = [EpollEvent::empty(); 64];
    loop {
        // Set by the thread that spawned this one before any connection
        // is added.
        let Some(Some(watcher)) = WATCHER.get() else {
            std::thread::yield_now();
            continue;
        };
        let Ok(n) = watcher.epoll.wait(&mut events, EpollTimeout::NONE) else {
            continue;
        };
        for event in &events[..n] {
            let data = event.data();
            crate::idle::woke(data >> 1, data & 1 == 1);
        }
    }
}

/// A connection and its held link in the watcher's set, until dropped.
pub(crate) struct Watch {
    control: std::os::fd::RawFd,
    link: std::os::fd::RawFd,
}

impl Watch {
    /// Adds `control` and `link` to the set under `id`; `None` if they
    /// could not be (the caller then keeps neither: a held link nobody
    /// watches would hold its stream up).
    pub fn start(id: u64, control: BorrowedFd<'_>, link: BorrowedFd<'_>) -> Option<Self> {
        use std::os::fd::AsRawFd as _;
        let watcher = watcher()?;
        // One report per connection: it is given up at the first.
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        // Which of the two woke the thread is in the lowest bit.
        watcher
            .epoll
            .add(control, EpollEvent::new(flags, id << 1))
            .ok()?;
        if watcher
            .epoll
            .add(link, EpollEvent::new(flags, id << 1 | 1))
            .is_err()
        {
            let _ = watcher.epoll.delete(control);
            return None;
        }
        Some(Self {
            control: control.as_raw_fd(),
            link: link.as_raw_fd(),
        })
    }
}

impl Drop for Watch {
    /// Out of the set, while both descriptors are still open: a link came
    /// from the agent, which holds the same open file, so closing ours
    /// would not take it out.
    fn drop(&mut self) {
        let Some(Some(watcher)) = WATCHER.get() else {
            return;
        };
        if watcher.pid != std::process::id() {
            return;
        }
        for fd in [self.control, self.link] {
            // SAFETY: the descriptors belong to the idle entry this watch
            // is part of, which closes them only after dropping this.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = watcher.epoll.delete(fd.as_fd());
        }
    }
}
