//! The store: streams kept for consumers that start later.
//!
//! When a producer has had nothing more to buffer (its window full, or
//! finishing) for the grace period and its consumer is still not there, the
//! agent's store joins the channel as its receiver ([`ends::take_in`]): the
//! producer's stream is verified and kept, and the producer's `finish` says
//! "stored". Across nodes the consumer's agent does the same with a stream
//! the producer's agent started over their link (pushed ahead). A consumer
//! that comes later (or again: a retried function) is paired with the store
//! as its sender ([`ends::replay`]). While both ends run at once nothing of
//! this happens: the live path is unchanged.
//!
//! Tiers, in order: the agent's memory (`--store-memory`), a spill directory
//! on local disk (`--store-disk`, `--store-dir`; survives a restart), an
//! S3-compatible object store (`--store-s3`). A stream lives whole in one
//! tier: it spills to the next when the budget of its own would be exceeded.
//! With no room anywhere the producer gets "store full" and nothing stored
//! so far is touched. Streams are kept until their retention (`retain:` of
//! the edge, `--store-retain` for plain channels) or their workflow's
//! deletion.

pub mod ends;
mod s3;
mod spill;
mod stream;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

pub use spill::TierName;
use stream::Removal;
pub use stream::{Seal, StoredReader, StoredStream};
use tracing::{info, warn};

use self::{
    s3::S3Tier,
    spill::{Manifest, unix_now, until},
};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No tier has room for the stream.
    #[error(
        "the agent's store is full: memory {memory} and disk {disk} in use{s3}; \
         raise --store-memory or --store-disk, add --store-s3, or start the consumer"
    )]
    Full {
        /// Memory in use of its budget, e.g. `60.0 MiB of 64.0 MiB`.
        memory: String,
        /// Disk in use of its budget.
        disk: String,
        /// Whether the object store tier is configured.
        s3: &'static str,
    },
    /// A spill record (or an object's) does not match its checksum.
    #[error("stored stream corrupted: {} at byte {offset} does not match its checksum", path.display())]
    Corrupted {
        /// The file or object.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
    },
    /// What was read does not match the producer's end mark.
    #[error(
        "stored stream corrupted: {read} bytes read do not match the producer's {total} and checksum"
    )]
    Mismatch {
        /// Bytes read.
        read: u64,
        /// Bytes the producer sent.
        total: u64,
    },
    /// The stream failed before it was complete.
    #[error("{0}")]
    Failed(String),
    /// The stream was held in the memory of an agent that restarted.
    #[error("the stream was held in the agent's memory and the agent restarted: it is lost")]
    Lost,
    /// A stream of the S3 tier, but no `--store-s3`.
    #[error("the stream is in the S3 tier, and this agent has no --store-s3")]
    NoS3,
    /// `--store-s3` cannot be used.
    #[error("--store-s3 {url}: {reason}")]
    BadS3 {
        /// The URL given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The object store failed.
    #[error("the S3 tier: {0}")]
    S3(String),
    /// Reading or writing the store directory failed.
    #[error("{context}")]
    Io {
        /// What the store was doing.
        context: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Settings of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The spill directory (manifests too).
    pub dir: PathBuf,
    /// Memory budget, bytes.
    pub memory: u64,
    /// Disk budget, bytes.
    pub disk: u64,
    /// The S3 tier, `s3://BUCKET/PREFIX`.
    pub s3: Option<String>,
    /// How long a producer with nothing more to buffer waits for its
    /// consumer before its stream is stored (and a stream pushed ahead from
    /// another node, before the store takes it in).
    pub grace: Duration,
    /// How long plain channels' streams are kept.
    pub retain: Duration,
}

/// One budget: its limit and what is in use.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Takes `n` bytes if they fit.
    pub fn reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= self.limit).then_some(used + n)
            })
            .is_ok()
    }

    /// Gives `n` bytes back.
    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// The store's budgets.
#[derive(Debug)]
pub struct Budgets {
    /// The agent's memory.
    pub memory: Budget,
    /// The spill directory.
    pub disk: Budget,
    s3: bool,
}

impl Budgets {
    /// What is on disk already (after a restart), whatever the budget.
    fn force_disk(&self, n: u64) {
        self.disk.used.fetch_add(n, Ordering::AcqRel);
    }

    fn full(&self) -> StoreError {
        let human = |budget: &Budget| {
            let show = |n| bytesize::ByteSize(n).display().iec().to_string();
            format!("{} of {}", show(budget.used()), show(budget.limit()))
        };
        StoreError::Full {
            memory: human(&self.memory),
            disk: human(&self.disk),
            s3: if self.s3 {
                " (and the S3 tier failed)"
            } else {
                ""
            },
        }
    }
}

/// A stream the store held in memory before the agent restarted.
#[derive(Clone, Debug)]
struct LostStream {
    workflow: Option<String>,
    run: Option<String>,
    retain_until: u64,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<String, Arc<StoredStream>>,
    lost: HashMap<String, LostStream>,
    replays: u64,
    full: u64,
}

/// The node's store.
pub struct Store {
    config: StoreConfig,
    budgets: Arc<Budgets>,
    s3: Option<Arc<S3Tier>>,
    next_id: AtomicU64,
    inner: Mutex<Inner>,
}

impl Store {
    /// Opens the store in `config.dir`, taking back what a previous agent
    /// left there: spilled streams stay readable; streams it held in memory
    /// are known to be lost.
    pub fn open(config: StoreConfig) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| StoreError::Io {
            context: "creating the store directory (--store-dir)",
            source,
        })?;
        let s3 = config
            .s3
            .as_deref()
            .map(S3Tier::new)
            .transpose()?
            .map(Arc::new);
        let budgets = Arc::new(Budgets {
            memory: Budget::new(config.memory),
            disk: Budget::new(config.disk),
            s3: s3.is_some(),
        });
        let store = Self {
            next_id: AtomicU64::new(unix_now() << 20),
            config,
            budgets,
            s3,
            inner: Mutex::new(Inner::default()),
        };
        store.recover();
        Ok(Arc::new(store))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("store lock")
    }

    /// Reads the manifests a previous agent left.
    fn recover(&self) {
        let Ok(entries) = std::fs::read_dir(&self.config.dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let id = path
                .file_stem()
                .and_then(|stem| u64::from_str_radix(&stem.to_string_lossy(), 16).ok());
            let (Some(id), true) = (id, path.extension().is_some_and(|ext| ext == "json")) else {
                continue;
            };
            let manifest: Option<Manifest> = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            if let Some(manifest) = manifest {
                self.recover_one(id, manifest);
            }
        }
    }

    fn recover_one(&self, id: u64, manifest: Manifest) {
        let (data, json) = spill::paths(&self.config.dir, id);
        let forget = || {
            let _ = std::fs::remove_file(&data);
            let _ = std::fs::remove_file(&json);
        };
        if manifest.retain_until <= unix_now() {
            return forget();
        }
        let name = manifest.name.clone();
        if manifest.tier == TierName::Memory || !manifest.complete {
            let lost = LostStream {
                workflow: manifest.workflow.clone(),
                run: manifest.run.clone(),
                retain_until: manifest.retain_until,
            };
            if manifest.tier == TierName::Memory && manifest.complete {
                info!(channel = %name, "a stream held in memory before the restart is lost");
                self.lock().lost.insert(name, lost);
            }
            return forget();
        }
        let recovered = StoredStream::recovered(
            id,
            manifest,
            self.config.dir.clone(),
            self.budgets.clone(),
            self.s3.clone(),
        );
        match recovered {
            Ok(stream) => {
                info!(channel = %name, "a stored stream survived the restart");
                self.lock().streams.insert(name, stream);
            }
            Err(err) => {
                warn!(channel = %name, %err, "a stored stream could not be taken back");
                forget();
            }
        }
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Starts storing stream `name`, of `workflow` and of its producer's
    /// `run`; a stream stored under that name before (a previous run, or
    /// this run's producer before its retry) goes.
    pub async fn begin(
        &self,
        name: &str,
        workflow: Option<String>,
        run: Option<String>,
        retain: Duration,
    ) -> Result<Arc<StoredStream>, StoreError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let manifest = Manifest {
            name: name.to_owned(),
            workflow,
            run,
            tier: TierName::Memory,
            complete: false,
            total: 0,
            xxh3: 0,
            created: unix_now(),
            retain_until: until(retain),
        };
        let stream = StoredStream::new(
            id,
            manifest,
            self.config.dir.clone(),
            self.budgets.clone(),
            self.s3.clone(),
        )?;
        let old = {
            let mut inner = self.lock();
            inner.lost.remove(name);
            inner.streams.insert(name.to_owned(), stream.clone())
        };
        if let Some(old) = old {
            old.discard(Removal::Replaced).await;
        }
        Ok(stream)
    }

    /// The stored stream `name` (complete or being stored).
    pub fn get(&self, name: &str) -> Option<Arc<StoredStream>> {
        self.lock().streams.get(name).cloned()
    }

    /// The stored stream `name` a consumer of `run` may read: for a consumer
    /// that said no run, whatever is stored; otherwise only a stream its
    /// producer stored in the same run (another run's is not this run's
    /// data: the consumer waits for its own producer instead).
    pub fn get_for(&self, name: &str, run: Option<&str>) -> Option<Arc<StoredStream>> {
        self.get(name)
            .filter(|stream| same_run(run, stream.run.as_deref()))
    }

    /// Why stream `name` cannot be served to a consumer of `run`, if it was
    /// lost in a restart.
    pub fn lost(&self, name: &str, run: Option<&str>) -> Option<String> {
        let inner = self.lock();
        let lost = inner.lost.get(name)?;
        same_run(run, lost.run.as_deref()).then(|| {
            format!(
                "stream {name} was stored in the memory of this node's agent, which restarted since: \
                 it is lost; run its producer again (streams spilled to disk survive restarts)"
            )
        })
    }

    /// Removes stream `name` if it is `stream` (not a newer one).
    pub async fn remove(&self, stream: &Arc<StoredStream>) {
        let removed = {
            let mut inner = self.lock();
            match inner.streams.get(&stream.name) {
                Some(held) if Arc::ptr_eq(held, stream) => inner.streams.remove(&stream.name),
                _ => None,
            }
        };
        if let Some(removed) = removed {
            removed.discard(Removal::Dropped).await;
        }
    }

    /// Counts a store-full refusal.
    pub fn count_full(&self) {
        self.lock().full += 1;
    }

    /// Counts a replay.
    pub fn count_replay(&self) {
        self.lock().replays += 1;
    }

    /// Removes every stream of `workflow` (it was deleted).
    pub async fn delete_workflow(&self, workflow: &str) {
        let removed: Vec<Arc<StoredStream>> = {
            let mut inner = self.lock();
            inner
                .lost
                .retain(|_, lost| lost.workflow.as_deref() != Some(workflow));
            take_streams(&mut inner.streams, |s| {
                s.workflow.as_deref() == Some(workflow)
            })
        };
        for stream in removed {
            info!(channel = %stream.name, "stored stream removed with its workflow");
            stream.discard(Removal::WorkflowDeleted).await;
        }
    }

    /// Removes the streams whose retention has expired.
    pub async fn sweep(&self) {
        let now = unix_now();
        let expired: Vec<Arc<StoredStream>> = {
            let mut inner = self.lock();
            inner.lost.retain(|_, lost| lost.retain_until > now);
            take_streams(&mut inner.streams, |s| s.retain_until() <= now)
        };
        for stream in expired {
            info!(channel = %stream.name, "stored stream expired");
            stream.discard(Removal::Expired).await;
        }
    }

    /// What the store holds, for status and metrics.
    pub fn view(&self) -> StoreView {
        let inner = self.lock();
        let mut streams: Vec<StoredView> = inner
            .streams
            .values()
            .map(|stream| {
                let (tier, bytes, seal, replays) = stream.describe();
                StoredView {
                    name: stream.name.clone(),
                    workflow: stream.workflow.clone(),
                    run: stream.run.clone(),
                    tier,
                    bytes,
                    complete: matches!(seal, Seal::Sealed { .. }),
                    failed: match seal {
                        Seal::Failed(reason) => Some(reason),
                        _ => None,
                    },
                    replays,
                    age: stream.started.elapsed(),
                    retain_until: stream.retain_until(),
                }
            })
            .collect();
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        StoreView {
            memory: (self.budgets.memory.used(), self.budgets.memory.limit()),
            disk: (self.budgets.disk.used(), self.budgets.disk.limit()),
            dir: self.config.dir.clone(),
            s3: self.s3.as_ref().map(|s3| s3.url.clone()),
            streams,
            lost: inner.lost.keys().cloned().collect(),
            replays: inner.replays,
            full: inner.full,
        }
    }
}

/// The store, for status and metrics.
#[derive(Clone, Debug)]
pub struct StoreView {
    /// Memory in use and its budget.
    pub memory: (u64, u64),
    /// Disk in use and its budget.
    pub disk: (u64, u64),
    /// The spill directory.
    pub dir: PathBuf,
    /// The S3 tier's URL.
    pub s3: Option<String>,
    /// The streams held.
    pub streams: Vec<StoredView>,
    /// Streams lost in a restart (held in memory), until their retention.
    pub lost: Vec<String>,
    /// Consumers served from the store since the agent started.
    pub replays: u64,
    /// Producers refused for want of room.
    pub full: u64,
}

/// One stored stream.
#[derive(Clone, Debug)]
pub struct StoredView {
    /// Channel name.
    pub name: String,
    /// Its workflow.
    pub workflow: Option<String>,
    /// Its producer's run.
    pub run: Option<String>,
    /// Its tier.
    pub tier: TierName,
    /// Bytes held.
    pub bytes: u64,
    /// Whether it is complete.
    pub complete: bool,
    /// Why it failed, if it did.
    pub failed: Option<String>,
    /// How many times it was read.
    pub replays: u64,
    /// Since storing began.
    pub age: Duration,
    /// When it expires (seconds since the epoch).
    pub retain_until: u64,
}

/// Whether a consumer of `consumer`'s run may read a stream stored in
/// `stored`'s.
fn same_run(consumer: Option<&str>, stored: Option<&str>) -> bool {
    consumer.is_none() || consumer == stored
}

/// Takes out of `streams` those that `which` picks (a workflow's, the
/// expired ones), for the caller to discard outside the lock.
fn take_streams(
    streams: &mut HashMap<String, Arc<StoredStream>>,
    which: impl Fn(&StoredStream) -> bool,
) -> Vec<Arc<StoredStream>> {
    let mut taken = Vec::new();
    streams.retain(|_, stream| {
        let keep = !which(stream);
        if !keep {
            taken.push(stream.clone());
        }
        keep
    });
    taken
}
