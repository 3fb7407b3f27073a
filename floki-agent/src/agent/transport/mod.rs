//! How a channel's bytes travel, and setting each carrier up.
//!
//! [`plan`] picks, for both ends on this node: `shm` when both can take a
//! ring, else `splice` when the kernel programs are attached, else `tcp`;
//! for an end whose peer is on another node: the agents' link, handed to
//! the function on the Unix socket, else relayed by the agent. An end may
//! insist on a transport (`--transport`, for experiments); the agent then
//! provides exactly that or refuses the channel.
//!
//! One module per carrier: [`ring`], [`splice`], [`link`] (with [`relay`]).
//! [`NodeCarriers`] is what the channel core calls to pair two local ends.

pub mod link;
pub mod relay;
mod ring;
mod splice;

pub use ring::{HugeRing, RingFile};

use std::{
    net::{SocketAddr, TcpListener},
    sync::Arc,
};

use floki_common::ChannelRecord;
use floki_proto::control::{Hello, Transport};
use tracing::warn;

use super::{
    channels::{Carrier, Carriers, LocalEnd, SetUp},
    datapath::{Datapath, SpliceHandle},
};

/// The carriers there are, before they are set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CarrierKind {
    /// A shared-memory ring (same node).
    Ring,
    /// A kernel splice of the two ends' sockets (same node).
    Splice,
    /// Plain TCP between the two ends' sockets (same node).
    Tcp,
    /// The agents' link, handed to the function (cross node, Unix socket).
    LinkHanded,
    /// The agents' link, relayed by the agent (cross node, TCP port).
    LinkRelayed,
}

impl CarrierKind {
    /// The transport the ends are told.
    pub fn transport(self) -> Transport {
        match self {
            Self::Ring => Transport::Shm,
            Self::Splice => Transport::Splice,
            Self::Tcp | Self::LinkHanded | Self::LinkRelayed => Transport::Tcp,
        }
    }
}

/// Where a channel's ends are.
pub enum Placement<'a> {
    /// Both on this node.
    SameNode {
        /// The sender's hello.
        sender: &'a Hello,
        /// The receiver's hello.
        receiver: &'a Hello,
    },
    /// This one here, its peer on `peer_node`.
    CrossNode {
        /// The end's hello.
        end: &'a Hello,
        /// Whether it is on the agent's Unix socket (it can take the link).
        unix: bool,
        /// The peer's node.
        peer_node: &'a str,
    },
}

/// What the agent will set up for a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The carrier.
    pub carrier: CarrierKind,
    /// Whether an end insisted on its transport (no fallback if it cannot be
    /// set up).
    pub insisted: bool,
    /// Why, for status.
    pub reason: String,
}

/// Picks a channel's carrier; `Err` says why the ends' demands cannot be
/// met.
pub fn plan(placement: Placement<'_>, ebpf: bool) -> Result<Plan, String> {
    match placement {
        Placement::SameNode { sender, receiver } => plan_same_node(sender, receiver, ebpf),
        Placement::CrossNode {
            end,
            unix,
            peer_node,
        } => plan_cross_node(end, unix, peer_node),
    }
}

fn plan_same_node(sender: &Hello, receiver: &Hello, ebpf: bool) -> Result<Plan, String> {
    let insisted = match (sender.transport, receiver.transport) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "the sender insists on transport {a} and the receiver on {b}; drop one --transport"
            ));
        }
        (a, b) => a.or(b),
    };
    let shm = sender.shm && receiver.shm;
    let plan = |carrier, reason: String| Plan {
        carrier,
        insisted: insisted.is_some(),
        reason,
    };
    match insisted {
        Some(Transport::Shm) if !shm => {
            let which = cannot_take_ring(sender, receiver);
            Err(format!(
                "transport shm needs both ends on the agent's Unix socket with a client that takes a ring; \
                 the {which} cannot"
            ))
        }
        Some(Transport::Splice) if !ebpf => Err(
            "transport splice needs the agent's eBPF datapath, which is not active (see `floki-agent status`)"
                .into(),
        ),
        Some(transport) => {
            let carrier = match transport {
                Transport::Shm => CarrierKind::Ring,
                Transport::Splice => CarrierKind::Splice,
                Transport::Tcp => CarrierKind::Tcp,
            };
            Ok(plan(carrier, format!("an end asked for {transport}")))
        }
        None if shm => Ok(plan(
            CarrierKind::Ring,
            "both ends on this node take a shared-memory ring".into(),
        )),
        None if ebpf => Ok(plan(
            CarrierKind::Splice,
            format!(
                "both ends on this node, socket clients ({} cannot take a ring)",
                cannot_take_ring(sender, receiver)
            ),
        )),
        None => Ok(plan(
            CarrierKind::Tcp,
            "eBPF datapath not active and an end cannot take a ring".into(),
        )),
    }
}

fn plan_cross_node(end: &Hello, unix: bool, peer_node: &str) -> Result<Plan, String> {
    if let Some(transport @ (Transport::Shm | Transport::Splice)) = end.transport {
        return Err(format!(
            "transport {transport} works between two ends on one node; the {} runs on node \
             {peer_node}, so this stream goes over tcp: drop --transport",
            end.role.peer(),
        ));
    }
    Ok(Plan {
        carrier: if unix {
            CarrierKind::LinkHanded
        } else {
            CarrierKind::LinkRelayed
        },
        insisted: end.transport.is_some(),
        reason: format!("the other end is on node {peer_node}"),
    })
}

fn cannot_take_ring(sender: &Hello, receiver: &Hello) -> &'static str {
    match (sender.shm, receiver.shm) {
        (false, false) => "sender and receiver",
        (false, true) => "sender",
        _ => "receiver",
    }
}

/// The carriers of this node: rings, the kernel datapath, plain TCP.
pub struct NodeCarriers {
    datapath: Arc<Datapath>,
    rings: ring::RingFiles,
}

impl NodeCarriers {
    /// Carriers over `datapath`; rings on huge pages if `huge_rings`.
    pub fn new(datapath: Arc<Datapath>, huge_rings: bool) -> Self {
        Self {
            datapath,
            rings: ring::RingFiles::new(huge_rings),
        }
    }
}

impl Carriers for NodeCarriers {
    /// Sets up what [`plan`] picks; a transport the ends did not insist on
    /// falls back to TCP if it cannot be set up.
    fn set_up(
        &self,
        id: u32,
        name: &str,
        sender: &LocalEnd,
        receiver: &LocalEnd,
        window: u64,
    ) -> Result<SetUp, String> {
        let placement = Placement::SameNode {
            sender: &sender.hello,
            receiver: &receiver.hello,
        };
        let plan = plan(placement, self.datapath.is_ebpf())?;
        // Sockets, over splice or TCP: where the sender connects.
        let socket = |carrier_kind: CarrierKind, reason: String| -> Result<SetUp, String> {
            let (connect_to, listener) = data_address(sender, receiver)?;
            let carrier = match carrier_kind {
                CarrierKind::Splice => {
                    let ends = (sender, receiver);
                    splice::set_up(&self.datapath, id, name, ends, connect_to, window)?
                }
                _ => Carrier::Tcp,
            };
            Ok(SetUp {
                carrier,
                reason,
                connect_to,
                ring: None,
                listener,
                eager: receiver.hello.eager_hello,
            })
        };
        let attempt = match plan.carrier {
            CarrierKind::Ring => {
                // Both ends hold the ring they shared last: it carries this
                // channel too.
                let kept = match (&sender.kept_ring, &receiver.kept_ring) {
                    (Some(a), Some(b)) if Arc::ptr_eq(a, b) => Some(a),
                    _ => None,
                };
                ring::set_up(&self.rings, name, window, plan.reason.clone(), kept)
            }
            kind => socket(kind, plan.reason.clone()),
        };
        match attempt {
            Ok(set_up) => Ok(set_up),
            Err(reason) if plan.insisted || plan.carrier == CarrierKind::Tcp => Err(format!(
                "transport {} failed: {reason}",
                plan.carrier.transport()
            )),
            Err(reason) => {
                let transport = plan.carrier.transport();
                warn!(channel = %name, id, %reason, %transport, "not set up: plain TCP");
                socket(
                    CarrierKind::Tcp,
                    format!("{transport} could not be set up ({reason})"),
                )
            }
        }
    }

    fn record(&self, handle: &SpliceHandle) -> Option<ChannelRecord> {
        self.datapath.record(handle)
    }

    fn release(&self, handle: &SpliceHandle) {
        self.datapath.remove(handle);
    }

    fn sender_came(&self, name: &str) {
        self.rings.sender_came(name);
    }

    fn forget_workflow(&self, name: &str) {
        self.rings.forget_workflow(name);
    }
}

/// Where a local sender connects to its receiver: the receiver's listener,
/// or the agent's (bound to every address) as the sender reaches the agent;
/// for a receiver that takes its listener at pairing, one the agent opens
/// now, to hand over.
fn data_address(
    sender: &LocalEnd,
    receiver: &LocalEnd,
) -> Result<(Option<SocketAddr>, Option<TcpListener>), String> {
    match receiver.hello.listen {
        Some(listen) if listen.ip().is_unspecified() => {
            Ok((Some(SocketAddr::new(sender.reach, listen.port())), None))
        }
        Some(listen) => Ok((Some(listen), None)),
        None if receiver.hello.listener_at_pairing => {
            let listener = open_loopback_listener().map_err(|err| listener_failed(&err))?;
            let listen = listener
                .local_addr()
                .map_err(|err| format!("reading the data listener's address: {err}"))?;
            Ok((Some(listen), Some(listener)))
        }
        None => Ok((None, None)),
    }
}

/// What a receiver and its sender hear when the agent cannot open the
/// receiver's listener.
pub fn listener_failed(err: &std::io::Error) -> String {
    format!(
        "the agent could not open a data listener on loopback ({err}); if the node's ephemeral \
         ports are used up, widen net.ipv4.ip_local_port_range or let connections in TIME_WAIT \
         age out, or use clients that take a ring (shm needs no port)"
    )
}

/// A listener on loopback in the agent's namespace, for a receiver on the
/// Unix socket: only the agent (connecting for a sender on the Unix socket)
/// and clients of its loopback port reach it, never another host.
pub fn open_loopback_listener() -> std::io::Result<TcpListener> {
    TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
}

/// Whether the agent may connect to `addr`, an address a client named: only
/// if it belongs to the agent's own network namespace (loopback, or an
/// address of one of its interfaces). A client elsewhere (another
/// namespace, a function without network) would otherwise reach, through
/// the agent, hosts its own namespace cannot.
pub fn check_own_address(addr: SocketAddr, what: &str) -> Result<(), String> {
    // Binding succeeds only for the namespace's own addresses
    // (net.ipv4.ip_nonlocal_bind off, the default).
    if addr.ip().is_loopback() || std::net::UdpSocket::bind((addr.ip(), 0)).is_ok() {
        return Ok(());
    }
    Err(format!(
        "{what} {addr} is not an address of the agent's network namespace, and the agent connects only there for its clients (it would reach another host for them); connect that end to the agent's TCP port from its own namespace instead"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use floki_proto::control::Role;

    fn hello(role: Role, shm: bool, transport: Option<Transport>) -> Hello {
        Hello {
            channel: "c".into(),
            role,
            netns_cookie: None,
            listen: None,
            window: None,
            listener_at_pairing: false,
            stream: None,
            shm,
            transport,
            live: false,
            store: false,
            secret: None,
            kept_ring: false,
            kept_link: false,
            key_ahead: false,
            holds_link: false,
            eager_hello: false,
            unstarted_link: false,
            run: None,
        }
    }

    fn pick(
        send: (bool, Option<Transport>),
        recv: (bool, Option<Transport>),
        ebpf: bool,
    ) -> Result<Transport, String> {
        let (sender, receiver) = (
            hello(Role::Send, send.0, send.1),
            hello(Role::Recv, recv.0, recv.1),
        );
        plan(
            Placement::SameNode {
                sender: &sender,
                receiver: &receiver,
            },
            ebpf,
        )
        .map(|plan| plan.carrier.transport())
    }

    #[test]
    fn shm_when_both_take_a_ring_else_splice_else_tcp() {
        assert_eq!(pick((true, None), (true, None), true), Ok(Transport::Shm));
        assert_eq!(pick((true, None), (true, None), false), Ok(Transport::Shm));
        assert_eq!(
            pick((true, None), (false, None), true),
            Ok(Transport::Splice)
        );
        assert_eq!(pick((false, None), (true, None), false), Ok(Transport::Tcp));
    }

    #[test]
    fn an_end_may_insist_and_is_refused_what_cannot_be() {
        let splice = Some(Transport::Splice);
        let shm = Some(Transport::Shm);
        let tcp = Some(Transport::Tcp);
        assert_eq!(
            pick((true, splice), (true, None), true),
            Ok(Transport::Splice)
        );
        assert_eq!(pick((true, None), (true, tcp), true), Ok(Transport::Tcp));
        assert!(
            pick((true, splice), (true, None), false)
                .unwrap_err()
                .contains("eBPF")
        );
        assert!(
            pick((true, shm), (false, None), true)
                .unwrap_err()
                .contains("receiver")
        );
        assert!(
            pick((true, shm), (true, tcp), true)
                .unwrap_err()
                .contains("insists")
        );
    }

    #[test]
    fn across_nodes_the_link_is_handed_on_the_unix_socket_else_relayed() {
        let end = hello(Role::Send, true, None);
        let cross = |unix| {
            plan(
                Placement::CrossNode {
                    end: &end,
                    unix,
                    peer_node: "b",
                },
                true,
            )
            .map(|plan| plan.carrier)
        };
        assert_eq!(cross(true), Ok(CarrierKind::LinkHanded));
        assert_eq!(cross(false), Ok(CarrierKind::LinkRelayed));
        let insisting = hello(Role::Send, true, Some(Transport::Shm));
        let refused = plan(
            Placement::CrossNode {
                end: &insisting,
                unix: true,
                peer_node: "b",
            },
            true,
        )
        .unwrap_err();
        assert!(refused.contains("node b"), "{refused}");
    }
}
