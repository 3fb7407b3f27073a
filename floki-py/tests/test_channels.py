"""Plain channels between Python functions on one node, and with the Rust
CLI: every byte identical, on the agent's TCP port (the kernel splices the
two sockets) and on its Unix socket (a shared-memory ring); failures are
exceptions, never a short success."""

from __future__ import annotations

import filecmp
import os
import signal
import time

import pytest

from conftest import Node, finish

MIB = 1 << 20


def doors(node: Node):
    return {"tcp": (node.tcp, "splice"), "unix": (node.unix, "shm")}


@pytest.mark.parametrize("door", ["tcp", "unix"])
@pytest.mark.parametrize(
    "size,writes,read",
    [
        (0, "fixed:1048576", "readinto"),
        (1, "fixed:1", "read"),
        (100_003, "mixed", "readinto"),
        (16 * MIB, "mixed", "view"),
        (16 * MIB + 7, "fixed:65536", "read"),
        (256 * MIB, "mixed", "readinto"),
    ],
    ids=["0B", "1B", "100KB-mixed", "16MiB-view", "16MiB-64KiB-writes", "256MiB-mixed"],
)
def test_python_to_python_arrives_byte_identical(node, channel, door, size, writes, read):
    agent, transport = doors(node)[door]
    rx = node.python("recv", "--agent", agent, "--channel", channel, "--read", read)
    tx = node.python(
        "send", "--agent", agent, "--channel", channel, "--bytes", str(size),
        "--writes", writes, "--seed", str(size),
    )
    sent, received = finish(tx), finish(rx)
    assert sent.ok, sent
    assert received.ok, received
    assert received.report["bytes"] == size
    assert received.report["digest"] == sent.report["digest"]
    assert received.report["transport"] == transport
    status = node.channel(channel)
    assert status["state"] == "done"
    assert status["transport"] == transport


@pytest.mark.parametrize("door", ["tcp", "unix"])
def test_python_and_the_rust_cli_stream_to_each_other(node, channel, door, tmp_path):
    agent, transport = doors(node)[door]
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(8 * MIB + 13))
    # The CLI sends, Python receives into a file.
    into = tmp_path / "from-cli.bin"
    rx = node.command(
        [os.sys.executable, "-c",
         "import floki,sys; s=floki.receive_file(sys.argv[1], sys.argv[2], agent=sys.argv[3]);"
         "print(s.transport)", f"{channel}-a", str(into), agent],
        stdout=-1, stderr=-1,
    )
    cli = node.cli("send", f"{channel}-a", str(source), "--agent", agent)
    assert cli.wait(60) == 0, cli.stderr.read().decode()
    out, err = rx.communicate(timeout=60)
    assert rx.returncode == 0, err.decode()
    assert out.decode().strip() == transport
    assert filecmp.cmp(source, into, shallow=False)
    # Python sends a file, the CLI receives it.
    back = tmp_path / "from-python.bin"
    cli = node.cli("recv", f"{channel}-b", "-o", str(back), "--agent", agent)
    tx = node.command(
        [os.sys.executable, "-c",
         "import floki,sys; floki.send_file(sys.argv[1], sys.argv[2], agent=sys.argv[3])",
         f"{channel}-b", str(source), agent],
        stdout=-1, stderr=-1,
    )
    _, err = tx.communicate(timeout=60)
    assert tx.returncode == 0, err.decode()
    assert cli.wait(60) == 0, cli.stderr.read().decode()
    assert filecmp.cmp(source, back, shallow=False)


@pytest.mark.parametrize("door", ["tcp", "unix"])
def test_a_killed_sender_is_a_truncation_never_a_short_success(node, channel, door):
    agent, _ = doors(node)[door]
    rx = node.python("recv", "--agent", agent, "--channel", channel)
    tx = node.python(
        "send", "--agent", agent, "--channel", channel, "--bytes", str(256 * MIB),
        "--rate", str(64 * MIB),
    )
    node.wait_streaming(channel)
    tx.send_signal(signal.SIGKILL)
    received = finish(rx)
    assert not received.ok
    assert received.report["error"] == "TruncatedError", received
    assert "truncated" in received.report["message"]


@pytest.mark.parametrize("door", ["tcp", "unix"])
def test_a_killed_receiver_fails_the_sender(node, channel, door):
    agent, _ = doors(node)[door]
    rx = node.python("recv", "--agent", agent, "--channel", channel, "--pace", str(32 * MIB))
    tx = node.python("send", "--agent", agent, "--channel", channel, "--bytes", str(256 * MIB))
    node.wait_streaming(channel)
    rx.send_signal(signal.SIGKILL)
    sent = finish(tx)
    assert not sent.ok
    assert sent.report["error"] in ("ReceiverGoneError", "StreamError"), sent
    assert "receiver" in sent.report["message"]


def test_a_slow_python_reader_keeps_memory_within_the_window(node, channel):
    """Over the ring the window is the ring: the node's shared memory grows
    by the ring, not by the stream."""
    window = 8 * MIB

    def shmem() -> int:
        for line in open("/proc/meminfo"):
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no Shmem in /proc/meminfo")

    before = shmem()
    rx = node.python(
        "recv", "--agent", node.unix, "--channel", channel, "--pace", str(64 * MIB),
        "--window", str(window),
    )
    tx = node.python("send", "--agent", node.unix, "--channel", channel, "--bytes", str(256 * MIB))
    peak = before
    while rx.poll() is None:
        peak = max(peak, shmem())
        time.sleep(0.05)
    sent, received = finish(tx), finish(rx)
    assert sent.ok and received.ok, (sent, received)
    assert received.report["transport"] == "shm"
    grew = peak - before
    assert grew <= window + 4 * MIB, f"shared memory grew by {grew >> 20} MiB for an 8 MiB window"


def test_a_thread_produces_while_another_consumes(node, channel):
    """Blocking calls release the GIL: one process, a sender thread and a
    receiver thread on the same channel, and a third thread that keeps
    counting meanwhile."""
    script = f"""
import hashlib, json, threading, floki
data = bytes(range(256)) * 65536          # 16 MiB
ticks = 0
done = threading.Event()
def tick():
    global ticks
    while not done.is_set():
        ticks += 1
def send():
    floki.send({channel!r}, data, agent={node.unix!r})
threading.Thread(target=tick).start()
sender = threading.Thread(target=send)
sender.start()
got = floki.receive({channel!r}, agent={node.unix!r})
sender.join()
done.set()
print(json.dumps({{"ok": got == data, "ticks": ticks}}))
"""
    process = node.command([os.sys.executable, "-c", script], stdout=-1, stderr=-1)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
    result = __import__("json").loads(out)
    assert result["ok"]
    assert result["ticks"] > 1000, result


def test_errors_are_exceptions_with_the_agents_message(node, channel):
    import floki

    with pytest.raises(floki.AgentUnreachableError) as unreachable:
        floki.Sender(channel, agent="unix:/nonexistent/floki.sock")
    assert "cannot reach the Floki agent" in str(unreachable.value)
    assert isinstance(unreachable.value, ConnectionError)
    # The test process runs outside the node's namespace: name a bad
    # channel through a process inside it.
    script = (
        "import floki,sys\n"
        "try:\n floki.Sender('bad name!', agent=sys.argv[1])\n"
        "except floki.RefusedError as e: print(e)\n"
        "try:\n floki.Receiver(sys.argv[2], agent=sys.argv[1], timeout=0.5)\n"
        "except floki.PairTimeoutError as e: print('timeout:', e)\n"
    )
    process = node.command(
        [os.sys.executable, "-c", script, node.unix, channel], stdout=-1, stderr=-1
    )
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert "BadChannelName" in lines[0] and "invalid" in lines[0], lines
    assert lines[1].startswith("timeout: no sender joined channel"), lines


@pytest.mark.parametrize("door", ["tcp", "unix"])
def test_a_sender_that_exits_first_is_stored_and_read_by_later_receivers(node, channel, door):
    agent, _ = doors(node)[door]
    size = 24 * MIB + 5
    tx = node.python("send", "--agent", agent, "--channel", channel, "--bytes", str(size))
    sent = finish(tx)
    assert sent.ok, sent
    # `finish` said where the stream went: the agent holds it, verified.
    assert sent.report["stored"] is True, sent
    # A receiver that comes later, and again (a retried function): the same
    # bytes, from the agent's store.
    for _ in range(2):
        received = finish(node.python("recv", "--agent", agent, "--channel", channel))
        assert received.ok, received
        assert received.report["digest"] == sent.report["digest"]
        assert received.report["stored"] is True


def test_a_receiver_reads_only_a_stream_stored_in_its_own_run(node, channel):
    def python(code: str) -> str:
        process = node.command(
            [os.sys.executable, "-c", code, channel, node.unix], stdout=-1, stderr=-1
        )
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()
        return out.decode().strip()

    # No receiver yet: the agent stores the stream with its sender's run.
    stored = python(
        "import floki,sys; s=floki.Sender(sys.argv[1], agent=sys.argv[2], run='r1');"
        "s.write(b'r1' * 50_000); print(s.finish().stored)"
    )
    assert stored == "True"
    # A receiver of another run is not given it: it waits for its sender.
    other = python(
        "import floki,sys\n"
        "try:\n"
        "    floki.Receiver(sys.argv[1], agent=sys.argv[2], run='r2', timeout=1).read()\n"
        "except floki.PairTimeoutError as err:\n"
        "    print(type(err).__name__)"
    )
    assert other == "PairTimeoutError"
    # A receiver of the same run (its run from FLOKI_RUN) reads it.
    same = python(
        "import floki,os,sys; os.environ['FLOKI_RUN']='r1';"
        "r=floki.Receiver(sys.argv[1], agent=sys.argv[2]); d=r.read();"
        "print(d == b'r1' * 50_000, r.finish().stored)"
    )
    assert same == "True True"


def test_a_live_sender_waits_for_its_receiver(node, channel):
    tx = node.python(
        "send", "--agent", node.unix, "--channel", channel, "--bytes", str(MIB),
        "--live", "--timeout", "1.5",
    )
    sent = finish(tx)
    assert not sent.ok
    assert sent.report["error"] == "PairTimeoutError", sent
    assert "no receiver joined" in sent.report["message"], sent


def test_a_channel_secret_pairs_only_ends_that_share_it(node, channel, tmp_path):
    # A receiver without the secret comes first: it must not get the stream.
    stolen = tmp_path / "stolen.bin"
    thief = node.cli("recv", channel, "-o", str(stolen), "--agent", node.unix)
    time.sleep(0.3)
    receive = (
        "import floki,sys; r=floki.Receiver(sys.argv[1], agent=sys.argv[2], secret='our-secret');"
        "print(len(r.read()))"
    )
    send = (
        "import floki,sys; s=floki.Sender(sys.argv[1], agent=sys.argv[2], secret='our-secret');"
        "s.write(b'x' * 100_000); print(s.finish().bytes)"
    )
    rx = node.command([os.sys.executable, "-c", receive, channel, node.unix], stdout=-1, stderr=-1)
    tx = node.command([os.sys.executable, "-c", send, channel, node.unix], stdout=-1, stderr=-1)
    out, err = tx.communicate(timeout=60)
    assert tx.returncode == 0, err.decode()
    out, err = rx.communicate(timeout=60)
    assert rx.returncode == 0, err.decode()
    assert out.decode().strip() == "100000"
    assert thief.poll() is None, "the end without the secret was paired"
    thief.kill()
    thief.wait()
    assert not stolen.exists()


def over_the_kept_ring(reason: str) -> bool:
    """Whether a stream went over the ring its ends kept from their last:
    rewound by the agent, or held by the two without asking it (the
    receiver waited first: docs/PROTOCOL.md, "Held rings")."""
    return "kept from their last channel" in reason or "held ring" in reason


def test_streams_again_on_one_channel_reuse_their_ring_unless_views_were_lent(node, channel):
    """A function that receives one stream after another on the same channel
    keeps its connection and ring: the next stream goes over the same ring,
    and the agent says so. A ring whose memory went out as views
    (``read_view``) is not kept: a view may outlive its stream."""
    import threading

    import floki

    data = [bytes([i + 1]) * (100_000 + i) for i in range(4)]

    def send_all() -> None:
        for stream in data:
            # Live: never stored (a stored stream would be replayed to
            # every later receiver of the channel).
            floki.send(channel, stream, agent=node.unix, timeout=30, live=True)

    sender = threading.Thread(target=send_all)
    sender.start()
    got = []
    for i in range(len(data)):
        with floki.Receiver(channel, agent=node.unix, timeout=30) as rx:
            if i == 1:
                parts = []
                while True:
                    view = rx.read_view()
                    if not view:
                        break
                    parts.append(bytes(view))
                got.append(b"".join(parts))
            else:
                got.append(rx.read())
            rx.finish()
    sender.join()
    assert got == data
    # In the order sent: each stream is one byte longer than the last (a
    # held stream takes its id only when it is over).
    channels = sorted(
        (c["bytes"], c["reason"]) for c in node.status()["channels"] if c["name"] == channel
    )
    kept = [over_the_kept_ring(reason) for _, reason in channels]
    assert kept == [False, True, False, True], channels


def test_closing_the_kept_connections_makes_the_next_channel_start_afresh(node, channel):
    """A stream again on the same channel goes over the ring its two ends
    kept; once the process closed its kept connections, the next one gets
    a new ring."""
    import threading

    import floki

    data = [bytes([i + 1]) * (70_000 + i) for i in range(3)]
    got = []
    for i, stream in enumerate(data):
        if i == 2:
            floki.close_kept_connections()
        sender = threading.Thread(
            target=floki.send,
            args=(channel, stream),
            kwargs={"agent": node.unix, "timeout": 30, "live": True},
        )
        sender.start()
        got.append(floki.receive(channel, agent=node.unix, timeout=30))
        sender.join()
    assert got == data
    # In the order sent: each stream is one byte longer than the last (a
    # held stream takes its id only when it is over).
    channels = sorted(
        (c["bytes"], c["reason"]) for c in node.status()["channels"] if c["name"] == channel
    )
    kept = [over_the_kept_ring(reason) for _, reason in channels]
    assert kept == [False, True, False], channels


def test_streams_a_sender_ended_are_verified_before_it_finishes_any(node, channel):
    """A function with several small streams writes them all, ends them all
    (``end``), then finishes each: its receivers verify at once, none waits
    for another stream's ``finish``; a write after the end is an error."""
    import threading

    import floki

    names = [f"{channel}-{i}" for i in range(3)]
    data = [bytes([i + 7]) * (50_000 + i) for i in range(3)]
    got: dict[int, bytes] = {}
    verified = threading.Semaphore(0)

    def receive(i: int) -> None:
        with floki.Receiver(names[i], agent=node.unix, timeout=30) as rx:
            got[i] = rx.read()
            rx.finish()
        verified.release()

    receivers = [threading.Thread(target=receive, args=(i,)) for i in range(3)]
    for thread in receivers:
        thread.start()
    senders = [floki.Sender(name, agent=node.unix, live=True, timeout=30) for name in names]
    for sender, stream in zip(senders, data):
        sender.write(stream)
        sender.end()
    for _ in names:
        assert verified.acquire(timeout=30), "a receiver waited for its sender's finish"
    with pytest.raises(floki.Error) as refused:
        senders[0].write(b"more")
    assert "a write after the end of the stream" in str(refused.value)
    summaries = [sender.finish() for sender in senders]
    for thread in receivers:
        thread.join()
    assert [got[i] for i in range(3)] == data
    assert [s.bytes for s in summaries] == [len(d) for d in data]
    assert {s.transport for s in summaries} == {"shm"}
