"""TLS for client connections: OpenSSL over memory BIOs between a plain TCP transport and the
HTTP protocol, in place of the event loop's SSL transport (`create_server(ssl=...)`).

Written by hand because uvloop's (and asyncio's) SSL protocol costs a proxy more than it
needs: a 256 KiB read buffer per connection, a general state machine on both sides of the SSL
object with an exception per read, and a bidirectional close that waits for a close_notify
HTTP clients almost never send. Measured on full TLS 1.3 handshakes (`openssl s_time -new`,
one 1 KiB answer, 2 processes; see docs/NOTES.md) a bare server on this layer does ~17 % more
handshakes per CPU-second than the same server on uvloop's. OpenSSL still does all of TLS
(`ssl.SSLObject`); this module only moves bytes between the BIOs and the socket.

Closing, as nginx and HAProxy do: `close()` sends close_notify and closes the socket without
waiting for the peer's (RFC 8446 6.1 allows it). `write_eof()` is TLS's half-close: it sends
close_notify and keeps reading until the peer's close_notify or EOF, which is the lingering a
protocol needs after an error answer (a client still sending must not get a reset).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger("dlba.event")

READ_SIZE = 64 * 1024  # plaintext taken per SSLObject.read (four full records)


class TLSTransport(asyncio.Protocol):
    """The TCP transport's protocol, and the transport of `app` once the handshake is done
    (the app's `connection_made` comes after it, as with asyncio's SSL transport)."""

    __slots__ = ("app", "closing", "eof_sent", "handshaken", "incoming", "lost", "outgoing",
                 "paused", "reading", "sslobj", "timer", "transport")

    def __init__(self, context: ssl.SSLContext, app: asyncio.Protocol,
                 timer: asyncio.TimerHandle | None = None) -> None:
        self.app = app
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.transport: asyncio.Transport | None = None
        self.timer = timer  # the handshake deadline
        self.handshaken = False
        self.closing = False
        self.eof_sent = False
        self.lost = False
        self.paused = False
        self.reading = False

    # --- as the TCP transport's protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.lost:
            return
        self.incoming.write(data)
        if self.handshaken:
            self._read()
        else:
            self._handshake()

    def eof_received(self) -> bool | None:
        # A TCP FIN without close_notify (what most clients send): the connection is over.
        if self.handshaken and not self.closing:
            return self.app.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.handshaken:
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handshaken:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.handshaken:
            self.app.resume_writing()

    # --- TLS ------------------------------------------------------------------------------------
    def _handshake(self) -> None:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ValueError) as exc:
            self._flush()  # the alert, if OpenSSL wrote one
            self._handshake_failed(getattr(exc, "reason", None) or str(exc))
            return
        self.handshaken = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._flush()  # Finished, session tickets
        self.app.connection_made(cast(asyncio.BaseTransport, self))
        self._read()

    def _handshake_failed(self, reason: str) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.info("event=tls_handshake_failed peer=%s reason=%s",
                 f"{peer[0]}:{peer[1]}" if peer else "-", reason)
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def handshake_timeout(self) -> None:
        self.timer = None
        if not self.handshaken and not self.lost:
            self._handshake_failed("handshake timeout")

    def _read(self) -> None:
        """Decrypt what arrived and hand it to the app, unless it paused reading (then the rest
        waits in OpenSSL's buffers until `resume_reading`)."""
        if self.reading:
            return  # called again from inside app.data_received: the loop below goes on
        self.reading = True
        sslobj, incoming, app = self.sslobj, self.incoming, self.app
        try:
            while not self.paused and not self.lost:
                try:
                    data = sslobj.read(READ_SIZE)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    self._peer_closed()
                    return
                except ssl.SSLError as exc:
                    log.info("event=tls_error reason=%s", exc.reason or exc)
                    self.abort()
                    return
                if not data:
                    # read() gives b"" for the peer's close_notify when ours is not sent yet
                    self._peer_closed()
                    return
                if not self.eof_sent:
                    app.data_received(data)
                # No exception needed to learn that nothing more is there.
                if not incoming.pending and not sslobj.pending():
                    break
        finally:
            self.reading = False
        if self.outgoing.pending:
            self._flush()  # e.g. an answer to a KeyUpdate

    def _peer_closed(self) -> None:
        """The peer's close_notify: it sends nothing more."""
        if self.eof_sent or self.closing:
            self._close_transport()
            return
        if not self.app.eof_received():
            self.close()

    def _flush(self) -> None:
        if self.outgoing.pending and self.transport is not None:
            self.transport.write(self.outgoing.read())

    def _close_notify(self) -> None:
        try:
            self.sslobj.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent; the peer's is not awaited here
        except ssl.SSLError:
            pass  # nothing sensible can be sent any more: the socket closes anyway
        self._flush()

    def _close_transport(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # --- as the app's transport -----------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or self.eof_sent or self.lost or not data:
            return
        self.sslobj.write(data)
        self._flush()

    def writelines(self, pieces: list[bytes]) -> None:
        self.write(b"".join(pieces))  # one TLS record for a head and a small body

    def close(self) -> None:
        """Send close_notify and close the socket once the data before it is out."""
        if self.closing:
            return
        if self.handshaken and not self.eof_sent and not self.lost:
            self._close_notify()
        self._close_transport()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """TLS half-close: close_notify now, the socket when the peer has finished too."""
        if self.eof_sent or self.closing or self.lost:
            return
        self.eof_sent = True
        self._close_notify()

    def is_closing(self) -> bool:
        return self.closing or self.transport is None or self.transport.is_closing()

    def pause_reading(self) -> None:
        if not self.paused:
            self.paused = True
            if self.transport is not None and not self.lost:
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.transport is not None and not self.lost:
                self.transport.resume_reading()
            self._read()  # what was decrypted or received while paused

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.sslobj
        if name == "sslcontext":
            return self.sslobj.context
        if name == "cipher":
            return self.sslobj.cipher()
        if name == "peercert":
            return self.sslobj.getpeercert()
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)


def tls_server(context: ssl.SSLContext, app_factory: Callable[[], asyncio.Protocol],
               handshake_timeout: float) -> Callable[[], TLSTransport]:
    """A protocol factory for `loop.create_server`: TLS with `context`, then `app_factory`'s
    protocol, the connection closed if the handshake is not done in `handshake_timeout`."""
    loop = asyncio.get_running_loop()

    def make() -> TLSTransport:
        t = TLSTransport(context, app_factory())
        t.timer = loop.call_later(handshake_timeout, t.handshake_timeout)
        return t

    return make
