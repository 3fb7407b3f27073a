//! The functions of the paper benchmark, one process each
//! (`floki-lab peer paper-endpoint PLAN`): a producer writes its streams and
//! a consumer reads and checks its streams, through Floki, an S3 object store
//! or Redis. Each prints one JSON line: when it started and ended (the
//! monotonic clock, the same for every process of the machine), the bytes it
//! moved, its CPU time and its peak memory.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context as _, bail};
use floki_client::workflow::{self, EdgeOptions};
use futures::StreamExt as _;
use object_store::{
    ObjectStore as _, PutPayload, WriteMultipart, aws::AmazonS3Builder, path::Path as ObjectPath,
};
use serde::{Deserialize, Serialize};

use super::{
    content::{Checker, Content, Contents},
    scenario::Stream,
};

/// How a function reaches the system under test.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "system", rename_all = "snake_case")]
pub enum Access {
    Floki {
        agent: String,
        workflow: String,
        token: String,
        edge: String,
        /// Producers wait for their consumers and never have a stream
        /// stored (warm runs measure the live path: a stream stored once,
        /// when its consumer came late, would be replayed to that
        /// consumer's next run).
        #[serde(default)]
        live: bool,
    },
    S3 {
        endpoint: String,
        bucket: String,
        /// `None`: the usual AWS environment variables.
        credentials: Option<(String, String)>,
    },
    Redis {
        url: String,
    },
    /// The ceiling (`bench small`): a TCP connection from each producer to
    /// each of its consumers, opened before the runs.
    BareTcp {
        /// Where each consumer listens, by function.
        consumers: std::collections::BTreeMap<String, String>,
    },
}

impl Access {
    /// An s3s-fs, with its credentials.
    pub fn s3(endpoint: floki_tests::servers::S3Endpoint) -> Self {
        Self::S3 {
            endpoint: endpoint.url,
            bucket: endpoint.bucket,
            credentials: Some((endpoint.key, endpoint.secret)),
        }
    }
}

/// What one function does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub access: Access,
    pub function: String,
    pub produce: bool,
    /// Its streams (out of it for a producer, into it for a consumer).
    pub streams: Vec<Stream>,
}

/// What one function measured.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Monotonic clock, nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    pub bytes: u64,
    pub cpu_seconds: f64,
    pub max_rss_bytes: u64,
    /// Bytes it caused to be written to storage.
    pub write_bytes: u64,
}

/// Object stores get parts of this size.
const PART: usize = 16 << 20;
/// Redis values are chunks of this size (a value may not exceed 512 MB).
const REDIS_CHUNK: usize = 64 << 20;

/// Runs the plan given as JSON and prints its report: a cold function,
/// whose connections are part of its time.
pub fn run(plan_json: &str) -> anyhow::Result<()> {
    let plan: Plan = serde_json::from_str(plan_json).context("reading the plan")?;
    let start_ns = monotonic_ns();
    let connections = Connections::open(&plan)?;
    let bytes = perform(
        &plan,
        &connections,
        &Contents::new(&plan.streams),
        Streams::AtOnce,
    )?;
    println!(
        "{}",
        serde_json::to_string(&report(start_ns, bytes, true)?)?
    );
    Ok(())
}

/// A warm function: connects, generates its streams' content, says
/// `ready`, then runs the plan once for each `go` line on stdin and prints
/// a report for each (its time from the `go`, the connections already open
/// and the content ready). It moves its streams in turn on its own thread,
/// as a function does with small streams (`bench small` runs 1 MiB cells
/// only: every stream fits its buffer, so none waits for another).
pub fn serve(plan_json: &str) -> anyhow::Result<()> {
    let plan: Plan = serde_json::from_str(plan_json).context("reading the plan")?;
    let connections = Connections::open(&plan)?;
    let contents = Contents::new(&plan.streams);
    let say = |line: &str| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush().context("writing to the driver")
    };
    say("ready")?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line != "go" {
            bail!("expected `go` from the driver, got `{line}`");
        }
        let start_ns = monotonic_ns();
        let bytes = perform(&plan, &connections, &contents, Streams::InTurn)?;
        // Nothing of a warm run reads its disk writes: not read from /proc
        // either, where the other functions' runs would pay for it.
        say(&serde_json::to_string(&report(start_ns, bytes, false)?)?)?;
    }
    Ok(())
}

/// What a function holds open between its runs: its Redis connections (one
/// for a producer, one per stream for a consumer, which may read them all
/// at once: [`Streams::AtOnce`]). Floki needs none: each stream is a
/// channel of its own.
enum Connections {
    None,
    /// Each used by one thread at a time.
    Redis(Vec<Mutex<redis::Connection>>),
    /// A producer's connection to each of its streams' consumers, in the
    /// plan's order; a consumer's listener, and the connection of each
    /// of its streams' producers once they connected (at its first run).
    BareTcp {
        listener: Option<TcpListener>,
        streams: Mutex<Vec<TcpStream>>,
    },
}

impl Connections {
    fn open(plan: &Plan) -> anyhow::Result<Self> {
        Ok(match &plan.access {
            Access::Redis { url } => {
                let count = if plan.produce { 1 } else { plan.streams.len() };
                Self::Redis(
                    (0..count)
                        .map(|_| redis_connection(url).map(Mutex::new))
                        .collect::<anyhow::Result<_>>()?,
                )
            }
            Access::BareTcp { consumers } if !plan.produce => {
                let listen = consumers
                    .get(&plan.function)
                    .with_context(|| format!("no address for consumer {}", plan.function))?;
                Self::BareTcp {
                    listener: Some(
                        TcpListener::bind(listen)
                            .with_context(|| format!("listening on {listen}"))?,
                    ),
                    streams: Mutex::new(Vec::new()),
                }
            }
            Access::BareTcp { consumers } => Self::BareTcp {
                listener: None,
                streams: Mutex::new(
                    plan.streams
                        .iter()
                        .map(|stream| bare_connect(&consumers[&stream.consumer], &plan.function))
                        .collect::<anyhow::Result<_>>()?,
                ),
            },
            Access::Floki { .. } | Access::S3 { .. } => Self::None,
        })
    }
}

/// How a function moves its streams.
#[derive(Clone, Copy)]
enum Streams {
    /// All at once, a thread each (streams of any size: a stream larger
    /// than its buffer waits for its consumer, the others go on).
    AtOnce,
    /// One after another on the function's own thread (small streams).
    InTurn,
}

impl Streams {
    /// Runs `work` on every item, at once or in turn; the sum of what they
    /// moved.
    fn each<T: Send>(
        self,
        items: Vec<T>,
        work: impl Fn(T) -> anyhow::Result<u64> + Sync,
    ) -> anyhow::Result<u64> {
        match self {
            Self::InTurn => items.into_iter().map(work).sum(),
            Self::AtOnce => std::thread::scope(|scope| {
                let work = &work;
                let handles: Vec<_> = items
                    .into_iter()
                    .map(|item| scope.spawn(move || work(item)))
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| handle.join().expect("a stream thread does not panic"))
                    .sum()
            }),
        }
    }
}

/// Moves the plan's streams once; the bytes moved.
fn perform(
    plan: &Plan,
    connections: &Connections,
    contents: &Contents,
    streams: Streams,
) -> anyhow::Result<u64> {
    match (&plan.access, plan.produce, connections) {
        (Access::Floki { .. }, true, _) => floki_produce(plan, contents, streams),
        (Access::Floki { .. }, false, _) => floki_consume(plan, contents, streams),
        (Access::S3 { .. }, produce, _) => object_store_run(plan, produce, contents),
        (Access::Redis { .. }, true, Connections::Redis(cons)) => {
            redis_produce(&mut lock(&cons[0]), &plan.streams, contents)
        }
        (Access::Redis { .. }, false, Connections::Redis(cons)) => {
            redis_consume(cons, &plan.streams, contents, streams)
        }
        (Access::BareTcp { .. }, true, Connections::BareTcp { streams, .. }) => {
            bare_produce(&mut lock(streams), &plan.streams, contents)
        }
        (Access::BareTcp { .. }, false, Connections::BareTcp { listener, streams }) => {
            let mut streams = lock(streams);
            if streams.is_empty() {
                *streams = bare_accept(
                    listener.as_ref().context("a consumer listens")?,
                    &plan.streams,
                )?;
            }
            bare_consume(&mut streams, &plan.streams, contents)
        }
        (Access::Redis { .. } | Access::BareTcp { .. }, _, _) => {
            bail!("{} without its connections", plan.function)
        }
    }
}

/// This process's report of a run from `start_ns` to now; its disk writes
/// (so far) if `disk`.
fn report(start_ns: u64, bytes: u64, disk: bool) -> anyhow::Result<Report> {
    let end_ns = monotonic_ns();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(Report {
        start_ns,
        end_ns,
        bytes,
        cpu_seconds: seconds(usage.user_time()) + seconds(usage.system_time()),
        max_rss_bytes: usage.max_rss() as u64 * 1024,
        write_bytes: if disk {
            super::usage::read(std::process::id()).write_bytes
        } else {
            0
        },
    })
}

/// Deletes what a run left in an object store or Redis (not timed).
pub fn clean(access_json: &str, keys_json: &str) -> anyhow::Result<()> {
    let access: Access = serde_json::from_str(access_json)?;
    let keys: Vec<(String, u64)> = serde_json::from_str(keys_json)?;
    match access {
        Access::S3 { .. } => runtime()?.block_on(async {
            let store = object_store(&access)?;
            for (key, _) in &keys {
                let _ = store.delete(&ObjectPath::from(key.as_str())).await;
            }
            anyhow::Ok(())
        }),
        Access::Redis { url } => {
            let mut con = redis::Client::open(url.as_str())?.get_connection()?;
            for (key, bytes) in &keys {
                for chunk in 0..chunks(*bytes) {
                    redis::cmd("DEL")
                        .arg(format!("{key}:{chunk}"))
                        .query::<()>(&mut con)?;
                }
            }
            Ok(())
        }
        Access::Floki { .. } | Access::BareTcp { .. } => Ok(()),
    }
}

pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

fn stream_for<'a>(plan: &'a Plan, peer: &str) -> anyhow::Result<&'a Stream> {
    plan.streams
        .iter()
        .find(|s| {
            if plan.produce {
                s.consumer == peer
            } else {
                s.producer == peer
            }
        })
        .with_context(|| format!("no stream with {peer} in the plan"))
}

fn edge_options(plan: &Plan) -> anyhow::Result<EdgeOptions> {
    let Access::Floki {
        agent,
        workflow,
        token,
        edge,
        live,
    } = &plan.access
    else {
        bail!("not a Floki plan");
    };
    let mut opts = EdgeOptions::new(agent, workflow, token, edge, &plan.function);
    opts.live = *live;
    Ok(opts)
}

/// Writes every stream. At once, a thread each, each stream finished on
/// its own; in turn, each stream written and ended, then every verdict
/// waited for: the consumers verify their streams at once.
fn floki_produce(plan: &Plan, contents: &Contents, streams: Streams) -> anyhow::Result<u64> {
    let (_, senders) = workflow::blocking::senders(&edge_options(plan)?)?;
    let write = |peer: &str, tx: &mut floki_client::blocking::Sender| -> anyhow::Result<()> {
        let stream = stream_for(plan, peer)?;
        let content = contents.of(stream);
        let mut sent = 0;
        while sent < stream.bytes {
            let piece = content.piece(sent, stream.bytes - sent);
            tx.write_all(piece)?;
            sent += piece.len() as u64;
        }
        Ok(())
    };
    match streams {
        Streams::AtOnce => streams.each(senders, |(peer, mut tx)| {
            write(&peer, &mut tx)?;
            Ok(tx.finish()?.bytes)
        }),
        Streams::InTurn => {
            let mut ended = Vec::with_capacity(senders.len());
            for (peer, mut tx) in senders {
                write(&peer, &mut tx)?;
                tx.end()?;
                ended.push(tx);
            }
            ended.into_iter().map(|tx| Ok(tx.finish()?.bytes)).sum()
        }
    }
}

fn floki_consume(plan: &Plan, contents: &Contents, streams: Streams) -> anyhow::Result<u64> {
    let (_, receivers) = workflow::blocking::receivers(&edge_options(plan)?)?;
    streams.each(receivers, |(peer, mut rx)| {
        let stream = stream_for(plan, &peer)?;
        let mut checker = Checker::new(contents.of(stream), stream.bytes);
        // Checked where the bytes are: in place in the ring over shm, in
        // the receiver's buffer over a socket.
        loop {
            let data = rx.fill_buf()?;
            if data.is_empty() {
                break;
            }
            let n = data.len().min(1 << 20);
            checker.take(&data[..n])?;
            rx.consume(n);
        }
        rx.finish()?;
        checker.done()
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn object_store(access: &Access) -> anyhow::Result<object_store::aws::AmazonS3> {
    let Access::S3 {
        endpoint,
        bucket,
        credentials,
    } = access
    else {
        bail!("not an S3 plan");
    };
    let mut builder = AmazonS3Builder::from_env()
        // A request is a whole object: a GB-sized GET from a slow server takes
        // minutes (the 30 s default would cut it off and retry with a range).
        // First: client options replace all earlier ones, `allow_http` too.
        .with_client_options(
            object_store::ClientOptions::new().with_timeout(std::time::Duration::from_secs(3600)),
        )
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false);
    if let Some((key, secret)) = credentials {
        builder = builder
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_region("us-east-1");
    }
    builder.build().context("configuring the S3 client")
}

/// A producer writes each of its objects once (a broadcast's consumers
/// share one); a consumer reads each of its objects, all at once.
fn object_store_run(plan: &Plan, produce: bool, contents: &Contents) -> anyhow::Result<u64> {
    let store = object_store(&plan.access)?;
    let mut objects: Vec<&Stream> = Vec::new();
    for stream in &plan.streams {
        if !(produce && objects.iter().any(|o| o.key == stream.key)) {
            objects.push(stream);
        }
    }
    runtime()?.block_on(async {
        let work = objects.iter().map(|stream| {
            let store = &store;
            async move {
                let content = contents.of(stream);
                if produce {
                    put(store, stream, content).await
                } else {
                    get(store, stream, content).await
                }
                .with_context(|| format!("object {}", stream.key))
            }
        });
        let results = futures::future::join_all(work).await;
        results.into_iter().sum::<anyhow::Result<u64>>()
    })
}

async fn put(
    store: &object_store::aws::AmazonS3,
    stream: &Stream,
    content: &Content,
) -> anyhow::Result<u64> {
    let path = ObjectPath::from(stream.key.as_str());
    if stream.bytes <= PART as u64 {
        let mut data = vec![0u8; stream.bytes as usize];
        content.fill(0, &mut data);
        store.put(&path, PutPayload::from(data)).await?;
        return Ok(stream.bytes);
    }
    let upload = store.put_multipart(&path).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut sent = 0;
    while sent < stream.bytes {
        // At most a few parts in flight: memory stays bounded.
        writer.wait_for_capacity(4).await?;
        let piece = content.piece(sent, stream.bytes - sent);
        writer.write(piece);
        sent += piece.len() as u64;
    }
    writer.finish().await?;
    Ok(sent)
}

async fn get(
    store: &object_store::aws::AmazonS3,
    stream: &Stream,
    content: &Content,
) -> anyhow::Result<u64> {
    let mut checker = Checker::new(content, stream.bytes);
    let mut body = store
        .get(&ObjectPath::from(stream.key.as_str()))
        .await?
        .into_stream();
    while let Some(chunk) = body.next().await {
        checker.take(&chunk?)?;
    }
    checker.done()
}

fn chunks(bytes: u64) -> u64 {
    bytes.div_ceil(REDIS_CHUNK as u64).max(1)
}

/// A connection; one a stream thread panicked with is as good as any.
fn lock<T>(con: &Mutex<T>) -> MutexGuard<'_, T> {
    con.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn redis_connection(url: &str) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(url).context("the Redis URL")?;
    Ok(retried(|| client.get_connection())?)
}

/// `connect` until it succeeds, for up to 5 s: the server (or consumer) may
/// still be starting; its last error if it never does.
fn retried<T, E>(mut connect: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let mut last = None;
    for _ in 0..50 {
        match connect() {
            Ok(connected) => return Ok(connected),
            Err(err) => last = Some(err),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.expect("tried"))
}

/// Each object as chunks `KEY:0`, `KEY:1`, ...
fn redis_produce(
    con: &mut redis::Connection,
    streams: &[Stream],
    contents: &Contents,
) -> anyhow::Result<u64> {
    let mut written: Vec<&str> = Vec::new();
    let mut total = 0;
    let mut chunk = Vec::with_capacity(REDIS_CHUNK);
    for stream in streams {
        if written.contains(&stream.key.as_str()) {
            continue;
        }
        let content = contents.of(stream);
        for index in 0..chunks(stream.bytes) {
            let offset = index * REDIS_CHUNK as u64;
            let len = (stream.bytes - offset).min(REDIS_CHUNK as u64) as usize;
            chunk.resize(len, 0);
            content.fill(offset, &mut chunk);
            redis::cmd("SET")
                .arg(format!("{}:{index}", stream.key))
                .arg(&chunk[..])
                .query::<()>(con)?;
            total += len as u64;
        }
        written.push(&stream.key);
    }
    Ok(total)
}

/// Every stream, a connection each (at once: a thread each).
fn redis_consume(
    cons: &[Mutex<redis::Connection>],
    streams: &[Stream],
    contents: &Contents,
    moving: Streams,
) -> anyhow::Result<u64> {
    let each: Vec<_> = streams.iter().zip(cons).collect();
    moving.each(each, |(stream, con)| {
        let mut con = lock(con);
        let mut checker = Checker::new(contents.of(stream), stream.bytes);
        for index in 0..chunks(stream.bytes) {
            let value: Vec<u8> = redis::cmd("GET")
                .arg(format!("{}:{index}", stream.key))
                .query(&mut *con)?;
            checker.take(&value)?;
        }
        checker.done()
    })
}

/// A producer's connection to the consumer listening at `addr`, which it
/// tells its name (a line).
fn bare_connect(addr: &str, producer: &str) -> anyhow::Result<TcpStream> {
    let mut conn =
        retried(|| TcpStream::connect(addr)).with_context(|| format!("connecting to {addr}"))?;
    conn.set_nodelay(true)?;
    conn.write_all(format!("{producer}\n").as_bytes())?;
    Ok(conn)
}

/// A consumer's connections from its streams' producers, in the plan's
/// order, each known by the name its producer sent first.
fn bare_accept(listener: &TcpListener, streams: &[Stream]) -> anyhow::Result<Vec<TcpStream>> {
    let mut by_producer = std::collections::BTreeMap::new();
    while by_producer.len() < streams.len() {
        let (mut conn, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        // A byte at a time: nothing of the stream behind the name is read.
        let mut name = Vec::new();
        let mut byte = [0u8; 1];
        while conn.read(&mut byte)? == 1 && byte[0] != b'\n' {
            name.push(byte[0]);
        }
        by_producer.insert(String::from_utf8_lossy(&name).into_owned(), conn);
    }
    streams
        .iter()
        .map(|stream| {
            by_producer
                .remove(&stream.producer)
                .with_context(|| format!("no connection from {}", stream.producer))
        })
        .collect()
}

/// Writes each stream in turn (its length, then its bytes), then waits for
/// each consumer's one-byte answer.
fn bare_produce(
    conns: &mut [TcpStream],
    streams: &[Stream],
    contents: &Contents,
) -> anyhow::Result<u64> {
    let mut total = 0;
    for (conn, stream) in conns.iter_mut().zip(streams) {
        let content = contents.of(stream);
        conn.write_all(&stream.bytes.to_be_bytes())?;
        let mut sent = 0;
        while sent < stream.bytes {
            let piece = content.piece(sent, stream.bytes - sent);
            conn.write_all(piece)?;
            sent += piece.len() as u64;
        }
        total += sent;
    }
    for conn in conns.iter_mut() {
        let mut answer = [0u8; 1];
        conn.read_exact(&mut answer)?;
    }
    Ok(total)
}

/// Reads and checks each stream in turn, answering one byte after each.
fn bare_consume(
    conns: &mut [TcpStream],
    streams: &[Stream],
    contents: &Contents,
) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0;
    for (conn, stream) in conns.iter_mut().zip(streams) {
        let mut len = [0u8; 8];
        conn.read_exact(&mut len)?;
        let len = u64::from_be_bytes(len);
        if len != stream.bytes {
            bail!("a stream of {len} bytes where {} were sent", stream.bytes);
        }
        let mut checker = Checker::new(contents.of(stream), stream.bytes);
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = conn.read(&mut buf[..want])?;
            if n == 0 {
                bail!("the producer closed its connection mid-stream");
            }
            checker.take(&buf[..n])?;
            left -= n as u64;
        }
        total += checker.done()?;
        conn.write_all(&[1])?;
    }
    Ok(total)
}
