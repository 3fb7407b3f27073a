//! The machine's own limits, measured in the same run as Floki by `bench
//! splice`: the kernel's bare socket redirect (Floki's own kernel objects
//! splicing two plain TCP sockets: no framing, credits, end mark or
//! checksum), a bare ring in shared memory (no checksum, no end mark,
//! `sched_yield` waits), memcpy and XXH3 (what a checksummed stream pays
//! on top). What Floki can be held to is a fraction
//! of these, not a multiple of plain TCP, which varies from machine to
//! machine.

use std::{
    cell::Cell,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::Context as _;
use floki_agent::agent::datapath::{DatapathConfig, EbpfDatapath};
use floki_tests::cgroup::TestCgroup;

use crate::lab::{self, measured};

/// Floki's kernel programs attached to a cgroup of their own, where two
/// plain TCP peers (`tcp-source`, `tcp-sink`) are spliced by hand.
pub struct BareRedirect {
    datapath: EbpfDatapath,
    cgroup: TestCgroup,
    lab: PathBuf,
    next_channel: Cell<u32>,
    /// The programs' kernel logger runs on it.
    _runtime: tokio::runtime::Runtime,
}

impl BareRedirect {
    /// Loads the programs and attaches them to a fresh cgroup.
    pub fn start(binaries: &lab::Binaries) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        let _entered = runtime.enter();
        let cgroup = TestCgroup::new("bench-bare").context("creating a cgroup")?;
        let datapath = EbpfDatapath::load(&DatapathConfig {
            cgroup: Some(cgroup.path().to_path_buf()),
            pin_dir: PathBuf::from(format!(
                "/sys/fs/bpf/floki-bench-bare-{}",
                std::process::id()
            )),
            disabled: None,
            pretend_missing: Vec::new(),
        })
        .context("loading Floki's kernel programs for the bare redirect")?;
        Ok(Self {
            datapath,
            cgroup,
            lab: binaries.lab.clone(),
            next_channel: Cell::new(1),
            _runtime: runtime,
        })
    }

    /// Receiver-side GB/s of `bytes` in writes of `write` bytes between two
    /// plain TCP peers on CPUs 0 and 1 whose sockets the kernel splices.
    pub fn throughput(&self, bytes: u64, write: usize) -> anyhow::Result<f64> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let netns = floki_proto::netns::netns_cookie(&probe)
            .context("reading this network namespace's cookie")?;
        let channel = self.next_channel.get();
        self.next_channel.set(channel + 1);
        let handle = self
            .datapath
            .install(channel, "bench-bare", (Some(netns), Some(netns)), listen, 0)
            .map_err(anyhow::Error::msg)?;
        let common: Vec<String> = [
            "--addr".to_owned(),
            listen.to_string(),
            "--bytes".into(),
            bytes.to_string(),
            "--chunk".into(),
            write.to_string(),
        ]
        .into();
        let args = |verb: &str| [vec![verb.to_owned()], common.clone()].concat();
        let result = (|| {
            let sink = lab::peer_command(&self.lab, &self.cgroup, &args("tcp-sink"), Some(0))
                .spawn()
                .context("starting tcp-sink")?;
            let source = lab::peer_command(&self.lab, &self.cgroup, &args("tcp-source"), Some(1))
                .spawn()
                .context("starting tcp-source")?;
            let got = measured(sink)?;
            measured(source)?;
            Ok::<_, anyhow::Error>(got)
        })();
        let record = self.datapath.record(&handle);
        self.datapath.remove(&handle);
        let got = result?;
        // Proof that the kernel carried the bytes: the sender's count.
        let redirected = record.map_or(0, |record| record.bytes[0]);
        anyhow::ensure!(
            redirected >= bytes,
            "the bare redirect moved {redirected} of {bytes} bytes: the sockets were not spliced"
        );
        Ok(got.bytes as f64 / got.seconds / 1e9)
    }
}

impl Drop for BareRedirect {
    fn drop(&mut self) {
        self.datapath.shutdown();
    }
}

/// The bare ring's size: the channel window Floki's shm ring gets by
/// default.
const RING: usize = 8 << 20;
/// What the bare ring's reader copies out at a time (Floki's bench
/// receivers read 128 KiB at a time too).
const READ: usize = 128 << 10;

/// Receiver-side GB/s of `bytes` in writes of `write` bytes through a bare
/// ring in a memory file: a writer thread on CPU 1 copies each write in and
/// publishes it, a reader thread on CPU 0 copies it out. No checksum, no
/// end mark; a waiting side yields its CPU.
pub fn bare_ring(bytes: u64, write: usize) -> anyhow::Result<f64> {
    let fd =
        nix::sys::memfd::memfd_create(c"floki-bare-ring", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .context("creating the bare ring")?;
    let file = std::fs::File::from(fd);
    file.set_len(RING as u64)?;
    // SAFETY: a fresh memory file only these two threads map, each touching
    // only the bytes the positions below give it.
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.context("mapping the bare ring")?;
    let base = map.as_ptr() as usize;
    let head = Arc::new(AtomicU64::new(0));
    let tail = Arc::new(AtomicU64::new(0));

    let writer = {
        let (head, tail) = (head.clone(), tail.clone());
        std::thread::spawn(move || {
            pin_to(1);
            let src = vec![0x5au8; write];
            let mut at = 0u64;
            while at < bytes {
                let mut done = 0;
                let len = (write as u64).min(bytes - at) as usize;
                while done < len {
                    let room = RING as u64 - (at - tail.load(Ordering::Acquire));
                    if room == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    let pos = (at % RING as u64) as usize;
                    let n = (len - done).min(room as usize).min(RING - pos);
                    // SAFETY: `[pos, pos + n)` is in the ring, in the part
                    // the reader is done with (`room` above).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr().add(done),
                            (base as *mut u8).add(pos),
                            n,
                        );
                    }
                    done += n;
                    at += n as u64;
                    head.store(at, Ordering::Release);
                }
            }
        })
    };

    // The reader on a thread of its own too: pinning this one would pin
    // every peer the bench starts after.
    let reader = std::thread::spawn(move || read_ring(base, &head, &tail, bytes));
    let seconds = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the bare ring's reader panicked"))?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the bare ring's writer panicked"))?;
    drop(map);
    Ok(bytes as f64 / seconds / 1e9)
}

/// The bare ring's reader, on CPU 0: seconds from its first byte to its
/// last.
fn read_ring(base: usize, head: &AtomicU64, tail: &AtomicU64, bytes: u64) -> f64 {
    pin_to(0);
    let mut dst = vec![0u8; READ];
    let mut at = 0u64;
    let mut started = None;
    while at < bytes {
        let available = head.load(Ordering::Acquire) - at;
        if available == 0 {
            std::thread::yield_now();
            continue;
        }
        started.get_or_insert_with(Instant::now);
        let pos = (at % RING as u64) as usize;
        let n = (available as usize).min(READ).min(RING - pos);
        // SAFETY: `[pos, pos + n)` is published by the writer (`head`), which
        // leaves it alone until `tail` moves past it.
        unsafe {
            std::ptr::copy_nonoverlapping((base as *const u8).add(pos), dst.as_mut_ptr(), n);
        }
        at += n as u64;
        tail.store(at, Ordering::Release);
    }
    std::hint::black_box(&dst);
    started.map_or(0.0, |t| t.elapsed().as_secs_f64())
}

/// GB/s of memcpy on CPU 0: `bytes` in copies of `write` bytes from one
/// buffer into a ring-sized one, in turn.
pub fn memcpy(bytes: u64, write: usize) -> anyhow::Result<f64> {
    std::thread::spawn(move || copy_on_cpu0(bytes, write))
        .join()
        .map_err(|_| anyhow::anyhow!("the memcpy thread panicked"))
}

fn copy_on_cpu0(bytes: u64, write: usize) -> f64 {
    pin_to(0);
    let src = vec![0x5au8; write];
    let mut dst = vec![0u8; RING.max(write)];
    let slots = dst.len() / write;
    let started = Instant::now();
    let mut at = 0u64;
    let mut slot = 0;
    while at < bytes {
        let n = (write as u64).min(bytes - at) as usize;
        dst[slot * write..slot * write + n].copy_from_slice(&src[..n]);
        std::hint::black_box(&mut dst);
        slot = (slot + 1) % slots;
        at += n as u64;
    }
    bytes as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// GB/s of XXH3-64 (the checksum both ends of a Floki stream compute) on
/// CPU 0: `bytes` hashed in pieces of `write` bytes from a ring-sized buffer.
pub fn xxh3(bytes: u64, write: usize) -> anyhow::Result<f64> {
    std::thread::spawn(move || hash_on_cpu0(bytes, write))
        .join()
        .map_err(|_| anyhow::anyhow!("the hashing thread panicked"))
}

fn hash_on_cpu0(bytes: u64, write: usize) -> f64 {
    use std::hash::Hasher as _;
    pin_to(0);
    let src = vec![0x5au8; RING.max(write)];
    let slots = src.len() / write;
    let mut hasher = twox_hash::XxHash3_64::new();
    let started = Instant::now();
    let mut at = 0u64;
    let mut slot = 0;
    while at < bytes {
        let n = (write as u64).min(bytes - at) as usize;
        hasher.write(&src[slot * write..slot * write + n]);
        slot = (slot + 1) % slots;
        at += n as u64;
    }
    std::hint::black_box(hasher.finish());
    bytes as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// Runs the calling thread on `cpu` only (best effort: an unpinned
/// measurement is still a measurement).
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}
