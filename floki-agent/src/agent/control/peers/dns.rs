//! Peers found through DNS, without a hand-written list: every address a
//! name resolves to is an agent. On Kubernetes the name is the DaemonSet's
//! headless Service (`floki-agent.floki-system.svc.cluster.local`), whose
//! records are the agents' pods, and with `hostNetwork` the nodes' own
//! addresses. An agent's node name is what it says when asked (the link
//! hello), so nothing else has to be configured.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_resolver::{
    Resolver, TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};
use tokio::{net::TcpStream, time::timeout};
use tracing::{debug, info, warn};

use super::{
    Peer, PeerDirectory,
    auth::{self, ClusterSecret},
    protocol::{PeerAnswer, PeerRequest, write_preamble},
};
use floki_proto::control::{read_message, write_message};

/// How to discover peers through DNS.
#[derive(Clone, Debug)]
pub struct DnsDiscovery {
    /// The name to resolve.
    pub name: String,
    /// The agents' own port (`--peer-listen`).
    pub port: u16,
    /// What the agents found prove to each other.
    pub secret: ClusterSecret,
    /// A DNS server to ask instead of the system's resolver
    /// (/etc/resolv.conf).
    pub server: Option<SocketAddr>,
    /// How often to resolve again.
    pub every: Duration,
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot set up the DNS resolver for peer discovery (check /etc/resolv.conf or pass --discover-dns-server)"
)]
pub struct DiscoveryError(#[source] hickory_resolver::net::NetError);

/// Peers: the static ones (`--peer`) and those DNS found.
#[derive(Debug, Default)]
pub struct DiscoveredPeers {
    fixed: Vec<Peer>,
    /// Address -> the peer that answered there.
    found: Mutex<BTreeMap<IpAddr, Peer>>,
}

impl DiscoveredPeers {
    /// A directory starting with `fixed` peers.
    pub fn new(fixed: Vec<Peer>) -> Self {
        Self {
            fixed,
            found: Mutex::new(BTreeMap::new()),
        }
    }
}

impl PeerDirectory for DiscoveredPeers {
    fn peers(&self) -> Vec<Peer> {
        let found = self.found.lock().expect("peers lock");
        let mut peers = self.fixed.clone();
        for peer in found.values() {
            if !peers.iter().any(|p| p.node == peer.node) {
                peers.push(peer.clone());
            }
        }
        peers
    }
}

fn resolver(discovery: &DnsDiscovery) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = match discovery.server {
        Some(server) => {
            let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                .into_iter()
                .map(|mut connection| {
                    connection.port = server.port();
                    connection
                })
                .collect();
            let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                server.ip(),
                true,
                connections,
            )]);
            Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        }
        None => Resolver::builder_tokio().map_err(DiscoveryError)?,
    };
    // Every round must see the records as they are now.
    builder.options_mut().cache_size = 0;
    builder.build().map_err(DiscoveryError)
}

/// Resolves `discovery.name` every `discovery.every`, asks each new address
/// which node it is, and keeps `peers` to what answered (this node left out).
/// Runs until aborted.
pub async fn run(
    discovery: DnsDiscovery,
    node: String,
    peers: Arc<DiscoveredPeers>,
) -> Result<(), DiscoveryError> {
    let resolver = resolver(&discovery)?;
    let mut own: Vec<IpAddr> = Vec::new();
    loop {
        match resolver.lookup_ip(discovery.name.as_str()).await {
            Ok(answer) => {
                let addrs: Vec<IpAddr> = answer.iter().collect();
                refresh(&discovery, &node, &peers, &addrs, &mut own).await;
            }
            Err(err) => warn!(name = %discovery.name, %err, "peer discovery: DNS lookup failed"),
        }
        tokio::time::sleep(discovery.every).await;
    }
}

async fn refresh(
    discovery: &DnsDiscovery,
    node: &str,
    peers: &DiscoveredPeers,
    addrs: &[IpAddr],
    own: &mut Vec<IpAddr>,
) {
    let known: Vec<IpAddr> = peers
        .found
        .lock()
        .expect("peers lock")
        .keys()
        .copied()
        .collect();
    for ip in addrs {
        if known.contains(ip) || own.contains(ip) {
            continue;
        }
        let addr = SocketAddr::new(*ip, discovery.port);
        match ask_node(addr, &discovery.secret).await {
            Ok(name) if name == node => own.push(*ip),
            Ok(name) => {
                info!(node = %name, %addr, "peer discovered through DNS");
                peers.found.lock().expect("peers lock").insert(
                    *ip,
                    Peer {
                        node: name,
                        addr: addr.to_string(),
                    },
                );
            }
            Err(err) => debug!(%addr, %err, "a discovered address did not answer as an agent"),
        }
    }
    // Gone from DNS (its pod was deleted): no longer a peer.
    peers.found.lock().expect("peers lock").retain(|ip, peer| {
        let kept = addrs.contains(ip);
        if !kept {
            info!(node = %peer.node, addr = %peer.addr, "peer left DNS");
        }
        kept
    });
}

/// Asks the agent at `addr` its node name (both proving the cluster
/// secret first: an address that does not is no peer).
async fn ask_node(addr: SocketAddr, secret: &ClusterSecret) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        write_preamble(&mut stream)
            .await
            .map_err(|e| e.to_string())?;
        auth::prove_to(&mut stream, secret)
            .await
            .map_err(|e| e.to_string())?;
        let hello = PeerRequest::Hello {
            node: String::new(),
        };
        write_message(&mut stream, &hello)
            .await
            .map_err(|e| e.to_string())?;
        match read_message(&mut stream).await {
            Ok(Some(PeerAnswer::Hello { node })) => Ok(node),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(err) => Err(err.to_string()),
        }
    };
    timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
}
