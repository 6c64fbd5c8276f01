"""Reaching OpenSSL underneath Python's :mod:`ssl`: the ``SSL_CTX *`` of an
:class:`ssl.SSLContext` and the few libssl/libcrypto functions the node calls on it.

Python's ssl has no API for session-ticket keys (``dlba/tls/tickets.py``) nor for the list of
key-exchange groups (``dlba/tls/groups.py``), so both go to OpenSSL through ctypes. The
functions are resolved through Python's own ``_ssl`` module, so they are exactly the library
Python's ssl uses. The pointer is read from CPython's ``PySSLContext`` object (``SSL_CTX *ctx``
is the first field after ``PyObject_HEAD``) and checked against the context's own view of
itself (options, verify mode, protocol bounds) before anything is handed to OpenSSL; when any
step does not hold, :class:`SSLCtxUnreachable` says why and nothing is touched.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
from typing import Any

# CPython versions whose _ssl.c starts PySSLContext with ``SSL_CTX *ctx`` right after
# PyObject_HEAD (checked at run time on every context anyway, see check_ssl_ctx_pointer).
_KNOWN_LAYOUT = {(3, 10), (3, 11), (3, 12), (3, 13)}
_SSL_CTRL_GET_MIN_PROTO_VERSION = 130
_SSL_CTRL_GET_MAX_PROTO_VERSION = 131
_OSSL_PARAM_UTF8_STRING = 4
_OSSL_PARAM_OCTET_STRING = 5
_OSSL_PARAM_UNMODIFIED = ctypes.c_size_t(-1).value
HMAC_KEY_LEN = 32

# int cb(SSL *s, unsigned char key_name[16], unsigned char iv[16], EVP_CIPHER_CTX *ctx,
#        EVP_MAC_CTX *hctx, int enc)
TicketCb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


class _OsslParam(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("data_type", ctypes.c_uint),
                ("data", ctypes.c_void_p), ("data_size", ctypes.c_size_t),
                ("return_size", ctypes.c_size_t)]


class SSLCtxUnreachable(Exception):
    """OpenSSL or a context's SSL_CTX cannot be reached here; the message says why (no
    secrets)."""


def _bind(lib: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any]) -> Any:
    func = getattr(lib, name)
    func.restype = restype
    func.argtypes = argtypes
    return func


class OpenSSL:
    """The libssl/libcrypto functions we call, resolved through Python's own ``_ssl`` module
    (dlsym on a dlopen handle searches that object's dependencies: _ssl -> libssl ->
    libcrypto)."""

    def __init__(self) -> None:
        import _ssl

        if sys.implementation.name != "cpython":
            raise SSLCtxUnreachable(f"{sys.implementation.name} is not CPython")
        if sys.version_info[:2] not in _KNOWN_LAYOUT:
            raise SSLCtxUnreachable(f"Python {sys.version_info[0]}.{sys.version_info[1]}: "
                                    "PySSLContext layout not verified")
        if not ssl.OPENSSL_VERSION.startswith("OpenSSL ") or ssl.OPENSSL_VERSION_INFO < (3, 0):
            raise SSLCtxUnreachable(f"{ssl.OPENSSL_VERSION}: OpenSSL 3 needed")
        path = getattr(_ssl, "__file__", None)
        if not path:
            raise SSLCtxUnreachable("_ssl is built into the interpreter")
        vp, c_int = ctypes.c_void_p, ctypes.c_int
        try:
            lib = ctypes.CDLL(path)
            version_num = _bind(lib, "OpenSSL_version_num", ctypes.c_ulong, [])
            if version_num() != ssl.OPENSSL_VERSION_NUMBER:
                raise SSLCtxUnreachable(
                    f"libssl reached through _ssl is {version_num():#x}, "
                    f"ssl module says {ssl.OPENSSL_VERSION_NUMBER:#x}")
            self.get_options = _bind(lib, "SSL_CTX_get_options", ctypes.c_uint64, [vp])
            self.get_verify_mode = _bind(lib, "SSL_CTX_get_verify_mode", c_int, [vp])
            self.ctx_ctrl = _bind(lib, "SSL_CTX_ctrl", ctypes.c_long,
                                  [vp, c_int, ctypes.c_long, vp])
            self.ssl_version = _bind(lib, "SSL_version", c_int, [vp])
            self.set_cb = _bind(lib, "SSL_CTX_set_tlsext_ticket_key_evp_cb", c_int, [vp, TicketCb])
            self.aes_256_cbc = _bind(lib, "EVP_aes_256_cbc", vp, [])
            init_args: list[Any] = [vp, vp, vp, ctypes.c_char_p, vp]
            self.encrypt_init = _bind(lib, "EVP_EncryptInit_ex", c_int, init_args)
            self.decrypt_init = _bind(lib, "EVP_DecryptInit_ex", c_int, init_args)
            self.mac_set_params = _bind(lib, "EVP_MAC_CTX_set_params", c_int,
                                        [vp, ctypes.POINTER(_OsslParam)])
        except (OSError, AttributeError) as exc:
            raise SSLCtxUnreachable(f"OpenSSL symbols not reachable: {exc}") from None
        cipher = self.aes_256_cbc()
        if not cipher:
            raise SSLCtxUnreachable("EVP_aes_256_cbc unavailable")
        self.cipher: int = cipher
        self.ssl_version_address = int(ctypes.cast(self.ssl_version, ctypes.c_void_p).value or 0)
        self._params: dict[bytes, tuple[Any, Any, Any]] = {}

    def set_hmac_key(self, hctx: int, name: bytes, hmac_key: bytes) -> bool:
        """Key ``hctx`` (a ticket callback's EVP_MAC_CTX) for HMAC-SHA256 with ``hmac_key``,
        the ticket key called ``name``."""
        # The OSSL_PARAM array is built once per key, not per handshake: building it with
        # ctypes cost more than the HMAC itself (it runs in every TLS handshake).
        cached = self._params.get(name)
        if cached is None:
            hmac = ctypes.create_string_buffer(hmac_key, HMAC_KEY_LEN)
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
            cached = self._params[name] = (params, hmac, digest)
        return bool(self.mac_set_params(hctx, cached[0]) == 1)


_openssl: OpenSSL | None = None


def load_openssl() -> OpenSSL:
    """The process's one :class:`OpenSSL` (SSLCtxUnreachable when it cannot be had here)."""
    global _openssl
    if _openssl is None:
        _openssl = OpenSSL()
    return _openssl


def _ctx_offset() -> int:
    # sizeof(PyObject) of this build: PyObject_HEAD, then ``SSL_CTX *ctx``.
    return int(object.__basicsize__)


def ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` inside ``ctx`` as read from CPython's PySSLContext (unchecked: use
    :func:`check_ssl_ctx_pointer` before handing it to OpenSSL)."""
    import _ssl

    if not isinstance(ctx, _ssl._SSLContext):
        raise SSLCtxUnreachable(f"{type(ctx).__name__} is not an ssl.SSLContext")
    value = ctypes.c_void_p.from_address(id(ctx) + _ctx_offset()).value
    return int(value or 0)


def check_ssl_ctx_pointer(lib: OpenSSL, ctx: ssl.SSLContext, ptr: int) -> str | None:
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


def reach_ssl_ctx(ctx: ssl.SSLContext) -> tuple[OpenSSL, int]:
    """OpenSSL's functions and ``ctx``'s ``SSL_CTX *``, checked against the context's own view
    of itself; SSLCtxUnreachable (saying why) when either cannot be had here."""
    lib = load_openssl()
    ptr = ssl_ctx_pointer(ctx)
    problem = check_ssl_ctx_pointer(lib, ctx, ptr)
    if problem is not None:
        raise SSLCtxUnreachable(problem)
    return lib, ptr


def set_ticket_key_cb(lib: OpenSSL, ptr: int, callback: Any) -> None:
    """Install ``callback`` (a :data:`TicketCb`) as the ticket-key callback of the SSL_CTX at
    ``ptr`` (from :func:`reach_ssl_ctx`); the caller keeps the callback alive as long as the
    context. SSLCtxUnreachable when OpenSSL refuses it."""
    if lib.set_cb(ptr, callback) != 1:
        raise SSLCtxUnreachable("SSL_CTX_set_tlsext_ticket_key_evp_cb failed")
