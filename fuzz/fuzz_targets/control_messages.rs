//! Every control message a client, an agent or a peer agent may send,
//! from arbitrary bytes: parsing never panics, and what parses survives a
//! round trip unchanged.
#![no_main]

use floki_agent::agent::control::peers::protocol::{PeerAnswer, PeerRequest};
use floki_proto::control::{
    AgentMessage, ClientReport, ClientRequest, decode_key, valid_channel_name,
};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Ok(message) = serde_json::from_slice::<T>(data) {
        let text = serde_json::to_vec(&message).expect("what parsed serialises");
        let again: T = serde_json::from_slice(&text).expect("what serialised parses");
        assert_eq!(format!("{message:?}"), format!("{again:?}"));
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ClientRequest>(data);
    round_trip::<ClientReport>(data);
    round_trip::<AgentMessage>(data);
    round_trip::<PeerRequest>(data);
    round_trip::<PeerAnswer>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = valid_channel_name(text);
        let _ = decode_key(text);
    }
});
