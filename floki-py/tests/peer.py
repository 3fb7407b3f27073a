"""A function under test: one end of a channel or of a workflow edge, in
its own process (inside a node's namespace and cgroup), written with the
`floki` package as a function author would. It prints one JSON line: what
it moved, the digest of it, and the exception if one was raised.

    peer.py send --agent A --channel C --bytes N [--seed S] [--writes mixed|fixed:N]
    peer.py recv --agent A --channel C [--read readinto|read|view|lines] [--pace B/s]
    peer.py edge-send --edge E --data-seed S --bytes N [--all]   (FLOKI_* from the environment)
    peer.py edge-recv --edge E [--all]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time

import floki


def pattern(seed: int, size: int) -> bytes:
    """The deterministic bytes a sender sends (randbytes takes at most
    256 MiB at a time)."""
    rng = random.Random(seed)
    step = 16 << 20
    return b"".join(rng.randbytes(min(step, size - at)) for at in range(0, size, step))


def write_sizes(writes: str, total: int, seed: int):
    """Write sizes: fixed, or mixed from 1 B to 1 MiB."""
    if writes.startswith("fixed:"):
        step = int(writes.split(":", 1)[1])
        while total > 0:
            yield min(step, total)
            total -= step
        return
    rng = random.Random(seed ^ 0x5EED)
    while total > 0:
        n = min(total, rng.choice([1, 7, 100, 4096, 65536, 1 << 20, rng.randint(1, 1 << 20)]))
        yield n
        total -= n


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def failed(err: BaseException, **fields) -> None:
    report(ok=False, error=type(err).__name__, message=str(err), **fields)
    sys.exit(1)


def send(args) -> None:
    data = pattern(args.seed, args.bytes)
    view = memoryview(data)
    try:
        with floki.Sender(
            args.channel, agent=args.agent, timeout=args.timeout, live=args.live
        ) as tx:
            pos = 0
            for n in write_sizes(args.writes, len(data), args.seed):
                tx.write(view[pos : pos + n])
                pos += n
                if args.rate:
                    time.sleep(n / args.rate)
            summary = tx.finish()
    except floki.Error as err:
        failed(err)
    report(
        ok=True,
        bytes=summary.bytes,
        transport=summary.transport,
        stored=summary.stored,
        digest=hashlib.blake2b(data).hexdigest(),
    )


def read_all(rx: floki.Receiver, how: str, pace: int, digest) -> int:
    """Reads the stream to its verified end, feeding `digest`."""
    total = 0
    buf = bytearray(1 << 20)
    while True:
        if how == "readinto":
            n = rx.readinto(buf)
            chunk = memoryview(buf)[:n]
        elif how == "read":
            chunk = rx.read(300_001)
            n = len(chunk)
        elif how == "view":
            chunk = rx.read_view()
            n = len(chunk)
        elif how == "lines":
            chunk = rx.readline()
            n = len(chunk)
        else:
            raise ValueError(how)
        if n == 0:
            return total
        digest.update(chunk)
        total += n
        if pace:
            time.sleep(n / pace)


def recv(args) -> None:
    digest = hashlib.blake2b()
    try:
        with floki.Receiver(
            args.channel, agent=args.agent, timeout=args.timeout, window=args.window
        ) as rx:
            total = read_all(rx, args.read, args.pace, digest)
            summary = rx.finish()
    except floki.Error as err:
        failed(err, digest=digest.hexdigest())
    report(
        ok=True,
        bytes=total,
        transport=summary.transport,
        stored=summary.stored,
        digest=digest.hexdigest(),
    )


def edge_send(args) -> None:
    """A producer: writes its part to each consumer, by pattern."""
    try:
        edge = floki.Edge(args.edge, timeout=args.timeout)
        info = edge.describe()
        # Broadcast: the same bytes to all; otherwise a part per consumer.
        parts = {
            consumer: pattern(
                args.data_seed if info.pattern == "broadcast" else args.data_seed + i, args.bytes
            )
            for i, consumer in enumerate(info.peers)
        }
        digests = {consumer: hashlib.blake2b(data).hexdigest() for consumer, data in parts.items()}
        if args.all:
            # Every stream written and ended, then every verdict.
            summaries = edge.send_all(parts)
            assert sorted(summaries) == sorted(parts), summaries
        else:
            for consumer, tx in edge.senders().items():
                with tx:
                    tx.write(parts[consumer])
    except floki.Error as err:
        failed(err)
    report(ok=True, pattern=info.pattern, role=info.role, digests=digests)


def edge_recv(args) -> None:
    """A consumer: reads each producer's stream whole."""
    try:
        edge = floki.Edge(args.edge, timeout=args.timeout)
        info = edge.describe()
        digests = {}
        transports = {}
        if args.all:
            for producer, data in edge.receive_all().items():
                digests[producer] = hashlib.blake2b(data).hexdigest()
        else:
            for producer, rx in edge.receivers().items():
                digest = hashlib.blake2b()
                with rx:
                    read_all(rx, "readinto", 0, digest)
                    transports[producer] = rx.finish().transport
                digests[producer] = digest.hexdigest()
    except floki.Error as err:
        failed(err)
    report(
        ok=True, pattern=info.pattern, role=info.role, digests=digests, transports=transports
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("verb", choices=["send", "recv", "edge-send", "edge-recv"])
    parser.add_argument("--agent")
    parser.add_argument("--channel")
    parser.add_argument("--edge")
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--writes", default="fixed:1048576")
    parser.add_argument("--rate", type=int, default=0)
    parser.add_argument("--read", default="readinto")
    parser.add_argument("--pace", type=int, default=0)
    parser.add_argument("--window", type=int)
    # Senders: wait for the receiver rather than let the agent store.
    parser.add_argument("--live", action="store_true")
    # Edge functions: every stream at once (Edge.send_all, Edge.receive_all).
    parser.add_argument("--all", action="store_true")
    # A peer that never comes is an error, not a hang of the test.
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    {"send": send, "recv": recv, "edge-send": edge_send, "edge-recv": edge_recv}[args.verb](args)


if __name__ == "__main__":
    main()
