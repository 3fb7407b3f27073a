//! Command-line interface (clap derive).

use std::{net::SocketAddr, path::PathBuf, str::FromStr};

use clap::{Args, Parser, Subcommand, ValueEnum};
use floki_client::{DEFAULT_AGENT, DEFAULT_SOCKET, Transport};

/// Floki node agent: kernel-spliced data channels between serverless functions.
#[derive(Debug, Parser)]
#[command(name = "floki-agent", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "FLOKI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (as root): attach the eBPF programs, broker
    /// channels, serve status.
    Run(Box<RunArgs>),
    /// Send FILE (or standard input) as the stream of CHANNEL.
    Send(SendArgs),
    /// Receive the stream of CHANNEL into FILE (or standard output).
    Recv(RecvArgs),
    /// Show the agent's datapath, programs, channels, workflows and peers.
    Status(StatusArgs),
    /// Apply a workflow spec (YAML) on every node it names; prints its token.
    Apply(ApplyArgs),
    /// Remove a workflow from every node it was applied on.
    Delete(DeleteArgs),
    /// Probe what the running kernel offers the eBPF datapath (as root);
    /// exits 1 if it lacks something the kernel programs use.
    Kernel(KernelArgs),
    /// Detach and unpin everything a stopped (or crashed) agent left in its
    /// pin directory. Refuses while an agent answers on the admin socket.
    Cleanup(CleanupArgs),
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// bpffs directory of the agent's pins.
    #[arg(long, env = "FLOKI_PIN_DIR", default_value = "/sys/fs/bpf/floki")]
    pub pin_dir: PathBuf,
    /// The agent's admin socket (checked: a running agent is not cleaned up).
    #[arg(long, env = "FLOKI_ADMIN", default_value = "/run/floki/agent.sock")]
    pub admin: PathBuf,
}

#[derive(Debug, Args)]
pub struct KernelArgs {
    /// Print JSON (the `datapath.kernel` object of `status --json`).
    #[arg(long)]
    pub json: bool,
    /// Report FEATURE as missing (as `run --pretend-kernel-lacks`).
    #[arg(long, value_name = "FEATURE", hide = true, value_parser = kernel_feature)]
    pub pretend_kernel_lacks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address for functions' channel connections over TCP. Loopback by
    /// default: functions on other hosts never reach it, and functions in
    /// pods use the Unix socket (--socket). Open it wider only with
    /// --workflow-channels-only or channel secrets (docs/SECURITY.md).
    #[arg(long, env = "FLOKI_LISTEN", default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Address for the other agents: opened only with a cluster secret,
    /// and every caller proves it before any request.
    #[arg(long, env = "FLOKI_PEER_LISTEN", default_value = "0.0.0.0:7879")]
    pub peer_listen: SocketAddr,
    /// The cluster secret every agent proves to the others: a file of one
    /// secret per line, at least 16 bytes each; the first is this agent's,
    /// the others are still accepted (rotation, docs/SECURITY.md). Required
    /// with --peer, --peers-file or --discover-dns.
    #[arg(long, env = "FLOKI_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster secret itself (lines as in --cluster-secret-file), from
    /// the environment (a Kubernetes Secret); as a flag it would show in
    /// the process list.
    #[arg(
        long,
        env = "FLOKI_CLUSTER_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        conflicts_with = "cluster_secret_file"
    )]
    pub cluster_secret: Option<String>,
    /// Admin socket (status), created with mode 0600.
    #[arg(long, env = "FLOKI_ADMIN", default_value = "/run/floki/agent.sock")]
    pub admin: PathBuf,
    /// Unix socket for functions on this node (mode 0666; workflow tokens
    /// guard the channels). The agent hands its clients here their data
    /// sockets, and across nodes the agents' link itself.
    #[arg(long, env = "FLOKI_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// cgroup v2 directory to attach sock_ops to [default: the cgroup v2 root
    /// found in /proc/mounts]. Only sockets of processes in it are spliced.
    #[arg(long, env = "FLOKI_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// Don't load eBPF: every channel uses plain TCP.
    #[arg(long, env = "FLOKI_NO_EBPF")]
    pub no_ebpf: bool,
    /// Behave as if the kernel lacked FEATURE (a name `status` lists under
    /// kernel features), to rehearse the fallback on a kernel that has it.
    #[arg(long, value_name = "FEATURE", hide = true, value_parser = kernel_feature)]
    pub pretend_kernel_lacks: Vec<String>,
    /// Node name [default: the hostname].
    #[arg(long, env = "FLOKI_NODE")]
    pub node: Option<String>,
    /// Default flow-control window per channel: at most this much of a stream
    /// is in flight (kernel or agent memory) at any time.
    #[arg(long, env = "FLOKI_WINDOW", default_value = "8MiB")]
    pub window: Size,
    /// Put shm rings on 2 MiB pages (a tmpfs of the agent's own with
    /// huge=within_size, attached to no path), at most 64 rings at a time,
    /// kept ones included: a new ring's first MiB then costs one page
    /// allocation instead of 256 (docs/BENCHMARKS.md: a 1 MiB stream on a
    /// new channel about twice as fast), but each such ring takes at least
    /// 2 MiB. `--huge-rings=false`: memory files of 4 KiB pages only.
    #[arg(
        long,
        env = "FLOKI_HUGE_RINGS",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub huge_rings: bool,
    /// bpffs directory for the agent's pins.
    #[arg(long, env = "FLOKI_PIN_DIR", default_value = "/sys/fs/bpf/floki")]
    pub pin_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9478).
    #[arg(long, env = "FLOKI_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Finished channels kept in status.
    #[arg(long, env = "FLOKI_HISTORY", default_value_t = 256)]
    pub history: usize,
    /// Seconds a graceful stop (SIGTERM/SIGINT) waits for active channels.
    #[arg(long, env = "FLOKI_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// A peer agent, NAME=HOST:PORT (repeatable; in the environment,
    /// comma-separated); PORT is its --peer-listen port.
    #[arg(
        long = "peer",
        env = "FLOKI_PEERS",
        value_delimiter = ',',
        value_name = "NAME=HOST:PORT"
    )]
    pub peers: Vec<String>,
    /// A file of peers, one NAME=HOST:PORT per line.
    #[arg(long, env = "FLOKI_PEERS_FILE")]
    pub peers_file: Option<PathBuf>,
    /// Find peers through DNS: every address NAME resolves to is an agent
    /// (on Kubernetes, the DaemonSet's headless Service, e.g.
    /// floki-agent.floki-system.svc.cluster.local). Adds to --peer.
    #[arg(long, env = "FLOKI_DISCOVER_DNS", value_name = "NAME")]
    pub discover_dns: Option<String>,
    /// DNS server for --discover-dns [default: the system's resolver].
    #[arg(
        long,
        env = "FLOKI_DISCOVER_DNS_SERVER",
        value_name = "IP:PORT",
        requires = "discover_dns"
    )]
    pub discover_dns_server: Option<SocketAddr>,
    /// Seconds between DNS lookups for --discover-dns.
    #[arg(
        long,
        env = "FLOKI_DISCOVER_EVERY",
        default_value_t = 10,
        requires = "discover_dns"
    )]
    pub discover_every: u64,
    /// Serve only channels of applied workflows (with their token): no
    /// plain channels (the DaemonSet's setting).
    #[arg(long, env = "FLOKI_WORKFLOW_CHANNELS_ONLY")]
    pub workflow_channels_only: bool,
    /// Expose the edges of applied workflows as named pipes (FIFOs) in DIR,
    /// for functions that only do file I/O: `DIR/<workflow>/<edge>.in` for
    /// the producer, `DIR/<workflow>/<edge>.out` for the consumer, and a
    /// `.status` file beside each with the verdict of its last stream
    /// (docs/WORKFLOWS.md) [default: no pipes].
    #[arg(long, env = "FLOKI_PIPES_DIR", value_name = "DIR")]
    pub pipes_dir: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The store: streams kept for consumers that start after their producers
/// exited (docs/WORKFLOWS.md, "Delivery").
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Spill directory of the store (streams there survive a restart).
    #[arg(long, env = "FLOKI_STORE_DIR", default_value = "/var/lib/floki/store")]
    pub store_dir: PathBuf,
    /// Memory the store may use for streams, all together.
    #[arg(long, env = "FLOKI_STORE_MEMORY", default_value = "1GiB")]
    pub store_memory: Size,
    /// Disk the store may use in --store-dir, all together.
    #[arg(long, env = "FLOKI_STORE_DISK", default_value = "16GiB")]
    pub store_disk: Size,
    /// A third tier, in an S3-compatible object store: s3://BUCKET[/PREFIX]
    /// (endpoint and credentials from AWS_ENDPOINT, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP) [default: none].
    #[arg(long, env = "FLOKI_STORE_S3", value_name = "URL")]
    pub store_s3: Option<String>,
    /// How long a producer whose window is full waits for its consumer
    /// before the store takes its stream (one finishing a stream that fits
    /// in its window does not wait); across nodes, how long a stream pushed
    /// ahead waits for its consumer.
    #[arg(long, env = "FLOKI_STORE_AFTER", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub store_after: std::time::Duration,
    /// How long the stream of a plain channel is kept for its consumer
    /// (workflow edges set theirs with `retain:`).
    #[arg(long, env = "FLOKI_STORE_RETAIN", default_value = "1h", value_parser = humantime::parse_duration)]
    pub store_retain: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The workflow spec (YAML); `-` reads it from standard input.
    pub file: PathBuf,
    /// The agent's admin socket.
    #[arg(long, env = "FLOKI_ADMIN", default_value = "/run/floki/agent.sock")]
    pub admin: PathBuf,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Workflow name.
    pub name: String,
    /// The agent's admin socket.
    #[arg(long, env = "FLOKI_ADMIN", default_value = "/run/floki/agent.sock")]
    pub admin: PathBuf,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// `CHANNEL [FILE]` for a plain channel; `[FILE]` with --workflow.
    /// FILE defaults to standard input.
    #[arg(num_args = 0..=2, value_name = "CHANNEL] [FILE")]
    pub positionals: Vec<String>,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub end: EndArgs,
    /// Shuffle producers: a directory with one file per consumer, named
    /// after it (partition j goes to consumer j).
    #[arg(long, value_name = "DIR")]
    pub partition_dir: Option<PathBuf>,
    /// Give up if no receiver joins within this many seconds [default: wait;
    /// with the store, only until the agent takes the stream].
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Wait for the receiver rather than let the agent store the stream
    /// when the receiver is not there yet [default: the agent stores it
    /// after --store-after, and this command says "stored"].
    #[arg(long)]
    pub live: bool,
}

#[derive(Debug, Args)]
pub struct RecvArgs {
    /// Channel name (plain channels; omit with --workflow).
    pub channel: Option<String>,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub end: EndArgs,
    /// Write the stream to FILE [default: standard output]. The file appears
    /// only once the whole stream is verified.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Consumers with several producers (gather, shuffle): one file per
    /// producer in DIR, named after it.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Flow-control window [default: the agent's].
    #[arg(long)]
    pub window: Option<Size>,
    /// Give up if no sender joins within this many seconds [default: wait].
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Address to bind the data listener to and advertise to the sender
    /// [default: the address this client reaches the agent from].
    #[arg(long)]
    pub data_addr: Option<SocketAddr>,
}

/// What `send` and `recv` share: where the agent is, and how this end
/// pairs.
#[derive(Debug, Args)]
pub struct EndArgs {
    /// The agent: HOST:PORT, or unix:PATH for its Unix socket (the agent's
    /// default is unix:/run/floki/floki.sock), where it hands over the data
    /// sockets and no byte passes through an agent.
    #[arg(long, env = "FLOKI_AGENT", default_value = DEFAULT_AGENT)]
    pub agent: String,
    /// Insist on a transport: shm, splice or tcp (experiments; the agent
    /// refuses the channel if it cannot provide it) [default: the agent picks].
    #[arg(long)]
    pub transport: Option<Transport>,
    /// Plain channels: a secret both ends give; the agent pairs this end
    /// only with one that gave the same, so nobody else who reaches the
    /// agent can take or feed the stream (docs/SECURITY.md).
    #[arg(
        long,
        env = "FLOKI_CHANNEL_SECRET",
        hide_env_values = true,
        conflicts_with = "workflow"
    )]
    pub secret: Option<String>,
    /// The run this function belongs to: an orchestrator's execution id
    /// (Argo's `{{workflow.uid}}`, a Step Functions execution). A consumer
    /// then reads only a stored stream of its own run, and waits for its
    /// producer otherwise (docs/WORKFLOWS.md, "Runs").
    #[arg(long, env = "FLOKI_RUN")]
    pub run: Option<String>,
}

/// A function's place in an applied workflow. A platform that runs the
/// workflow's functions sets the environment variables once per function
/// (the Python package reads the same ones).
#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// Workflow name (from `floki-agent apply`).
    #[arg(long, env = "FLOKI_WORKFLOW", requires_all = ["edge", "function"])]
    pub workflow: Option<String>,
    /// Edge name.
    #[arg(long, env = "FLOKI_EDGE", requires = "workflow")]
    pub edge: Option<String>,
    /// This function's name in the workflow.
    #[arg(
        long = "as",
        env = "FLOKI_FUNCTION",
        value_name = "FUNCTION",
        requires = "workflow"
    )]
    pub function: Option<String>,
    /// The workflow's token (printed by `floki-agent apply`).
    #[arg(long, env = "FLOKI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's admin socket.
    #[arg(long, env = "FLOKI_ADMIN", default_value = "/run/floki/agent.sock")]
    pub admin: PathBuf,
    /// Print JSON (stable keys, for tools).
    #[arg(long)]
    pub json: bool,
    /// Refresh in place every `--interval` seconds until interrupted (with
    /// `--json`: one JSON document per line).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with `--watch`.
    #[arg(long, default_value_t = 1.0, requires = "watch")]
    pub interval: f64,
}

/// A byte size: `1048576`, `64KiB`, `8MiB`, `1GB`.
#[derive(Clone, Copy, Debug)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        bytesize::ByteSize::from_str(s)
            .map(|size| Self(size.as_u64()))
            .map_err(|err| format!("{s:?} is not a byte size like 8MiB or 1048576: {err}"))
    }
}

fn kernel_feature(name: &str) -> Result<String, String> {
    use floki_agent::agent::datapath::kernel_support::feature_names;
    if feature_names().any(|known| known == name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "unknown kernel feature; one of: {}",
            feature_names().collect::<Vec<_>>().join(", ")
        ))
    }
}
