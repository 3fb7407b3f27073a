"""A Python channel end for `cargo xtask bench python`: the counterpart of
the Rust bench peers (`floki-lab peer floki-send` / `floki-recv`), moving
the same in-memory bytes the same way and printing the same JSON: bytes,
seconds (the receiver's first byte to its last), transport.

    python stream.py send --addr A --channel C --bytes N --chunk K
    python stream.py recv --addr A --channel C --bytes N --chunk K

The receiver reads as the Rust one does: over shm in place in the ring
(`read_view`), over a socket into its own buffer (`readinto`).
"""

import argparse
import json
import time

import floki


def send(args) -> None:
    chunk = bytes((i * 7) % 251 for i in range(args.chunk))
    view = memoryview(chunk)
    with floki.Sender(args.channel, agent=args.addr) as tx:
        started = time.monotonic()
        sent = 0
        while sent < args.bytes:
            n = min(args.bytes - sent, len(chunk))
            tx.write(view[:n])
            sent += n
        summary = tx.finish()
    report(summary.bytes, time.monotonic() - started, summary.transport)


def recv(args) -> None:
    rx = floki.Receiver(args.channel, agent=args.addr)
    in_place = rx.transport == "shm"
    buf = bytearray(args.chunk)
    started = None
    while True:
        n = len(rx.read_view(args.chunk)) if in_place else rx.readinto(buf)
        if n == 0:
            break
        if started is None:
            started = time.monotonic()
    seconds = time.monotonic() - started if started else 0.0
    summary = rx.finish()
    if summary.bytes != args.bytes:
        raise SystemExit(f"received {summary.bytes} bytes, expected {args.bytes}")
    report(summary.bytes, seconds, summary.transport)


def report(nbytes: int, seconds: float, transport: str) -> None:
    print(json.dumps({"bytes": nbytes, "seconds": seconds, "transport": transport, "rtt_us": []}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("verb", choices=["send", "recv"])
    parser.add_argument("--addr", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--chunk", type=int, default=1 << 20)
    args = parser.parse_args()
    send(args) if args.verb == "send" else recv(args)


if __name__ == "__main__":
    main()
