//! One client's control connection, agent side: handshake, pairing, then the
//! client's reports until it hangs up. Bad input gets a refusal with a reason
//! and never disturbs other channels.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{io::AsyncReadExt as _, net::TcpStream, time::timeout};
use tracing::{debug, info};

use super::registry::{Pairing, Refused, Registry, WINDOW_RANGE};
use crate::protocol::{
    ProtocolError,
    control::{
        AgentMessage, ClientReport, Hello, Refusal, Role, read_message, read_preamble,
        valid_channel_name, write_message,
    },
};

/// How long a client has to complete its hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one control connection to its end.
pub async fn serve(mut stream: TcpStream, from: SocketAddr, registry: Arc<Registry>) {
    stream.set_nodelay(true).ok();
    let hello = match timeout(HANDSHAKE_TIMEOUT, read_hello(&mut stream)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err((refusal, message))) => return refuse(&mut stream, from, refusal, message).await,
        Err(_) => {
            let message = format!(
                "no complete hello within {HANDSHAKE_TIMEOUT:?}; send the preamble and the hello message at once"
            );
            return refuse(&mut stream, from, Refusal::BadHandshake, message).await;
        }
    };
    if let Err((refusal, message)) = validate(&hello) {
        return refuse(&mut stream, from, refusal, message).await;
    }
    let name = hello.channel.clone();
    let joined = match registry.join(hello) {
        Ok(joined) => joined,
        Err((refusal, message)) => return refuse(&mut stream, from, refusal, message).await,
    };
    let (id, role) = (joined.id, joined.role);
    let accepted = AgentMessage::Accepted {
        channel_id: id,
        node: registry.node().to_owned(),
    };
    if write_message(&mut stream, &accepted).await.is_err() {
        registry.left(&name, role, id);
        return;
    }
    let paired = match joined.pairing {
        Pairing::Now(message) => Some(message),
        Pairing::Later(wait) => {
            tokio::select! {
                message = wait => message.ok(),
                () = closed(&mut stream) => None,
            }
        }
    };
    let Some(paired) = paired else {
        registry.left(&name, role, id);
        return;
    };
    let is_refusal = matches!(paired, AgentMessage::Refused { .. });
    if write_message(&mut stream, &paired).await.is_err() || is_refusal {
        registry.left(&name, role, id);
        return;
    }
    loop {
        match read_message::<_, ClientReport>(&mut stream).await {
            Ok(Some(report)) => registry.report(&name, role, report),
            Ok(None) => break,
            Err(err) => {
                debug!(channel = %name, %role, %err, "control connection ended with an error");
                break;
            }
        }
    }
    registry.left(&name, role, id);
}

/// Resolves when the client closes a connection on which it should be
/// silent (waiting for its peer).
async fn closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return,
            // A client must not talk before it is paired; ignore the noise.
            Ok(_) => {}
        }
    }
}

async fn read_hello(stream: &mut TcpStream) -> Result<Hello, Refused> {
    read_preamble(stream).await.map_err(|err| match err {
        ProtocolError::UnsupportedVersion(_) => (Refusal::UnsupportedVersion, err.to_string()),
        other => (Refusal::BadHandshake, other.to_string()),
    })?;
    match read_message::<_, Hello>(stream).await {
        Ok(Some(hello)) => Ok(hello),
        Ok(None) => Err((
            Refusal::BadHandshake,
            "connection closed before the hello message".into(),
        )),
        Err(err) => Err((Refusal::BadHandshake, format!("bad hello: {err}"))),
    }
}

fn validate(hello: &Hello) -> Result<(), Refused> {
    if !valid_channel_name(&hello.channel) {
        let shown: String = hello.channel.chars().take(64).collect();
        return Err((
            Refusal::BadChannelName,
            format!(
                "channel name {shown:?} ({} bytes) is invalid: use 1 to 255 characters from A-Z a-z 0-9 . _ : / -",
                hello.channel.len()
            ),
        ));
    }
    match hello.role {
        Role::Recv => {
            let Some(listen) = hello.listen else {
                return Err((
                    Refusal::BadRequest,
                    "a receiver must advertise its data address (`listen`)".into(),
                ));
            };
            if listen.port() == 0 || listen.ip().is_unspecified() {
                return Err((
                    Refusal::BadRequest,
                    format!(
                        "data address {listen} is not connectable: give a concrete IP and port"
                    ),
                ));
            }
            if let Some(window) = hello.window
                && !WINDOW_RANGE.contains(&window)
            {
                return Err((
                    Refusal::BadRequest,
                    format!(
                        "window of {window} bytes is outside {}..={} bytes",
                        WINDOW_RANGE.start(),
                        WINDOW_RANGE.end()
                    ),
                ));
            }
        }
        Role::Send => {
            if hello.listen.is_some() || hello.window.is_some() {
                return Err((
                    Refusal::BadRequest,
                    "`listen` and `window` are for receivers; a sender sends neither".into(),
                ));
            }
        }
    }
    Ok(())
}

async fn refuse(stream: &mut TcpStream, from: SocketAddr, error: Refusal, message: String) {
    info!(%from, ?error, %message, "refused a client");
    let _ = write_message(stream, &AgentMessage::Refused { error, message }).await;
}
