"""A session id issued by a back end, on a real namespace array: logged in through one node over
HTTPS, the client then sends only JSESSIONID (no persistence cookie) through the VIP from client
ports whose buckets belong to each node in turn, over HTTP and HTTPS, and within a second every
node sends it to the back end that issued it."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from dlba.config import load_config
from dlba.scheduling.cookie_injection import find_cookie
from dlba.scheduling.hash_ring import HashRing
from tests.array.array_harness import CLIENT_IP, VIP, Array, running_array


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    with running_array(tmp_path_factory.mktemp("learned"), nodes=3, backends=3) as arr:
        yield arr


def _get(arr: Array, sport: int, tls: bool, path: str, cookie: str | None = None
         ) -> tuple[int, list[tuple[str, str]]]:
    """One request to the VIP from a chosen client port; the status and the response headers."""
    ca = str(arr.state / "certs" / "ca.pem")

    def call() -> tuple[int, list[tuple[str, str]]]:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        raw.settimeout(5)
        try:
            raw.bind((CLIENT_IP, sport))
            raw.connect((VIP, 443 if tls else 80))
            s = ssl.create_default_context(cafile=ca).wrap_socket(
                raw, server_hostname=VIP) if tls else raw
            extra = f"Cookie: {cookie}\r\n" if cookie else ""
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: vip\r\n{extra}Connection: close\r\n\r\n"
                      .encode())
            data = b""
            while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
                data += chunk
        finally:
            raw.close()
        lines = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        headers = [(n.strip().lower(), v.strip()) for n, _, v in
                   (line.partition(":") for line in lines[1:])]
        return int(lines[0].split()[1]), headers

    result: tuple[int, list[tuple[str, str]]] = arr.in_client(call)
    return result


def _ports_by_node(arr: Array) -> dict[str, Iterator[int]]:
    """Client ports whose buckets each node owns (each port used once: no TIME_WAIT clash)."""
    sched = arr.scheduler()
    assert sched is not None
    table = arr.admin(sched, "/table")
    owners: dict[str, list[int]] = {}
    for port in range(20000, 40000):
        owner = table["assignments"][arr.bucket(port, table["size"])]
        if owner is not None:
            owners.setdefault(owner, []).append(port)
    assert sorted(owners) == [f"n{k}" for k in range(1, arr.nodes + 1)], sorted(owners)
    return {name: iter(ports) for name, ports in owners.items()}


def test_learned_session_reaches_its_issuer_through_every_node(array: Array) -> None:
    ports = _ports_by_node(array)
    config = load_config(array.state / "cluster.toml")
    ring = HashRing({b.id: b.weight for b in config.backends})
    for _ in range(40):  # a session the session-id ring would send elsewhere
        status, headers = _get(array, next(ports["n1"]), True, "/login")
        assert status == 200
        issuer = dict(headers)["x-backend"]
        sid = find_cookie("; ".join(v for n, v in headers if n == "set-cookie"), "JSESSIONID")
        assert sid
        if f"b{ring.get(sid)}" != issuer:
            break
    else:
        raise AssertionError("every login landed where the ring hashes it")
    deadline = time.monotonic() + 1.0  # every node knows it within a second
    while True:
        seen = {}
        for name in sorted(ports):
            for tls in (False, True):
                status, headers = _get(array, next(ports[name]), tls, "/whoami",
                                       f"JSESSIONID={sid}")
                seen[(name, tls)] = (status, dict(headers).get("x-backend"))
        wrong = {k: v for k, v in seen.items() if v != (200, issuer)}
        if not wrong:
            break
        assert time.monotonic() < deadline, f"issued by {issuer}; through (node, tls): {wrong}"
        time.sleep(0.05)
    for k in range(1, array.nodes + 1):
        assert array.admin(k, "/status")["learned_sessions"] >= 1
