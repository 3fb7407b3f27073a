//! `floki_sock_ops`: puts the agent's brokered data sockets, and only those,
//! into the socket map when they reach the established state, and takes them
//! out of the channel's record when they leave it.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_ESTABLISHED, bpf_sock,
        bpf_sock_ops,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::debug;
use floki_common::{DatapathCounters, EndpointKey, SIDE_ACCEPT, SIDE_CONNECT};

use crate::maps::{FLOKI_CHANNELS, FLOKI_ENDPOINTS, FLOKI_SOCKETS, count, socket_end};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn floki_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established::<SIDE_CONNECT>(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_established::<SIDE_ACCEPT>(&ctx),
        BPF_SOCK_OPS_STATE_CB => on_state_change(&ctx),
        _ => {}
    }
    1
}

// `SIDE` is a const parameter so that each side reads its context fields at
// constant offsets: the verifier rejects a computed context pointer, which is
// what LLVM makes of a runtime choice between remote and local fields.
fn on_established<const SIDE: u32>(ctx: &SockOpsContext) {
    let Some(key) = endpoint_key::<SIDE>(ctx) else {
        return;
    };
    // SAFETY: a lookup result is only copied out.
    let Some(end) = (unsafe { FLOKI_ENDPOINTS.get(key) }) else {
        return; // not a Floki data socket: leave it alone
    };
    let mut end = *end;
    let Some(sk) = socket(ctx) else {
        return;
    };
    // SAFETY: `ctx.ops` is the live context of this program run.
    let ops = unsafe { &mut *ctx.ops };
    // NOEXIST: a second socket can never take over an end that is in use.
    if FLOKI_SOCKETS
        .update(end, &mut *ops, BPF_NOEXIST.into())
        .is_err()
    {
        count(offset_of!(DatapathCounters, insert_errors), 1);
        debug!(
            ctx,
            "channel {} role {}: socket map insert refused", end.channel, end.role
        );
        return;
    }
    if socket_end(sk, Some(&mut end)).is_none() {
        count(offset_of!(DatapathCounters, insert_errors), 1);
        return;
    }
    // Hear about the socket leaving ESTABLISHED, to clear its presence below.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    if let Some(record) = FLOKI_CHANNELS.get_ptr_mut(end.channel) {
        // SAFETY: `ctx.ops` is a valid context for the helper.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        // SAFETY: `record` points into the map value; role is 0 or 1.
        unsafe { (*record).cookies[(end.role & 1) as usize] = cookie };
    }
    count(offset_of!(DatapathCounters, sockets_inserted), 1);
    debug!(
        ctx,
        "channel {} role {}: socket spliced", end.channel, end.role
    );
}

fn on_state_change(ctx: &SockOpsContext) {
    if ctx.arg(1) == BPF_TCP_ESTABLISHED {
        return;
    }
    let Some(sk) = socket(ctx) else {
        return;
    };
    let Some(end) = socket_end(sk, None) else {
        return;
    };
    // SAFETY: storage pointer returned by the helper for this socket.
    let end = unsafe { *end };
    let Some(record) = FLOKI_CHANNELS.get_ptr_mut(end.channel) else {
        return;
    };
    // SAFETY: `ctx.ops` is a valid context for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let slot = (end.role & 1) as usize;
    // SAFETY: `record` points into the map value.
    unsafe {
        // Only this socket clears its own presence: a newer socket of the same
        // end (after a rejected impostor) keeps its slot.
        if (*record).cookies[slot] == cookie {
            (*record).cookies[slot] = 0;
        }
    }
}

fn socket(ctx: &SockOpsContext) -> Option<*mut bpf_sock> {
    // SAFETY: `sk` is a context field the verifier allows for these ops.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    (!sk.is_null()).then_some(sk)
}

/// The endpoint this socket would be, seen from its own network namespace:
/// the receiver's listening address and port.
#[inline(always)]
fn endpoint_key<const SIDE: u32>(ctx: &SockOpsContext) -> Option<EndpointKey> {
    let ops = ctx.ops;
    let mut words = [0u32; 4];
    match ctx.family() {
        AF_INET => {
            words[2] = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
            words[3] = if SIDE == SIDE_CONNECT {
                remote_ip4(ops)
            } else {
                local_ip4(ops)
            };
        }
        AF_INET6 => {
            if SIDE == SIDE_CONNECT {
                remote_ip6(ops, &mut words);
            } else {
                local_ip6(ops, &mut words);
            }
        }
        _ => return None,
    }
    let mut addr = [0u8; 16];
    for (i, word) in words.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let port = if SIDE == SIDE_CONNECT {
        // The network-order port in the upper 16 bits.
        u32::from(u16::from_be((ctx.remote_port() >> 16) as u16))
    } else {
        ctx.local_port()
    };
    Some(EndpointKey {
        // SAFETY: `ctx.ops` is a valid context for the helper.
        netns_cookie: unsafe { bpf_get_netns_cookie(ops.cast()) },
        addr,
        port,
        side: SIDE,
    })
}

// The address readers are separate BPF subprograms on purpose: inlined, LLVM
// merges the IPv4 and IPv6 loads of the context into one load through a
// computed context pointer, which the verifier refuses ("dereference of
// modified ctx ptr"). A subprogram receives the context unmodified and reads
// each field at a constant offset.

#[inline(never)]
fn remote_ip4(ops: *mut bpf_sock_ops) -> u32 {
    // SAFETY: `ops` is the program's context.
    unsafe { (*ops).remote_ip4 }
}

#[inline(never)]
fn local_ip4(ops: *mut bpf_sock_ops) -> u32 {
    // SAFETY: `ops` is the program's context.
    unsafe { (*ops).local_ip4 }
}

#[inline(never)]
fn remote_ip6(ops: *mut bpf_sock_ops, out: &mut [u32; 4]) {
    // SAFETY: `ops` is the program's context.
    unsafe {
        out[0] = (*ops).remote_ip6[0];
        out[1] = (*ops).remote_ip6[1];
        out[2] = (*ops).remote_ip6[2];
        out[3] = (*ops).remote_ip6[3];
    }
}

#[inline(never)]
fn local_ip6(ops: *mut bpf_sock_ops, out: &mut [u32; 4]) {
    // SAFETY: `ops` is the program's context.
    unsafe {
        out[0] = (*ops).local_ip6[0];
        out[1] = (*ops).local_ip6[1];
        out[2] = (*ops).local_ip6[2];
        out[3] = (*ops).local_ip6[3];
    }
}
