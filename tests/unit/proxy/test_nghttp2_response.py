"""The engine's response head in C (nghttp2_response.c) has h2_headers.response_fields'
fields for any HTTP/1.1 head, and what a client decodes from it is those fields."""

from __future__ import annotations

import gc
import tracemalloc

import h2.config
import h2.connection
import h2.events
from hypothesis import given, settings
from hypothesis import strategies as st

from dlba.proxy import h2_headers, http_head
from dlba.proxy import nghttp2_engine as ng

NAMES = [b"Content-Type", b"content-length", b"Content-Length", b"Connection", b"Keep-Alive",
         b"TE", b"Trailer", b"Transfer-Encoding", b"Upgrade", b"Proxy-Connection",
         b"Proxy-Authenticate", b"Proxy-Authorization", b"Strict-Transport-Security",
         b"Set-Cookie", b"X-Hop", b"x-hop", b"ETag", b"Server", b"Date", b"X-A\x00"]
VALUES = [b"", b"1", b"close", b"keep-alive", b"close, X-Hop", b"max-age=5", b"a=1", b"v\x00"]
fields_st = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=10)
tokens_st = st.sampled_from([http_head.NO_TOKENS, frozenset({b"x-hop"}),
                             frozenset({b"etag", b"server"})])


def python_fields(status: int, headers: list[tuple[bytes, bytes]],
                  extra: list[tuple[bytes, bytes]], hsts: bytes, framed: bool,
                  tokens: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    out = h2_headers.response_fields(status, headers, extra, hsts, framed, tokens)
    return [(n, v) for n, v in out if b"\0" not in n + v]  # the engine drops those (HTTP/2)


@settings(max_examples=400)
@given(status=st.sampled_from([200, 204, 301, 404, 503]), headers=fields_st,
       extra=st.lists(st.tuples(st.sampled_from([b"Set-Cookie", b"set-cookie"]),
                                st.sampled_from([b"S=1", b"T=2"])), max_size=2),
       hsts=st.sampled_from([b"", b"max-age=31536000"]), framed=st.booleans(), tokens=tokens_st)
def test_c_and_python_give_the_same_fields(
        status: int, headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]],
        hsts: bytes, framed: bool, tokens: frozenset[bytes]) -> None:
    c = ng.response_fields(status, headers, extra, hsts, framed, tokens)
    assert c == python_fields(status, headers, extra, hsts, framed, tokens)
    assert ng.response_fields(status, tuple(headers), tuple(extra), hsts, framed,
                              tokens) == c


def test_a_client_decodes_the_head_the_engine_sends() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "a"),
                            (":path", "/")], end_stream=True)
    eng = ng.Session(100, 65536, 1 << 20, 200, 200, 1000)
    eng.receive(client.data_to_send())
    headers = [(b"Content-Type", b"text/plain"), (b"Connection", b"keep-alive, X-Hop"),
               (b"X-Hop", b"1"), (b"Content-Length", b"2"), (b"Set-Cookie", b"a=1")]
    assert eng.response(1, 200, headers, [(b"Set-Cookie", b"S=1")], b"max-age=9", True,
                        frozenset({b"x-hop"})) == 0
    assert eng.data(1, b"ok", True) == 2
    got = [e for e in client.receive_data(eng.send()[0])
           if isinstance(e, h2.events.ResponseReceived)]
    assert [(bytes(n), bytes(v)) for n, v in got[0].headers] == [
        (b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"2"),
        (b"set-cookie", b"a=1"), (b"set-cookie", b"S=1"),
        (b"strict-transport-security", b"max-age=9")]
    assert eng.response(1, 200, headers, [], b"", True, frozenset()) == -1  # a second head


def test_building_frees_what_it_makes() -> None:
    headers = [(b"X-Name-%d" % i, b"v" * 100) for i in range(80)]  # past the stack buffers
    for _ in range(10):
        ng.response_fields(200, headers, [], b"", True, frozenset({b"x-name-1"}))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            ng.response_fields(200, headers, [], b"", True, frozenset({b"x-name-1"}))
        gc.collect()
        grew = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grew < 20_000, grew
