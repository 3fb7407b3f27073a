//! Control connections kept between channels. An agent whose `paired` said
//! `again` takes the end's next hello on the same connection after its
//! `done`: a function that opens one stream after another (a warm function,
//! or one with several peers) spares a connect, an accept and a close on
//! both sides per stream. An end whose stream succeeded and whose final
//! report went out whole (a blocking end's on the caller's thread, an async
//! end's from its task by the time `finish` returns) puts its connection
//! here, with its ring if the stream went over one (the agent
//! pairs the next stream between the same two connections over it again:
//! no memory file, socket pair, mapping or fresh pages). The next end to
//! the same agent in this process takes it, the connection of the same
//! channel first (its peer is the likeliest to have kept the same ring).
//! Across nodes the agents' link of the stream stays with it too, for the
//! same stream's next use.

use std::{
    os::fd::AsFd as _,
    sync::{
        Mutex, MutexGuard, TryLockError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use tokio_util::either::Either;

use floki_proto::{KEY_LEN, handoff::link_established, ring::KeptRing};

use crate::control::DetachedControl;

/// How long a connection waits here for its next channel. The agent keeps
/// an idle connection for 60 s: it never closes one under a hello sent
/// within this.
const KEEP_FOR: Duration = Duration::from_secs(20);
/// The most connections kept idle by one process (the oldest go first).
const MAX_IDLE: usize = 64;
/// The most memory the rings kept with them may hold, per process (the
/// oldest rings go first; their connections stay).
const MAX_RING_BYTES: u64 = 64 << 20;

struct Idle {
    /// A consumer's held link and its connection in the watcher's set
    /// (first, so that it leaves the set before they close).
    watch: Option<crate::held_watch::Watch>,
    /// Which entry this is, for the watcher.
    id: u64,
    agent: String,
    /// The stream the connection last carried ([`stream_of`]).
    stream: String,
    control: DetachedControl,
    ring: Option<KeptRing>,
    link: Option<KeptLink>,
    since: Instant,
}

impl Idle {
    /// Whether it holds what only its own stream can use again.
    fn holds(&self) -> bool {
        self.ring.is_some() || self.link.is_some()
    }
}

/// A connection kept for the next channel, and the ring or the agents'
/// link of its last one.
pub(crate) struct Kept {
    pub control: DetachedControl,
    pub ring: Option<KeptRing>,
    pub link: Option<KeptLink>,
    /// Its last stream is the one it is taken for: its ring may carry that
    /// stream again without the agent (docs/PROTOCOL.md, "Held rings").
    pub same_stream: bool,
}

impl Kept {
    /// A connection kept without a ring or link.
    pub fn bare(control: DetachedControl) -> Self {
        Self {
            control,
            ring: None,
            link: None,
            same_stream: false,
        }
    }
}

/// The agents' link of a stream across nodes, kept after a verified stream
/// for the stream's next use, with what that use needs to go without the
/// agent: the pairing key the link's streams present, and the window.
pub(crate) struct KeptLink {
    pub conn: std::net::TcpStream,
    pub key: [u8; KEY_LEN],
    pub window: u64,
    /// A consumer's: its agent left the link to it, so it is watched while
    /// idle ([`crate::held_watch`]).
    pub watched: bool,
    /// A consumer's that was given back to its agent's watch (its next
    /// start came while idle): the next receiver says hello with it.
    pub given_back: bool,
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

/// The pool, if it can be had: never waited for without bound. A child
/// forked while another thread of its parent held the lock would wait for
/// ever; it keeps and takes no connection instead.
fn pool() -> Option<MutexGuard<'static, Pool>> {
    let mut pool = (0..LOCK_TRIES).find_map(|_| match POOL.try_lock() {
        Ok(pool) => Some(pool),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => {
            std::thread::yield_now();
            None
        }
    })?;
    let pid = std::process::id();
    if pool.pid != pid {
        // Inherited across a fork: the parent still uses them. Closing
        // this process's copies leaves the parent's connections open.
        pool.idle.clear();
        pool.pid = pid;
    }
    Some(pool)
}

/// Attempts at the pool's lock, held for a few list operations at a time.
const LOCK_TRIES: usize = 1000;

/// Closes every connection this process keeps to agents between channels,
/// with the rings and links kept with them: the next channel opens a new
/// connection. For a process about to be frozen or to fork, or one that
/// counts its agent's descriptors and memory.
pub fn close_kept_connections() {
    if let Some(mut pool) = pool() {
        pool.idle.clear();
    }
}

/// Keeps `kept` (to `agent`, its end of `stream` finished) for the next
/// channel.
pub(crate) fn put(agent: String, stream: String, kept: Kept) {
    let Some(mut pool) = pool() else {
        return;
    };
    if pool.idle.len() >= MAX_IDLE {
        pool.idle.remove(0);
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let watch = match &kept.link {
        Some(link) if link.watched => {
            // A held link nobody watches would hold its next stream up: if
            // it cannot be watched, the connection goes (and its agent
            // watches the link again).
            let Some(watch) =
                crate::held_watch::Watch::start(id, control_fd(&kept.control), link.conn.as_fd())
            else {
                return;
            };
            Some(watch)
        }
        _ => None,
    };
    pool.idle.push(Idle {
        watch,
        id,
        agent,
        stream,
        control: kept.control,
        ring: kept.ring,
        link: kept.link,
        since: Instant::now(),
    });
    let mut held: u64 = pool
        .idle
        .iter()
        .filter_map(|idle| idle.ring.as_ref().map(KeptRing::footprint))
        .sum();
    for idle in &mut pool.idle {
        if held <= MAX_RING_BYTES {
            break;
        }
        if let Some(ring) = idle.ring.take() {
            held -= ring.footprint();
        }
    }
}

/// A kept connection to `agent` that is still open: the one that last
/// carried `stream` (with its ring or link; as the same end, `sender`, if
/// one did: a function with both ends of a stream keeps two), else the most recent one
/// without either, else, if `steal`, the oldest one, with its ring but not
/// its link (a link carries one stream only; they were kept for another
/// stream, which has not come back since). A ring carries any channel: if
/// the other end of this one took the connection that shared it (the same
/// two processes, a new channel name), the agent rewinds it for them;
/// otherwise it makes a new one and the end drops this.
pub(crate) fn take(agent: &str, stream: &str, sender: Option<bool>, steal: bool) -> Option<Kept> {
    let mut pool = pool()?;
    let now = Instant::now();
    pool.idle
        .retain(|idle| now.duration_since(idle.since) < KEEP_FOR);
    loop {
        let idle = &pool.idle;
        let same = |idle: &Idle| idle.agent == agent && idle.stream == stream;
        let as_same_end = |idle: &Idle| {
            idle.ring
                .as_ref()
                .is_none_or(|ring| Some(ring.kept_by_sender()) == sender)
        };
        let (at, theirs, same_stream) = match idle
            .iter()
            .rposition(|idle| same(idle) && as_same_end(idle))
            .or_else(|| idle.iter().rposition(same))
        {
            Some(at) => (at, false, true),
            None => match idle
                .iter()
                .rposition(|idle| idle.agent == agent && !idle.holds())
            {
                Some(at) => (at, false, false),
                None if steal => (
                    idle.iter().position(|idle| idle.agent == agent)?,
                    true,
                    false,
                ),
                None => return None,
            },
        };
        let mut idle = pool.idle.remove(at);
        if idle
            .link
            .as_ref()
            .is_some_and(|link| !link_established(link.conn.as_fd()))
        {
            idle.link = None;
        }
        if quiet(&idle.control) {
            return Some(Kept {
                control: idle.control,
                ring: idle.ring,
                link: idle.link.filter(|_| !theirs),
                same_stream,
            });
        }
    }
}

/// Ids of idle entries, for the watcher.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The watcher saw something to read on the idle connection `id` (or on
/// its held link, `on_link`). A start on the link is given back to the
/// agent (`give_back`): the connection stays kept with the link, which its
/// next receiver of the stream says hello with. Anything else (a word from
/// the agent, a close) gives the connection up: closed, so that its agent
/// takes the link back.
pub(crate) fn woke(id: u64, on_link: bool) {
    let Some(mut pool) = pool() else {
        return;
    };
    let Some(at) = pool.idle.iter().position(|idle| idle.id == id) else {
        return;
    };
    if !(on_link && give_back(&mut pool.idle[at])) {
        pool.idle.remove(at);
    }
}

/// Tells the agent of `idle` that its link is the agent's to read again;
/// whether the whole message went.
fn give_back(idle: &mut Idle) -> bool {
    let request = floki_proto::control::ClientRequest::GiveBack { give_back: true };
    let Ok(message) = floki_proto::control::encode_message(&request, floki_proto::MAX_MESSAGE_LEN)
    else {
        return false;
    };
    if !matches!(crate::reporter::try_write_detached(&idle.control, &message), Ok(n) if n == message.len())
    {
        return false;
    }
    idle.watch = None;
    if let Some(link) = &mut idle.link {
        link.given_back = true;
    }
    true
}

/// What a kept connection is kept under besides its agent: the stream it
/// carried (a workflow edge's streams share the channel's name in the
/// options, and differ by their functions).
pub(crate) fn stream_of(opts: &crate::ChannelOptions) -> String {
    match &opts.stream {
        Some(stream) => format!(
            "{}/{}/{}/{}",
            stream.workflow, stream.edge, stream.function, stream.peer
        ),
        None => opts.channel.clone(),
    }
}

/// The descriptor of a detached control connection.
fn control_fd(control: &DetachedControl) -> std::os::fd::BorrowedFd<'_> {
    match control {
        Either::Left(tcp) => tcp.as_fd(),
        Either::Right(unix) => unix.as_fd(),
    }
}

/// Whether the agent has said nothing on an idle connection: anything to
/// read (its close, at its idle limit or on its restart) means it is over.
fn quiet(control: &DetachedControl) -> bool {
    let mut fds = [PollFd::new(control_fd(control), PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (DetachedControl, std::os::unix::net::UnixStream) {
        let (ours, agent) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        (Either::Right(ours), agent)
    }

    fn inode(control: &DetachedControl) -> u64 {
        let Either::Right(unix) = control else {
            unreachable!("a Unix socket")
        };
        nix::sys::stat::fstat(unix).expect("fstat").st_ino
    }

    #[test]
    fn a_connection_comes_back_for_its_agent_only_while_the_agent_keeps_it() {
        let (open, _agent_a) = pair();
        let one = inode(&open);
        let (closed, agent_b) = pair();
        let (other, _agent_c) = pair();
        let kept = Kept::bare;
        put("unix:/a".into(), "one".into(), kept(open));
        put("unix:/a".into(), "two".into(), kept(other));
        put("unix:/b".into(), "one".into(), kept(closed));
        drop(agent_b);
        assert!(
            take("unix:/c", "one", None, true).is_none(),
            "no connection to that agent"
        );
        assert!(
            take("unix:/b", "one", None, true).is_none(),
            "the agent closed it: not taken, and dropped"
        );
        let first = take("unix:/a", "one", None, false).expect("still open: taken");
        assert_eq!(
            inode(&first.control),
            one,
            "the stream's own connection first"
        );
        assert!(
            take("unix:/a", "one", None, false).is_some(),
            "another stream's without a ring, then"
        );
        assert!(
            take("unix:/a", "one", None, true).is_none(),
            "each taken once"
        );
    }
}
