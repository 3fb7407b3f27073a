//! Streams on disk: the spill file (records, each with its own XXH3, so that
//! an altered byte is an error when it is read, never a wrong byte handed
//! on) and the manifest beside it (what the stream is, in which tier, and
//! whether it is complete), which a restarted agent reads back.
//!
//! A record is `len` (u32 BE), `xxh3` (u64 BE) of the data, then the data.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Bytes before a record's data.
pub const RECORD_HEADER: u64 = 12;

/// Where a record lies in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Offset of the record (its header).
    pub offset: u64,
    /// Data bytes.
    pub len: u32,
    /// XXH3-64 of the data.
    pub xxh3: u64,
}

/// Which tier holds a stream, as the manifest says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierName {
    /// The agent's memory: lost if the agent restarts.
    Memory,
    /// The spill directory on local disk.
    Disk,
    /// The S3-compatible object store.
    S3,
}

impl TierName {
    /// `memory`, `disk` or `s3`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Disk => "disk",
            Self::S3 => "s3",
        }
    }
}

impl std::fmt::Display for TierName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The manifest of a stored stream (`<id>.json` in the store directory).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Channel name.
    pub name: String,
    /// Its workflow, if it is a workflow stream.
    pub workflow: Option<String>,
    /// The run its producer belongs to, if it said one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Where the bytes are.
    pub tier: TierName,
    /// Whether the whole stream is there, verified.
    pub complete: bool,
    /// Stream bytes (when complete).
    pub total: u64,
    /// XXH3-64 of the stream (when complete).
    pub xxh3: u64,
    /// When storing began (seconds since the epoch).
    pub created: u64,
    /// Kept until then (seconds since the epoch).
    pub retain_until: u64,
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `now + retain`, in seconds since the epoch.
pub fn until(retain: Duration) -> u64 {
    unix_now().saturating_add(retain.as_secs())
}

/// Files of stream `id` in `dir`.
pub fn paths(dir: &Path, id: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{id:016x}.stream")),
        dir.join(format!("{id:016x}.json")),
    )
}

/// Writes a manifest (atomically: a temporary file renamed over it).
pub fn write_manifest(path: &Path, manifest: &Manifest) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec(manifest)?)?;
    fs::rename(tmp, path)
}

/// A spill file being written.
pub struct SpillWriter {
    file: File,
    end: u64,
}

impl SpillWriter {
    /// Creates the file at `path` (replacing any).
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(path)?;
        Ok(Self { file, end: 0 })
    }

    /// Appends one record; returns where it lies.
    pub fn append(&mut self, data: &[u8]) -> io::Result<Record> {
        let xxh3 = twox_hash::XxHash3_64::oneshot(data);
        let len = u32::try_from(data.len()).expect("records are at most a chunk");
        let mut header = [0u8; RECORD_HEADER as usize];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4..].copy_from_slice(&xxh3.to_be_bytes());
        self.file.write_all(&header)?;
        self.file.write_all(data)?;
        let record = Record {
            offset: self.end,
            len,
            xxh3,
        };
        self.end += RECORD_HEADER + u64::from(len);
        Ok(record)
    }
}

/// Reads record `record` of the file at `path`, checking its XXH3.
pub fn read_record(path: &Path, record: Record) -> Result<Vec<u8>, StoreError> {
    let file = File::open(path).map_err(|source| StoreError::Io {
        context: "opening a spill file",
        source,
    })?;
    let mut header = [0u8; RECORD_HEADER as usize];
    let mut data = vec![0u8; record.len as usize];
    let read = file
        .read_exact_at(&mut header, record.offset)
        .and_then(|()| file.read_exact_at(&mut data, record.offset + RECORD_HEADER));
    read.map_err(|source| StoreError::Io {
        context: "reading a spill file",
        source,
    })?;
    let len = u32::from_be_bytes(header[..4].try_into().expect("4"));
    let xxh3 = u64::from_be_bytes(header[4..].try_into().expect("8"));
    if len != record.len || xxh3 != record.xxh3 || twox_hash::XxHash3_64::oneshot(&data) != xxh3 {
        return Err(StoreError::Corrupted {
            path: path.to_owned(),
            offset: record.offset,
        });
    }
    Ok(data)
}

/// The records of a spill file, from its headers (after a restart).
pub fn scan(path: &Path) -> Result<Vec<Record>, StoreError> {
    let io = |source| StoreError::Io {
        context: "scanning a spill file",
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < size {
        let mut header = [0u8; RECORD_HEADER as usize];
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.read_exact(&mut header).map_err(io)?;
        let len = u32::from_be_bytes(header[..4].try_into().expect("4"));
        let xxh3 = u64::from_be_bytes(header[4..].try_into().expect("8"));
        if offset + RECORD_HEADER + u64::from(len) > size {
            return Err(StoreError::Corrupted {
                path: path.to_owned(),
                offset,
            });
        }
        records.push(Record { offset, len, xxh3 });
        offset += RECORD_HEADER + u64::from(len);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_an_altered_byte_is_an_error() {
        let dir = std::env::temp_dir().join(format!("floki-spill-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.stream");
        let mut writer = SpillWriter::create(&path).unwrap();
        let first = writer.append(b"hello").unwrap();
        let second = writer.append(&[7; 1000]).unwrap();
        assert_eq!(scan(&path).unwrap(), vec![first, second]);
        assert_eq!(read_record(&path, second).unwrap(), vec![7; 1000]);
        // Flip one byte of the second record's data.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[8], second.offset + RECORD_HEADER + 10)
            .unwrap();
        assert!(matches!(
            read_record(&path, second),
            Err(StoreError::Corrupted { .. })
        ));
        assert_eq!(read_record(&path, first).unwrap(), b"hello");
        fs::remove_dir_all(dir).unwrap();
    }
}
