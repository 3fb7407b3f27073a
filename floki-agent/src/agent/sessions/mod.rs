//! Sessions: the protocol adapters between a connection and the channel
//! core. One connection to the agent's channel port is a client (`FLKI`:
//! handshake, pairing, reports) or another agent (`FLKA`, served by the
//! control plane); one to the agent's Unix socket is always a client. Bad
//! input gets a refusal with a reason and never disturbs other channels.
//!
//! * [`handshake`]: the preamble, the first message, validation, refusals;
//! * [`client`]: routes a hello to a plain channel, a workflow stream on this
//!   node, or one whose other end is on another node;
//! * [`local`] and [`remote`]: an end of each kind, from joining the core to
//!   its last report.

mod client;
mod handshake;
mod local;
mod remote;

use std::{net::SocketAddr, sync::Arc};

use floki_proto::{
    MAGIC, ProtocolError, VERSION,
    control::{ClientReport, ControlStream, Refusal, read_message},
};
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpStream, UnixStream},
    time::timeout,
};
use tokio_util::either::Either;
use tracing::debug;

use super::{
    Agent,
    channels::Membership,
    control::{peer_rpc, peers::protocol::PEER_MAGIC},
};
use handshake::{HANDSHAKE_TIMEOUT, refuse};

/// Serves one connection to the agent's channel port to its end.
pub async fn serve(mut stream: TcpStream, from: SocketAddr, agent: Arc<Agent>) {
    stream.set_nodelay(true).ok();
    let mut preamble = [0u8; 6];
    let read = timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut preamble)).await;
    let version = u16::from_be_bytes([preamble[4], preamble[5]]);
    let refusal = match read {
        Err(_) => Some((Refusal::BadHandshake, handshake::too_slow())),
        Ok(Err(err)) => Some((
            Refusal::BadHandshake,
            ProtocolError::from_read(err).to_string(),
        )),
        Ok(Ok(_)) if preamble[..4] == PEER_MAGIC && version == VERSION => {
            return peer_rpc::serve(stream, from, agent).await;
        }
        Ok(Ok(_)) if preamble[..4] != MAGIC => {
            let magic: [u8; 4] = preamble[..4].try_into().expect("4 bytes");
            Some((
                Refusal::BadHandshake,
                ProtocolError::BadMagic(magic).to_string(),
            ))
        }
        Ok(Ok(_)) if version != VERSION => Some((
            Refusal::UnsupportedVersion,
            ProtocolError::UnsupportedVersion(version).to_string(),
        )),
        Ok(Ok(_)) => None,
    };
    let mut stream = Either::Left(stream);
    let from = from.to_string();
    match refusal {
        Some((refusal, message)) => refuse(&agent, &mut stream, &from, refusal, message).await,
        None => client::serve(stream, from, agent).await,
    }
}

/// Serves one connection to the agent's Unix socket: a client on this node
/// (never another agent), which may be handed its data sockets.
pub async fn serve_unix(stream: UnixStream, agent: Arc<Agent>) {
    let mut stream = Either::Right(stream);
    let from = "the local socket".to_owned();
    match handshake::preamble(&mut stream).await {
        Ok(()) => client::serve(stream, from, agent).await,
        Err((refusal, message)) => refuse(&agent, &mut stream, &from, refusal, message).await,
    }
}

/// Whether the client is on the agent's Unix socket (where the agent hands
/// sockets over).
fn is_unix(control: &ControlStream) -> bool {
    matches!(control, Either::Right(_))
}

/// Passes an end's reports to its channel until it hangs up; its
/// membership then ends.
async fn reports(mut stream: ControlStream, membership: Membership, name: &str) {
    loop {
        match read_message::<_, ClientReport>(&mut stream).await {
            Ok(Some(report)) => membership.report(report),
            Ok(None) => break,
            Err(err) => {
                let role = membership.role();
                debug!(channel = %name, %role, %err, "control connection ended with an error");
                break;
            }
        }
    }
}

/// Resolves when the client closes a connection on which it should be
/// silent (waiting for its peer).
async fn closed(stream: &mut ControlStream) {
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return,
            // A client must not talk before it is paired; ignore the noise.
            Ok(_) => {}
        }
    }
}
