//! The paper's four patterns at 1 MiB with the functions already running
//! and their clients connected (`bench small`): no process start and no
//! connection set-up in any figure, so what is left is what each system
//! itself costs a small hand-off. Each function moves its streams in turn
//! on its own thread (see [`super::endpoint::serve`]). Floki runs live
//! (the consumers wait, the producers open their channels and never have
//! a stream stored); Redis in the serverless order (the consumers GET once
//! every producer's SET returned), its time the producers' span plus the
//! consumers' span, so that the driver's own hand-off between the two is
//! not counted against it. Bare TCP, the ceiling, runs as Floki does,
//! over connections its functions opened before the runs. The systems
//! take turns of [`TURN`] runs, so that a shared machine's drift during a
//! cell moves them alike.

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::json;

use super::{
    Lab, MIB, Options, System,
    endpoint::{Access, Report},
    human, peer_command,
    scenario::Pattern,
    scenario::Placement,
    scenario::Scenario,
    usage,
};
use crate::bench::function::Function;

/// The systems compared here.
const SYSTEMS: [System; 3] = [System::Floki, System::Redis, System::BareTcp];

/// How long Floki's consumers wait before the producers are told to go:
/// their receivers reach the agent first, as a waiting consumer's would.
const HEAD_START: std::time::Duration = std::time::Duration::from_millis(3);

/// One cell: what each system measured, in [`SYSTEMS`] order.
pub struct Cell {
    pub scenario: Scenario,
    pub systems: Vec<Summary>,
}

/// A system's runs of a cell: median and p90 in µs, and the CPU a run took.
#[derive(Clone, Copy)]
pub struct Summary {
    pub p50_us: f64,
    pub p90_us: f64,
    pub cpu: Cpu,
}

/// Mean CPU time of a run, in µs: the functions' own and their servers'
/// (the agents, or the Redis server).
#[derive(Clone, Copy)]
pub struct Cpu {
    pub functions_us: f64,
    pub servers_us: f64,
}

/// What a cell measured of one system.
struct Measured {
    times_us: Vec<f64>,
    cpu: Cpu,
}

/// The cells of `patterns` in `placements`, measured `rounds` times each
/// (the first tenth left out).
pub fn run(
    rounds: usize,
    patterns: &[Pattern],
    placements: &[Placement],
) -> anyhow::Result<Vec<Cell>> {
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        options: Options,
    }
    let opts = Defaults::parse_from(["paper"]).options;
    let lab = Lab::start(&opts, placements, &SYSTEMS)?;
    let mut cells = Vec::new();
    for &placement in placements {
        for &pattern in patterns {
            let scenario = Scenario {
                pattern,
                placement,
                size: MIB,
            };
            eprintln!("xtask: bench small, {pattern} at 1 MiB, {placement}, warm");
            let systems = warm_cell(&lab, &scenario, rounds)
                .with_context(|| format!("{pattern} {placement}"))?
                .into_iter()
                .map(|measured| {
                    let mut times = measured.times_us;
                    times.sort_by(f64::total_cmp);
                    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
                    Summary {
                        p50_us: at(0.5),
                        p90_us: at(0.9),
                        cpu: measured.cpu,
                    }
                })
                .collect();
            lab.clean(System::Redis, &scenario)?;
            cells.push(Cell { scenario, systems });
        }
    }
    Ok(cells)
}

/// How many runs a system makes in a row before the other takes its turn:
/// long enough that a turn's first, colder runs do not move its median.
/// Turns of 20 runs gave Floki a higher ratio to Redis (0.87x on average
/// in a shuffle across nodes) than turns of 100 (0.82x) or one system
/// after the other (0.79x), Redis slowing more (docs/BENCHMARKS.md); with the
/// default 200 runs per cell, turns of 100 run Floki, Redis, bare TCP,
/// then Redis, bare TCP, Floki, which cancels a steady drift.
const TURN: usize = 100;

/// `rounds` runs of `scenario` through each of [`SYSTEMS`], every system by
/// the same running functions, the systems taking turns of [`TURN`] runs
/// (which one goes first alternates): a machine whose speed drifts during
/// the cell (a shared VM's neighbours) moves both systems' figures alike,
/// and each system still runs warm, its runs back to back. Each system's
/// run times in µs, warm-up left out, and the CPU a run took.
fn warm_cell(lab: &Lab, scenario: &Scenario, rounds: usize) -> anyhow::Result<Vec<Measured>> {
    let mut parties = SYSTEMS
        .into_iter()
        .map(|system| {
            Party::start(lab, system, scenario).with_context(|| system.label().to_owned())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (turn, first) in (0..rounds).step_by(TURN).enumerate() {
        for at in 0..parties.len() {
            let party = &mut parties[(turn + at) % SYSTEMS.len()];
            for round in first..(first + TURN).min(rounds) {
                party
                    .run(scenario, round, rounds)
                    .with_context(|| format!("{} round {round}", party.system.label()))?;
            }
        }
    }
    parties
        .into_iter()
        .map(|party| party.finish(rounds.saturating_sub(cpu_from(rounds)).max(1)))
        .collect()
}

/// The first run whose CPU counts: the CPU a run took is its mean over the
/// runs after the warm-up (after the first run at least).
fn cpu_from(rounds: usize) -> usize {
    (rounds / 10).max(1)
}

/// One system's running functions in a cell, and what their runs measured.
struct Party {
    system: System,
    consumers: Vec<Function>,
    producers: Vec<Function>,
    /// The servers' processes: the agents, or the Redis server.
    servers: Vec<u32>,
    times_us: Vec<f64>,
    /// The functions' own CPU, cumulative in their reports (seconds), and
    /// the servers' (ns): at the end of the last run, and at the end of
    /// the first counted run's predecessor.
    functions_now: f64,
    functions_from: f64,
    servers_from: u64,
}

impl Party {
    /// Starts `system`'s functions for `scenario`, each waiting to be told
    /// to go.
    fn start(lab: &Lab, system: System, scenario: &Scenario) -> anyhow::Result<Self> {
        let start = |functions: &[String], produce: bool| -> anyhow::Result<Vec<Function>> {
            let node = lab.function_node(system, scenario, produce);
            lab.plans(system, scenario, functions, produce)
                .into_iter()
                .map(|mut plan| {
                    if let Access::Floki { live, .. } = &mut plan.access {
                        *live = true;
                    }
                    let args = [
                        "paper-endpoint".to_owned(),
                        serde_json::to_string(&plan)?,
                        "--serve".into(),
                    ];
                    let mut function = Function::spawn(peer_command(node, &args)?)?;
                    let line = function.line()?;
                    if line != "ready" {
                        bail!("expected `ready` from a function, got `{line}`");
                    }
                    Ok(function)
                })
                .collect()
        };
        Ok(Self {
            system,
            consumers: start(&scenario.consumers(), false)?,
            producers: start(&scenario.producers(), true)?,
            servers: lab.servers(system, scenario),
            times_us: Vec::new(),
            functions_now: 0.0,
            functions_from: 0.0,
            servers_from: 0,
        })
    }

    fn servers_ns(&self) -> u64 {
        self.servers.iter().map(|&pid| usage::cpu_ns(pid)).sum()
    }

    /// Runs `round` of `rounds` (the first tenth is the warm-up).
    fn run(&mut self, scenario: &Scenario, round: usize, rounds: usize) -> anyhow::Result<()> {
        let go = |functions: &mut [Function]| -> anyhow::Result<()> {
            functions.iter_mut().try_for_each(|f| f.tell("go"))
        };
        let reports = |functions: &mut [Function]| -> anyhow::Result<Vec<Report>> {
            functions
                .iter_mut()
                .map(|f| serde_json::from_str(&f.line()?).context("reading a function's report"))
                .collect()
        };
        let span = |reports: &[Report]| {
            let first = reports.iter().map(|r| r.start_ns).min().unwrap_or(0);
            let last = reports.iter().map(|r| r.end_ns).max().unwrap_or(0);
            (first, last)
        };
        let (micros, produced, consumed) = match self.system {
            // Consumers waiting, then producers: first start to last end.
            System::Floki | System::BareTcp => {
                go(&mut self.consumers)?;
                std::thread::sleep(HEAD_START);
                go(&mut self.producers)?;
                let produced = reports(&mut self.producers)?;
                let consumed = reports(&mut self.consumers)?;
                let micros = span(&consumed).1.saturating_sub(span(&produced).0) as f64 / 1e3;
                (micros, produced, consumed)
            }
            _ => {
                go(&mut self.producers)?;
                let produced = reports(&mut self.producers)?;
                let (p_first, p_last) = span(&produced);
                go(&mut self.consumers)?;
                let consumed = reports(&mut self.consumers)?;
                let (c_first, c_last) = span(&consumed);
                let micros = (p_last - p_first + c_last - c_first) as f64 / 1e3;
                (micros, produced, consumed)
            }
        };
        self.functions_now = produced
            .iter()
            .chain(&consumed)
            .map(|r| r.cpu_seconds)
            .sum();
        if round + 1 == cpu_from(rounds) {
            (self.functions_from, self.servers_from) = (self.functions_now, self.servers_ns());
        }
        let received: u64 = consumed.iter().map(|r| r.bytes).sum();
        if received != scenario.delivered() {
            bail!(
                "the consumers received {received} bytes of the {} sent",
                scenario.delivered()
            );
        }
        if round >= rounds / 10 {
            self.times_us.push(micros);
        }
        Ok(())
    }

    /// What the counted runs measured, `runs` of them; stops the functions.
    fn finish(self, runs: usize) -> anyhow::Result<Measured> {
        let runs = runs as f64;
        let cpu = Cpu {
            functions_us: (self.functions_now - self.functions_from) * 1e6 / runs,
            servers_us: self.servers_ns().saturating_sub(self.servers_from) as f64 / 1e3 / runs,
        };
        for function in self.consumers.into_iter().chain(self.producers) {
            function.wait()?;
        }
        Ok(Measured {
            times_us: self.times_us,
            cpu,
        })
    }
}

/// The cells as a Markdown table, the floor's verdict, and JSON.
pub fn report(cells: &[Cell], rounds: usize) -> (String, String, serde_json::Value) {
    let mut table = String::from(
        "| pattern | placement | Floki p50 | Floki p90 | Redis p50 | Redis p90 | Floki's speed-up | bare TCP p50 | at the ceiling: Floki, Redis | Floki CPU per run: functions + agents | Redis CPU per run: functions + server | bare TCP CPU per run |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut slower = Vec::new();
    let mut rows = Vec::new();
    for cell in cells {
        let (floki, redis, bare) = (cell.systems[0], cell.systems[1], cell.systems[2]);
        let speedup = redis.p50_us / floki.p50_us;
        if speedup < 1.0 {
            slower.push(format!(
                "{} {} ({speedup:.2}x)",
                cell.scenario.pattern, cell.scenario.placement
            ));
        }
        // How close each system comes to the ceiling's time.
        let (floki_share, redis_share) = (bare.p50_us / floki.p50_us, bare.p50_us / redis.p50_us);
        let cpu = |used: Cpu| format!("{:.0} + {:.0} µs", used.functions_us, used.servers_us);
        table.push_str(&format!(
            "| {} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {speedup:.2}x | {:.0} µs | {floki_share:.2}x, {redis_share:.2}x | {} | {} | {:.0} µs |\n",
            cell.scenario.pattern,
            cell.scenario.placement,
            floki.p50_us,
            floki.p90_us,
            redis.p50_us,
            redis.p90_us,
            bare.p50_us,
            cpu(floki.cpu),
            cpu(redis.cpu),
            bare.cpu.functions_us,
        ));
        rows.push(json!({
            "pattern": cell.scenario.pattern, "placement": cell.scenario.placement,
            "size": human(cell.scenario.size),
            "floki_p50_us": floki.p50_us, "floki_p90_us": floki.p90_us,
            "redis_p50_us": redis.p50_us, "redis_p90_us": redis.p90_us,
            "bare_tcp_p50_us": bare.p50_us, "bare_tcp_p90_us": bare.p90_us,
            "floki_cpu_functions_us": floki.cpu.functions_us,
            "floki_cpu_agents_us": floki.cpu.servers_us,
            "redis_cpu_functions_us": redis.cpu.functions_us,
            "redis_cpu_server_us": redis.cpu.servers_us,
            "bare_tcp_cpu_functions_us": bare.cpu.functions_us,
        }));
    }
    let floor = format!(
        "- Floki at least as fast as Redis in every 1 MiB cell, functions warm (issue 16): {}\n",
        if slower.is_empty() {
            "met".to_owned()
        } else {
            format!("NOT met in {}", slower.join(", "))
        }
    );
    (table, floor, json!({"rounds": rounds, "cells": rows}))
}
