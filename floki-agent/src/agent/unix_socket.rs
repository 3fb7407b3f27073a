//! Binding the agent's Unix sockets (admin and clients) safely: the
//! directory is created, a stale socket file from a crashed agent is
//! replaced, a live agent's socket never is.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use tokio::net::{UnixListener, UnixStream};

/// Why a Unix socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another agent answers on it.
    #[error("another agent is serving {path}")]
    InUse {
        /// Path.
        path: PathBuf,
    },
    /// Creating, replacing or binding it failed.
    #[error("cannot set up the Unix socket {path}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Binds `path` with permissions `mode`.
pub async fn bind(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    let err = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse {
                path: path.to_owned(),
            });
        }
        fs::remove_file(path).map_err(err)?;
    }
    // socket2 for the backlog: std's and tokio's `bind` queue fewer
    // connections than a burst of functions opens at once.
    let socket =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).map_err(err)?;
    socket
        .bind(&socket2::SockAddr::unix(path).map_err(err)?)
        .map_err(err)?;
    socket.listen(super::BACKLOG as i32).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.set_cloexec(true).map_err(err)?;
    let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(socket),
    ))
    .map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}
