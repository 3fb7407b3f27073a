//! `floki-agent run`.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use floki_agent::agent::{
    self, AgentConfig,
    control::peers::{
        PeerDirectory, StaticPeers,
        auth::ClusterSecret,
        dns::{DiscoveredPeers, DnsDiscovery},
        parse_peer, parse_peers_file,
    },
    datapath::DatapathConfig,
    store::StoreConfig,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::cli::RunArgs;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    raise_descriptor_limit();
    let node = match args.node {
        Some(node) => node,
        None => nix::unistd::gethostname()
            .context("reading the hostname for the node name (or pass --node)")?
            .to_string_lossy()
            .into_owned(),
    };
    let mut peers = args
        .peers
        .iter()
        .map(|text| parse_peer(text).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("--peer")?;
    if let Some(path) = &args.peers_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the peers file {}", path.display()))?;
        peers.extend(
            parse_peers_file(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("peers file {}", path.display()))?,
        );
    }
    let secret = cluster_secret(
        args.cluster_secret_file.as_deref(),
        args.cluster_secret.as_deref(),
    )?;
    if secret.is_none() && (!peers.is_empty() || args.discover_dns.is_some()) {
        anyhow::bail!(
            "this agent has peers but no cluster secret: give every agent the same one with --cluster-secret-file or FLOKI_CLUSTER_SECRET (docs/SECURITY.md)"
        );
    }
    // Discovered peers come on top of the listed ones; the agents' port is
    // this agent's own.
    let (directory, discovery): (Arc<dyn PeerDirectory>, _) = match (args.discover_dns, &secret) {
        (Some(name), Some(secret)) => {
            let directory = Arc::new(DiscoveredPeers::new(peers));
            let discovery = DnsDiscovery {
                name,
                port: args.peer_listen.port(),
                secret: secret.clone(),
                server: args.discover_dns_server,
                every: Duration::from_secs(args.discover_every.max(1)),
            };
            (directory.clone(), Some((discovery, directory)))
        }
        _ => (Arc::new(StaticPeers(peers)), None),
    };
    let config = AgentConfig {
        node,
        listen: args.listen,
        peer_listen: args.peer_listen,
        secret,
        admin: args.admin,
        socket: args.socket,
        datapath: DatapathConfig {
            cgroup: args.cgroup,
            pin_dir: args.pin_dir,
            disabled: args.no_ebpf.then(|| "disabled with --no-ebpf".to_owned()),
            pretend_missing: args.pretend_kernel_lacks,
        },
        window: args.window.0,
        huge_rings: args.huge_rings,
        history: args.history,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        peers: directory,
        discovery,
        workflow_channels_only: args.workflow_channels_only,
        pipes_dir: args.pipes_dir,
        metrics: args.metrics,
        store: StoreConfig {
            dir: args.store.store_dir,
            memory: args.store.store_memory.0,
            disk: args.store.store_disk.0,
            s3: args.store.store_s3,
            grace: args.store.store_after,
            retain: args.store.store_retain,
        },
    };
    let (tx, rx) = mpsc::channel(2);
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    agent::run(config, rx).await?;
    Ok(())
}

/// The cluster secret, from `--cluster-secret-file` or
/// `FLOKI_CLUSTER_SECRET`; none if neither is given.
fn cluster_secret(
    file: Option<&std::path::Path>,
    text: Option<&str>,
) -> anyhow::Result<Option<ClusterSecret>> {
    match (file, text) {
        (Some(path), _) => Ok(Some(ClusterSecret::read(path)?)),
        (None, Some(text)) => Ok(Some(
            ClusterSecret::parse(text).context("FLOKI_CLUSTER_SECRET")?,
        )),
        (None, None) => Ok(None),
    }
}

/// Every channel costs the agent a few descriptors (its ends' connections,
/// a ring, a link): the soft limit, often 1,024, would stop it at a few
/// hundred channels. Raises it to the hard limit, and the hard limit to
/// 1,048,576 where the agent may (root, CAP_SYS_RESOURCE).
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const WANTED: u64 = 1 << 20;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let raised = (hard < WANTED && setrlimit(Resource::RLIMIT_NOFILE, WANTED, WANTED).is_ok())
        || setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok();
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((now, _)) if raised => tracing::info!(from = soft, to = now, "descriptor limit raised"),
        _ => tracing::warn!(
            limit = soft,
            "cannot raise the descriptor limit: each channel takes a few descriptors; raise it with `ulimit -n` or the container runtime's nofile limit"
        ),
    }
}
