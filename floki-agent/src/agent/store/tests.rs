//! The store without an agent: tiers and budgets, readers, restarts.

use std::{hash::Hasher as _, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use twox_hash::XxHash3_64;

use super::{Store, StoreConfig, StoreError, StoredStream, TierName};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn config(tag: &str, memory: u64, disk: u64) -> StoreConfig {
    let dir = std::env::temp_dir().join(format!("floki-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    StoreConfig {
        dir,
        memory,
        disk,
        s3: None,
        grace: Duration::from_millis(200),
        retain: Duration::from_secs(3600),
    }
}

/// `n` chunks of `size` bytes, each filled with its index.
fn chunks(n: usize, size: u64) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(vec![i as u8; size as usize]))
        .collect()
}

fn digest(chunks: &[Bytes]) -> (u64, u64) {
    let mut hasher = XxHash3_64::new();
    let mut total = 0;
    for chunk in chunks {
        hasher.write(chunk);
        total += chunk.len() as u64;
    }
    (total, hasher.finish())
}

/// Begins storing a plain stream `name`, kept a minute.
async fn begin(store: &Store, name: &str) -> Result<Arc<StoredStream>, StoreError> {
    begin_in(store, name, None).await
}

/// [`begin`] for a producer of `run`.
async fn begin_in(
    store: &Store,
    name: &str,
    run: Option<&str>,
) -> Result<Arc<StoredStream>, StoreError> {
    let run = run.map(str::to_owned);
    store.begin(name, None, run, Duration::from_secs(60)).await
}

/// Stores `data` whole under `name`.
async fn store_all(store: &Store, name: &str, data: &[Bytes]) -> Result<(), StoreError> {
    store_all_in(store, name, None, data).await
}

/// [`store_all`] for a producer of `run`.
async fn store_all_in(
    store: &Store,
    name: &str,
    run: Option<&str>,
    data: &[Bytes],
) -> Result<(), StoreError> {
    let stream = begin_in(store, name, run).await?;
    for chunk in data {
        stream.append(chunk.clone()).await?;
    }
    let (total, xxh3) = digest(data);
    stream.seal(total, xxh3).await
}

/// Everything a reader of `name` gets, or its error.
async fn read_all(store: &Store, name: &str) -> Result<Vec<Bytes>, StoreError> {
    let mut reader = store.get(name).expect("stored").reader();
    let mut out = Vec::new();
    while let Some(chunk) = reader.next().await? {
        out.push(chunk);
    }
    Ok(out)
}

fn cleanup(dir: PathBuf) {
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_stream_beyond_the_memory_budget_spills_whole_to_disk_and_reads_back() {
    let config = config("spill", MIB, 64 * MIB);
    let store = Store::open(config.clone()).unwrap();
    let small = chunks(2, 256 * KIB);
    let large = chunks(12, 256 * KIB);
    store_all(&store, "small", &small).await.unwrap();
    store_all(&store, "large", &large).await.unwrap();
    let view = store.view();
    let tier = |name: &str| view.streams.iter().find(|s| s.name == name).unwrap().tier;
    assert_eq!(tier("small"), TierName::Memory);
    assert_eq!(tier("large"), TierName::Disk);
    // The large stream's memory went back to the budget when it spilled.
    assert_eq!(view.memory.0, 512 * KIB);
    assert!(view.disk.0 >= 3 * MIB);
    assert_eq!(read_all(&store, "small").await.unwrap(), small);
    assert_eq!(read_all(&store, "large").await.unwrap(), large);
    cleanup(config.dir);
}

#[tokio::test]
async fn with_no_room_anywhere_the_stream_is_refused_and_the_others_stay() {
    let config = config("full", MIB, 2 * MIB);
    let store = Store::open(config.clone()).unwrap();
    let kept = chunks(4, 256 * KIB);
    store_all(&store, "kept", &kept).await.unwrap();
    let refused = store_all(&store, "too-big", &chunks(16, 256 * KIB)).await;
    assert!(
        matches!(refused, Err(StoreError::Full { .. })),
        "{refused:?}"
    );
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("--store-disk"), "{message}");
    let failed = store.get("too-big").unwrap();
    store.remove(&failed).await;
    assert_eq!(read_all(&store, "kept").await.unwrap(), kept);
    let view = store.view();
    assert_eq!(view.streams.len(), 1);
    assert_eq!((view.memory.0, view.disk.0 > 0), (MIB, false));
    cleanup(config.dir);
}

#[tokio::test]
async fn a_reader_follows_a_stream_as_it_is_stored() {
    let config = config("follow", 4 * MIB, 4 * MIB);
    let store = Store::open(config.clone()).unwrap();
    let data = chunks(8, 64 * KIB);
    let stream = begin(&store, "s").await.unwrap();
    let reading = {
        let mut reader = stream.reader();
        tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(chunk) = reader.next().await.unwrap() {
                out.push(chunk);
            }
            out
        })
    };
    for chunk in &data {
        stream.append(chunk.clone()).await.unwrap();
        tokio::task::yield_now().await;
    }
    let (total, xxh3) = digest(&data);
    stream.seal(total, xxh3).await.unwrap();
    assert_eq!(reading.await.unwrap(), data);
    cleanup(config.dir);
}

#[tokio::test]
async fn a_stream_that_does_not_match_its_end_mark_is_an_error_at_the_end() {
    let config = config("mismatch", 4 * MIB, 4 * MIB);
    let store = Store::open(config.clone()).unwrap();
    let stream = begin(&store, "s").await.unwrap();
    stream.append(Bytes::from_static(b"abc")).await.unwrap();
    stream.seal(3, 0).await.unwrap();
    let read = read_all(&store, "s").await;
    assert!(matches!(read, Err(StoreError::Mismatch { .. })), "{read:?}");
    cleanup(config.dir);
}

#[tokio::test]
async fn after_a_restart_spilled_streams_are_back_and_memory_ones_are_lost() {
    let config = config("restart", MIB, 64 * MIB);
    let spilled = chunks(8, 256 * KIB);
    {
        let store = Store::open(config.clone()).unwrap();
        store_all(&store, "spilled", &spilled).await.unwrap();
        store_all(&store, "held", &chunks(1, KIB)).await.unwrap();
        // The agent dies: nothing is closed or removed.
        std::mem::forget(store);
    }
    let store = Store::open(config.clone()).unwrap();
    assert_eq!(read_all(&store, "spilled").await.unwrap(), spilled);
    assert!(store.get("held").is_none());
    let lost = store.lost("held", None).expect("known to be lost");
    assert!(lost.contains("run its producer again"), "{lost}");
    assert!(store.view().disk.0 >= 2 * MIB);
    cleanup(config.dir);
}

#[tokio::test]
async fn a_stream_is_served_to_consumers_of_its_run_only_and_keeps_it_through_a_restart() {
    let config = config("runs", MIB, 64 * MIB);
    let spilled = chunks(8, 256 * KIB);
    {
        let store = Store::open(config.clone()).unwrap();
        store_all_in(&store, "spilled", Some("run-1"), &spilled)
            .await
            .unwrap();
        store_all_in(&store, "held", Some("run-1"), &chunks(1, KIB))
            .await
            .unwrap();
        for name in ["spilled", "held"] {
            assert!(store.get_for(name, Some("run-2")).is_none());
            assert!(store.get_for(name, Some("run-1")).is_some());
            // A consumer that says no run reads whatever is stored.
            assert!(store.get_for(name, None).is_some());
        }
        std::mem::forget(store);
    }
    let store = Store::open(config.clone()).unwrap();
    assert!(store.get_for("spilled", Some("run-2")).is_none());
    let back = store
        .get_for("spilled", Some("run-1"))
        .expect("spilled survives");
    assert_eq!(back.run.as_deref(), Some("run-1"));
    // Another run's lost stream is not this consumer's: it waits for its
    // own producer instead of being told its stream is lost.
    assert!(store.lost("held", Some("run-2")).is_none());
    assert!(store.lost("held", Some("run-1")).is_some());
    cleanup(config.dir);
}

#[tokio::test]
async fn deleting_a_workflow_frees_its_streams_memory_and_files() {
    let config = config("delete", MIB, 64 * MIB);
    let store = Store::open(config.clone()).unwrap();
    for (name, n) in [("wf/a/p>q", 2), ("wf/b/p>q", 12)] {
        let stream = store
            .begin(name, Some("wf".into()), None, Duration::MAX)
            .await
            .unwrap();
        let data = chunks(n, 256 * KIB);
        for chunk in &data {
            stream.append(chunk.clone()).await.unwrap();
        }
        let (total, xxh3) = digest(&data);
        stream.seal(total, xxh3).await.unwrap();
    }
    store_all(&store, "plain", &chunks(1, KIB)).await.unwrap();
    store.delete_workflow("wf").await;
    let view = store.view();
    assert_eq!(view.streams.len(), 1);
    assert_eq!((view.memory.0, view.disk.0), (KIB, 0));
    let files: Vec<_> = std::fs::read_dir(&config.dir).unwrap().collect();
    // The plain stream's manifest only.
    assert_eq!(files.len(), 1, "{files:?}");
    cleanup(config.dir);
}

#[tokio::test]
async fn a_reader_of_a_stream_replaced_by_its_producers_next_run_fails_with_why() {
    // Memory tier and disk tier: each reader has read one chunk when the
    // producer's next run starts storing the stream again.
    let config = config("replaced", MIB, 64 * MIB);
    let store = Store::open(config.clone()).unwrap();
    for (name, n) in [("in-memory", 2), ("spilled", 12)] {
        store_all(&store, name, &chunks(n, 256 * KIB))
            .await
            .unwrap();
        let mut reader = store.get(name).unwrap().reader();
        reader.next().await.unwrap().expect("a first chunk");
        begin(&store, name).await.unwrap();
        let rest = reader.next().await;
        let Err(StoreError::Failed(why)) = &rest else {
            panic!("{name}: a replaced stream read on: {rest:?}");
        };
        assert!(why.contains(name) && why.contains("ran again"), "{why}");
        assert!(why.contains("run the consumer again"), "{why}");
    }
    cleanup(config.dir);
}

#[tokio::test]
async fn a_stream_replaced_while_being_stored_takes_no_more_bytes_and_leaves_nothing() {
    // In memory (1 chunk) and spilled to disk (8 chunks, past the 1 MiB
    // memory budget) when the producer's next run begins.
    let config = config("replaced-storing", MIB, 64 * MIB);
    let store = Store::open(config.clone()).unwrap();
    for (name, n) in [("in-memory", 1), ("spilled", 8)] {
        let data = chunks(n + 1, 256 * KIB);
        let old = begin(&store, name).await.unwrap();
        for chunk in &data[..n] {
            old.append(chunk.clone()).await.unwrap();
        }
        let new = begin(&store, name).await.unwrap();
        let appended = old.append(data[n].clone()).await;
        assert!(
            matches!(&appended, Err(StoreError::Failed(why)) if why.contains("ran again")),
            "{name}: {appended:?}"
        );
        let (total, xxh3) = digest(&data);
        assert!(old.seal(total, xxh3).await.is_err(), "{name}");
        // None of the old stream's memory or disk, nor its files.
        let view = store.view();
        assert_eq!((view.memory.0, view.disk.0), (0, 0), "{name}");
        new.append(data[0].clone()).await.unwrap();
        assert_eq!(store.view().memory.0, 256 * KIB, "{name}");
        let (total, xxh3) = digest(&data[..1]);
        new.seal(total, xxh3).await.unwrap();
        store.remove(&new).await;
    }
    let files: Vec<_> = std::fs::read_dir(&config.dir).unwrap().collect();
    assert!(files.is_empty(), "{files:?}");
    cleanup(config.dir);
}
