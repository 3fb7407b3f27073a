"""The native core of `floki` (PyO3 over the Rust client). Use the `floki`
package's API; this module's may change."""

from typing import Any, List, Optional, Tuple

DEFAULT_AGENT: str
RING_HEADER_LEN: int

_Stream = Tuple[str, str, str, str, str]
_Summary = Tuple[int, str, int, int, bool]
_Described = Tuple[str, str, List[str], int]

class Sender:
    def __init__(
        self,
        agent: str,
        channel: str,
        *,
        timeout: Optional[float] = None,
        transport: Optional[str] = None,
        stream: Optional[_Stream] = None,
        live: bool = False,
        secret: Optional[str] = None,
        run: Optional[str] = None,
    ) -> None: ...
    def write(self, data: Any) -> int: ...
    def flush(self) -> None: ...
    def end(self) -> None: ...
    def finish(self) -> _Summary: ...
    def abort(self, reason: str) -> None: ...
    @property
    def transport(self) -> Optional[str]: ...
    @property
    def channel_id(self) -> Optional[int]: ...
    @property
    def bytes_sent(self) -> int: ...

class Receiver:
    def __init__(
        self,
        agent: str,
        channel: str,
        *,
        timeout: Optional[float] = None,
        transport: Optional[str] = None,
        stream: Optional[_Stream] = None,
        window: Optional[int] = None,
        secret: Optional[str] = None,
        run: Optional[str] = None,
    ) -> None: ...
    def readinto(self, buf: Any) -> int: ...
    def readinto1(self, buf: Any) -> int: ...
    def readline(self, limit: int = -1) -> bytes: ...
    def readall(self) -> bytes: ...
    def ring_fd(self) -> Optional[int]: ...
    def fill_ring(self) -> Optional[Tuple[int, int]]: ...
    def consume(self, n: int) -> None: ...
    def finish(self) -> _Summary: ...
    def close(self) -> None: ...
    @property
    def transport(self) -> Optional[str]: ...
    @property
    def channel_id(self) -> Optional[int]: ...
    @property
    def bytes_received(self) -> int: ...

def describe(
    agent: str, workflow: str, token: str, edge: str, function: str, *, timeout: Optional[float] = None
) -> _Described: ...
def senders(
    agent: str,
    workflow: str,
    token: str,
    edge: str,
    function: str,
    *,
    timeout: Optional[float] = None,
    transport: Optional[str] = None,
    live: bool = False,
    run: Optional[str] = None,
) -> Tuple[_Described, List[Tuple[str, Sender]]]: ...
def receivers(
    agent: str,
    workflow: str,
    token: str,
    edge: str,
    function: str,
    *,
    timeout: Optional[float] = None,
    transport: Optional[str] = None,
    run: Optional[str] = None,
) -> Tuple[_Described, List[Tuple[str, Receiver]]]: ...

def close_kept_connections() -> None: ...
