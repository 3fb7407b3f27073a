//! The maps shared by both programs and the agent (names in `floki_common::map`).

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    bindings::bpf_sock,
    btf_maps::{Array, HashMap, SkStorage, SockHash},
    helpers::generated::bpf_sk_storage_get,
    macros::btf_map,
};
use floki_common::{ChannelEnd, ChannelRecord, DatapathCounters, EndpointKey};

/// Most channels one agent tracks at once (two sockets each).
const MAX_CHANNELS: usize = 16384;

#[btf_map]
pub static FLOKI_ENDPOINTS: HashMap<EndpointKey, ChannelEnd, { 2 * MAX_CHANNELS }> = HashMap::new();

#[btf_map]
pub static FLOKI_SOCKETS: SockHash<ChannelEnd, { 2 * MAX_CHANNELS }> = SockHash::new();

#[btf_map]
pub static FLOKI_CHANNELS: HashMap<u32, ChannelRecord, MAX_CHANNELS> = HashMap::new();

#[btf_map]
pub static FLOKI_SOCKET_ENDS: SkStorage<ChannelEnd> = SkStorage::new();

#[btf_map]
pub static FLOKI_COUNTERS: Array<DatapathCounters, 1> = Array::new();

/// The channel end a socket was tagged with by `sock_ops`, if any.
/// `init` creates the tag when given.
#[inline(always)]
pub fn socket_end(sk: *mut bpf_sock, init: Option<&mut ChannelEnd>) -> Option<*mut ChannelEnd> {
    let (value, flags) = match init {
        Some(end) => (core::ptr::from_mut(end).cast::<c_void>(), 1u64), // BPF_SK_STORAGE_GET_F_CREATE
        None => (core::ptr::null_mut(), 0),
    };
    let map = core::ptr::from_ref(&FLOKI_SOCKET_ENDS)
        .cast_mut()
        .cast::<c_void>();
    // SAFETY: `sk` comes from the program context; the helper checks it.
    let end = unsafe { bpf_sk_storage_get(map, sk.cast(), value, flags) };
    (!end.is_null()).then_some(end.cast())
}

/// Adds `n` to a counter that user space and other CPUs read concurrently.
#[inline(always)]
pub fn add(counter: *mut u64, n: u64) {
    // The BPF target has no `AtomicU64::fetch_add` in core; the intrinsic
    // compiles to the BPF atomic add instruction.
    // SAFETY: `counter` points into a map value, 8-byte aligned, alive for the
    // whole program run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Adds `n` to the global counter at byte `offset` of [`DatapathCounters`]
/// (`offset_of!`): no reference to the map value is ever made, as other
/// CPUs and user space update it concurrently.
#[inline(always)]
pub fn count(offset: usize, n: u64) {
    if let Some(counters) = FLOKI_COUNTERS.get_ptr_mut(0) {
        // SAFETY: `offset` is a field offset inside the map's only value,
        // which stays valid for the whole program run.
        let counter = unsafe { counters.cast::<u8>().add(offset) }.cast::<u64>();
        add(counter, n);
    }
}
