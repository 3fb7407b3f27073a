//! Where sessions meet the store: a producer whose consumer is late may have
//! its stream stored ([`storable`]); a consumer that comes later is served
//! what was stored ([`serve_stored`]); a stream pushed ahead to this node
//! whose consumer has not started is taken in ([`push_ahead`]). The store's
//! own ends are clients of the agent's Unix socket, and only the agent's
//! process may say it is one ([`from_this_agent`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use floki_proto::control::{ControlStream, Hello, Refusal, Role, StreamRef};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::either::Either;
use tracing::debug;

use super::{
    Kept,
    handshake::refuse_quietly,
    local::{self, Local},
};
use crate::{
    agent::{
        Agent,
        control::{links::Start, workflows::Resolved},
        store::ends::{self, Meeting},
    },
    workflow::{Edge, StreamId},
};

/// Replays so far, to name each replay's channel apart.
static REPLAYS: AtomicU64 = AtomicU64::new(0);

/// Whether the client is this agent's own process (its store), on the Unix
/// socket: the only one allowed to be a store end.
pub fn from_this_agent(control: &ControlStream) -> bool {
    let Either::Right(unix) = control else {
        return false;
    };
    let pid = unix.peer_cred().ok().and_then(|cred| cred.pid());
    pid.and_then(|pid| u32::try_from(pid).ok()) == Some(std::process::id())
}

/// The edge of a workflow stream, and the producer's reference to it.
pub struct EdgeOf<'a> {
    /// The stream's edge.
    pub edge: &'a Edge,
    /// How the producer named the stream.
    pub producer: &'a StreamRef,
}

/// How the store would take in the stream of producer `hello` (on channel
/// `hello.channel`), unless it must wait for its consumer: `--live`, an edge
/// with `store: false`, or the store itself.
pub fn storable(
    agent: &Agent,
    hello: &Hello,
    window: Option<u64>,
    edge: Option<EdgeOf<'_>>,
) -> Option<Meeting> {
    if hello.role != Role::Send || hello.live || hello.store {
        return None;
    }
    let meeting = Meeting {
        agent: agent.socket.clone(),
        name: hello.channel.clone(),
        stream: None,
        workflow: None,
        run: hello.run.clone(),
        retain: agent.store.config().retain,
        window,
    };
    match edge {
        None => Some(meeting),
        Some(EdgeOf { edge, .. }) if !edge.store => None,
        Some(EdgeOf { edge, producer }) => Some(Meeting {
            // The store stands in for the consumer.
            stream: Some(StreamRef {
                function: producer.peer.clone(),
                peer: producer.function.clone(),
                ..producer.clone()
            }),
            workflow: Some(producer.workflow.clone()),
            retain: edge.retain.unwrap_or(Duration::MAX),
            ..meeting
        }),
    }
}

/// How the store of this node would take in the stream of a producer whose
/// consumer is on another node, if that node cannot be reached.
pub fn storable_here(agent: &Agent, hello: &Hello, resolved: &Resolved) -> Option<Meeting> {
    let producer = hello.stream.as_ref()?;
    let mut named = hello.clone();
    named.channel = resolved.stream.to_string();
    let edge = EdgeOf {
        edge: &resolved.edge,
        producer,
    };
    storable(agent, &named, Some(resolved.edge.buffer), Some(edge))
}

/// The store's end for a consumer on another node, on the producer's node
/// (that node was unreachable): joins the stream's channel here.
pub async fn serve_store_for_unreachable(
    mut control: ControlStream,
    mut hello: Hello,
    consumer: &StreamRef,
    agent: &Agent,
) {
    // The same stream, seen from its producer (which runs here).
    let resolved = agent.workflows.resolve(
        &agent.node,
        &consumer.workflow,
        &consumer.token,
        &consumer.edge,
        &consumer.peer,
        &consumer.function,
        Role::Send,
    );
    let Ok(resolved) = resolved else {
        let message = "no such workflow stream from a producer on this node".to_owned();
        return refuse_quietly(agent, &mut control, Refusal::NotAllowed, message).await;
    };
    hello.channel = resolved.stream.to_string();
    let here = Local {
        window: Some(resolved.edge.buffer),
        ..Local::default()
    };
    // Its connection closes after `done` (no next request).
    local::serve(Kept::new(control), hello, here, agent).await;
}

/// Forwards, for as long as the agent runs, the streams stored here for
/// consumers on other nodes (their node was unreachable when the producer
/// ran) as soon as their link is prepared again: over it they go into the
/// consumer's agent (its store, or the consumer itself), and then leave
/// this node's store.
pub async fn forward_stored(agent: Arc<Agent>) {
    let forwarding = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        for (stream, token) in outgoing_stored(&agent) {
            let name = stream.to_string();
            let Some(stored) = agent.store.get(&name) else {
                continue;
            };
            if !agent.links.ready(&stream, true)
                || !forwarding.lock().expect("lock").insert(name.clone())
            {
                continue;
            }
            let producer = StreamRef {
                workflow: stream.workflow.clone(),
                token,
                edge: stream.edge.clone(),
                function: stream.producer.clone(),
                peer: stream.consumer.clone(),
            };
            let (agent, forwarding) = (agent.clone(), forwarding.clone());
            tokio::spawn(async move {
                ends::forward(agent.store.clone(), stored, agent.socket.clone(), producer).await;
                forwarding.lock().expect("lock").remove(&name);
            });
        }
    }
}

/// Complete streams stored here whose consumer runs on another node, with
/// their workflow's token.
fn outgoing_stored(agent: &Agent) -> Vec<(StreamId, String)> {
    let view = agent.store.view();
    let mut found = Vec::new();
    for stored in view.streams.iter().filter(|s| s.complete) {
        let Some(applied) = stored
            .workflow
            .as_deref()
            .and_then(|w| agent.workflows.get(w))
        else {
            continue;
        };
        let workflow = &applied.workflow;
        let here = |function: &str| workflow.node_of(function) == Some(agent.node.as_str());
        let stream = workflow
            .streams()
            .map(|(_, stream)| stream)
            .find(|stream| stream.to_string() == stored.name);
        if let Some(stream) = stream
            && here(&stream.producer)
            && !here(&stream.consumer)
        {
            found.push((stream, applied.token.clone()));
        }
    }
    found
}

/// Serves consumer `hello` of channel `name` from the store if the store
/// has its stream (and no live producer waits for it), or refuses it if the
/// stream was lost; otherwise gives the session back.
pub async fn serve_stored(
    mut control: ControlStream,
    mut hello: Hello,
    name: &str,
    window: Option<u64>,
    agent: &Agent,
) -> Option<(ControlStream, Hello)> {
    if hello.role != Role::Recv || hello.store || hello.live {
        return Some((control, hello));
    }
    if agent.channels.waiting_role(name) == Some(Role::Send) {
        return Some((control, hello));
    }
    let run = hello.run.as_deref();
    if let Some(message) = agent.store.lost(name, run) {
        refuse_quietly(agent, &mut control, Refusal::StreamLost, message).await;
        return None;
    }
    let Some(stored) = agent.store.get_for(name, run) else {
        return Some((control, hello));
    };
    let channel = ends::replay_channel(name, REPLAYS.fetch_add(1, Ordering::Relaxed));
    debug!(%name, %channel, "a consumer served from the store");
    hello.channel = channel.clone();
    ends::replay(agent.store.clone(), stored, agent.socket.clone(), channel);
    let here = Local {
        window,
        ..Local::default()
    };
    // Its connection closes after `done` (no next request).
    local::serve(Kept::new(control), hello, here, agent).await;
    None
}

/// Takes into the store the streams pushed ahead to this node whose
/// consumer has not come within the grace period (for as long as the agent
/// runs).
pub async fn push_ahead(agent: Arc<Agent>) {
    let mut starts = agent.links.starts();
    loop {
        let start = match starts.recv().await {
            Ok(start) => start,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            tokio::time::sleep(agent.store.config().grace).await;
            let name = start.stream.to_string();
            if !agent.links.storable(&start) || agent.channels.is_open(&name) {
                return;
            }
            if let Some(meeting) = meeting_for_consumer(&agent, &start) {
                let (links, held) = (agent.links.clone(), agent.links.clone());
                let stream = start.stream.clone();
                let claim = move || links.claim_for_store(&start);
                let unclaim = move || held.release_held(&stream);
                ends::take_in_claimed(agent.store.clone(), meeting, claim, unclaim);
            }
        });
    }
}

/// How the store stands in for the consumer of a stream pushed ahead to
/// this node.
fn meeting_for_consumer(agent: &Agent, start: &Start) -> Option<Meeting> {
    let stream = &start.stream;
    let applied = agent.workflows.get(&stream.workflow)?;
    let edge = applied.workflow.edge(&stream.edge)?;
    if !edge.store {
        return None;
    }
    Some(Meeting {
        agent: agent.socket.clone(),
        name: stream.to_string(),
        stream: Some(StreamRef {
            workflow: stream.workflow.clone(),
            token: applied.token.clone(),
            edge: stream.edge.clone(),
            function: stream.consumer.clone(),
            peer: stream.producer.clone(),
        }),
        workflow: Some(stream.workflow.clone()),
        run: start.run.clone(),
        retain: edge.retain.unwrap_or(Duration::MAX),
        window: Some(edge.buffer),
    })
}
