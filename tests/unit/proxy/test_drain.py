"""Playbook: a stopping worker's drain (dlba/proxy/worker.py drain_step) closes keepalive
connections between requests, never in the middle of one."""

from __future__ import annotations

from pathlib import Path

from dlba.proxy.worker import IDLE_CLOSE_S, drain_sessions
from tests.unit.proxy.playbook import (
    Has,
    Playbook,
    Starts,
    body,
    complete,
    connected,
    data,
    flush,
    head,
    playbook,
    response,
    tick,
)

GET = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"


def drain(pb: Playbook) -> None:
    drain_sessions([pb.session], pb.clock.now, pb.ctx.limits.keepalive_timeout_s)


def test_request_waiting_for_its_response_is_answered_with_close(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET /a"))
    drain(pb)
    pb.idle()  # nothing cut
    pb >> response("b1", payload=b"ok")
    pb << ("write", Has(b"HTTP/1.1 200", b"Connection: close\r\n")) << ("b_release", "b1")
    pb << ("close",)
    pb.idle()


def test_response_under_way_is_finished_then_the_idle_connection_closes(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET /a"))
    pb >> head("b1", 200, ((b"Content-Length", b"6"),)) >> body("b1", b"abc") >> flush("b1")
    pb << ("write", Starts(b"HTTP/1.1 200"))
    drain(pb)
    pb.idle()  # the head already promised keep-alive: the body goes on
    pb >> body("b1", b"def") >> flush("b1") << ("write", b"def")
    pb >> complete("b1") << ("b_release", "b1")
    pb.idle()
    drain(pb)  # idle for less than IDLE_CLOSE_S: a next request may be on its way
    pb.idle()
    pb >> tick(IDLE_CLOSE_S)
    drain(pb)
    pb << ("close",)
    pb.idle()


def test_keepalive_connection_between_requests_is_left_until_idle(tmp_path: Path) -> None:
    pb = playbook(tmp_path)
    pb >> data(GET) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET /a"))
    pb >> response("b1") << ("write", Starts(b"HTTP/1.1 200")) << ("b_release", "b1")
    pb >> tick(IDLE_CLOSE_S / 2)
    drain(pb)
    pb.idle()
    pb >> data(b"GET /b HTTP/1.1\r\nHost: a\r\n") >> tick(IDLE_CLOSE_S)  # a head half read
    drain(pb)
    pb.idle()
