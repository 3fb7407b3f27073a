//! `floki_sk_msg`: redirects a channel socket's writes into its peer's receive
//! queue, bypassing TCP/IP (or, for a producer whose consumer is on another
//! node, into the send queue of the agents' link), and counts the bytes it
//! moved.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    macros::sk_msg,
    programs::SkMsgContext,
};
use floki_common::DatapathCounters;

use crate::maps::{FLOKI_CHANNELS, FLOKI_SOCKETS, add, count, socket_end};

#[sk_msg]
pub fn floki_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: `sk` is a context field of sk_msg programs.
    let sk = unsafe { (*ctx.msg).__bindgen_anon_3.sk };
    if sk.is_null() {
        return SK_PASS;
    }
    let Some(end) = socket_end(sk, None) else {
        return SK_PASS;
    };
    // SAFETY: storage pointer returned by the helper for this socket.
    let end = unsafe { *end };
    let Some(record) = FLOKI_CHANNELS.get_ptr_mut(end.channel) else {
        return SK_PASS;
    };
    let role = (end.role & 1) as usize;
    // SAFETY: `record` points into the map value.
    if unsafe { (*record).cookies[role ^ 1] } == 0 {
        // The peer is not (or no longer) in the map: plain TCP delivers these
        // bytes intact, or reports the peer's absence to the writer.
        count(offset_of!(DatapathCounters, passed_msgs), 1);
        return SK_PASS;
    }
    let size = u64::from(ctx.size());
    // SAFETY: as above.
    let egress = unsafe { (*record).egress[role] } != 0;
    // Ingress: into the peer's receive queue (a function on this node).
    // Egress: out of the peer's send queue (the link to another node's agent).
    let flags = if egress { 0 } else { u64::from(BPF_F_INGRESS) };
    let verdict = FLOKI_SOCKETS.redirect_msg(&ctx, end.peer(), flags) as u32;
    if verdict == SK_PASS {
        // SAFETY: as above.
        unsafe {
            add(&raw mut (*record).bytes[role], size);
            add(&raw mut (*record).msgs[role], 1);
        }
        if egress {
            count(offset_of!(DatapathCounters, forwarded_bytes), size);
        } else {
            count(offset_of!(DatapathCounters, spliced_bytes), size);
        }
        count(offset_of!(DatapathCounters, spliced_msgs), 1);
    } else {
        count(offset_of!(DatapathCounters, redirect_errors), 1);
    }
    verdict
}
