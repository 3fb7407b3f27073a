//! The other agents: where they are (a [`PeerDirectory`]), whether this
//! agent is connected to them (links), and one-shot requests to them.

pub mod auth;
pub mod dns;
pub mod protocol;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use auth::{AuthError, ClusterSecret, Session};
use protocol::{PeerAnswer, PeerRequest, write_preamble};
use tokio::{net::TcpStream, time::timeout};
use tracing::{info, warn};

use floki_proto::ProtocolError;

use crate::status::PeerStatus;

/// How long a request to a peer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Link keep-alive period.
pub const PING_EVERY: Duration = Duration::from_secs(2);

/// One peer agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its node name.
    pub node: String,
    /// Its channel address (`host:port`).
    pub addr: String,
}

/// Where peers come from: a static list (`--peer`, a peers file), or DNS
/// (`--discover-dns`, a Kubernetes headless Service) on top of it. The set
/// may change while the agent runs.
pub trait PeerDirectory: Send + Sync + std::fmt::Debug {
    /// The current peers.
    fn peers(&self) -> Vec<Peer>;
}

/// A fixed list of peers.
#[derive(Debug)]
pub struct StaticPeers(pub Vec<Peer>);

impl PeerDirectory for StaticPeers {
    fn peers(&self) -> Vec<Peer> {
        self.0.clone()
    }
}

struct LinkState {
    connected: bool,
    since: Instant,
    error: Option<String>,
}

/// Errors talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No such peer.
    #[error("node {0:?} is not a peer of this agent (see --peer)")]
    Unknown(String),
    /// It could not be reached or did not answer.
    #[error("node {node} at {addr} did not answer")]
    Unreachable {
        /// Node.
        node: String,
        /// Address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// This agent has no cluster secret, so it talks to no other agent.
    #[error(
        "this agent has no cluster secret, so it cannot talk to node {0} (give --cluster-secret-file or FLOKI_CLUSTER_SECRET)"
    )]
    NoSecret(String),
    /// It did not prove it knows the cluster secret, or refused ours.
    #[error("node {node} at {addr} did not authenticate (is its cluster secret the same as ours?)")]
    Auth {
        /// Node.
        node: String,
        /// Address.
        addr: String,
        /// Why.
        source: AuthError,
    },
    /// It answered something unexpected.
    #[error("node {node} broke the agent protocol")]
    Protocol {
        /// Node.
        node: String,
        /// What.
        source: ProtocolError,
    },
}

/// This agent's peers.
pub struct Peers {
    node: String,
    directory: Arc<dyn PeerDirectory>,
    secret: Option<ClusterSecret>,
    links: Mutex<BTreeMap<String, LinkState>>,
}

impl Peers {
    /// Peers of `node` from `directory`, authenticated with `secret` (none:
    /// this agent talks to no other).
    pub fn new(
        node: String,
        directory: Arc<dyn PeerDirectory>,
        secret: Option<ClusterSecret>,
    ) -> Self {
        Self {
            node,
            directory,
            secret,
            links: Mutex::new(BTreeMap::new()),
        }
    }

    /// This agent's node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The cluster secret, if this agent has one.
    pub fn secret(&self) -> Option<&ClusterSecret> {
        self.secret.as_ref()
    }

    /// A peer's address.
    pub fn addr_of(&self, node: &str) -> Option<String> {
        self.directory
            .peers()
            .into_iter()
            .find(|peer| peer.node == node)
            .map(|peer| peer.addr)
    }

    /// This node and its peers.
    pub fn known_nodes(&self) -> std::collections::BTreeSet<String> {
        let mut nodes: std::collections::BTreeSet<String> = self
            .directory
            .peers()
            .into_iter()
            .map(|peer| peer.node)
            .collect();
        nodes.insert(self.node.clone());
        nodes
    }

    /// Links, for status.
    pub fn status(&self) -> Vec<PeerStatus> {
        let links = self.links.lock().expect("links lock");
        self.directory
            .peers()
            .into_iter()
            .map(|peer| {
                let link = links.get(&peer.node);
                PeerStatus {
                    state: if link.is_some_and(|l| l.connected) {
                        "connected"
                    } else {
                        "disconnected"
                    }
                    .into(),
                    since_secs: link.map_or(0.0, |l| l.since.elapsed().as_secs_f64()),
                    error: link.and_then(|l| l.error.clone()),
                    node: peer.node,
                    addr: peer.addr,
                }
            })
            .collect()
    }

    fn set_link(&self, node: &str, connected: bool, error: Option<String>) {
        let mut links = self.links.lock().expect("links lock");
        let changed = links.get(node).is_none_or(|l| l.connected != connected);
        if changed {
            if connected {
                info!(peer = node, "peer link up");
            } else {
                warn!(
                    peer = node,
                    error = error.as_deref().unwrap_or(""),
                    "peer link down"
                );
            }
        }
        let since = match links.get(node) {
            Some(link) if !changed => link.since,
            _ => Instant::now(),
        };
        links.insert(
            node.to_owned(),
            LinkState {
                connected,
                since,
                error,
            },
        );
    }

    /// Opens an agent-to-agent connection to `node`, authenticates both
    /// sides and sends `request`.
    pub async fn connect(
        &self,
        node: &str,
        request: &PeerRequest,
    ) -> Result<(TcpStream, Session), PeerError> {
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| PeerError::NoSecret(node.to_owned()))?;
        let addr = self
            .addr_of(node)
            .ok_or_else(|| PeerError::Unknown(node.to_owned()))?;
        let unreachable = |source| PeerError::Unreachable {
            node: node.to_owned(),
            addr: addr.clone(),
            source,
        };
        let protocol = |source| PeerError::Protocol {
            node: node.to_owned(),
            source,
        };
        let mut stream = timeout(REQUEST_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
            .map_err(unreachable)?;
        stream.set_nodelay(true).ok();
        write_preamble(&mut stream).await.map_err(protocol)?;
        let session = auth::prove_to(&mut stream, secret)
            .await
            .map_err(|source| PeerError::Auth {
                node: node.to_owned(),
                addr: addr.clone(),
                source,
            })?;
        protocol::write(&mut stream, request)
            .await
            .map_err(protocol)?;
        Ok((stream, session))
    }

    /// Sends one request to `node` and returns its answer.
    pub async fn request(
        &self,
        node: &str,
        request: &PeerRequest,
    ) -> Result<PeerAnswer, PeerError> {
        let (mut stream, _) = self.connect(node, request).await?;
        let protocol = |source| PeerError::Protocol {
            node: node.to_owned(),
            source,
        };
        match timeout(REQUEST_TIMEOUT, protocol::read_answer(&mut stream)).await {
            Ok(Ok(Some(answer))) => Ok(answer),
            Ok(Ok(None)) => Err(protocol(ProtocolError::Truncated)),
            Ok(Err(err)) => Err(protocol(err)),
            Err(_) => Err(PeerError::Unreachable {
                node: node.to_owned(),
                addr: self.addr_of(node).unwrap_or_default(),
                source: std::io::ErrorKind::TimedOut.into(),
            }),
        }
    }
}

/// What a link hands a peer when it (re)connects: the requests that bring
/// it up to date (the workflows it is part of).
pub type Resync = Arc<dyn Fn(&str) -> Vec<PeerRequest> + Send + Sync>;

/// Keeps a link to every peer: marks it connected or not for status, and on
/// every (re)connection hands the peer the workflows it is part of, so that
/// a restarted agent learns them again.
pub fn spawn_links(peers: Arc<Peers>, resync: Resync) {
    // Peers may come and go (discovery): look for new ones every second.
    tokio::spawn(async move {
        let running: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
        loop {
            for peer in peers.directory.peers() {
                if !running
                    .lock()
                    .expect("links lock")
                    .insert(peer.node.clone())
                {
                    continue;
                }
                let peers = peers.clone();
                let resync = resync.clone();
                let running = running.clone();
                tokio::spawn(async move {
                    let node = peer.node;
                    // Each attempt uses the peer's address as the directory
                    // has it now; a peer that left ends its link.
                    while let Some(peer) =
                        peers.directory.peers().into_iter().find(|p| p.node == node)
                    {
                        let error = link(&peers, &peer, &resync).await;
                        peers.set_link(&peer.node, false, Some(error));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    running.lock().expect("links lock").remove(&node);
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// One link session; returns why it ended.
async fn link(peers: &Peers, peer: &Peer, resync: &Resync) -> String {
    let hello = PeerRequest::Hello {
        node: peers.node.clone(),
    };
    let mut stream = match peers.connect(&peer.node, &hello).await {
        Ok((stream, _)) => stream,
        Err(err) => return format!("{err}: {}", source_text(&err)),
    };
    match answer(&mut stream).await {
        Ok(PeerAnswer::Hello { node }) if node == peer.node => {}
        Ok(PeerAnswer::Hello { node }) => {
            return format!(
                "{} says it is node {node:?}, not {:?}; check --peer",
                peer.addr, peer.node
            );
        }
        Ok(other) => return format!("unexpected answer {other:?}"),
        Err(err) => return err,
    }
    peers.set_link(&peer.node, true, None);
    for request in resync(&peer.node) {
        if let Err(err) = exchange(&mut stream, &request).await {
            return err;
        }
    }
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match exchange(&mut stream, &PeerRequest::Ping).await {
            Ok(PeerAnswer::Pong) => {}
            Ok(other) => return format!("unexpected answer {other:?}"),
            Err(err) => return err,
        }
    }
}

/// Sends a request on a link and reads its answer.
async fn exchange(stream: &mut TcpStream, request: &PeerRequest) -> Result<PeerAnswer, String> {
    protocol::write(stream, request)
        .await
        .map_err(|e| e.to_string())?;
    answer(stream).await
}

/// Reads the next answer on a link.
async fn answer(stream: &mut TcpStream) -> Result<PeerAnswer, String> {
    match timeout(REQUEST_TIMEOUT, protocol::read_answer(stream)).await {
        Ok(Ok(Some(answer))) => Ok(answer),
        Ok(Ok(None)) => Err("the peer closed the link".into()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("the peer stopped answering".into()),
    }
}

fn source_text(err: &PeerError) -> String {
    use std::error::Error as _;
    err.source().map(|s| s.to_string()).unwrap_or_default()
}

/// `NAME=HOST:PORT`, as given to `--peer`.
pub fn parse_peer(text: &str) -> Result<Peer, String> {
    let (node, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=HOST:PORT"))?;
    if node.is_empty() || addr.is_empty() {
        return Err(format!("{text:?} is not NAME=HOST:PORT"));
    }
    Ok(Peer {
        node: node.to_owned(),
        addr: addr.to_owned(),
    })
}

/// A peers file: one `NAME=HOST:PORT` per line, `#` comments.
pub fn parse_peers_file(text: &str) -> Result<Vec<Peer>, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(parse_peer)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        assert_eq!(
            parse_peer("node-b=10.0.0.2:7878").unwrap(),
            Peer {
                node: "node-b".into(),
                addr: "10.0.0.2:7878".into()
            }
        );
        assert!(parse_peer("node-b").is_err());
        let file = "# peers\nnode-b=10.0.0.2:7878\n\nnode-c=10.0.0.3:7878\n";
        assert_eq!(parse_peers_file(file).unwrap().len(), 2);
    }
}
