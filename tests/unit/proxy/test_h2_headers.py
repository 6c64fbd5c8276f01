"""HTTP/2 <-> HTTP/1.1 header translation (dlba.proxy.h2_headers)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlba.proxy import http_head
from dlba.proxy.h2_headers import error_fields, local_response, request_from_h2, response_fields
from dlba.proxy.http_head import BadRequest, TrustedProxies

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"shop.example:443"),
        (b":path", b"/a?b=c")]


def translate(fields: list[tuple[bytes, bytes]]) -> bytes:
    req = request_from_h2(fields, 100, 8192)
    return http_head.request_head(req.method, req.target, req.headers, client_ip="192.0.2.1",
                                  scheme=b"https", trusted=TrustedProxies.parse(()),
                                  chunked=False, upgrade=False)


def test_authority_is_host_cookies_joined_hop_by_hop_dropped() -> None:
    req = request_from_h2([*BASE, (b"host", b"other"), (b"cookie", b"a=1"),
                           (b"te", b"trailers"), (b"cookie", b"b=2"), (b"accept", b"*/*"),
                           (b"content-length", b"3")], 100, 8192)
    assert req.method == b"GET" and req.target == b"/a?b=c"
    assert req.headers == [(b"host", b"shop.example:443"), (b"accept", b"*/*"),
                           (b"cookie", b"a=1; b=2"), (b"content-length", b"3")]
    assert req.cookie_header == "a=1; b=2" and req.length == 3


@pytest.mark.parametrize(("fields", "status"), [
    ([*BASE[:3], (b":path", b"/a b")], 400),
    ([*BASE[:3], (b":path", b"http://x/")], 400),
    ([(b":method", b"CONNECT"), (b":authority", b"a:1")], 405),
    ([*BASE, (b":protocol", b"websocket")], 400),
    ([*BASE, (b":", b"")], 400),  # a pseudo-header field RFC 9113 does not define
    ([(b":method", b"GET"), (b":path", b"/")], 400),  # no authority, no Host
    ([*BASE, (b"x", b"a\r\nb: c")], 400),
    ([*BASE, (b"X-Upper", b"1")], 400),
    ([*BASE, (b"content-length", b"1"), (b"content-length", b"2")], 400),
    ([*BASE, (b"x", b"v" * 9000)], 431),
    ([*BASE, *[(b"x%d" % i, b"1") for i in range(101)]], 431),
])
def test_refused(fields: list[tuple[bytes, bytes]], status: int) -> None:
    with pytest.raises(BadRequest) as e:
        request_from_h2(fields, 100, 8192)
    assert e.value.status == status


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=8), st.binary(max_size=12)),
                max_size=6), st.binary(max_size=12))
def test_no_field_or_path_can_add_a_line_to_the_http1_head(
        extra: list[tuple[bytes, bytes]], path: bytes) -> None:
    fields = [*BASE[:3], (b":path", b"/" + path), *extra]
    try:
        head = translate(fields)
    except BadRequest:
        return
    kept = [n for n, _ in extra if n.lower() not in http_head.HOP_BY_HOP | http_head.FORWARDING
            and n.lower() not in (b"host", b"cookie", b"content-length")
            and n[:1] != b":"]  # (a pseudo-header it accepts, :scheme, is not passed on)
    cookies = any(n == b"cookie" for n, _ in extra)
    lengths = any(n == b"content-length" for n, _ in extra)
    lines = head.split(b"\r\n")
    # request line, Host, the kept fields, Cookie, Content-Length, 3 forwarding lines, blank x2
    assert len(lines) == 1 + 1 + len(kept) + cookies + lengths + 3 + 2
    assert lines[0].count(b" ") == 2


_NAMES = st.sampled_from([b"accept", b"x-forwarded-for", b"forwarded", b"x-forwarded-proto",
                          b"te", b"cookie", b"host", b"content-length", b"user-agent"])


@given(st.lists(st.tuples(_NAMES, st.sampled_from([b"1", b"a, b", b"trailers", b"2"])),
                max_size=6), st.booleans(), st.booleans())
def test_a_plain_request_has_the_general_head(
        extra: list[tuple[bytes, bytes]], trusted: bool, v6: bool) -> None:
    """`plain` (no forwarding field of the client's) is exactly when the exchange's fast head
    gives request_head's bytes, for a trusted client and any other."""
    try:
        req = request_from_h2([*BASE, *extra], 100, 8192)
    except BadRequest:
        return
    ip = "2001:db8::1" if v6 else "192.0.2.1"
    proxies = TrustedProxies.parse(["0.0.0.0/0", "::/0"] if trusted else [])
    general = http_head.request_head(req.method, req.target, req.headers, client_ip=ip,
                                     scheme=b"https", trusted=proxies, chunked=False,
                                     upgrade=False)
    forwarded = any(n in http_head.FORWARDING for n, _ in extra)
    assert req.plain == (not forwarded)
    if req.plain:
        assert http_head.plain_request_head(req.method, req.target, req.headers,
                                            http_head.forwarding_lines(ip, b"https")) == general


def test_websocket_extended_connect_becomes_an_upgrade() -> None:
    req = request_from_h2([(b":method", b"CONNECT"), (b":protocol", b"websocket"),
                           (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/ws"),
                           (b"sec-websocket-key", b"client's"), (b"sec-websocket-version", b"13")],
                          100, 8192)
    assert req.websocket and req.method == b"GET" and req.target == b"/ws"
    assert not req.plain  # its Upgrade goes through request_head
    assert req.headers == [(b"host", b"a"), (b"sec-websocket-version", b"13"),
                           (b"upgrade", b"websocket")]
    with pytest.raises(BadRequest) as e:
        request_from_h2([(b":method", b"CONNECT"), (b":protocol", b"other"),
                         (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")],
                        100, 8192)
    assert e.value.status == 501


def test_response_fields() -> None:
    headers = [(b"Content-Length", b"5"), (b"Connection", b"close, X-Hop"), (b"X-Hop", b"1"),
               (b"Set-Cookie", b"a=1"), (b"Transfer-Encoding", b"chunked")]
    assert response_fields(200, headers, [(b"Set-Cookie", b"S=1")], b"max-age=1", False) == [
        (b":status", b"200"), (b"set-cookie", b"a=1"), (b"set-cookie", b"S=1"),
        (b"strict-transport-security", b"max-age=1")]
    assert (b"content-length", b"5") in response_fields(200, headers[:1], (), b"", True)
    fields, body = error_fields(503, "busy", b"", b"Retry-After: 2\r\n")
    assert (b"retry-after", b"2") in fields and body.startswith(b"503 ")
    assert (b"content-length", b"%d" % len(body)) in fields


def test_local_response_plain_and_chunked() -> None:
    status, fields, body = local_response(
        b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://a/\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n")
    assert status == 308 and (b"location", b"https://a/") in fields and body == b""
    assert all(n != b"connection" for n, _ in fields)
    status, fields, body = local_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert status == 200 and body == b"abcde"
    assert all(n not in (b"transfer-encoding", b"content-length") for n, _ in fields)


@given(st.binary(min_size=1, max_size=10), st.binary(max_size=10))
def test_field_checks_are_the_rfc_rules(name: bytes, value: bytes) -> None:
    if name[:1] == b":" or name.lower() in (b"host", b"cookie", b"content-length",
                                           b"sec-websocket-key"):
        return
    token = re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9a-z]+", name) is not None
    clean = re.search(rb"[\r\n\x00]", value) is None
    try:
        request_from_h2([*BASE, (name, value)], 100, 8192)
        ok = True
    except BadRequest:
        ok = False
    assert ok == (token and clean)


@given(st.binary(min_size=1, max_size=10), st.binary(max_size=10))
def test_method_and_target_checks_are_the_rfc_rules(method: bytes, path: bytes) -> None:
    fields = [(b":method", method), (b":scheme", b"https"), (b":authority", b"a"),
              (b":path", b"/" + path)]
    token = re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", method) is not None
    clean = re.search(rb"[\x00-\x20\x7f]", path) is None
    try:
        request_from_h2(fields, 100, 8192)
        ok = True
    except BadRequest:
        ok = False
    assert ok == (token and clean and method != b"CONNECT")
