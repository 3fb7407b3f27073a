//! Workflow edges, for functions. An edge is a set of point-to-point streams,
//! one per (producer, consumer) pair: [`describe`] says which peers this
//! function has on an edge, and [`senders`] / [`receivers`] open one stream
//! per peer. The pattern is what the function does with them: broadcast
//! writes every byte to all its senders, shuffle writes partition j to the
//! j-th, gather reads each producer's stream on its own.

use std::time::Duration;

use tokio::time::timeout;

use floki_proto::control::{AgentMessage, ClientRequest, EdgeRef, Pattern, Refusal, Role};

use crate::{ChannelOptions, ClientError, Receiver, Sender, StreamRef, Transport, control};

/// A function's place on an edge of an applied workflow.
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    /// The agent's channel address on this function's node.
    pub agent: String,
    /// Workflow name.
    pub workflow: String,
    /// The token `floki-agent apply` printed.
    pub token: String,
    /// Edge name.
    pub edge: String,
    /// This function's name.
    pub function: String,
    /// Give up if a peer has not come within this time (default: wait).
    pub pair_timeout: Option<Duration>,
    /// Insist on a transport (experiments; see [`ChannelOptions::transport`]).
    pub transport: Option<Transport>,
    /// Producers: wait for the consumers rather than let the agents store
    /// the streams (see [`ChannelOptions::live`]; an edge can say so for
    /// all its producers with `store: false`).
    pub live: bool,
    /// The run this function belongs to (see [`ChannelOptions::run`]).
    pub run: Option<String>,
}

/// What an edge looks like to one of its functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeInfo {
    /// The edge's pattern.
    pub pattern: Pattern,
    /// Whether this function produces or consumes.
    pub role: Role,
    /// The functions at the other end, in spec order.
    pub peers: Vec<String>,
    /// Buffer (window) per stream.
    pub buffer: u64,
}

impl EdgeOptions {
    /// This function, `function`, on `edge` of `workflow`.
    pub fn new(
        agent: impl Into<String>,
        workflow: impl Into<String>,
        token: impl Into<String>,
        edge: impl Into<String>,
        function: impl Into<String>,
    ) -> Self {
        Self {
            agent: agent.into(),
            workflow: workflow.into(),
            token: token.into(),
            edge: edge.into(),
            function: function.into(),
            pair_timeout: None,
            transport: None,
            live: false,
            run: None,
        }
    }

    /// Channel options for the stream between this function and `peer`.
    pub fn stream(&self, peer: &str) -> ChannelOptions {
        let mut opts = ChannelOptions::new(&self.agent, format!("{}/{}", self.workflow, self.edge));
        opts.pair_timeout = self.pair_timeout;
        opts.transport = self.transport;
        opts.live = self.live;
        opts.run = self.run.clone();
        opts.stream = Some(StreamRef {
            workflow: self.workflow.clone(),
            token: self.token.clone(),
            edge: self.edge.clone(),
            function: self.function.clone(),
            peer: peer.to_owned(),
        });
        opts
    }
}

/// Asks the agent what the edge looks like to this function. The answer is
/// kept for this process, under the token: the agent gives a changed spec
/// a new token, so the same token always describes the same edge, and a
/// warm function's later runs ask nothing.
pub async fn describe(opts: &EdgeOptions) -> Result<EdgeInfo, ClientError> {
    if let Some(info) = crate::described::get(opts) {
        return Ok(info);
    }
    let channel = format!("{}/{}", opts.workflow, opts.edge);
    let asking = ChannelOptions::new(&opts.agent, &channel);
    let request = ClientRequest::Describe {
        describe: EdgeRef {
            workflow: opts.workflow.clone(),
            token: opts.token.clone(),
            edge: opts.edge.clone(),
            function: opts.function.clone(),
        },
    };
    let asked =
        async { control::ask(control::open(&asking, None, false).await?, &asking, request).await };
    let (opened, answer) = timeout(Duration::from_secs(10), asked)
        .await
        .map_err(|_| ClientError::AgentClosed {
            channel: channel.clone(),
        })??;
    match answer {
        AgentMessage::Edge {
            pattern,
            role,
            peers,
            buffer,
            again,
        } => {
            if again && let Ok(control) = control::detach(opened.stream) {
                let kept = crate::idle::Kept::bare(control);
                crate::idle::put(opts.agent.clone(), channel.clone(), kept);
            }
            let info = EdgeInfo {
                pattern,
                role,
                peers,
                buffer,
            };
            crate::described::put(opts, &info);
            Ok(info)
        }
        AgentMessage::Refused { error, message } => Err(ClientError::Refused {
            channel,
            reason: error,
            message,
        }),
        other => Err(control::unexpected(&channel, &other)),
    }
}

fn expect_role(opts: &EdgeOptions, info: &EdgeInfo, role: Role) -> Result<(), ClientError> {
    if info.role == role {
        return Ok(());
    }
    Err(ClientError::Refused {
        channel: format!("{}/{}", opts.workflow, opts.edge),
        reason: Refusal::BadRequest,
        message: format!(
            "function {:?} is a {} on edge {:?}, not a {role}",
            opts.function, info.role, opts.edge
        ),
    })
}

/// Opens this producer's streams on the edge, one per consumer in spec
/// order. Each returns once the agent accepted it (see [`Sender::open`]);
/// the hellos go out together: one wait for the agent, not one per stream.
pub async fn senders(opts: &EdgeOptions) -> Result<(EdgeInfo, Vec<(String, Sender)>), ClientError> {
    let info = describe(opts).await?;
    expect_role(opts, &info, Role::Send)?;
    let senders = each_at_once(
        opts,
        &info,
        |stream| async move { Sender::open(&stream).await },
    )
    .await?;
    Ok((info, senders))
}

/// Opens this consumer's streams on the edge, one per producer in spec
/// order; returns once every producer is there.
pub async fn receivers(
    opts: &EdgeOptions,
) -> Result<(EdgeInfo, Vec<(String, Receiver)>), ClientError> {
    let info = describe(opts).await?;
    expect_role(opts, &info, Role::Recv)?;
    let receivers = each_at_once(opts, &info, |stream| async move {
        Receiver::connect(&stream).await
    })
    .await?;
    Ok((info, receivers))
}

/// Runs `open` for every stream of the edge at once, a task each; the ends
/// in spec order, named by their peers.
async fn each_at_once<T, F, Fut>(
    opts: &EdgeOptions,
    info: &EdgeInfo,
    open: F,
) -> Result<Vec<(String, T)>, ClientError>
where
    F: Fn(ChannelOptions) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = info
        .peers
        .iter()
        .map(|peer| tokio::spawn(open(opts.stream(peer))))
        .collect();
    let mut ends = Vec::with_capacity(tasks.len());
    for (peer, task) in info.peers.iter().zip(tasks) {
        let end = task.await.map_err(|err| opening_failed(opts, err))??;
        ends.push((peer.clone(), end));
    }
    Ok(ends)
}

/// A task that opened one of the edge's streams did not finish (it panicked
/// or its runtime shut down).
fn opening_failed(opts: &EdgeOptions, err: tokio::task::JoinError) -> ClientError {
    ClientError::Io {
        channel: format!("{}/{}", opts.workflow, opts.edge),
        context: "opening a stream",
        source: std::io::Error::other(err),
    }
}

/// The same for code without an async runtime.
pub mod blocking {
    use super::{EdgeInfo, EdgeOptions, Role, expect_role};
    use crate::{
        ChannelOptions, ClientError,
        blocking::{Receiver, Sender, background, on_this_thread},
        setup,
    };

    /// Asks the agent what the edge looks like to this function.
    pub fn describe(opts: &EdgeOptions) -> Result<EdgeInfo, ClientError> {
        on_this_thread(super::describe(opts))
    }

    /// Opens this producer's streams, one per consumer in spec order. The
    /// hellos go out together: one wait for the agent, not one per stream.
    pub fn senders(opts: &EdgeOptions) -> Result<(EdgeInfo, Vec<(String, Sender)>), ClientError> {
        let info = describe(opts)?;
        expect_role(opts, &info, Role::Send)?;
        let streams: Vec<_> = info.peers.iter().map(|peer| opts.stream(peer)).collect();
        let accepted = together(opts, &streams, |stream| async move {
            setup::sender_hello(&stream).await
        })?;
        let senders = info
            .peers
            .iter()
            .zip(&streams)
            .zip(accepted)
            .map(|((peer, stream), accepted)| {
                Sender::accepted(stream, accepted).map(|sender| (peer.clone(), sender))
            })
            .collect::<Result<_, _>>()?;
        Ok((info, senders))
    }

    /// Opens this consumer's streams, one per producer in spec order; returns
    /// once every producer is there. They are set up together on the
    /// calling thread (no thread per stream), their reports go from the
    /// background runtime.
    pub fn receivers(
        opts: &EdgeOptions,
    ) -> Result<(EdgeInfo, Vec<(String, Receiver)>), ClientError> {
        let info = describe(opts)?;
        expect_role(opts, &info, Role::Recv)?;
        let streams: Vec<_> = info.peers.iter().map(|peer| opts.stream(peer)).collect();
        let reports_on = background().handle();
        let established = together(opts, &streams, |stream| async move {
            setup::receiver(&stream, Some(reports_on)).await
        })?;
        let receivers = info
            .peers
            .iter()
            .zip(&streams)
            .zip(established)
            .map(|((peer, stream), open)| {
                Receiver::established(open, stream).map(|receiver| (peer.clone(), receiver))
            })
            .collect::<Result<_, _>>()?;
        Ok((info, receivers))
    }

    /// Runs `set_up` for every stream at once, on this thread's set-up
    /// runtime; the results in the streams' order.
    fn together<T, F, Fut>(
        opts: &EdgeOptions,
        streams: &[ChannelOptions],
        set_up: F,
    ) -> Result<Vec<T>, ClientError>
    where
        F: Fn(ChannelOptions) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
        T: Send + 'static,
    {
        on_this_thread(async {
            let mut tasks = tokio::task::JoinSet::new();
            for (at, stream) in streams.iter().enumerate() {
                let task = set_up(stream.clone());
                tasks.spawn(async move { (at, task.await) });
            }
            let mut done: Vec<Option<T>> = (0..streams.len()).map(|_| None).collect();
            while let Some(joined) = tasks.join_next().await {
                let (at, result) = joined.map_err(|err| super::opening_failed(opts, err))?;
                done[at] = Some(result?);
            }
            Ok(done
                .into_iter()
                .map(|result| result.expect("every task joined"))
                .collect())
        })
    }
}
