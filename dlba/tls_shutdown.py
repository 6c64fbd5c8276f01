"""Close a TLS connection as nginx and HAProxy do: send close_notify, do not wait for the peer's.

asyncio's (and uvloop's) SSL transport closes bidirectionally: it sends close_notify, then keeps
the socket and a shutdown timer until the peer answers with its own close_notify. Most HTTP
clients never send one (they close the socket after reading the response), so every TLS
connection the node closes took one more wake-up, a read, an "unexpected EOF" error path and a
timer. RFC 8446 section 6.1 lets the closing side not wait; nginx sets ``SSL_RECEIVED_SHUTDOWN``
before ``SSL_shutdown`` for HTTP connections (``no_wait_shutdown``) for this reason.

Python's :mod:`ssl` has no ``SSL_set_shutdown``, so :class:`QuietShutdown` calls it through
ctypes on the ``SSL *`` inside an :class:`ssl.SSLObject`, read from CPython's ``PySSLSocket``
(``PyObject_HEAD``, then ``PyObject *Socket``, then ``SSL *ssl``) and accepted only when
OpenSSL's ``SSL_get_SSL_CTX`` of it is the ``SSL_CTX *`` of the object's own context (itself
checked as in :mod:`dlba.tls_tickets`). When anything does not hold, nothing is touched: the
transport closes the asyncio way, one warning line says why.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
from typing import Any

from dlba.tls_tickets import (
    TicketKeysUnsupported,
    _load_openssl,
    check_ssl_ctx_pointer,
    ssl_ctx_pointer,
)

log = logging.getLogger("dlba.tls")

SSL_RECEIVED_SHUTDOWN = 2


def _bind(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


class QuietShutdown:
    """``mark(ssl_object)``: the next ``SSL_shutdown`` sends close_notify and reports the
    shutdown complete, so the transport closes the socket right after sending it."""

    def __init__(self) -> None:
        self.lib: Any = None
        self.problem = ""
        self.verified: type | None = None  # the _SSLSocket type, once its layout checked out
        try:
            lib = _load_openssl()
            import _ssl

            raw = ctypes.CDLL(_ssl.__file__)
            ptr, num = ctypes.c_void_p, ctypes.c_int
            self.get_ctx = _bind(raw, "SSL_get_SSL_CTX", ptr, ptr)
            self.get_shutdown = _bind(raw, "SSL_get_shutdown", num, ptr)
            self.set_shutdown = _bind(raw, "SSL_set_shutdown", None, ptr, num)
            self.lib = lib
        except (TicketKeysUnsupported, OSError, AttributeError) as exc:
            self.problem = str(exc)
        # PySSLSocket: PyObject_HEAD, PyObject *Socket, SSL *ssl
        self.offset = int(object.__basicsize__) + ctypes.sizeof(ctypes.c_void_p)

    def _ssl_pointer(self, obj: ssl.SSLObject) -> int | None:
        """The ``SSL *`` of ``obj``, checked through OpenSSL until one object of the type has
        passed (the layout is the type's), then just read (this runs on every TLS close)."""
        inner = obj._sslobj  # type: ignore[attr-defined]
        ptr: int | None = ctypes.c_void_p.from_address(id(inner) + self.offset).value
        if self.verified is type(inner):
            return ptr
        if type(inner).__name__ != "_SSLSocket" or not ptr or ptr % ctypes.sizeof(
                ctypes.c_void_p):
            return None
        ctx = obj.context
        want = ssl_ctx_pointer(ctx)
        if check_ssl_ctx_pointer(self.lib, ctx, want) is not None or self.get_ctx(ptr) != want:
            return None
        self.verified = type(inner)
        return ptr

    def mark(self, obj: ssl.SSLObject | None) -> bool:
        """True when ``obj`` will not wait for the peer's close_notify."""
        if self.lib is None or obj is None:
            return False
        try:
            ptr = self._ssl_pointer(obj)
        except (TicketKeysUnsupported, ValueError, OSError, AttributeError) as exc:
            ptr, self.problem = None, str(exc)
        if ptr is None:
            self.lib = None
            log.warning("event=tls_quiet_shutdown_off reason=%r: TLS connections close the "
                        "asyncio way (waiting for the client's close_notify)",
                        self.problem or "SSL pointer failed the self-check")
            return False
        # Before the transport's shutdown nothing is set yet but, maybe, "received" (the
        # client's close_notify came first): setting "received" alone loses nothing.
        self.set_shutdown(ptr, SSL_RECEIVED_SHUTDOWN)
        return True
