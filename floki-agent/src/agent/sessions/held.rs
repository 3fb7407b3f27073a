//! A kept connection whose function holds its stream's link across nodes
//! (docs/PROTOCOL.md, "Held links"), or the ring of its last stream on
//! this node ("Held rings": only its `held` request is this module's).
//! Between requests the function may carry the stream over that link
//! without asking this agent, and tell it afterwards (`held`); a
//! consumer's link stays out of this agent's watch until the consumer asks
//! for something else or goes, and the consumer is told once when its
//! stream starts on another link instead.

use floki_proto::control::{AgentMessage, ClientRequest, HeldReport, Refusal, Role, write_message};

use crate::agent::transport::RingFile;

use super::{
    HeldLink, Kept, KeptRingEnd,
    handshake::{self, refuse},
};
use crate::agent::{
    Agent,
    channels::{HeldStream, HeldVia, Refused},
};
use crate::workflow::StreamId;
use tokio::sync::broadcast::error::RecvError;
use tracing::info;

/// The next request on a kept connection other than `held` (those are
/// filed as they come); `None` once the client hung up (or, for one whose
/// consumer holds no link, stayed idle too long). A consumer's held link is
/// given back to this agent's watch when the connection ends.
pub async fn next_request(
    next: &mut Kept,
    agent: &Agent,
    from: &str,
) -> Option<Result<ClientRequest, Refused>> {
    // A consumer holding its stream's link is told, once, when the stream
    // starts on another link.
    let mut watching = next
        .link
        .as_ref()
        .and_then(|link| link.lent_stream().cloned());
    let mut forgotten = agent.links.forgotten();
    // A receiver that kept its ring is told, once, when the ring is
    // withdrawn while it waits on it (its stream's sender came here).
    let mut ring_watched = next
        .ring
        .as_ref()
        .filter(|ring| ring.role == Role::Recv)
        .map(|ring| ring.file.clone());
    loop {
        let held = next.link.as_ref().and_then(HeldLink::held_stream).cloned();
        let lent = next.link.as_ref().and_then(HeldLink::lent_stream).is_some();
        let request = tokio::select! {
            request = next_on(next, lent) => request,
            () = started_untaken(agent, watching.as_ref()) => {
                watching = None;
                if write_message(&mut next.stream, &AgentMessage::StartedElsewhere).await.is_ok() {
                    continue;
                }
                None
            }
            () = withdrawn_while_waiting(ring_watched.as_deref()) => {
                ring_watched = None;
                if write_message(&mut next.stream, &AgentMessage::StartedElsewhere).await.is_ok() {
                    continue;
                }
                None
            }
            deleted = forgotten.recv(), if held.is_some() => {
                let ours = held.as_ref().is_some_and(|stream| {
                    deleted.as_ref().is_err_and(|lag| matches!(lag, RecvError::Lagged(_)))
                        || deleted.as_deref().is_ok_and(|name| name == stream.workflow)
                });
                if !ours {
                    continue;
                }
                // Closed with this agent's descriptor, not watched again:
                // the function finds its connection closed and lets go.
                info!(stream = %held.as_ref().map(ToString::to_string).unwrap_or_default(),
                      "a held link's workflow was deleted; closed");
                next.link = None;
                return None;
            }
        };
        match request {
            Some(Ok(ClientRequest::GiveBack { .. })) => {
                watching = None;
                next.link = next.link.take().and_then(|link| link.release(agent));
                continue;
            }
            Some(Ok(ClientRequest::Held { held })) => {
                let recorded = match (&next.link, &next.ring) {
                    (Some(link), _) => link.record(agent, held),
                    (None, Some(ring)) => {
                        ring.record(agent, held);
                        true
                    }
                    (None, None) => false,
                };
                if recorded {
                    continue;
                }
                let message =
                    "`held` on a connection that holds no link or ring; open the stream with a hello"
                        .to_owned();
                refuse(agent, &mut next.stream, from, Refusal::BadRequest, message).await;
            }
            Some(other) => return Some(other),
            None => {}
        }
        // Gone, idle or refused: a link the consumer held is watched here
        // again.
        if let Some(held) = next.link.take() {
            held.release(agent);
        }
        return None;
    }
}

/// The connection's next request: without an idle limit while its
/// consumer holds a link (see [`handshake::next_request_holding`]). A
/// producer's connection keeps its limit: closing it while the producer
/// streams over its link takes nothing from the stream.
async fn next_on(next: &mut Kept, lent: bool) -> Option<Result<ClientRequest, Refused>> {
    if lent {
        handshake::next_request_holding(&mut next.stream, &mut next.reader).await
    } else {
        handshake::next_request(&mut next.stream, &mut next.reader).await
    }
}

/// Returns once `ring` is withdrawn while its receiver waits on it; never
/// without a ring.
async fn withdrawn_while_waiting(ring: Option<&RingFile>) {
    match ring {
        Some(ring) => ring.withdrawn_while_waiting().await,
        None => std::future::pending().await,
    }
}

/// Returns once `stream` started on a link no consumer took; never without
/// a stream.
async fn started_untaken(agent: &Agent, stream: Option<&StreamId>) {
    match stream {
        Some(stream) => agent.links.started_untaken(stream).await,
        None => std::future::pending().await,
    }
}

impl KeptRingEnd {
    /// Files the stream two functions on this node carried over the ring
    /// they kept, without asking (docs/PROTOCOL.md, "Held rings"): the
    /// receiver's report is the stream's (its verdict decides it); a
    /// sender reports only a failure (its receiver may never tell), and a
    /// success it reports anyway is not filed twice.
    fn record(&self, agent: &Agent, held: HeldReport) {
        if self.role == Role::Send && held.ok {
            return;
        }
        agent.channels.record_held(HeldStream {
            name: self.file.last_channel(),
            role: self.role,
            peer_node: None,
            via: HeldVia::Ring,
            ok: held.ok,
            bytes: held.bytes,
            error: held.error,
        });
    }
}

impl HeldLink {
    /// The link a consumer held back among the prepared links, watched by
    /// this agent again (its next start may already be waiting); what the
    /// connection keeps of it: which link it is.
    pub(super) fn release(self, agent: &Agent) -> Option<Self> {
        match self {
            Self::Lent(holding) => match holding.link.unpark() {
                Ok(prepared) => {
                    let id = prepared.id;
                    agent.links.rearm(holding.stream, prepared);
                    Some(Self::Received(id))
                }
                Err(_) => None,
            },
            other => Some(other),
        }
    }

    /// The stream of a link the function holds (either end's).
    fn held_stream(&self) -> Option<&StreamId> {
        match self {
            Self::Sent(holding) | Self::Lent(holding) => Some(&holding.stream),
            Self::Received(_) => None,
        }
    }

    /// The stream of a link a consumer holds.
    fn lent_stream(&self) -> Option<&StreamId> {
        match self {
            Self::Lent(holding) => Some(&holding.stream),
            _ => None,
        }
    }

    /// Files the stream a function carried over this link without asking
    /// (its `held` request) with the channel core, as this node's end of it.
    fn record(&self, agent: &Agent, held: HeldReport) -> bool {
        let (holding, role) = match self {
            Self::Sent(holding) => (holding, Role::Send),
            Self::Lent(holding) => (holding, Role::Recv),
            Self::Received(_) => return false,
        };
        agent.channels.record_held(HeldStream {
            name: holding.stream.to_string(),
            role,
            peer_node: Some(holding.peer_node.clone()),
            via: HeldVia::Link,
            ok: held.ok,
            bytes: held.bytes,
            error: held.error,
        });
        true
    }
}
