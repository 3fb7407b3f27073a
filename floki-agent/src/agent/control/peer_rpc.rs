//! What other agents ask this one (`FLKA` on the channel port): a link
//! (keep-alives and workflows installed after a restart), apply's two
//! phases and their answers, deletes, and the prepared connections of
//! cross-node streams.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use floki_proto::control::write_message;
use tokio::{net::TcpStream, time::timeout};
use tracing::{debug, info, warn};

use super::{
    peers::protocol::{PeerAnswer, PeerRequest, read_request},
    workflows::Applied,
};
use crate::{agent::Agent, workflow::Workflow};

/// How long another agent has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves a connection from another agent (its preamble read).
pub async fn serve(mut stream: TcpStream, from: SocketAddr, agent: Arc<Agent>) {
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
            if write_message(&mut stream, &hello).await.is_err() {
                return;
            }
            // The link: installs and keep-alives until it closes.
            while let Ok(Some(request)) = read_request(&mut stream).await {
                let answer = answer(&agent, request);
                if write_message(&mut stream, &answer).await.is_err() {
                    return;
                }
            }
        }
        PeerRequest::OpenStream { stream: id, key } => {
            // Answer before handing the connection over.
            let staged = agent.workflows.get(&id.workflow).is_some();
            let answer = if staged {
                PeerAnswer::Ok
            } else {
                PeerAnswer::Error {
                    message: format!("no workflow {:?} on node {}", id.workflow, agent.node),
                }
            };
            if write_message(&mut stream, &answer).await.is_err() || !staged {
                return;
            }
            if let Err(err) = agent.links.accept(id, &key, stream) {
                warn!(%from, %err, "refused a stream connection");
            }
        }
        other => {
            let answer = answer(&agent, other);
            let _ = write_message(&mut stream, &answer).await;
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
            agent.links.forget(&name);
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
