//! The node agent: brokers channels between co-located functions and sets
//! up the kernel splice for each pair. It never carries channel bytes: if it
//! stops, streams in flight carry on between the two functions' sockets.
//!
//! Structure (after tokio's mini-redis): [`run`] binds the listeners and runs
//! the accept loop until a shutdown signal; each control connection is a
//! [`session`]; [`registry`] pairs ends and tracks channels; [`datapath`]
//! owns the kernel programs; [`admin`] serves status.

mod admin;
pub mod datapath;
mod registry;
mod session;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

pub use admin::{Identity, status};
use datapath::{Datapath, DatapathConfig};
use registry::Registry;
use tokio::{net::TcpListener, sync::mpsc};
use tracing::{info, warn};

/// Settings of `floki-agent run`.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Node name.
    pub node: String,
    /// Address for channel (control) connections.
    pub listen: SocketAddr,
    /// Admin socket path.
    pub admin: PathBuf,
    /// Datapath settings.
    pub datapath: DatapathConfig,
    /// Default flow-control window per channel, in bytes.
    pub window: u64,
    /// Finished channels kept for status.
    pub history: usize,
    /// How long a graceful stop waits for active channels.
    pub shutdown_grace: Duration,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The channel listener could not be bound.
    #[error("cannot listen for channels on {addr} (is another agent running? see --listen)")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin socket could not be set up.
    #[error("cannot set up the admin socket {path} (see --admin)")]
    Admin {
        /// Path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another agent serves the admin socket.
    #[error("another agent is serving the admin socket {path}; stop it or use --admin")]
    AdminInUse {
        /// Path.
        path: PathBuf,
    },
}

/// Runs the agent until the first message on `signals` (graceful stop: no
/// new channels, active ones may finish within the grace period, then the
/// programs are detached). A second message stops at once.
pub async fn run(config: AgentConfig, mut signals: mpsc::Receiver<()>) -> Result<(), AgentError> {
    let started = Instant::now();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    let admin = admin::AdminServer::bind(&config.admin).await?;
    let admin_path = admin.path().to_owned();
    let datapath = Arc::new(Datapath::start(&config.datapath));
    let registry = Arc::new(Registry::new(
        config.node.clone(),
        datapath.clone(),
        config.window,
        config.history,
    ));
    let listen = listener.local_addr().unwrap_or(config.listen);
    let identity = Arc::new(Identity { listen, started });
    let admin_task = tokio::spawn(admin.serve(registry.clone(), identity));
    info!(
        node = %config.node,
        %listen,
        admin = %admin_path.display(),
        "floki-agent ready"
    );

    loop {
        tokio::select! {
            _ = signals.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    tokio::spawn(session::serve(stream, from, registry.clone()));
                }
                Err(err) => warn!(%err, "accepting a channel connection failed"),
            },
        }
    }

    info!("stopping: no new channels; active channels may finish");
    drop(listener);
    registry.close();
    tokio::select! {
        left = registry.drain(config.shutdown_grace) => if left > 0 {
            warn!(left, grace = ?config.shutdown_grace, "channels still active at the end of the grace period; their ends will report failures if they do not complete");
        },
        _ = signals.recv() => warn!("second signal: stopping now"),
    }
    admin_task.abort();
    let _ = std::fs::remove_file(&admin_path);
    datapath.shutdown();
    info!("stopped");
    Ok(())
}
