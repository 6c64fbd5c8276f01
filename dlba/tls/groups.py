"""Key-exchange groups of a server context: X25519, P-256, P-384 (Mozilla "intermediate").

OpenSSL 3's default list also has X448 and P-521, which audits flag. Python's ssl (before
3.15) can only narrow the list to one curve (``set_ecdh_curve``), and not to X25519, so the
list is set with ``SSL_CTX_set1_groups_list`` on the context's ``SSL_CTX *``, reached the way
the shared ticket keys reach it (``dlba/tls/openssl_ctx.py``: CPython's PySSLContext layout,
checked against the context's own view before use). Once per context at start-up; nothing
per handshake. The list applies to TLS 1.3 key shares and to TLS 1.2 ECDHE alike.
"""

from __future__ import annotations

import ctypes
import logging
import ssl

from dlba.tls.openssl_ctx import SSLCtxUnreachable, reach_ssl_ctx

log = logging.getLogger("dlba.tls")

GROUPS = ("X25519", "P-256", "P-384")  # preference order: X25519 is the cheapest
FALLBACK_CURVE = "prime256v1"  # what set_ecdh_curve can do: P-256 alone, still in the list
_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl

_warned = False


def set_groups(ctx: ssl.SSLContext, groups: tuple[str, ...] = GROUPS) -> bool:
    """Limit ``ctx``'s key-exchange groups to ``groups``. True when set as asked; False when
    the SSL_CTX cannot be reached here, and then ``ctx`` is narrowed to P-256 alone (still
    within the allowed list; a client that offered only an X25519 key share pays a
    HelloRetryRequest), with one warning line per process."""
    try:
        lib, ptr = reach_ssl_ctx(ctx)
        names = ctypes.cast(ctypes.c_char_p(":".join(groups).encode("ascii")), ctypes.c_void_p)
        if lib.ctx_ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, names) != 1:
            raise SSLCtxUnreachable(f"OpenSSL refused the groups {':'.join(groups)}")
    except SSLCtxUnreachable as exc:
        _warn_once(str(exc))
        ctx.set_ecdh_curve(FALLBACK_CURVE)
        return False
    return True


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning('event=tls_groups_fallback groups=%s reason="%s"', FALLBACK_CURVE, reason)
