"""Floki's exceptions.

Every error Floki raises is a :class:`floki.Error` (an :class:`OSError`,
like the errors of any file-like object), with the client's or the agent's
message. Subclasses name the cases a function handles differently; several
also derive from the built-in exception of the same meaning, so that
``except TimeoutError`` or ``except ConnectionError`` catch them too.
"""

from __future__ import annotations


class Error(OSError):
    """Base of every Floki error."""

    def __str__(self) -> str:
        # One argument: the message, as the Rust client words it.
        return str(self.args[0]) if self.args else super().__str__()


class AgentUnreachableError(Error, ConnectionError):
    """The agent could not be reached (is ``floki-agent run`` listening at
    that address? see ``agent=`` or ``FLOKI_AGENT``)."""


class NotAllowedError(Error, PermissionError):
    """Not a channel this function may use: an unknown workflow, edge or
    function, or a wrong token; one answer for all, on purpose."""


class TransportUnavailableError(Error):
    """The two ends cannot have the transport one of them insists on."""


class RefusedError(Error):
    """The agent refused the channel for another reason (a bad name, an end
    of that role already there, the agent stopping, ...)."""


class StreamLostError(RefusedError):
    """The stream was stored in the memory of an agent that restarted
    since: it is lost. Run its producer again (streams the agent spilled to
    disk survive restarts)."""


class PairTimeoutError(Error, TimeoutError):
    """The other end did not join within the timeout."""


class StreamError(Error):
    """The stream failed after it was set up."""


class TruncatedError(StreamError):
    """The stream ended without the sender's end mark: the sender was killed
    or its connection reset. What was read is not the whole stream."""


class CorruptedError(StreamError):
    """The bytes that arrived do not match the sender's length and XXH3."""


class AbortedError(StreamError):
    """The sender gave up, with a reason."""


class RejectedError(StreamError):
    """The receiver refused the stream, with a reason: the agent's store
    when it has no room left ("the agent's store is full ...")."""


class ReceiverGoneError(StreamError, BrokenPipeError):
    """The receiver went away before confirming the end of the stream."""


__all__ = [
    "AbortedError",
    "AgentUnreachableError",
    "CorruptedError",
    "Error",
    "NotAllowedError",
    "PairTimeoutError",
    "ReceiverGoneError",
    "RefusedError",
    "RejectedError",
    "StreamError",
    "StreamLostError",
    "TransportUnavailableError",
    "TruncatedError",
]
