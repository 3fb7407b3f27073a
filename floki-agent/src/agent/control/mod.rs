//! The control plane: what the agent knows and agrees on apart from any
//! one channel. Workflows and their two-phase apply, the other agents (peer
//! directory, links, the requests they make of this one), the links
//! prepared for cross-node streams, and what operators see (the admin
//! socket, status, metrics). It reads the channel core and subscribes to
//! its events; the core never calls it.

pub mod admin;
pub mod apply;
pub mod links;
pub mod metrics;
pub mod peer_rpc;
pub mod peers;
pub mod status;
pub mod workflows;
