//! The `splice` carrier: the two ends' own TCP connection, whose sockets
//! the kernel programs put into the socket map when they connect, so that
//! every write of one lands in the other's receive queue. Setting it up is
//! registering the two endpoints the sockets will be.

use std::net::SocketAddr;

use crate::agent::{
    channels::{Carrier, LocalEnd},
    datapath::Datapath,
};

/// Registers channel `id`'s endpoints: the sender's socket connecting to
/// `connect_to` from its namespace, and the socket the receiver's listener
/// accepts from it in its own. The kernel holds the sender to `window`
/// from its first byte: an eager sender writes before the receiver's first
/// credit.
pub fn set_up(
    datapath: &Datapath,
    id: u32,
    name: &str,
    (sender, receiver): (&LocalEnd, &LocalEnd),
    connect_to: Option<SocketAddr>,
    window: u64,
) -> Result<Carrier, String> {
    let addr = connect_to.ok_or("the receiver has no data address")?;
    datapath
        .install(
            id,
            name,
            (sender.hello.netns_cookie, receiver.hello.netns_cookie),
            addr,
            window,
        )
        .map(Carrier::Splice)
}
