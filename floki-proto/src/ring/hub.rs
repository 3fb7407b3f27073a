//! Async waits on rings without a thread each. A hub thread sleeps on up to
//! [`PER_HUB`] rings' futexes at once (`futex_waitv`, Linux 5.16) and wakes
//! the task of each ring whose futex moved. Every [`LIVENESS`] it also
//! polls the waiting ends' peer sockets, all at once, and wakes an end whose
//! peer hung up (or sent a reason), so that it fails instead of waiting.
//! Those looks are batched ([`LOOK_AHEAD`]): a hub of idle waits wakes a few
//! times per period, not once for each wait.
//! More waits than a hub holds start another hub; a hub stays for the
//! process's life, asleep when it has nothing to wait on.
//!
//! (Before this, each async wait held a thread of tokio's blocking pool: a
//! process with more waiting ends than the pool's 512 threads queued new
//! channels behind them.)

use std::{
    io,
    os::fd::AsFd as _,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    task::Waker,
    time::{Duration, Instant},
};

use super::{LIVENESS, Mapped, wait::Awaited, wait::futex_wake};

/// Futexes a hub sleeps on besides its own bell: the kernel's limit is 128.
const PER_HUB: usize = 127;
/// `futex_waitv` flag: a 32-bit word. Never `FUTEX2_PRIVATE`, not even for
/// the bell: a private wait is not woken by the shared `FUTEX_WAKE` that
/// rings use.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// Without `futex_waitv` (a kernel before 5.16), a hub looks at its rings
/// this often.
const FALLBACK_POLL: Duration = Duration::from_millis(1);
/// When a hub looks at its waits' peers, it also looks at those whose
/// [`LIVENESS`] period ends within this much: each is still looked at
/// within its period, and a hub wakes at most about twice a period for
/// them. (Each wait's period starts when it joins: looked at one by one,
/// the 127 idle waits of a full hub woke it every 0.4 ms, each wake
/// re-registering 128 futexes with the kernel; 1,000 idle receivers in a
/// process took a fifth of this two-core machine.)
const LOOK_AHEAD: Duration = Duration::from_millis(LIVENESS.as_millis() as u64 / 2);

/// One async end's place in a hub, kept between its polls. Dropping it (or
/// registering another wait) takes its wait out of the hub, and with it the
/// hub's hold on the ring: an end dropped while it waits closes its side of
/// the socket pair at once, so that its peer sees it gone.
#[derive(Default)]
pub struct HubSlot(Option<Registered>);

/// A wait in a hub, as its end sees it.
struct Registered {
    slot: Arc<Slot>,
    awaited: Awaited,
    hub: Arc<Hub>,
}

/// What a registered wait shares with its hub.
struct Slot {
    fired: AtomicBool,
    /// Its end no longer waits: the hub drops it without waking anyone.
    abandoned: AtomicBool,
    waker: Mutex<Waker>,
}

/// Where a [`HubSlot`]'s wait stands.
pub(super) enum SlotState {
    /// Not registered.
    Empty,
    /// In a hub, not fired yet.
    Waiting,
    /// The hub woke it: its futex moved, or its peer's socket stirred.
    Fired,
}

impl HubSlot {
    /// Where the wait for `awaited` stands (a wait registered for
    /// something else counts as none: it fires harmlessly later).
    pub(super) fn state(&self, awaited: Awaited) -> SlotState {
        match &self.0 {
            Some(registered) if registered.awaited == awaited => {
                if registered.slot.fired.load(Ordering::Acquire) {
                    SlotState::Fired
                } else {
                    SlotState::Waiting
                }
            }
            _ => SlotState::Empty,
        }
    }

    /// Takes the wait out of its hub (if it is still there).
    pub(super) fn clear(&mut self) {
        if let Some(registered) = self.0.take()
            && !registered.slot.fired.load(Ordering::Acquire)
        {
            registered.slot.abandoned.store(true, Ordering::Release);
            registered.hub.ring_bell();
        }
    }

    /// The task to wake may have changed between polls.
    pub(super) fn update_waker(&self, waker: &Waker) {
        if let Some(registered) = &self.0 {
            let mut current = lock(&registered.slot.waker);
            if !current.will_wake(waker) {
                current.clone_from(waker);
            }
        }
    }

    /// Puts the wait in a hub: `waker` is woken once `awaited`'s futex no
    /// longer holds `seen`, or once the ring's peer socket stirs.
    pub(super) fn register(
        &mut self,
        ring: Arc<Mapped>,
        awaited: Awaited,
        seen: u32,
        waker: &Waker,
    ) {
        self.clear();
        let slot = Arc::new(Slot {
            fired: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            waker: Mutex::new(waker.clone()),
        });
        let hub = Hub::register(Entry {
            ring,
            awaited,
            seen,
            since: Instant::now(),
            stirred: false,
            slot: slot.clone(),
        });
        self.0 = Some(Registered { slot, awaited, hub });
    }
}

impl Drop for HubSlot {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A wait in a hub.
struct Entry {
    /// Keeps the futex word mapped while the hub sleeps on it.
    ring: Arc<Mapped>,
    awaited: Awaited,
    seen: u32,
    /// When its current [`LIVENESS`] period began.
    since: Instant,
    /// Its peer's socket had something to say.
    stirred: bool,
    slot: Arc<Slot>,
}

impl Entry {
    fn word(&self) -> &AtomicU32 {
        self.awaited.futex(&self.ring)
    }
}

/// A thread and the waits it sleeps on.
struct Hub {
    entries: Mutex<Vec<Entry>>,
    /// Bumped (and woken) when a wait joins, so that the thread sleeps on
    /// the new list.
    bell: AtomicU32,
    /// Times the thread woke up.
    #[cfg(test)]
    wakes: std::sync::atomic::AtomicU64,
}

/// Every hub of the process.
static HUBS: Mutex<Vec<Arc<Hub>>> = Mutex::new(Vec::new());

impl Hub {
    /// Adds `entry` to a hub with room (a new one if none has); that hub.
    fn register(entry: Entry) -> Arc<Self> {
        let mut hubs = lock(&HUBS);
        let hub = match hubs.iter().find(|hub| lock(&hub.entries).len() < PER_HUB) {
            Some(hub) => hub.clone(),
            None => {
                let hub = Arc::new(Self {
                    entries: Mutex::new(Vec::with_capacity(PER_HUB)),
                    bell: AtomicU32::new(0),
                    #[cfg(test)]
                    wakes: Default::default(),
                });
                let running = hub.clone();
                std::thread::Builder::new()
                    .name("floki-ring-hub".into())
                    .spawn(move || running.run())
                    .expect("starting a ring hub thread");
                hubs.push(hub.clone());
                hub
            }
        };
        lock(&hub.entries).push(entry);
        hub.ring_bell();
        hub
    }

    /// Makes the thread look at its list again.
    fn ring_bell(&self) {
        self.bell.fetch_add(1, Ordering::SeqCst);
        futex_wake(&self.bell);
    }

    fn run(&self) {
        let mut waits: Vec<FutexWaitv> = Vec::with_capacity(PER_HUB + 1);
        let mut fallback = false;
        loop {
            let bell = self.bell.load(Ordering::SeqCst);
            let deadline = {
                let entries = lock(&self.entries);
                waits.clear();
                waits.push(FutexWaitv::new(&self.bell, bell));
                waits.extend(entries.iter().map(|e| FutexWaitv::new(e.word(), e.seen)));
                entries.iter().map(|e| e.since + LIVENESS).min()
            };
            let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
            if fallback {
                let nap = timeout.map_or(FALLBACK_POLL, |t| t.min(FALLBACK_POLL));
                super::wait::futex_wait(&self.bell, bell, nap);
            } else if futex_waitv(&waits, timeout).is_err() {
                // ENOSYS on a kernel before 5.16; anything else unexpected
                // must not make this loop spin either.
                fallback = true;
            }
            self.fire_due();
        }
    }

    /// Drops the waits whose ends left; wakes (and drops) every wait whose
    /// futex moved, or whose peer's
    /// socket says something (it hung up, or sent a reason) once its
    /// [`LIVENESS`] period is up or about to be ([`LOOK_AHEAD`]); the
    /// others' periods start again. One `poll` for all of them: a waiting
    /// end is woken only when there is something to see.
    fn fire_due(&self) {
        #[cfg(test)]
        self.wakes.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut fired = Vec::new();
        {
            let mut entries = lock(&self.entries);
            let looked_at: Vec<usize> = (0..entries.len())
                .filter(|&at| now + LOOK_AHEAD >= entries[at].since + LIVENESS)
                .collect();
            let stirred = peers_stirred(&entries, &looked_at);
            for (&at, stirred) in looked_at.iter().zip(stirred) {
                // Or what it waits for came without a wake: the agent
                // withdraws a held ring through the file, waking nobody.
                if stirred || entries[at].awaited.holds(&entries[at].ring) {
                    entries[at].stirred = true;
                } else {
                    entries[at].since = now;
                }
            }
            entries.retain(|entry| {
                if entry.slot.abandoned.load(Ordering::Acquire) {
                    return false;
                }
                let due = entry.stirred || entry.word().load(Ordering::Acquire) != entry.seen;
                if due {
                    fired.push(entry.slot.clone());
                }
                !due
            });
        }
        for slot in fired {
            slot.fired.store(true, Ordering::Release);
            lock(&slot.waker).wake_by_ref();
        }
    }
}

/// For each entry at `at`: whether its peer's socket has something to say
/// (a hang-up, an error or bytes). If `poll` itself fails, all of them: the
/// ends look for themselves.
fn peers_stirred(entries: &[Entry], at: &[usize]) -> Vec<bool> {
    if at.is_empty() {
        return Vec::new();
    }
    let mut fds: Vec<nix::poll::PollFd<'_>> = at
        .iter()
        .map(|&i| {
            nix::poll::PollFd::new(entries[i].ring.peer.as_fd(), nix::poll::PollFlags::POLLIN)
        })
        .collect();
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
        Ok(_) => fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|events| !events.is_empty()))
            .collect(),
        Err(_) => vec![true; at.len()],
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere leaves the data consistent: each change is one push
    // or one retain.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `struct futex_waitv` of `<linux/futex.h>`.
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

impl FutexWaitv {
    fn new(word: &AtomicU32, expected: u32) -> Self {
        Self {
            val: u64::from(expected),
            uaddr: word.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
        }
    }
}

/// Sleeps until one of `waits` is woken or no longer holds its value, or
/// `timeout` passes.
fn futex_waitv(waits: &[FutexWaitv], timeout: Option<Duration>) -> io::Result<()> {
    let deadline = timeout.map(|timeout| {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
        let at = Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32) + timeout;
        libc::timespec {
            tv_sec: at.as_secs() as libc::time_t,
            tv_nsec: at.subsec_nanos() as libc::c_long,
        }
    });
    let deadline_ptr = deadline
        .as_ref()
        .map_or(std::ptr::null(), |spec| spec as *const libc::timespec);
    // SAFETY: `waits` are valid `futex_waitv`s whose words stay mapped for
    // the call (the hub's entries hold their rings, and only this thread
    // removes entries); the deadline, if any, is a valid absolute time on
    // CLOCK_MONOTONIC. The kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            waits.as_ptr(),
            waits.len() as libc::c_uint,
            0,
            deadline_ptr,
            libc::CLOCK_MONOTONIC,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        // EAGAIN: a word had moved already; ETIMEDOUT, EINTR: look again.
        return match err.raw_os_error() {
            Some(libc::EAGAIN | libc::ETIMEDOUT | libc::EINTR) => Ok(()),
            _ => Err(err),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, task::Context};

    use super::*;
    use crate::{
        ring::{RingReader, tests::pair},
        stream::StreamError,
    };

    /// Waits for the reader's next bytes through the hub; whether its first
    /// poll had to park it there.
    async fn data(reader: &RingReader, slot: &mut HubSlot) -> (Result<(), StreamError>, bool) {
        let waiter = reader.waiter();
        let awaited = Awaited::Data {
            tail: reader.received(),
        };
        let mut polls = 0;
        let result = poll_fn(|cx| {
            polls += 1;
            waiter.poll(awaited, slot, cx)
        })
        .await;
        (result, polls > 1)
    }

    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task").expect("tasks").count()
    }

    #[tokio::test]
    async fn an_async_receiver_parked_in_the_hub_wakes_when_the_bytes_come() {
        let (mut writer, mut reader, _) = pair(64 << 10);
        let write = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.write(b"woken").expect("write");
            writer
        });
        let (woken, parked) = data(&reader, &mut HubSlot::default()).await;
        woken.expect("the bytes, not an error");
        assert!(parked, "the receiver waited in the hub");
        assert_eq!(reader.try_fill().expect("read").expect("bytes"), b"woken");
        drop(write.join().expect("writer"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_waits_than_a_hub_holds_all_wake_without_a_thread_each() {
        const RINGS: usize = 3 * PER_HUB;
        let (writers, readers): (Vec<_>, Vec<_>) = (0..RINGS)
            .map(|_| {
                let (writer, reader, _) = pair(64 << 10);
                (writer, reader)
            })
            .unzip();
        let before = threads();
        let waits: Vec<_> = readers
            .into_iter()
            .map(|reader| {
                tokio::spawn(async move {
                    let (woken, _) = data(&reader, &mut HubSlot::default()).await;
                    woken.map(|()| reader)
                })
            })
            .collect();
        // Every task parked: the hub threads hold them, not a thread each.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let during = threads();
        assert!(
            during < before + 10,
            "{RINGS} waits took {} threads",
            during - before
        );
        let mut writers = writers;
        for writer in &mut writers {
            writer.write(b"x").expect("write");
        }
        for wait in waits {
            let mut reader = wait.await.expect("task").expect("woken with data");
            assert_eq!(reader.try_fill().expect("read").expect("bytes"), b"x");
        }
    }

    #[test]
    fn a_hub_of_idle_waits_wakes_a_few_times_a_period_not_once_per_wait() {
        // A full hub's waits, joining a little apart as a busy process's
        // receivers do; their senders alive and silent.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let ends: Vec<_> = (0..PER_HUB)
            .map(|_| {
                let (writer, reader, _) = pair(64 << 10);
                let mut slot = HubSlot::default();
                let awaited = Awaited::Data { tail: 0 };
                assert!(
                    reader
                        .waiter()
                        .poll(awaited, &mut slot, &mut cx)
                        .is_pending()
                );
                std::thread::sleep(Duration::from_micros(300));
                (writer, reader, slot)
            })
            .collect();
        let hubs: Vec<Arc<Hub>> = ends.iter().fold(Vec::new(), |mut hubs, (_, _, slot)| {
            let hub = &slot.0.as_ref().expect("registered").hub;
            if !hubs.iter().any(|known| Arc::ptr_eq(known, hub)) {
                hubs.push(hub.clone());
            }
            hubs
        });
        let wakes = || -> u64 {
            hubs.iter()
                .map(|hub| hub.wakes.load(Ordering::Relaxed))
                .sum()
        };
        let periods = 4;
        let before = wakes();
        std::thread::sleep(LIVENESS * periods);
        let woke = wakes() - before;
        // Looked at one by one, the waits' periods, a third of a
        // millisecond apart, woke the hub about 127 times a period.
        let most = (3 * periods as usize * hubs.len()) as u64;
        assert!(
            woke <= most,
            "{} idle waits woke their hub(s) {woke} times in {periods} liveness periods",
            ends.len()
        );
        // None of them was woken: nothing happened.
        for (_, _, slot) in &ends {
            assert!(matches!(
                slot.state(Awaited::Data { tail: 0 }),
                SlotState::Waiting
            ));
        }
    }

    #[tokio::test]
    async fn an_async_wait_on_a_dead_sender_ends_in_a_truncation() {
        let (writer, reader, _) = pair(64 << 10);
        let kill = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(writer);
        });
        let (woken, _) = data(&reader, &mut HubSlot::default()).await;
        assert_eq!(woken, Err(StreamError::Truncated { bytes: 0 }));
        kill.join().expect("writer");
    }

    #[tokio::test]
    async fn an_end_dropped_while_it_waits_lets_go_of_its_ring() {
        let (writer, reader, _) = pair(64 << 10);
        let waiting = tokio::spawn(async move {
            let _ = data(&reader, &mut HubSlot::default()).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        assert!(waiting.await.expect_err("aborted").is_cancelled());
        // The sender waits for a verdict that cannot come (nothing it does
        // moves the futex the dropped receiver waited on): only the
        // receiver's hang-up ends the wait, and the hub must not hold it off.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = writer.waiter();
        std::thread::spawn(move || tx.send(waiter.ack(0)));
        let failed = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the sender saw the receiver gone instead of waiting");
        drop(writer);
        assert_eq!(failed, Err(StreamError::ReceiverGone { bytes: 0 }));
    }
}
