//! The `shm` carrier: a ring of the channel's window in a memory file, and
//! the socket pair beside it. Each end gets the ring and one half of the
//! pair; the agent keeps a descriptor of the ring, to read its header for
//! status, and no end of the pair.
//!
//! Where the ring's pages come from matters more than the copy: a memory
//! file gets 4 KiB pages, one allocation (and, mapped, one page-table
//! entry) each, about 0.35 ms per MiB on a virtualised node. So the agent
//! mounts a tmpfs of its own with `huge=within_size` (`--huge-rings`, on
//! by default), reachable only by descriptor (never attached to a path),
//! and creates rings there as unnamed files: 2 MiB pages, one allocation
//! each. Such a tmpfs gives a file huge pages only where its size covers
//! them whole, so only rings of at least [`HUGE_PAGE`] go there (a ring of
//! 1 MiB and its header would get 4 KiB pages anyway, and a small stream
//! is better off allocating the few pages it touches than a 2 MiB page).
//! Only [`HUGE_RINGS`] rings at a time get them, kept rings included; the
//! rest, and every ring where the mount is refused, are memory files.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, OwnedFd},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicUsize, Ordering},
    },
};

use floki_proto::ring::{self, RingObserver};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::agent::channels::{Carrier, RingSetUp, SetUp};

/// Rings on huge pages at once, at most: at least 2 MiB each.
const HUGE_RINGS: usize = 64;
/// A huge page of the tmpfs, and the smallest ring that goes there.
const HUGE_PAGE: u64 = 2 << 20;

/// Where rings are created: a tmpfs of huge pages, while few enough rings
/// use it, else memory files.
pub struct RingFiles {
    huge: Option<OwnedFd>,
    live: Arc<AtomicUsize>,
    /// The ring each channel last went over, while its ends keep it: the
    /// two may carry the channel's next stream over it without this agent
    /// (docs/PROTOCOL.md, "Held rings"), unless its sender comes here.
    last_rings: Mutex<LastRings>,
}

/// Channel name to the ring that last carried it.
#[derive(Default)]
struct LastRings {
    by_name: HashMap<String, Weak<RingFile>>,
    /// Entries at the last sweep of rings gone: the next sweep comes when
    /// the map has doubled.
    swept_at: usize,
}

/// A ring's place among those on huge pages, while its channel lives.
pub struct HugeRing {
    live: Arc<AtomicUsize>,
}

impl Drop for HugeRing {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RingFiles {
    /// Memory files; with `huge`, the tmpfs of huge pages first (memory
    /// files only, with a warning, if the kernel or the agent's privileges
    /// refuse it).
    pub fn new(huge: bool) -> Self {
        let huge = match huge.then(mount_huge_tmpfs) {
            None => None,
            Some(Ok(mount)) => {
                info!("rings on a tmpfs of huge pages (huge=within_size)");
                Some(mount)
            }
            Some(Err(err)) => {
                warn!(%err, "no tmpfs of huge pages for the rings: they are memory files of 4 KiB pages (--huge-rings=false chooses that without this warning)");
                None
            }
        };
        Self {
            huge,
            live: Arc::new(AtomicUsize::new(0)),
            last_rings: Mutex::default(),
        }
    }

    /// The sender of channel `name` asks this agent: the ring that carried
    /// the channel last, if its ends still keep it, is withdrawn, so that
    /// its receiver (which may wait on it) asks this agent too.
    pub fn sender_came(&self, name: &str) {
        let ring = lock(&self.last_rings)
            .by_name
            .get(name)
            .and_then(Weak::upgrade);
        if let Some(ring) = ring
            && *lock(&ring.last) == name
        {
            ring.withdraw();
        }
    }

    /// Workflow `name` was deleted: every ring whose last channel was one
    /// of its streams (`name/...`) is withdrawn.
    pub fn forget_workflow(&self, name: &str) {
        let prefix = format!("{name}/");
        let rings: Vec<Arc<RingFile>> = lock(&self.last_rings)
            .by_name
            .iter()
            .filter(|(channel, _)| channel.starts_with(&prefix))
            .filter_map(|(_, ring)| ring.upgrade())
            .collect();
        for ring in rings {
            if lock(&ring.last).starts_with(&prefix) {
                ring.withdraw();
            }
        }
    }

    /// `ring` carries channel `name` now.
    fn carries(&self, name: &str, ring: &Arc<RingFile>) {
        let before = std::mem::replace(&mut *lock(&ring.last), name.to_owned());
        let ring = Arc::downgrade(ring);
        let mut last = lock(&self.last_rings);
        // The channel it carried before is no longer its to withdraw: a
        // kept ring carries a new name per channel, and those names would
        // pile up here for as long as the ring lives.
        if last
            .by_name
            .get(&before)
            .is_some_and(|earlier| earlier.ptr_eq(&ring))
        {
            last.by_name.remove(&before);
        }
        last.by_name.insert(name.to_owned(), ring);
        if last.by_name.len() > 2 * last.swept_at.max(512) {
            last.by_name.retain(|_, ring| ring.strong_count() > 0);
            last.swept_at = last.by_name.len();
        }
    }

    /// A ring of `window` bytes, on huge pages if it is large enough for
    /// them and there is room.
    fn create(&self, window: u64) -> std::io::Result<(OwnedFd, Option<HugeRing>)> {
        if let Some(mount) = self
            .huge
            .as_ref()
            .filter(|_| ring::capacity_for(window) >= HUGE_PAGE)
        {
            let claimed = self
                .live
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < HUGE_RINGS).then_some(n + 1)
                })
                .is_ok();
            if claimed {
                let place = HugeRing {
                    live: self.live.clone(),
                };
                match ring::create_in(mount.as_fd(), window) {
                    Ok((memory, _)) => return Ok((memory, Some(place))),
                    // Full, say: a memory file will do.
                    Err(err) => warn!(%err, "a ring on huge pages could not be created"),
                }
            }
        }
        Ok((ring::create(window)?.0, None))
    }
}

/// A tmpfs of huge pages that lives as long as the returned descriptor
/// (and the files on it), attached to no path: nothing to clean up after
/// a crash, nothing another process can open.
fn mount_huge_tmpfs() -> std::io::Result<OwnedFd> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsconfig_set_string, fsmount,
        fsopen,
    };
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&fs, "huge", "within_size")?;
    fsconfig_set_string(&fs, "mode", "0700")?;
    fsconfig_create(&fs)?;
    let attributes = MountAttrFlags::MOUNT_ATTR_NOEXEC
        | MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV;
    Ok(fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attributes)?)
}

/// A ring's memory file, kept by the agent while the two ends that shared
/// it keep their connections for a next channel: the sessions of those
/// connections hold it, and the two may be paired over it again (and no
/// one else: no client names a ring, it only says it kept its last one).
pub struct RingFile {
    memory: OwnedFd,
    capacity: u64,
    /// The channel it carried last.
    last: Mutex<String>,
    /// A ring on huge pages holds its place among them while it is kept,
    /// as while its channel lives.
    _huge: Option<Arc<HugeRing>>,
    /// Rung at each withdrawal, for the session of its receiver's kept
    /// connection ([`RingFile::withdrawn_while_waiting`]).
    withdrawals: Notify,
}

impl RingFile {
    /// The channel the ring carried last.
    pub fn last_channel(&self) -> String {
        lock(&self.last).clone()
    }

    /// Withdraws the ring from its ends' own set-up, through the file (no
    /// mapping: see [`ring::withdraw`]): a receiver waiting on it for its
    /// sender asks this agent.
    fn withdraw(&self) {
        if let Err(err) = ring::withdraw(&self.memory) {
            warn!(%err, "a kept ring could not be withdrawn from its ends' own set-up");
        }
        self.withdrawals.notify_waiters();
    }

    /// Returns once the ring is withdrawn while its receiver waits on it
    /// (docs/PROTOCOL.md, "Held rings"): its session tells it at once.
    pub async fn withdrawn_while_waiting(&self) {
        loop {
            let rung = self.withdrawals.notified();
            tokio::pin!(rung);
            // Registered before the look: no withdrawal is missed between.
            rung.as_mut().enable();
            if ring::withdrawn_while_waiting(&self.memory).unwrap_or(false) {
                return;
            }
            rung.await;
        }
    }
}

/// A ring of `window` bytes (rounded to a power of two) for two ends: the
/// one both ends `kept` from their last channel, rewound, if it is of that
/// size; else a new one.
pub fn set_up(
    files: &RingFiles,
    name: &str,
    window: u64,
    reason: String,
    kept: Option<&Arc<RingFile>>,
) -> Result<SetUp, String> {
    if let Some(file) = kept.filter(|file| file.capacity == ring::capacity_for(window)) {
        match reuse(file) {
            Ok(observer) => {
                files.carries(name, file);
                return Ok(SetUp {
                    carrier: Carrier::Ring(observer, None),
                    reason: format!("{reason}, the one they kept from their last channel"),
                    connect_to: None,
                    eager: false,
                    ring: Some(RingSetUp {
                        handed: None,
                        file: Some(file.clone()),
                    }),
                    listener: None,
                });
            }
            Err(err) => warn!(%err, "a kept ring could not be rewound; a new one instead"),
        }
    }
    let (memory, huge) = files
        .create(window)
        .map_err(|err| format!("creating the ring: {err}"))?;
    let observer = RingObserver::new(&memory).map_err(|err| format!("mapping the ring: {err}"))?;
    let (a, b) = ring::socket_pair().map_err(|err| format!("creating the socket pair: {err}"))?;
    let second = memory
        .as_fd()
        .try_clone_to_owned()
        .map_err(|err| format!("duplicating the ring: {err}"))?;
    // A ring on huge pages holds its place among them while its channel
    // lives and while its two ends keep it: kept, a shuffle's streams take
    // no new 2 MiB page each.
    let reason = match huge {
        Some(_) => format!("{reason}, a new one on 2 MiB pages"),
        None => reason,
    };
    let huge = huge.map(Arc::new);
    let file = observer.memory().try_clone().ok().map(|memory| {
        let file = Arc::new(RingFile {
            memory,
            capacity: ring::capacity_for(window),
            last: Mutex::default(),
            _huge: huge.clone(),
            withdrawals: Notify::new(),
        });
        files.carries(name, &file);
        file
    });
    Ok(SetUp {
        carrier: Carrier::Ring(observer, huge),
        reason,
        connect_to: None,
        eager: false,
        ring: Some(RingSetUp {
            handed: Some([(memory, a), (second, b)]),
            file,
        }),
        listener: None,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Rewinds a kept ring for its next channel; its observer.
fn reuse(file: &RingFile) -> std::io::Result<RingObserver> {
    ring::rewind(&file.memory)?;
    RingObserver::new(&file.memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mounting the tmpfs needs CAP_SYS_ADMIN: as root, like the kernel
    /// tests (never skipped).
    fn huge_files() -> RingFiles {
        let files = RingFiles::new(true);
        assert!(
            files.huge.is_some(),
            "no tmpfs of huge pages: run the agent's tests as root (CAP_SYS_ADMIN)"
        );
        files
    }

    #[test]
    fn at_most_64_rings_are_on_huge_pages_and_a_kept_one_holds_its_place() {
        let files = huge_files();
        let set_up = |window| set_up(&files, "test", window, "test".into(), None).expect("a ring");
        // A ring of 1 MiB would get 4 KiB pages on the tmpfs: a memory file,
        // which says nothing of huge pages and takes no place among them.
        let small = set_up(1 << 20);
        assert!(!small.reason.contains("on 2 MiB pages"), "{}", small.reason);
        let rings: Vec<SetUp> = (0..HUGE_RINGS).map(|_| set_up(HUGE_PAGE)).collect();
        assert!(
            rings
                .iter()
                .all(|ring| ring.reason.contains("on 2 MiB pages"))
        );
        // The 65th is a memory file.
        let over = set_up(HUGE_PAGE);
        assert!(!over.reason.contains("on 2 MiB pages"), "{}", over.reason);

        // A channel that ended while its two ends keep its ring: the ring
        // holds its place until they let it go.
        let mut rings = rings.into_iter();
        let first = rings.next().expect("64 rings");
        let kept = first.ring.and_then(|ring| ring.file).expect("a ring file");
        drop(first.carrier);
        assert!(!set_up(HUGE_PAGE).reason.contains("on 2 MiB pages"));
        drop(kept);
        assert!(set_up(HUGE_PAGE).reason.contains("on 2 MiB pages"));
    }

    #[test]
    fn a_kept_ring_is_remembered_under_the_last_channel_it_carried_only() {
        let files = RingFiles::new(false);
        let first = set_up(&files, "c-0", 1 << 20, "test".into(), None).expect("a ring");
        let kept = first.ring.and_then(|ring| ring.file).expect("a ring file");
        // A warm pair's streams of new names, one after another, over the
        // ring they kept (100,000 of them grew the agent by 9 MiB).
        for i in 1..2_000 {
            let name = format!("c-{i}");
            let again = set_up(&files, &name, 1 << 20, "test".into(), Some(&kept));
            assert!(again.expect("rewound").reason.contains("kept"));
        }
        let by_name = &lock(&files.last_rings).by_name;
        assert_eq!(by_name.len(), 1, "names remembered");
        assert!(by_name.contains_key("c-1999"));
    }

    /// Bytes the kernel allocated for the new ring of `set_up` once one
    /// byte of its data was written.
    fn allocated_after_one_byte(set_up: &SetUp) -> u64 {
        use std::os::unix::fs::{FileExt as _, MetadataExt as _};
        let handed = set_up.ring.as_ref().and_then(|ring| ring.handed.as_ref());
        let memory = &handed.expect("a new ring")[0].0;
        let file = std::fs::File::from(memory.try_clone().expect("dup"));
        file.write_all_at(&[1], ring::HEADER_LEN as u64)
            .expect("a byte of data");
        file.metadata().expect("fstat").blocks() * 512
    }

    #[test]
    fn a_ring_said_to_be_on_2_mib_pages_is_and_a_smaller_one_says_nothing_of_them() {
        let files = huge_files();
        let huge = set_up(&files, "huge", HUGE_PAGE, "test".into(), None).expect("a ring");
        assert!(huge.reason.contains("on 2 MiB pages"), "{}", huge.reason);
        // Header and first byte: one 2 MiB page.
        assert_eq!(allocated_after_one_byte(&huge), HUGE_PAGE);
        let small = set_up(&files, "small", 1 << 20, "test".into(), None).expect("a ring");
        assert!(!small.reason.contains("2 MiB"), "{}", small.reason);
        // Header and first byte: two 4 KiB pages.
        assert_eq!(allocated_after_one_byte(&small), 8 << 10);
    }
}
