//! The receiver's side of a stream fed arbitrary bytes, in arbitrary
//! pieces, as a hostile sender would: it never panics, never counts more
//! stream bytes than it was given, and once it reports an error or the end
//! it takes nothing more.
#![no_main]

use floki_proto::stream::{Inbound, Want};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&window, rest)) = data.split_first() else {
        return;
    };
    let Some((&piece, wire)) = rest.split_first() else {
        return;
    };
    let window = 64u64 << 10 << (window % 6);
    let piece = usize::from(piece).max(1);
    let mut inbound = Inbound::new(window);
    let mut input = wire;
    let mut payload = 0u64;
    while !input.is_empty() {
        let step = &input[..input.len().min(piece)];
        let taken = match inbound.want() {
            Want::Framing => match inbound.frame_bytes(step) {
                Ok(n) => n,
                Err(_) => {
                    assert_eq!(inbound.want(), Want::Finished);
                    return;
                }
            },
            Want::Payload(left) => {
                let n = left.min(step.len());
                inbound.payload(&step[..n]);
                payload += n as u64;
                n
            }
            Want::Finished => return,
        };
        assert!(taken <= step.len());
        if taken == 0 && inbound.want() != Want::Finished && !matches!(inbound.want(), Want::Payload(_)) {
            return;
        }
        input = &input[taken..];
    }
    assert_eq!(inbound.received(), payload);
});
