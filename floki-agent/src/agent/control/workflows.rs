//! The workflows this agent knows: applied (committed) ones with their
//! tokens, and ones prepared during an apply that is not decided yet.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use floki_proto::control::Role;

use crate::workflow::{Edge, StreamId, Workflow};

/// How long a prepared workflow waits for its commit before it is dropped.
const PREPARE_LIMIT: Duration = Duration::from_secs(30);

/// A workflow with what it was applied with.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The validated workflow.
    pub workflow: Workflow,
    /// Its YAML, as applied (shared with peers).
    pub yaml: String,
    /// The secret a channel of this workflow must present.
    pub token: String,
}

/// A client's channel resolved against an applied workflow.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The stream.
    pub stream: StreamId,
    /// The stream's edge.
    pub edge: Edge,
    /// Node of the other end.
    pub peer_node: String,
}

/// Why a workflow request cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// Unknown workflow, edge or function, or a wrong token: deliberately one
    /// answer, so that a caller without the token learns nothing.
    NotAllowed,
    /// The function runs on another node: connect to that node's agent.
    WrongNode(String),
}

#[derive(Default)]
struct Inner {
    applied: BTreeMap<String, Applied>,
    prepared: BTreeMap<String, (Applied, Instant)>,
}

/// All workflows of this agent.
#[derive(Default)]
pub struct Workflows {
    inner: Mutex<Inner>,
    /// Bumped whenever the applied set changes (for the named pipes).
    version: tokio::sync::watch::Sender<u64>,
}

impl Workflows {
    /// Holds `applied` until [`Workflows::commit`] or [`Workflows::abort`].
    /// Refuses a different workflow under a name already applied.
    pub fn prepare(&self, applied: Applied) -> Result<(), String> {
        let mut inner = self.inner.lock().expect("workflows lock");
        inner
            .prepared
            .retain(|_, (_, at)| at.elapsed() < PREPARE_LIMIT);
        let name = applied.workflow.name.clone();
        if let Some(existing) = inner.applied.get(&name)
            && existing.workflow != applied.workflow
        {
            return Err(format!(
                "workflow {name:?} is already applied with a different spec; delete it first"
            ));
        }
        inner.prepared.insert(name, (applied, Instant::now()));
        Ok(())
    }

    /// Applies a prepared workflow; `false` if there was none.
    pub fn commit(&self, name: &str) -> bool {
        let mut inner = self.inner.lock().expect("workflows lock");
        match inner.prepared.remove(name) {
            Some((applied, _)) => {
                inner.applied.insert(name.to_owned(), applied);
                self.changed();
                true
            }
            None => inner.applied.contains_key(name),
        }
    }

    /// Watches the applied set: the value changes with it.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn changed(&self) {
        self.version.send_modify(|version| *version += 1);
    }

    /// Drops a prepared workflow.
    pub fn abort(&self, name: &str) {
        self.inner
            .lock()
            .expect("workflows lock")
            .prepared
            .remove(name);
    }

    /// Applies a workflow a peer already committed (resynchronisation after
    /// a restart); an identical one is left as is.
    pub fn install(&self, applied: Applied) {
        let mut inner = self.inner.lock().expect("workflows lock");
        inner.applied.insert(applied.workflow.name.clone(), applied);
        self.changed();
    }

    /// Removes a workflow; returns it if it was applied.
    pub fn delete(&self, name: &str) -> Option<Applied> {
        let mut inner = self.inner.lock().expect("workflows lock");
        inner.prepared.remove(name);
        let removed = inner.applied.remove(name);
        if removed.is_some() {
            self.changed();
        }
        removed
    }

    /// One applied workflow.
    pub fn get(&self, name: &str) -> Option<Applied> {
        self.inner
            .lock()
            .expect("workflows lock")
            .applied
            .get(name)
            .cloned()
    }

    /// All applied workflows.
    pub fn all(&self) -> Vec<Applied> {
        self.inner
            .lock()
            .expect("workflows lock")
            .applied
            .values()
            .cloned()
            .collect()
    }

    /// The stream a client of `node` opens: it is `function`, `role` on
    /// `edge`, talking to `peer`.
    #[allow(clippy::too_many_arguments)]
    pub fn resolve(
        &self,
        node: &str,
        workflow: &str,
        token: &str,
        edge: &str,
        function: &str,
        peer: &str,
        role: Role,
    ) -> Result<Resolved, Denied> {
        let inner = self.inner.lock().expect("workflows lock");
        let applied = inner.applied.get(workflow).ok_or(Denied::NotAllowed)?;
        if !same_secret(&applied.token, token) {
            return Err(Denied::NotAllowed);
        }
        let edge = applied.workflow.edge(edge).ok_or(Denied::NotAllowed)?;
        let (producer, consumer) = match role {
            Role::Send => (function, peer),
            Role::Recv => (peer, function),
        };
        if !edge.producers.iter().any(|p| p == producer)
            || !edge.consumers.iter().any(|c| c == consumer)
        {
            return Err(Denied::NotAllowed);
        }
        let own = applied
            .workflow
            .node_of(function)
            .ok_or(Denied::NotAllowed)?;
        if own != node {
            return Err(Denied::WrongNode(own.to_owned()));
        }
        let peer_node = applied
            .workflow
            .node_of(peer)
            .ok_or(Denied::NotAllowed)?
            .to_owned();
        Ok(Resolved {
            stream: StreamId {
                workflow: workflow.to_owned(),
                edge: edge.name.clone(),
                producer: producer.to_owned(),
                consumer: consumer.to_owned(),
            },
            edge: edge.clone(),
            peer_node,
        })
    }

    /// The edge `function` plays `role` on, after the token check.
    pub fn describe(
        &self,
        workflow: &str,
        token: &str,
        edge: &str,
        function: &str,
    ) -> Result<(Edge, Role), Denied> {
        let inner = self.inner.lock().expect("workflows lock");
        let applied = inner.applied.get(workflow).ok_or(Denied::NotAllowed)?;
        if !same_secret(&applied.token, token) {
            return Err(Denied::NotAllowed);
        }
        let edge = applied.workflow.edge(edge).ok_or(Denied::NotAllowed)?;
        let role = if edge.producers.iter().any(|p| p == function) {
            Role::Send
        } else if edge.consumers.iter().any(|c| c == function) {
            Role::Recv
        } else {
            return Err(Denied::NotAllowed);
        };
        Ok((edge.clone(), role))
    }

    /// Streams of applied workflows that leave this node for `peer_node`
    /// (this node produces, the peer consumes).
    pub fn outgoing_streams(&self, node: &str) -> Vec<(StreamId, String)> {
        let inner = self.inner.lock().expect("workflows lock");
        let mut out = Vec::new();
        for applied in inner.applied.values() {
            for (_, stream) in applied.workflow.streams() {
                let from = applied.workflow.node_of(&stream.producer);
                let to = applied.workflow.node_of(&stream.consumer);
                if let (Some(from), Some(to)) = (from, to)
                    && from == node
                    && to != node
                {
                    out.push((stream.clone(), to.to_owned()));
                }
            }
        }
        out
    }

    /// Whether `stream` is a stream of an applied workflow from `node` to
    /// another node. Looks at the stream's own workflow only, copying
    /// nothing: every keeper of a prepared link asks it.
    pub fn is_outgoing(&self, node: &str, stream: &StreamId) -> bool {
        let inner = self.inner.lock().expect("workflows lock");
        inner.applied.get(&stream.workflow).is_some_and(|applied| {
            let workflow = &applied.workflow;
            workflow.has_stream(stream)
                && workflow.node_of(&stream.producer) == Some(node)
                && workflow
                    .node_of(&stream.consumer)
                    .is_some_and(|to| to != node)
        })
    }

    /// Whether `stream` ends on `node`; `None` without its workflow.
    pub fn ends_on(&self, node: &str, stream: &StreamId) -> Option<bool> {
        let inner = self.inner.lock().expect("workflows lock");
        let workflow = &inner.applied.get(&stream.workflow)?.workflow;
        Some(workflow.has_stream(stream) && workflow.node_of(&stream.consumer) == Some(node))
    }

    /// Applied workflows that involve `node`.
    pub fn involving(&self, node: &str) -> Vec<Applied> {
        self.all()
            .into_iter()
            .filter(|applied| applied.workflow.nodes().contains(node))
            .collect()
    }

    /// Nodes of all applied workflows.
    pub fn nodes(&self) -> BTreeSet<String> {
        self.all()
            .iter()
            .flat_map(|applied| {
                applied
                    .workflow
                    .nodes()
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
