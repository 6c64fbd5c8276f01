"""An exchange whose client speaks HTTP/1.x: the response framed as HTTP/1.1 text (status
line, fields, chunks when the back end's body has no length), written through ClientIO.

core_exchange.Exchange makes every decision (scheduling, retries, cookies, tables, the access
log) and leaves the client side's framing to its subclasses: this one for ClientSession's
requests, h2_stream.H2Exchange for HTTP/2 streams.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlba.proxy import http_head
from dlba.proxy.core_exchange import Exchange
from dlba.proxy.core_io import TUNNELLING


class H1Exchange(Exchange):
    __slots__ = ()

    def _answer_locally(self, response: bytes) -> None:
        """No back end: the body, if any, is read and dropped (pending and retained gone)."""
        self.status = int(response[9:12])
        self.reason = "local"
        self.pending = self.retained = None
        self.client.io.write(response)
        self._end(True, counted=False)

    def _informational(self, status: int, reason: bytes,
                       headers: list[tuple[bytes, bytes]]) -> None:
        if self.http11:
            self.client.io.write(http_head.response_head(
                status, reason, headers, (), chunked=False, keep_alive=True, upgrade=False
            ))

    def _respond(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 extra: Sequence[tuple[bytes, bytes]], upgrade: bool, hsts: bytes,
                 tokens: frozenset[bytes]) -> None:
        """The response head, held until the end of this read from the back end."""
        client = self.client
        self.held.append(http_head.response_head(
            status, reason, headers, extra, chunked=self.rechunk,
            keep_alive=self.client_keep_alive and not client.closing, upgrade=upgrade,
            keep_alive_header=not self.http11, hsts=hsts, tokens=tokens,
        ))
        if upgrade:
            self.flush()
            self.state = TUNNELLING
            client.start_tunnel(self)

    def flush(self) -> None:
        """The end of one read from the back end: what it gave goes out in one write."""
        if self.held:
            self.client.io.writelines(self.held)
            self.held = []

    def _fail(self, status: int, message: str, extra: bytes = b"") -> None:
        self.status = status
        self.client_keep_alive = False
        client = self.client
        client.io.write(http_head.error_response(
            status, message, extra=self.ctx.hsts_for(client.scheme) + extra))
        self.ctx.stats.errors += 1
        self._end(False, counted=False)
