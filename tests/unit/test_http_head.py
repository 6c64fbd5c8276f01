"""dlba/proxy/http_head.py: pure head rewriting, checked by parsing what it produces
(hypothesis)."""

from __future__ import annotations

import contextlib

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlba.proxy import http_head
from dlba.proxy.http_head import (
    HOP_BY_HOP,
    TrustedProxies,
    error_response,
    request_head,
    response_head,
)

Headers = list[tuple[bytes, bytes]]


# --- a real parser reads what the proxy writes ------------------------------------------------
class _Collect:
    def __init__(self) -> None:
        self.headers: Headers = []
        self.status = 0
        self.body = b""
        self.complete = False
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def parse_request(head: bytes) -> tuple[bytes, bytes, Headers]:
    c = _Collect()
    p = httptools.HttpRequestParser(c)
    with contextlib.suppress(httptools.HttpParserUpgrade):
        p.feed_data(head)
    assert p.get_http_version() == "1.1"
    return p.get_method(), c.url, c.headers


def parse_response(data: bytes) -> _Collect:
    c = _Collect()
    p = httptools.HttpResponseParser(c)
    with contextlib.suppress(httptools.HttpParserUpgrade):
        p.feed_data(data)
    c.status = p.get_status_code()
    return c


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


def names(headers: Headers) -> set[bytes]:
    return {n.lower() for n, _ in headers}


# --- strategies -------------------------------------------------------------------------------
token = st.from_regex(rb"[A-Za-z][A-Za-z0-9-]{0,12}", fullmatch=True)
field_value = st.from_regex(rb"[!-~]([ -~]{0,20}[!-~])?", fullmatch=True)
interesting_names = st.sampled_from([
    b"Connection", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Transfer-Encoding",
    b"Upgrade", b"Proxy-Authenticate", b"Proxy-Authorization", b"X-Forwarded-For",
    b"x-forwarded-proto", b"FORWARDED", b"Content-Length", b"Cookie", b"Host", b"Accept",
    b"X-Custom", b"x-custom-two", b"Set-Cookie",
])
header_name = st.one_of(interesting_names, token, interesting_names.map(bytes.swapcase))


@st.composite
def header_lists(draw: st.DrawFn) -> Headers:
    headers: Headers = draw(st.lists(st.tuples(header_name, field_value), max_size=15))
    headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
    if draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), (b"Content-Length", b"5"))
    if draw(st.booleans()):
        # A Connection header naming some of the other headers (and some absent ones).
        listed = draw(st.lists(st.one_of(st.sampled_from([n for n, _ in headers] or [b"x"]),
                                         st.sampled_from([b"Content-Length", b"host"]), token),
                               max_size=4))
        headers.append((b"Connection", b", ".join([b"keep-alive", *listed])))
    return headers


ipv4 = st.ip_addresses(v=4).map(str)
ips = st.one_of(ipv4, st.ip_addresses(v=6).map(str))


def hop_names(headers: Headers) -> frozenset[bytes]:
    """What must not cross the proxy: the fixed list and what `Connection` names, except the
    framing and Host, which stay whatever `Connection` says (else: request smuggling)."""
    listed = {t.strip().lower() for n, v in headers if n.lower() == b"connection"
              for t in v.split(b",") if t.strip()}
    return HOP_BY_HOP | (listed - {b"content-length", b"host"})


# --- request_head ---------------------------------------------------------------------------
@settings(max_examples=400)
@given(headers=header_lists(), ip=ips, scheme=st.sampled_from([b"http", b"https"]),
       chunked=st.booleans(), trusted=st.booleans())
def test_request_head_properties(
    headers: Headers, ip: str, scheme: bytes, chunked: bool, trusted: bool
) -> None:
    proxies = TrustedProxies.parse(["0.0.0.0/0", "::/0"] if trusted else [])
    head = request_head(b"POST", b"/p?q=1", headers, client_ip=ip, scheme=scheme,
                        trusted=proxies, chunked=chunked, upgrade=False)
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
    method, target, out = parse_request(head)
    assert (method, target) == (b"POST", b"/p?q=1")
    out_names = names(out)

    # Hop-by-hop never survive, nor whatever the client's Connection named; the only framing
    # header is ours.
    # (the node's own forwarding headers are added even when a Connection header names them)
    dropped = hop_names(headers) - {b"transfer-encoding"} - http_head.FORWARDING
    assert not (out_names & dropped), out_names & dropped
    if chunked:
        assert values(out, b"transfer-encoding") == [b"chunked"]
        assert b"content-length" not in out_names
    else:
        assert b"transfer-encoding" not in out_names
        cl = b"content-length" not in hop_names(headers)
        assert len(values(out, b"content-length")) == (cl and any(
            n.lower() == b"content-length" for n, _ in headers))

    # End-to-end headers pass through, in order.
    framing = {b"content-length"} if chunked else set()
    kept = [(n, v) for n, v in headers
            if n.lower() not in hop_names(headers) | http_head.FORWARDING | framing]
    passed = [(n, v) for n, v in out if n.lower() not in http_head.FORWARDING
              and n.lower() != b"transfer-encoding"]
    assert passed == kept

    # Forwarding headers: exactly one of each, ours last.
    xff, xfp, fwd = (values(out, n) for n in (b"x-forwarded-for", b"x-forwarded-proto",
                                              b"forwarded"))
    assert len(xff) == len(xfp) == len(fwd) == 1
    node_for = f'"[{ip}]"' if ":" in ip else ip
    ours = f"for={node_for};proto={scheme.decode()}".encode()
    prior_xff = values(headers, b"x-forwarded-for")
    prior_fwd = values(headers, b"forwarded")
    prior_xfp = values(headers, b"x-forwarded-proto")
    if trusted:
        assert xff[0] == b", ".join([*prior_xff, ip.encode()])
        assert fwd[0] == b", ".join([*prior_fwd, ours])
        assert xfp[0] == (prior_xfp[0] if prior_xfp else scheme)
    else:
        assert xff[0] == ip.encode()
        assert fwd[0] == ours
        assert xfp[0] == scheme


@given(ip=ipv4, forged=field_value)
def test_untrusted_forwarding_headers_are_replaced(ip: str, forged: bytes) -> None:
    headers = [(b"X-Forwarded-For", forged), (b"Forwarded", forged),
               (b"X-Forwarded-Proto", forged), (b"Host", b"h")]
    trusted = TrustedProxies.parse(["10.255.0.0/16"])
    if ip in trusted:
        return
    _, _, out = parse_request(request_head(
        b"GET", b"/", headers, client_ip=ip, scheme=b"https", trusted=trusted, chunked=False,
        upgrade=False,
    ))
    assert values(out, b"x-forwarded-for") == [ip.encode()]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"forwarded") == [f"for={ip};proto=https".encode()]


def test_trusted_peer_without_forwarding_headers_still_gets_ours() -> None:
    _, _, out = parse_request(request_head(
        b"GET", b"/", [(b"Host", b"h")], client_ip="10.0.0.5", scheme=b"http",
        trusted=TrustedProxies.parse(["10.0.0.0/8"]), chunked=False, upgrade=False,
    ))
    assert values(out, b"x-forwarded-for") == [b"10.0.0.5"]
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"forwarded") == [b"for=10.0.0.5;proto=http"]


def test_trusted_proxies_membership() -> None:
    t = TrustedProxies.parse(["127.0.0.0/8", "2001:db8::/32"])
    assert "127.1.2.3" in t and "2001:db8::1" in t
    assert "128.0.0.1" not in t and "::1" not in t and "not an ip" not in t
    assert "127.0.0.1" not in TrustedProxies.parse([])


@pytest.mark.parametrize("upgrade", [True, False])
def test_upgrade_is_forwarded_only_when_upgrading(upgrade: bool) -> None:
    headers = [(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
               (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")]
    _, _, out = parse_request(request_head(
        b"GET", b"/ws", headers, client_ip="127.0.0.1", scheme=b"http",
        trusted=TrustedProxies(), chunked=False, upgrade=upgrade,
    ))
    assert values(out, b"sec-websocket-key") == [b"dGhlIHNhbXBsZSBub25jZQ=="]
    if upgrade:
        assert values(out, b"upgrade") == [b"websocket"]
        assert [v.lower() for v in values(out, b"connection")] == [b"upgrade"]
    else:
        assert b"upgrade" not in names(out) and b"connection" not in names(out)


# --- response_head --------------------------------------------------------------------------
@settings(max_examples=400)
@given(headers=header_lists(), status=st.sampled_from([200, 201, 301, 404, 500, 503]),
       chunked=st.booleans(), keep_alive=st.booleans(),
       extra=st.lists(st.tuples(st.just(b"Set-Cookie"), field_value), max_size=2))
def test_response_head_properties(
    headers: Headers, status: int, chunked: bool, keep_alive: bool, extra: Headers
) -> None:
    head = response_head(status, b"", headers, extra, chunked=chunked, keep_alive=keep_alive,
                         upgrade=False)
    body = http_head.chunk(b"hello") + http_head.LAST_CHUNK if chunked else b""
    r = parse_response(head + body)
    assert r.status == status
    from_backend = list(r.headers)
    for pair in extra:
        assert pair in from_backend
        from_backend.remove(pair)
    out_names = names(from_backend)
    dropped = hop_names(headers) - {b"transfer-encoding", b"connection"}
    assert not (out_names & dropped), out_names & dropped
    conn = values(r.headers, b"connection")
    assert conn == ([] if keep_alive else [b"close"])
    if chunked:
        assert values(r.headers, b"transfer-encoding") == [b"chunked"]
        assert b"content-length" not in out_names
        assert r.complete and r.body == b"hello"
    else:
        assert b"transfer-encoding" not in out_names
        had_length = any(n.lower() == b"content-length" for n, _ in headers)
        assert len(values(r.headers, b"content-length")) == had_length


# --- error_response -------------------------------------------------------------------------
@given(status=st.sampled_from([400, 408, 413, 414, 431, 500, 502, 503, 504]),
       message=st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=80),
       close=st.booleans())
def test_error_response_is_a_complete_well_framed_response(
    status: int, message: str, close: bool
) -> None:
    data = error_response(status, message, close=close)
    r = parse_response(data)
    assert r.complete and r.status == status
    assert values(r.headers, b"content-length") == [str(len(r.body)).encode()]
    assert b"transfer-encoding" not in names(r.headers)
    assert values(r.headers, b"connection") == ([b"close"] if close else [])
    assert r.body.decode().startswith(f"{status} ")
    assert message in r.body.decode()
    assert data.endswith(r.body)


@given(headers=header_lists(), ip=ips, scheme=st.sampled_from([b"http", b"https"]),
       trusted=st.booleans())
def test_plain_request_head_equals_the_general_one(
    headers: list[tuple[bytes, bytes]], ip: str, scheme: bytes, trusted: bool
) -> None:
    """The hot path gives the same bytes whenever it is taken (no watched header but Host,
    Cookie, Content-Length)."""
    plain = [(n, v) for n, v in headers
             if n.lower() not in http_head.WATCHED or n.lower() in (b"host", b"cookie",
                                                                    b"content-length")]
    proxies = TrustedProxies.parse(["0.0.0.0/0", "::/0"] if trusted else [])
    general = request_head(b"GET", b"/p?q", plain, client_ip=ip, scheme=scheme,
                           trusted=proxies, chunked=False, upgrade=False)
    fast = http_head.plain_request_head(b"GET", b"/p?q", plain,
                                        http_head.forwarding_lines(ip, scheme))
    assert fast == general


# --- request line, Host, absolute-form, redirect, HSTS ----------------------------------------
tchar_method = st.from_regex(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}", fullmatch=True)
origin_target = st.from_regex(rb"/[!$&'()*+,;=:@/?A-Za-z0-9._~%-]{0,30}", fullmatch=True)


@given(method=tchar_method, target=origin_target, http11=st.booleans())
def test_request_line_of_any_token_method_is_read_back(
    method: bytes, target: bytes, http11: bool
) -> None:
    line = method + b" " + target + (b" HTTP/1.1" if http11 else b" HTTP/1.0")
    data = b"\r\n" + line + b"\r\nHost: x\r\n\r\n"
    assert http_head.parse_request_line(data, 2, 2 + len(line)) == (method, target, http11)


@given(line=st.binary(max_size=40))
def test_request_line_is_either_refused_or_exactly_its_parts(line: bytes) -> None:
    try:
        method, target, http11 = http_head.parse_request_line(line, 0, len(line))
    except http_head.BadRequest as e:
        assert e.status in (400, 505)
        return
    assert line == method + b" " + target + (b" HTTP/1.1" if http11 else b" HTTP/1.0")
    assert method and not method.translate(None, http_head.TCHAR)
    assert target and b" " not in target and b"#" not in target


@pytest.mark.parametrize(("line", "status"), [
    (b"GET / RTSP/1.0", 400), (b"GET / ICE/1.0", 400), (b"GET / http/1.1", 400),
    (b"GET / HTTP/2.0", 505), (b"GET / HTTP/0.9", 505), (b"GET / HTTP/1.2", 505),
    (b"GET /a#frag HTTP/1.1", 400), (b"GET /a?b#c HTTP/1.1", 400),
    (b"G{T / HTTP/1.1", 400), (b"GE\x00T / HTTP/1.1", 400), (b"GET  / HTTP/1.1", 400),
    (b"GET / HTTP/1.1 ", 400), (b" GET / HTTP/1.1", 400), (b"GET /", 400), (b"", 400),
])
def test_bad_request_lines(line: bytes, status: int) -> None:
    with pytest.raises(http_head.BadRequest) as e:
        http_head.parse_request_line(line, 0, len(line))
    assert e.value.status == status


@pytest.mark.parametrize(("value", "ok"), [
    (b"example.test", True), (b"example.test:8080", True), (b"[::1]:443", True),
    (b"127.0.0.1", True), (b"", True), (b"xn--bcher-kva.test", True),
    (b"a b", False), (b"a/b", False), (b"u@host", False), (b"\xffhost", False),
    (b"host\t", False), (b'"host"', False), (b"ho<st", False), (b"host?x", False),
])
def test_valid_host(value: bytes, ok: bool) -> None:
    assert http_head.valid_host(value) is ok


@pytest.mark.parametrize(("target", "want"), [
    (b"http://example.test/path?q=1", (b"example.test", b"/path?q=1")),
    (b"HTTPS://Example.test:8443", (b"Example.test:8443", b"/")),
    (b"http://example.test?q", (b"example.test", b"/?q")),
    (b"http://[::1]:80/x", (b"[::1]:80", b"/x")),
    (b"/plain", None), (b"*", None), (b"ftp://example.test/", None),
])
def test_absolute_target(target: bytes, want: tuple[bytes, bytes] | None) -> None:
    assert http_head.absolute_target(target) == want


@pytest.mark.parametrize("target", [b"http:///path", b"http://u:p@host/", b"http://a b/"])
def test_absolute_target_with_a_bad_authority_is_refused(target: bytes) -> None:
    with pytest.raises(http_head.BadRequest):
        http_head.absolute_target(target)


@pytest.mark.parametrize(("host", "port", "location"), [
    (b"example.test", 443, b"https://example.test/a?b"),
    (b"example.test:80", 443, b"https://example.test/a?b"),
    (b"example.test:8080", 8443, b"https://example.test:8443/a?b"),
    (b"[::1]:8080", 443, b"https://[::1]/a?b"),
])
def test_https_redirect(host: bytes, port: int, location: bytes) -> None:
    for keep_alive in (True, False):
        r = parse_response(http_head.https_redirect(host, b"/a?b", port, keep_alive=keep_alive))
        assert r.status == 308 and r.complete and r.body == b""
        assert values(r.headers, b"location") == [location]
        assert values(r.headers, b"connection") == ([] if keep_alive else [b"close"])


@given(headers=header_lists())
def test_hsts_is_added_once_unless_the_backend_sent_its_own(headers: Headers) -> None:
    head = response_head(200, b"", headers, (), chunked=False, keep_alive=True, upgrade=False,
                         hsts=b"max-age=31536000")
    r = parse_response(head)
    own = values(headers, b"strict-transport-security")
    got = values(r.headers, b"strict-transport-security")
    assert got == (own if own else [b"max-age=31536000"])
    backend_sts = [(b"Strict-Transport-Security", b"max-age=60")]
    r = parse_response(response_head(200, b"", [*headers, *backend_sts], (), chunked=False,
                                     keep_alive=True, upgrade=False, hsts=b"max-age=31536000"))
    assert b"max-age=31536000" not in values(r.headers, b"strict-transport-security")


@pytest.mark.parametrize(("keep_alive", "want"), [(True, [b"keep-alive"]), (False, [b"close"])])
def test_keep_alive_header_for_http10_clients(keep_alive: bool, want: list[bytes]) -> None:
    r = parse_response(response_head(200, b"", [(b"Connection", b"keep-alive")], (),
                                     chunked=False, keep_alive=keep_alive, upgrade=False,
                                     keep_alive_header=True))
    assert values(r.headers, b"connection") == want


_NOTABLE = st.sampled_from([b"Set-Cookie", b"set-cookie", b"Location", b"CONNECTION",
                            b"Transfer-Encoding", b"Content-Length", b"Set-Cookies", b"Locatio"])


@given(headers=header_lists(), more=st.lists(st.tuples(_NOTABLE, st.sampled_from(
    [b"chunked", b"gzip, chunked", b"a=1", b"/x", b"close", b"keep-alive", b"Keep-Alive",
     b"upgrade", b"keep-alive, x-a"])), max_size=4))
def test_response_facts_are_what_a_look_at_every_field_finds(
    headers: list[tuple[bytes, bytes]], more: list[tuple[bytes, bytes]]
) -> None:
    """The one pass's bits and framing equal a separate search for each name: an exchange
    that skips a pass because a bit is clear would have found nothing in it."""
    fields = headers + more
    low = [(n.lower(), v.lower()) for n, v in fields]
    chunked, has_length, seen = http_head.response_facts(fields)
    assert chunked == any(n == b"transfer-encoding" and b"chunked" in v for n, v in low)
    assert has_length == any(n == b"content-length" for n, _ in low)
    assert bool(seen & http_head.SETS_COOKIE) == any(n == b"set-cookie" for n, _ in low)
    assert bool(seen & http_head.HAS_LOCATION) == any(n == b"location" for n, _ in low)
    assert bool(seen & http_head.NAMES_HOPS) == any(
        n == b"connection" and v not in http_head.HOP_BY_HOP for n, v in low)
    if not seen & http_head.NAMES_HOPS:
        assert http_head.connection_tokens(fields) == http_head.NO_TOKENS
