//! The admin socket: a Unix socket (mode 0600) that answers status requests.
//! Requests and answers are one JSON object per line.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::debug;

use super::{Agent, AgentError, apply, unix_socket};
use crate::{
    protocol::control::Transport,
    status::{EdgeStatus, Status, StreamStatus, WorkflowStatus},
    workflow::StreamId,
};

/// A request on the admin socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
enum Request {
    Status,
    Apply { yaml: String },
    Delete { name: String },
}

/// The bound admin socket.
pub struct AdminServer {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminServer {
    /// Binds `path` (creating its directory), refusing to steal the socket of
    /// an agent that is still running.
    pub async fn bind(path: &Path) -> Result<Self, AgentError> {
        let listener = unix_socket::bind(path, 0o600)
            .await
            .map_err(|source| AgentError::Admin { source })?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves requests until the task is dropped.
    pub async fn serve(self, agent: Arc<Agent>, identity: Arc<Identity>) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let agent = agent.clone();
            let identity = identity.clone();
            tokio::spawn(async move {
                if let Err(err) = answer(stream, &agent, &identity).await {
                    debug!(%err, "admin request failed");
                }
            });
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn answer(
    stream: UnixStream,
    agent: &Arc<Agent>,
    identity: &Identity,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        // Bounded: a request is one line (a workflow spec at most).
        let mut limited = (&mut stream).take(1 << 20);
        limited.read_line(&mut line).await
    })
    .await;
    let request = match read {
        Ok(Ok(_)) => serde_json::from_str::<Request>(&line).ok(),
        _ => None,
    };
    let reply = match request {
        Some(Request::Status) => serde_json::to_value(status(agent, identity))?,
        Some(Request::Apply { yaml }) => match apply::apply(agent, &yaml).await {
            Ok(outcome) => serde_json::json!({ "applied": outcome }),
            Err(failure) => serde_json::json!({ "error": failure }),
        },
        Some(Request::Delete { name }) => match apply::delete(agent, &name).await {
            Ok(outcome) => serde_json::json!({ "deleted": outcome }),
            Err(failure) => serde_json::json!({ "error": failure }),
        },
        None => serde_json::json!({
            "error": {"message": "unknown request; send {\"request\":\"status\"}", "errors": []}
        }),
    };
    let reply = serde_json::to_string(&reply)?;
    let stream = stream.get_mut();
    stream.write_all(reply.as_bytes()).await?;
    stream.write_all(b"\n").await
}

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
    let registry = &agent.registry;
    let (datapath, programs) = registry.datapath().status();
    let (channels, mut totals) = registry.snapshot();
    let counters = registry.datapath().counters();
    totals.spliced_bytes = counters.spliced_bytes;
    totals.forwarded_bytes = counters.forwarded_bytes;
    totals.passed_msgs = counters.passed_msgs;
    totals.redirect_errors = counters.redirect_errors;
    Status {
        node: registry.node().to_owned(),
        listen: identity.listen.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: identity.started.elapsed().as_secs(),
        metrics: identity
            .metrics
            .map(|addr| format!("http://{addr}/metrics")),
        datapath,
        programs,
        channels,
        workflows: workflows(agent),
        peers: agent.peers.status(),
        totals,
    }
}

/// Applied workflows as this node sees them: which streams touch it, and
/// whether they are prepared.
fn workflows(agent: &Agent) -> Vec<WorkflowStatus> {
    let socket_transport = match agent.registry.datapath() {
        super::datapath::Datapath::Ebpf(..) => Transport::Splice,
        super::datapath::Datapath::Fallback { .. } => Transport::Tcp,
    };
    // Same-node streams: what their latest channel took (clients that take
    // a ring get shm), else what socket clients get.
    let (channels, _) = agent.registry.snapshot();
    let local_transport = |stream: &StreamId| {
        let name = stream.to_string();
        channels
            .iter()
            .filter(|channel| channel.name == name)
            .max_by_key(|channel| channel.id)
            .and_then(|channel| channel.transport)
            .unwrap_or(socket_transport)
    };
    agent
        .workflows
        .all()
        .into_iter()
        .map(|applied| {
            let workflow = &applied.workflow;
            let here = |function: &str| workflow.node_of(function) == Some(agent.node.as_str());
            let edges = workflow
                .edges
                .iter()
                .map(|edge| {
                    let streams: Vec<StreamStatus> = workflow
                        .streams()
                        .filter(|(e, _)| e.name == edge.name)
                        .map(|(_, stream)| {
                            let StreamId {
                                producer, consumer, ..
                            } = &stream;
                            let (placement, transport, state) =
                                match (here(producer), here(consumer)) {
                                    (true, true) => {
                                        ("same-node", Some(local_transport(&stream)), "ready")
                                    }
                                    (false, false) => ("elsewhere", None, "elsewhere"),
                                    (producer_here, _) => {
                                        let ready = agent.crossnode.ready(&stream, producer_here);
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
                                producer: producer.clone(),
                                consumer: consumer.clone(),
                                placement: placement.into(),
                                transport,
                                state: state.into(),
                            }
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
