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
    prepare_everywhere(agent, &nodes, &applied).await?;
    commit_everywhere(agent, &nodes, &name).await?;
    info!(workflow = %name, nodes = ?nodes, "workflow applied");
    Ok(ApplyOutcome { name, token, nodes })
}

/// Phase one: every node validates and holds the workflow; if one refuses,
/// those that held it forget it.
async fn prepare_everywhere(
    agent: &Arc<Agent>,
    nodes: &[String],
    applied: &Applied,
) -> Result<(), ApplyFailure> {
    let name = &applied.workflow.name;
    let mut prepared: Vec<&String> = Vec::new();
    for node in nodes {
        let result = if *node == agent.node {
            agent
                .workflows
                .prepare(applied.clone())
                .map_err(ApplyFailure::message)
        } else {
            prepare_on(agent, node, applied).await
        };
        if let Err(failure) = result {
            for node in prepared {
                if *node == agent.node {
                    agent.workflows.abort(name);
                } else {
                    let abort = PeerRequest::Abort { name: name.clone() };
                    let _ = agent.peers.request(node, &abort).await;
                }
            }
            return Err(failure);
        }
        prepared.push(node);
    }
    Ok(())
}

/// Asks peer `node` to prepare the workflow.
async fn prepare_on(agent: &Agent, node: &str, applied: &Applied) -> Result<(), ApplyFailure> {
    let request = PeerRequest::Prepare {
        yaml: applied.yaml.clone(),
        token: applied.token.clone(),
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
}

/// Phase two: every node applies what it prepared.
async fn commit_everywhere(
    agent: &Arc<Agent>,
    nodes: &[String],
    name: &str,
) -> Result<(), ApplyFailure> {
    let mut failed = Vec::new();
    for node in nodes {
        if *node == agent.node {
            agent.workflows.commit(name);
            continue;
        }
        let commit = PeerRequest::Commit {
            name: name.to_owned(),
        };
        match agent.peers.request(node, &commit).await {
            Ok(PeerAnswer::Ok) => {}
            Ok(other) => failed.push(format!("{node}: {other:?}")),
            Err(err) => failed.push(chain(&err)),
        }
    }
    agent.links.refresh();
    if failed.is_empty() {
        return Ok(());
    }
    Err(ApplyFailure::message(format!(
        "workflow {name:?} was prepared everywhere but could not be committed on: {}; \
         the nodes resynchronise when their links come back, or apply again",
        failed.join("; ")
    )))
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
    agent.forget_workflow(name);
    agent.links.refresh();
    agent.store.delete_workflow(name).await;
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
