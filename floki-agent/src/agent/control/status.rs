//! `floki-agent status`, assembled: the channel core's views, the datapath's
//! description of itself and its counters, the workflows and the peers, in
//! the admin socket's JSON types ([`crate::status`]).

use std::time::Instant;

use floki_proto::control::Transport;

use crate::{
    agent::{
        Agent,
        channels::{ChannelView, Phase},
        datapath::Datapath,
        store::{StoreView, StoredView},
    },
    status::{
        ChannelState, ChannelStatus, DatapathMode, DatapathStatus, EdgeStatus, Status, StoreStatus,
        StoredStatus, StreamStatus, Totals, WorkflowStatus,
    },
    workflow::{StreamId, Workflow},
};

/// What identifies a running agent in its status.
pub struct Identity {
    /// The channel listener's bound address.
    pub listen: std::net::SocketAddr,
    /// When the agent started.
    pub started: Instant,
    /// The metrics listener's bound address.
    pub metrics: Option<std::net::SocketAddr>,
}

/// The agent's status now.
pub fn status(agent: &Agent, identity: &Identity) -> Status {
    let (views, _) = agent.channels.snapshot();
    let stored = agent.store.view();
    Status {
        node: agent.node.clone(),
        listen: identity.listen.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: identity.started.elapsed().as_secs(),
        metrics: identity
            .metrics
            .map(|addr| format!("http://{addr}/metrics")),
        datapath: datapath(&agent.datapath),
        programs: agent
            .datapath
            .ebpf()
            .map(|ebpf| ebpf.programs().to_vec())
            .unwrap_or_default(),
        workflows: workflows(agent, &views, &stored),
        channels: views.into_iter().map(channel).collect(),
        peers: agent.peers.status(),
        totals: totals(agent),
        store: store(stored),
    }
}

fn store(view: StoreView) -> StoreStatus {
    StoreStatus {
        dir: view.dir.display().to_string(),
        s3: view.s3,
        memory_bytes: view.memory.0,
        memory_budget: view.memory.1,
        disk_bytes: view.disk.0,
        disk_budget: view.disk.1,
        replays: view.replays,
        refused_full: view.full,
        streams: view.streams.iter().map(stored_stream).collect(),
        lost: view.lost,
    }
}

fn stored_stream(view: &StoredView) -> StoredStatus {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    StoredStatus {
        name: view.name.clone(),
        workflow: view.workflow.clone(),
        run: view.run.clone(),
        tier: view.tier.to_string(),
        bytes: view.bytes,
        state: stored_state(view),
        replays: view.replays,
        age_secs: view.age.as_secs(),
        expires_in_secs: (view.retain_until != u64::MAX)
            .then(|| view.retain_until.saturating_sub(now)),
    }
}

fn stored_state(view: &StoredView) -> String {
    match (&view.failed, view.complete) {
        (Some(reason), _) => format!("failed: {reason}"),
        (None, true) => "complete".into(),
        (None, false) => "storing".into(),
    }
}

/// Totals since the agent started: the channel core's and the kernel's.
pub fn totals(agent: &Agent) -> Totals {
    let (_, channels) = agent.channels.snapshot();
    let counters = agent.datapath.counters();
    Totals {
        spliced_bytes: counters.spliced_bytes,
        fallback_bytes: channels.tcp_bytes,
        shm_bytes: channels.shm_bytes,
        forwarded_bytes: counters.forwarded_bytes,
        active_channels: channels.active,
        done_channels: channels.done,
        failed_channels: channels.failed,
        passed_msgs: counters.passed_msgs,
        redirect_errors: counters.redirect_errors,
        window_refusals: counters.window_refusals,
        eager_returns: counters.eager_returns,
    }
}

fn datapath(datapath: &Datapath) -> DatapathStatus {
    let ebpf = datapath.ebpf();
    DatapathStatus {
        mode: match ebpf {
            Some(_) => DatapathMode::Ebpf,
            None => DatapathMode::Fallback,
        },
        reason: datapath.fallback_reason().map(str::to_owned),
        cgroup: ebpf.map(|ebpf| ebpf.cgroup().display().to_string()),
        pin_dir: ebpf.map(|ebpf| ebpf.pin_dir().display().to_string()),
        kernel: datapath.kernel().clone(),
        pins: ebpf.map(|ebpf| ebpf.pins()).unwrap_or_default(),
    }
}

fn channel(view: ChannelView) -> ChannelStatus {
    ChannelStatus {
        id: view.id,
        name: view.name,
        state: match view.phase {
            Phase::Waiting => ChannelState::Waiting,
            Phase::Active => ChannelState::Active,
            Phase::Done => ChannelState::Done,
            Phase::Failed => ChannelState::Failed,
            Phase::Closed => ChannelState::Closed,
        },
        transport: view.transport,
        bytes: view.bytes,
        stream_bytes: view.stream_bytes,
        kernel_bytes: view.kernel_bytes,
        peer_node: view.peer_node,
        ends: view.ends.iter().map(ToString::to_string).collect(),
        age_secs: view.age.as_secs_f64(),
        duration_secs: view.duration.map(|d| d.as_secs_f64()),
        error: view.error,
        note: view.note,
        reason: view.reason,
        store: view.store.map(|role| {
            match role {
                floki_proto::control::Role::Recv => "stored",
                floki_proto::control::Role::Send => "replayed",
            }
            .to_owned()
        }),
    }
}

/// Applied workflows as this node sees them: which streams touch it, and
/// whether they are prepared.
fn workflows(agent: &Agent, channels: &[ChannelView], stored: &StoreView) -> Vec<WorkflowStatus> {
    agent
        .workflows
        .all()
        .into_iter()
        .map(|applied| {
            let workflow = &applied.workflow;
            let edges = workflow
                .edges
                .iter()
                .map(|edge| {
                    let streams: Vec<StreamStatus> = workflow
                        .streams()
                        .filter(|(e, _)| e.name == edge.name)
                        .map(|(_, stream)| {
                            let mut status = stream_status(agent, workflow, channels, &stream);
                            status.stored = stored_summary(stored, &stream);
                            status
                        })
                        .collect();
                    let ready = streams.iter().all(|s| s.state != "preparing");
                    EdgeStatus {
                        name: edge.name.clone(),
                        pattern: edge.pattern.to_string(),
                        buffer: edge.buffer,
                        state: if ready { "ready" } else { "preparing" }.into(),
                        streams,
                    }
                })
                .collect();
            WorkflowStatus {
                name: workflow.name.clone(),
                nodes: workflow.nodes().into_iter().map(str::to_owned).collect(),
                edges,
            }
        })
        .collect()
}

fn stream_status(
    agent: &Agent,
    workflow: &Workflow,
    channels: &[ChannelView],
    stream: &StreamId,
) -> StreamStatus {
    let here = |function: &str| workflow.node_of(function) == Some(agent.node.as_str());
    let (placement, transport, state) = match (here(&stream.producer), here(&stream.consumer)) {
        (true, true) => (
            "same-node",
            Some(local_transport(agent, channels, stream)),
            "ready",
        ),
        (false, false) => ("elsewhere", None, "elsewhere"),
        (producer_here, _) => {
            let ready = agent.links.ready(stream, producer_here);
            (
                if producer_here {
                    "outgoing"
                } else {
                    "incoming"
                },
                Some(Transport::Tcp),
                if ready { "ready" } else { "preparing" },
            )
        }
    };
    StreamStatus {
        producer: stream.producer.clone(),
        consumer: stream.consumer.clone(),
        placement: placement.into(),
        transport,
        state: state.into(),
        stored: None,
    }
}

/// What the store holds of `stream`, in a few words.
fn stored_summary(stored: &StoreView, stream: &StreamId) -> Option<String> {
    let name = stream.to_string();
    let view = stored.streams.iter().find(|view| view.name == name)?;
    Some(format!(
        "stored: {}, {}, {}, read {} times",
        view.tier,
        stored_state(view),
        bytesize::ByteSize(view.bytes).display().iec(),
        view.replays
    ))
}

/// A same-node stream's transport: what its latest channel took (clients
/// that take a ring get shm), else what socket clients get.
fn local_transport(agent: &Agent, channels: &[ChannelView], stream: &StreamId) -> Transport {
    let name = stream.to_string();
    channels
        .iter()
        .filter(|channel| channel.name == name)
        .max_by_key(|channel| channel.id)
        .and_then(|channel| channel.transport)
        .unwrap_or(if agent.datapath.is_ebpf() {
            Transport::Splice
        } else {
            Transport::Tcp
        })
}
