//! The `shm` carrier: a ring of the channel's window in a memory file, and
//! the socket pair beside it. Each end gets the ring and one half of the
//! pair; the agent keeps a read-only map of the header, for status, and no
//! descriptor of the data path.

use std::os::fd::AsFd as _;

use floki_proto::ring::{self, RingObserver};

use crate::agent::channels::{Carrier, SetUp};

/// A ring of `window` bytes (rounded to a power of two) for two ends.
pub fn set_up(window: u64, reason: String) -> Result<SetUp, String> {
    let (memory, _) = ring::create(window).map_err(|err| format!("creating the ring: {err}"))?;
    let observer = RingObserver::new(&memory).map_err(|err| format!("mapping the ring: {err}"))?;
    let (a, b) = ring::socket_pair().map_err(|err| format!("creating the socket pair: {err}"))?;
    let second = memory
        .as_fd()
        .try_clone_to_owned()
        .map_err(|err| format!("duplicating the ring: {err}"))?;
    Ok(SetUp {
        carrier: Carrier::Ring(observer),
        reason,
        connect_to: None,
        rings: Some([(memory, a), (second, b)]),
        listener: None,
    })
}
