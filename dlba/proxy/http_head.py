"""Pure rewriting of HTTP/1.1 message heads between a client and a back end (no I/O).

The proxy re-frames every message: hop-by-hop headers never cross it (RFC 9110 §7.6.1),
the body framing to each side is chosen by the proxy, and the forwarding headers are set
from the connection the proxy itself saw, so a client cannot forge its own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

Headers = list[tuple[bytes, bytes]]

# Lower-case names that describe one hop only; `Connection` may name more at run time.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
FORWARDING: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"})
# Never hop-by-hop, whatever `Connection` lists: dropping the framing (or Host) of a message
# whose body is still forwarded would make the next hop read the body as a new message.
END_TO_END: Final = frozenset({b"content-length", b"host"})
NO_TOKENS: Final[frozenset[bytes]] = frozenset()
CONTENT_LENGTH = frozenset({b"content-length"})
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_REASONS = {
    200: b"OK",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


@dataclass(frozen=True)
class TrustedProxies:
    """Peers whose own X-Forwarded-For is kept and appended to, instead of replaced."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, cidrs: Iterable[str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def __contains__(self, peer: object) -> bool:
        if not self.networks or not isinstance(peer, str):
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in n for n in self.networks)


def connection_tokens(headers: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names a `Connection` header makes hop-by-hop (except END_TO_END ones)."""
    tokens: set[bytes] | None = None
    for name, value in headers:
        # the length first: no lower-cased copy of every other header's name (hot path)
        if len(name) == 10 and name.lower() == b"connection":
            if value.lower() in HOP_BY_HOP:
                continue  # "keep-alive", "upgrade": names already dropped (the common case)
            if tokens is None:
                tokens = set()
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens - END_TO_END) if tokens else NO_TOKENS


# What a back end's response head holds beyond its framing, as response_facts notes it in
# its one pass (bits): the exchange skips the passes over the fields that would find nothing.
SETS_COOKIE: Final = 1  # Set-Cookie (cookie injection, learned session ids)
HAS_LOCATION: Final = 2  # Location (a learned session id in its URL)
NAMES_HOPS: Final = 4  # a Connection field other than one hop-by-hop name ("keep-alive")
ANY_FIELD: Final = 7  # not noted: look for each


def response_facts(headers: Sequence[tuple[bytes, bytes]]) -> tuple[bool, bool, int]:
    """(chunked, has Content-Length, the bits above) of a response head's fields, in one
    pass that compares a name's length before lower-casing it (hot path)."""
    chunked = has_length = False
    seen = 0
    for name, value in headers:
        n = len(name)
        if n == 14:
            if name.lower() == b"content-length":
                has_length = True
        elif n == 10:
            low = name.lower()
            if low == b"set-cookie":
                seen |= SETS_COOKIE
            elif low == b"connection" and value.lower() not in HOP_BY_HOP:
                seen |= NAMES_HOPS  # ("keep-alive", the usual one, names nothing new)
        elif n == 17:
            if name.lower() == b"transfer-encoding" and value.lower().find(b"chunked") >= 0:
                chunked = True
        elif n == 8 and name.lower() == b"location":
            seen |= HAS_LOCATION
    return chunked, has_length, seen


def _dropped(headers: Sequence[tuple[bytes, bytes]], chunked: bool,
             tokens: frozenset[bytes] | None = None) -> frozenset[bytes]:
    """The names a rewritten head leaves out: hop-by-hop ones, and Content-Length when the
    body goes in chunks (one framing header only, RFC 9112 §6.3). `tokens`: the names its
    Connection field lists, when the caller knows them."""
    if tokens is None:
        tokens = connection_tokens(headers)
    drop = HOP_BY_HOP | tokens if tokens else HOP_BY_HOP
    return drop | CONTENT_LENGTH if chunked else drop


def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """First value of a header; `name` must be lower-case."""
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


# Request headers the proxy must look at; any other header is passed on as it is.
WATCHED = HOP_BY_HOP | FORWARDING | {b"host", b"cookie", b"content-length"}


def forwarding_lines(client_ip: str, scheme: bytes) -> bytes:
    """The forwarding headers for a client that sent none (computed once per connection)."""
    ip = client_ip.encode()
    # (`in` on the str: bytes' __contains__ raises and clears a TypeError for a bytes needle)
    node = b'"[' + ip + b']"' if ":" in client_ip else ip
    return (b"X-Forwarded-For: " + ip + b"\r\nX-Forwarded-Proto: " + scheme
            + b"\r\nForwarded: for=" + node + b";proto=" + scheme + b"\r\n")


def plain_request_head(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]],
                       forwarding: bytes) -> bytes:
    """request_head's result for the common request: no hop-by-hop, framing-by-chunks or
    forwarding headers of its own, so every header passes and ours are added (hot path)."""
    out = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:  # four appends: compiled, faster than two concatenations
        out.append(name)
        out.append(b": ")
        out.append(value)
        out.append(b"\r\n")
    out.append(forwarding)
    out.append(b"\r\n")
    return b"".join(out)


def request_head(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    client_ip: str,
    scheme: bytes,
    trusted: TrustedProxies,
    chunked: bool,
    upgrade: bool,
) -> bytes:
    """The head sent to a back end: HTTP/1.1, keepalive, forwarding headers set by us."""
    drop = _dropped(headers, chunked)
    keep_forwarded = client_ip in trusted
    out = [method, b" ", target, b" HTTP/1.1\r\n"]
    prior_xff: bytes | None = None
    prior_fwd: bytes | None = None
    prior_proto: bytes | None = None
    upgrade_value: bytes | None = None
    for name, value in headers:
        low = name.lower()
        if low in FORWARDING:
            if keep_forwarded and low == b"x-forwarded-for":
                prior_xff = value if prior_xff is None else prior_xff + b", " + value
            elif keep_forwarded and low == b"forwarded":
                prior_fwd = value if prior_fwd is None else prior_fwd + b", " + value
            elif keep_forwarded and low == b"x-forwarded-proto" and prior_proto is None:
                prior_proto = value
            continue
        if low in drop:
            if low == b"upgrade":
                upgrade_value = value
            continue
        out.append(name)  # (appends: `out += [...]` makes a list per field)
        out.append(b": ")
        out.append(value)
        out.append(b"\r\n")
    ip = client_ip.encode()
    out += [b"X-Forwarded-For: ", prior_xff + b", " + ip if prior_xff else ip, b"\r\n"]
    # A trusted proxy's scheme is the client's; anyone else's is replaced by the one we saw.
    out += [b"X-Forwarded-Proto: ", prior_proto or scheme, b"\r\n"]
    node = b'"[' + ip + b']"' if ":" in client_ip else ip
    fwd = b"for=" + node + b";proto=" + scheme
    out += [b"Forwarded: ", prior_fwd + b", " + fwd if prior_fwd else fwd, b"\r\n"]
    if upgrade and upgrade_value is not None:
        out += [b"Connection: upgrade\r\nUpgrade: ", upgrade_value, b"\r\n"]
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def response_head(
    status: int,
    reason: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    extra: Sequence[tuple[bytes, bytes]],
    *,
    chunked: bool,
    keep_alive: bool,
    upgrade: bool,
    keep_alive_header: bool = False,
    hsts: bytes = b"",
    tokens: frozenset[bytes] | None = None,
) -> bytes:
    """The head sent to the client. `extra` carries injected headers (Set-Cookie).

    `keep_alive_header`: say `Connection: keep-alive` when keeping the connection (an HTTP/1.0
    client closes, or waits for our close, without it). `hsts`: a Strict-Transport-Security
    value added unless the back end sent its own. `tokens`: what its Connection field lists,
    if known."""
    drop = _dropped(headers, chunked, tokens)
    out = [b"HTTP/1.1 ", str(status).encode(), b" ", reason or _REASONS.get(status, b"-"), b"\r\n"]
    upgrade_value = None
    for name, value in headers:
        low = name.lower()
        if low in drop:
            if low == b"upgrade":
                upgrade_value = value
            continue
        if hsts and low == b"strict-transport-security":
            hsts = b""  # the back end's own policy wins, never two
        out += [name, b": ", value, b"\r\n"]
    for name, value in extra:
        out += [name, b": ", value, b"\r\n"]
    if hsts:
        out += [b"Strict-Transport-Security: ", hsts, b"\r\n"]
    if upgrade and upgrade_value is not None:
        out += [b"Connection: upgrade\r\nUpgrade: ", upgrade_value, b"\r\n"]
    elif not keep_alive:
        out.append(b"Connection: close\r\n")
    elif keep_alive_header:
        out.append(b"Connection: keep-alive\r\n")
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def error_response(status: int, message: str, *, close: bool = True, extra: bytes = b"") -> bytes:
    """A complete small response the proxy makes itself (400, 408, 431, 502, 503...);
    `extra`: whole header lines to add (Strict-Transport-Security over TLS)."""
    body = f"{status} {_REASONS.get(status, b'-').decode()}: {message}\n".encode()
    head = [
        b"HTTP/1.1 ",
        str(status).encode(),
        b" ",
        _REASONS.get(status, b"-"),
        b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ",
        str(len(body)).encode(),
        b"\r\nCache-Control: no-store\r\n",
        extra,
        b"Connection: close\r\n" if close else b"",
        b"\r\n",
    ]
    return b"".join(head) + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


# --- the request line and the target (RFC 9112 §3, RFC 9110 §5.6.2 and §7.2) -------------------
class BadRequest(Exception):
    """A request the node answers itself with `status` and a close; no back end sees it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# tchar: a method is one or more of these, whatever its name (PURGE, MKCOL, FOO-BAR).
TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# A Host value or an absolute target's authority: reg-name (unreserved, sub-delims,
# pct-encoded), an IP literal ("[", "]", ":") and a port. Not "@" (userinfo), "/", spaces.
HOST_CHARS = b"-._~!$&'()*+,;=%:[]0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Methods the request parser (llhttp, a fixed list) is given as they are; any other token is
# given to it as GET, which frames a request the same way (request framing never depends on the
# method), and the real one is what the back end gets.
PARSER_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"})


def parse_request_line(data: bytes, start: int, end: int) -> tuple[bytes, bytes, bool]:
    """(method, target, is HTTP/1.1) of the request line data[start:end], CRLF excluded.

    Raises BadRequest: 400 for anything but `token SP target SP HTTP/1.x` (a protocol that
    only looks like HTTP, RTSP/1.0, is refused, not rewritten), 505 for another HTTP
    version, 400 for a `#fragment`, which is never part of a request target."""
    sp1 = data.find(b" ", start, end)
    sp2 = data.find(b" ", sp1 + 1, end) if sp1 > start else -1
    if sp2 < 0 or sp2 == sp1 + 1 or data.find(b" ", sp2 + 1, end) >= 0:
        raise BadRequest(400, "malformed request line")
    method = data[start:sp1]
    if method not in PARSER_METHODS and method.translate(None, TCHAR):
        raise BadRequest(400, "method is not a token")
    version = data[sp2 + 1 : end]
    if version == b"HTTP/1.1":
        http11 = True
    elif version == b"HTTP/1.0":
        http11 = False
    elif (len(version) == 8 and version.startswith(b"HTTP/") and 48 <= version[5] <= 57
          and version[6] == 46 and 48 <= version[7] <= 57):
        raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1")
    else:
        raise BadRequest(400, "not an HTTP/1.x request")
    target = data[sp1 + 1 : sp2]
    if 35 in target:  # '#' (an int in bytes: no hidden TypeError, unlike a bytes needle)
        raise BadRequest(400, "fragment in request target")
    return method, target, http11


def valid_host(value: bytes) -> bool:
    """Only the bytes a Host value may hold (an empty one is allowed, RFC 9112 §3.2)."""
    return not value.translate(None, HOST_CHARS)


def absolute_target(target: bytes) -> tuple[bytes, bytes] | None:
    """(authority, origin-form target) of an absolute-form target (`http://host/path?q`),
    None for any other form. RFC 9112 §3.2.2: the authority replaces the Host header.
    Raises BadRequest for an empty or bad authority (userinfo included)."""
    if target[:7].lower() == b"http://":
        rest = target[7:]
    elif target[:8].lower() == b"https://":
        rest = target[8:]
    else:
        return None
    end = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep, 0, end)
        if i >= 0:
            end = i
    authority, path = rest[:end], rest[end:]
    if not authority or not valid_host(authority):
        raise BadRequest(400, "bad authority in absolute-form target")
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


def host_name(host: bytes) -> bytes:
    """A Host value without its port ("[::1]" keeps its brackets)."""
    if host.startswith(b"["):
        close = host.find(b"]")
        return host if close < 0 else host[: close + 1]
    return host.partition(b":")[0]


def https_redirect(host: bytes, target: bytes, port: int, *, keep_alive: bool) -> bytes:
    """308 to the same host and target over HTTPS (port 443 left out of the URL)."""
    authority = host_name(host) + (b"" if port == 443 else b":%d" % port)
    return b"".join([
        b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://", authority, target,
        b"\r\nContent-Length: 0\r\n", b"" if keep_alive else b"Connection: close\r\n", b"\r\n",
    ])
