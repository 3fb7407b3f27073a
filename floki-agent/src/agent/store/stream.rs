//! One stored stream: chunks appended as the producer's bytes arrive, held
//! in the agent's memory until the node's memory budget would be exceeded,
//! then spilled whole to disk, then (with `--store-s3`) to an object store;
//! sealed with the producer's length and XXH3 once the store verified them;
//! read back, as often as consumers ask, chunk by chunk and checked.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use tokio::sync::Notify;
use twox_hash::XxHash3_64;

use super::{
    Budgets, StoreError,
    s3::{S3Object, S3Tier},
    spill::{self, Manifest, Record, SpillWriter, TierName},
};

/// Where a stream's chunks are.
enum Tier {
    Memory(Vec<Bytes>),
    Disk {
        path: PathBuf,
        writer: Option<SpillWriter>,
        records: Vec<Record>,
    },
    S3(S3Object),
}

/// Why a stored stream goes, as its readers and writer are told.
#[derive(Clone, Copy, Debug)]
pub(super) enum Removal {
    /// Its producer ran again: the store takes in the new stream.
    Replaced,
    /// Its retention ended.
    Expired,
    /// Its workflow was deleted.
    WorkflowDeleted,
    /// The store is done with it (forwarded to the consumer's node, or it
    /// failed on the way in).
    Dropped,
}

impl Removal {
    /// What a reader of stream `name` (or its writer) gets: what happened
    /// and what to do.
    fn reason(self, name: &str) -> String {
        match self {
            Self::Replaced => format!(
                "stored stream {name} was replaced: its producer ran again (run the consumer \
                 again to read the new stream)"
            ),
            Self::Expired => format!(
                "stored stream {name} expired (the edge's retain:, or --store-retain): run its \
                 producer again"
            ),
            Self::WorkflowDeleted => {
                format!("stored stream {name} was removed: its workflow was deleted")
            }
            Self::Dropped => format!("stored stream {name} was removed: run the consumer again"),
        }
    }
}

/// How the stream stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seal {
    /// Bytes may still come.
    Open,
    /// Complete: the producer's length and XXH3, verified on the way in.
    Sealed {
        /// Stream bytes.
        total: u64,
        /// XXH3-64 of the stream.
        xxh3: u64,
    },
    /// The producer failed, or there was no room: readers get this error.
    Failed(String),
}

struct State {
    tier: Tier,
    bytes: u64,
    seal: Seal,
    replays: u64,
}

impl State {
    /// `Err` once the stream failed or was discarded (its producer ran
    /// again, say): nothing more goes into any tier, so that no memory, file
    /// or object is taken for a stream nobody holds.
    fn taking(&self) -> Result<(), StoreError> {
        match &self.seal {
            Seal::Failed(reason) => Err(StoreError::Failed(reason.clone())),
            _ => Ok(()),
        }
    }
}

/// A stream held by the agent's store.
pub struct StoredStream {
    /// Channel name.
    pub name: String,
    /// Its workflow, for workflow streams.
    pub workflow: Option<String>,
    /// The run its producer belongs to, if it said one.
    pub run: Option<String>,
    /// File id in the store directory.
    pub id: u64,
    /// When storing began.
    pub started: Instant,
    manifest: Mutex<Manifest>,
    dir: PathBuf,
    budgets: Arc<Budgets>,
    s3: Option<Arc<S3Tier>>,
    state: Mutex<State>,
    grew: Notify,
}

impl StoredStream {
    /// A new, empty stream in memory; its manifest is written at once, so
    /// that a restarted agent knows it was lost.
    pub(super) fn new(
        id: u64,
        manifest: Manifest,
        dir: PathBuf,
        budgets: Arc<Budgets>,
        s3: Option<Arc<S3Tier>>,
    ) -> Result<Arc<Self>, StoreError> {
        let stream = Self {
            name: manifest.name.clone(),
            workflow: manifest.workflow.clone(),
            run: manifest.run.clone(),
            id,
            started: Instant::now(),
            manifest: Mutex::new(manifest),
            dir,
            budgets,
            s3,
            state: Mutex::new(State {
                tier: Tier::Memory(Vec::new()),
                bytes: 0,
                seal: Seal::Open,
                replays: 0,
            }),
            grew: Notify::new(),
        };
        stream.save_manifest()?;
        Ok(Arc::new(stream))
    }

    /// A complete stream found on disk after a restart.
    pub(super) fn recovered(
        id: u64,
        manifest: Manifest,
        dir: PathBuf,
        budgets: Arc<Budgets>,
        s3: Option<Arc<S3Tier>>,
    ) -> Result<Arc<Self>, StoreError> {
        let (path, _) = spill::paths(&dir, id);
        let tier = match manifest.tier {
            TierName::Disk => {
                let records = spill::scan(&path)?;
                let size: u64 = records
                    .iter()
                    .map(|r| spill::RECORD_HEADER + u64::from(r.len))
                    .sum();
                budgets.force_disk(size);
                Tier::Disk {
                    path,
                    writer: None,
                    records,
                }
            }
            TierName::S3 => {
                let s3 = s3.as_ref().ok_or(StoreError::NoS3)?;
                Tier::S3(s3.object(id, manifest.total))
            }
            TierName::Memory => return Err(StoreError::Lost),
        };
        let seal = Seal::Sealed {
            total: manifest.total,
            xxh3: manifest.xxh3,
        };
        Ok(Arc::new(Self {
            name: manifest.name.clone(),
            workflow: manifest.workflow.clone(),
            run: manifest.run.clone(),
            id,
            started: Instant::now(),
            manifest: Mutex::new(manifest.clone()),
            dir,
            budgets,
            s3,
            state: Mutex::new(State {
                tier,
                bytes: manifest.total,
                seal,
                replays: 0,
            }),
            grew: Notify::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("stored stream lock")
    }

    fn save_manifest(&self) -> Result<(), StoreError> {
        let manifest = self.manifest.lock().expect("manifest lock").clone();
        let (_, path) = spill::paths(&self.dir, self.id);
        spill::write_manifest(&path, &manifest).map_err(|source| StoreError::Io {
            context: "writing a store manifest",
            source,
        })
    }

    /// Appends one chunk: in memory while the budget allows, else on disk
    /// (the whole stream spilled there first), else in the object store;
    /// `StoreError::Full` when no tier has room.
    pub async fn append(&self, chunk: Bytes) -> Result<(), StoreError> {
        let len = chunk.len() as u64;
        let spill_now = {
            let mut state = self.lock();
            state.taking()?;
            match &mut state.tier {
                Tier::Memory(chunks) if self.budgets.memory.reserve(len) => {
                    chunks.push(chunk.clone());
                    None
                }
                Tier::Memory(_) => Some(chunk.clone()),
                Tier::Disk { .. } | Tier::S3(_) => Some(chunk.clone()),
            }
        };
        if let Some(chunk) = spill_now {
            self.append_beyond_memory(chunk).await?;
        }
        self.lock().bytes += len;
        self.grew.notify_waiters();
        Ok(())
    }

    async fn append_beyond_memory(&self, chunk: Bytes) -> Result<(), StoreError> {
        if self.in_memory() {
            match self.spill_to_disk() {
                // No room on disk either: straight to the object store.
                Err(StoreError::Full { .. }) if self.s3.is_some() => {
                    self.move_memory_to_s3().await?;
                }
                other => other?,
            }
        }
        if self.on_disk() {
            match self.append_on_disk(&chunk) {
                Err(StoreError::Full { .. }) if self.s3.is_some() => self.move_to_s3().await?,
                other => return other,
            }
        }
        let object = {
            let state = self.lock();
            match &state.tier {
                Tier::S3(object) => object.clone(),
                _ => unreachable!("moved to the object store above"),
            }
        };
        object.append(&chunk).await
    }

    fn in_memory(&self) -> bool {
        matches!(self.lock().tier, Tier::Memory(_))
    }

    fn on_disk(&self) -> bool {
        matches!(self.lock().tier, Tier::Disk { .. })
    }

    /// Writes the stream's memory chunks to its spill file and frees them.
    fn spill_to_disk(&self) -> Result<(), StoreError> {
        let (path, _) = spill::paths(&self.dir, self.id);
        let mut state = self.lock();
        state.taking()?;
        let Tier::Memory(chunks) = &mut state.tier else {
            return Ok(());
        };
        let held: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let size = held + spill::RECORD_HEADER * chunks.len() as u64;
        if !self.budgets.disk.reserve(size) {
            return Err(self.budgets.full());
        }
        let io = |source| StoreError::Io {
            context: "writing a spill file",
            source,
        };
        let mut writer = SpillWriter::create(&path).map_err(io)?;
        let records = chunks
            .iter()
            .map(|chunk| writer.append(chunk))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        state.tier = Tier::Disk {
            path,
            writer: Some(writer),
            records,
        };
        drop(state);
        self.budgets.memory.release(held);
        self.manifest.lock().expect("manifest lock").tier = TierName::Disk;
        self.save_manifest()
    }

    fn append_on_disk(&self, chunk: &[u8]) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.taking()?;
        let Tier::Disk {
            writer: Some(writer),
            records,
            ..
        } = &mut state.tier
        else {
            unreachable!("appending on disk to a stream on disk");
        };
        if !self
            .budgets
            .disk
            .reserve(chunk.len() as u64 + spill::RECORD_HEADER)
        {
            return Err(self.budgets.full());
        }
        let record = writer.append(chunk).map_err(|source| StoreError::Io {
            context: "writing a spill file",
            source,
        })?;
        records.push(record);
        Ok(())
    }

    /// Moves the chunks held in memory into an object of the S3 tier.
    async fn move_memory_to_s3(&self) -> Result<(), StoreError> {
        let s3 = self.s3.clone().ok_or(StoreError::NoS3)?;
        let chunks = match &self.lock().tier {
            Tier::Memory(chunks) => chunks.clone(),
            _ => return Ok(()),
        };
        let object = s3.object(self.id, 0);
        for chunk in &chunks {
            object.append(chunk).await?;
        }
        self.take_tier(Tier::S3(object.clone()), &object).await?;
        let held: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        self.budgets.memory.release(held);
        self.manifest.lock().expect("manifest lock").tier = TierName::S3;
        self.save_manifest()
    }

    /// Moves the spilled records into an object of the S3 tier; the spill
    /// file goes.
    async fn move_to_s3(&self) -> Result<(), StoreError> {
        let s3 = self.s3.clone().ok_or(StoreError::NoS3)?;
        let (path, records) = {
            let state = self.lock();
            match &state.tier {
                Tier::Disk { path, records, .. } => (path.clone(), records.clone()),
                _ => return Ok(()),
            }
        };
        let object = s3.object(self.id, 0);
        for record in &records {
            object.append(&spill::read_record(&path, *record)?).await?;
        }
        let size: u64 = records
            .iter()
            .map(|r| spill::RECORD_HEADER + u64::from(r.len))
            .sum();
        self.take_tier(Tier::S3(object.clone()), &object).await?;
        let _ = std::fs::remove_file(&path);
        self.budgets.disk.release(size);
        self.manifest.lock().expect("manifest lock").tier = TierName::S3;
        self.save_manifest()
    }

    /// Makes `tier` the stream's, unless it was discarded while `object`
    /// was being written: the object goes then.
    async fn take_tier(&self, tier: Tier, object: &S3Object) -> Result<(), StoreError> {
        let taken = {
            let mut state = self.lock();
            state.taking().map(|()| state.tier = tier)
        };
        if taken.is_err() {
            object.delete().await;
        }
        taken
    }

    /// The producer's stream arrived whole and verified.
    pub async fn seal(&self, total: u64, xxh3: u64) -> Result<(), StoreError> {
        self.lock().taking()?;
        let object = match &mut self.lock().tier {
            Tier::Disk { writer, .. } => {
                // Closes the file: what is written is there for readers.
                writer.take();
                None
            }
            Tier::S3(object) => Some(object.clone()),
            Tier::Memory(_) => None,
        };
        if let Some(object) = object {
            object.complete().await?;
        }
        {
            let mut manifest = self.manifest.lock().expect("manifest lock");
            manifest.complete = true;
            manifest.total = total;
            manifest.xxh3 = xxh3;
        }
        self.save_manifest()?;
        let sealed = {
            let mut state = self.lock();
            state
                .taking()
                .map(|()| state.seal = Seal::Sealed { total, xxh3 })
        };
        if sealed.is_err() {
            // Discarded meanwhile: its manifest must not outlive it (a
            // restart would find a stream without its data).
            let _ = std::fs::remove_file(spill::paths(&self.dir, self.id).1);
            return sealed;
        }
        self.grew.notify_waiters();
        Ok(())
    }

    /// The stream will not be complete: readers get `reason`.
    pub fn fail(&self, reason: String) {
        self.lock().seal = Seal::Failed(reason);
        self.grew.notify_waiters();
    }

    /// Frees the stream's memory, files and object. A reader still on it
    /// gets why (never a short stream, nor a "corrupted" one): the seal
    /// fails under the same lock that empties the tier.
    pub(super) async fn discard(&self, why: Removal) {
        let (held, object) = {
            let mut state = self.lock();
            if !matches!(state.seal, Seal::Failed(_)) {
                state.seal = Seal::Failed(why.reason(&self.name));
            }
            let tier = std::mem::replace(&mut state.tier, Tier::Memory(Vec::new()));
            match tier {
                Tier::Memory(chunks) => (chunks.iter().map(|c| c.len() as u64).sum(), None),
                Tier::Disk { path, records, .. } => {
                    let size: u64 = records
                        .iter()
                        .map(|r| spill::RECORD_HEADER + u64::from(r.len))
                        .sum();
                    let _ = std::fs::remove_file(path);
                    self.budgets.disk.release(size);
                    (0, None)
                }
                Tier::S3(object) => (0, Some(object)),
            }
        };
        self.budgets.memory.release(held);
        if let Some(object) = object {
            object.delete().await;
        }
        let (_, manifest) = spill::paths(&self.dir, self.id);
        let _ = std::fs::remove_file(manifest);
        self.grew.notify_waiters();
    }

    /// What a status line says of the stream: tier, bytes, seal, replays.
    pub fn describe(&self) -> (TierName, u64, Seal, u64) {
        let state = self.lock();
        let tier = match state.tier {
            Tier::Memory(_) => TierName::Memory,
            Tier::Disk { .. } => TierName::Disk,
            Tier::S3(_) => TierName::S3,
        };
        (tier, state.bytes, state.seal.clone(), state.replays)
    }

    /// When it expires (seconds since the epoch).
    pub fn retain_until(&self) -> u64 {
        self.manifest.lock().expect("manifest lock").retain_until
    }

    /// A reader from the first byte; counts as a replay.
    pub fn reader(self: &Arc<Self>) -> StoredReader {
        self.lock().replays += 1;
        StoredReader {
            stream: self.clone(),
            next: 0,
            hasher: XxHash3_64::new(),
            read: 0,
            s3: None,
        }
    }
}

/// Reads a stored stream from its first byte: every chunk checked (on disk
/// and in the object store, by its record's XXH3), and the whole against
/// the producer's XXH3 before the end is reported. A stream still being
/// stored is followed as it grows.
pub struct StoredReader {
    stream: Arc<StoredStream>,
    next: usize,
    hasher: XxHash3_64,
    read: u64,
    s3: Option<super::s3::S3Reader>,
}

/// What the store holds next for a reader.
enum Next {
    Chunk(Bytes),
    Record(PathBuf, Record),
    S3(S3Object),
    End,
    Wait,
}

impl StoredReader {
    /// The next chunk; `None` at the verified end of the stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        if let Some(reader) = &mut self.s3 {
            let next = reader.next().await;
            return match next.map_err(|err| self.why(err))? {
                Some(chunk) => Ok(Some(self.take(chunk))),
                None => self.verify_end(),
            };
        }
        let stream = self.stream.clone();
        loop {
            let grew = stream.grew.notified();
            match self.peek()? {
                Next::Chunk(chunk) => return Ok(Some(self.take(chunk))),
                Next::Record(path, record) => {
                    let data = spill::read_record(&path, record).map_err(|err| self.why(err))?;
                    return Ok(Some(self.take(Bytes::from(data))));
                }
                Next::S3(object) => {
                    let mut reader = object.reader().await.map_err(|err| self.why(err))?;
                    // Skip what was read from the memory or disk tiers.
                    reader.skip(self.next);
                    self.s3 = Some(reader);
                    return Box::pin(self.next()).await;
                }
                Next::End => return self.verify_end(),
                Next::Wait => grew.await,
            }
        }
    }

    /// `err` reading a tier, or why the stream went if it was discarded
    /// meanwhile (its file or object goes with it: the reason says more
    /// than the missing file).
    fn why(&self, err: StoreError) -> StoreError {
        self.stream.lock().taking().err().unwrap_or(err)
    }

    fn take(&mut self, chunk: Bytes) -> Bytes {
        use std::hash::Hasher as _;
        self.next += 1;
        self.read += chunk.len() as u64;
        self.hasher.write(&chunk);
        chunk
    }

    fn peek(&self) -> Result<Next, StoreError> {
        let state = self.stream.lock();
        if let Seal::Failed(reason) = &state.seal {
            return Err(StoreError::Failed(reason.clone()));
        }
        let next = match &state.tier {
            Tier::Memory(chunks) => chunks.get(self.next).cloned().map(Next::Chunk),
            Tier::Disk { path, records, .. } => records
                .get(self.next)
                .map(|record| Next::Record(path.clone(), *record)),
            // The object is readable once complete.
            Tier::S3(object) => {
                matches!(state.seal, Seal::Sealed { .. }).then(|| Next::S3(object.clone()))
            }
        };
        Ok(match (next, &state.seal) {
            (Some(next), _) => next,
            (None, Seal::Sealed { .. }) => Next::End,
            (None, _) => Next::Wait,
        })
    }

    fn verify_end(&mut self) -> Result<Option<Bytes>, StoreError> {
        use std::hash::Hasher as _;
        let Some((total, xxh3)) = self.seal() else {
            return Err(StoreError::Failed(
                "the stored stream ended before its end mark".into(),
            ));
        };
        if (self.read, self.hasher.finish()) != (total, xxh3) {
            return Err(StoreError::Mismatch {
                read: self.read,
                total,
            });
        }
        Ok(None)
    }

    /// The stream's length and XXH3, as the producer sent them (once sealed).
    pub fn seal(&self) -> Option<(u64, u64)> {
        match self.stream.lock().seal {
            Seal::Sealed { total, xxh3 } => Some((total, xxh3)),
            _ => None,
        }
    }
}
