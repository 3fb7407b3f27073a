//! Workflows: a graph of functions placed on nodes, whose edges Floki
//! prepares before the functions run. [`spec`] parses and validates the YAML.

pub mod spec;

pub use spec::{Edge, Pattern, SpecError, SpecErrors, StreamId, Workflow};
