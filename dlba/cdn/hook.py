"""Where the CDN offload meets the proxy core: an exchange asks the node's RequestHook about a
request (answer from the cache, or a ResponseFilter for its response) and passes its response
through the filter. Compiled with the request path; dlba/cdn/runtime.py implements both."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

from dlba.proxy.core_io import mypyc_attr

if TYPE_CHECKING:
    from dlba.proxy.core_exchange import Exchange

Head = tuple[int, bytes, list[tuple[bytes, bytes]], bool, bool]


@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseFilter:
    """One response on its way to the client."""

    __slots__ = ()

    @abstractmethod
    def head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
             chunked: bool, has_length: bool) -> Head:
        """The head as the client gets it: status, reason, headers, chunked, has_length (a
        filter that changes the body's length drops Content-Length and says chunked)."""

    @abstractmethod
    def body(self, data: bytes) -> bytes:
        """Body bytes from the back end in, bytes for the client out (maybe none yet)."""

    @abstractmethod
    def finish(self) -> bytes:
        """The back end's body is complete: the last bytes for the client."""


@mypyc_attr(allow_interpreted_subclasses=True)
class RequestHook:
    __slots__ = ()

    @abstractmethod
    def on_request(self, ex: Exchange) -> bytes | None:
        """A whole response to answer `ex` with (a fresh cached page), or None to go to a back
        end; may set ex.cdn to filter the response, and ex.headers (revalidation)."""
