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
close_notify, then a TCP FIN, and keeps reading until the peer's close_notify or EOF, which is
the lingering a protocol needs after an error answer or a long response (a client still sending
must not get a reset).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger("dlba.event")

READ_SIZE = 64 * 1024  # plaintext taken per SSLObject.read (four full records)
SWEEP_S = 0.25  # how often pending handshakes are checked against their deadline

# The C object under ssl.SSLObject (`SSLContext._wrap_bio`, there since Python 3.7): its
# methods are the same, without a Python-level call around each (wrap_bio's three, then one
# per do_handshake, read, write and shutdown). Python's wrapper when the private name is gone.
_WRAP_BIO = getattr(ssl.SSLContext, "_wrap_bio", None)


def _wrap(context: ssl.SSLContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> Any:
    if _WRAP_BIO is None:
        return context.wrap_bio(incoming, outgoing, server_side=True)
    return _WRAP_BIO(context, incoming, outgoing, server_side=True, server_hostname=None,
                     owner=None, session=None)


class HandshakeDeadlines:
    """A listener's handshakes in progress and one sweep for all of them, in place of a timer
    created and cancelled per connection (a timer handle costs more than the sweep's share)."""

    __slots__ = ("handle", "loop", "pending", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.pending: set[TLSTransport] = set()
        self.handle: asyncio.TimerHandle | None = None

    def add(self, t: TLSTransport) -> None:
        t.deadline = self.loop.time() + self.timeout
        self.pending.add(t)
        if self.handle is None:
            self.handle = self.loop.call_later(min(SWEEP_S, self.timeout), self.sweep)

    def sweep(self) -> None:
        self.handle = None
        now = self.loop.time()
        for t in [t for t in self.pending if t.deadline <= now]:
            self.pending.discard(t)
            t.handshake_timeout()
        if self.pending:
            self.handle = self.loop.call_later(min(SWEEP_S, self.timeout), self.sweep)


class TLSTransport(asyncio.Protocol):
    """The TCP transport's protocol, and the transport of `app` once the handshake is done
    (the app's `connection_made` comes after it, as with asyncio's SSL transport)."""

    __slots__ = ("app", "closing", "corked", "deadline", "deadlines", "eof_sent", "handshaken",
                 "incoming", "lost", "outgoing", "paused", "reading", "sslobj", "transport")

    def __init__(self, context: ssl.SSLContext, app: asyncio.Protocol,
                 deadlines: HandshakeDeadlines | None = None) -> None:
        self.app = app
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = _wrap(context, self.incoming, self.outgoing)
        self.transport: asyncio.Transport | None = None
        self.deadline = 0.0
        self.corked = False
        self.deadlines = deadlines  # watching the handshake until it is done
        if deadlines is not None:
            deadlines.add(self)
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
        self._unwatch()
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
        self._unwatch()
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

    def _unwatch(self) -> None:
        if self.deadlines is not None:
            self.deadlines.pending.discard(self)
            self.deadlines = None

    def handshake_timeout(self) -> None:
        self.deadlines = None
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
            # Read only while bytes wait, in the BIO or decrypted in OpenSSL: a read that finds
            # nothing costs an SSLWantReadError (read-ahead is off, so a record OpenSSL has not
            # taken whole is still in the BIO).
            while not self.paused and not self.lost:
                # At most what the BIO holds (a record's plaintext is shorter than the record):
                # a small request gets a small buffer, not 64 KiB malloc'd and shrunk (glibc
                # consolidates its free chunks on each allocation that large).
                size = incoming.pending or sslobj.pending()
                if not size:
                    break
                try:
                    data = sslobj.read(min(size, READ_SIZE))
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
            if _WRAP_BIO is None:
                self.sslobj.unwrap()
            else:
                self.sslobj.shutdown()  # the C object's name for SSLObject.unwrap
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
        if not self.corked:
            self._flush()

    def cork(self) -> None:
        """Keep the records of what is written until `uncork` (or close), then send them in one
        write: a response's last bytes and the close_notify after them leave in one TCP segment
        instead of two (~8 % of a full handshake's CPU, the receiving side of loopback
        included)."""
        self.corked = True

    def uncork(self) -> None:
        self.corked = False
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
        """TLS half-close: close_notify and a FIN now (a client reading to the end of the TCP
        stream is done too), the socket when the peer has finished too."""
        if self.eof_sent or self.closing or self.lost:
            return
        self.eof_sent = True
        self._close_notify()
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()

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

    def get_write_buffer_size(self) -> int:
        """Encrypted bytes queued in the socket's transport (not in the kernel)."""
        if self.transport is None or self.lost:
            return 0
        return self.transport.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            if isinstance(self.sslobj, ssl.SSLObject):
                return self.sslobj
            obj = ssl.SSLObject.__new__(ssl.SSLObject)  # what asyncio gives: the public wrapper
            obj._sslobj = self.sslobj  # type: ignore[attr-defined]
            return obj
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
    deadlines = HandshakeDeadlines(asyncio.get_running_loop(), handshake_timeout)

    def make() -> TLSTransport:
        return TLSTransport(context, app_factory(), deadlines)

    return make
