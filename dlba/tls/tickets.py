"""Shared TLS session-ticket keys for every worker process and every node of the array.

Patent 003 ends TLS on whichever DLBA server the scheduler picked, and the client table hashes
the client *port* too, so a returning client's next connection often lands on another node (or
another worker process of the same node). It resumes its TLS session there only if every
process encrypts and decrypts session tickets with the same keys.

Two parts:

* pure keys (:class:`TicketKey`, :func:`derived_keys`, :class:`TicketKeyRing`): every process
  derives the keys of the current period and the two before from the cluster secret, the newest
  encrypts, all of them decrypt, rotation follows the clock (no clock or I/O inside);
* :func:`install_ticket_keys`: Python's :mod:`ssl` has no API for ticket keys, so this installs
  OpenSSL 3's ticket-key callback (``SSL_CTX_set_tlsext_ticket_key_evp_cb``) on the context's
  ``SSL_CTX *``, reached and checked by :mod:`dlba.tls.openssl_ctx`: the C callback of a free
  slot (:mod:`dlba.tls.ticket_native`) or, without one, the Python callback here. When the
  SSL_CTX cannot be reached, nothing is touched, one warning line is logged, and the caller
  keeps OpenSSL's per-process ticket key.

Key material never reaches a log: :class:`TicketKey`'s repr shows the (public, on-the-wire)
key name only, and nothing in this module logs keys.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dlba.tls.openssl_ctx import (
    HMAC_KEY_LEN,
    OpenSSL,
    SSLCtxUnreachable,
    TicketCb,
    reach_ssl_ctx,
    set_ticket_key_cb,
)
from dlba.tls.ticket_native import NativeCallbacks, native_callbacks

log = logging.getLogger("dlba.tls_tickets")

KEY_NAME_LEN = 16
AES_KEY_LEN = 32
RING_SIZE = 3             # encrypt with the newest, decrypt with the last three
ROTATE_S = 3600.0          # tickets stay resumable for 2-3 rotation periods


# --- the key ring (pure) ---------------------------------------------------------------------
@dataclass(frozen=True)
class TicketKey:
    """One ticket key: a 16-byte name (sent in clear inside every ticket), a 32-byte HMAC-SHA256
    key and a 32-byte AES-256-CBC key; ``created`` is the Unix time of its generation and orders
    the ring."""

    name: bytes
    hmac_key: bytes = field(repr=False)
    aes_key: bytes = field(repr=False)
    created: float

    def __post_init__(self) -> None:
        for label, value, size in (("name", self.name, KEY_NAME_LEN),
                                   ("hmac_key", self.hmac_key, HMAC_KEY_LEN),
                                   ("aes_key", self.aes_key, AES_KEY_LEN)):
            if not isinstance(value, bytes) or len(value) != size:
                raise ValueError(f"ticket key {label}: {size} bytes expected")
        if not isinstance(self.created, (int, float)) or self.created != self.created:
            raise ValueError("ticket key created: a number expected")

    def __repr__(self) -> str:
        return f"TicketKey(name={self.name.hex()}, created={self.created})"

    __str__ = __repr__


def derived_keys(secret: bytes, now: float, rotate_s: float = ROTATE_S,
                 size: int = RING_SIZE) -> list[TicketKey]:
    """The ticket keys of the current period and the `size - 1` before it, derived from the
    cluster secret with HKDF (pure).

    Every process of every node computes the same keys from the secret it already has, so
    sessions resume across worker processes and across nodes with nothing to distribute and
    nothing to go stale when a node misses a message; rotation happens by the clock. The price:
    whoever holds the cluster secret can derive the ticket keys.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    period = int(now // rotate_s)
    keys = []
    for p in range(period - size + 1, period + 1):
        raw = HKDF(algorithm=hashes.SHA256(), length=KEY_NAME_LEN + HMAC_KEY_LEN + AES_KEY_LEN,
                   salt=b"dlba tls ticket keys v1", info=str(p).encode()).derive(secret)
        keys.append(TicketKey(raw[:KEY_NAME_LEN], raw[KEY_NAME_LEN:KEY_NAME_LEN + HMAC_KEY_LEN],
                              raw[KEY_NAME_LEN + HMAC_KEY_LEN:], float(p * rotate_s)))
    return keys


class TicketKeyRing:
    """The last ``size`` ticket keys, newest first; the newest (largest ``created``; on a tie,
    the earlier one given) is :attr:`current` and encrypts, all of them decrypt.

    Readers (the OpenSSL callback, on whatever thread runs a handshake) see one immutable tuple,
    swapped in whole by :meth:`replace`: no lock needed, no torn state.
    """

    def __init__(self, keys: Iterable[TicketKey] = (), *, size: int = RING_SIZE) -> None:
        if size < 1:
            raise ValueError("ring size must be at least 1")
        self.size = size
        self._keys: tuple[TicketKey, ...] = ()
        self._listeners: list[Callable[[tuple[TicketKey, ...]], None]] = []
        self.replace(keys)

    # reading
    @property
    def keys(self) -> tuple[TicketKey, ...]:
        """Newest first, at most ``size``."""
        return self._keys

    @property
    def current(self) -> TicketKey | None:
        keys = self._keys
        return keys[0] if keys else None

    def decrypt_key(self, name: bytes) -> tuple[TicketKey, bool] | None:
        """(key, current) for a ticket named ``name``: ``current`` is False when the key is an
        older one (the ticket is then renewed under the current key)."""
        keys = self._keys
        for i, key in enumerate(keys):
            if key.name == name:
                return key, i == 0
        return None

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"TicketKeyRing({[k.name.hex() for k in self._keys]})"

    # changing
    def replace(self, keys: Iterable[TicketKey]) -> None:
        """Take ``keys`` as the whole ring (newest ``created`` first; the first of a name wins),
        e.g. :func:`derived_keys` of the current period."""
        seen: dict[bytes, TicketKey] = {}
        for key in keys:
            seen.setdefault(key.name, key)
        self._set(list(seen.values()))

    def _set(self, keys: list[TicketKey]) -> None:
        # Stable sort: among equal ``created`` the earlier list position wins.
        ordered = sorted(keys, key=lambda k: k.created, reverse=True)
        self._keys = tuple(ordered[: self.size])
        for listener in self._listeners:
            listener(self._keys)

    def subscribe(self, listener: Callable[[tuple[TicketKey, ...]], None]) -> None:
        """Call ``listener(keys)`` now and on every change (the C callback's copy)."""
        self._listeners.append(listener)
        listener(self._keys)

    def unsubscribe(self, listener: Callable[[tuple[TicketKey, ...]], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)


# --- installing into OpenSSL ------------------------------------------------------------------
_CB_ATTR = "_dlba_ticket_keys"
_TLS1_3_VERSION = 0x0304
_RESUME, _RESUME_AND_RENEW = 1, 2  # the ticket-key callback's answers for a decrypted ticket
_warned = False


def decrypt_result(current_key: bool, tls13: bool) -> int:
    """The ticket-key callback's answer for a ticket it decrypted (as dlba/tls/ticket_cb.c,
    and nginx): resume, and issue a fresh ticket under the current key in TLS 1.3 always
    (clients use a TLS 1.3 ticket once: without a fresh one after each resumption, curl and
    browsers alternate full and resumed handshakes) and in TLS 1.2 when the ticket's key is an
    older one (a TLS 1.2 client keeps resuming with its ticket; renewing it while its key is
    current would only cost an encryption per resumption)."""
    return _RESUME_AND_RENEW if tls13 or not current_key else _RESUME


class _Installed:
    """What a context keeps alive: the ring it reads and the callback OpenSSL calls, the C one
    of a slot (dlba/tls/ticket_native.py) when there is one, else ``_on_ticket`` via ctypes."""

    def __init__(self, lib: OpenSSL, ring: TicketKeyRing,
                 native: NativeCallbacks | None = None) -> None:
        self.lib = lib
        self.native = native
        self.slot = native.take() if native is not None else None
        self.ring = ring
        if self.slot is None:
            self.callback = TicketCb(self._on_ticket)
        else:
            assert native is not None
            native.use_ssl_version(lib.ssl_version_address)
            self.callback = TicketCb(native.callback(self.slot))
            ring.subscribe(self._push)

    @property
    def kind(self) -> str:
        return "python" if self.slot is None else "c"

    def _push(self, keys: tuple[TicketKey, ...]) -> None:
        if self.native is not None and self.slot is not None:
            self.native.set(self.slot, keys)

    def switch(self, ring: TicketKeyRing) -> None:
        if self.slot is not None:
            self.ring.unsubscribe(self._push)
            ring.subscribe(self._push)
        self.ring = ring

    def close(self) -> None:
        """The context is gone (weakref.finalize): its slot is free again."""
        if self.native is not None and self.slot is not None:
            self.ring.unsubscribe(self._push)
            self.native.release(self.slot)
            self.slot = None

    def _on_ticket(self, ssl_p: int | None, key_name: int | None, iv: int | None,
                   cctx: int | None, hctx: int | None, enc: int) -> int:
        # Runs inside SSL_do_handshake (ctypes takes the GIL). Never raise into C: an encrypt
        # failure returns 0 (OpenSSL 3: no ticket issued), a decrypt failure 0 (full handshake).
        try:
            if not (ssl_p and key_name and iv and cctx and hctx):
                return 0
            lib = self.lib
            if enc:
                key = self.ring.current
                if key is None:
                    return 0
                ctypes.memmove(key_name, key.name, KEY_NAME_LEN)
                ctypes.memmove(iv, os.urandom(16), 16)
                if not lib.set_hmac_key(hctx, key.name, key.hmac_key):
                    return 0
                if lib.encrypt_init(cctx, lib.cipher, None, key.aes_key, iv) != 1:
                    return 0
                return 1
            found = self.ring.decrypt_key(ctypes.string_at(key_name, KEY_NAME_LEN))
            if found is None:
                return 0
            key, current = found
            if not lib.set_hmac_key(hctx, key.name, key.hmac_key):
                return 0
            if lib.decrypt_init(cctx, lib.cipher, None, key.aes_key, iv) != 1:
                return 0
            return decrypt_result(current, lib.ssl_version(ssl_p) == _TLS1_3_VERSION)
        except BaseException:  # nothing may propagate into OpenSSL
            return 0


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("TLS session tickets: shared ticket keys not installed (%s); each worker "
                    "process keeps its own ticket key, so resumption works only on the same "
                    "process", reason)


def install_ticket_keys(ctx: ssl.SSLContext, ring: TicketKeyRing) -> bool:
    """Make ``ctx`` encrypt session tickets with ``ring.current`` and decrypt with any key on
    ``ring``; a resumption gets a fresh ticket under the current key (TLS 1.3 always, TLS 1.2
    when the key is an older one, see :func:`decrypt_result`). The ring is
    read at every handshake, so a later ``ring.replace`` takes effect at once. Calling
    again on the same context just switches it to the new ring.

    Install on the context given to the listener (the SNI callback's other contexts do not
    matter: OpenSSL takes ticket callbacks from the session context, the initial one).

    Returns False, having logged one warning line per process, and leaving ``ctx`` untouched,
    when it cannot work here (not CPython 3.10-3.13, not OpenSSL 3, the SSL_CTX pointer fails
    the self-check, OpenSSL refuses the callback).
    """
    installed = getattr(ctx, _CB_ATTR, None)
    if isinstance(installed, _Installed):
        installed.switch(ring)
        return True
    try:
        lib, ptr = reach_ssl_ctx(ctx)
        holder = _Installed(lib, ring, native_callbacks())
        # Attach before installing: the callback lives exactly as long as the context
        # (the SSL_CTX is freed in the same deallocation that drops this attribute).
        setattr(ctx, _CB_ATTR, holder)
        try:
            set_ticket_key_cb(lib, ptr, holder.callback)
        except SSLCtxUnreachable:
            delattr(ctx, _CB_ATTR)
            holder.close()
            raise
        weakref.finalize(ctx, holder.close)
    except SSLCtxUnreachable as exc:
        _warn_once(str(exc))
        return False
    return True


def ticket_keys_installed(ctx: ssl.SSLContext) -> bool:
    """Whether :func:`install_ticket_keys` succeeded on ``ctx`` (for /status and tests)."""
    return isinstance(getattr(ctx, _CB_ATTR, None), _Installed)


def ticket_callback_kind(ctx: ssl.SSLContext) -> str | None:
    """"c" (dlba/tls/ticket_cb.c), "python", or None when nothing is installed."""
    installed = getattr(ctx, _CB_ATTR, None)
    return installed.kind if isinstance(installed, _Installed) else None
