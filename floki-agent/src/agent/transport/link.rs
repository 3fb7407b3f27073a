//! The link carrier: a cross-node stream rides the connection the two
//! agents prepared at apply ([`crate::agent::control::links`]). A function
//! on the Unix socket is handed the link itself; one on the TCP port
//! connects to its agent, which relays it over the link, with the kernel
//! redirecting the bytes between the two sockets when eBPF is active.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use floki_proto::control::Hello;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::{
    net::{TcpListener, TcpStream},
    time::timeout,
};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::relay;
use crate::agent::control::peers::protocol::LinkStart;
use crate::agent::datapath::{Datapath, SpliceHandle};

/// How long the agent waits for a function's data connection after pairing.
const DATA_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Producer side, relayed: the listener the producer connects to, and the
/// kernel's redirect of its writes into the link.
pub struct ProducerSide {
    listener: TcpListener,
    /// Where the producer connects.
    pub connect_to: SocketAddr,
    /// The kernel's part, if eBPF is active.
    pub splice: Option<SpliceHandle>,
}

/// Opens the producer's listener on `ip` (the address it reaches the agent
/// at) and has the kernel redirect the producer's writes into `link`.
pub async fn producer_side(
    datapath: &Datapath,
    id: u32,
    producer: &Hello,
    ip: IpAddr,
    link: &TcpStream,
    window: u64,
) -> Result<ProducerSide, String> {
    let listener = TcpListener::bind((ip, 0))
        .await
        .map_err(|e| e.to_string())?;
    let connect_to = listener.local_addr().map_err(|e| e.to_string())?;
    // The producer writes only after the consumer's first credit, which
    // comes back over the link: by then its socket is in the map.
    let splice = match datapath.install_outbound(id, producer, connect_to, link) {
        Ok(handle) => {
            // The redirect cannot wait for room in the link (a producer
            // with a non-blocking socket would get a short write and no
            // wake-up): give it room for the whole window, which the
            // credits never let the stream exceed.
            let room = usize::try_from(window.saturating_mul(2)).unwrap_or(usize::MAX);
            if let Err(err) = setsockopt(link, sockopt::SndBufForce, &room) {
                warn!(channel = id, %err, "sizing the link's send buffer failed");
            }
            Some(handle)
        }
        Err(reason) => {
            debug!(channel = id, %reason, "producer relayed by the agent");
            None
        }
    };
    Ok(ProducerSide {
        listener,
        connect_to,
        splice,
    })
}

impl ProducerSide {
    /// Accepts the producer's data connection and starts the link.
    pub async fn accept(
        self,
        link: &mut TcpStream,
        start: &LinkStart,
    ) -> Result<TcpStream, String> {
        let (data, _) = timeout(DATA_CONNECT_TIMEOUT, self.listener.accept())
            .await
            .map_err(|_| "the producer did not connect".to_owned())?
            .map_err(|e| e.to_string())?;
        data.set_nodelay(true).ok();
        relay::start(link, &start.bytes())
            .await
            .map_err(|e| e.to_string())?;
        Ok(data)
    }
}

/// Consumer side, relayed: has the kernel deliver what the agent writes
/// into the consumer's socket (`Err` if it cannot: plain TCP then).
pub fn consumer_side(
    datapath: &Datapath,
    id: u32,
    name: &str,
    agent_netns: Option<u64>,
    consumer: &Hello,
) -> Result<(SocketAddr, Option<SpliceHandle>), String> {
    let listen = consumer
        .listen
        .ok_or("the consumer advertised no data address")?;
    // The relay's writes carry the producer's stream, held to the
    // consumer's credits end to end: none granted before the first.
    let netns = (agent_netns, consumer.netns_cookie);
    let splice = match datapath.install(id, name, netns, listen, 0) {
        Ok(handle) => Some(handle),
        Err(reason) => {
            debug!(channel = %name, %reason, "consumer fed over TCP by the agent");
            None
        }
    };
    Ok((listen, splice))
}

/// Connects to the consumer's data listener (only an address of the agent's
/// own namespace).
pub async fn connect_consumer(listen: SocketAddr) -> Result<TcpStream, String> {
    super::check_own_address(listen, "the consumer's data address")?;
    let data = timeout(DATA_CONNECT_TIMEOUT, TcpStream::connect(listen))
        .await
        .map_err(|_| format!("the consumer's listener {listen} did not answer"))?
        .map_err(|e| format!("connecting to the consumer at {listen}: {e}"))?;
    data.set_nodelay(true).ok();
    Ok(data)
}

/// Relays the stream between `producer` and `consumer` (one of them the
/// link) in the background, on `relays` (a stopping agent waits for them),
/// counting into `relayed`. Aborting the task closes both connections.
pub fn spawn_relay(
    relays: &TaskTracker,
    name: String,
    producer: TcpStream,
    consumer: TcpStream,
    relayed: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    relays.spawn(async move {
        let relayed = relay::relay(producer, consumer, relayed).await;
        let (forward, backward) = (relayed.forward, relayed.backward);
        match relayed.error {
            None => debug!(channel = %name, forward, backward, "relay done"),
            Some(err) => info!(channel = %name, forward, backward, %err, "relay broken"),
        }
    })
}
