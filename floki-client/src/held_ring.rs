//! Held rings: a warm pair of functions on one node that kept the ring of
//! a stream sets the stream's next use up over it without asking the agent
//! (docs/PROTOCOL.md, "Held rings"). The receiver says in the ring that it
//! waits and sleeps on it; the sender takes the wait, rewinds the ring and
//! streams. Either end that finds the other not there asks the agent as
//! before, and the agent, asked by the stream's sender, withdraws the ring
//! and tells a receiver waiting on it (`started_elsewhere`), which asks
//! the agent too. The receiver
//! tells the agent afterwards (`held`), as over a held link; the sender
//! only of a failure.

use std::task::Poll;

use floki_proto::{
    control::{AgentMessage, ControlStream, Role, Transport, read_message},
    ring::{Awaited, HeldWait, HubSlot, KeptRing},
};

use crate::{ChannelOptions, ClientError};

/// Whether an end may set its stream up over the ring it kept: a
/// function's end (not the store's) on the connection that last carried
/// the same stream, in the same role, over a ring, with no other transport
/// insisted on.
pub(crate) fn eligible(
    ring: Option<&KeptRing>,
    same_stream: bool,
    opts: &ChannelOptions,
    role: Role,
) -> bool {
    same_stream
        && !opts.store
        && matches!(opts.transport, None | Some(Transport::Shm))
        && ring.is_some_and(|ring| ring.kept_by_sender() == (role == Role::Send))
}

/// How a receiver's wait on its held ring ended.
pub(crate) enum Waited {
    /// Its sender started the stream over the ring.
    Started,
    /// Ask the agent on this connection; `keep_ring`: the ring may still
    /// be paired over (its sender lives).
    AskAgent { keep_ring: bool },
    /// The agent closed the connection (or spoke on it): ask on a new one.
    AgentGone,
}

/// Receiver: waits on `ring` for its sender's start, within the pair
/// timeout, while watching `control` for the agent.
pub(crate) async fn wait_for_start(
    ring: &KeptRing,
    control: &mut ControlStream,
    opts: &ChannelOptions,
) -> Result<Waited, ClientError> {
    if !ring.announce_wait() {
        return Ok(Waited::AskAgent { keep_ring: true });
    }
    let waiter = ring.waiter();
    let mut slot = HubSlot::default();
    let start = std::future::poll_fn(|cx| match waiter.poll(Awaited::Start, &mut slot, cx) {
        Poll::Ready(result) => Poll::Ready(result.is_ok()),
        Poll::Pending => Poll::Pending,
    });
    let bounded = async {
        match opts.pair_timeout {
            Some(limit) => tokio::time::timeout(limit, start).await.ok(),
            None => Some(start.await),
        }
    };
    // What ended the wait: the word moved (`Some(true)`), the sender's
    // process died (`Some(false)`), the pair timeout (`None`), or the agent.
    let woke = tokio::select! {
        woke = bounded => Some(woke),
        () = crate::speaks::agent_speaks(control) => None,
    };
    drop(slot);
    // The agent withdrew the ring (its sender asked it) and said so; or it
    // closed the connection.
    let told = match woke {
        None => matches!(
            read_message(control).await,
            Ok(Some(AgentMessage::StartedElsewhere))
        ),
        Some(_) => false,
    };
    Ok(match (ring.end_wait(), woke) {
        (HeldWait::Started, _) => Waited::Started,
        (HeldWait::AskAgent, None) if told => Waited::AskAgent { keep_ring: true },
        (HeldWait::AskAgent, None) => Waited::AgentGone,
        (HeldWait::AskAgent, Some(None)) => {
            return Err(ClientError::PairTimeout {
                channel: opts.channel.clone(),
                peer: Role::Send,
                timeout: opts.pair_timeout.unwrap_or_default(),
            });
        }
        (HeldWait::AskAgent, Some(Some(alive))) => Waited::AskAgent { keep_ring: alive },
    })
}
