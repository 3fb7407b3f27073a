//! The admin socket: a Unix socket (mode 0600) that answers status requests.
//! Requests and answers are one JSON object per line.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::debug;

use super::{AgentError, registry::Registry};
use crate::status::Status;

/// A request on the admin socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
enum Request {
    Status,
}

/// The bound admin socket.
pub struct AdminServer {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminServer {
    /// Binds `path` (creating its directory), refusing to steal the socket of
    /// an agent that is still running.
    pub async fn bind(path: &Path) -> Result<Self, AgentError> {
        let err = |source| AgentError::Admin {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(AgentError::AdminInUse {
                    path: path.to_owned(),
                });
            }
            fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves requests until the task is dropped.
    pub async fn serve(self, registry: Arc<Registry>, identity: Arc<Identity>) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            let identity = identity.clone();
            tokio::spawn(async move {
                if let Err(err) = answer(stream, &registry, &identity).await {
                    debug!(%err, "admin request failed");
                }
            });
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn answer(
    stream: UnixStream,
    registry: &Registry,
    identity: &Identity,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        // Bounded: a request is a short line.
        let mut limited = (&mut stream).take(4096);
        limited.read_line(&mut line).await
    })
    .await;
    let reply = match (read, serde_json::from_str::<Request>(&line)) {
        (Ok(Ok(_)), Ok(Request::Status)) => serde_json::to_string(&status(registry, identity))?,
        _ => r#"{"error":"unknown request; send {\"request\":\"status\"}"}"#.to_owned(),
    };
    let stream = stream.get_mut();
    stream.write_all(reply.as_bytes()).await?;
    stream.write_all(b"\n").await
}

/// What identifies a running agent in its status.
pub struct Identity {
    /// The channel listener's bound address.
    pub listen: std::net::SocketAddr,
    /// When the agent started.
    pub started: Instant,
}

/// The agent's status now.
pub fn status(registry: &Registry, identity: &Identity) -> Status {
    let (datapath, programs) = registry.datapath().status();
    let (channels, mut totals) = registry.snapshot();
    let counters = registry.datapath().counters();
    totals.spliced_bytes = counters.spliced_bytes;
    totals.passed_msgs = counters.passed_msgs;
    totals.redirect_errors = counters.redirect_errors;
    Status {
        node: registry.node().to_owned(),
        listen: identity.listen.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: identity.started.elapsed().as_secs(),
        datapath,
        programs,
        channels,
        totals,
    }
}
