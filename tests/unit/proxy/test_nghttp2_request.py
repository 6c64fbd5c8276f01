"""The engine's request translation in C (nghttp2_request.c, h2_headers.request_from_block)
gives request_from_h2's answer for any header block: the same request, or the same refusal."""

from __future__ import annotations

import gc
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlba.proxy import h2_headers
from dlba.proxy import nghttp2_engine as ng
from dlba.proxy.http_head import BadRequest

NAMES = [b":method", b":path", b":authority", b":scheme", b":protocol", b":status", b":",
         b"host", b"cookie", b"content-length", b"te", b"connection", b"keep-alive",
         b"upgrade", b"trailer", b"transfer-encoding", b"proxy-connection",
         b"proxy-authenticate", b"proxy-authorization", b"sec-websocket-key",
         b"x-forwarded-for", b"x-forwarded-proto", b"forwarded", b"accept", b"user-agent",
         b"", b"Accept", b"x-forwarded-fo"]
VALUES = [b"", b"GET", b"CONNECT", b"OPTIONS", b"G T", b"/", b"/a?b", b"*", b"a b", b"/\x7f",
          b"websocket", b"WebSocket", b"other", b"a=1", b"b=2", b"0", b"12", b"012",
          b"1" * 18, b"1" * 19, b"1x", b"-1", b"shop.example:443", b"bad host", b"[::1]:8",
          b"trailers", b"\x00\r\n", b"v" * 50]


def block(fields: list[tuple[bytes, bytes]]) -> bytes:
    """The session's header block: per field u32 length, name, u32 length, value."""
    return b"".join(struct.pack("=I", len(n)) + n + struct.pack("=I", len(v)) + v
                    for n, v in fields)


def answer(f: object) -> tuple[object, ...]:
    try:
        r = f()  # type: ignore[operator]
    except BadRequest as bad:
        return ("refused", bad.status, bad.reason)
    return (r.method, r.target, r.headers, r.cookie_header, r.length, r.websocket, r.plain)


fields_st = st.lists(st.tuples(st.sampled_from(NAMES), st.one_of(
    st.sampled_from(VALUES), st.binary(max_size=8))), max_size=12)
base_st = st.sampled_from([
    [], [(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"https"),
         (b":authority", b"a.example")],
    [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":path", b"/ws"),
     (b":authority", b"a.example"), (b"sec-websocket-version", b"13")]])


@settings(max_examples=400)
@given(base=base_st, fields=fields_st, max_headers=st.integers(0, 8),
       max_line=st.integers(10, 80))
def test_c_and_python_give_the_same_answer(
        base: list[tuple[bytes, bytes]], fields: list[tuple[bytes, bytes]], max_headers: int,
        max_line: int) -> None:
    all_fields = base + fields
    c = answer(lambda: h2_headers.request_from_block(block(all_fields), max_headers, max_line))
    py = answer(lambda: h2_headers.request_from_h2(all_fields, max_headers, max_line,
                                                   checked=True))
    assert c == py


def test_a_browser_request() -> None:
    fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"shop.example"),
              (b":path", b"/cart?x=1"), (b"cookie", b"a=1"), (b"accept", b"*/*"),
              (b"cookie", b"b=2"), (b"te", b"trailers"), (b"content-length", b"007")]
    r = h2_headers.request_from_block(block(fields), 100, 8192)
    assert (r.method, r.target, r.cookie_header, r.length, r.plain) == (
        b"GET", b"/cart?x=1", "a=1; b=2", 7, True)
    assert r.headers == [(b"host", b"shop.example"), (b"accept", b"*/*"),
                         (b"cookie", b"a=1; b=2"), (b"content-length", b"7")]


def test_not_a_block_is_an_error_not_a_crash() -> None:
    with pytest.raises(ValueError):
        ng.request(b"\x05\x00\x00\x00ab", 100, 8192)
    with pytest.raises(TypeError):
        ng.request("text", 100, 8192)  # type: ignore[arg-type]


def test_the_translation_frees_what_it_makes() -> None:
    # Its buffers (the joined Cookie: PyMem, traced) and objects come back, answered or
    # refused: 2,000 of each would hold ~1 MB if they leaked.
    cookie = [(b"cookie", b"c" * 200)] * 2
    ok = block([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a"), *cookie])
    refused = block([(b":authority", b"a"), *cookie, (b"content-length", b"x")])
    for b in (ok, refused):
        ng.request(b, 100, 8192)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = []
        for _ in range(2000):
            kept.append(ng.request(ok, 100, 8192)[0])
            kept.append(ng.request(refused, 100, 8192)[0])
        del kept
        gc.collect()
        grew = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grew < 20_000, grew
    assert ng.request(refused, 100, 8192)[:2] == (400, "bad content-length")
