//! The workflow spec (YAML, in the Kubernetes habit) and its validation.
//!
//! ```yaml
//! apiVersion: floki.dev/v1
//! kind: Workflow
//! metadata:
//!   name: wordcount
//! spec:
//!   functions:
//!     - { name: split, node: node-a }
//!     - { name: count-0, node: node-b }
//!   edges:
//!     - name: words
//!       from: [split]
//!       to: [count-0]
//!       pattern: one-to-one
//!       buffer: 16MiB
//!       retain: 1h        # how long a stored stream is kept (default:
//!                         # until the workflow is deleted)
//!       store: true       # false: a producer waits for its consumer
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr as _,
};

/// How an edge's producers and consumers exchange data (the wire format
/// carries it, in an edge's description).
pub use floki_proto::control::Pattern;
use serde::{Deserialize, Serialize};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "floki.dev/v1";
/// Edge buffer when the spec gives none.
pub const DEFAULT_BUFFER: u64 = 8 << 20;
/// Smallest and largest edge buffer.
pub const BUFFER_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(1 << 30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    functions: Vec<FunctionSpec>,
    edges: Vec<EdgeSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionSpec {
    name: String,
    node: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeSpec {
    name: String,
    from: Vec<String>,
    to: Vec<String>,
    pattern: Pattern,
    #[serde(default)]
    buffer: Option<String>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    retain: Option<String>,
}

/// A validated workflow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    /// Workflow name.
    pub name: String,
    /// Function name -> node it runs on.
    pub functions: BTreeMap<String, String>,
    /// The edges, in spec order.
    pub edges: Vec<Edge>,
}

/// One validated edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// Edge (channel) name, unique in the workflow.
    pub name: String,
    /// How producers and consumers exchange data.
    pub pattern: Pattern,
    /// Producing functions, in spec order.
    pub producers: Vec<String>,
    /// Consuming functions, in spec order (partition j goes to `consumers[j]`).
    pub consumers: Vec<String>,
    /// Bytes of the edge in flight per stream, at most.
    pub buffer: u64,
    /// Whether the agents store a stream whose consumer has not started
    /// (`false`: the producer waits for it).
    #[serde(default = "stored_by_default")]
    pub store: bool,
    /// How long a stored stream is kept; `None`: until the workflow is
    /// deleted.
    #[serde(default)]
    pub retain: Option<std::time::Duration>,
}

fn stored_by_default() -> bool {
    true
}

/// One point-to-point stream of an edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId {
    /// Workflow name.
    pub workflow: String,
    /// Edge name.
    pub edge: String,
    /// Producing function.
    pub producer: String,
    /// Consuming function.
    pub consumer: String,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}>{}",
            self.workflow, self.edge, self.producer, self.consumer
        )
    }
}

impl Workflow {
    /// Parses and validates `yaml`; `known_nodes` are the nodes this agent can
    /// reach (itself and its peers). Every problem is reported, each naming
    /// its field.
    pub fn parse(yaml: &str, known_nodes: &BTreeSet<String>) -> Result<Self, SpecErrors> {
        let file: File = serde_saphyr::from_str(yaml).map_err(|err| {
            SpecErrors(vec![SpecError {
                field: "(document)".into(),
                reason: err.to_string(),
            }])
        })?;
        validate(file, known_nodes)
    }

    /// The node a function runs on.
    pub fn node_of(&self, function: &str) -> Option<&str> {
        self.functions.get(function).map(String::as_str)
    }

    /// The nodes hosting this workflow's functions.
    pub fn nodes(&self) -> BTreeSet<&str> {
        self.functions.values().map(String::as_str).collect()
    }

    /// An edge by name.
    pub fn edge(&self, name: &str) -> Option<&Edge> {
        self.edges.iter().find(|edge| edge.name == name)
    }

    /// Whether `stream` is one of this workflow's (without building them
    /// all, as [`Workflow::streams`] does).
    pub fn has_stream(&self, stream: &StreamId) -> bool {
        stream.workflow == self.name
            && self.edge(&stream.edge).is_some_and(|edge| {
                edge.producers.contains(&stream.producer)
                    && edge.consumers.contains(&stream.consumer)
            })
    }

    /// Every stream of every edge.
    pub fn streams(&self) -> impl Iterator<Item = (&Edge, StreamId)> {
        self.edges.iter().flat_map(move |edge| {
            edge.producers.iter().flat_map(move |producer| {
                edge.consumers.iter().map(move |consumer| {
                    (
                        edge,
                        StreamId {
                            workflow: self.name.clone(),
                            edge: edge.name.clone(),
                            producer: producer.clone(),
                            consumer: consumer.clone(),
                        },
                    )
                })
            })
        })
    }
}

/// One problem in a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecError {
    /// Where: `spec.edges[1].to[0]`.
    pub field: String,
    /// What is wrong and what would be right.
    pub reason: String,
}

/// Everything wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}", err.field, err.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

fn validate(file: File, known_nodes: &BTreeSet<String>) -> Result<Workflow, SpecErrors> {
    let mut errors = Vec::new();
    let mut err = |field: String, reason: String| errors.push(SpecError { field, reason });
    if file.api_version != API_VERSION {
        err(
            "apiVersion".into(),
            format!("{:?} is not supported; use {API_VERSION}", file.api_version),
        );
    }
    if file.kind != "Workflow" {
        err(
            "kind".into(),
            format!("{:?} is not supported; use Workflow", file.kind),
        );
    }
    let name = file.metadata.name;
    if !valid_name(&name) {
        err("metadata.name".into(), format!("{name:?} {NAME_RULE}"));
    }

    let mut functions = BTreeMap::new();
    for (i, function) in file.spec.functions.iter().enumerate() {
        let field = format!("spec.functions[{i}]");
        if !valid_name(&function.name) {
            err(
                format!("{field}.name"),
                format!("{:?} {NAME_RULE}", function.name),
            );
        }
        if !known_nodes.contains(&function.node) {
            err(
                format!("{field}.node"),
                format!(
                    "unknown node {:?}; this agent knows {} (add it with --peer NAME=ADDR)",
                    function.node,
                    known_nodes.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        if functions
            .insert(function.name.clone(), function.node.clone())
            .is_some()
        {
            err(
                format!("{field}.name"),
                format!("function {:?} is declared twice", function.name),
            );
        }
    }
    if file.spec.functions.is_empty() {
        err(
            "spec.functions".into(),
            "a workflow needs at least one function".into(),
        );
    }

    let mut edges = Vec::new();
    let mut edge_names = BTreeSet::new();
    for (i, spec) in file.spec.edges.into_iter().enumerate() {
        let field = format!("spec.edges[{i}]");
        if !valid_name(&spec.name) {
            err(
                format!("{field}.name"),
                format!("{:?} {NAME_RULE}", spec.name),
            );
        }
        if !edge_names.insert(spec.name.clone()) {
            err(
                format!("{field}.name"),
                format!("edge {:?} is declared twice", spec.name),
            );
        }
        for (side, list) in [("from", &spec.from), ("to", &spec.to)] {
            let mut seen = BTreeSet::new();
            for (j, function) in list.iter().enumerate() {
                if !functions.contains_key(function) {
                    err(
                        format!("{field}.{side}[{j}]"),
                        format!("no function named {function:?} in spec.functions"),
                    );
                }
                if !seen.insert(function) {
                    err(
                        format!("{field}.{side}[{j}]"),
                        format!("{function:?} is listed twice"),
                    );
                }
            }
        }
        let (producers, consumers) = (spec.from.len(), spec.to.len());
        let arity = match spec.pattern {
            Pattern::OneToOne => (producers == 1 && consumers == 1)
                .then_some(())
                .ok_or("one producer and one consumer"),
            Pattern::Broadcast => (producers == 1 && consumers >= 1)
                .then_some(())
                .ok_or("one producer and at least one consumer"),
            Pattern::Gather => (producers >= 1 && consumers == 1)
                .then_some(())
                .ok_or("at least one producer and one consumer"),
            Pattern::Shuffle => (producers >= 1 && consumers >= 1)
                .then_some(())
                .ok_or("at least one producer and one consumer"),
        };
        if let Err(needs) = arity {
            err(
                format!("{field}.pattern"),
                format!(
                    "{} needs {needs}; from has {producers}, to has {consumers}",
                    spec.pattern
                ),
            );
        }
        if let Some(function) = spec.from.iter().find(|f| spec.to.contains(f)) {
            err(
                format!("{field}.to"),
                format!("{function:?} cannot consume its own edge"),
            );
        }
        let buffer = match spec.buffer.as_deref() {
            None => DEFAULT_BUFFER,
            Some(text) => match bytesize::ByteSize::from_str(text) {
                Ok(size) if BUFFER_RANGE.contains(&size.as_u64()) => size.as_u64(),
                Ok(_) => {
                    err(
                        format!("{field}.buffer"),
                        format!("{text} is outside 64KiB..=1GiB"),
                    );
                    DEFAULT_BUFFER
                }
                Err(_) => {
                    err(
                        format!("{field}.buffer"),
                        format!("{text:?} is not a size like 16MiB"),
                    );
                    DEFAULT_BUFFER
                }
            },
        };
        let retain =
            spec.retain
                .as_deref()
                .and_then(|text| match humantime::parse_duration(text) {
                    Ok(retain) if !retain.is_zero() => Some(retain),
                    _ => {
                        err(
                            format!("{field}.retain"),
                            format!("{text:?} is not a duration like 30m or 2h"),
                        );
                        None
                    }
                });
        edges.push(Edge {
            name: spec.name,
            pattern: spec.pattern,
            producers: spec.from,
            consumers: spec.to,
            buffer,
            store: spec.store.unwrap_or(true),
            retain,
        });
    }
    if errors.is_empty() {
        Ok(Workflow {
            name,
            functions,
            edges,
        })
    } else {
        Err(SpecErrors(errors))
    }
}

const NAME_RULE: &str =
    "must be 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit";

/// DNS-label-like names (the Kubernetes habit), safe inside channel names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_are_valid() {
        let nodes: BTreeSet<String> = ["node-a".into(), "node-b".into()].into();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|ext| ext == "yaml") {
                let yaml = std::fs::read_to_string(&path).expect("readable");
                if let Err(errors) = Workflow::parse(&yaml, &nodes) {
                    panic!("{}: {errors}", path.display());
                }
                checked += 1;
            }
        }
        assert!(checked >= 4, "only {checked} examples");
    }

    fn nodes() -> BTreeSet<String> {
        ["node-a", "node-b"].map(String::from).into()
    }

    const GOOD: &str = r#"
apiVersion: floki.dev/v1
kind: Workflow
metadata:
  name: wordcount
spec:
  functions:
    - { name: split, node: node-a }
    - { name: count-0, node: node-a }
    - { name: count-1, node: node-b }
  edges:
    - name: words
      from: [split]
      to: [count-0, count-1]
      pattern: shuffle
      buffer: 16MiB
"#;

    #[test]
    fn a_valid_spec_becomes_streams() {
        let workflow = Workflow::parse(GOOD, &nodes()).unwrap();
        assert_eq!(workflow.edges[0].buffer, 16 << 20);
        let streams: Vec<String> = workflow.streams().map(|(_, s)| s.to_string()).collect();
        assert_eq!(
            streams,
            [
                "wordcount/words/split>count-0",
                "wordcount/words/split>count-1"
            ]
        );
        assert_eq!(workflow.node_of("count-1"), Some("node-b"));
    }

    #[test]
    fn every_problem_names_its_field() {
        let bad = GOOD
            .replace("node: node-b", "node: node-x")
            .replace("to: [count-0, count-1]", "to: [count-0, nobody]")
            .replace("pattern: shuffle", "pattern: one-to-one")
            .replace("16MiB", "2GiB");
        let errors = Workflow::parse(&bad, &nodes()).unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.functions[2].node",
                "spec.edges[0].to[1]",
                "spec.edges[0].pattern",
                "spec.edges[0].buffer"
            ],
            "{errors}"
        );
        assert!(
            errors.to_string().contains("unknown node \"node-x\""),
            "{errors}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_place() {
        let errors = Workflow::parse(&GOOD.replace("buffer:", "bufer:"), &nodes()).unwrap_err();
        assert!(
            errors.to_string().contains("unknown field `bufer`"),
            "{errors}"
        );
    }
}
