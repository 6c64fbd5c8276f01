"""Playbook: how a Connection: close response ends — a short one with a direct close, a long
one with a half-close that waits for the client to close first while it still reads."""

from __future__ import annotations

from pathlib import Path

from tests.unit.proxy.playbook import (
    Playbook,
    Starts,
    body,
    client_closed,
    complete,
    connected,
    data,
    flush,
    head,
    playbook,
    tick,
)

CLOSE_GET = b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def _respond(pb: Playbook, size: int, unsent: int = 0) -> Playbook:
    """A Connection: close request answered with `size` bytes, `unsent` of them not yet
    acknowledged by the client when the response is complete."""
    headers = ((b"Content-Length", b"%d" % size),)
    pb.unsent = unsent
    return (pb >> data(CLOSE_GET) << ("open", 1) >> connected("b1")
            << ("b_write", "b1", Starts(b"GET /big")) >> head("b1", 200, headers)
            >> body("b1", b"x" * size) >> flush("b1")
            << ("write", Starts(b"HTTP/1.1 200")) >> complete("b1"))


def test_short_close_response_closes_at_once(tmp_path: Path) -> None:
    pb = _respond(playbook(tmp_path), 1000)
    pb << ("b_release", "b1") << ("close",)
    pb.idle()


def test_long_close_response_half_closes_and_waits_for_the_client(tmp_path: Path) -> None:
    pb = _respond(playbook(tmp_path), 200_000, unsent=150_000)
    pb << ("b_release", "b1") << ("shut_write",)
    pb.idle()
    pb >> data(b"\x15\x03\x03 stray bytes after the response")  # read and dropped, no reset
    pb.idle()
    pb.unsent = 40_000  # the client still reads: the wait goes on
    pb >> tick(30.1)
    pb.idle()
    pb >> client_closed()  # the client closed first: nothing left to do
    pb >> tick(60)
    pb.idle()


def test_half_closed_connection_is_closed_when_the_client_stalls(tmp_path: Path) -> None:
    pb = _respond(playbook(tmp_path), 200_000, unsent=150_000)
    pb << ("b_release", "b1") << ("shut_write",)
    pb >> tick(30.1) << ("close",)  # no progress: closed (not reset: the kernel may yet send)
    pb.idle()
