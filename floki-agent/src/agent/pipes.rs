//! Named pipes for functions that only do file I/O (`--pipes-dir DIR`): for
//! every applied workflow, the agent makes a FIFO per edge end of the
//! functions on its node and bridges it to the edge's streams, as a client
//! of its own Unix socket (so a same-node stream is a shared-memory ring
//! and a cross-node one the agents' link):
//!
//! * a producer writes `DIR/<workflow>/<edge>.in` (shuffle:
//!   `<edge>.to.<consumer>.in`, one per partition); the agent streams what it
//!   reads to every consumer of the edge;
//! * a consumer reads `DIR/<workflow>/<edge>.out` (several producers:
//!   `<edge>.from.<producer>.out`, one per stream).
//!
//! When several functions of the edge play the same side, their names go in
//! too: `<edge>.<function>.in`. A pipe carries no end mark: a reader sees
//! end-of-file both when the stream is complete and when it was cut short.
//! So next to every FIFO the agent writes `<fifo>.status` once the stream is
//! over, **before** it closes the FIFO: `ok <bytes> xxh3:<hex>` once the
//! stream was verified end to end, `failed after <bytes> bytes: <reason>`
//! otherwise. A reader checks it after end-of-file.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufRead as _, Read, Write},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tracing::{info, warn};

use floki_client::{
    ClientError, Pattern, Summary,
    blocking::{Receiver, Sender},
    workflow::EdgeOptions,
};

use super::{
    channels::Channels,
    control::workflows::{Applied, Workflows},
};
use crate::workflow::Workflow;

/// Bytes moved per read between a FIFO and a channel.
const CHUNK: usize = 1 << 20;

/// One FIFO the agent serves.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fifo {
    /// Path relative to the pipes directory: `<workflow>/<name>`.
    pub path: PathBuf,
    /// Workflow.
    pub workflow: String,
    /// Edge.
    pub edge: String,
    /// The function whose end this is.
    pub function: String,
    /// What the bridge does.
    pub side: Side,
}

/// Which way a FIFO's bytes go.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// The producer writes it: stream what is read to these consumers.
    In(Vec<String>),
    /// The consumer reads it: the stream from this producer.
    Out(String),
}

/// The FIFOs of `workflow` for the functions on `node`.
pub fn fifos(workflow: &Workflow, node: &str) -> Vec<Fifo> {
    let here = |function: &String| workflow.node_of(function) == Some(node);
    let mut out = Vec::new();
    for edge in &workflow.edges {
        let base = |function: &str, side_count: usize| {
            if side_count == 1 {
                edge.name.clone()
            } else {
                format!("{}.{function}", edge.name)
            }
        };
        let fifo = |function: &str, name: String, side: Side| Fifo {
            path: Path::new(&workflow.name).join(name),
            workflow: workflow.name.clone(),
            edge: edge.name.clone(),
            function: function.to_owned(),
            side,
        };
        for producer in edge.producers.iter().filter(|p| here(p)) {
            let base = base(producer, edge.producers.len());
            if edge.pattern == Pattern::Shuffle {
                for consumer in &edge.consumers {
                    let name = format!("{base}.to.{consumer}.in");
                    out.push(fifo(producer, name, Side::In(vec![consumer.clone()])));
                }
            } else {
                let side = Side::In(edge.consumers.clone());
                out.push(fifo(producer, format!("{base}.in"), side));
            }
        }
        for consumer in edge.consumers.iter().filter(|c| here(c)) {
            let base = base(consumer, edge.consumers.len());
            for producer in &edge.producers {
                let name = if edge.producers.len() == 1 {
                    format!("{base}.out")
                } else {
                    format!("{base}.from.{producer}.out")
                };
                out.push(fifo(consumer, name, Side::Out(producer.clone())));
            }
        }
    }
    out
}

/// Where the verdict of `fifo`'s last stream is written.
fn status_path(fifo: &Path) -> PathBuf {
    let mut name = fifo.as_os_str().to_owned();
    name.push(".status");
    PathBuf::from(name)
}

/// A FIFO being served, and how to stop its bridge.
struct Bridge {
    stop: Arc<AtomicBool>,
    path: PathBuf,
}

impl Bridge {
    /// Stops the bridge: wakes it if it waits to open its FIFO (an
    /// `O_RDWR` open completes both kinds of waiting opens), then removes
    /// the FIFO.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path);
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_file(status_path(&self.path));
        // The workflow's directory goes with its last FIFO.
        if let Some(parent) = self.path.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Keeps the FIFOs of the applied workflows in `dir` and their bridges
/// running until the agent stops.
pub async fn serve(
    dir: PathBuf,
    socket: PathBuf,
    node: String,
    workflows: Arc<Workflows>,
    channels: Arc<Channels>,
) {
    let mut changes = workflows.watch();
    let mut running: BTreeMap<(Fifo, String), Bridge> = BTreeMap::new();
    loop {
        let wanted: BTreeMap<(Fifo, String), Applied> = workflows
            .all()
            .into_iter()
            .flat_map(|applied| {
                fifos(&applied.workflow, &node)
                    .into_iter()
                    .map(move |fifo| ((fifo, applied.token.clone()), applied.clone()))
            })
            .collect();
        let gone: Vec<_> = running
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(bridge) = running.remove(&key) {
                info!(fifo = %bridge.path.display(), "workflow gone: named pipe removed");
                // A bridge waiting for its peer hears it from the channel core.
                channels.refuse_waiting(&format!("{}/", key.0.workflow));
                bridge.stop();
            }
        }
        for (key, _) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let (fifo, token) = &key;
            match start(&dir, &socket, fifo, token) {
                Ok(bridge) => {
                    info!(fifo = %bridge.path.display(), "named pipe ready");
                    running.insert(key, bridge);
                }
                Err(err) => warn!(
                    fifo = %dir.join(&fifo.path).display(),
                    %err,
                    "named pipe not served; remove what is in the way and re-apply the workflow"
                ),
            }
        }
        if changes.changed().await.is_err() {
            break;
        }
    }
    for (_, bridge) in running {
        bridge.stop();
    }
}

/// Makes the FIFO and starts its bridge thread.
fn start(dir: &Path, socket: &Path, fifo: &Fifo, token: &str) -> io::Result<Bridge> {
    let path = dir.join(&fifo.path);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o755))?;
    }
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_fifo() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something other than a FIFO is in the way",
            ));
        }
        Err(_) => {
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o666))?;
            // mkfifo applies the umask: functions of any user may use it.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let opts = EdgeOptions::new(
        format!("unix:{}", socket.display()),
        &fifo.workflow,
        token,
        &fifo.edge,
        &fifo.function,
    );
    let bridge = BridgeThread {
        path: path.clone(),
        side: fifo.side.clone(),
        opts,
        stop: stop.clone(),
    };
    std::thread::Builder::new()
        .name("floki-pipe".into())
        .spawn(move || bridge.run())?;
    Ok(Bridge { stop, path })
}

/// A bridge between one FIFO and its streams, one stream after another.
struct BridgeThread {
    path: PathBuf,
    side: Side,
    opts: EdgeOptions,
    stop: Arc<AtomicBool>,
}

impl BridgeThread {
    fn run(self) {
        while !self.stop.load(Ordering::SeqCst) {
            let outcome = match &self.side {
                Side::In(consumers) => self.producer(consumers),
                Side::Out(producer) => self.consumer(producer),
            };
            match outcome {
                Ok(()) => {}
                Err(err) if self.stop.load(Ordering::SeqCst) => {
                    info!(fifo = %self.path.display(), %err, "named pipe stopped");
                }
                Err(err) => {
                    warn!(fifo = %self.path.display(), err = %format!("{err:#}"), "named pipe stream failed");
                    // Not a tight loop on a persistent fault.
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn status_path(&self) -> PathBuf {
        status_path(&self.path)
    }

    /// Writes the stream's verdict beside the FIFO, atomically.
    fn write_status(&self, verdict: &str) -> io::Result<()> {
        let status = self.status_path();
        let mut partial = status.as_os_str().to_owned();
        partial.push(".partial");
        fs::write(&partial, format!("{verdict}\n"))?;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o644))?;
        fs::rename(&partial, &status)
    }

    /// One stream from the producer's FIFO to its consumers.
    fn producer(&self, consumers: &[String]) -> anyhow::Result<()> {
        // Blocks until the producer opens the FIFO for writing.
        let mut input = fs::File::open(&self.path)?;
        if self.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _ = fs::remove_file(self.status_path());
        let mut senders = consumers
            .iter()
            .map(|consumer| Ok((consumer.clone(), Sender::open(&self.opts.stream(consumer))?)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        let mut buf = vec![0u8; CHUNK];
        let mut moved = 0u64;
        let result = loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => break Err(format!("reading the FIFO: {err}")),
            };
            if let Some(err) = senders.iter_mut().find_map(|(peer, tx)| {
                tx.write_all(&buf[..n])
                    .err()
                    .map(|e| format!("to {peer}: {e}"))
            }) {
                break Err(err);
            }
            moved += n as u64;
        };
        // Closed before the verdicts are waited for: the FIFO's reader (this
        // bridge) must be gone by the time the consumer sees the end, or the
        // producer's next open (which may follow at once) would meet this
        // old reader, and its stream (an empty one: open, then close) would
        // be lost before the next reader comes.
        drop(input);
        let verdict = match result {
            Ok(()) => {
                let mut failures = Vec::new();
                let mut checksum = 0;
                for (peer, tx) in senders {
                    match tx.finish() {
                        Ok(Summary { checksum: c, .. }) => checksum = c,
                        Err(err) => failures.push(format!("to {peer}: {err}")),
                    }
                }
                if failures.is_empty() {
                    format!("ok {moved} xxh3:{checksum:016x}")
                } else {
                    format!("failed after {moved} bytes: {}", failures.join("; "))
                }
            }
            Err(reason) => {
                for (_, tx) in senders {
                    tx.abort(&reason);
                }
                format!("failed after {moved} bytes: {reason}")
            }
        };
        info!(fifo = %self.path.display(), %verdict, "named pipe stream over");
        self.write_status(&verdict)?;
        Ok(())
    }

    /// One stream from a producer into the consumer's FIFO.
    fn consumer(&self, producer: &str) -> anyhow::Result<()> {
        let mut rx = Receiver::connect(&self.opts.stream(producer))?;
        // The last stream's verdict stays until this one's replaces it: its
        // reader may still be about to read it, and this stream's reader
        // reads the verdict only after end-of-file, which comes after it.
        // Blocks until the consumer opens the FIFO for reading.
        let mut output = fs::OpenOptions::new().write(true).open(&self.path)?;
        // Straight from the ring (or the receiver's buffer) into the pipe.
        let copied = loop {
            let data = match rx.fill_buf() {
                Ok([]) => break Ok(()),
                Ok(data) => data,
                Err(err) => break Err(err),
            };
            let n = data.len().min(CHUNK);
            if let Err(err) = output.write_all(&data[..n]) {
                break Err(err);
            }
            rx.consume(n);
        };
        let verdict = match copied {
            Ok(_) => match rx.finish() {
                Ok(summary) => format!("ok {} xxh3:{:016x}", summary.bytes, summary.checksum),
                Err(err) => format!("failed: {err}"),
            },
            Err(err) => format!("failed: {err}"),
        };
        info!(fifo = %self.path.display(), %verdict, "named pipe stream over");
        // The verdict exists before the reader sees end-of-file.
        self.write_status(&verdict)?;
        output.flush()?;
        drop(output);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn workflow(yaml_edges: &str) -> Workflow {
        let yaml = format!(
            "apiVersion: floki.dev/v1\nkind: Workflow\nmetadata:\n  name: wf\nspec:\n  functions:\n\
             \x20   - {{ name: p1, node: a }}\n    - {{ name: p2, node: b }}\n\
             \x20   - {{ name: c1, node: a }}\n    - {{ name: c2, node: b }}\n  edges:\n{yaml_edges}"
        );
        let nodes: BTreeSet<String> = ["a", "b"].map(String::from).into();
        Workflow::parse(&yaml, &nodes).expect("valid spec")
    }

    fn names(workflow: &Workflow, node: &str) -> Vec<String> {
        fifos(workflow, node)
            .into_iter()
            .map(|fifo| fifo.path.display().to_string())
            .collect()
    }

    #[test]
    fn one_to_one_is_edge_in_and_edge_out() {
        let wf = workflow("    - { name: e, from: [p1], to: [c2], pattern: one-to-one }\n");
        assert_eq!(names(&wf, "a"), ["wf/e.in"]);
        assert_eq!(names(&wf, "b"), ["wf/e.out"]);
    }

    #[test]
    fn several_functions_on_a_side_are_named() {
        let wf = workflow("    - { name: g, from: [p1, p2], to: [c1], pattern: gather }\n");
        assert_eq!(
            names(&wf, "a"),
            ["wf/g.p1.in", "wf/g.from.p1.out", "wf/g.from.p2.out"]
        );
        let wf = workflow("    - { name: s, from: [p1, p2], to: [c1, c2], pattern: shuffle }\n");
        assert_eq!(
            names(&wf, "b"),
            [
                "wf/s.p2.to.c1.in",
                "wf/s.p2.to.c2.in",
                "wf/s.c2.from.p1.out",
                "wf/s.c2.from.p2.out"
            ]
        );
        let wf = workflow("    - { name: b, from: [p1], to: [c1, c2], pattern: broadcast }\n");
        assert_eq!(names(&wf, "a"), ["wf/b.in", "wf/b.c1.out"]);
    }
}
