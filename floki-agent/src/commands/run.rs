//! `floki-agent run`.

use std::time::Duration;

use anyhow::Context as _;
use floki_agent::agent::{self, AgentConfig, datapath::DatapathConfig};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::cli::RunArgs;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let node = match args.node {
        Some(node) => node,
        None => nix::unistd::gethostname()
            .context("reading the hostname for the node name (or pass --node)")?
            .to_string_lossy()
            .into_owned(),
    };
    let config = AgentConfig {
        node,
        listen: args.listen,
        admin: args.admin,
        datapath: DatapathConfig {
            cgroup: args.cgroup,
            pin_dir: args.pin_dir,
            disabled: args.no_ebpf.then(|| "disabled with --no-ebpf".to_owned()),
        },
        window: args.window.0,
        history: args.history,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
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
