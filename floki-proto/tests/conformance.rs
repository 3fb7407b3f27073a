//! The conformance vectors of docs/PROTOCOL.md (docs/conformance/vectors.json):
//! a handshake transcript, the frames and end mark of a small stream, a ring
//! header before and after a write. This test checks that the reference
//! implementation produces exactly those bytes; the Python package's tests
//! check the same file against their own reading of the protocol. With
//! `FLOKI_WRITE_VECTORS=1` it writes the file instead.

use std::{net::SocketAddr, path::PathBuf};

use floki_proto::{
    control::{AgentMessage, Handoff, Hello, Role, Transport, write_message, write_preamble},
    frame::{FrameKind, control_frame, eager_hello},
    ring::{self, RingReader, RingWriter},
    stream::{Inbound, Outbound, Want},
};
use serde_json::{Value, json};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/conformance/vectors.json")
}

/// One control message on the wire: its u32 length prefix and JSON.
async fn message<T: serde::Serialize>(value: &T) -> Value {
    let mut wire = Vec::new();
    write_message(&mut wire, value).await.expect("encodes");
    json!({
        "json": serde_json::from_slice::<Value>(&wire[4..]).expect("JSON"),
        "wire": hex(&wire),
    })
}

async fn handshake() -> Value {
    let mut preamble = Vec::new();
    write_preamble(&mut preamble).await.expect("encodes");
    let key = [0x5a; 16];
    let receiver = Hello {
        channel: "results".into(),
        role: Role::Recv,
        netns_cookie: Some(4096),
        listen: Some("127.0.0.1:41234".parse::<SocketAddr>().expect("address")),
        window: Some(65536),
        listener_at_pairing: false,
        stream: None,
        shm: false,
        transport: None,
        live: false,
        store: false,
        secret: None,
        kept_ring: false,
        kept_link: false,
        key_ahead: false,
        holds_link: false,
        eager_hello: true,
        unstarted_link: false,
        run: None,
    };
    let sender = Hello {
        role: Role::Send,
        listen: None,
        window: None,
        listener_at_pairing: false,
        eager_hello: false,
        unstarted_link: false,
        ..receiver.clone()
    };
    json!({
        "about": "a plain channel on the TCP port: each client sends the preamble, then its hello; the agent answers accepted, then paired once both are there (no preamble back)",
        "preamble": hex(&preamble),
        "receiver_hello": message(&receiver).await,
        "sender_hello": message(&sender).await,
        "accepted": message(&AgentMessage::Accepted {
            channel_id: 7,
            node: "node-a".into(),
            window: Some(65536),
            socket: None,
        })
        .await,
        "paired_to_sender": message(&AgentMessage::Paired {
            transport: Transport::Splice,
            peer: Some("127.0.0.1:41234".parse().expect("address")),
            key: floki_proto::control::encode_key(&key),
            window: 65536,
            socket: None,
            stored: false,
            again: false,
            link: false,
            key_sent: false,
            eager: true,
            unstarted: false,
        })
        .await,
        "paired_to_ring_end": message(&AgentMessage::Paired {
            transport: Transport::Shm,
            peer: None,
            key: floki_proto::control::encode_key(&key),
            window: 65536,
            socket: Some(Handoff::Ring),
            stored: false,
            again: false,
            link: false,
            key_sent: false,
            eager: false,
            unstarted: false,
        })
        .await,
        "key_bytes": hex(&key),
    })
}

/// The frames of `data` through a window of `window`, both directions.
fn stream(data: &[u8], window: u64) -> Value {
    let key = [0x5a; 16];
    let mut outbound = Outbound::new(window);
    let mut inbound = Inbound::new(window);
    let credit = Inbound::initial_credit(window);
    let hello = control_frame(FrameKind::Hello, &key);
    let mut to_receiver = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let next = outbound.next_write(data.len() - pos).expect("credit");
        let (header, payload) = (next.header.to_vec(), next.payload);
        to_receiver.extend_from_slice(&header);
        to_receiver.extend_from_slice(&data[pos..pos + payload]);
        pos += outbound.wrote(header.len() + payload, &data[pos..]);
    }
    let end = outbound.end_frame();
    to_receiver.extend_from_slice(&end);
    // The receiver consumes every frame and answers.
    let mut input = &to_receiver[..];
    while !input.is_empty() {
        let n = match inbound.want() {
            Want::Framing => inbound.frame_bytes(input).expect("valid frames"),
            Want::Payload(left) => {
                let n = left.min(input.len());
                inbound.payload(&input[..n]);
                n
            }
            Want::Finished => break,
        };
        input = &input[n..];
    }
    let answer = inbound.outgoing().to_vec();
    outbound.receive(&answer).expect("valid answer");
    assert_eq!(outbound.acked(), Some(Ok(())));
    json!({
        "about": "sender and receiver frames of a small stream: the receiver's first credit, the sender's hello (the pairing key; eager, flags 01, when its paired said eager), the data frames and the end mark (length, XXH3-64 seed 0), then the receiver's answer (credits granted as it read, the ack)",
        "data": hex(data),
        "window": window,
        "receiver_first": hex(&credit),
        "sender_hello": hex(&hello),
        "sender_eager_hello": hex(&eager_hello(&key)),
        "sender_frames": hex(&to_receiver),
        "end_mark": hex(&end),
        "xxh3": format!("{:016x}", outbound.checksum()),
        "receiver_answer": hex(&answer),
    })
}

/// The ring header's words (native-endian) at their documented offsets.
fn header_words(memory: &std::os::fd::OwnedFd) -> Value {
    use std::os::fd::AsRawFd as _;
    let mut header = vec![0u8; ring::HEADER_LEN];
    // SAFETY: reading the header of a memory file this test created into a
    // buffer of exactly that size.
    let n = unsafe {
        libc::pread(
            memory.as_raw_fd(),
            header.as_mut_ptr().cast(),
            header.len(),
            0,
        )
    };
    assert_eq!(n, ring::HEADER_LEN as isize);
    let u64_at = |at: usize| u64::from_ne_bytes(header[at..at + 8].try_into().expect("8"));
    let u32_at = |at: usize| u32::from_ne_bytes(header[at..at + 4].try_into().expect("4"));
    json!({
        "magic@0": format!("{:016x}", u64_at(0)),
        "capacity@64": u64_at(64),
        "head@128": u64_at(128),
        "tail@192": u64_at(192),
        "end@512": u32_at(512),
        "total@576": u64_at(576),
        "checksum@640": format!("{:016x}", u64_at(640)),
        "ack@704": u32_at(704),
    })
}

fn ring(data: &[u8]) -> Value {
    use std::os::fd::AsFd as _;
    let (memory, capacity) = ring::create(64 << 10).expect("ring");
    let before = header_words(&memory);
    let (a, b) = ring::socket_pair().expect("pair");
    let dup = || memory.as_fd().try_clone_to_owned().expect("dup");
    let mut writer = RingWriter::open(dup(), a).expect("writer");
    assert_eq!(writer.try_write(data), Ok(data.len()));
    let written = header_words(&memory);
    writer.publish_end();
    let ended = header_words(&memory);
    let mut reader = RingReader::open(dup(), b).expect("reader");
    let n = reader.try_fill().expect("data").expect("published").len();
    reader.consume_len(n);
    assert!(
        reader
            .try_fill()
            .expect("verified")
            .expect("end")
            .is_empty()
    );
    let acked = header_words(&memory);
    json!({
        "about": "the header of a 64 KiB ring: as created, after the sender wrote the data, after it published the end mark, after the receiver read and verified it",
        "data": hex(data),
        "capacity": capacity,
        "created": before,
        "after_write": written,
        "after_end": ended,
        "after_ack": acked,
    })
}

async fn vectors() -> Value {
    let data = b"hello, floki";
    json!({
        "version": 1,
        "handshake": handshake().await,
        "stream": stream(data, 64 << 10),
        "stream_larger_than_a_quarter_window": stream(&(0..40_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(), 64 << 10),
        "ring": ring(data),
    })
}

#[tokio::test]
async fn the_reference_implementation_produces_the_documented_vectors() {
    let produced = vectors().await;
    if std::env::var_os("FLOKI_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(path().parent().expect("dir")).expect("dir");
        let text = serde_json::to_string_pretty(&produced).expect("JSON") + "\n";
        std::fs::write(path(), text).expect("writing the vectors");
        return;
    }
    let documented: Value = serde_json::from_str(
        &std::fs::read_to_string(path()).expect("docs/conformance/vectors.json"),
    )
    .expect("JSON");
    assert_eq!(
        produced, documented,
        "the wire format moved: if on purpose, regenerate with FLOKI_WRITE_VECTORS=1 and bump the version"
    );
}
