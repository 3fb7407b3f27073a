//! Which transport a same-node channel takes, and why: `shm` when both ends
//! can take a ring, else `splice` when the kernel programs are attached,
//! else `tcp`. An end may insist on one (`--transport`, for experiments);
//! the agent then provides exactly that or refuses the channel.

use crate::protocol::control::{Hello, Transport};

/// What the agent will try for a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The transport to set up.
    pub transport: Transport,
    /// Whether an end insisted on it (no fallback if it cannot be set up).
    pub insisted: bool,
    /// Why, for status.
    pub reason: String,
}

/// Picks the transport of a channel whose two ends are on this node;
/// `Err` says why the ends' demands cannot be met.
pub fn plan(sender: &Hello, receiver: &Hello, ebpf: bool) -> Result<Plan, String> {
    let insisted = match (sender.transport, receiver.transport) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "the sender insists on transport {a} and the receiver on {b}; drop one --transport"
            ));
        }
        (a, b) => a.or(b),
    };
    let shm = sender.shm && receiver.shm;
    let plan = |transport, reason: String| Plan {
        transport,
        insisted: insisted.is_some(),
        reason,
    };
    match insisted {
        Some(Transport::Shm) if !shm => {
            let which = cannot_take_ring(sender, receiver);
            Err(format!(
                "transport shm needs both ends on the agent's Unix socket with a client that takes a ring \
                 (the CLI or the blocking library); the {which} cannot"
            ))
        }
        Some(Transport::Splice) if !ebpf => Err(
            "transport splice needs the agent's eBPF datapath, which is not active (see `floki-agent status`)"
                .into(),
        ),
        Some(transport) => Ok(plan(transport, format!("an end asked for {transport}"))),
        None if shm => Ok(plan(
            Transport::Shm,
            "both ends on this node take a shared-memory ring".into(),
        )),
        None if ebpf => Ok(plan(
            Transport::Splice,
            format!(
                "both ends on this node, socket clients ({} cannot take a ring)",
                cannot_take_ring(sender, receiver)
            ),
        )),
        None => Ok(plan(
            Transport::Tcp,
            "eBPF datapath not active and an end cannot take a ring".into(),
        )),
    }
}

fn cannot_take_ring(sender: &Hello, receiver: &Hello) -> &'static str {
    match (sender.shm, receiver.shm) {
        (false, false) => "sender and receiver",
        (false, true) => "sender",
        _ => "receiver",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::control::Role;

    fn hello(role: Role, shm: bool, transport: Option<Transport>) -> Hello {
        Hello {
            channel: "c".into(),
            role,
            netns_cookie: None,
            listen: None,
            window: None,
            stream: None,
            shm,
            transport,
        }
    }

    fn pick(
        send: (bool, Option<Transport>),
        recv: (bool, Option<Transport>),
        ebpf: bool,
    ) -> Result<Transport, String> {
        plan(
            &hello(Role::Send, send.0, send.1),
            &hello(Role::Recv, recv.0, recv.1),
            ebpf,
        )
        .map(|plan| plan.transport)
    }

    #[test]
    fn shm_when_both_take_a_ring_else_splice_else_tcp() {
        assert_eq!(pick((true, None), (true, None), true), Ok(Transport::Shm));
        assert_eq!(pick((true, None), (true, None), false), Ok(Transport::Shm));
        assert_eq!(
            pick((true, None), (false, None), true),
            Ok(Transport::Splice)
        );
        assert_eq!(pick((false, None), (true, None), false), Ok(Transport::Tcp));
    }

    #[test]
    fn an_end_may_insist_and_is_refused_what_cannot_be() {
        let splice = Some(Transport::Splice);
        let shm = Some(Transport::Shm);
        let tcp = Some(Transport::Tcp);
        assert_eq!(
            pick((true, splice), (true, None), true),
            Ok(Transport::Splice)
        );
        assert_eq!(pick((true, None), (true, tcp), true), Ok(Transport::Tcp));
        assert!(
            pick((true, splice), (true, None), false)
                .unwrap_err()
                .contains("eBPF")
        );
        assert!(
            pick((true, shm), (false, None), true)
                .unwrap_err()
                .contains("receiver")
        );
        assert!(
            pick((true, shm), (true, tcp), true)
                .unwrap_err()
                .contains("insists")
        );
    }
}
