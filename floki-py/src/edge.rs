//! Workflow edges: what an edge looks like to a function, and its streams,
//! one per peer function.

use floki_client::workflow::{EdgeInfo, EdgeOptions, blocking};
use pyo3::prelude::*;

use crate::{errors::Failure, options, receiver::NativeReceiver, sender::NativeSender};

/// A function's place on an edge, from the Python arguments.
#[allow(clippy::too_many_arguments)]
fn edge_options(
    agent: String,
    workflow: String,
    token: String,
    edge: String,
    function: String,
    timeout: Option<f64>,
    transport: Option<String>,
    live: bool,
    run: Option<String>,
) -> Result<EdgeOptions, Failure> {
    let mut opts = EdgeOptions::new(agent, workflow, token, edge, function);
    opts.live = live;
    opts.run = run;
    opts.pair_timeout = timeout.map(options::seconds).transpose()?;
    opts.transport = transport
        .map(|name| name.parse())
        .transpose()
        .map_err(|err: String| Failure::new("Error", err))?;
    Ok(opts)
}

/// (pattern, role, peers, buffer).
type Described = (String, String, Vec<String>, u64);

fn described(info: &EdgeInfo) -> Described {
    let role = match info.role {
        floki_client::Role::Send => "producer",
        floki_client::Role::Recv => "consumer",
    };
    (
        info.pattern.to_string(),
        role.to_owned(),
        info.peers.clone(),
        info.buffer,
    )
}

/// What the edge looks like to `function`: pattern, role, peers (in spec
/// order), buffer.
#[pyfunction]
#[pyo3(signature = (agent, workflow, token, edge, function, *, timeout=None))]
pub fn describe(
    py: Python<'_>,
    agent: String,
    workflow: String,
    token: String,
    edge: String,
    function: String,
    timeout: Option<f64>,
) -> PyResult<Described> {
    let opts = edge_options(
        agent, workflow, token, edge, function, timeout, None, false, None,
    )?;
    let info = py
        .detach(|| blocking::describe(&opts))
        .map_err(|err| Failure::client(&err))?;
    Ok(described(&info))
}

/// This producer's streams on the edge, one per consumer in spec order
/// (each returns once the agent accepted it); `live`: wait for the
/// consumers rather than let the agents store the streams; `run`: the run
/// a stored stream keeps.
#[pyfunction]
#[pyo3(signature = (agent, workflow, token, edge, function, *, timeout=None, transport=None, live=false, run=None))]
#[allow(clippy::too_many_arguments)]
pub fn senders(
    py: Python<'_>,
    agent: String,
    workflow: String,
    token: String,
    edge: String,
    function: String,
    timeout: Option<f64>,
    transport: Option<String>,
    live: bool,
    run: Option<String>,
) -> PyResult<(Described, Vec<(String, NativeSender)>)> {
    let opts = edge_options(
        agent, workflow, token, edge, function, timeout, transport, live, run,
    )?;
    let (info, senders) = py
        .detach(|| blocking::senders(&opts))
        .map_err(|err| Failure::client(&err))?;
    let senders = senders
        .into_iter()
        .map(|(peer, sender)| (peer, NativeSender::new(sender)))
        .collect();
    Ok((described(&info), senders))
}

/// This consumer's streams on the edge, one per producer in spec order;
/// returns once every producer is there; `run`: only a stored stream of
/// this run is read.
#[pyfunction]
#[pyo3(signature = (agent, workflow, token, edge, function, *, timeout=None, transport=None, run=None))]
#[allow(clippy::too_many_arguments)]
pub fn receivers(
    py: Python<'_>,
    agent: String,
    workflow: String,
    token: String,
    edge: String,
    function: String,
    timeout: Option<f64>,
    transport: Option<String>,
    run: Option<String>,
) -> PyResult<(Described, Vec<(String, NativeReceiver)>)> {
    let opts = edge_options(
        agent, workflow, token, edge, function, timeout, transport, false, run,
    )?;
    let (info, receivers) = py
        .detach(|| blocking::receivers(&opts))
        .map_err(|err| Failure::client(&err))?;
    let receivers = receivers
        .into_iter()
        .map(|(peer, receiver)| (peer, NativeReceiver::new(receiver)))
        .collect();
    Ok((described(&info), receivers))
}
