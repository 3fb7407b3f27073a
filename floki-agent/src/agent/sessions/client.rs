//! A client session: reads its request and routes it. A describe request is
//! answered from the applied workflows; a hello opens a plain channel or a
//! workflow stream, on this node ([`super::local`]) or with its other end on
//! another node ([`super::remote`]); a consumer whose stream the store holds
//! is served from there ([`super::stored`]).

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::either::Either;

use floki_proto::control::{
    AgentMessage, ClientRequest, ControlStream, EdgeRef, Hello, Refusal, Role, write_message,
};

use super::{
    Kept,
    handshake::{self, refuse},
    held, is_unix,
    local::{self, Local},
    remote,
    stored::{self, EdgeOf},
};
use crate::agent::{Agent, channels::Refused, control::workflows::Denied};

/// Serves a client whose preamble was read; `unproven` is released once
/// its request is. A function whose end finished may send its next request
/// on the same connection (its `paired` said `again`): served in turn,
/// until it hangs up or stays idle for [`handshake::IDLE_LIMIT`]. The
/// request's connection (its reader holds what the client sent after it,
/// its ring is that of the connection's last channel) comes back when it
/// may carry another.
pub async fn serve(
    mut stream: ControlStream,
    from: String,
    agent: Arc<Agent>,
    unproven: OwnedSemaphorePermit,
) {
    let request = handshake::request(&mut stream).await;
    drop(unproven);
    let (mut connection, mut request) = (Kept::new(stream), request);
    loop {
        // The routing runs on the heap, and a same-node end's future is
        // made outside the match: nothing of the routing stays in this
        // task while the channel lives.
        let serving = match Box::pin(route(connection, request, &from, &agent)).await {
            Routed::Served(kept) => Either::Left(std::future::ready(kept)),
            Routed::Local(end) => {
                let SameNode {
                    connection,
                    hello,
                    here,
                } = *end;
                Either::Right(local::serve(connection, hello, here, &agent))
            }
        };
        let Some(mut next) = serving.await else {
            return;
        };
        let Some(next_request) = held::next_request(&mut next, &agent, &from).await else {
            return;
        };
        (connection, request) = (next, next_request);
    }
}

/// Where [`route`] leaves a request. Every connection's task is as large
/// as the largest path its request can take, two per channel: the routing
/// runs on the heap and a same-node end is served after it returned, so
/// that none of its state stays in the task while the channel lives, and
/// the store's and the cross-node paths are boxed (`bench channels`: the
/// agent's RSS per channel).
enum Routed {
    /// Answered or served; the connection back if it may carry another
    /// request.
    Served(Option<Kept>),
    /// An end of a same-node channel, to serve.
    Local(Box<SameNode>),
}

/// An end of a same-node channel: its connection, its hello, and what the
/// routing learnt of it.
struct SameNode {
    connection: Kept,
    hello: Hello,
    here: Local,
}

/// Routes one request: answers it, serves it (boxed) across nodes or from
/// the store, or hands a same-node end back to be served.
async fn route(
    connection: Kept,
    request: Result<ClientRequest, Refused>,
    from: &str,
    agent: &Arc<Agent>,
) -> Routed {
    let Kept {
        mut stream,
        reader,
        ring,
        link,
    } = connection;
    agent.metrics.count_request();
    // The function asks for something: a link it held goes back to this
    // agent's watch first (its stream may come by this very request).
    let link = link.and_then(|held| held.release(agent));
    // The connection as the end's session goes on with it.
    let kept = |stream| Kept {
        stream,
        reader,
        ring,
        link,
    };
    let hello = match request {
        Ok(ClientRequest::Describe { describe }) => {
            // Answered: the client may open its streams on this connection.
            let answered = describe_edge(&mut stream, from, agent, describe).await;
            return Routed::Served(answered.then(|| kept(stream)));
        }
        Ok(ClientRequest::Open(hello)) => hello,
        Ok(ClientRequest::Held { .. } | ClientRequest::GiveBack { .. }) => {
            let message = "`held` or `give_back` as a connection's first request; open the stream with a hello".to_owned();
            refuse(agent, &mut stream, from, Refusal::BadRequest, message).await;
            return Routed::Served(None);
        }
        Err((refusal, message)) => {
            refuse(agent, &mut stream, from, refusal, message).await;
            return Routed::Served(None);
        }
    };
    if hello.store && !stored::from_this_agent(&stream) {
        let message =
            "only the agent itself opens its store's ends; leave `store` unset".to_owned();
        refuse(agent, &mut stream, from, Refusal::BadRequest, message).await;
        return Routed::Served(None);
    }
    if let Err((refusal, message)) = handshake::validate(&hello, is_unix(&stream)) {
        refuse(agent, &mut stream, from, refusal, message).await;
        return Routed::Served(None);
    }
    let Some(stream_ref) = hello.stream.clone() else {
        if agent.workflow_channels_only && !hello.store {
            let message = "this agent serves only workflow channels (--workflow-channels-only); \
                           open the channel with --workflow, --edge, --as and its token"
                .to_owned();
            refuse(agent, &mut stream, from, Refusal::WorkflowOnly, message).await;
            return Routed::Served(None);
        }
        let mut hello = hello;
        if let Some(secret) = hello.secret.take() {
            hello.channel = with_secret(&hello.channel, &secret);
        }
        let name = hello.channel.clone();
        let Some((stream, hello)) =
            Box::pin(stored::serve_stored(stream, hello, &name, None, agent)).await
        else {
            return Routed::Served(None);
        };
        let storable = stored::storable(agent, &hello, None, None);
        let here = Local {
            storable,
            again: true,
            ..Local::default()
        };
        return Routed::Local(Box::new(SameNode {
            connection: kept(stream),
            hello,
            here,
        }));
    };
    let resolved = agent.workflows.resolve(
        &agent.node,
        &stream_ref.workflow,
        &stream_ref.token,
        &stream_ref.edge,
        &stream_ref.function,
        &stream_ref.peer,
        hello.role,
    );
    match resolved {
        Err(Denied::NotAllowed) => {
            let message = "no such workflow channel for this token".to_owned();
            refuse(agent, &mut stream, from, Refusal::NotAllowed, message).await;
        }
        // The store of the producer's node, standing in for a consumer on
        // an unreachable node: the stream is kept here.
        Err(Denied::WrongNode(_)) if hello.store => {
            Box::pin(stored::serve_store_for_unreachable(
                stream,
                hello,
                &stream_ref,
                agent,
            ))
            .await;
        }
        Err(Denied::WrongNode(node)) => {
            let message = format!(
                "function {:?} runs on node {node}; connect to that node's agent",
                stream_ref.function
            );
            refuse(agent, &mut stream, from, Refusal::WrongNode, message).await;
        }
        Ok(resolved) => {
            // A stream stored here (on this node, or pushed ahead from the
            // producer's) is served from the store.
            let name = resolved.stream.to_string();
            let window = Some(resolved.edge.buffer);
            // A producer on the other node is there again: live. Taking its
            // link now decides the race with the store (which claims links
            // whose consumer is late) for good.
            if resolved.peer_node != agent.node
                && hello.role == Role::Recv
                && !hello.store
                && let Some(started) = agent.links.take_started(&resolved.stream)
            {
                let remote = remote::serve(kept(stream), hello, resolved, Some(started), agent);
                return Routed::Served(Box::pin(remote).await);
            }
            let Some((stream, mut hello)) =
                Box::pin(stored::serve_stored(stream, hello, &name, window, agent)).await
            else {
                return Routed::Served(None);
            };
            if resolved.peer_node != agent.node {
                let remote = remote::serve(kept(stream), hello, resolved, None, agent);
                return Routed::Served(Box::pin(remote).await);
            }
            hello.channel = name;
            let edge = EdgeOf {
                edge: &resolved.edge,
                producer: &stream_ref,
            };
            let storable = stored::storable(agent, &hello, window, Some(edge));
            let here = Local {
                window,
                storable,
                again: true,
                ..Local::default()
            };
            return Routed::Local(Box::new(SameNode {
                connection: kept(stream),
                hello,
                here,
            }));
        }
    }
    Routed::Served(None)
}

/// The name under which a plain channel with a secret pairs (and is
/// stored, and shown): its name and a digest of the secret, so that only
/// ends presenting the same secret meet. `#` is in no channel name, so it
/// never meets an end without a secret either.
fn with_secret(name: &str, secret: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("floki channel secret\0{name}\0{secret}"));
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}#{hex}")
}

/// Answers a describe request: the function's role and peers on an edge.
/// `true` if the client was told and may go on on this connection.
async fn describe_edge(
    stream: &mut ControlStream,
    from: &str,
    agent: &Agent,
    edge: EdgeRef,
) -> bool {
    match agent
        .workflows
        .describe(&edge.workflow, &edge.token, &edge.edge, &edge.function)
    {
        Ok((edge, role)) => {
            let peers = match role {
                Role::Send => edge.consumers,
                Role::Recv => edge.producers,
            };
            let answer = AgentMessage::Edge {
                pattern: edge.pattern,
                role,
                peers,
                buffer: edge.buffer,
                again: true,
            };
            write_message(stream, &answer).await.is_ok()
        }
        Err(_) => {
            let message = "no such workflow channel for this token".to_owned();
            refuse(agent, stream, from, Refusal::NotAllowed, message).await;
            false
        }
    }
}
