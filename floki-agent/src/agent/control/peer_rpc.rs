//! What other agents ask this one (`FLKA` on the agents' own port, after
//! both proved the cluster secret): a link (keep-alives and workflows
//! installed after a restart), apply's two phases and their answers,
//! deletes, and the prepared connections of cross-node streams.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use floki_proto::VERSION;
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::timeout,
};
use tracing::{debug, info, warn};

use super::{
    peers::{
        PING_EVERY, auth,
        protocol::{self, PEER_MAGIC, PeerAnswer, PeerRequest, read_request},
    },
    workflows::Applied,
};
use crate::{
    agent::{Agent, backoff::AcceptBackoff},
    workflow::Workflow,
};

/// How long another agent has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A link that stays silent this long is gone (its caller pings every
/// [`PING_EVERY`]).
const LINK_SILENCE: Duration = Duration::from_secs(3 * PING_EVERY.as_secs());

/// Callers on the agents' port that have not yet proved the cluster secret
/// (each has [`auth::AUTH_TIMEOUT`]): more are closed at once.
const MAX_UNPROVEN: usize = 256;

/// Serves the agents' port until aborted: a task per connection, at most
/// [`MAX_UNPROVEN`] of them still authenticating, accept errors backed off.
pub async fn accept(listener: TcpListener, agent: Arc<Agent>) {
    let unproven = Arc::new(Semaphore::new(MAX_UNPROVEN));
    let mut backoff = AcceptBackoff::new("agents");
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                backoff.succeeded();
                let Ok(permit) = unproven.clone().try_acquire_owned() else {
                    agent.metrics.peer_refused();
                    continue;
                };
                tokio::spawn(serve(stream, from, agent.clone(), permit));
            }
            Err(err) => backoff.failed(&err).await,
        }
    }
}

/// Serves a connection to the agents' port: the preamble, the caller's
/// proof of the cluster secret, then its request. A caller that does not
/// prove it gets no answer at all.
async fn serve(
    mut stream: TcpStream,
    from: SocketAddr,
    agent: Arc<Agent>,
    unproven: OwnedSemaphorePermit,
) {
    stream.set_nodelay(true).ok();
    let Some(secret) = agent.peers.secret() else {
        return;
    };
    let mut preamble = [0u8; 6];
    let preamble_ok = matches!(
        timeout(auth::AUTH_TIMEOUT, stream.read_exact(&mut preamble)).await,
        Ok(Ok(_))
    ) && preamble[..4] == PEER_MAGIC
        && u16::from_be_bytes([preamble[4], preamble[5]]) == VERSION;
    if !preamble_ok {
        return debug!(%from, "not an agent of this version on the agents' port; closed");
    }
    let session = match auth::check_caller(&mut stream, secret).await {
        Ok(session) => session,
        Err(err) => {
            agent.metrics.peer_refused();
            return debug!(%from, %err, "a caller on the agents' port did not authenticate; closed");
        }
    };
    drop(unproven);
    let request = match timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(Some(request))) => request,
        _ => return debug!(%from, "peer connection without a request"),
    };
    match request {
        PeerRequest::Hello { node } => {
            debug!(%from, peer = %node, "peer link opened");
            let hello = PeerAnswer::Hello {
                node: agent.node.clone(),
            };
            if protocol::write(&mut stream, &hello).await.is_err() {
                return;
            }
            // The link: installs and keep-alives until it closes or falls
            // silent.
            while let Ok(Ok(Some(request))) = timeout(LINK_SILENCE, read_request(&mut stream)).await
            {
                let answer = answer(&agent, request);
                if protocol::write(&mut stream, &answer).await.is_err() {
                    return;
                }
            }
        }
        PeerRequest::OpenStream { stream: id } => {
            // Answer before handing the connection over.
            let staged = agent.workflows.get(&id.workflow).is_some();
            let answer = if staged {
                PeerAnswer::Ok
            } else {
                PeerAnswer::Error {
                    message: format!("no workflow {:?} on node {}", id.workflow, agent.node),
                }
            };
            if protocol::write(&mut stream, &answer).await.is_err() || !staged {
                return;
            }
            // The key is the session's: only the two agents of this
            // connection know it.
            let key = session.stream_key(&id);
            if let Err(err) = agent.links.accept(id, key, stream) {
                warn!(%from, %err, "refused a stream connection");
            }
        }
        other => {
            let answer = answer(&agent, other);
            let _ = protocol::write(&mut stream, &answer).await;
        }
    }
}

/// Applies one request from another agent.
fn answer(agent: &Arc<Agent>, request: PeerRequest) -> PeerAnswer {
    match request {
        PeerRequest::Ping => PeerAnswer::Pong,
        PeerRequest::Prepare { yaml, token } => {
            match Workflow::parse(&yaml, &agent.peers.known_nodes()) {
                Err(errors) => PeerAnswer::Invalid { errors: errors.0 },
                Ok(workflow) => match agent.workflows.prepare(Applied {
                    workflow,
                    yaml,
                    token,
                }) {
                    Ok(()) => PeerAnswer::Ok,
                    Err(message) => PeerAnswer::Error { message },
                },
            }
        }
        PeerRequest::Commit { name } => {
            if agent.workflows.commit(&name) {
                agent.links.refresh();
                info!(workflow = %name, "workflow applied");
                PeerAnswer::Ok
            } else {
                PeerAnswer::Error {
                    message: format!("workflow {name:?} was not prepared here (prepare expired?)"),
                }
            }
        }
        PeerRequest::Abort { name } => {
            agent.workflows.abort(&name);
            PeerAnswer::Ok
        }
        PeerRequest::Delete { name } => {
            agent.workflows.delete(&name);
            agent.forget_workflow(&name);
            agent.links.refresh();
            let store = agent.store.clone();
            let workflow = name.clone();
            tokio::spawn(async move { store.delete_workflow(&workflow).await });
            info!(workflow = %name, "workflow deleted");
            PeerAnswer::Ok
        }
        PeerRequest::Install { yaml, token } => install(agent, yaml, token),
        PeerRequest::Hello { .. } | PeerRequest::OpenStream { .. } => PeerAnswer::Error {
            message: "this request opens its own connection".into(),
        },
    }
}

/// Applies a workflow another agent already committed.
fn install(agent: &Arc<Agent>, yaml: String, token: String) -> PeerAnswer {
    match Workflow::parse(&yaml, &agent.peers.known_nodes()) {
        Ok(workflow) => {
            let name = workflow.name.clone();
            if agent.workflows.get(&name).is_none() {
                info!(workflow = %name, "workflow installed from a peer");
            }
            agent.workflows.install(Applied {
                workflow,
                yaml,
                token,
            });
            agent.links.refresh();
            PeerAnswer::Ok
        }
        Err(errors) => PeerAnswer::Invalid { errors: errors.0 },
    }
}
