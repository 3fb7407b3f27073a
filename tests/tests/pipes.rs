//! Named pipes (`--pipes-dir`): functions that only do file I/O write an
//! edge's `.in` FIFO and read its `.out` FIFO, on one node or across two;
//! the `.status` file beside a FIFO says whether the stream that ended there
//! was complete, which end-of-file on a pipe cannot.

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use floki_tests::{
    cluster::{Cluster, ClusterNode, Spec},
    node::spawn,
    pattern,
};

const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);

/// A pipes directory per node, removed at the end.
struct PipesDirs(PathBuf);

impl PipesDirs {
    fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(format!("floki-pipes-{}-{tag}", std::process::id())))
    }

    fn of(&self, node: &str) -> PathBuf {
        self.0.join(node)
    }

    fn args(&self, node: &str) -> Vec<String> {
        vec!["--pipes-dir".into(), self.of(node).display().to_string()]
    }
}

impl Drop for PipesDirs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + LIMIT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The verdict the agent wrote beside `fifo`.
fn status(fifo: &Path) -> String {
    let mut path = fifo.as_os_str().to_owned();
    path.push(".status");
    let path = PathBuf::from(path);
    wait_for(&path);
    fs::read_to_string(&path).expect("status file")
}

/// Writes `data` into the `.in` FIFO and reads the `.out` FIFO, as `cat`
/// would on either side; returns what the reader got. Fails the test, rather
/// than hang it, when either side is still blocked after the limit.
fn through_pipes(input: &Path, output: &Path, data: &[u8]) -> Vec<u8> {
    wait_for(input);
    wait_for(output);
    let (output, input, data) = (output.to_owned(), input.to_owned(), data.to_vec());
    let (done, outcome) = std::sync::mpsc::channel();
    let reading = done.clone();
    thread::spawn(move || {
        let mut got = Vec::new();
        fs::File::open(&output)
            .expect("opening the .out FIFO")
            .read_to_end(&mut got)
            .expect("reading the .out FIFO");
        let _ = reading.send(Some(got));
    });
    thread::spawn(move || {
        let mut writer = fs::OpenOptions::new()
            .write(true)
            .open(&input)
            .expect("opening the .in FIFO");
        writer.write_all(&data).expect("writing the .in FIFO");
        let _ = done.send(None);
    });
    let deadline = Instant::now() + LIMIT;
    let mut got = None;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match outcome.recv_timeout(left) {
            Ok(Some(bytes)) => got = Some(bytes),
            Ok(None) => {}
            Err(err) => panic!("the FIFOs' writer and reader did not both finish: {err}"),
        }
    }
    got.expect("the reader's bytes")
}

/// The first finished channel called `name` (a bridge opens the next one
/// as soon as a stream is over, so the newest is still waiting).
fn finished_channel(node: &ClusterNode, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let status = node.agent.status();
        let found = status["channels"].as_array().and_then(|channels| {
            channels
                .iter()
                .find(|c| c["name"] == name && (c["state"] == "done" || c["state"] == "failed"))
                .cloned()
        });
        if let Some(channel) = found {
            return channel;
        }
        assert!(
            Instant::now() < deadline,
            "no finished channel {name}: {status:#}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn apply(node: &ClusterNode, spec: &Spec) -> String {
    node.apply(&spec.yaml()).expect("apply")
}

#[test]
fn pipes_carry_streams_on_one_node_and_say_they_were_complete() {
    let dirs = PipesDirs::new("one");
    let cluster = Cluster::start_with_each(&["solo"], |name| dirs.args(name));
    let node = cluster.node("solo");
    let wf = dirs.of("solo").join("wf");
    // Something else where a FIFO should go: reported, the rest still served.
    fs::create_dir_all(&wf).unwrap();
    fs::write(wf.join("blocked.in"), b"not a fifo").unwrap();
    let spec = Spec::new("wf")
        .function("p", "solo")
        .function("c", "solo")
        .edge("e", &["p"], &["c"], "one-to-one", "4MiB")
        .edge("blocked", &["p"], &["c"], "one-to-one", "4MiB");
    apply(node, &spec);

    for (i, size) in [3 * MIB + 1, 0, 64 * MIB].into_iter().enumerate() {
        let data = pattern(size, i as u64);
        let got = through_pipes(&wf.join("e.in"), &wf.join("e.out"), &data);
        assert!(
            got == data,
            "stream {i}: {} bytes arrived, {size} sent",
            got.len()
        );
        let verdict = status(&wf.join("e.out"));
        assert!(
            verdict.starts_with(&format!("ok {size} xxh3:")),
            "{verdict}"
        );
        assert!(status(&wf.join("e.in")).starts_with(&format!("ok {size}")));
    }
    // Both ends are the agent's own clients on its Unix socket: a ring.
    let channel = finished_channel(node, "wf/e/p>c");
    assert_eq!(channel["state"], "done", "{channel:#}");
    assert_eq!(channel["transport"], "shm", "{channel:#}");
    assert!(
        node.agent
            .log()
            .contains("something other than a FIFO is in the way"),
        "the agent did not report the blocked path"
    );
    // Deleting the workflow removes its FIFOs.
    node.delete("wf").expect("delete");
    let deadline = Instant::now() + LIMIT;
    while wf.join("e.in").exists() {
        assert!(
            Instant::now() < deadline,
            "the FIFOs outlived their workflow"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn agents_bridge_pipes_across_nodes() {
    let dirs = PipesDirs::new("two");
    let cluster = Cluster::start_with_each(&["na", "nb"], |name| dirs.args(name));
    cluster.wait_connected();
    let spec = Spec::new("wf")
        .function("p", "na")
        .function("c", "nb")
        .edge("e", &["p"], &["c"], "one-to-one", "4MiB");
    apply(cluster.node("na"), &spec);
    let input = dirs.of("na").join("wf/e.in");
    let output = dirs.of("nb").join("wf/e.out");
    let data = pattern(48 * MIB + 5, 9);
    let got = through_pipes(&input, &output, &data);
    assert!(
        got == data,
        "{} bytes arrived, {} sent",
        got.len(),
        data.len()
    );
    assert!(status(&output).starts_with(&format!("ok {} xxh3:", data.len())));
    let channel = finished_channel(cluster.node("nb"), "wf/e/p>c");
    assert_eq!(channel["state"], "done", "{channel:#}");
    assert_eq!(channel["transport"], "tcp", "{channel:#}");
    assert_eq!(channel["peer_node"], "na", "{channel:#}");
}

#[test]
fn a_stream_cut_short_is_marked_failed_beside_the_fifo() {
    let dirs = PipesDirs::new("cut");
    let cluster = Cluster::start_with_each(&["solo"], |name| dirs.args(name));
    let node = cluster.node("solo");
    let spec = Spec::new("wf")
        .function("p", "solo")
        .function("c", "solo")
        .edge("e", &["p"], &["c"], "one-to-one", "4MiB");
    let token = apply(node, &spec);
    let output = dirs.of("solo").join("wf/e.out");
    wait_for(&output);
    // The producer is a client that dies in the middle of its stream.
    let mut producer = spawn(&mut node.probe(&[
        "send",
        "--workflow",
        "wf",
        "--edge",
        "e",
        "--as",
        "p",
        "--token",
        &token,
        "--bytes",
        &(1u64 << 30).to_string(),
        "--stall-after",
        &(16 * MIB).to_string(),
    ]));
    let reader = {
        let output = output.clone();
        thread::spawn(move || {
            let mut got = Vec::new();
            let read = fs::File::open(&output)
                .expect("opening the .out FIFO")
                .read_to_end(&mut got);
            (read.is_ok(), got.len())
        })
    };
    let deadline = Instant::now() + LIMIT;
    loop {
        let status = node.agent.status();
        let moved = status["channels"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "wf/e/p>c"))
            .and_then(|c| c["stream_bytes"].as_u64().max(c["bytes"].as_u64()))
            .unwrap_or(0);
        if moved >= 16 * MIB as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "the stream never got going");
        thread::sleep(Duration::from_millis(50));
    }
    producer.kill().unwrap();
    let _ = producer.wait();
    // A pipe cannot say it: the reader sees end-of-file...
    let (clean_eof, got) = reader.join().expect("reader");
    assert!(clean_eof);
    assert!(
        got < 1 << 30,
        "the whole stream arrived from a killed producer"
    );
    // ...and the status file beside the FIFO says the stream was cut short.
    let verdict = status(&output);
    assert!(verdict.starts_with("failed"), "{verdict}");
    assert!(verdict.contains("truncated"), "{verdict}");
}
