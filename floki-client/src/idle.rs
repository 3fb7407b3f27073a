//! Control connections kept between channels. An agent whose `paired` said
//! `again` takes the end's next hello on the same connection after its
//! `done`: a function that opens one stream after another (a warm function,
//! or one with several peers) spares a connect, an accept and a close on
//! both sides per stream. Only a blocking end whose stream succeeded and
//! whose final report went out whole on the caller's thread puts its
//! connection here; the next end to the same agent in this process takes it.

use std::{
    os::fd::AsFd as _,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use tokio_util::either::Either;

use crate::control::DetachedControl;

/// How long a connection waits here for its next channel. The agent keeps
/// an idle connection for 60 s: it never closes one under a hello sent
/// within this.
const KEEP_FOR: Duration = Duration::from_secs(20);
/// The most connections kept idle by one process (the oldest go first).
const MAX_IDLE: usize = 64;

struct Idle {
    agent: String,
    control: DetachedControl,
    since: Instant,
}

/// The connections of this process (a forked child starts without them: a
/// connection must have one writer).
struct Pool {
    pid: u32,
    idle: Vec<Idle>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    pid: 0,
    idle: Vec::new(),
});

fn pool() -> MutexGuard<'static, Pool> {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    if pool.pid != pid {
        // Inherited across a fork: the parent still uses them. Closing
        // this process's copies leaves the parent's connections open.
        pool.idle.clear();
        pool.pid = pid;
    }
    pool
}

/// Keeps `control` (to `agent`, its end finished) for the next channel.
pub(crate) fn put(agent: String, control: DetachedControl) {
    let mut pool = pool();
    if pool.idle.len() >= MAX_IDLE {
        pool.idle.remove(0);
    }
    pool.idle.push(Idle {
        agent,
        control,
        since: Instant::now(),
    });
}

/// A kept connection to `agent` that is still open, the most recent first.
pub(crate) fn take(agent: &str) -> Option<DetachedControl> {
    let mut pool = pool();
    let now = Instant::now();
    pool.idle
        .retain(|idle| now.duration_since(idle.since) < KEEP_FOR);
    while let Some(at) = pool.idle.iter().rposition(|idle| idle.agent == agent) {
        let idle = pool.idle.remove(at);
        if quiet(&idle.control) {
            return Some(idle.control);
        }
    }
    None
}

/// Whether the agent has said nothing on an idle connection: anything to
/// read (its close, at its idle limit or on its restart) means it is over.
fn quiet(control: &DetachedControl) -> bool {
    let fd = match control {
        Either::Left(tcp) => tcp.as_fd(),
        Either::Right(unix) => unix.as_fd(),
    };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (DetachedControl, std::os::unix::net::UnixStream) {
        let (ours, agent) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        (Either::Right(ours), agent)
    }

    #[test]
    fn a_connection_comes_back_for_its_agent_only_while_the_agent_keeps_it() {
        let (open, _agent_a) = pair();
        let (closed, agent_b) = pair();
        put("unix:/a".into(), open);
        put("unix:/b".into(), closed);
        drop(agent_b);
        assert!(take("unix:/c").is_none(), "no connection to that agent");
        assert!(
            take("unix:/b").is_none(),
            "the agent closed it: not taken, and dropped"
        );
        assert!(take("unix:/a").is_some(), "still open: taken");
        assert!(take("unix:/a").is_none(), "taken once");
    }
}
