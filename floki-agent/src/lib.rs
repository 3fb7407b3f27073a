//! Floki's node agent: the daemon behind `floki-agent run` and what the CLI
//! shares with it. The wire format is `floki-proto`; what functions link is
//! `floki-client`.
//!
//! * [`agent`]: the daemon: the kernel datapath, the channel core, the
//!   carriers, the sessions that adapt connections to the core, and the
//!   control plane (workflows, peers, status, metrics).
//! * [`status`]: what the agent reports on its admin socket.
//! * [`workflow`]: workflow specs: functions on nodes, edges between them.
#![deny(missing_docs)]

pub mod agent;
pub mod status;
pub mod workflow;
