//! The store's third tier: an S3-compatible object store (`--store-s3
//! s3://BUCKET/PREFIX`; endpoint and credentials from the usual `AWS_*`
//! variables, `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for a local service). A
//! stream there is one object in the spill file's record format, uploaded
//! in parts as it arrives and readable once complete.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use object_store::{MultipartUpload, ObjectStore, PutPayload, aws::AmazonS3Builder, path::Path};
use tokio::sync::Mutex;

use super::{StoreError, spill::RECORD_HEADER};

/// Parts are at least this large (S3 wants 5 MiB, the last one aside).
const PART: usize = 8 << 20;

/// The object store and where the streams go in it.
pub struct S3Tier {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The URL, for status.
    pub url: String,
}

impl S3Tier {
    /// The tier at `url` (`s3://bucket/prefix`).
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadS3 {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("give s3://BUCKET[/PREFIX]".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|err| bad(err.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
            url: url.to_owned(),
        })
    }

    /// The object of stream `id`.
    pub fn object(self: &Arc<Self>, id: u64, _total: u64) -> S3Object {
        let name = format!("{id:016x}.stream");
        let path = if self.prefix.is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        };
        S3Object {
            tier: self.clone(),
            path,
            upload: Arc::new(Mutex::new(None)),
        }
    }
}

struct Upload {
    multipart: Box<dyn MultipartUpload>,
    buffer: Vec<u8>,
}

/// One stream's object.
#[derive(Clone)]
pub struct S3Object {
    tier: Arc<S3Tier>,
    path: Path,
    upload: Arc<Mutex<Option<Upload>>>,
}

fn failed(err: object_store::Error) -> StoreError {
    StoreError::S3(err.to_string())
}

impl S3Object {
    /// Appends one record (uploading a part once enough is buffered).
    pub async fn append(&self, chunk: &[u8]) -> Result<(), StoreError> {
        let mut upload = self.upload.lock().await;
        if upload.is_none() {
            let multipart = self
                .tier
                .store
                .put_multipart(&self.path)
                .await
                .map_err(failed)?;
            *upload = Some(Upload {
                multipart,
                buffer: Vec::with_capacity(PART + chunk.len()),
            });
        }
        let upload = upload.as_mut().expect("started above");
        let len = u32::try_from(chunk.len()).expect("records are at most a chunk");
        upload.buffer.extend_from_slice(&len.to_be_bytes());
        upload
            .buffer
            .extend_from_slice(&twox_hash::XxHash3_64::oneshot(chunk).to_be_bytes());
        upload.buffer.extend_from_slice(chunk);
        if upload.buffer.len() >= PART {
            let part = std::mem::take(&mut upload.buffer);
            upload
                .multipart
                .put_part(PutPayload::from(part))
                .await
                .map_err(failed)?;
        }
        Ok(())
    }

    /// Uploads what is buffered and completes the object.
    pub async fn complete(&self) -> Result<(), StoreError> {
        let Some(mut upload) = self.upload.lock().await.take() else {
            // Nothing appended: an empty object.
            self.tier
                .store
                .put(&self.path, PutPayload::default())
                .await
                .map_err(failed)?;
            return Ok(());
        };
        if !upload.buffer.is_empty() {
            let part = std::mem::take(&mut upload.buffer);
            upload
                .multipart
                .put_part(PutPayload::from(part))
                .await
                .map_err(failed)?;
        }
        upload.multipart.complete().await.map_err(failed)?;
        Ok(())
    }

    /// Removes the object (best effort).
    pub async fn delete(&self) {
        if let Some(mut upload) = self.upload.lock().await.take() {
            let _ = upload.multipart.abort().await;
        }
        let _ = self.tier.store.delete(&self.path).await;
    }

    /// Reads the object's records from the first.
    pub async fn reader(&self) -> Result<S3Reader, StoreError> {
        let got = self.tier.store.get(&self.path).await.map_err(failed)?;
        Ok(S3Reader {
            body: got.into_stream().boxed(),
            buffer: BytesMut::new(),
            skip: 0,
            path: self.path.to_string(),
            offset: 0,
        })
    }
}

/// Records read from an object, each checked.
pub struct S3Reader {
    body: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    buffer: BytesMut,
    skip: usize,
    path: String,
    offset: u64,
}

impl S3Reader {
    /// Skips the first `records` (already read from another tier).
    pub fn skip(&mut self, records: usize) {
        self.skip = records;
    }

    /// The next record's data; `None` at the end of the object.
    pub async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        loop {
            match self.record()? {
                Some(data) if self.skip > 0 => {
                    self.skip -= 1;
                    drop(data);
                }
                Some(data) => return Ok(Some(data)),
                None => match self.body.next().await {
                    Some(bytes) => self.buffer.extend_from_slice(&bytes.map_err(failed)?),
                    None if self.buffer.is_empty() => return Ok(None),
                    None => {
                        return Err(StoreError::Corrupted {
                            path: self.path.clone().into(),
                            offset: self.offset,
                        });
                    }
                },
            }
        }
    }

    /// A whole record from the buffer, if there is one.
    fn record(&mut self) -> Result<Option<Bytes>, StoreError> {
        let header = RECORD_HEADER as usize;
        if self.buffer.len() < header {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buffer[..4].try_into().expect("4")) as usize;
        let xxh3 = u64::from_be_bytes(self.buffer[4..12].try_into().expect("8"));
        if self.buffer.len() < header + len {
            return Ok(None);
        }
        let mut record = self.buffer.split_to(header + len);
        let data = record.split_off(header).freeze();
        if twox_hash::XxHash3_64::oneshot(&data) != xxh3 {
            return Err(StoreError::Corrupted {
                path: self.path.clone().into(),
                offset: self.offset,
            });
        }
        self.offset += (header + len) as u64;
        Ok(Some(data))
    }
}
