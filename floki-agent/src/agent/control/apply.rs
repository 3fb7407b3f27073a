//! `floki-agent apply` and `delete`, coordinated by the agent the CLI talks
//! to: a workflow is prepared on every node that hosts one of its functions
//! (and on this one), and committed only if all of them accepted it; any
//! refusal aborts it everywhere, so nothing is half-applied.

use std::sync::Arc;

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use tracing::info;

use floki_client::error_chain as chain;

use super::{
    peers::protocol::{PeerAnswer, PeerRequest},
    workflows::Applied,
};
use crate::{
    agent::Agent,
    workflow::{SpecError, Workflow},
};

/// What an apply did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyOutcome {
    /// Workflow name.
    pub name: String,
    /// The token its channels must present.
    pub token: String,
    /// Nodes it was applied on.
    pub nodes: Vec<String>,
}

/// Why an apply or delete failed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyFailure {
    /// What happened.
    pub message: String,
    /// Spec problems, per field (prefixed with the node when a peer found them).
    pub errors: Vec<SpecError>,
}

impl ApplyFailure {
    fn message(message: String) -> Self {
        Self {
            message,
            errors: Vec::new(),
        }
    }
}

/// Applies `yaml` on every node of the workflow.
pub async fn apply(agent: &Arc<Agent>, yaml: &str) -> Result<ApplyOutcome, ApplyFailure> {
    let workflow =
        Workflow::parse(yaml, &agent.peers.known_nodes()).map_err(|errors| ApplyFailure {
            message: "the workflow spec is invalid; nothing was applied".into(),
            errors: errors.0,
        })?;
    let name = workflow.name.clone();
    // Re-applying the same spec keeps its token.
    let token = match agent.workflows.get(&name) {
        Some(existing) if existing.workflow == workflow => existing.token,
        _ => {
            let mut secret = [0u8; 16];
            rand::rng().fill_bytes(&mut secret);
            floki_proto::control::encode_key(&secret)
        }
    };
    let mut nodes: Vec<String> = workflow.nodes().into_iter().map(str::to_owned).collect();
    if !nodes.contains(&agent.node) {
        nodes.push(agent.node.clone());
    }
    let applied = Applied {
        workflow,
        yaml: yaml.to_owned(),
        token: token.clone(),
    };

    // Phase one: every node validates and holds it.
    let mut prepared = Vec::new();
    let mut failure = None;
    for node in &nodes {
        let result = if *node == agent.node {
            agent
                .workflows
                .prepare(applied.clone())
                .map_err(ApplyFailure::message)
        } else {
            let request = PeerRequest::Prepare {
                yaml: yaml.to_owned(),
                token: token.clone(),
            };
            match agent.peers.request(node, &request).await {
                Ok(PeerAnswer::Ok) => Ok(()),
                Ok(PeerAnswer::Invalid { errors }) => Err(ApplyFailure {
                    message: format!("node {node} refused the workflow; nothing was applied"),
                    errors: errors
                        .into_iter()
                        .map(|e| SpecError {
                            field: format!("{node}: {}", e.field),
                            reason: e.reason,
                        })
                        .collect(),
                }),
                Ok(PeerAnswer::Error { message }) => Err(ApplyFailure::message(format!(
                    "node {node} refused the workflow: {message}; nothing was applied"
                ))),
                Ok(other) => Err(ApplyFailure::message(format!(
                    "node {node} answered {other:?}"
                ))),
                Err(err) => Err(ApplyFailure::message(format!(
                    "{}; nothing was applied (is its agent running? see `floki-agent status` for peers)",
                    chain(&err)
                ))),
            }
        };
        match result {
            Ok(()) => prepared.push(node.clone()),
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    if let Some(failure) = failure {
        for node in &prepared {
            if *node == agent.node {
                agent.workflows.abort(&name);
            } else {
                let _ = agent
                    .peers
                    .request(node, &PeerRequest::Abort { name: name.clone() })
                    .await;
            }
        }
        return Err(failure);
    }

    // Phase two: apply everywhere.
    let mut failed = Vec::new();
    for node in &nodes {
        if *node == agent.node {
            agent.workflows.commit(&name);
        } else {
            match agent
                .peers
                .request(node, &PeerRequest::Commit { name: name.clone() })
                .await
            {
                Ok(PeerAnswer::Ok) => {}
                Ok(other) => failed.push(format!("{node}: {other:?}")),
                Err(err) => failed.push(chain(&err)),
            }
        }
    }
    agent.links.refresh();
    if !failed.is_empty() {
        return Err(ApplyFailure::message(format!(
            "workflow {name:?} was prepared everywhere but could not be committed on: {}; \
             the nodes resynchronise when their links come back, or apply again",
            failed.join("; ")
        )));
    }
    info!(workflow = %name, nodes = ?nodes, "workflow applied");
    Ok(ApplyOutcome { name, token, nodes })
}

/// Removes a workflow everywhere it was applied.
pub async fn delete(agent: &Arc<Agent>, name: &str) -> Result<ApplyOutcome, ApplyFailure> {
    let applied = agent.workflows.get(name).ok_or_else(|| {
        ApplyFailure::message(format!(
            "no workflow {name:?} on this node; run delete where it was applied (see `floki-agent status`)"
        ))
    })?;
    let mut nodes: Vec<String> = applied
        .workflow
        .nodes()
        .into_iter()
        .map(str::to_owned)
        .collect();
    if !nodes.contains(&agent.node) {
        nodes.push(agent.node.clone());
    }
    let mut failed = Vec::new();
    for node in &nodes {
        if *node == agent.node {
            continue;
        }
        match agent
            .peers
            .request(
                node,
                &PeerRequest::Delete {
                    name: name.to_owned(),
                },
            )
            .await
        {
            Ok(PeerAnswer::Ok) => {}
            Ok(other) => failed.push(format!("{node}: {other:?}")),
            Err(err) => failed.push(chain(&err)),
        }
    }
    agent.workflows.delete(name);
    agent.links.forget(name);
    agent.links.refresh();
    if !failed.is_empty() {
        return Err(ApplyFailure::message(format!(
            "workflow {name:?} deleted here but not on: {}; run delete again once they are back",
            failed.join("; ")
        )));
    }
    info!(workflow = %name, "workflow deleted");
    Ok(ApplyOutcome {
        name: name.to_owned(),
        token: String::new(),
        nodes,
    })
}
