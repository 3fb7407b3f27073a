//! The admin socket: a Unix socket (mode 0600) that answers status requests.
//! Requests and answers are one JSON object per line.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::debug;

use super::{
    apply,
    status::{Identity, status},
};
use crate::agent::{Agent, AgentError, backoff::AcceptBackoff, unix_socket};

/// Admin requests served at once.
const MAX_REQUESTS: usize = 64;

/// A request on the admin socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
enum Request {
    Status,
    Apply { yaml: String },
    Delete { name: String },
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
        let listener = unix_socket::bind(path, 0o600)
            .await
            .map_err(|source| AgentError::Admin { source })?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves requests until the task is dropped.
    pub async fn serve(self, agent: Arc<Agent>, identity: Arc<Identity>) {
        let mut backoff = AcceptBackoff::new("admin");
        // Requests served at once; the next wait in the socket's queue.
        let serving = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS));
        loop {
            let permit = serving.clone().acquire_owned().await.expect("never closed");
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    backoff.failed(&err).await;
                    continue;
                }
            };
            backoff.succeeded();
            let agent = agent.clone();
            let identity = identity.clone();
            tokio::spawn(async move {
                if let Err(err) = answer(stream, &agent, &identity).await {
                    debug!(%err, "admin request failed");
                }
                drop(permit);
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
    agent: &Arc<Agent>,
    identity: &Identity,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        // Bounded: a request is one line (a workflow spec at most).
        let mut limited = (&mut stream).take(1 << 20);
        limited.read_line(&mut line).await
    })
    .await;
    let request = match read {
        Ok(Ok(_)) => serde_json::from_str::<Request>(&line).ok(),
        _ => None,
    };
    let reply = match request {
        Some(Request::Status) => serde_json::to_value(status(agent, identity))?,
        Some(Request::Apply { yaml }) => match apply::apply(agent, &yaml).await {
            Ok(outcome) => serde_json::json!({ "applied": outcome }),
            Err(failure) => serde_json::json!({ "error": failure }),
        },
        Some(Request::Delete { name }) => match apply::delete(agent, &name).await {
            Ok(outcome) => serde_json::json!({ "deleted": outcome }),
            Err(failure) => serde_json::json!({ "error": failure }),
        },
        None => serde_json::json!({
            "error": {"message": "unknown request; send {\"request\":\"status\"}", "errors": []}
        }),
    };
    let reply = serde_json::to_string(&reply)?;
    let stream = stream.get_mut();
    stream.write_all(reply.as_bytes()).await?;
    stream.write_all(b"\n").await
}
