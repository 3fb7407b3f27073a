//! Floki: an eBPF-accelerated data-forwarding layer for serverless workflows.
//!
//! * [`client`]: the library functions use to send and receive a channel's
//!   stream (tokio `AsyncWrite` / `AsyncRead`).
//! * [`agent`]: the node agent behind `floki-agent run`.
//! * [`protocol`]: the wire format both speak (see docs/PROTOCOL.md).
//! * [`status`]: what the agent reports on its admin socket.
//! * [`workflow`]: workflow specs: functions on nodes, edges between them.

pub mod agent;
pub mod client;
pub mod protocol;
pub mod status;
pub mod workflow;
