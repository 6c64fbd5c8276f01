"""The ticket-key callbacks in C (``dlba/tls/ticket_cb.c``, built by ``make install`` into
``dlba/tls/_ticket_cb.so``).

OpenSSL runs the ticket-key callback in every full handshake and every resumption; the Python
one (``dlba.tls.tickets._Installed._on_ticket``, through ctypes) cost ~30 us of a ~900 us
handshake. The C library has a fixed number of slots, each a callback with its own key ring; a
context takes a slot, and the slot's ring follows the context's
:class:`~dlba.tls.tickets.TicketKeyRing` on every change. Without the library (not built, no
free slot, or ``DLBA_TICKET_CALLBACK=python``) the Python callback does the same work.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

LIBRARY = Path(__file__).with_name("_ticket_cb.so")
KEY_BYTES = 80  # name 16 + HMAC key 32 + AES key 32, the C struct key

log = logging.getLogger("dlba.tls_tickets")


class _Key(Protocol):  # tls_tickets.TicketKey (a frozen dataclass: read-only fields)
    @property
    def name(self) -> bytes: ...
    @property
    def hmac_key(self) -> bytes: ...
    @property
    def aes_key(self) -> bytes: ...


class NativeCallbacks:
    """The loaded library: ``take`` a slot, ``callback(slot)`` for OpenSSL, ``set`` its ring,
    ``release`` it when the context is gone."""

    def __init__(self, path: Path = LIBRARY) -> None:
        lib = ctypes.CDLL(str(path))
        lib.dlba_ticket_callback.restype = ctypes.c_void_p
        lib.dlba_ticket_callback.argtypes = [ctypes.c_int]
        lib.dlba_ticket_set.restype = ctypes.c_int
        lib.dlba_ticket_set.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.dlba_ticket_clear.restype = None
        lib.dlba_ticket_clear.argtypes = [ctypes.c_int]
        lib.dlba_ticket_use_ssl_version.restype = None
        lib.dlba_ticket_use_ssl_version.argtypes = [ctypes.c_void_p]
        if lib.dlba_ticket_key_size() != KEY_BYTES:
            raise OSError(f"{path.name}: key layout is not {KEY_BYTES} bytes")
        self.lib = lib
        self.ring_max = int(lib.dlba_ticket_ring_max())
        self.free = list(range(int(lib.dlba_ticket_slots()) - 1, -1, -1))

    def take(self) -> int | None:
        return self.free.pop() if self.free else None

    def release(self, slot: int) -> None:
        self.lib.dlba_ticket_clear(slot)
        self.free.append(slot)

    def callback(self, slot: int) -> int:
        return int(self.lib.dlba_ticket_callback(slot))

    def use_ssl_version(self, address: int) -> None:
        """Hand the library OpenSSL's ``SSL_version`` (it links libcrypto only): TLS 1.2
        resumptions under the current key then keep their ticket instead of a renewed one."""
        self.lib.dlba_ticket_use_ssl_version(address)

    def set(self, slot: int, keys: Sequence[_Key]) -> None:
        """The current key first; a ring longer than the library's keeps its newest keys."""
        keys = keys[: self.ring_max]
        data = b"".join(k.name + k.hmac_key + k.aes_key for k in keys)
        if self.lib.dlba_ticket_set(slot, data, len(keys)) != 1:
            raise ValueError("dlba_ticket_set refused the ring")


_loaded: NativeCallbacks | None = None
_tried = False


def native_callbacks() -> NativeCallbacks | None:
    """The library, loaded once per process; None (and one log line) when it is not there."""
    global _loaded, _tried
    if os.environ.get("DLBA_TICKET_CALLBACK") == "python":
        return None
    if not _tried:
        _tried = True
        try:
            _loaded = NativeCallbacks()
        except (OSError, AttributeError) as exc:
            log.info("TLS session tickets: the C callback is not available (%s); the Python "
                     "one is used (`make install` builds %s)", exc, LIBRARY.name)
    return _loaded
