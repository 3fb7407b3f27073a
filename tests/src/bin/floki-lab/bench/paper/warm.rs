//! The paper's four patterns at 1 MiB with the functions already running
//! and their clients connected (`bench small`): no process start and no
//! connection set-up in any figure, so what is left is what each system
//! itself costs a small hand-off. Each function moves its streams in turn
//! on its own thread (see [`super::endpoint::serve`]). Floki runs live
//! (the consumers wait, the producers open their channels and never have
//! a stream stored); Redis in the serverless order (the consumers GET once
//! every producer's SET returned), its time the producers' span plus the
//! consumers' span, so that the driver's own hand-off between the two is
//! not counted against it.

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
const SYSTEMS: [System; 2] = [System::Floki, System::Redis];

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
            let mut systems = Vec::new();
            for system in SYSTEMS {
                let Measured {
                    times_us: mut times,
                    cpu: used,
                } = warm_cell(&lab, system, &scenario, rounds)
                    .with_context(|| format!("{} {pattern} {placement}", system.label()))?;
                times.sort_by(f64::total_cmp);
                let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
                systems.push(Summary {
                    p50_us: at(0.5),
                    p90_us: at(0.9),
                    cpu: used,
                });
            }
            lab.clean(System::Redis, &scenario)?;
            cells.push(Cell { scenario, systems });
        }
    }
    Ok(cells)
}

/// `rounds` runs of `scenario` through `system` by the same running
/// functions; each run's time in µs, warm-up left out, and the CPU a run
/// took (its mean over the runs after the first, or after the warm-up).
fn warm_cell(
    lab: &Lab,
    system: System,
    scenario: &Scenario,
    rounds: usize,
) -> anyhow::Result<Measured> {
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
    let mut consumers = start(&scenario.consumers(), false)?;
    let mut producers = start(&scenario.producers(), true)?;
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
    let servers = lab.servers(system, scenario);
    let servers_ns = || servers.iter().map(|&pid| usage::cpu_ns(pid)).sum::<u64>();
    // The functions' own CPU, cumulative in their reports: counted from the
    // end of the first counted run's predecessor.
    let from = (rounds / 10).max(1);
    let (mut functions_from, mut servers_from) = (0.0, 0);
    let mut functions_now = 0.0;
    let mut times = Vec::new();
    for round in 0..rounds {
        let (micros, produced, consumed) = match system {
            System::Floki => {
                go(&mut consumers)?;
                std::thread::sleep(HEAD_START);
                go(&mut producers)?;
                let (produced, consumed) = (reports(&mut producers)?, reports(&mut consumers)?);
                let micros = span(&consumed).1.saturating_sub(span(&produced).0) as f64 / 1e3;
                (micros, produced, consumed)
            }
            _ => {
                go(&mut producers)?;
                let produced = reports(&mut producers)?;
                let (p_first, p_last) = span(&produced);
                go(&mut consumers)?;
                let consumed = reports(&mut consumers)?;
                let (c_first, c_last) = span(&consumed);
                let micros = (p_last - p_first + c_last - c_first) as f64 / 1e3;
                (micros, produced, consumed)
            }
        };
        functions_now = produced
            .iter()
            .chain(&consumed)
            .map(|r| r.cpu_seconds)
            .sum();
        if round + 1 == from {
            (functions_from, servers_from) = (functions_now, servers_ns());
        }
        let received: u64 = consumed.iter().map(|r| r.bytes).sum();
        if received != scenario.delivered() {
            bail!(
                "round {round}: the consumers received {received} bytes of the {} sent",
                scenario.delivered()
            );
        }
        if round >= rounds / 10 {
            times.push(micros);
        }
    }
    let runs = rounds.saturating_sub(from).max(1) as f64;
    let cpu = Cpu {
        functions_us: (functions_now - functions_from) * 1e6 / runs,
        servers_us: servers_ns().saturating_sub(servers_from) as f64 / 1e3 / runs,
    };
    for function in consumers.into_iter().chain(producers) {
        function.wait()?;
    }
    Ok(Measured {
        times_us: times,
        cpu,
    })
}

/// The cells as a Markdown table, the floor's verdict, and JSON.
pub fn report(cells: &[Cell], rounds: usize) -> (String, String, serde_json::Value) {
    let mut table = String::from(
        "| pattern | placement | Floki p50 | Floki p90 | Redis p50 | Redis p90 | Floki's speed-up | Floki CPU per run: functions + agents | Redis CPU per run: functions + server |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut slower = Vec::new();
    let mut rows = Vec::new();
    for cell in cells {
        let (floki, redis) = (cell.systems[0], cell.systems[1]);
        let speedup = redis.p50_us / floki.p50_us;
        if speedup < 1.0 {
            slower.push(format!(
                "{} {} ({speedup:.2}x)",
                cell.scenario.pattern, cell.scenario.placement
            ));
        }
        let cpu = |used: Cpu| format!("{:.0} + {:.0} µs", used.functions_us, used.servers_us);
        table.push_str(&format!(
            "| {} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {speedup:.2}x | {} | {} |\n",
            cell.scenario.pattern,
            cell.scenario.placement,
            floki.p50_us,
            floki.p90_us,
            redis.p50_us,
            redis.p90_us,
            cpu(floki.cpu),
            cpu(redis.cpu),
        ));
        rows.push(json!({
            "pattern": cell.scenario.pattern, "placement": cell.scenario.placement,
            "size": human(cell.scenario.size),
            "floki_p50_us": floki.p50_us, "floki_p90_us": floki.p90_us,
            "redis_p50_us": redis.p50_us, "redis_p90_us": redis.p90_us,
            "floki_cpu_functions_us": floki.cpu.functions_us,
            "floki_cpu_agents_us": floki.cpu.servers_us,
            "redis_cpu_functions_us": redis.cpu.functions_us,
            "redis_cpu_server_us": redis.cpu.servers_us,
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
