//! Channel options from the Python arguments (the Python layer has applied
//! the defaults and the environment already).

use std::time::Duration;

use floki_client::{ChannelOptions, StreamRef, Transport};

use crate::errors::Failure;

/// A workflow stream: workflow, token, edge, this function, its peer.
pub type Stream = (String, String, String, String, String);

/// How to open a channel end.
pub fn channel(
    agent: String,
    channel: String,
    timeout: Option<f64>,
    transport: Option<String>,
    stream: Option<Stream>,
) -> Result<ChannelOptions, Failure> {
    let mut opts = ChannelOptions::new(agent, channel);
    opts.pair_timeout = timeout.map(seconds).transpose()?;
    opts.transport = transport
        .map(|name| name.parse::<Transport>())
        .transpose()
        .map_err(|err| Failure::new("Error", err))?;
    opts.stream = stream.map(|(workflow, token, edge, function, peer)| StreamRef {
        workflow,
        token,
        edge,
        function,
        peer,
    });
    Ok(opts)
}

/// A timeout in seconds.
pub fn seconds(value: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| Failure::new("Error", format!("timeout of {value} s: give seconds >= 0")))
}
