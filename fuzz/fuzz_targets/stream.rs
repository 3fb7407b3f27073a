//! A sender's and a receiver's state machines joined by a pipe, with
//! arbitrary data, window and chunking: the receiver gets exactly the
//! sender's bytes and both agree on the verdict. The sender also takes
//! arbitrary bytes as the receiver's frames without panicking.
#![no_main]

use floki_proto::stream::{Inbound, Outbound, Want};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let [mode, window, chunk, rest @ ..] = input else {
        return;
    };
    if mode % 4 == 0 {
        // Hostile receiver frames at an honest sender.
        let mut outbound = Outbound::new(64 << 10);
        let _ = outbound.receive(rest);
        let _ = outbound.acked();
        return;
    }
    let window = 64u64 << 10 << (window % 5);
    let chunk = usize::from(*chunk).max(1) * 97;
    let data = rest;
    let mut inbound = Inbound::new(window);
    let mut outbound = Outbound::new(window);
    let mut received = Vec::new();
    let (mut pos, mut ended) = (0, false);
    for _ in 0..10_000 {
        let out = inbound.outgoing().to_vec();
        inbound.wrote_out(out.len());
        outbound.receive(&out).expect("an honest receiver's frames");
        if let Some(verdict) = outbound.acked() {
            verdict.expect("an honest stream is acknowledged");
            assert_eq!(received, data);
            return;
        }
        let mut wire = Vec::new();
        while pos < data.len() {
            let Some(next) = outbound.next_write(data.len() - pos) else {
                break;
            };
            let (header, payload) = (next.header.to_vec(), next.payload);
            wire.extend_from_slice(&header);
            wire.extend_from_slice(&data[pos..pos + payload]);
            pos += outbound.wrote(header.len() + payload, &data[pos..]);
        }
        if pos == data.len() && !ended {
            wire.extend_from_slice(&outbound.end_frame());
            ended = true;
        }
        let mut input = &wire[..];
        while !input.is_empty() {
            let n = match inbound.want() {
                Want::Framing => inbound
                    .frame_bytes(&input[..input.len().min(chunk)])
                    .expect("an honest sender's frames"),
                Want::Payload(left) => {
                    let n = left.min(chunk).min(input.len());
                    received.extend_from_slice(&input[..n]);
                    inbound.payload(&input[..n]);
                    n
                }
                Want::Finished => break,
            };
            input = &input[n..];
        }
    }
    panic!("the stream never finished");
});
