//! The paper benchmark's numbers: samples per (scenario, system), their
//! medians and spread, the tables, the floors, and docs/BENCHMARKS.md.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;
use serde_json::json;

use super::{
    MIB, Options, System, human,
    scenario::{Pattern, Placement, Scenario},
};
use crate::bench::report::{self, Spread};

/// What one run of one system measured.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// First producer start to last consumer done.
    pub seconds: f64,
    /// Bytes the system's processes (server or agents, and the functions)
    /// caused to be written to storage.
    pub disk_bytes: u64,
    /// Bytes the object store held on disk at the end of the run.
    pub stored_bytes: u64,
    /// Peak memory of the server or of the busiest agent.
    pub server_peak_rss: u64,
    /// Peak memory of the largest function.
    pub function_peak_rss: u64,
    /// CPU time of every process involved.
    pub cpu_seconds: f64,
}

/// Which measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub placement: Placement,
    pub pattern: Pattern,
    pub size: u64,
    pub system: System,
}

impl Key {
    pub fn new(system: System, scenario: &Scenario) -> Self {
        Self {
            placement: scenario.placement,
            pattern: scenario.pattern,
            size: scenario.size,
            system,
        }
    }
}

/// The medians of one system in one scenario.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stats {
    pub seconds: Spread,
    pub disk_bytes: u64,
    pub stored_bytes: u64,
    pub server_peak_rss: u64,
    pub function_peak_rss: u64,
    pub cpu_seconds: Spread,
}

impl Stats {
    fn of(samples: &[Sample]) -> Self {
        let median = |f: fn(&Sample) -> u64| {
            let values: Vec<f64> = samples.iter().map(|s| f(s) as f64).collect();
            Spread::of(&values).median as u64
        };
        let max = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
        Self {
            seconds: Spread::of(&samples.iter().map(|s| s.seconds).collect::<Vec<_>>()),
            disk_bytes: median(|s| s.disk_bytes),
            stored_bytes: max(|s| s.stored_bytes),
            server_peak_rss: max(|s| s.server_peak_rss),
            function_peak_rss: max(|s| s.function_peak_rss),
            cpu_seconds: Spread::of(&samples.iter().map(|s| s.cpu_seconds).collect::<Vec<_>>()),
        }
    }
}

/// One scenario's results.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: Scenario,
    pub stats: BTreeMap<System, Stats>,
}

impl Row {
    /// How many times faster Floki (live) was than `system` (medians).
    pub fn speedup(&self, system: System) -> Option<f64> {
        self.speedup_of(System::Floki, system)
    }

    /// How many times faster `floki` was than `system` (medians).
    pub fn speedup_of(&self, floki: System, system: System) -> Option<f64> {
        let floki = self.stats.get(&floki)?.seconds.median;
        let other = self.stats.get(&system)?.seconds.median;
        (floki > 0.0).then(|| other / floki)
    }
}

/// The speedups the tables show: each Floki variant against the baseline
/// it is meant to replace (live against both; stored in memory against
/// Redis, which keeps objects in memory; spilled against S3, which keeps
/// them on disk).
const COMPARED: [(System, System); 4] = [
    (System::Floki, System::S3),
    (System::Floki, System::Redis),
    (System::FlokiMemory, System::Redis),
    (System::FlokiDisk, System::S3),
];

/// All results.
pub struct Summary {
    pub rows: Vec<Row>,
    pub systems: Vec<System>,
    samples: BTreeMap<Key, Vec<Sample>>,
}

impl Summary {
    pub fn new(
        scenarios: &[Scenario],
        systems: &[System],
        samples: &BTreeMap<Key, Vec<Sample>>,
    ) -> Self {
        let mut ordered = scenarios.to_vec();
        ordered.sort_by_key(|s| (s.placement, s.pattern, s.size));
        let rows = ordered
            .into_iter()
            .map(|scenario| Row {
                stats: systems
                    .iter()
                    .filter_map(|&system| {
                        samples
                            .get(&Key::new(system, &scenario))
                            .map(|s| (system, Stats::of(s)))
                    })
                    .collect(),
                scenario,
            })
            .collect();
        Self {
            rows,
            systems: systems.to_vec(),
            samples: samples.clone(),
        }
    }

    fn row(&self, pattern: Pattern, placement: Placement, size: u64) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.scenario.pattern == pattern
                && r.scenario.placement == placement
                && r.scenario.size == size
        })
    }

    /// The time and resources tables, in Markdown.
    pub fn tables(&self) -> String {
        let compared: Vec<(System, System)> = COMPARED
            .into_iter()
            .filter(|(a, b)| self.systems.contains(a) && self.systems.contains(b))
            .collect();
        let mut out = String::from("| pattern | placement | data |");
        for system in &self.systems {
            let _ = write!(out, " {} s |", system.label());
        }
        for (floki, system) in &compared {
            let _ = write!(out, " {} vs {} |", floki.label(), system.label());
        }
        out.push_str("\n|---|---|---|");
        out.push_str(&"---|".repeat(self.systems.len() + compared.len()));
        out.push('\n');
        for row in &self.rows {
            let _ = write!(
                out,
                "| {} | {} | {} |",
                row.scenario.pattern,
                row.scenario.placement,
                human(row.scenario.size)
            );
            for system in &self.systems {
                let cell = row.stats.get(system).map_or("-".into(), |s| {
                    format!(
                        "{} ({}–{})",
                        secs(s.seconds.median),
                        secs(s.seconds.min),
                        secs(s.seconds.max)
                    )
                });
                let _ = write!(out, " {cell} |");
            }
            for &(floki, system) in &compared {
                let cell = row
                    .speedup_of(floki, system)
                    .map_or("-".into(), |x| format!("**{x:.1}x**"));
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }

        out.push_str(
            "\nResources (medians; peaks are the largest seen):\n\n| pattern | placement | data |",
        );
        for system in &self.systems {
            let _ = write!(out, " {} disk written |", system.label());
        }
        out.push_str(" S3 stored |");
        for system in &self.systems {
            let whose = if system.is_floki() {
                "agents"
            } else {
                "server"
            };
            let _ = write!(out, " {} {whose} peak RSS |", system.label());
        }
        for system in &self.systems {
            let _ = write!(out, " {} CPU s |", system.label());
        }
        out.push_str("\n|---|---|---|");
        out.push_str(&"---|".repeat(3 * self.systems.len() + 1));
        out.push('\n');
        for row in &self.rows {
            let _ = write!(
                out,
                "| {} | {} | {} |",
                row.scenario.pattern,
                row.scenario.placement,
                human(row.scenario.size)
            );
            for system in &self.systems {
                let cell = row
                    .stats
                    .get(system)
                    .map_or("-".into(), |s| human(s.disk_bytes));
                let _ = write!(out, " {cell} |");
            }
            let bytes = |system: System, f: fn(&Stats) -> u64| {
                row.stats.get(&system).map_or("-".into(), |s| human(f(s)))
            };
            let _ = write!(out, " {} |", bytes(System::S3, |s| s.stored_bytes));
            for &system in &self.systems {
                let _ = write!(out, " {} |", bytes(system, |s| s.server_peak_rss));
            }
            for system in &self.systems {
                let cell = row
                    .stats
                    .get(system)
                    .map_or("-".into(), |s| format!("{:.1}", s.cpu_seconds.median));
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }

    /// The floors of issue 4, met or not.
    pub fn floors(&self) -> String {
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let mut out = String::from("Floors (issue 4):\n");
        let size = 4096 * MIB;
        match self.row(Pattern::OneToOne, Placement::OneNode, size) {
            Some(row) => {
                if let Some(x) = row.speedup(System::S3) {
                    let _ = writeln!(
                        out,
                        "- one-to-one, one node, 4 GiB: Floki at least 75x faster than S3 end to end: {x:.1}x, {}",
                        verdict(x >= 75.0)
                    );
                }
                if let Some(floki) = row.stats.get(&System::Floki) {
                    let _ = writeln!(
                        out,
                        "- one-to-one, one node, 4 GiB: 0 bytes written to disk by Floki: {} B, {}",
                        floki.disk_bytes,
                        verdict(floki.disk_bytes == 0)
                    );
                }
            }
            None => out.push_str("- one-to-one, one node, 4 GiB: not measured in this run\n"),
        }
        match self
            .row(Pattern::OneToOne, Placement::TwoNodes, size)
            .and_then(|row| row.speedup(System::S3))
        {
            Some(x) => {
                let _ = writeln!(
                    out,
                    "- one-to-one, two nodes, 4 GiB: at least 15x: {x:.1}x, {}",
                    verdict(x >= 15.0)
                );
            }
            None => out.push_str("- one-to-one, two nodes, 4 GiB: not measured in this run\n"),
        }
        out.push_str(&self.stored_floors());
        out
    }

    /// The floors of issue 15: Floki in the sequential order.
    fn stored_floors(&self) -> String {
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let mut out = String::from("Floors (issue 15, sequential order):\n");
        let size = 1024 * MIB;
        let Some(row) = self.row(Pattern::OneToOne, Placement::OneNode, size) else {
            out.push_str("- one-to-one, one node, 1 GiB: not measured in this run\n");
            return out;
        };
        if let Some(x) = row.speedup_of(System::FlokiMemory, System::Redis) {
            let _ = writeln!(
                out,
                "- stored in memory, one-to-one, one node, 1 GiB: at least 2x faster than Redis: {x:.1}x, {}",
                verdict(x >= 2.0)
            );
        }
        if let (Some(x), Some(disk)) = (
            row.speedup_of(System::FlokiDisk, System::S3),
            row.stats.get(&System::FlokiDisk),
        ) {
            let _ = writeln!(
                out,
                "- spilled to disk, one-to-one, one node, 1 GiB: at least 3x faster than S3: {x:.1}x, {}; \
                 written to disk {} for {} of data (at most the data's size, plus 1% for its records' headers): {}",
                verdict(x >= 3.0),
                human(disk.disk_bytes),
                human(size),
                verdict(disk.disk_bytes <= size + size / 100)
            );
        }
        out
    }

    /// Writes the section of docs/BENCHMARKS.md and the raw results.
    pub fn write(
        &self,
        tables: &str,
        floors: &str,
        plots: &[String],
        runs: usize,
        opts: &Options,
    ) -> anyhow::Result<()> {
        let baseline = match &opts.s3_endpoint {
            Some(endpoint) => format!("the S3 service at {endpoint}"),
            None => "s3s-fs 0.17 (files on the local disk), started by the benchmark on the producers' node".into(),
        };
        let images: String = plots
            .iter()
            .map(|name| format!("![{name}](benchmarks/{name}.svg)\n"))
            .collect();
        let markdown = format!(
            "## Paper: Floki against object storage\n\n\
             Measured {} on {}.\n\
             Reproduce: `cargo xtask bench paper` (as root; {runs} runs per cell, medians with the range; \
             `--huge` adds 16 GiB, `--s3-endpoint URL` measures another S3 service).\n\n\
             The same workflows run five ways. **Floki** (live): the workflow is applied to the agents of \
             two network-namespace nodes; producers and consumers start together on their agent's \
             Unix socket, and the consumer reads while the producer writes (same node: a \
             shared-memory ring the agent hands to both, the consumer checking the bytes in \
             place; across nodes: the link the agents prepared, handed to the functions). \
             **Floki stored (memory)** and **Floki stored (disk)**: the same, in the order of the \
             baselines below: each consumer starts once its producers exited, so the agents store \
             every stream (on the consumers' node: across nodes the stream is pushed ahead) and \
             replay it to the consumer; memory is the agents' memory tier (6 GiB; beyond it a \
             stream spills to disk), disk is a second pair of agents without a memory tier \
             (`--store-memory 0`), spilling to the same local disk as s3s-fs. **S3**: \
             {baseline}; producers PUT (multipart, 16 MiB parts) and consumers GET with the \
             `object_store` crate, a consumer starting once its producers' objects are complete, \
             as on a serverless platform. **Redis**: Debian's redis-server without persistence, \
             objects in 64 MiB values, same order. Data: the whole data set for one-to-one and \
             broadcast (each of 4 consumers gets all of it), a quarter per producer for gather, a \
             sixteenth per stream for shuffle; the servers run on the producers' node; two nodes \
             put the consumers on the other one. Time is first producer start to last consumer \
             done; every transfer is checked byte for byte. Disk written counts what the \
             server (or the agents) and the functions caused to be written to storage \
             (/proc/PID/io).\n\n\
             {tables}\n{floors}\n{images}",
            report::today(),
            report::machine(),
        );
        let rows: Vec<serde_json::Value> = self
            .samples
            .iter()
            .map(|(key, samples)| {
                json!({"pattern": key.pattern, "placement": key.placement, "size": key.size,
                       "system": key.system, "samples": samples})
            })
            .collect();
        let json = json!({"bench": "paper", "date": report::today(), "machine": report::machine(),
            "runs": runs, "results": rows});
        report::write_section("paper", &markdown, &json)
    }
}

fn secs(seconds: f64) -> String {
    if seconds >= 10.0 {
        format!("{seconds:.1}")
    } else if seconds >= 0.1 {
        format!("{seconds:.2}")
    } else {
        format!("{seconds:.3}")
    }
}
