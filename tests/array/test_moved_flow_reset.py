"""On a real namespace array: a live connection whose bucket moves (its node failed) to a node
that recently closed a connection with the same 4-tuple is reset at once, never left hanging.

Without care the new owner still holds that old connection in TIME_WAIT (the node closes
first after `Connection: close`, and a kill -9 of a node closes its sockets the same way):
TIME_WAIT answers the moved flow's segments with bare ACKs and re-arms its 60 s timer, never
with a reset, so the client waits for its own timeout instead of retrying at once (the chaos
soak lost a request that way). An array of its own: links go down and buckets move.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.array.array_harness import CLIENT_IP, VIP, Array, running_array, wait_until

PORTS = range(42000, 42600)
STALL_S = 8.0  # far above a reset's round trip, far below TIME_WAIT's 60 s


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    with running_array(tmp_path_factory.mktemp("moved"), nodes=3, backends=1) as arr:
        yield arr


def owners(arr: Array, sched: int) -> list[Any]:
    assignments: list[Any] = arr.admin(sched, "/table")["assignments"]
    return assignments


def live_again(arr: Array, sched: int, name: str) -> bool:
    rows = arr.admin(sched, "/summary")["nodes"]
    return any(r["name"] == name and not r["failed"] for r in rows)


def open_keepalive(arr: Array, sport: int) -> socket.socket:
    """A connection from `sport` with one answered keepalive request on it."""
    def call() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(STALL_S)
        s.bind((CLIENT_IP, sport))
        s.connect((VIP, 80))
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: vip\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, "closed before the first answer"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:80]
        return s

    result: socket.socket = arr.in_client(call)
    return result


def second_request(s: socket.socket) -> str:
    """What the second request on `s` gets: 'answer', 'reset' (any error) or 'stall'."""
    try:
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: vip\r\n\r\n")
        return "answer" if s.recv(65536) else "reset"
    except TimeoutError:
        return "stall"
    except OSError:
        return "reset"


def test_moved_flow_onto_time_wait_is_reset(array: Array) -> None:
    sched = wait_until(array.scheduler, 10, "a scheduler")
    a, b = [k for k in range(1, 4) if k != sched]
    name_a, name_b = f"n{a}", f"n{b}"
    table = owners(array, sched)
    on_a = [p for p in PORTS if table[array.bucket(p)] == name_a][:40]
    assert on_a
    for p in on_a:  # the node closes first: TIME_WAIT for each of these 4-tuples on A
        assert array.request("/whoami", p)[0] == 200
    flows: list[socket.socket] = []
    try:
        array.link(a, False)  # A fails: its buckets move, the TIME_WAITs stay in its kernel
        wait_until(lambda: name_a not in owners(array, sched), 20, f"{name_a}'s buckets to move")
        array.link(a, True)
        wait_until(lambda: live_again(array, sched, name_a), 20, f"{name_a} back")
        table = owners(array, sched)
        on_b = [p for p in on_a if table[array.bucket(p)] == name_b][:6]
        assert on_b, "none of the ports moved to the other node"
        flows = [open_keepalive(array, p) for p in on_b]
        array.link(b, False)  # B fails: its buckets go to A, which has none (the neediest)

        def back_on_a() -> list[int]:
            t = owners(array, sched)
            return [i for i, p in enumerate(on_b) if t[array.bucket(p)] == name_a]

        moved = wait_until(back_on_a, 20, f"{name_b}'s buckets to move to {name_a}")
        outcomes = [second_request(flows[i]) for i in moved]
        assert "stall" not in outcomes, outcomes
    finally:
        for s in flows:
            s.close()
        array.link(a, True)
        array.link(b, True)
