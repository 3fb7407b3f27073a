//! The node agent: brokers channels between functions and sets up how
//! their bytes travel. On one node it is never in the data path: if it
//! stops, streams in flight carry on between the two functions' sockets (or
//! their ring).
//!
//! The rooms (after tokio's mini-redis, [`run`] binds the listeners and runs
//! the accept loop until a shutdown signal):
//!
//! * [`channels`]: the channel core: membership, pairing, carriers, history;
//! * [`transport`]: the choice of carrier and each carrier's set-up;
//! * [`sessions`]: protocol adapters from a connection to the core;
//! * [`control`]: the control plane (workflows, apply, peers, links prepared
//!   for cross-node streams, admin, status, metrics);
//! * [`store`]: streams kept for consumers that start later (memory, disk,
//!   S3), and the store's ends that take them in and replay them;
//! * [`datapath`]: the kernel programs (or the fallback);
//! * [`pipes`]: named pipes for functions that only do file I/O.

mod backoff;
pub mod channels;
pub mod control;
pub mod datapath;
mod pipes;
mod sessions;
pub mod store;
pub mod transport;
mod unix_socket;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use channels::Channels;
use control::{
    admin,
    links::PreparedLinks,
    metrics::{self, Metrics},
    peers::{self, PeerDirectory, Peers, protocol::PeerRequest},
    status::Identity,
    workflows::Workflows,
};
use datapath::{Datapath, DatapathConfig};
use floki_client::error_chain;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use transport::NodeCarriers;

/// Settings of `floki-agent run`.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Node name.
    pub node: String,
    /// Address for functions' channel connections.
    pub listen: SocketAddr,
    /// Address for the other agents (opened only with a cluster secret).
    pub peer_listen: SocketAddr,
    /// What agents prove to each other; without it this agent talks to no
    /// other and opens no port for them.
    pub secret: Option<peers::auth::ClusterSecret>,
    /// Admin socket path.
    pub admin: PathBuf,
    /// The clients' Unix socket, where the agent can hand sockets over.
    pub socket: PathBuf,
    /// Datapath settings.
    pub datapath: DatapathConfig,
    /// Default flow-control window per channel, in bytes.
    pub window: u64,
    /// shm rings on huge pages (`--huge-rings`).
    pub huge_rings: bool,
    /// Finished channels kept for status.
    pub history: usize,
    /// How long a graceful stop waits for active channels.
    pub shutdown_grace: Duration,
    /// Where the other agents are.
    pub peers: Arc<dyn PeerDirectory>,
    /// Refuse channels that belong to no workflow.
    pub workflow_channels_only: bool,
    /// Expose workflow edges as named pipes in this directory.
    pub pipes_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics: Option<SocketAddr>,
    /// Find peers through DNS, into this directory (the one in `peers`).
    pub discovery: Option<(peers::dns::DnsDiscovery, Arc<peers::dns::DiscoveredPeers>)>,
    /// The store of streams whose consumers start later.
    pub store: store::StoreConfig,
}

/// What every connection of the agent works with.
pub struct Agent {
    /// This node's name.
    pub node: String,
    /// The channel core.
    pub channels: Arc<Channels>,
    /// Applied workflows.
    pub workflows: Arc<Workflows>,
    /// The other agents.
    pub peers: Arc<Peers>,
    /// The links prepared for cross-node streams.
    pub links: Arc<PreparedLinks>,
    /// The kernel programs (or the fallback).
    pub datapath: Arc<Datapath>,
    /// Refusals, set-up latencies, failed channels.
    pub metrics: Arc<Metrics>,
    /// Cookie of the agent's network namespace: the namespace of the data
    /// sockets it opens for clients on its Unix socket.
    pub netns_cookie: Option<u64>,
    /// Refuse channels that belong to no workflow.
    pub workflow_channels_only: bool,
    /// Streams kept for consumers that start later.
    pub store: Arc<store::Store>,
    /// The agent's own Unix socket (`unix:PATH`), where the store's ends
    /// connect like any function.
    pub socket: String,
    /// The relays of cross-node streams. One may outlive its channel: a
    /// consumer reports its verified stream before its ack has crossed the
    /// relay back to the producer's node, so a graceful stop waits for
    /// both.
    pub relays: TaskTracker,
}

impl Agent {
    /// Workflow `name` was deleted: what its functions held from its
    /// streams' last uses carries nothing more without this agent (its
    /// held links close, its held rings are withdrawn), so that their next
    /// request meets the deletion.
    pub fn forget_workflow(&self, name: &str) {
        self.links.forget(name);
        self.channels.forget_workflow(name);
    }
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agents' listener could not be bound.
    #[error(
        "cannot listen for other agents on {addr} (is another agent running? see --peer-listen)"
    )]
    PeerListen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The channel listener could not be bound.
    #[error("cannot listen for channels on {addr} (is another agent running? see --listen)")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin socket could not be set up.
    #[error("admin socket (stop the other agent, or pick another path with --admin)")]
    Admin {
        /// Why.
        source: unix_socket::BindError,
    },
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr} (pick another address with --metrics)")]
    Metrics {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The clients' Unix socket could not be set up.
    #[error("clients' socket (stop the other agent, or pick another path with --socket)")]
    Socket {
        /// Why.
        source: unix_socket::BindError,
    },
    /// The store could not be opened.
    #[error("the store (see --store-dir and --store-s3)")]
    Store {
        /// Why.
        #[from]
        source: store::StoreError,
    },
}

/// Connections a door queues before the agent accepts them (the kernel caps
/// it at `net.core.somaxconn`): functions started together open their
/// channels in bursts, and a full queue drops a connection attempt, which
/// the client's kernel retries only a second later.
pub const BACKLOG: u32 = 4096;

/// Clients in their handshake (each has 5 s for its hello) at most: beyond,
/// connections wait in the kernel's queue rather than cost the agent a task
/// and a descriptor each.
pub const MAX_HANDSHAKES: usize = 8192;

/// The channel port, with a backlog of [`BACKLOG`].
fn listen_tcp(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The agent's doors, bound before anything starts: the channel port, the
/// agents' port, the clients' Unix socket, the admin socket and the metrics
/// address.
struct Doors {
    channels: TcpListener,
    peers: Option<TcpListener>,
    local: UnixListener,
    admin: admin::AdminServer,
    metrics: Option<TcpListener>,
}

impl Doors {
    async fn bind(config: &AgentConfig) -> Result<Self, AgentError> {
        let channels = listen_tcp(config.listen).map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
        let peers =
            match config.secret {
                Some(_) => Some(listen_tcp(config.peer_listen).map_err(|source| {
                    AgentError::PeerListen {
                        addr: config.peer_listen,
                        source,
                    }
                })?),
                None => None,
            };
        let admin = admin::AdminServer::bind(&config.admin).await?;
        let local = unix_socket::bind(&config.socket, 0o666)
            .await
            .map_err(|source| AgentError::Socket { source })?;
        let metrics = match config.metrics {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            channels,
            peers,
            local,
            admin,
            metrics,
        })
    }
}

/// Runs the agent until the first message on `signals` (graceful stop: no
/// new channels, active ones may finish within the grace period, then the
/// programs are detached). A second message stops at once.
pub async fn run(config: AgentConfig, mut signals: mpsc::Receiver<()>) -> Result<(), AgentError> {
    let started = Instant::now();
    let doors = Doors::bind(&config).await?;
    let agent = assemble(&config, &doors.channels)?;
    let mut tasks = background(&config, &agent);
    let identity = Arc::new(Identity {
        listen: doors.channels.local_addr().unwrap_or(config.listen),
        started,
        metrics: doors
            .metrics
            .as_ref()
            .and_then(|listener| listener.local_addr().ok()),
    });
    let admin_path = doors.admin.path().to_owned();
    let peer_listen = doors.peers.as_ref().and_then(|l| l.local_addr().ok());
    info!(
        node = %config.node,
        listen = %identity.listen,
        agents = %peer_listen.map_or_else(|| "closed (no cluster secret)".to_owned(), |a| a.to_string()),
        admin = %admin_path.display(),
        socket = %config.socket.display(),
        "floki-agent ready"
    );
    if let Some(listener) = doors.metrics {
        if let Some(addr) = identity.metrics {
            info!(%addr, "serving Prometheus metrics at /metrics");
        }
        tasks.push(tokio::spawn(metrics::serve(listener, agent.clone())));
    }
    tasks.push(tokio::spawn(doors.admin.serve(agent.clone(), identity)));
    if let Some(listener) = doors.peers {
        tasks.push(tokio::spawn(control::peer_rpc::accept(
            listener,
            agent.clone(),
        )));
    }
    // The accept loop runs as a task of its own, on a worker thread: the
    // worker that sees a listener ready accepts at once and runs the new
    // session next, instead of waking the thread of this future (which
    // drives no I/O) and being woken back by it: two hand-offs of about
    // 50 µs each per connection on a 2-vCPU VM.
    let (channels, local) = (doors.channels, doors.local);
    let accepting = tokio::spawn({
        let agent = agent.clone();
        async move {
            accept(&agent, &channels, &local, &mut signals).await;
            signals
        }
    });
    let mut signals = match accepting.await {
        Ok(signals) => signals,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Cancelled: the runtime itself is shutting down.
        Err(_) => return Ok(()),
    };

    info!("stopping: no new channels; active channels may finish");
    let _ = std::fs::remove_file(&config.socket);
    agent.channels.close();
    tokio::select! {
        () = drain(&agent, config.shutdown_grace) => {},
        _ = signals.recv() => warn!("second signal: stopping now"),
    }
    for task in tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(&admin_path);
    agent.datapath.shutdown();
    info!("stopped");
    Ok(())
}

/// A graceful stop's wait, at most `grace` in all: until no channel is live,
/// then until no relay still carries a finished channel's last bytes (its
/// consumer's ack, on its way back to the producer's node).
async fn drain(agent: &Agent, grace: Duration) {
    let left = drain_within(&agent.channels, &agent.relays, grace).await;
    if left.channels > 0 {
        warn!(
            left = left.channels,
            ?grace,
            "channels still active at the end of the grace period; their ends will report failures if they do not complete"
        );
    } else if left.relays > 0 {
        warn!(
            relays = left.relays,
            ?grace,
            "relays still open at the end of the grace period; the producers across them may not hear their consumers' acks"
        );
    }
}

/// What a graceful stop left running when its grace period ended.
#[derive(Debug, PartialEq, Eq)]
struct Left {
    channels: usize,
    relays: usize,
}

/// [`drain`]'s wait, on the agent's parts: what is left at the end.
async fn drain_within(channels: &Channels, relays: &TaskTracker, grace: Duration) -> Left {
    let deadline = tokio::time::Instant::now() + grace;
    let channels = channels.drain(grace).await;
    relays.close();
    let _ = tokio::time::timeout_at(deadline, relays.wait()).await;
    Left {
        channels,
        relays: relays.len(),
    }
}

/// The agent's state: the datapath, the channel core (its events counted by
/// the metrics), the workflows, the peers and the prepared links.
fn assemble(config: &AgentConfig, listener: &TcpListener) -> Result<Arc<Agent>, AgentError> {
    let datapath = Arc::new(Datapath::start(&config.datapath));
    let carriers = Arc::new(NodeCarriers::new(datapath.clone(), config.huge_rings));
    let channels = Arc::new(Channels::new(carriers, config.window, config.history));
    let metrics = Arc::new(Metrics::default());
    let observer = metrics.clone();
    channels.subscribe(move |event| observer.observe(event));
    let workflows = Arc::new(Workflows::default());
    let peers = Arc::new(Peers::new(
        config.node.clone(),
        config.peers.clone(),
        config.secret.clone(),
    ));
    let links = PreparedLinks::new(config.node.clone(), peers.clone(), workflows.clone());
    let store = store::Store::open(config.store.clone())?;
    Ok(Arc::new(Agent {
        node: config.node.clone(),
        channels,
        workflows,
        peers,
        links,
        datapath,
        metrics,
        netns_cookie: floki_proto::netns::netns_cookie(listener).ok(),
        workflow_channels_only: config.workflow_channels_only,
        store,
        socket: format!("unix:{}", config.socket.display()),
        relays: TaskTracker::new(),
    }))
}

/// What runs beside the accept loop: the reaper of channels adopted after a
/// restart, peer discovery and links, the named pipes.
fn background(config: &AgentConfig, agent: &Arc<Agent>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    // Spliced streams a previous agent left in flight (pins adopted): listed
    // until the kernel sees their sockets close.
    let adopted = agent.datapath.adopted();
    agent.channels.adopt(&adopted);
    if !adopted.is_empty() {
        let channels = agent.channels.clone();
        tasks.push(tokio::spawn(async move {
            while channels.reap_adopted() > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    if let Some((discovery, directory)) = config.discovery.clone() {
        info!(name = %discovery.name, "discovering peers through DNS");
        let node = config.node.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(err) = peers::dns::run(discovery, node, directory).await {
                warn!(error = %error_chain(&err), "peer discovery stopped");
            }
        }));
    }
    let store = agent.store.clone();
    tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            store.sweep().await;
        }
    }));
    // A stream pushed ahead to this node, whose consumer has not started.
    tasks.push(tokio::spawn(sessions::push_ahead(agent.clone())));
    // A stream stored here for a node that was unreachable: forwarded when
    // its link is back.
    tasks.push(tokio::spawn(sessions::forward_stored(agent.clone())));
    // On every (re)connection a peer gets the workflows it is part of.
    let workflows = agent.workflows.clone();
    peers::spawn_links(
        agent.peers.clone(),
        Arc::new(move |peer: &str| {
            workflows
                .involving(peer)
                .into_iter()
                .map(|applied| PeerRequest::Install {
                    yaml: applied.yaml,
                    token: applied.token,
                })
                .collect()
        }),
    );
    if let Some(dir) = config.pipes_dir.clone() {
        tasks.push(tokio::spawn(pipes::serve(
            dir,
            config.socket.clone(),
            config.node.clone(),
            agent.workflows.clone(),
            agent.channels.clone(),
        )));
    }
    tasks
}

/// Serves connections until the first signal: a session each.
async fn accept(
    agent: &Arc<Agent>,
    channels: &TcpListener,
    local: &UnixListener,
    signals: &mut mpsc::Receiver<()>,
) {
    let mut backoff = backoff::AcceptBackoff::new("channels");
    let unproven = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        // With as many clients still in their handshake as allowed, the
        // next ones wait in the listeners' queues.
        let permit = tokio::select! {
            _ = signals.recv() => return,
            permit = unproven.clone().acquire_owned() => permit.expect("never closed"),
        };
        let failed = tokio::select! {
            _ = signals.recv() => return,
            accepted = channels.accept() => match accepted {
                Ok((stream, from)) => {
                    agent.metrics.count_connection();
                    tokio::spawn(sessions::serve(stream, from, agent.clone(), permit));
                    None
                }
                Err(err) => Some(err),
            },
            accepted = local.accept() => match accepted {
                Ok((stream, _)) => {
                    agent.metrics.count_connection();
                    tokio::spawn(sessions::serve_unix(stream, agent.clone(), permit));
                    None
                }
                Err(err) => Some(err),
            },
        };
        match failed {
            None => backoff.succeeded(),
            // Out of descriptors, typically: retrying at once would spin.
            Some(err) => tokio::select! {
                _ = signals.recv() => return,
                () = backoff.failed(&err) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::agent::datapath::kernel_support::KernelSupport;

    fn no_channels() -> Channels {
        let datapath = Arc::new(Datapath::Fallback {
            reason: "tests run without a kernel".into(),
            kernel: KernelSupport::default(),
        });
        Channels::new(Arc::new(NodeCarriers::new(datapath, false)), 1 << 20, 16)
    }

    /// A relay outlives its channel when the consumer reports its verified
    /// stream before its ack crossed the relay: the stop waits for it.
    #[tokio::test(start_paused = true)]
    async fn a_graceful_stop_waits_for_relays_after_the_channels() {
        let relays = TaskTracker::new();
        let acked = Arc::new(AtomicBool::new(false));
        relays.spawn({
            let acked = acked.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                acked.store(true, Ordering::Relaxed);
            }
        });
        let left = drain_within(&no_channels(), &relays, Duration::from_secs(10)).await;
        assert_eq!(
            left,
            Left {
                channels: 0,
                relays: 0
            }
        );
        assert!(
            acked.load(Ordering::Relaxed),
            "the stop did not wait for the relay"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_graceful_stop_gives_up_on_relays_at_the_end_of_its_grace() {
        let relays = TaskTracker::new();
        relays.spawn(std::future::pending::<()>());
        let left = drain_within(&no_channels(), &relays, Duration::from_secs(10)).await;
        assert_eq!(
            left,
            Left {
                channels: 0,
                relays: 1
            }
        );
    }
}
