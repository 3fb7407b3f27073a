//! What the paper benchmark runs: a communication pattern, a placement and a
//! data size make a scenario; a scenario is a set of functions and the
//! streams between them, the same for every system.

use std::fmt;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// The communication patterns of the paper.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// One producer, one consumer.
    OneToOne,
    /// One producer, four consumers that each get the whole data.
    Broadcast,
    /// Four producers, one consumer that gets each producer's part.
    Gather,
    /// Four producers, four consumers: producer i sends partition j to
    /// consumer j.
    Shuffle,
}

impl Pattern {
    pub const ALL: [Self; 4] = [Self::OneToOne, Self::Broadcast, Self::Gather, Self::Shuffle];

    /// Producers and consumers.
    fn shape(self) -> (usize, usize) {
        match self {
            Self::OneToOne => (1, 1),
            Self::Broadcast => (1, FAN),
            Self::Gather => (FAN, 1),
            Self::Shuffle => (FAN, FAN),
        }
    }

    /// The pattern's name in a workflow spec.
    pub fn spec_name(self) -> &'static str {
        match self {
            Self::OneToOne => "one-to-one",
            Self::Broadcast => "broadcast",
            Self::Gather => "gather",
            Self::Shuffle => "shuffle",
        }
    }

    /// Short name, for edges, keys and tables.
    pub fn short(self) -> &'static str {
        match self {
            Self::OneToOne => "o2o",
            Self::Broadcast => "bcast",
            Self::Gather => "gather",
            Self::Shuffle => "shuffle",
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OneToOne => "one-to-one",
            Self::Broadcast => "broadcast 1 to 4",
            Self::Gather => "gather 4 to 1",
            Self::Shuffle => "shuffle 4 by 4",
        })
    }
}

/// Fan-out and fan-in of the patterns.
pub const FAN: usize = 4;

/// Where the functions run.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Producers and consumers on one node.
    OneNode,
    /// Producers on node-a, consumers on node-b.
    TwoNodes,
}

impl Placement {
    pub const ALL: [Self; 2] = [Self::OneNode, Self::TwoNodes];

    /// The node of consumers (producers always run on node-a).
    pub fn consumer_node(self) -> &'static str {
        match self {
            Self::OneNode => PRODUCER_NODE,
            Self::TwoNodes => "node-b",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Self::OneNode => "one",
            Self::TwoNodes => "two",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OneNode => "one node",
            Self::TwoNodes => "two nodes",
        })
    }
}

/// Producers run here, and the object stores too (favouring them: their
/// producers write over loopback).
pub const PRODUCER_NODE: &str = "node-a";

/// One stream of a scenario: what a producer delivers to a consumer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub producer: String,
    pub consumer: String,
    /// Bytes.
    pub bytes: u64,
    /// Seed of its content (the same for every consumer of a broadcast).
    pub seed: u64,
    /// Where an object store keeps it: shared by the consumers of a
    /// broadcast, one per stream otherwise.
    pub key: String,
}

/// A pattern, a placement and a data size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scenario {
    pub pattern: Pattern,
    pub placement: Placement,
    /// The data set: what the producers write in all (a broadcast's single
    /// producer writes it once; every consumer of it gets all of it).
    pub size: u64,
}

impl Scenario {
    pub fn producers(&self) -> Vec<String> {
        (0..self.pattern.shape().0)
            .map(|i| format!("{}-p{i}", self.pattern.short()))
            .collect()
    }

    pub fn consumers(&self) -> Vec<String> {
        (0..self.pattern.shape().1)
            .map(|j| format!("{}-c{j}", self.pattern.short()))
            .collect()
    }

    /// Every stream, producer by producer.
    pub fn streams(&self) -> Vec<Stream> {
        let (producers, consumers) = (self.producers(), self.consumers());
        let per_stream = match self.pattern {
            Pattern::OneToOne | Pattern::Broadcast => self.size,
            Pattern::Gather => self.size / FAN as u64,
            Pattern::Shuffle => self.size / (FAN * FAN) as u64,
        };
        let mut streams = Vec::new();
        for (i, producer) in producers.iter().enumerate() {
            for (j, consumer) in consumers.iter().enumerate() {
                let shared = self.pattern == Pattern::Broadcast;
                let seed = if shared {
                    1000 + i as u64
                } else {
                    1000 + (i * 64 + j) as u64
                };
                let key = if shared {
                    format!("{}/{producer}", self.pattern.short())
                } else {
                    format!("{}/{producer}/{consumer}", self.pattern.short())
                };
                streams.push(Stream {
                    producer: producer.clone(),
                    consumer: consumer.clone(),
                    bytes: per_stream,
                    seed,
                    key,
                });
            }
        }
        streams
    }

    /// Bytes the consumers receive in all.
    pub fn delivered(&self) -> u64 {
        self.streams().iter().map(|s| s.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_moves_the_data_set() {
        for pattern in Pattern::ALL {
            let scenario = Scenario {
                pattern,
                placement: Placement::OneNode,
                size: 16 << 20,
            };
            let delivered = scenario.delivered();
            let expected = match pattern {
                Pattern::Broadcast => FAN as u64 * (16 << 20),
                _ => 16 << 20,
            };
            assert_eq!(delivered, expected, "{pattern}");
        }
    }
}
