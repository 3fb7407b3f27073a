//! What `floki-agent status` shows, as served on the admin socket.
//!
//! The JSON keys are an interface (tools read them): `node`, `datapath.mode`,
//! `datapath.reason`, `programs[].name`, `channels[].name`, `channels[].state`,
//! `channels[].transport`, `channels[].bytes`, `totals.spliced_bytes`,
//! `totals.fallback_bytes` keep their names and meaning. Fields may be added.

use std::{io, path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use floki_proto::control::Transport;

pub use crate::agent::datapath::{
    AttachedProgram as ProgramStatus,
    kernel_support::{FeatureSupport as KernelFeature, KernelSupport as KernelStatus},
};

/// The agent's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// Address the agent takes channel connections on.
    pub listen: String,
    /// Agent version.
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Where Prometheus metrics are served (`--metrics`), if they are.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Whether channels are spliced, and why not.
    pub datapath: DatapathStatus,
    /// Kernel programs attached.
    pub programs: Vec<ProgramStatus>,
    /// Channels: waiting, active, then recently finished (newest first).
    pub channels: Vec<ChannelStatus>,
    /// Applied workflows, their edges and streams.
    pub workflows: Vec<WorkflowStatus>,
    /// The other agents and this agent's link to each.
    pub peers: Vec<PeerStatus>,
    /// Totals since the agent started.
    pub totals: Totals,
    /// Streams kept for consumers that start later.
    #[serde(default)]
    pub store: StoreStatus,
}

/// The store: its tiers, budgets and streams.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoreStatus {
    /// The spill directory.
    pub dir: String,
    /// The S3 tier's URL, if there is one.
    pub s3: Option<String>,
    /// Bytes held in memory.
    pub memory_bytes: u64,
    /// The memory budget.
    pub memory_budget: u64,
    /// Bytes spilled to disk.
    pub disk_bytes: u64,
    /// The disk budget.
    pub disk_budget: u64,
    /// Consumers served from the store since the agent started.
    pub replays: u64,
    /// Producers refused because every tier was full.
    pub refused_full: u64,
    /// The streams held, by name.
    pub streams: Vec<StoredStatus>,
    /// Streams held in memory before a restart, lost (their consumers get
    /// an error until the stream's retention ends).
    pub lost: Vec<String>,
}

/// A stored stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredStatus {
    /// Channel name (for a workflow stream, `workflow/edge/producer>consumer`).
    pub name: String,
    /// Its workflow, if it is a workflow stream.
    pub workflow: Option<String>,
    /// The run its producer said it belongs to: only consumers of that run
    /// (or that say none) are served it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// `memory`, `disk` or `s3`.
    pub tier: String,
    /// Bytes held.
    pub bytes: u64,
    /// `storing`, `complete` or `failed: REASON`.
    pub state: String,
    /// Times a consumer read it.
    pub replays: u64,
    /// Seconds since storing began.
    pub age_secs: u64,
    /// Seconds until it expires; null: until its workflow is deleted.
    pub expires_in_secs: Option<u64>,
}

/// `ebpf` or `fallback`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathMode {
    /// Kernel programs loaded: same-node channels are spliced.
    Ebpf,
    /// No kernel programs: channels use plain TCP.
    Fallback,
}

/// The datapath.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatapathStatus {
    /// `ebpf` or `fallback`.
    pub mode: DatapathMode,
    /// Why the agent is in fallback (null in `ebpf` mode).
    pub reason: Option<String>,
    /// cgroup v2 directory `sock_ops` is attached to.
    pub cgroup: Option<String>,
    /// bpffs directory holding the agent's pins.
    pub pin_dir: Option<String>,
    /// The running kernel and what it offers the kernel programs.
    pub kernel: KernelStatus,
    /// The names pinned in `pin_dir` (maps and the `sock_ops` link).
    #[serde(default)]
    pub pins: Vec<String>,
}

/// A channel's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelState {
    /// One end has joined; waiting for the other.
    Waiting,
    /// Paired: the stream is flowing (or about to).
    Active,
    /// Both ends reported a complete, verified stream.
    Done,
    /// An end reported a failure or went away before the end.
    Failed,
    /// Adopted after the agent restarted, and its sockets have closed: the
    /// ends checked the stream themselves (their exit status is the
    /// verdict); the agent saw the bytes the kernel spliced.
    Closed,
}

/// One channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelStatus {
    /// Agent-wide id.
    pub id: u32,
    /// Channel name.
    pub name: String,
    /// Lifecycle state.
    pub state: ChannelState,
    /// How the bytes travel (null while waiting).
    pub transport: Option<Transport>,
    /// Bytes that went over the channel's transport: counted by the kernel
    /// program for `splice` (frames included), reported by the receiver for `tcp`.
    pub bytes: u64,
    /// Stream bytes (payload) the ends reported.
    pub stream_bytes: u64,
    /// Bytes the kernel program itself moved for this channel on this node
    /// (frames included): spliced into the receiver, redirected into the
    /// link to another node, or delivered from that link into the consumer.
    /// Null when the kernel took no part (no eBPF, or not registered).
    #[serde(default)]
    pub kernel_bytes: Option<u64>,
    /// Cross-node streams: the node of the other end.
    #[serde(default)]
    pub peer_node: Option<String>,
    /// Which ends have joined (`sender`, `receiver`).
    pub ends: Vec<String>,
    /// Seconds since the first end joined.
    pub age_secs: f64,
    /// Seconds from pairing to the end (finished channels).
    pub duration_secs: Option<f64>,
    /// What went wrong (failed channels).
    pub error: Option<String>,
    /// Anything else an operator should know (e.g. why a channel meant to be
    /// spliced went over TCP).
    pub note: Option<String>,
    /// Why the agent chose this transport.
    #[serde(default)]
    pub reason: Option<String>,
    /// `stored`: the receiver is the agent's store (the consumer was not
    /// there); `replayed`: the sender is the agent's store, serving a
    /// stored stream. Absent for end-to-end channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// An applied workflow, as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkflowStatus {
    /// Workflow name.
    pub name: String,
    /// Nodes hosting its functions.
    pub nodes: Vec<String>,
    /// Its edges.
    pub edges: Vec<EdgeStatus>,
}

/// One edge of a workflow.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EdgeStatus {
    /// Edge name.
    pub name: String,
    /// `one-to-one`, `broadcast`, `gather` or `shuffle`.
    pub pattern: String,
    /// Buffer (window) per stream, in bytes.
    pub buffer: u64,
    /// `ready` once every stream touching this node is prepared, else `preparing`.
    pub state: String,
    /// Its point-to-point streams.
    pub streams: Vec<StreamStatus>,
}

/// One stream of an edge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamStatus {
    /// Producing function.
    pub producer: String,
    /// Consuming function.
    pub consumer: String,
    /// `same-node` (both here), `outgoing`, `incoming` (one end here) or
    /// `elsewhere`.
    pub placement: String,
    /// How its bytes travel: for a same-node stream, what its latest
    /// channel took (`shm`, `splice` or `tcp`), or before any, what socket
    /// clients get; `tcp` across nodes; null if elsewhere.
    pub transport: Option<Transport>,
    /// `ready`, `preparing`, or `elsewhere`.
    pub state: String,
    /// What this node's store holds of it: `memory`, `disk` or `s3` and
    /// its state, e.g. `disk, complete, 64.0 MiB, read 2 times`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
}

/// A peer agent and this agent's link to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Node name.
    pub node: String,
    /// Its address.
    pub addr: String,
    /// `connected` or `disconnected`.
    pub state: String,
    /// Seconds in this state.
    pub since_secs: f64,
    /// The last failure, when disconnected.
    pub error: Option<String>,
}

/// Totals since the agent started.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Bytes the kernel program redirected socket to socket.
    pub spliced_bytes: u64,
    /// Bytes of channels whose transport is `tcp` (no splice, or across
    /// nodes).
    pub fallback_bytes: u64,
    /// Bytes of channels whose transport is `shm` (as their rings'
    /// headers count them).
    #[serde(default)]
    pub shm_bytes: u64,
    /// Bytes the kernel program redirected from producers' sockets into
    /// links to other nodes' agents.
    #[serde(default)]
    pub forwarded_bytes: u64,
    /// Channels paired and not finished.
    pub active_channels: u64,
    /// Channels finished complete.
    pub done_channels: u64,
    /// Channels that failed.
    pub failed_channels: u64,
    /// Kernel: writes of channel sockets that went over TCP (peer absent).
    pub passed_msgs: u64,
    /// Kernel: redirects refused.
    pub redirect_errors: u64,
    /// Sender writes the kernel refused for going past the receiver's
    /// credit (a sender that ignores flow control).
    #[serde(default)]
    pub window_refusals: u64,
    /// Eager hellos the kernel returned to their sender because the
    /// receiver's socket was not spliced yet (the sender then waited for
    /// the receiver's credit).
    #[serde(default)]
    pub eager_returns: u64,
}

/// Errors of the admin client.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be reached.
    #[error(
        "cannot reach the agent's admin socket {path} (is `floki-agent run` running, and are you root? see --admin)"
    )]
    Unreachable {
        /// Socket path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The exchange failed.
    #[error("admin socket {path}")]
    Io {
        /// Socket path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The agent answered something else than a status.
    #[error("admin socket {path} answered something unexpected")]
    BadAnswer {
        /// Socket path.
        path: String,
        /// Parse error.
        source: serde_json::Error,
    },
}

/// Asks the agent at `admin` for its status.
pub async fn fetch(admin: &Path) -> Result<Status, AdminError> {
    let answer = request(admin, &serde_json::json!({"request": "status"})).await?;
    serde_json::from_value(answer).map_err(|source| AdminError::BadAnswer {
        path: admin.display().to_string(),
        source,
    })
}

/// Sends one request on the admin socket and returns the JSON answer.
pub async fn request(
    admin: &Path,
    request: &serde_json::Value,
) -> Result<serde_json::Value, AdminError> {
    let path = admin.display().to_string();
    let stream = UnixStream::connect(admin)
        .await
        .map_err(|source| AdminError::Unreachable {
            path: path.clone(),
            source,
        })?;
    let io_err = |source| AdminError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = BufReader::new(stream);
    let mut line = serde_json::to_vec(request).expect("JSON values serialise");
    line.push(b'\n');
    stream.get_mut().write_all(&line).await.map_err(io_err)?;
    let mut answer = String::new();
    // An apply waits for every node of the workflow.
    tokio::time::timeout(Duration::from_secs(60), stream.read_line(&mut answer))
        .await
        .map_err(|_| io_err(io::ErrorKind::TimedOut.into()))?
        .map_err(io_err)?;
    serde_json::from_str(&answer).map_err(|source| AdminError::BadAnswer { path, source })
}
