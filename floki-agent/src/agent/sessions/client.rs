//! A client session: reads its request and routes it. A describe request is
//! answered from the applied workflows; a hello opens a plain channel or a
//! workflow stream, on this node ([`super::local`]) or with its other end on
//! another node ([`super::remote`]).

use std::sync::Arc;

use floki_proto::control::{
    AgentMessage, ClientRequest, ControlStream, EdgeRef, Refusal, Role, write_message,
};

use super::{
    handshake::{self, refuse},
    is_unix, local, remote,
};
use crate::agent::{Agent, control::workflows::Denied};

/// Serves a client whose preamble was read.
pub async fn serve(mut stream: ControlStream, from: String, agent: Arc<Agent>) {
    let hello = match handshake::request(&mut stream).await {
        Ok(ClientRequest::Describe { describe }) => {
            return describe_edge(&mut stream, &from, &agent, describe).await;
        }
        Ok(ClientRequest::Open(hello)) => hello,
        Err((refusal, message)) => {
            return refuse(&agent, &mut stream, &from, refusal, message).await;
        }
    };
    if let Err((refusal, message)) = handshake::validate(&hello, is_unix(&stream)) {
        return refuse(&agent, &mut stream, &from, refusal, message).await;
    }
    let Some(stream_ref) = hello.stream.clone() else {
        if agent.workflow_channels_only {
            let message = "this agent serves only workflow channels (--workflow-channels-only); \
                           open the channel with --workflow, --edge, --as and its token"
                .to_owned();
            return refuse(&agent, &mut stream, &from, Refusal::WorkflowOnly, message).await;
        }
        return local::serve(stream, hello, None, &agent).await;
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
            refuse(&agent, &mut stream, &from, Refusal::NotAllowed, message).await;
        }
        Err(Denied::WrongNode(node)) => {
            let message = format!(
                "function {:?} runs on node {node}; connect to that node's agent",
                stream_ref.function
            );
            refuse(&agent, &mut stream, &from, Refusal::WrongNode, message).await;
        }
        Ok(resolved) if resolved.peer_node == agent.node => {
            let mut hello = hello;
            hello.channel = resolved.stream.to_string();
            local::serve(stream, hello, Some(resolved.edge.buffer), &agent).await;
        }
        Ok(resolved) => remote::serve(stream, hello, resolved, &agent).await,
    }
}

/// Answers a describe request: the function's role and peers on an edge.
async fn describe_edge(stream: &mut ControlStream, from: &str, agent: &Agent, edge: EdgeRef) {
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
            };
            let _ = write_message(stream, &answer).await;
        }
        Err(_) => {
            let message = "no such workflow channel for this token".to_owned();
            refuse(agent, stream, from, Refusal::NotAllowed, message).await;
        }
    }
}
