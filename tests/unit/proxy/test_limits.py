"""Playbook: every answer the node makes itself for a bad request (400, 408, 414, 431, 505),
the lingering close after it, header timeouts, and framing across reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlba.proxy.core_exchange import Exchange
from dlba.proxy.core_session import ClientSession
from tests.unit.proxy.playbook import (
    Has,
    Recorder,
    Starts,
    body,
    client_writable,
    complete,
    connected,
    data,
    flush,
    head,
    playbook,
    response,
    tick,
)

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /\r\n\r\n", 400),  # malformed request line
    (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # method is not a token
    (b"\x16\x03\x01\x02\x00\x01\x00", 400),  # TLS on the plain port
    (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),  # request line without CRLF
    (b"GET / RTSP/1.0\r\n\r\n", 400),  # not HTTP
    (b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # a fragment
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Hosts
    (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),  # bad byte in Host
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 400),
    (b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # bad target
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400),  # llhttp's own refusal
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 8200 + b"\r\n\r\n", 431),  # line too long
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: v\r\n" * 100 + b"\r\n", 431),  # too many fields
])
def test_bad_request_is_answered_then_lingers(tmp_path: Path, raw: bytes, status: int) -> None:
    pb = playbook(tmp_path)
    pb >> data(raw) << ("write", Starts(b"HTTP/1.1 %d " % status)) << ("shut_write",)
    pb.idle()
    assert pb.ctx.stats.bad_requests == 1
    pb >> data(b"more bytes, drained") >> tick(1.9)
    pb.idle()
    pb >> tick(0.2) << ("abort",)  # the linger time is over
    pb.idle()


def test_head_larger_than_64k_over_many_reads_is_a_431(tmp_path: Path) -> None:
    pb = playbook(tmp_path, max_headers=1000)
    pb >> data(b"GET / HTTP/1.1\r\nHost: a\r\n")
    for _ in range(9):
        pb >> data(b"X-Fill: " + b"f" * 8000 + b"\r\n")
    pb << ("write", Starts(b"HTTP/1.1 431 ")) << ("shut_write",)
    pb.idle()


def test_error_over_tls_carries_hsts_and_a_close_without_half_close(tmp_path: Path) -> None:
    pb = playbook(tmp_path, scheme=b"https")
    pb.can_shut = False
    pb >> data(b"GET / HTTP/1.1\r\n\r\n") << ("write", Has(b" 400 ", b"Strict-Transport-Security"))
    pb << ("shut_write",) << ("close",)
    pb.idle()


def test_lingering_resumes_a_paused_client(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    pb >> data(GET * 16) << ("open", 1) << ("pause",)
    (pb >> tick(10.0)  # the header timer of a connection whose heads are all in: nothing
        >> connected("b1") << ("b_write", "b1", Starts(b"GET")) << ("resume",)
        >> data(b"BAD\r\n\r\n") << ("b_abort", "b1") << ("write", Starts(b"HTTP/1.1 400 "))
        << ("shut_write",))
    pb.idle()


def test_error_behind_a_streaming_response_ends_the_connection_after_it(
        tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> head("b1", 200, ((b"Content-Length", b"4"),)) >> body("b1", b"ab") >> flush("b1")
        << ("write", Has(b"ab"))
        >> data(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # no 400: it cannot follow
        >> body("b1", b"cd") >> flush("b1") << ("write", b"cd"))
    pb.idle()
    pb >> complete("b1") << ("b_release", "b1") << ("shut_write",)
    pb.idle()


def test_error_behind_a_response_not_started_drops_it_and_answers(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> data(b"GET / HTTP/9.9\r\n\r\n")
        << ("b_abort", "b1") << ("write", Starts(b"HTTP/1.1 505 ")) << ("shut_write",))
    pb.idle()


# --- timeouts ----------------------------------------------------------------------------------
def test_partial_head_times_out_with_a_408(tmp_path: Path) -> None:
    pb = playbook(tmp_path, header_timeout_s=5.0)
    pb >> data(b"GET / HTTP/1.1\r\nHo") >> tick(4.0)
    pb.idle()
    pb >> tick(1.1) << ("write", Starts(b"HTTP/1.1 408 Request Timeout\r\n")) << ("shut_write",)
    pb.idle()


def test_partial_request_line_times_out_with_a_408(tmp_path: Path) -> None:
    pb = playbook(tmp_path, header_timeout_s=5.0)
    pb >> data(b"GE") >> tick(5.1) << ("write", Starts(b"HTTP/1.1 408 ")) << ("shut_write",)
    pb.idle()


def test_silent_new_connection_is_closed_without_an_answer(tmp_path: Path) -> None:
    pb = playbook(tmp_path, header_timeout_s=5.0)
    pb >> tick(5.1) << ("close",)
    pb.idle()


def test_header_timer_restarts_for_the_next_request(tmp_path: Path) -> None:
    pb = playbook(tmp_path, header_timeout_s=5.0, keepalive_timeout_s=60.0)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> response("b1") << ("write", Has(b"ok")) << ("b_release", "b1")
        >> tick(30.0) >> data(b"GET /2 HTTP/1.1\r\n") >> tick(4.0))
    pb.idle()
    pb >> tick(1.1) << ("write", Starts(b"HTTP/1.1 408 ")) << ("shut_write",)
    pb.idle()


# --- framing across reads ------------------------------------------------------------------------
def test_request_split_at_every_byte_is_one_request(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    raw = b"\r\nPOST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz"
    for i in range(len(raw)):
        pb >> data(raw[i : i + 1])
    pb << ("open", 1)
    pb >> connected("b1") << ("b_write", "b1", Has(b"POST /p HTTP/1.1\r\n", b"\r\n\r\nxyz"))
    pb.idle()


def test_absolute_form_target_becomes_origin_form_with_its_host(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(b"GET http://shop.example/x HTTP/1.1\r\nHost: other\r\n\r\n") << ("open", 1)
        >> connected("b1") << ("b_write", "b1", Has(b"GET /x HTTP/1.1\r\n",
                                                    b"Host: shop.example\r\n")))
    pb.idle()


def test_a_method_llhttp_does_not_know_goes_to_the_back_end_as_is(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(b"PURGE /c HTTP/1.1\r\nHost: a\r\n\r\n") << ("open", 1)
        >> connected("b1") << ("b_write", "b1", Starts(b"PURGE /c HTTP/1.1\r\n")))
    pb.idle()


def test_interim_100_is_forwarded_then_the_final_answer(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
        << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"PUT /u "))
        >> head("b1", 100) << ("write", b"HTTP/1.1 100 -\r\n\r\n")
        >> data(b"z") << ("b_write", "b1", b"z")
        >> response("b1", 201, b"") << ("write", Starts(b"HTTP/1.1 201 ")) << ("b_release", "b1"))
    pb.idle()


def test_head_response_has_no_body_and_the_link_knows(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    pb >> data(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n") << ("open", 1) >> connected("b1")
    pb << ("b_write", "b1", Starts(b"HEAD / "))
    assert pb.link("b1").head_request
    (pb >> head("b1", 200, ((b"Content-Length", b"99"),)) >> flush("b1")
        << ("write", b"HTTP/1.1 200 -\r\nContent-Length: 99\r\n\r\n"))
    pb.idle()


def test_client_not_writable_then_writable_without_a_back_end(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    pb >> client_writable(False) >> client_writable(True)
    pb.idle()


class _Broken(Recorder):
    def open_backend(self, ex: Exchange, backend_id: int) -> None:
        raise RuntimeError("a bug")


def test_a_bug_under_a_parser_callback_is_a_500_not_a_crash(tmp_path: Path) -> None:
    # The bug sits in a call the core makes while llhttp's callback runs (the compiled
    # selector's methods cannot be replaced, so the recorder's open_backend raises).
    pb = playbook(tmp_path)
    pb.io = _Broken(pb)
    pb.session = ClientSession(pb.ctx, pb.io, b"http", "192.0.2.7", "192.0.2.7:5555", False)
    pb >> data(GET) << ("write", Starts(b"HTTP/1.1 500 Internal Server Error\r\n"))
    pb << ("shut_write",)
    pb.idle()


def test_connect_is_refused_as_such(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    pb >> data(b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n")
    pb << ("write", Has(b"HTTP/1.1 400 ", b"CONNECT is for forward proxies")) << ("shut_write",)
    pb.idle()
