//! Floki's kernel programs.
//!
//! * `floki_sock_ops` (cgroup `sock_ops`): when a TCP socket of the cgroup
//!   reaches the established state, it looks the socket up in `FLOKI_ENDPOINTS`
//!   (the data sockets the agent brokered). Only a match goes into the socket map,
//!   so the node's other traffic is never touched.
//! * `floki_sk_msg` (`sk_msg` on the socket map): every write of a channel socket
//!   whose peer is in the map is redirected into the peer's receive queue, and
//!   its bytes are counted per channel.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod maps;
mod sk_msg;
mod sock_ops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
