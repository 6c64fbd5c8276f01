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
  OpenSSL 3's ticket-key callback (``SSL_CTX_set_tlsext_ticket_key_evp_cb``) through ctypes on
  the ``SSL_CTX *`` of an :class:`ssl.SSLContext`. The pointer is read from CPython's
  ``PySSLContext`` object (``SSL_CTX *ctx`` is the first field after ``PyObject_HEAD``) and
  checked against the context's own view of itself before anything is installed; when any step
  does not hold, nothing is touched, one warning line is logged, and the caller keeps OpenSSL's
  per-process ticket key.

Key material never reaches a log: :class:`TicketKey`'s repr shows the (public, on-the-wire)
key name only, and nothing in this module logs keys.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
import sys
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dlba.tls.ticket_native import NativeCallbacks, native_callbacks

log = logging.getLogger("dlba.tls_tickets")

KEY_NAME_LEN = 16
HMAC_KEY_LEN = 32
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
# CPython versions whose _ssl.c starts PySSLContext with ``SSL_CTX *ctx`` right after
# PyObject_HEAD (checked at run time on every context anyway, see _self_check).
_KNOWN_LAYOUT = {(3, 10), (3, 11), (3, 12), (3, 13)}
_SSL_CTRL_GET_MIN_PROTO_VERSION = 130
_SSL_CTRL_GET_MAX_PROTO_VERSION = 131
_OSSL_PARAM_UTF8_STRING = 4
_OSSL_PARAM_OCTET_STRING = 5
_OSSL_PARAM_UNMODIFIED = ctypes.c_size_t(-1).value
_CB_ATTR = "_dlba_ticket_keys"
_TLS1_3_VERSION = 0x0304
_RESUME, _RESUME_AND_RENEW = 1, 2  # the ticket-key callback's answers for a decrypted ticket


def decrypt_result(current_key: bool, tls13: bool) -> int:
    """The ticket-key callback's answer for a ticket it decrypted (as dlba/tls/ticket_cb.c,
    and nginx): resume, and issue a fresh ticket under the current key in TLS 1.3 always
    (clients use a TLS 1.3 ticket once: without a fresh one after each resumption, curl and
    browsers alternate full and resumed handshakes) and in TLS 1.2 when the ticket's key is an
    older one (a TLS 1.2 client keeps resuming with its ticket; renewing it while its key is
    current would only cost an encryption per resumption)."""
    return _RESUME_AND_RENEW if tls13 or not current_key else _RESUME

# int cb(SSL *s, unsigned char key_name[16], unsigned char iv[16], EVP_CIPHER_CTX *ctx,
#        EVP_MAC_CTX *hctx, int enc)
_TicketCb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


class _OsslParam(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("data_type", ctypes.c_uint),
                ("data", ctypes.c_void_p), ("data_size", ctypes.c_size_t),
                ("return_size", ctypes.c_size_t)]


class TicketKeysUnsupported(Exception):
    """Shared ticket keys cannot be installed here; the message says why (no secrets)."""


class _OpenSSL:
    """The libssl/libcrypto functions we call, resolved through Python's own ``_ssl`` module so
    they are exactly the library Python's ssl uses (dlsym on a dlopen handle searches that
    object's dependencies: _ssl -> libssl -> libcrypto)."""

    def __init__(self) -> None:
        import _ssl

        if sys.implementation.name != "cpython":
            raise TicketKeysUnsupported(f"{sys.implementation.name} is not CPython")
        if sys.version_info[:2] not in _KNOWN_LAYOUT:
            raise TicketKeysUnsupported(f"Python {sys.version_info[0]}.{sys.version_info[1]}: "
                                        "PySSLContext layout not verified")
        if not ssl.OPENSSL_VERSION.startswith("OpenSSL ") or ssl.OPENSSL_VERSION_INFO < (3, 0):
            raise TicketKeysUnsupported(f"{ssl.OPENSSL_VERSION}: OpenSSL 3 needed")
        path = getattr(_ssl, "__file__", None)
        if not path:
            raise TicketKeysUnsupported("_ssl is built into the interpreter")
        try:
            lib = ctypes.CDLL(path)
            version_num = lib.OpenSSL_version_num
            version_num.restype = ctypes.c_ulong
            version_num.argtypes = []
            if version_num() != ssl.OPENSSL_VERSION_NUMBER:
                raise TicketKeysUnsupported(
                    f"libssl reached through _ssl is {version_num():#x}, "
                    f"ssl module says {ssl.OPENSSL_VERSION_NUMBER:#x}")
            self.get_options = lib.SSL_CTX_get_options
            self.get_options.restype = ctypes.c_uint64
            self.get_options.argtypes = [ctypes.c_void_p]
            self.get_verify_mode = lib.SSL_CTX_get_verify_mode
            self.get_verify_mode.restype = ctypes.c_int
            self.get_verify_mode.argtypes = [ctypes.c_void_p]
            self.ctx_ctrl = lib.SSL_CTX_ctrl
            self.ctx_ctrl.restype = ctypes.c_long
            self.ctx_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long,
                                      ctypes.c_void_p]
            self.ssl_version = lib.SSL_version
            self.ssl_version.restype = ctypes.c_int
            self.ssl_version.argtypes = [ctypes.c_void_p]
            self.set_cb = lib.SSL_CTX_set_tlsext_ticket_key_evp_cb
            self.set_cb.restype = ctypes.c_int
            self.set_cb.argtypes = [ctypes.c_void_p, _TicketCb]
            self.aes_256_cbc = lib.EVP_aes_256_cbc
            self.aes_256_cbc.restype = ctypes.c_void_p
            self.aes_256_cbc.argtypes = []
            init_args: list[Any] = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_char_p, ctypes.c_void_p]
            self.encrypt_init = lib.EVP_EncryptInit_ex
            self.encrypt_init.restype = ctypes.c_int
            self.encrypt_init.argtypes = init_args
            self.decrypt_init = lib.EVP_DecryptInit_ex
            self.decrypt_init.restype = ctypes.c_int
            self.decrypt_init.argtypes = init_args
            self.mac_set_params = lib.EVP_MAC_CTX_set_params
            self.mac_set_params.restype = ctypes.c_int
            self.mac_set_params.argtypes = [ctypes.c_void_p, ctypes.POINTER(_OsslParam)]
        except (OSError, AttributeError) as exc:
            raise TicketKeysUnsupported(f"OpenSSL symbols not reachable: {exc}") from None
        cipher = self.aes_256_cbc()
        if not cipher:
            raise TicketKeysUnsupported("EVP_aes_256_cbc unavailable")
        self.cipher: int = cipher
        self.ssl_version_address = int(ctypes.cast(self.ssl_version, ctypes.c_void_p).value or 0)
        self._params: dict[bytes, tuple[Any, Any, Any]] = {}

    def set_hmac_key(self, hctx: int, key: TicketKey) -> bool:
        # The OSSL_PARAM array is built once per key, not per handshake: building it with
        # ctypes cost more than the HMAC itself (it runs in every TLS handshake).
        cached = self._params.get(key.name)
        if cached is None:
            hmac = ctypes.create_string_buffer(key.hmac_key, HMAC_KEY_LEN)
            digest = ctypes.create_string_buffer(b"SHA256")
            params = (_OsslParam * 3)(
                _OsslParam(b"key", _OSSL_PARAM_OCTET_STRING,
                           ctypes.cast(hmac, ctypes.c_void_p), HMAC_KEY_LEN,
                           _OSSL_PARAM_UNMODIFIED),
                _OsslParam(b"digest", _OSSL_PARAM_UTF8_STRING,
                           ctypes.cast(digest, ctypes.c_void_p), 6, _OSSL_PARAM_UNMODIFIED),
                _OsslParam(None, 0, None, 0, 0),
            )
            if len(self._params) >= 8:  # keys fall off the ring hourly: forget old ones
                for buffers in self._params.values():
                    ctypes.memset(buffers[1], 0, HMAC_KEY_LEN)
                self._params.clear()
            cached = self._params[key.name] = (params, hmac, digest)
        return bool(self.mac_set_params(hctx, cached[0]) == 1)


_openssl: _OpenSSL | None = None
_warned = False


def _load_openssl() -> _OpenSSL:
    global _openssl
    if _openssl is None:
        _openssl = _OpenSSL()
    return _openssl


def _ctx_offset() -> int:
    # sizeof(PyObject) of this build: PyObject_HEAD, then ``SSL_CTX *ctx``.
    return int(object.__basicsize__)


def ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` inside ``ctx`` as read from CPython's PySSLContext (unchecked: use
    :func:`check_ssl_ctx_pointer` before handing it to OpenSSL)."""
    import _ssl

    if not isinstance(ctx, _ssl._SSLContext):
        raise TicketKeysUnsupported(f"{type(ctx).__name__} is not an ssl.SSLContext")
    value = ctypes.c_void_p.from_address(id(ctx) + _ctx_offset()).value
    return int(value or 0)


def check_ssl_ctx_pointer(lib: _OpenSSL, ctx: ssl.SSLContext, ptr: int) -> str | None:
    """Why ``ptr`` is not ``ctx``'s SSL_CTX, or None when OpenSSL's view of it matches Python's:
    options (64 bits), verify mode, minimum and maximum protocol versions."""
    if ptr < 0x10000 or ptr % ctypes.alignment(ctypes.c_void_p):
        return "SSL_CTX pointer is implausible"
    options = lib.get_options(ptr)
    if options != int(ctx.options):
        return "SSL_CTX_get_options does not match SSLContext.options"
    # Python reports SSL_VERIFY_PEER / | FAIL_IF_NO_PEER_CERT only (not POST_HANDSHAKE etc.).
    mode = lib.get_verify_mode(ptr) & 0x03
    expected_mode = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}
    if mode != expected_mode.get(ctx.verify_mode):
        return "SSL_CTX_get_verify_mode does not match SSLContext.verify_mode"
    for ctrl, py in ((_SSL_CTRL_GET_MIN_PROTO_VERSION, ctx.minimum_version),
                     (_SSL_CTRL_GET_MAX_PROTO_VERSION, ctx.maximum_version)):
        got = lib.ctx_ctrl(ptr, ctrl, 0, None)
        want = 0 if py in (ssl.TLSVersion.MINIMUM_SUPPORTED,
                           ssl.TLSVersion.MAXIMUM_SUPPORTED) else int(py)
        if got != want:
            return "SSL_CTX protocol version bounds do not match SSLContext"
    return None


def reach_ssl_ctx(ctx: ssl.SSLContext) -> tuple[_OpenSSL, int]:
    """OpenSSL's functions and ``ctx``'s ``SSL_CTX *``, checked against the context's own view
    of itself; TicketKeysUnsupported (saying why) when either cannot be had here."""
    lib = _load_openssl()
    ptr = ssl_ctx_pointer(ctx)
    problem = check_ssl_ctx_pointer(lib, ctx, ptr)
    if problem is not None:
        raise TicketKeysUnsupported(problem)
    return lib, ptr


class _Installed:
    """What a context keeps alive: the ring it reads and the callback OpenSSL calls, the C one
    of a slot (dlba/tls/ticket_native.py) when there is one, else ``_on_ticket`` via ctypes."""

    def __init__(self, lib: _OpenSSL, ring: TicketKeyRing,
                 native: NativeCallbacks | None = None) -> None:
        self.lib = lib
        self.native = native
        self.slot = native.take() if native is not None else None
        self.ring = ring
        if self.slot is None:
            self.callback = _TicketCb(self._on_ticket)
        else:
            assert native is not None
            native.use_ssl_version(lib.ssl_version_address)
            self.callback = _TicketCb(native.callback(self.slot))
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
                if not lib.set_hmac_key(hctx, key):
                    return 0
                if lib.encrypt_init(cctx, lib.cipher, None, key.aes_key, iv) != 1:
                    return 0
                return 1
            found = self.ring.decrypt_key(ctypes.string_at(key_name, KEY_NAME_LEN))
            if found is None:
                return 0
            key, current = found
            if not lib.set_hmac_key(hctx, key):
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
        if lib.set_cb(ptr, holder.callback) != 1:
            delattr(ctx, _CB_ATTR)
            holder.close()
            raise TicketKeysUnsupported("SSL_CTX_set_tlsext_ticket_key_evp_cb failed")
        weakref.finalize(ctx, holder.close)
    except TicketKeysUnsupported as exc:
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
