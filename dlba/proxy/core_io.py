"""The narrow outbound interface of the proxy core, and its states.

The core (core_session.ClientSession, core_exchange.Exchange) does no I/O: it takes events and
calls these methods. The asyncio shells subclass them and carry the calls out; Playbook tests
subclass them and record the calls. They are native classes so that mypyc calls them through a
vtable (a typing.Protocol would be a generic Python call on the hot path).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

if TYPE_CHECKING:
    from dlba.proxy.core_exchange import Exchange
    from dlba.proxy.proxy_context import ProxyContext

_C = TypeVar("_C")

try:
    from mypy_extensions import mypyc_attr as mypyc_attr  # re-exported for core_exchange
except ImportError:  # a run-time install without mypy: the decorator only instructs mypyc

    def mypyc_attr(*_args: object, **_kwargs: object) -> Callable[[_C], _C]:  # type: ignore[misc]
        return lambda cls: cls


# A client connection's state: what the next bytes from the client are, or why none are read.
LINE: Final = 0  # a request line, or the empty lines allowed before one (idle between requests)
HEAD: Final = 1  # header lines, up to the blank line
BODY: Final = 2  # a body of body_left more bytes
CHUNKED: Final = 3  # a chunked body, which ends with a blank line
UPGRADING: Final = 4  # an Upgrade request's head is read: no byte may follow before its 101
TUNNEL: Final = 5  # bytes both ways, unparsed (after a 101)
CLOSING: Final = 6  # an error is owed after the responses in flight; nothing more is read
LINGERING: Final = 7  # our side shut (after an error or a long response): input drained
CLOSED: Final = 8
READING: Final = CHUNKED  # states up to this one parse the client's stream

# A connection's timer (one deadline per connection, checked by the tick).
NO_TIMER: Final = 0
HEADER_TIMER: Final = 1
IDLE_TIMER: Final = 2
LINGER_TIMER: Final = 3
CLOSE_TIMER: Final = 4  # a half-closed connection waiting for the client to close first

# An exchange's state.
QUEUED: Final = 0  # behind an earlier pipelined request, or not started yet
CONNECTING: Final = 1  # a back-end connection asked for (ClientIO.open_backend)
SENT: Final = 2  # bound to a back end, head sent (the body may still stream), no response yet
RECEIVING: Final = 3  # the response is streaming to the client
TUNNELLING: Final = 4  # after a 101: bytes both ways
DONE: Final = 5

@mypyc_attr(allow_interpreted_subclasses=True)
class ClientIO:
    """What the core asks of a client connection (ClientConnection carries it out)."""

    __slots__ = ()

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send these bytes (in order, after anything sent before)."""

    @abstractmethod
    def writelines(self, pieces: list[bytes]) -> None:
        """Send these pieces as one write."""

    def cork(self) -> None:
        """Hold TLS records until uncork: the last bytes and a close leave in one segment."""

    def uncork(self) -> None:
        pass

    @abstractmethod
    def pause_reading(self) -> None:
        """Stop reading until resume_reading."""

    @abstractmethod
    def resume_reading(self) -> None:
        """Read again."""

    @abstractmethod
    def close(self) -> None:
        """Close (over TLS: close_notify first), without waiting for the peer."""

    @abstractmethod
    def abort(self) -> None:
        """Reset the connection."""

    @abstractmethod
    def shut_write(self) -> bool:
        """Shut our side (FIN, or TLS close_notify) and keep reading: whether that was done."""

    def unsent(self) -> int:
        """Bytes written but not yet acknowledged by the client (queued here and in the
        kernel): how a half-closed connection tells a slow reader from a gone one."""
        return 0

    def local_host(self) -> bytes:
        """The address the client dialled (a redirect for a request without a Host)."""
        return b"localhost"

    def local_address(self) -> tuple[str, int]:
        """The address and port the client dialled (which virtual service it is for)."""
        return ("", 0)

    @abstractmethod
    def open_backend(self, ex: Exchange, backend_id: int) -> None:
        """A connection to back end `backend_id` for `ex`: reported by ex.backend_connected
        (at once for an idle pooled one) or ex.backend_connect_failed."""

    # The shell's side, for ProxyContext: its sweep of timeouts and a graceful stop.
    def check_timeouts(self, now: float) -> None:
        pass

    def drain(self) -> None:
        """The node stops: end once what is in flight is answered (HTTP/2: GOAWAY)."""


@mypyc_attr(allow_interpreted_subclasses=True)
class ExchangeClient:
    """The client side of an exchange: an HTTP/1.1 connection (core_session.ClientSession,
    through core_framing.RequestFraming) or one HTTP/2 stream (h2_stream.H2Stream). The fields
    are what the request head to the back end and the access log need; the methods are the
    flow control and the ending of one exchange. How the response is written to the client is
    the exchange's own (Exchange writes HTTP/1.1, h2_stream.H2Exchange HTTP/2 frames)."""

    __slots__ = ("ctx", "forwarding", "io", "peer", "peer_ip", "scheme", "writable")

    ctx: ProxyContext
    io: ClientIO  # the connection: open_backend, and HTTP/1.1's writes
    scheme: bytes
    peer_ip: str
    peer: str
    forwarding: bytes  # http_head.forwarding_lines of this client
    writable: bool  # the client takes what we send (False: back ends feeding it are paused)

    @property
    def closing(self) -> bool:
        """No further request follows this one (HTTP/1.1: an error is owed)."""
        return False

    @abstractmethod
    def pause_reading(self) -> None:
        """Stop taking this client's request body (back-pressure from the back end)."""

    @abstractmethod
    def resume_reading(self) -> None:
        """Take the request body again."""

    @abstractmethod
    def exchange_done(self, ex: Exchange) -> None:
        """`ex` is over (answered, failed or cut)."""

    @abstractmethod
    def start_tunnel(self, ex: Exchange) -> None:
        """`ex` got its 101: bytes both ways from now on."""

    @abstractmethod
    def close(self) -> None:
        """End after what was sent (a tunnel's or an unframed body's end)."""

    @abstractmethod
    def abort(self) -> None:
        """Cut: what was sent must not look complete."""


@mypyc_attr(allow_interpreted_subclasses=True)
class BackendLink:
    """What the core asks of one back-end connection (backend_pool.BackendConnection)."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = 0  # requests it carried before this one (0: a fresh connection)

    @abstractmethod
    def bind(self, ex: Exchange, head_request: bool) -> None:
        """Report this connection's next response to `ex` (a HEAD request's has no body)."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send these bytes (in order, after anything sent before)."""

    @abstractmethod
    def pause_reading(self) -> None:
        """Stop reading until resume_reading."""

    @abstractmethod
    def resume_reading(self) -> None:
        """Read again."""

    @abstractmethod
    def release(self) -> None:
        """Back to its pool, idle (the response is complete)."""

    @abstractmethod
    def abort(self) -> None:
        """Reset it; nothing more is reported to the exchange."""

    @abstractmethod
    def authority(self) -> bytes:
        """host:port of the back end (the Host of a request that came without one)."""
