//! `cargo xtask bench paper`: the Floki paper's comparison, reproducible. The
//! same workflows run through Floki, through an S3 object store (the
//! benchmark's own s3s-fs, files on local disk, or `--s3-endpoint`) and
//! through Redis, on one node and across two network-namespace nodes, for
//! data sets of 1 MiB to 4 GiB (16 GiB with `--huge`). Every transfer is
//! checked byte for byte. Through the stores, a consumer starts once its
//! producers' objects are complete, as on a serverless platform; Floki runs
//! both ways: live (producers and consumers start together and the consumer
//! reads while the producer writes) and in that same sequential order (the
//! agents store each stream, in memory or spilled to disk, until its
//! consumer starts).

pub mod endpoint;
mod plots;
pub use plots::register_font;
mod results;
pub mod scenario;
pub mod warm;

mod content;
pub mod usage;

use std::{
    cell::RefCell,
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Stdio},
    str::FromStr as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use floki_tests::cluster::{Cluster, ClusterNode, Spec};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use endpoint::{Access, Plan, Report};
pub use floki_tests::servers::{self, Place, Server};
use results::{Key, Sample};
use scenario::{PRODUCER_NODE, Pattern, Placement, Scenario};

#[derive(Debug, Args)]
pub struct Options {
    /// Data set sizes [default: 1MiB,16MiB,256MiB,1GiB,4GiB].
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<String>,
    /// Add a 16 GiB data set.
    #[arg(long)]
    pub huge: bool,
    /// The smallest sizes (1 MiB, 16 MiB), one run, nothing written: what
    /// the test suite runs so that the benchmark cannot rot.
    #[arg(long)]
    pub quick: bool,
    /// Runs per measurement; tables show medians and the range.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Only these patterns [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub patterns: Vec<Pattern>,
    /// Only these placements [default: both].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub placements: Vec<Placement>,
    /// Another S3 service instead of the benchmark's own s3s-fs (a MinIO,
    /// a cloud bucket); credentials from the usual AWS environment variables.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// Bucket on `--s3-endpoint`.
    #[arg(long, default_value = servers::BUCKET)]
    pub s3_bucket: String,
    /// Where the benchmark's s3s-fs keeps its objects (a local disk)
    /// [default: target/paper-s3 in the workspace].
    #[arg(long)]
    pub s3_dir: Option<PathBuf>,
    /// Leave Redis out.
    #[arg(long)]
    pub no_redis: bool,
    /// Leave out Floki in the sequential order (stored in memory, spilled
    /// to disk).
    #[arg(long)]
    pub no_sequential: bool,
    /// Print only; leave docs/ alone.
    #[arg(long)]
    pub no_write: bool,
}

/// The systems compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// Live: producers and consumers run together.
    Floki,
    /// Sequential: each consumer starts once its producers exited; the
    /// agents keep the streams in memory.
    FlokiMemory,
    /// Sequential, the agents' memory tier off: streams spilled to disk.
    FlokiDisk,
    S3,
    Redis,
    /// The ceiling of a warm run (`bench small`): each producer holds a
    /// TCP connection to each of its consumers, opened before the runs,
    /// and writes each stream on it as a length and the bytes; the
    /// consumer checks them and answers one byte. No agent, server,
    /// framing, credits or checksum.
    BareTcp,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            Self::Floki => "Floki",
            Self::FlokiMemory => "Floki stored (memory)",
            Self::FlokiDisk => "Floki stored (disk)",
            Self::S3 => "S3 (s3s-fs)",
            Self::Redis => "Redis",
            Self::BareTcp => "bare TCP",
        }
    }

    /// Floki, in either order.
    pub fn is_floki(self) -> bool {
        matches!(self, Self::Floki | Self::FlokiMemory | Self::FlokiDisk)
    }

    /// Whether consumers start only once their producers exited.
    pub fn sequential(self) -> bool {
        !matches!(self, Self::Floki | Self::BareTcp)
    }

    /// The agents' store: what the stored variants keep in memory.
    fn cluster(self) -> Agents {
        match self {
            Self::FlokiDisk => Agents::Spilling,
            _ => Agents::Main,
        }
    }
}

/// Which set of agents a system runs on: the main one (memory tier of
/// `MEMORY_TIER`), or one whose store has no memory tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Agents {
    Main,
    Spilling,
}

/// The main agents' memory tier: a 4 GiB one-to-one stream fits whole; two
/// agents full stay well within the machine's 24 GiB (the rest spills).
const MEMORY_TIER: &str = "6GiB";

const MIB: u64 = 1 << 20;

/// The first port bare TCP consumers listen on (one each, in the
/// scenario's order, on their node's address).
const BARE_TCP_PORT: u16 = 7950;

/// The patterns or placements an option chose, or all of them if it chose
/// none.
pub fn chosen_or_all<T: Clone>(chosen: &[T], all: &[T]) -> Vec<T> {
    if chosen.is_empty() { all } else { chosen }.to_vec()
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let sizes = sizes(opts)?;
    let runs = if opts.quick { 1 } else { opts.runs.max(1) };
    let patterns = chosen_or_all(&opts.patterns, &Pattern::ALL);
    let placements = chosen_or_all(&opts.placements, &Placement::ALL);
    let mut systems = vec![System::Floki];
    if !opts.no_sequential {
        systems.extend([System::FlokiMemory, System::FlokiDisk]);
    }
    systems.push(System::S3);
    if !opts.no_redis {
        systems.push(System::Redis);
    }

    let lab = Lab::start(opts, &placements, &systems)?;
    let mut scenarios = Vec::new();
    for &size in &sizes {
        for &placement in &placements {
            for &pattern in &patterns {
                scenarios.push(Scenario {
                    pattern,
                    placement,
                    size,
                });
            }
        }
    }
    let progress = ProgressBar::new((scenarios.len() * runs * systems.len()) as u64);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut samples: BTreeMap<Key, Vec<Sample>> = BTreeMap::new();
    for scenario in &scenarios {
        for run in 0..runs {
            for &system in &systems {
                progress.set_message(format!(
                    "{} · {} · {} · {} · run {}",
                    system.label(),
                    scenario.pattern,
                    scenario.placement,
                    human(scenario.size),
                    run + 1
                ));
                let sample = lab.run_once(system, scenario).inspect_err(|_| {
                    // What the agents said (warnings: the benchmark keeps
                    // their logs quiet) is all a CI run keeps of a failure.
                    for node in &lab.agents(system).nodes {
                        node.agent.print_log_tail();
                    }
                });
                let sample = sample.with_context(|| {
                    format!(
                        "{} {} {} {}",
                        system.label(),
                        scenario.pattern,
                        scenario.placement,
                        human(scenario.size)
                    )
                })?;
                samples
                    .entry(Key::new(system, scenario))
                    .or_default()
                    .push(sample);
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();

    let summary = results::Summary::new(&scenarios, &systems, &samples);
    let tables = summary.tables();
    let floors = summary.floors();
    println!("{tables}\n{floors}");
    if opts.quick || opts.no_write {
        return Ok(());
    }
    let plots = plots::draw(&summary)?;
    summary.write(&tables, &floors, &plots, runs, opts)
}

fn sizes(opts: &Options) -> anyhow::Result<Vec<u64>> {
    let mut sizes: Vec<u64> = if opts.quick {
        vec![MIB, 16 * MIB]
    } else if opts.sizes.is_empty() {
        vec![MIB, 16 * MIB, 256 * MIB, 1024 * MIB, 4096 * MIB]
    } else {
        opts.sizes
            .iter()
            .map(|text| {
                bytesize::ByteSize::from_str(text)
                    .map(|size| size.as_u64())
                    .map_err(|err| anyhow::anyhow!("--sizes {text}: {err}"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    if opts.huge {
        sizes.push(16384 * MIB);
    }
    for size in &sizes {
        if size % (16 * 1024) != 0 {
            bail!(
                "size {size} does not split into 16 equal shuffle partitions of whole KiB: use multiples of 16 KiB"
            );
        }
    }
    Ok(sizes)
}

pub fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// Two namespace nodes with their agents, the workflows applied, and the
/// baselines' servers on the producers' node; for Floki spilled to disk,
/// two more nodes whose agents' store has no memory tier.
struct Lab {
    cluster: Cluster,
    spilling: Option<Cluster>,
    /// Workflow name and token per set of agents and placement (replaced
    /// after a stored run: deleting the workflow frees what was stored).
    workflows: RefCell<BTreeMap<(Agents, Placement), (String, String)>>,
    s3: Option<Server>,
    /// `--s3-endpoint`, when given.
    external_s3: Option<Access>,
    redis: Option<Server>,
}

impl Lab {
    fn start(opts: &Options, placements: &[Placement], systems: &[System]) -> anyhow::Result<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("the benchmark starts agents (eBPF) and network namespaces: run it as root");
        }
        // The agents' disk writes are measured: keep their logs to warnings.
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("FLOKI_TEST_AGENT_LOG", "warn") };
        let nodes = [PRODUCER_NODE, "node-b"];
        // Streams that do not fit in memory together (a 4 GiB broadcast is
        // four of 4 GiB) spill: room for them on disk.
        let cluster = Cluster::start_with(
            &nodes,
            &["--store-memory", MEMORY_TIER, "--store-disk", "64GiB"],
        );
        cluster.wait_connected();
        // Spill files on the workspace's disk, as s3s-fs's objects.
        let spill_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/paper-spill");
        let _ = std::fs::remove_dir_all(&spill_root);
        let spilling = systems.contains(&System::FlokiDisk).then(|| {
            let cluster = Cluster::start_with_each(&nodes, |node| {
                let dir = spill_root.join(node);
                vec![
                    "--store-memory".into(),
                    "0".into(),
                    "--store-disk".into(),
                    "64GiB".into(),
                    "--store-dir".into(),
                    dir.display().to_string(),
                ]
            });
            cluster.wait_connected();
            cluster
        });
        let mut workflows = BTreeMap::new();
        for &placement in placements {
            let agents = [(Agents::Main, &cluster)]
                .into_iter()
                .chain(spilling.iter().map(|c| (Agents::Spilling, c)));
            for (which, agents) in agents {
                workflows.insert((which, placement), apply(agents, placement)?);
            }
        }
        let (s3, external_s3) = match &opts.s3_endpoint {
            _ if !systems.contains(&System::S3) => (None, None),
            Some(endpoint) => (
                None,
                Some(Access::S3 {
                    endpoint: endpoint.clone(),
                    bucket: opts.s3_bucket.clone(),
                    credentials: None,
                }),
            ),
            None => {
                let root = opts.s3_dir.clone().unwrap_or_else(|| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/paper-s3")
                });
                let _ = std::fs::remove_dir_all(&root);
                (
                    Some(Server::s3s_fs(
                        &Place::Node(cluster.node(PRODUCER_NODE)),
                        &root,
                    )?),
                    None,
                )
            }
        };
        let redis = if opts.no_redis || !systems.contains(&System::Redis) {
            None
        } else {
            Some(Server::redis(&Place::Node(cluster.node(PRODUCER_NODE)))?)
        };
        let lab = Self {
            cluster,
            spilling,
            workflows: RefCell::new(workflows),
            s3,
            external_s3,
            redis,
        };
        lab.wait_edges_ready()?;
        Ok(lab)
    }

    /// Proactive set-up: every cross-node stream's link is open.
    fn wait_edges_ready(&self) -> anyhow::Result<()> {
        for cluster in std::iter::once(&self.cluster).chain(&self.spilling) {
            wait_edges_ready(cluster)?;
        }
        Ok(())
    }

    fn agents(&self, system: System) -> &Cluster {
        match (system.cluster(), &self.spilling) {
            (Agents::Spilling, Some(spilling)) => spilling,
            _ => &self.cluster,
        }
    }

    /// `node` of the agents `system` runs on.
    fn node(&self, system: System, name: &str) -> &ClusterNode {
        self.agents(system).node(name)
    }

    fn access(&self, system: System, scenario: &Scenario, node: &ClusterNode) -> Access {
        match system {
            System::Floki | System::FlokiMemory | System::FlokiDisk => {
                let workflows = self.workflows.borrow();
                let (workflow, token) = &workflows[&(system.cluster(), scenario.placement)];
                Access::Floki {
                    agent: format!("unix:{}", node.agent.socket.display()),
                    workflow: workflow.clone(),
                    token: token.clone(),
                    edge: scenario.pattern.short().to_owned(),
                    live: false,
                }
            }
            System::S3 => match (&self.s3, &self.external_s3) {
                (Some(server), _) => Access::s3(server.s3_endpoint(&node.name)),
                (None, Some(external)) => external.clone(),
                (None, None) => unreachable!("one of them is set"),
            },
            System::Redis => Access::Redis {
                url: self
                    .redis
                    .as_ref()
                    .expect("Redis runs when measured")
                    .redis_url(&node.name),
            },
            System::BareTcp => {
                let at = self
                    .node(system, scenario.placement.consumer_node())
                    .ip
                    .clone();
                Access::BareTcp {
                    consumers: scenario
                        .consumers()
                        .into_iter()
                        .enumerate()
                        .map(|(i, consumer)| {
                            (consumer, format!("{at}:{}", BARE_TCP_PORT + i as u16))
                        })
                        .collect(),
                }
            }
        }
    }

    /// The processes whose usage counts for `system`, besides the functions.
    fn servers(&self, system: System, scenario: &Scenario) -> Vec<u32> {
        match system {
            System::Floki | System::FlokiMemory | System::FlokiDisk => {
                let mut nodes = vec![PRODUCER_NODE, scenario.placement.consumer_node()];
                nodes.dedup();
                nodes
                    .into_iter()
                    .map(|n| self.node(system, n).agent.pid())
                    .collect()
            }
            System::S3 => self.s3.iter().map(|s| s.pid).collect(),
            System::Redis => self.redis.iter().map(|s| s.pid).collect(),
            System::BareTcp => Vec::new(),
        }
    }

    fn spawn(&self, node: &ClusterNode, args: &[String]) -> anyhow::Result<Child> {
        let mut cmd = peer_command(node, args)?;
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().context("starting a function")
    }

    /// Starts one function per name in `functions`, on `node`.
    fn start_functions(
        &self,
        system: System,
        scenario: &Scenario,
        functions: &[String],
        produce: bool,
    ) -> anyhow::Result<Vec<Child>> {
        let node = self.function_node(system, scenario, produce);
        self.plans(system, scenario, functions, produce)
            .iter()
            .map(|plan| {
                self.spawn(
                    node,
                    &["paper-endpoint".to_owned(), serde_json::to_string(plan)?],
                )
            })
            .collect()
    }

    /// Where `scenario`'s producers (or consumers) run.
    fn function_node(&self, system: System, scenario: &Scenario, produce: bool) -> &ClusterNode {
        if produce {
            self.node(system, PRODUCER_NODE)
        } else {
            self.node(system, scenario.placement.consumer_node())
        }
    }

    /// What each function named in `functions` does.
    fn plans(
        &self,
        system: System,
        scenario: &Scenario,
        functions: &[String],
        produce: bool,
    ) -> Vec<Plan> {
        let node = self.function_node(system, scenario, produce);
        let all = scenario.streams();
        functions
            .iter()
            .map(|function| {
                let streams = all
                    .iter()
                    .filter(|s| {
                        if produce {
                            &s.producer == function
                        } else {
                            &s.consumer == function
                        }
                    })
                    .cloned()
                    .collect();
                Plan {
                    access: self.access(system, scenario, node),
                    function: function.clone(),
                    produce,
                    streams,
                }
            })
            .collect()
    }

    /// One run of `scenario` through `system`.
    fn run_once(&self, system: System, scenario: &Scenario) -> anyhow::Result<Sample> {
        let servers = self.servers(system, scenario);
        for &pid in &servers {
            usage::reset_peak(pid);
        }
        let before: Vec<usage::Reading> = servers.iter().map(|&pid| usage::read(pid)).collect();

        let (producers, consumers) = (scenario.producers(), scenario.consumers());
        let (produced, consumed) = if !system.sequential() {
            // Together: the consumers read while the producers write.
            let consuming = self.start_functions(system, scenario, &consumers, false)?;
            let producing = self.start_functions(system, scenario, &producers, true)?;
            (reports(producing)?, reports(consuming)?)
        } else {
            // A consumer starts once its producers' objects (or, through
            // Floki, their stored streams) are complete.
            let produced = reports(self.start_functions(system, scenario, &producers, true)?)?;
            let consuming = self.start_functions(system, scenario, &consumers, false)?;
            (produced, reports(consuming)?)
        };
        let first = produced.iter().map(|r| r.start_ns).min().unwrap_or(0);
        let last = consumed.iter().map(|r| r.end_ns).max().unwrap_or(0);
        let received: u64 = consumed.iter().map(|r| r.bytes).sum();
        if received != scenario.delivered() {
            bail!(
                "the consumers received {received} bytes of the {} sent",
                scenario.delivered()
            );
        }

        let after: Vec<usage::Reading> = servers.iter().map(|&pid| usage::read(pid)).collect();
        let used: Vec<usage::Reading> = before
            .into_iter()
            .zip(after)
            .map(|(b, a)| usage::since(b, a))
            .collect();
        let functions = produced.iter().chain(&consumed);
        let stored_bytes = self
            .s3
            .as_ref()
            .filter(|_| system == System::S3)
            .and_then(|s| s.data_dir.as_deref())
            .map_or(0, usage::dir_bytes);
        let sample = Sample {
            seconds: last.saturating_sub(first) as f64 / 1e9,
            disk_bytes: used.iter().map(|u| u.write_bytes).sum::<u64>()
                + functions.clone().map(|r| r.write_bytes).sum::<u64>(),
            stored_bytes,
            server_peak_rss: servers
                .iter()
                .map(|&pid| usage::peak_rss(pid))
                .max()
                .unwrap_or(0),
            function_peak_rss: functions
                .clone()
                .map(|r| r.max_rss_bytes)
                .max()
                .unwrap_or(0),
            cpu_seconds: used.iter().map(|u| u.cpu_seconds).sum::<f64>()
                + functions.map(|r| r.cpu_seconds).sum::<f64>(),
        };
        self.clean(system, scenario)?;
        Ok(sample)
    }

    /// Removes a run's objects (not timed); for Floki stored, deletes the
    /// workflow (which frees what its agents stored) and applies it again.
    fn clean(&self, system: System, scenario: &Scenario) -> anyhow::Result<()> {
        match system {
            System::Floki | System::BareTcp => return Ok(()),
            System::FlokiMemory | System::FlokiDisk => {
                let agents = self.agents(system);
                let key = (system.cluster(), scenario.placement);
                let (name, _) = self.workflows.borrow()[&key].clone();
                agents
                    .node(PRODUCER_NODE)
                    .delete(&name)
                    .map_err(anyhow::Error::msg)
                    .context("deleting the benchmark's workflow")?;
                let applied = apply(agents, scenario.placement)?;
                self.workflows.borrow_mut().insert(key, applied);
                return wait_edges_ready(agents);
            }
            System::S3 | System::Redis => {}
        }
        let node = self.node(system, PRODUCER_NODE);
        let mut keys: Vec<(String, u64)> = scenario
            .streams()
            .into_iter()
            .map(|s| (s.key, s.bytes))
            .collect();
        keys.dedup();
        let access = serde_json::to_string(&self.access(system, scenario, node))?;
        let cleaning = self.spawn(
            node,
            &[
                "paper-clean".to_owned(),
                access,
                serde_json::to_string(&keys)?,
            ],
        )?;
        let out = cleaning.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "cleaning up failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Applies the benchmark's workflow for `placement` on `agents`: an edge per
/// pattern, producers on the producers' node; returns its name and token.
fn apply(agents: &Cluster, placement: Placement) -> anyhow::Result<(String, String)> {
    let name = format!("paper-{}", placement.short());
    let mut spec = Spec::new(&name);
    for pattern in Pattern::ALL {
        let scenario = Scenario {
            pattern,
            placement,
            size: MIB,
        };
        for producer in scenario.producers() {
            spec = spec.function(&producer, PRODUCER_NODE);
        }
        for consumer in scenario.consumers() {
            spec = spec.function(&consumer, placement.consumer_node());
        }
        let from = scenario.producers();
        let to = scenario.consumers();
        let from: Vec<&str> = from.iter().map(String::as_str).collect();
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        spec = spec.edge(pattern.short(), &from, &to, pattern.spec_name(), "16MiB");
    }
    let token = agents
        .node(PRODUCER_NODE)
        .apply(&spec.yaml())
        .map_err(anyhow::Error::msg)
        .context("applying the benchmark's workflow")?;
    Ok((name, token))
}

/// Proactive set-up: every cross-node stream's link of `agents` is open.
fn wait_edges_ready(agents: &Cluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = agents.nodes.iter().all(|node| {
            let status = node.agent.status();
            status["workflows"].as_array().is_some_and(|workflows| {
                workflows.iter().all(|w| {
                    w["edges"]
                        .as_array()
                        .is_some_and(|edges| edges.iter().all(|e| e["state"] == "ready"))
                })
            })
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let status = agents.node(PRODUCER_NODE).agent.status();
            bail!("the workflows' edges are not ready after 30 s: {status:#}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `floki-lab peer ARGS` on `node`, in its cgroup.
fn peer_command(node: &ClusterNode, args: &[String]) -> anyhow::Result<std::process::Command> {
    let lab = std::env::current_exe().context("locating floki-lab")?;
    let mut cmd = node.ns.command(lab);
    cmd.arg("peer").args(args);
    node.cgroup.spawn_inside(&mut cmd);
    Ok(cmd)
}

/// Waits for functions and reads their reports.
fn reports(children: Vec<Child>) -> anyhow::Result<Vec<Report>> {
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().context("waiting for a function")?;
            if !out.status.success() {
                bail!(
                    "a function failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            serde_json::from_slice(&out.stdout).context("reading a function's report")
        })
        .collect()
}
