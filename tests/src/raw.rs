//! The control protocol byte by byte, for tests of what goes on the wire
//! (docs/PROTOCOL.md, section 1).

use serde_json::Value;

/// The preamble and a hello whose JSON is `json`, as a client sends them.
pub fn hello(json: &str) -> Vec<u8> {
    let mut out = floki_proto::control::preamble().to_vec();
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json.as_bytes());
    out
}

/// The whole messages at the start of `bytes`, in order (a message cut
/// short at the end is left out).
pub fn messages(mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some((len, rest)) = bytes.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        let Some(json) = rest.get(..len) else { break };
        out.push(serde_json::from_slice(json).expect("a message of JSON"));
        bytes = &rest[len..];
    }
    out
}
