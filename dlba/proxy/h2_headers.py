"""HTTP/2 header fields to an HTTP/1.1 request for a back end, and an HTTP/1.1 response's
fields back to HTTP/2, without I/O.

The request goes on to a back end as HTTP/1.1 text, so anything that HTTP/1.1 would read
differently from HTTP/2 is refused here: a CR, LF or NUL in a value, a name that is not a
token, a space in the method or path (each would let one HTTP/2 request smuggle a second one
into the back-end connection). `:authority` becomes Host (it wins over a Host field, RFC 9113
§8.3.1), Cookie fields are joined with "; " (§8.2.3), hop-by-hop fields are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlba.proxy import http_head
from dlba.proxy import nghttp2_engine as ng
from dlba.proxy.http_head import BadRequest

Fields = list[tuple[bytes, bytes]]

# Checked with bytes.translate (deleting the allowed bytes leaves nothing), which costs a
# fraction of a regex call: these run for every field of every request.
_LOWER_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"  # RFC 9113 8.2.1
_TOKEN = _LOWER_TOKEN + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NOT_IN_TARGET = bytes(range(0x21)) + b"\x7f"
# Dropped on the way to the back end: this hop's fields (h2 itself refuses Connection and
# friends; `te: trailers` is allowed in HTTP/2 and means nothing to an HTTP/1.1 back end).
_REQUEST_DROP = http_head.HOP_BY_HOP | {b"host", b"cookie", b"content-length"}


class H2Request:
    """One HTTP/2 request head, as the exchange takes it."""

    __slots__ = ("cookie_header", "headers", "length", "method", "plain", "target",
                 "websocket")

    def __init__(self, method: bytes, target: bytes, headers: Fields, cookie_header: str | None,
                 length: int, websocket: bool = False, plain: bool = False) -> None:
        self.method = method
        self.target = target
        self.headers = headers  # HTTP/1.1 fields, Host first
        self.cookie_header = cookie_header
        self.length = length  # Content-Length, or -1 without one
        # An extended CONNECT for a WebSocket (RFC 8441), made an HTTP/1.1 Upgrade: GET here;
        # the session adds Sec-WebSocket-Key, the back end's 101 becomes a 200.
        self.websocket = websocket
        # No forwarding field of the client's: http_head.plain_request_head's bytes are
        # request_head's (every hop-by-hop field is dropped here already).
        self.plain = plain


def request_from_h2(fields: Sequence[tuple[bytes, bytes]], max_headers: int,
                    max_line: int, checked: bool = False) -> H2Request:
    """Raises BadRequest (status, reason) for what the exchange must not forward. `checked`:
    each field's characters were checked already (the nghttp2 engine does it in C as it
    gathers the block, a scan per field less here). The node reads a block with
    request_from_block, this function's twin in C; the unit tests hold the two to the same
    answers."""
    method = target = authority = host = protocol = b""
    out: Fields = [(b"host", b"")]  # [0]: Host, known at the end
    cookies: list[bytes] = []
    length = -1
    forwarded = False
    for name, value in fields:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                target = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
            elif name != b":scheme":  # the listener's is what X-Forwarded-Proto says
                raise BadRequest(400, "unknown pseudo-header field")  # RFC 9113 8.3
            continue
        if not checked and (not name or name.translate(None, _LOWER_TOKEN) or b"\r" in value
                            or b"\n" in value or b"\0" in value):
            raise BadRequest(400, "bad header field")
        if len(name) + len(value) + 2 > max_line:
            raise BadRequest(431, f"header line longer than {max_line} bytes")
        if name == b"sec-websocket-key":
            continue  # HTTP/2 has none (RFC 8441 §5); ours is made for the back end
        if name in _REQUEST_DROP:
            if name == b"cookie":
                cookies.append(value)
            elif name == b"host":
                host = value
            elif name == b"content-length":
                # (at most 18 digits: beyond any body we would take, and a C long long)
                if not value.isdigit() or len(value) > 18 \
                        or (length >= 0 and int(value) != length):
                    raise BadRequest(400, "bad content-length")
                length = int(value)
            continue
        if name in http_head.FORWARDING:
            forwarded = True
        out.append((name, value))
    if len(out) - 1 + len(cookies) > max_headers:
        raise BadRequest(431, f"more than {max_headers} header fields")
    out[0] = (b"host", authority or host)
    method_ok = bool(method) and not method.translate(None, _TOKEN)
    target_ok = (target[:1] == b"/" or (target == b"*" and method == b"OPTIONS")) \
        and len(target.translate(None, _NOT_IN_TARGET)) == len(target)
    host_ok = bool(out[0][1]) and http_head.valid_host(out[0][1])
    return _request(method, target, protocol, out, b"; ".join(cookies), length, not forwarded,
                    method_ok, target_ok, host_ok)


def request_from_block(block: bytes, max_headers: int, max_line: int) -> H2Request:
    """request_from_h2 of the engine's header block, its field characters checked already,
    the per-field work done in C (nghttp2_request.c)."""
    status, reason, method, target, protocol, headers, cookie, length, plain, method_ok, \
        target_ok, host_ok = ng.request(block, max_headers, max_line)
    if status:
        raise BadRequest(status, reason)
    return _request(method, target, protocol, headers, cookie, length, plain, method_ok,
                    target_ok, host_ok)


def _request(method: bytes, target: bytes, protocol: bytes, headers: Fields, cookie: bytes,
             length: int, plain: bool, method_ok: bool, target_ok: bool,
             host_ok: bool) -> H2Request:
    """The checks that need the whole head, and the request. `headers`: Host first."""
    websocket = False
    if method == b"CONNECT":
        if not protocol:
            raise BadRequest(405, "CONNECT is for forward proxies")
        if protocol.lower() != b"websocket":
            raise BadRequest(501, "only the websocket protocol is bridged")
        method, websocket, plain = b"GET", True, False
        headers.append((b"upgrade", b"websocket"))  # request_head adds Connection: upgrade
    elif protocol:
        raise BadRequest(400, ":protocol without CONNECT")
    if not method_ok:
        raise BadRequest(400, "bad method")
    if not target_ok:
        raise BadRequest(400, "bad request target")
    if not host_ok:
        raise BadRequest(400, "a request needs :authority or Host")
    if cookie:
        headers.append((b"cookie", cookie))
    if length >= 0:
        headers.append((b"content-length", b"%d" % length))
    return H2Request(method, target, headers, cookie.decode("latin-1") if cookie else None,
                     length, websocket, plain)


def response_fields(status: int, headers: Sequence[tuple[bytes, bytes]],
                    extra: Sequence[tuple[bytes, bytes]], hsts: bytes,
                    body_framed: bool, tokens: frozenset[bytes] | None = None) -> Fields:
    """An HTTP/1.1 response head's fields for HTTP/2: names lower-cased, hop-by-hop ones
    dropped (and those its Connection names: `tokens`, if known), Content-Length dropped when
    the back end's body came chunked or unframed (`body_framed` False), HSTS added unless it
    sent its own."""
    if tokens is None:
        tokens = http_head.connection_tokens(headers)
    drop = http_head.HOP_BY_HOP | tokens if tokens else http_head.HOP_BY_HOP
    out: Fields = [(b":status", b"%d" % status)]
    for name, value in headers:
        low = name.lower()
        if low in drop or (not body_framed and low == b"content-length"):
            continue
        if hsts and low == b"strict-transport-security":
            hsts = b""
        out.append((low, value))
    for name, value in extra:
        out.append((name.lower(), value))
    if hsts:
        out.append((b"strict-transport-security", hsts))
    return out


def error_fields(status: int, message: str, hsts: bytes,
                 extra: bytes = b"") -> tuple[Fields, bytes]:
    """A response the node makes itself (http_head.error_response's, for HTTP/2); `extra`:
    whole HTTP/1.1 header lines to add (a full pool's Retry-After)."""
    body = http_head.error_response(status, message).partition(b"\r\n\r\n")[2]
    fields: Fields = [(b":status", b"%d" % status),
                      (b"content-type", b"text/plain; charset=utf-8"),
                      (b"content-length", b"%d" % len(body)), (b"cache-control", b"no-store")]
    if hsts:
        fields.append((b"strict-transport-security", hsts))
    for line in extra.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon:
            fields.append((name.strip().lower(), value.strip()))
    return fields, body


def local_response(response: bytes) -> tuple[int, Fields, bytes]:
    """A whole HTTP/1.1 response made by the node (status line, fields, a body framed by
    Content-Length or chunks) as HTTP/2: status, fields, body."""
    head, _, rest = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    headers: Fields = []
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        value = value.strip()
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        headers.append((name, value))
    body = _dechunk(rest) if chunked else rest
    return status, response_fields(status, headers, (), b"", not chunked), body


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[end + 2:end + 2 + size])
        pos = end + 4 + size
    return b"".join(out)
