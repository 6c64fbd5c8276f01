"""Class tokens (seed 002's "source-side information derived using encrypted keys"): a client
presents one to be served as a class, without the array knowing its address in advance.

A token is ``CLASS.EXPIRY.MAC``: the class name, the Unix time it expires, and a truncated
HMAC-SHA256 of both under a key derived from the cluster secret (never the secret itself, so a
token's MAC cannot be confused with a persistence cookie's). Every node holds the secret, so any
node verifies any token; nothing is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

KEY_LABEL = b"dlba class-token v1"
MAC_BYTES = 16


def token_key(secret: bytes) -> bytes:
    return hmac.new(secret, KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, name: str, expires: int) -> str:
    digest = hmac.new(key, f"{name}.{expires}".encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_token(secret: bytes, class_name: str, expires: int) -> str:
    """A token for `class_name` valid until Unix time `expires`."""
    if not class_name or "." in class_name or not class_name.isprintable():
        raise ValueError(f"not a class name: {class_name!r}")
    return f"{class_name}.{expires}.{_mac(token_key(secret), class_name, expires)}"


def verify_token(key: bytes, token: str, now: float) -> str | None:
    """The class a token names, if its MAC verifies under `key` (token_key) and it has not
    expired; else None."""
    name, dot, rest = token.strip().partition(".")
    expires_text, dot2, mac = rest.partition(".")
    if not (dot and dot2 and name and expires_text.isdigit() and mac):
        return None
    expires = int(expires_text)
    if expires < now:
        return None
    if not hmac.compare_digest(mac, _mac(key, name, expires)):
        return None
    return name
