//! The client's side of the control connection: hello, answer, pairing.

use std::net::SocketAddr;

use tokio::{net::TcpStream, time::timeout};

use super::{ChannelOptions, ClientError, socket::netns_cookie};
use crate::protocol::{
    ProtocolError,
    control::{
        AgentMessage, Hello, Role, Transport, decode_key, read_message, write_message,
        write_preamble,
    },
};

/// A channel end the agent has paired.
pub(crate) struct Pairing {
    pub control: TcpStream,
    pub channel_id: u32,
    pub transport: Transport,
    pub peer: Option<SocketAddr>,
    pub key: [u8; crate::protocol::KEY_LEN],
    pub window: u64,
}

/// Connects to the agent. Receivers bind their data listener on the address
/// this connection comes from, before the hello, so they can advertise it.
pub(crate) async fn connect(opts: &ChannelOptions) -> Result<TcpStream, ClientError> {
    let unreachable = |source| ClientError::AgentUnreachable {
        agent: opts.agent.clone(),
        source,
    };
    let control = timeout(opts.connect_timeout, TcpStream::connect(&opts.agent))
        .await
        .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)?;
    control.set_nodelay(true).ok();
    Ok(control)
}

/// A channel end the agent accepted, not paired yet.
pub(crate) struct Accepted {
    pub control: TcpStream,
    pub channel_id: u32,
    /// The channel's window: what a sender may buffer before pairing.
    pub window: Option<u64>,
}

/// Says hello and reads the agent's acceptance.
pub(crate) async fn hello(
    mut control: TcpStream,
    opts: &ChannelOptions,
    role: Role,
    listen: Option<SocketAddr>,
) -> Result<Accepted, ClientError> {
    let channel = &opts.channel;
    let protocol = |source: ProtocolError| ClientError::Protocol {
        channel: channel.clone(),
        source,
    };
    let hello = Hello {
        channel: channel.clone(),
        role,
        netns_cookie: netns_cookie(&control).ok(),
        listen,
        window: opts.window,
        stream: opts.stream.clone(),
    };
    write_preamble(&mut control).await.map_err(protocol)?;
    write_message(&mut control, &hello)
        .await
        .map_err(protocol)?;
    match read_message(&mut control).await.map_err(protocol)? {
        Some(AgentMessage::Accepted {
            channel_id, window, ..
        }) => Ok(Accepted {
            control,
            channel_id,
            window,
        }),
        Some(AgentMessage::Refused { error, message }) => Err(ClientError::Refused {
            channel: channel.clone(),
            reason: error,
            message,
        }),
        Some(other) => Err(unexpected(channel, &other)),
        None => Err(ClientError::AgentClosed {
            channel: channel.clone(),
        }),
    }
}

/// Waits until the agent pairs an accepted end with its peer (within
/// `opts.pair_timeout` if set).
pub(crate) async fn paired(
    accepted: Accepted,
    opts: &ChannelOptions,
    role: Role,
) -> Result<Pairing, ClientError> {
    let Accepted {
        mut control,
        channel_id,
        ..
    } = accepted;
    let channel = &opts.channel;
    let protocol = |source: ProtocolError| ClientError::Protocol {
        channel: channel.clone(),
        source,
    };
    let answer = read_message(&mut control);
    let answer = match opts.pair_timeout {
        Some(limit) => timeout(limit, answer)
            .await
            .map_err(|_| ClientError::PairTimeout {
                channel: channel.clone(),
                peer: role.peer(),
                timeout: limit,
            })?,
        None => answer.await,
    };
    match answer.map_err(protocol)? {
        Some(AgentMessage::Paired {
            transport,
            peer,
            key,
            window,
        }) => Ok(Pairing {
            control,
            channel_id,
            transport,
            peer,
            key: decode_key(&key).ok_or_else(|| {
                protocol(ProtocolError::BadFrame(format!(
                    "pairing key {key:?} is not 32 hex digits"
                )))
            })?,
            window,
        }),
        Some(AgentMessage::Refused { error, message }) => Err(ClientError::Refused {
            channel: channel.clone(),
            reason: error,
            message,
        }),
        Some(other) => Err(unexpected(channel, &other)),
        None => Err(ClientError::AgentClosed {
            channel: channel.clone(),
        }),
    }
}

fn unexpected(channel: &str, message: &AgentMessage) -> ClientError {
    ClientError::Protocol {
        channel: channel.to_owned(),
        source: ProtocolError::BadFrame(format!("unexpected agent message {message:?}")),
    }
}
