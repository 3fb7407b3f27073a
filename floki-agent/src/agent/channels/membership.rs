//! An end's membership of a channel: what `join` returns. The end reports
//! through it, and leaves by dropping it: whatever way a session ends (an
//! error, a hang-up, a panic), the channel hears that its end is gone.

use std::sync::Arc;

use floki_proto::control::{ClientReport, Role};

use super::Channels;
use crate::agent::datapath::SpliceHandle;

/// One end's place in one channel, matched by the channel's id (never by
/// its name, which a later channel may reuse).
pub struct Membership {
    channels: Arc<Channels>,
    id: u32,
    role: Role,
}

impl Membership {
    pub(super) fn new(channels: Arc<Channels>, id: u32, role: Role) -> Self {
        Self { channels, id, role }
    }

    /// The channel's agent-wide id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Records what the end reported (progress, or its final word).
    pub fn report(&self, report: ClientReport) {
        self.channels.report(self.id, self.role, report);
    }

    /// Leaves a cross-node channel before its stream began on this node
    /// (a consumer gave back, unread, the link it was lent): the channel
    /// goes without a trace in the history, as a waiting end's does.
    pub fn withdraw(self) {
        self.channels.withdraw(self.id, self.role);
    }

    /// Records the kernel's part in a relayed cross-node stream (released
    /// with the channel, or at once if it is already over).
    pub fn attach_splice(&self, handle: SpliceHandle) {
        self.channels.attach_splice(self.id, handle);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.channels.leave(self.id, self.role);
    }
}
