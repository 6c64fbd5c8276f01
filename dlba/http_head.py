"""Pure rewriting of HTTP/1.1 message heads between a client and a back end (no I/O).

The proxy re-frames every message: hop-by-hop headers never cross it (RFC 9110 §7.6.1),
the body framing to each side is chosen by the proxy, and the forwarding headers are set
from the connection the proxy itself saw, so a client cannot forge its own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]

# Lower-case names that describe one hop only; `Connection` may name more at run time.
HOP_BY_HOP = frozenset(
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
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"})
# Never hop-by-hop, whatever `Connection` lists: dropping the framing (or Host) of a message
# whose body is still forwarded would make the next hop read the body as a new message.
END_TO_END = frozenset({b"content-length", b"host"})
NO_TOKENS: frozenset[bytes] = frozenset()
CONTENT_LENGTH = frozenset({b"content-length"})
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_REASONS = {
    200: b"OK",
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


def _dropped(headers: Sequence[tuple[bytes, bytes]], chunked: bool) -> frozenset[bytes]:
    """The names a rewritten head leaves out: hop-by-hop ones, and Content-Length when the
    body goes in chunks (one framing header only, RFC 9112 §6.3)."""
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
    return b"".join([method, b" ", target, b" HTTP/1.1\r\n",
                     *[n + b": " + v + b"\r\n" for n, v in headers], forwarding, b"\r\n"])


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
        out += [name, b": ", value, b"\r\n"]
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
) -> bytes:
    """The head sent to the client. `extra` carries injected headers (Set-Cookie)."""
    drop = _dropped(headers, chunked)
    out = [b"HTTP/1.1 ", str(status).encode(), b" ", reason or _REASONS.get(status, b"-"), b"\r\n"]
    upgrade_value = None
    for name, value in headers:
        low = name.lower()
        if low in drop:
            if low == b"upgrade":
                upgrade_value = value
            continue
        out += [name, b": ", value, b"\r\n"]
    for name, value in extra:
        out += [name, b": ", value, b"\r\n"]
    if upgrade and upgrade_value is not None:
        out += [b"Connection: upgrade\r\nUpgrade: ", upgrade_value, b"\r\n"]
    elif not keep_alive:
        out.append(b"Connection: close\r\n")
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def error_response(status: int, message: str, *, close: bool = True) -> bytes:
    """A complete small response the proxy makes itself (400, 408, 431, 502, 503...)."""
    body = f"{status} {_REASONS.get(status, b'-').decode()}: {message}\n".encode()
    head = [
        b"HTTP/1.1 ",
        str(status).encode(),
        b" ",
        _REASONS.get(status, b"-"),
        b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ",
        str(len(body)).encode(),
        b"\r\nCache-Control: no-store\r\n",
        b"Connection: close\r\n" if close else b"",
        b"\r\n",
    ]
    return b"".join(head) + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
