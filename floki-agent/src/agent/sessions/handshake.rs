//! A client's first words: the preamble and one request, within a time
//! limit; what makes a hello valid; and the refusal a client gets otherwise.

use std::time::Duration;

use floki_proto::{
    ProtocolError,
    control::{
        AgentMessage, ClientRequest, ControlStream, Hello, Refusal, Role, read_message,
        read_preamble, valid_channel_name, valid_run, write_message,
    },
};
use tokio::time::timeout;
use tracing::info;

use super::ReportReader;
use crate::agent::{
    Agent,
    channels::{Refused, WINDOW_RANGE},
};

/// How long a client has to complete its hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection kept between a client's channels may stay idle
/// before the agent closes it (clients keep one for less).
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// What a client that took too long is told.
pub fn too_slow() -> String {
    format!(
        "no complete hello within {HANDSHAKE_TIMEOUT:?}; send the preamble and the hello message at once"
    )
}

/// Reads and checks the preamble (the Unix socket; the TCP port tells
/// clients from agents by it first).
pub async fn preamble(stream: &mut ControlStream) -> Result<(), Refused> {
    match timeout(HANDSHAKE_TIMEOUT, read_preamble(stream)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err @ ProtocolError::UnsupportedVersion(_))) => {
            Err((Refusal::UnsupportedVersion, err.to_string()))
        }
        Ok(Err(err)) => Err((Refusal::BadHandshake, err.to_string())),
        Err(_) => Err((Refusal::BadHandshake, too_slow())),
    }
}

/// Reads the client's request.
pub async fn request(stream: &mut ControlStream) -> Result<ClientRequest, Refused> {
    match timeout(HANDSHAKE_TIMEOUT, read_message(stream)).await {
        Ok(Ok(Some(request))) => Ok(request),
        Ok(Ok(None)) => Err((
            Refusal::BadHandshake,
            "connection closed before the hello message".to_owned(),
        )),
        Ok(Err(err)) => Err((Refusal::BadHandshake, format!("bad hello: {err}"))),
        Err(_) => Err((Refusal::BadHandshake, too_slow())),
    }
}

/// The next request on a connection kept after a finished end; `None`
/// (the connection then closes, quietly) if the client hung up or stayed
/// idle for [`IDLE_LIMIT`].
pub async fn next_request(
    stream: &mut ControlStream,
    reader: &mut ReportReader,
) -> Option<Result<ClientRequest, Refused>> {
    match timeout(IDLE_LIMIT, reader.next_message(stream)).await {
        Ok(Ok(Some(request))) => Some(Ok(request)),
        Ok(Ok(None)) | Err(_) => None,
        Ok(Err(err)) => Some(Err((Refusal::BadHandshake, format!("bad hello: {err}")))),
    }
}

/// [`next_request`] on a connection whose consumer holds its stream's link:
/// no idle limit. The consumer may be waiting on the link for the stream's
/// next start, and closing its connection would give the link back to this
/// agent while the consumer still reads it; the client gives the link back
/// itself when it no longer waits (docs/PROTOCOL.md, "Held links").
pub async fn next_request_holding(
    stream: &mut ControlStream,
    reader: &mut ReportReader,
) -> Option<Result<ClientRequest, Refused>> {
    match reader.next_message(stream).await {
        Ok(Some(request)) => Some(Ok(request)),
        Ok(None) => None,
        Err(err) => Some(Err((Refusal::BadHandshake, format!("bad hello: {err}")))),
    }
}

/// Checks a hello. `unix`: a receiver on the agent's Unix socket may leave
/// its data address out; the agent then opens the listener for it.
pub fn validate(hello: &Hello, unix: bool) -> Result<(), Refused> {
    // The store's ends (checked to be the agent's) use names no function can.
    if hello.stream.is_none() && !hello.store && !valid_channel_name(&hello.channel) {
        let shown: String = hello.channel.chars().take(64).collect();
        return Err((
            Refusal::BadChannelName,
            format!(
                "channel name {shown:?} ({} bytes) is invalid: use 1 to 255 characters from A-Z a-z 0-9 . _ : / -",
                hello.channel.len()
            ),
        ));
    }
    if let Some(run) = hello.run.as_deref().filter(|run| !valid_run(run)) {
        let shown: String = run.chars().take(64).collect();
        return Err((
            Refusal::BadRequest,
            format!(
                "run {shown:?} ({} bytes) is invalid: use 1 to 255 printable ASCII characters, no spaces",
                run.len()
            ),
        ));
    }
    match hello.role {
        Role::Recv => validate_receiver(hello, unix),
        Role::Send if hello.listen.is_some() || hello.window.is_some() => Err((
            Refusal::BadRequest,
            "`listen` and `window` are for receivers; a sender sends neither".into(),
        )),
        Role::Send => Ok(()),
    }
}

fn validate_receiver(hello: &Hello, unix: bool) -> Result<(), Refused> {
    let listen = match (hello.listen, unix) {
        // The agent would connect to it from its own namespace, which may
        // reach networks the client's cannot: it opens the listener itself.
        (Some(listen), true) => {
            return Err((
                Refusal::BadRequest,
                format!(
                    "a receiver on the agent's Unix socket gets its data listener from the agent; do not name one (`listen` {listen})"
                ),
            ));
        }
        (Some(listen), false) => Some(listen),
        (None, true) => None,
        (None, false) => {
            return Err((
                Refusal::BadRequest,
                "a receiver must advertise its data address (`listen`)".into(),
            ));
        }
    };
    if let Some(listen) = listen
        && (listen.port() == 0 || listen.ip().is_unspecified())
    {
        return Err((
            Refusal::BadRequest,
            format!("data address {listen} is not connectable: give a concrete IP and port"),
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
    Ok(())
}

/// Refuses a client, logging who and why.
pub async fn refuse(
    agent: &Agent,
    stream: &mut ControlStream,
    from: &str,
    error: Refusal,
    message: String,
) {
    info!(%from, ?error, %message, "refused a client");
    refuse_quietly(agent, stream, error, message).await;
}

/// Refuses a client (the core logged why already).
pub async fn refuse_quietly(
    agent: &Agent,
    stream: &mut ControlStream,
    error: Refusal,
    message: String,
) {
    agent.metrics.count_refusal(error);
    let _ = write_message(stream, &AgentMessage::Refused { error, message }).await;
}
