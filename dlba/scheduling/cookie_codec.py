"""The persistence cookie's value: a back-end id signed with the cluster secret.

Patent 003, "Cookie Injection": the node injects a cookie (``SpServer=10`` in the patent,
``DLBASERVER`` here) that names the back end which started the session, so the mapping lives on
the client and no node keeps a table. Because any node of the array may receive the next request
(over HTTP or HTTPS), the value must be verifiable by every node: it is ``<id>.<tag>`` where
``tag`` is a truncated HMAC-SHA256 under the cluster secret. A client cannot forge a value that
points at a back end of its choosing (e.g. a drained or internal one), and a value minted by
another cluster (different secret) is simply ignored.

Pure: no I/O, no state. Callers should encode once per back end and reuse the string.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

# 12 bytes = 96 bits of tag: well above the 64-bit floor, and 96 is a multiple of 6 so the
# base64url text is exactly 16 characters with no padding and no "spare" low bits. That matters:
# with spare bits two different texts decode to the same bytes, which would make the cookie
# malleable. We also compare the *text* of the tag, never decoded bytes, for the same reason.
TAG_BYTES = 12
TAG_CHARS = 16

# Domain separation: the same cluster secret also signs admin tokens; a persistence cookie must
# never be accepted as anything else (or vice versa).
_CONTEXT = b"dlba/persistence-cookie/v1\x00"

# Canonical decimal only (no sign, no leading zeros, bounded): exactly one text per id, and the
# id fits comfortably in a signed 64-bit integer.
_ID_RE = re.compile(r"(?:0|[1-9][0-9]{0,17})")
_TAG_RE = re.compile(rf"[A-Za-z0-9_-]{{{TAG_CHARS}}}")
MAX_ID = 10**18 - 1


def _tag(id_text: str, secret: bytes) -> str:
    mac = hmac.new(secret, _CONTEXT + id_text.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:TAG_BYTES]).decode("ascii")


def encode(backend_id: int, secret: bytes) -> str:
    """Return the cookie value naming ``backend_id``, e.g. ``"3.kq0vV1Qp2cX9aZ_1"``.

    Only ``[0-9A-Za-z._-]`` appear, so the value needs no quoting in a Set-Cookie line.
    """
    if isinstance(backend_id, bool) or not isinstance(backend_id, int):
        raise TypeError("backend_id must be an int")
    if not 0 <= backend_id <= MAX_ID:
        raise ValueError(f"backend_id out of range 0..{MAX_ID}: {backend_id}")
    if not secret:
        # An empty key would make every tag publicly computable.
        raise ValueError("secret must not be empty")
    id_text = str(backend_id)
    return f"{id_text}.{_tag(id_text, secret)}"


def decode(value: str, secret: bytes) -> int | None:
    """Return the back-end id in ``value`` if its signature is valid under ``secret``, else None.

    Never raises on bad input: a cookie is client-controlled, and a bad one must only fall back to
    normal scheduling (the caller counts it).
    """
    if not isinstance(value, str) or not secret:
        return None
    # Some clients echo the value back in DQUOTEs (RFC 6265 allows a quoted cookie-value).
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    id_text, dot, tag = value.partition(".")
    if not dot or _ID_RE.fullmatch(id_text) is None or _TAG_RE.fullmatch(tag) is None:
        return None
    # compare_digest: the time taken must not reveal how many leading characters were right.
    if not hmac.compare_digest(_tag(id_text, secret), tag):
        return None
    return int(id_text)
