"""docs/conformance/vectors.json read the way a client in another language
would read docs/PROTOCOL.md: an independent decoding of the frames (struct
and the xxhash package, not the floki package), the handshake against a
live agent, and a live ring's header at the documented offsets. The Rust
side checks that its implementation produces these very bytes
(floki-proto/tests/conformance.rs)."""

from __future__ import annotations

import json
import socket
import struct
import threading
from pathlib import Path

import xxhash

import floki

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "conformance" / "vectors.json").read_text()
)

KINDS = {0x01: "hello", 0x02: "data", 0x03: "end", 0x04: "abort", 0x11: "credit", 0x12: "ack", 0x13: "reject"}


def frames(wire: bytes):
    """(kind, payload) of each frame: 8-byte header (kind, flags 0,
    reserved 0, u32 length), then the payload."""
    out = []
    while wire:
        kind, flags, reserved, length = struct.unpack(">BBHI", wire[:8])
        assert flags == 0 and reserved == 0
        out.append((KINDS[kind], wire[8 : 8 + length]))
        wire = wire[8 + length :]
    return out


def test_a_small_streams_frames_decode_as_documented():
    for name in ("stream", "stream_larger_than_a_quarter_window"):
        vector = VECTORS[name]
        data = bytes.fromhex(vector["data"])
        window = vector["window"]
        assert frames(bytes.fromhex(vector["receiver_first"])) == [
            ("credit", struct.pack(">Q", window))
        ]
        assert frames(bytes.fromhex(vector["sender_hello"])) == [
            ("hello", bytes.fromhex(VECTORS["handshake"]["key_bytes"]))
        ]
        # The eager hello: the same frame with flags 01 (the only flag a
        # hello may carry), sent before the receiver's first credit.
        eager = bytes.fromhex(vector["sender_eager_hello"])
        assert struct.unpack(">BBHI", eager[:8]) == (0x01, 0x01, 0, 16)
        assert eager[8:] == bytes.fromhex(VECTORS["handshake"]["key_bytes"])
        sent = frames(bytes.fromhex(vector["sender_frames"]))
        assert [kind for kind, _ in sent[:-1]] == ["data"] * (len(sent) - 1)
        assert b"".join(payload for _, payload in sent[:-1]) == data
        kind, mark = sent[-1]
        total, checksum = struct.unpack(">QQ", mark)
        assert kind == "end" and total == len(data)
        assert checksum == xxhash.xxh3_64_intdigest(data) == int(vector["xxh3"], 16)
        # The sender never exceeds its credit, headers included.
        assert sum(8 + len(p) for _, p in sent[:-1]) <= window
        # The receiver's answer: credits by the quarter-window rule (checked
        # after each read handed to the application; this receiver read
        # each frame's payload whole), then the ack echoing the end mark.
        answer = frames(bytes.fromhex(vector["receiver_answer"]))
        assert answer[-1] == ("ack", mark)
        granted, consumed, credits = window, 0, []
        for kind, payload in sent[:-1]:
            consumed += 8 + len(payload)
            if consumed + window - granted >= window // 4:
                granted = consumed + window
                credits.append(("credit", struct.pack(">Q", granted)))
        assert answer[:-1] == credits


def test_the_handshake_as_documented_with_a_live_agent(node):
    vector = VECTORS["handshake"]
    for name in ("receiver_hello", "sender_hello", "accepted", "paired_to_sender"):
        wire = bytes.fromhex(vector[name]["wire"])
        (length,) = struct.unpack(">I", wire[:4])
        assert length == len(wire) - 4 <= 16 * 1024
        assert json.loads(wire[4:]) == vector[name]["json"]
    assert bytes.fromhex(vector["preamble"]) == b"FLKI\x00\x01"
    # The sender's bytes from the vector, to a real agent: it answers
    # `accepted` (and sends no preamble back).
    path = node.unix.removeprefix("unix:") if hasattr(str, "removeprefix") else node.unix[5:]
    with socket.socket(socket.AF_UNIX) as agent:
        agent.connect(path)
        agent.sendall(bytes.fromhex(vector["preamble"]) + bytes.fromhex(vector["sender_hello"]["wire"]))
        (length,) = struct.unpack(">I", agent.recv(4, socket.MSG_WAITALL))
        reply = json.loads(agent.recv(length, socket.MSG_WAITALL))
    expected = vector["accepted"]["json"]
    assert sorted(reply) == sorted(expected)
    assert reply["event"] == "accepted" and isinstance(reply["channel_id"], int)


def test_a_live_rings_header_as_documented(node, channel):
    vector = VECTORS["ring"]
    data = bytes.fromhex(vector["data"])
    sender = threading.Thread(
        target=lambda: floki.send(channel, data, agent=node.unix, timeout=30)
    )
    sender.start()
    with floki.Receiver(channel, agent=node.unix, window=vector["capacity"], timeout=30) as rx:
        assert rx.transport == "shm"
        view = rx.read_view()
        header = rx._ring[:4096]

        def words(header: bytes) -> dict:
            u64 = lambda at: struct.unpack_from("=Q", header, at)[0]  # noqa: E731
            u32 = lambda at: struct.unpack_from("=I", header, at)[0]  # noqa: E731
            return {
                "magic@0": f"{u64(0):016x}",
                "capacity@64": u64(64),
                "head@128": u64(128),
                "tail@192": u64(192),
                "end@512": u32(512),
                "total@576": u64(576),
                "checksum@640": f"{u64(640):016x}",
                "ack@704": u32(704),
            }

        seen = words(header)
        assert bytes(view) == data
        # Written, maybe already ended: everything the reader has not done.
        expected = vector["after_end"] if seen["end@512"] else vector["after_write"]
        assert seen == expected, seen
        assert rx.read_view() == b""  # verified: the receiver acks
        assert words(rx._ring[:4096]) == vector["after_ack"]
        rx.finish()
    sender.join()
