"""Floki for Python functions: stream data from one function to another
without object storage.

A producer writes a named channel, its consumer reads it as it is written::

    import floki

    with floki.Sender("results") as tx:      # producer
        tx.write(data)                       # bytes, bytearray, memoryview, NumPy...
    # leaving the block waits until the receiver verified every byte

    with floki.Receiver("results") as rx:    # consumer
        data = rx.read()                     # the whole stream, verified

Functions of a workflow (``floki-agent apply``) open the streams of an edge
by peer function: :class:`Edge`. The agent is reached at ``agent=``, else
``FLOKI_AGENT``, else ``127.0.0.1:7878`` (``unix:/run/floki/floki.sock`` is
the fast path: the agent hands both ends a shared-memory ring there).

Every call that waits or copies releases the GIL. A stream cut short is an
exception (:class:`TruncatedError`), never a short success.
"""

from __future__ import annotations

import io
import mmap
import os
from typing import Any, Dict, Mapping, NamedTuple, Optional, Union

from . import _floki
from .errors import (
    AbortedError,
    AgentUnreachableError,
    CorruptedError,
    Error,
    NotAllowedError,
    PairTimeoutError,
    ReceiverGoneError,
    RefusedError,
    RejectedError,
    StreamError,
    StreamLostError,
    TransportUnavailableError,
    TruncatedError,
)

__all__ = [
    "AbortedError",
    "AgentUnreachableError",
    "CorruptedError",
    "Edge",
    "EdgeInfo",
    "Error",
    "NotAllowedError",
    "PairTimeoutError",
    "ReceiverGoneError",
    "Receiver",
    "RefusedError",
    "RejectedError",
    "Sender",
    "StreamError",
    "StreamLostError",
    "Summary",
    "TransportUnavailableError",
    "TruncatedError",
    "close_kept_connections",
    "receive",
    "receive_file",
    "send",
    "send_file",
]

#: What ``write`` takes: anything with the buffer protocol, read in place.
Buffer = Any
PathLike = Union[str, "os.PathLike[str]"]

_CHUNK = 1 << 20


class Summary(NamedTuple):
    """What a finished stream moved."""

    #: The agent-wide channel id.
    channel_id: int
    #: How the bytes travelled: ``shm``, ``splice`` or ``tcp``.
    transport: str
    #: Stream bytes.
    bytes: int
    #: XXH3-64 of the stream, verified by the receiver.
    checksum: int
    #: The other end was the agent's store: a sender's stream is stored for
    #: a receiver that has not started (verified by the agent); a receiver
    #: read a stream its sender had finished.
    stored: bool = False


class EdgeInfo(NamedTuple):
    """What a workflow edge looks like to one of its functions."""

    #: ``one-to-one``, ``broadcast``, ``gather`` or ``shuffle``.
    pattern: str
    #: ``producer`` or ``consumer``.
    role: str
    #: The functions at the other end, in spec order.
    peers: list
    #: The edge's buffer (window per stream), in bytes.
    buffer: int


def _agent(agent: Optional[str]) -> str:
    return agent or os.environ.get("FLOKI_AGENT") or _floki.DEFAULT_AGENT


def _secret(secret: Optional[str]) -> Optional[str]:
    # A plain channel's secret: both ends give the same one, and the agent
    # pairs them only with each other (docs/SECURITY.md).
    return secret or os.environ.get("FLOKI_CHANNEL_SECRET")


def _run(run: Optional[str]) -> Optional[str]:
    # The orchestrator's execution id: a consumer reads only a stored
    # stream of its own run (docs/WORKFLOWS.md, "Runs").
    return run or os.environ.get("FLOKI_RUN")


class Sender(io.BufferedIOBase):
    """The sending end of a channel: a writable file-like object.

    The constructor returns once the agent accepted the channel; until the
    receiver is there, writes fill a buffer of the channel's window. If the
    receiver has not come within the agent's grace period (50 ms by
    default), the agent stores the stream for it and :meth:`finish` returns
    a summary with ``stored=True``; with ``live=True`` the sender waits for
    the receiver instead (``timeout`` seconds at most, if given). A stored
    stream keeps ``run`` (default ``FLOKI_RUN``): the orchestrator's
    execution id, so that only a receiver of the same run reads it.
    ``write`` takes any object with the buffer protocol and reads it in
    place. Small writes are gathered into larger frames; ``flush`` sends
    them at once.

    :meth:`finish` (or leaving a ``with`` block normally, or :meth:`close`)
    sends the end mark and returns once the receiver verified every byte.
    Leaving a ``with`` block on an exception aborts the stream instead: the
    receiver gets an :class:`AbortedError` with the exception as reason.
    """

    def __init__(
        self,
        channel: str,
        *,
        agent: Optional[str] = None,
        timeout: Optional[float] = None,
        transport: Optional[str] = None,
        live: bool = False,
        secret: Optional[str] = None,
        run: Optional[str] = None,
        _native: Optional[Any] = None,
    ) -> None:
        super().__init__()
        if _native is None:
            _native = _floki.Sender(
                _agent(agent),
                channel,
                timeout=timeout,
                transport=transport,
                live=live,
                secret=_secret(secret),
                run=_run(run),
            )
        self._native = _native
        self._summary: Optional[Summary] = None
        # Set once the native stream is finished or aborted: io's close()
        # flushes first, which must then do nothing.
        self._ended = False
        self.name = channel

    def writable(self) -> bool:
        return True

    def write(self, b: Buffer) -> int:  # type: ignore[override]
        """Writes all of ``b`` (any object with the buffer protocol); returns
        its length in bytes."""
        self._checkClosed()
        return self._native.write(b)

    def flush(self) -> None:
        """Sends the small writes gathered so far."""
        if not self.closed and not self._ended:
            self._native.flush()

    def end(self) -> None:
        """Sends the end mark now, without waiting for the receiver's verdict;
        :meth:`finish` then waits for it. A function with several streams
        ends them all, then finishes each: their receivers verify them at
        once, not one after another. Nothing more may be written."""
        self._checkClosed()
        self._native.end()

    def finish(self) -> Summary:
        """Ends the stream: sends the end mark (unless :meth:`end` did),
        returns once the receiver has verified length and checksum."""
        if self._summary is None:
            self._checkClosed()
            self._ended = True
            try:
                self._summary = Summary(*self._native.finish())
            finally:
                super().close()
        return self._summary

    def abort(self, reason: str = "the sender aborted the stream") -> None:
        """Gives up on the stream: the receiver fails with ``reason``."""
        if not self.closed:
            self._ended = True
            self._native.abort(reason)
            super().close()

    def close(self) -> None:
        """Finishes the stream (see :meth:`finish`) if it is still open."""
        if not self.closed:
            self.finish()

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort(f"{kind.__name__}: {value}")

    def __del__(self) -> None:
        # Never finish from the garbage collector (it would wait for the
        # receiver): a sender dropped unfinished aborts, like a crash.
        if hasattr(self, "_native") and not self.closed:
            self.abort("the sender was dropped before finish()")

    @property
    def transport(self) -> Optional[str]:
        """How the bytes travel (``None`` until the receiver is there)."""
        return self._native.transport

    @property
    def channel_id(self) -> Optional[int]:
        """The agent-wide channel id."""
        return self._native.channel_id

    @property
    def bytes_sent(self) -> int:
        """Stream bytes written so far."""
        return self._native.bytes_sent


class Receiver(io.BufferedIOBase):
    """The receiving end of a channel: a readable file-like object.

    The constructor waits for the sender (``timeout`` seconds at most, if
    given). End of file comes only after the sender's end mark and checksum
    were verified; a stream cut short raises :class:`TruncatedError`.
    ``readinto`` fills the caller's buffer in place; over ``shm``,
    :meth:`read_view` hands out the bytes where they lie in the ring.
    With ``run`` (default ``FLOKI_RUN``), a stream the agent stored is read
    only if its sender gave the same run; otherwise the receiver waits for
    its sender.
    """

    def __init__(
        self,
        channel: str,
        *,
        agent: Optional[str] = None,
        timeout: Optional[float] = None,
        transport: Optional[str] = None,
        window: Optional[int] = None,
        secret: Optional[str] = None,
        run: Optional[str] = None,
        _native: Optional[Any] = None,
    ) -> None:
        super().__init__()
        if _native is None:
            _native = _floki.Receiver(
                _agent(agent),
                channel,
                timeout=timeout,
                transport=transport,
                window=window,
                secret=_secret(secret),
                run=_run(run),
            )
        self._native = _native
        self._eof = False
        self._summary: Optional[Summary] = None
        self._ring: Optional[mmap.mmap] = None
        self._lent = 0
        self.name = channel

    def readable(self) -> bool:
        return True

    def _returned(self) -> None:
        """Hands the bytes of the last view back to the sender."""
        if self._lent:
            self._native.consume(self._lent)
            self._lent = 0

    def readinto(self, b: Buffer) -> int:  # type: ignore[override]
        """Fills ``b`` (any writable object with the buffer protocol) with the
        next bytes; fewer only at the end, 0 once the stream ended verified."""
        self._checkClosed()
        self._returned()
        n = self._native.readinto(b)
        if n == 0 and memoryview(b).nbytes:
            self._eof = True
        return n

    def readinto1(self, b: Buffer) -> int:  # type: ignore[override]
        """Fills ``b`` with what is there (waiting only if nothing is)."""
        self._checkClosed()
        self._returned()
        n = self._native.readinto1(b)
        if n == 0 and memoryview(b).nbytes:
            self._eof = True
        return n

    def read(self, size: Optional[int] = -1) -> bytes:
        """Up to ``size`` bytes (fewer only at the end); everything to the
        verified end if ``size`` is negative or ``None``."""
        self._checkClosed()
        self._returned()
        if size is None or size < 0:
            data = self._native.readall()
            self._eof = True
            return data
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf) if n == size else bytes(memoryview(buf)[:n])

    def read1(self, size: int = -1) -> bytes:
        """At most ``size`` bytes with at most one read."""
        buf = bytearray(size if size is not None and size >= 0 else _CHUNK)
        n = self.readinto1(buf)
        return bytes(memoryview(buf)[:n])

    def readline(self, size: Optional[int] = -1) -> bytes:
        """The next line, ``\\n`` included (at most ``size`` bytes)."""
        self._checkClosed()
        self._returned()
        line = self._native.readline(-1 if size is None else size)
        if not line:
            self._eof = True
        return line

    def read_view(self, size: int = -1) -> memoryview:
        """The next bytes without a copy: over ``shm``, a read-only view of
        them in the shared ring, valid until the next read (the sender may
        then reuse their place); over a socket, a view of a fresh buffer.
        Empty once the stream ended verified."""
        self._checkClosed()
        self._returned()
        place = self._native.fill_ring()
        if place is None:
            return memoryview(self.read1(size if size >= 0 else _CHUNK))
        offset, length = place
        if length == 0:
            self._eof = True
            return memoryview(b"")
        if size >= 0:
            length = min(length, size)
        if self._ring is None:
            fd = self._native.ring_fd()
            try:
                self._ring = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        self._lent = length
        return memoryview(self._ring)[offset : offset + length]

    def finish(self) -> Summary:
        """After the end of the stream: what arrived (the agent is told)."""
        if self._summary is None:
            self._checkClosed()
            self._returned()
            try:
                self._summary = Summary(*self._native.finish())
            finally:
                super().close()
        return self._summary

    def close(self) -> None:
        """Finishes at the end of the stream; before it, closes this end (the
        sender then fails: the receiver is gone)."""
        if self.closed:
            return
        if self._eof:
            self.finish()
        else:
            self._native.close()
            super().close()

    @property
    def transport(self) -> Optional[str]:
        """How the bytes travel: ``shm``, ``splice`` or ``tcp``."""
        return self._native.transport

    @property
    def channel_id(self) -> Optional[int]:
        """The agent-wide channel id."""
        return self._native.channel_id

    @property
    def bytes_received(self) -> int:
        """Stream bytes received so far."""
        return self._native.bytes_received


class Edge:
    """A function's place on an edge of an applied workflow.

    Each argument left out is read from the environment, as the CLI reads
    it: ``FLOKI_WORKFLOW``, ``FLOKI_EDGE``, ``FLOKI_FUNCTION`` (this
    function), ``FLOKI_TOKEN`` (printed by ``floki-agent apply``),
    ``FLOKI_AGENT``, ``FLOKI_RUN`` (the orchestrator's execution id: a
    consumer reads only a stored stream of its own run, and waits for its
    producer otherwise). The edge is a set of point-to-point streams, one per
    (producer, consumer) pair; the pattern says what a function does with
    them: broadcast writes every byte to all its senders, shuffle writes
    partition j to the j-th, gather reads each producer's stream.

    A producer's streams are stored by the agents for consumers that start
    later (unless the edge says ``store: false``, or ``live=True`` here).
    """

    def __init__(
        self,
        edge: Optional[str] = None,
        *,
        workflow: Optional[str] = None,
        function: Optional[str] = None,
        token: Optional[str] = None,
        agent: Optional[str] = None,
        timeout: Optional[float] = None,
        transport: Optional[str] = None,
        live: bool = False,
        run: Optional[str] = None,
    ) -> None:
        self.edge = _required(edge, "edge", "FLOKI_EDGE")
        self.workflow = _required(workflow, "workflow", "FLOKI_WORKFLOW")
        self.function = _required(function, "function", "FLOKI_FUNCTION")
        self.token = _required(token, "token", "FLOKI_TOKEN")
        self.agent = _agent(agent)
        self.timeout = timeout
        self.transport = transport
        self.live = live
        self.run = _run(run)

    def _where(self) -> tuple:
        return (self.agent, self.workflow, self.token, self.edge, self.function)

    def describe(self) -> EdgeInfo:
        """The edge's pattern, this function's role, its peers and buffer."""
        return EdgeInfo(*_floki.describe(*self._where(), timeout=self.timeout))

    def senders(self) -> Dict[str, Sender]:
        """This producer's streams, one per consumer (in spec order), each
        ready to write once the agent accepted it."""
        _, senders = _floki.senders(
            *self._where(),
            timeout=self.timeout,
            transport=self.transport,
            live=self.live,
            run=self.run,
        )
        return {
            peer: Sender(f"{self.workflow}/{self.edge}", _native=native)
            for peer, native in senders
        }

    def receivers(self) -> Dict[str, Receiver]:
        """This consumer's streams, one per producer (in spec order);
        returns once every producer is there."""
        _, receivers = _floki.receivers(
            *self._where(), timeout=self.timeout, transport=self.transport, run=self.run
        )
        return {
            peer: Receiver(f"{self.workflow}/{self.edge}", _native=native)
            for peer, native in receivers
        }

    def send_all(self, data: Union[Buffer, Mapping[str, Buffer]]) -> Dict[str, Summary]:
        """Sends every stream of this producer: ``data`` to each consumer
        (one-to-one, broadcast), or ``data[consumer]`` to each when ``data``
        is a mapping (a shuffle's partitions). Returns once every consumer
        verified its stream. Each stream is written, then ended at once
        (:meth:`Sender.end`), so the consumers verify theirs together; a
        stream larger than the edge's buffer waits for its consumer while it
        is written. On an error every stream not yet finished is aborted."""
        senders = self.senders()
        try:
            if isinstance(data, Mapping):
                missing = [consumer for consumer in senders if consumer not in data]
                if missing:
                    raise ValueError(
                        f"no data for consumer(s) {', '.join(missing)} of edge {self.edge!r}: "
                        "give one part per consumer"
                    )
            for consumer, tx in senders.items():
                tx.write(data[consumer] if isinstance(data, Mapping) else data)
                tx.end()
            return {consumer: tx.finish() for consumer, tx in senders.items()}
        except BaseException as err:
            for tx in senders.values():
                tx.abort(f"{type(err).__name__}: {err}")
            raise

    def receive_all(self) -> Dict[str, bytes]:
        """Every producer's whole stream, verified, by producer (read one
        after another, in spec order). On an error the streams not yet read
        are closed (their producers fail)."""
        receivers = self.receivers()
        got: Dict[str, bytes] = {}
        try:
            for producer, rx in receivers.items():
                got[producer] = rx.read()
                rx.finish()
        except BaseException:
            for rx in receivers.values():
                rx.close()
            raise
        return got

    def _stream(self, peer: str) -> tuple:
        return (self.workflow, self.token, self.edge, self.function, peer)

    def sender(self, consumer: str) -> Sender:
        """The stream to one consumer."""
        native = _floki.Sender(
            self.agent,
            f"{self.workflow}/{self.edge}",
            timeout=self.timeout,
            transport=self.transport,
            stream=self._stream(consumer),
            live=self.live,
            run=self.run,
        )
        return Sender(f"{self.workflow}/{self.edge}", _native=native)

    def receiver(self, producer: str) -> Receiver:
        """The stream from one producer."""
        native = _floki.Receiver(
            self.agent,
            f"{self.workflow}/{self.edge}",
            timeout=self.timeout,
            transport=self.transport,
            stream=self._stream(producer),
            run=self.run,
        )
        return Receiver(f"{self.workflow}/{self.edge}", _native=native)


def close_kept_connections() -> None:
    """Closes the connections this process keeps to its agent between
    channels (for 20 s at most), with the rings kept with them: before the
    process is frozen or forks, say. The next channel opens a new one."""
    _floki.close_kept_connections()


def _required(value: Optional[str], name: str, variable: str) -> str:
    value = value or os.environ.get(variable)
    if not value:
        raise ValueError(f"give {name}= or set {variable}")
    return value


def send(channel: str, data: Buffer, **options: Any) -> Summary:
    """Sends ``data`` as the whole stream of ``channel``; returns once the
    receiver verified it. ``options`` are :class:`Sender`'s."""
    with Sender(channel, **options) as tx:
        tx.write(data)
        return tx.finish()


def send_file(channel: str, path: PathLike, **options: Any) -> Summary:
    """Sends the file at ``path`` as the stream of ``channel``."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as file, Sender(channel, **options) as tx:
        while True:
            n = file.readinto(buf)
            if not n:
                break
            tx.write(view[:n])
        return tx.finish()


def receive(channel: str, **options: Any) -> bytes:
    """The whole stream of ``channel``, verified. ``options`` are
    :class:`Receiver`'s."""
    with Receiver(channel, **options) as rx:
        data = rx.read()
        rx.finish()
        return data


def receive_file(channel: str, path: PathLike, **options: Any) -> Summary:
    """Receives the stream of ``channel`` into ``path``, which appears only
    once the stream is complete and verified."""
    partial = f"{os.fspath(path)}.partial"
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        with open(partial, "wb") as file, Receiver(channel, **options) as rx:
            while True:
                n = rx.readinto1(buf)
                if not n:
                    break
                file.write(view[:n])
            summary = rx.finish()
        os.replace(partial, path)
        return summary
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
