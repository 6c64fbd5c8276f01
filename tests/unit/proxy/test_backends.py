"""Playbook: streaming with back-pressure both ways, re-routing on a dead back end, timeouts
of back ends, upgrades."""

from __future__ import annotations

from pathlib import Path

from tests.unit.proxy.playbook import (
    Has,
    Starts,
    backend_lost,
    backend_writable,
    body,
    client_writable,
    complete,
    connect_failed,
    connected,
    data,
    flush,
    head,
    playbook,
    response,
    tick,
    tunnel_data,
)

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
CHUNKED = ((b"Transfer-Encoding", b"chunked"),)


# --- streaming and back-pressure --------------------------------------------------------------
def test_response_streams_rechunked_one_write_per_read(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> head("b1", 200, ((b"Connection", b"close"),), keep_alive=False)
        >> body("b1", b"abc") >> body("b1", b"de") >> flush("b1")
        << ("write", b"HTTP/1.1 200 -\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n")
        >> backend_lost("b1")  # the back end ends the body by closing: complete, not truncated
        << ("write", b"0\r\n\r\n"))
    pb.idle()
    assert pb.session.queue == [] and pb.ctx.stats.requests == 1


def test_slow_client_pauses_the_back_end_and_resumes_it(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> head("b1", 200, ((b"Content-Length", b"6"),)) >> body("b1", b"abc") >> flush("b1")
        << ("write", Has(b"abc"))
        >> client_writable(False) << ("b_pause", "b1")
        >> client_writable(True) << ("b_resume", "b1")
        >> body("b1", b"def") >> complete("b1") << ("write", b"def") << ("b_release", "b1"))
    pb.idle()


def test_next_exchange_on_a_client_still_not_writable_pauses_its_back_end(
        tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> client_writable(False) << ("b_pause", "b1")
        >> response("b1") << ("write", Has(b"ok")) << ("b_release", "b1")
        >> data(GET) << ("open", 1) >> connected("b1", pooled="b1")
        << ("b_pause", "b1") << ("b_write", "b1", Starts(b"GET")))
    pb.idle()


def test_request_body_streams_and_a_full_back_end_pauses_the_client(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        << ("open", 1) >> connected("b1")
        << ("b_write", "b1", Has(b"POST /up HTTP/1.1\r\n", b"Transfer-Encoding: chunked\r\n"))
        >> data(b"3\r\nabc\r\n") << ("b_write", "b1", b"3\r\nabc\r\n")
        >> backend_writable("b1", False) << ("pause",)
        >> backend_writable("b1", True) << ("resume",)
        >> data(b"0\r\n\r\n") << ("b_write", "b1", b"0\r\n\r\n")
        >> response("b1") << ("write", Has(b"ok")) << ("b_release", "b1"))
    pb.idle()


def test_body_beyond_the_retain_limit_waits_for_a_back_end_with_reading_paused(
        tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    big = b"x" * (64 * 1024 + 1)
    (pb >> data(b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (len(big) + 5))
        << ("open", 1)
        >> data(big) << ("pause",)
        >> connected("b1") << ("b_write", "b1", Has(b"PUT /u ", big)) << ("resume",)
        >> data(b"12345") << ("b_write", "b1", b"12345"))
    pb.idle()


# --- re-routing --------------------------------------------------------------------------------
def test_connect_failure_reroutes_to_another_back_end(tmp_path: Path) -> None:
    pb = playbook(tmp_path, backends=2)
    (pb >> data(GET) << ("open", 2) >> connect_failed()
        << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> response("b1") << ("write", Has(b"200")) << ("b_release", "b1"))
    pb.idle()
    assert pb.ctx.stats.reroutes == 1 and pb.ctx.stats.backend(2).errors == 1


def test_every_back_end_unreachable_is_a_502(tmp_path: Path) -> None:
    pb = playbook(tmp_path, backends=2)
    (pb >> data(GET) << ("open", 2) >> connect_failed() << ("open", 1) >> connect_failed()
        << ("write", Starts(b"HTTP/1.1 503 "))  # both excluded: none left to choose
        << ("close",))
    pb.idle()


def test_reset_before_response_on_a_fresh_link_excludes_that_back_end(tmp_path: Path) -> None:
    pb = playbook(tmp_path, backends=2)
    (pb >> data(GET) << ("open", 2) >> connected("b2") << ("b_write", "b2", Starts(b"GET"))
        >> backend_lost("b2")
        << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> response("b1") << ("write", Has(b"200")) << ("b_release", "b1"))
    pb.idle()
    assert pb.ctx.stats.reroutes == 1


def test_pooled_link_closed_by_the_back_end_retries_the_same_back_end(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> response("b1") << ("write", Has(b"ok")) << ("b_release", "b1")
        >> data(GET) << ("open", 1) >> connected("b1", pooled="b1")
        << ("b_write", "b1", Starts(b"GET"))
        >> backend_lost("b1")  # its keepalive ran out: not the back end's fault
        << ("open", 1) >> connected("b1b") << ("b_write", "b1b", Starts(b"GET"))
        >> response("b1b") << ("write", Has(b"ok")) << ("b_release", "b1b"))
    pb.idle()


def test_post_is_not_replayed_after_a_reset(tmp_path: Path) -> None:
    pb = playbook(tmp_path, backends=2)
    (pb >> data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz") << ("open", 2)
        >> connected("b2") << ("b_write", "b2", Has(b"POST /", b"\r\n\r\nz"))
        >> backend_lost("b2")
        << ("write", Starts(b"HTTP/1.1 502 Bad Gateway\r\n")) << ("close",))
    pb.idle()


def test_truncated_response_aborts_the_client(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> head("b1", 200, ((b"Content-Length", b"10"),)) >> body("b1", b"abc") >> flush("b1")
        << ("write", Has(b"abc"))
        >> backend_lost("b1", got_bytes=True) << ("abort",))
    pb.idle()


def test_silent_back_end_is_a_504_after_backend_timeout(tmp_path: Path) -> None:
    pb = playbook(tmp_path, backend_timeout_s=3.0)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> tick(2.9))
    pb.idle()
    (pb >> tick(0.2) << ("b_abort", "b1")
        << ("write", Starts(b"HTTP/1.1 504 Gateway Timeout\r\n")) << ("close",))
    pb.idle()


def test_back_end_silent_mid_response_aborts_both(tmp_path: Path) -> None:
    pb = playbook(tmp_path, backend_timeout_s=3.0)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> head("b1", 200, CHUNKED) >> flush("b1") << ("write", Starts(b"HTTP/1.1 200"))
        >> tick(3.1) << ("b_abort", "b1") << ("abort",))
    pb.idle()


# --- upgrades ---------------------------------------------------------------------------------
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCH = ((b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"))


def test_upgrade_becomes_a_tunnel_both_ways(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(UPGRADE) << ("open", 1) >> connected("b1")
        << ("b_write", "b1", Has(b"Connection: upgrade\r\n", b"Upgrade: websocket\r\n"))
        >> head("b1", 101, SWITCH)
        << ("write", b"HTTP/1.1 101 -\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        >> data(b"\x81\x05hello") << ("b_write", "b1", b"\x81\x05hello")
        >> tunnel_data("b1", b"\x81\x02hi") << ("write", b"\x81\x02hi")
        >> tick(3600.0)  # no timeout in a tunnel
        >> backend_lost("b1") << ("close",))
    pb.idle()


def test_bytes_after_an_upgrade_head_before_its_101_are_refused(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(UPGRADE) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> data(b"GET /smuggled HTTP/1.1\r\n\r\n")
        << ("b_abort", "b1")
        << ("write", Starts(b"HTTP/1.1 400 Bad Request\r\n")) << ("shut_write",))
    pb.idle()


def test_refused_upgrade_is_answered_then_closed(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    (pb >> data(UPGRADE) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> response("b1", 403, b"no")
        << ("write", Has(b"HTTP/1.1 403 -\r\n", b"Connection: close\r\n"))
        << ("b_release", "b1") << ("close",))
    pb.idle()


def test_second_dead_pooled_link_excludes_the_back_end(tmp_path: Path) -> None:
    """A killed back end leaves every pooled connection to it dead: the first reset may be the
    keepalive race, the second is the back end, which is then excluded (here the only one, so
    the answer comes at once instead of after every attempt on one dead link after another)."""
    pb = playbook(tmp_path, backends=1)
    (pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
        >> response("b1") << ("write", Has(b"ok")) << ("b_release", "b1")
        >> data(GET) << ("open", 1) >> connected("b1", pooled="b1")
        << ("b_write", "b1", Starts(b"GET"))
        >> backend_lost("b1")  # a pooled link: the same back end again
        << ("open", 1) >> connected("b1", pooled="b1") << ("b_write", "b1", Starts(b"GET"))
        >> backend_lost("b1")  # another dead pooled link: that back end is excluded
        << ("write", Starts(b"HTTP/1.1 503 ")))
    assert pb.ctx.stats.reroutes == 2
