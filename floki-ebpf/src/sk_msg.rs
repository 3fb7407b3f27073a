//! `floki_sk_msg`: redirects a channel socket's writes into its peer's receive
//! queue, bypassing TCP/IP (or, for a producer whose consumer is on another
//! node, into the send queue of the agents' link), and counts the bytes it
//! moved.
//!
//! It also holds the sender to its window. An ingress redirect has no
//! backpressure: whatever a sender writes lands in its receiver's socket,
//! read or not. So the program notes the credits the receiver writes (it
//! sees both directions of the channel) and refuses a sender's write that
//! would take it past the latest credit plus [`WINDOW_SLACK`]: the write
//! fails with `EACCES`, and nothing more is queued.
//!
//! And it keeps a sender's eager hello (written before the receiver's first
//! credit) from going over TCP: while the receiver's socket is not in the
//! map, the hello goes back into the sender's own receive queue, where the
//! sender finds it and waits for the credit instead. Had it passed, the
//! stream's first bytes would sit in the receiver's TCP queue behind the
//! spliced ones that follow, which its reads take first. (Refusing the
//! write, `SK_DROP`, would refuse every later write of the socket too: the
//! kernel keeps a dropped verdict for the socket.)

use core::mem::offset_of;

use aya_ebpf::{
    bindings::{
        BPF_F_INGRESS,
        sk_action::{SK_DROP, SK_PASS},
    },
    helpers::generated::bpf_msg_pull_data,
    macros::sk_msg,
    programs::SkMsgContext,
};
use floki_common::{ChannelRecord, DatapathCounters, ROLE_RECEIVER, ROLE_SENDER, WINDOW_SLACK};

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
        if end.role == ROLE_SENDER && is_eager_hello(&ctx) {
            count(offset_of!(DatapathCounters, eager_returns), 1);
            return FLOKI_SOCKETS.redirect_msg(&ctx, end, u64::from(BPF_F_INGRESS)) as u32;
        }
        // The peer is not (or no longer) in the map: plain TCP delivers these
        // bytes intact, or reports the peer's absence to the writer.
        count(offset_of!(DatapathCounters, passed_msgs), 1);
        return SK_PASS;
    }
    let size = u64::from(ctx.size());
    if end.role == ROLE_RECEIVER {
        note_credits(&ctx, record);
    } else if past_window(record, size) {
        count(offset_of!(DatapathCounters, window_refusals), 1);
        return SK_DROP;
    }
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

/// A hello frame: its kind, the flag that makes it eager
/// (`floki_proto::frame::HELLO_EAGER`) and its length (header and key).
const HELLO: u8 = 0x01;
const HELLO_EAGER: u8 = 0x01;
const HELLO_LEN: u32 = 24;

/// Whether a sender's message is an eager hello, written in one message of
/// its own (as the client does).
#[inline(always)]
fn is_eager_hello(ctx: &SkMsgContext) -> bool {
    if ctx.size() != HELLO_LEN {
        return false;
    }
    // SAFETY: the helper is called with this program's own context; it
    // only makes the message's first two bytes linear.
    if ctx.data() + 2 > ctx.data_end() && unsafe { bpf_msg_pull_data(ctx.msg, 0, 2, 0) } != 0 {
        return false;
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + 2 > data_end {
        return false;
    }
    let frame = data as *const u8;
    // SAFETY: the first two bytes are inside [data, data_end), checked just
    // above.
    unsafe { *frame == HELLO && *frame.add(1) & HELLO_EAGER != 0 }
}

/// Frame kind of a credit, and its length (header and u64 total).
const CREDIT: u8 = 0x11;
const CREDIT_LEN: usize = 16;
/// Frames read per receiver message: credits, an ack, a "stored" mark.
const MAX_FRAMES: usize = 4;
/// A receiver's message longer than this is not read (a rejection's
/// reason); the window is no longer enforced for that channel.
const MAX_READ: usize = 64;

/// Notes the credits in a receiver's message (`granted` only grows). A
/// message it cannot read whole turns enforcement off for the channel, so
/// that an honest sender is never held to a credit it was given past it.
#[inline(always)]
fn note_credits(ctx: &SkMsgContext, record: *mut ChannelRecord) {
    let data = ctx.data();
    let data_end = ctx.data_end();
    let size = ctx.size() as usize;
    let mut granted = 0u64;
    let mut off = 0usize;
    let mut whole = false;
    if size <= MAX_READ && data + size <= data_end {
        for _ in 0..MAX_FRAMES {
            if off >= size {
                whole = true;
                break;
            }
            if off > MAX_READ || data + off + 8 > data_end {
                break;
            }
            let frame = (data + off) as *const u8;
            // SAFETY: the 8-byte header is inside [data, data_end), checked
            // just above.
            let (kind, len) = unsafe {
                (
                    *frame,
                    u32::from_be_bytes([*frame.add(4), *frame.add(5), *frame.add(6), *frame.add(7)])
                        as usize,
                )
            };
            if kind == CREDIT && len == 8 {
                if data + off + CREDIT_LEN > data_end {
                    break;
                }
                // SAFETY: the credit's 8 payload bytes are inside the
                // message, checked just above.
                let credit = unsafe { core::ptr::read_unaligned(frame.add(8).cast::<[u8; 8]>()) };
                granted = granted.max(u64::from_be_bytes(credit));
            }
            if len > MAX_READ {
                break;
            }
            off += 8 + len;
        }
        if off >= size {
            whole = true;
        }
    }
    let granted = if whole { granted } else { u64::MAX };
    // SAFETY: `record` points into the map value. Only this channel's
    // receiver socket writes the field (its writes are serialised by the
    // socket lock), and a torn read by the sender's program is impossible
    // for an aligned u64.
    unsafe {
        if granted > (*record).granted {
            (*record).granted = granted;
        }
    }
}

/// Whether a sender's write of `size` bytes takes it past its receiver's
/// credit (plus the slack), or past the window the agent granted at
/// pairing; never while neither is known.
#[inline(always)]
fn past_window(record: *mut ChannelRecord, size: u64) -> bool {
    // SAFETY: `record` points into the map value.
    let (granted, sent) = unsafe { ((*record).granted, (*record).bytes[ROLE_SENDER as usize]) };
    granted != 0 && sent.saturating_add(size) > granted.saturating_add(WINDOW_SLACK)
}
