//! The store's two kinds of ends, both clients of the agent's own Unix
//! socket (so that they pair, and get a ring or a spliced socket, exactly
//! as functions do), marked as the store so that their peers hear it:
//!
//! * [`take_in`]: the receiver of a stream whose consumer is not there;
//! * [`replay`]: the sender of a stored stream to a consumer that came
//!   later, on a channel of its own, `NAME@store/N` (a name no function can
//!   open: `@` is not allowed in channel names).

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use floki_client::{ChannelOptions, Receiver, Sender, StreamRef, error_chain};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use super::{Store, StoreError, StoredStream};

/// Chunks of a stored stream, at most.
const CHUNK: usize = 1 << 20;
/// How long a store end waits to be paired: its peer is there already.
const PAIR_WITHIN: Duration = Duration::from_secs(10);

/// Where a store end meets its channel.
#[derive(Clone, Debug)]
pub struct Meeting {
    /// The agent's own Unix socket, `unix:PATH`.
    pub agent: String,
    /// The channel (for a workflow stream, the stream's name).
    pub name: String,
    /// A workflow stream: the function the store stands in for.
    pub stream: Option<StreamRef>,
    /// The workflow, for a workflow stream.
    pub workflow: Option<String>,
    /// The run of the stream's producer, if it said one.
    pub run: Option<String>,
    /// How long the stream is kept.
    pub retain: Duration,
    /// The channel's window (a workflow edge's buffer).
    pub window: Option<u64>,
}

/// The channel of the `n`th replay of stream `name`.
pub fn replay_channel(name: &str, n: u64) -> String {
    format!("{name}@store/{n}")
}

/// Takes in the stream of `meeting` as its receiver, in the background.
pub fn take_in(store: Arc<Store>, meeting: Meeting) {
    take_in_claimed(store, meeting, || true, || ());
}

/// [`take_in`] a stream pushed ahead to this node, once `claim` took its
/// link for the store: `false` if its consumer came and took it first, and
/// then the store keeps nothing. Claimed after the stream is begun, so that
/// a consumer that finds the link gone finds the stream in the store;
/// `unclaim` gives the link back if the store's end then fails to open.
pub fn take_in_claimed(
    store: Arc<Store>,
    meeting: Meeting,
    claim: impl FnOnce() -> bool + Send + 'static,
    unclaim: impl FnOnce() + Send + 'static,
) {
    tokio::spawn(async move {
        let name = meeting.name.clone();
        if let Err(err) = take(&store, meeting, claim, unclaim).await {
            debug!(channel = %name, err = %error_chain(&*err), "the store did not take the stream");
        }
    });
}

async fn take(
    store: &Arc<Store>,
    meeting: Meeting,
    claim: impl FnOnce() -> bool,
    unclaim: impl FnOnce(),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut opts = ChannelOptions::new(&meeting.agent, &meeting.name);
    opts.store = true;
    opts.stream = meeting.stream.clone();
    opts.window = meeting.window;
    opts.pair_timeout = Some(PAIR_WITHIN);
    // Begun before joining: a consumer that comes from now on is served
    // from the store (following the stream as it grows) rather than find
    // the channel taken by it.
    let stored = store
        .begin(
            &meeting.name,
            meeting.workflow.clone(),
            meeting.run.clone(),
            meeting.retain,
        )
        .await?;
    if !claim() {
        store.remove(&stored).await;
        return Err("its consumer came first".into());
    }
    let mut rx = match Receiver::connect(&opts).await {
        Ok(rx) => rx,
        Err(err) => {
            // Refused (busy) if the consumer came first: nothing to store.
            // A claimed connection this end did not take goes back to the
            // consumer.
            unclaim();
            stored.fail(format!("the stream was not stored: {err}"));
            store.remove(&stored).await;
            return Err(err.into());
        }
    };
    info!(channel = %meeting.name, "storing a stream: its consumer is not there");
    // What was appended, to seal it with: the reads below return the bytes
    // the end mark covers, verified, and the producer's ack waits for
    // `finish`, after the seal.
    let (mut total, mut hasher) = (0u64, twox_hash::XxHash3_64::new());
    let mut ended = false;
    while !ended {
        // A chunk is filled whole before it is kept: the budget counts the
        // bytes kept, so a chunk must not pin a larger allocation than its
        // length (reads from a socket return far less than a chunk).
        let mut chunk = BytesMut::zeroed(CHUNK);
        let mut filled = 0;
        while filled < CHUNK {
            match rx.read(&mut chunk[filled..]).await {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(err) => {
                    // The producer failed: what was stored is no stream.
                    stored.fail(format!("the producer's stream failed: {err}"));
                    store.remove(&stored).await;
                    return Err(err.into());
                }
            }
        }
        if filled == 0 {
            break;
        }
        let chunk = exact(chunk, filled);
        total += filled as u64;
        std::hash::Hasher::write(&mut hasher, &chunk);
        if let Err(err) = stored.append(chunk).await {
            refuse(store, &stored, rx, &err).await;
            return Err(err.into());
        }
    }
    if let Err(err) = stored.seal(total, std::hash::Hasher::finish(&hasher)).await {
        refuse(store, &stored, rx, &err).await;
        return Err(err.into());
    }
    // Only now is the producer told: its `finish` says "stored".
    let summary = rx.finish().await?;
    info!(channel = %meeting.name, bytes = summary.bytes, "stream stored");
    Ok(())
}

/// The first `len` bytes of `chunk`, in an allocation of their own size
/// when they fill only part of it (a stream's last chunk, a small stream):
/// what the memory budget counts is what the agent holds.
fn exact(mut chunk: BytesMut, len: usize) -> bytes::Bytes {
    if len == chunk.len() {
        return chunk.freeze();
    }
    chunk.truncate(len);
    bytes::Bytes::copy_from_slice(&chunk)
}

/// No room, or a failing tier: the producer hears why; the partial stream
/// goes, nothing else.
async fn refuse(store: &Arc<Store>, stored: &Arc<StoredStream>, rx: Receiver, err: &StoreError) {
    warn!(channel = %stored.name, %err, "a stream could not be stored");
    if matches!(err, StoreError::Full { .. }) {
        store.count_full();
    }
    stored.fail(err.to_string());
    rx.reject(&err.to_string()).await;
    store.remove(stored).await;
}

/// Forwards `stored` as its producer, `producer` (a workflow stream whose
/// consumer's node was unreachable when it was stored), over the link to
/// the consumer's node; once the other side has it (its consumer, or its
/// agent's store), it leaves this store.
pub async fn forward(
    store: Arc<Store>,
    stored: Arc<StoredStream>,
    agent: String,
    producer: StreamRef,
) {
    let name = stored.name.clone();
    let mut opts = ChannelOptions::new(agent, name.clone());
    opts.store = true;
    opts.stream = Some(producer);
    // The consumer's agent stores it again with its run.
    opts.run = stored.run.clone();
    opts.pair_timeout = Some(PAIR_WITHIN);
    let sent = async {
        let mut tx = Sender::connect(&opts).await?;
        let mut reader = stored.reader();
        while let Some(chunk) = reader.next().await? {
            tx.write_all(&chunk).await?;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(tx.finish().await?.bytes)
    };
    match sent.await {
        Ok(bytes) => {
            info!(channel = %name, bytes, "stored stream forwarded to the consumer's node");
            store.remove(&stored).await;
        }
        Err(err) => {
            debug!(channel = %name, err = %error_chain(&*err), "stored stream not forwarded yet")
        }
    }
}

/// Replays `stored` to the consumer on `channel` (a [`replay_channel`]), in
/// the background. A stream still being stored is followed as it grows.
pub fn replay(store: Arc<Store>, stored: Arc<StoredStream>, agent: String, channel: String) {
    tokio::spawn(async move {
        let name = stored.name.clone();
        match serve(&stored, &agent, channel).await {
            Ok(bytes) => {
                store.count_replay();
                info!(channel = %name, bytes, "stored stream replayed");
            }
            Err(err) => {
                warn!(channel = %name, err = %error_chain(&*err), "stored stream not replayed")
            }
        }
    });
}

async fn serve(
    stored: &Arc<StoredStream>,
    agent: &str,
    channel: String,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut opts = ChannelOptions::new(agent, channel);
    opts.store = true;
    opts.pair_timeout = Some(PAIR_WITHIN);
    let mut tx = Sender::connect(&opts).await?;
    let mut reader = stored.reader();
    loop {
        match reader.next().await {
            Ok(Some(chunk)) => tx.write_all(&chunk).await?,
            Ok(None) => break,
            Err(err) => {
                // Damaged or unfinished: the consumer gets the reason, never
                // an end mark.
                tx.abort(&err.to_string()).await;
                return Err(err.into());
            }
        }
    }
    Ok(tx.finish().await?.bytes)
}
