"""Playbook: one request, keepalive, pipelining, HTTP/1.0, local answers."""

from __future__ import annotations

from pathlib import Path

from tests.unit.proxy.playbook import (
    Has,
    Starts,
    body,
    client_closed,
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
OK = b"HTTP/1.1 200 -\r\nContent-Length: 2\r\n\r\nok"


def test_one_request_one_response_then_idle_timeout(tmp_path: Path) -> None:
    pb = playbook(tmp_path, keepalive_timeout_s=5.0)
    (pb >> data(GET)
        << ("open", 1)
        >> connected("b1")
        << ("b_write", "b1", Has(b"GET / HTTP/1.1\r\n", b"Host: a\r\n",
                                 b"X-Forwarded-For: 192.0.2.7\r\n"))
        >> response("b1", 200, b"ok")
        << ("write", OK)
        << ("b_release", "b1")
        >> tick(4.9))
    pb.idle()
    pb >> tick(0.2) << ("close",)
    pb.idle()


def test_keepalive_reuses_the_pooled_link(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET /"))
        >> response("b1") << ("write", OK) << ("b_release", "b1")
        >> data(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n") << ("open", 1)
        >> connected("b1", pooled="b1") << ("b_write", "b1", Starts(b"GET /two HTTP/1.1\r\n"))
        >> response("b1") << ("write", OK) << ("b_release", "b1"))
    pb.idle()
    assert pb.link("b1").reused == 2


def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    two = GET + b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    (pb >> data(two)
        << ("open", 1)  # only the first: the second waits its turn
        >> connected("b1") << ("b_write", "b1", Starts(b"GET / "))
        >> response("b1", payload=b"11")
        << ("write", Starts(b"HTTP/1.1 200"))
        << ("b_release", "b1")
        << ("open", 1)  # now the second
        >> connected("b1", pooled="b1") << ("b_write", "b1", Starts(b"GET /2 "))
        >> response("b1", payload=b"22") << ("write", Has(b"22")) << ("b_release", "b1"))
    pb.idle()


def test_pipelining_queue_depth_pauses_reading(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    pb >> data(GET * 16) << ("open", 1) << ("pause",)  # 16 read ahead: no more until answered
    pb.idle()
    # Binding a back end resumes reading (it is also what ends a body's wait for one), and
    # the next complete head over the depth pauses it again.
    pb >> connected("b1") << ("b_write", "b1", Starts(b"GET")) << ("resume",)
    pb >> response("b1") << ("write", OK) << ("b_release", "b1") << ("open", 1)
    pb >> data(GET) << ("pause",)
    pb.idle()
    assert len(pb.session.queue) == 16


def test_http10_keep_alive_is_said_and_kept(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        << ("open", 1)
        >> connected("b1")
        # no Host from the client: the back end's address, as HTTP/1.1 needs one
        << ("b_write", "b1", Has(b"GET / HTTP/1.1\r\n", b"Host: 127.0.0.1:8080\r\n"))
        >> response("b1")
        << ("write", b"HTTP/1.1 200 -\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        << ("b_release", "b1"))
    pb.idle()


def test_http10_without_keep_alive_closes_after_the_answer(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(b"GET / HTTP/1.0\r\n\r\n") << ("open", 1) >> connected("b1")
        << ("b_write", "b1", Starts(b"GET / HTTP/1.1"))
        >> response("b1")
        << ("write", Has(b"Connection: close\r\n")) << ("b_release", "b1") << ("close",))
    pb.idle()


def test_http10_client_gets_a_close_delimited_body(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n") << ("open", 1)
        >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> head("b1", 200, ((b"Transfer-Encoding", b"chunked"),)) >> body("b1", b"abc")
        >> flush("b1")
        << ("write", b"HTTP/1.1 200 -\r\nConnection: close\r\n\r\nabc")
        >> complete("b1") << ("b_release", "b1") << ("close",))
    pb.idle()


def test_no_back_end_is_a_503_and_a_close(tmp_path: Path) -> None:
    pb = playbook(tmp_path, backends=0)
    pb >> data(GET) << ("write", Starts(b"HTTP/1.1 503 Service Unavailable\r\n")) << ("close",)
    pb.idle()
    assert pb.ctx.stats.errors == 1


def test_redirect_to_https_is_answered_locally(tmp_path: Path) -> None:
    pb = playbook(tmp_path, redirect=True)
    (pb >> data(b"GET /x?y=1 HTTP/1.1\r\nHost: shop.example:80\r\n\r\n")
        << ("write", Has(b"HTTP/1.1 308 Permanent Redirect\r\n",
                         b"Location: https://shop.example/x?y=1\r\n")))
    pb.idle()  # keepalive: no back end asked, the connection stays


def test_redirect_of_a_request_with_a_body_closes(tmp_path: Path) -> None:
    pb = playbook(tmp_path, redirect=True)
    (pb >> data(b"POST /f HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
        << ("write", Has(b" 308 ", b"Location: https://10.0.0.1/f\r\n", b"Connection: close"))
        << ("close",))
    pb.idle()


def test_client_gone_mid_response_aborts_the_back_end(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> head("b1", 200, ((b"Content-Length", b"10"),)) >> body("b1", b"12345")
        >> flush("b1") << ("write", Has(b"12345"))
        >> client_closed() << ("b_abort", "b1"))
    pb.idle()
    assert pb.ctx.stats.connections_open == 0


def test_client_gone_while_connecting_returns_the_link_to_its_pool(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    pb >> data(GET) << ("open", 1) >> client_closed() >> connected("b1") << ("b_release", "b1")
    pb.idle()


def test_https_answers_carry_hsts_and_the_injected_cookie(tmp_path: Path) -> None:
    pb = playbook(tmp_path, scheme=b"https")
    (pb >> data(GET) << ("open", 1) >> connected("b1")
        << ("b_write", "b1", Has(b"X-Forwarded-Proto: https\r\n"))
        >> head("b1", 200, ((b"Content-Length", b"0"), (b"Set-Cookie", b"JSESSIONID=abc")))
        >> complete("b1")
        << ("write", Has(b"Set-Cookie: JSESSIONID=abc\r\n", b"Set-Cookie: DLBASERVER=",
                         b"; Secure", b"Strict-Transport-Security: max-age=31536000\r\n"))
        << ("b_release", "b1"))
    pb.idle()
    assert pb.ctx.stats.cookie_injected == 1 and pb.ctx.stats.requests == 1


def test_access_log_hook_counts_the_request_per_back_end(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> response("b1", 502, b"bad") << ("write", Has(b"bad")) << ("b_release", "b1"))
    pb.idle()
    b = pb.ctx.stats.backend(1)
    assert (b.requests, b.bytes_out, b.errors) == (1, 3, 1)
