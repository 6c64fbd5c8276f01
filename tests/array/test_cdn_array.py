"""CDN offload on a real namespace array: with [cdn] pushed to every node, objects requested
through the VIP from client ports whose buckets belong to different nodes are each sampled by
one node only, yet every node ends up holding the same choice (the scheduler decides from every
node's figures), and pages through the VIP come back rewritten whichever node serves them. With
two services, each converges on its own choice and its pages get its own base."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dlba.demo_site import OBJECTS
from tests.array.array_harness import CLIENT_IP, VIP, Array, dlba, running_array, wait_until
from tests.array.test_services_array import LONE, with_services

pytestmark = pytest.mark.array

CDN = "https://cdn.array.test"


def _choices(arr: Array) -> dict[int, tuple[str, frozenset[str]]]:
    out = {}
    for k in range(1, arr.nodes + 1):
        view = arr.admin(k, "/cdn")
        out[k] = (view["version"], frozenset(o["path"] for o in view["objects"]))
    return out


def test_choice_converges_on_every_node(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=3, backends=2) as arr:
        pushed = arr.state / "cdn.toml"
        pushed.write_text((arr.state / "cluster.toml").read_text()
                          + f'\n[cdn]\nenabled = true\nbase = "{CDN}"\nsample = 1.0\n')
        r = dlba("config", "push", str(pushed), "--state", str(arr.state))
        assert r.returncode == 0, r.stderr
        before = arr.hits()
        # One object per client port: each object is seen by the node owning its bucket only.
        for i, name in enumerate(OBJECTS):
            for j in range(3):
                status, _ = arr.request(f"/static/{name}", sport=43000 + i * 31 + j * 7)
                assert status == 200
        served = {k for k, n in arr.hits().items() if n > before[k]}
        assert len(served) >= 2, "the objects' traffic should have crossed several nodes"

        want = frozenset(f"/static/{n}" for n in OBJECTS)

        def converged() -> bool:
            c = _choices(arr)
            return all(paths == want for _, paths in c.values()) and len(
                {v for v, _ in c.values()}) == 1

        wait_until(converged, 10, "every node to hold the same choice of every object")
        for i in range(6):  # pages through the VIP, whichever node serves them
            status, body = arr.request("/page", sport=44000 + i * 17)
            assert status == 200
            assert f'src="{CDN}/static/app.js"'.encode() in body, body[:300]


def _get(arr: Array, vip: str, port: int, path: str, sport: int) -> tuple[int, bytes]:
    """One HTTP/1.1 request to vip:port from the client namespace, from a chosen port."""
    def call() -> tuple[int, bytes]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.settimeout(5.0)
            s.bind((CLIENT_IP, sport))
            s.connect((vip, port))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: www\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    result: tuple[int, bytes] = arr.in_client(call)
    return result


API_CDN = "https://cdn-api.array.test"
TWO_SERVICES = f'''
[cdn]
enabled = true
base = "{CDN}"
sample = 1.0

[[services]]
name = "shop"
vips = ["{VIP}"]
ports = [80]
tls_ports = []

[[services]]
name = "api"
vips = ["{LONE}"]
ports = [8080]
tls_ports = []

[services.cdn]
base = "{API_CDN}"
types = ["*.png"]
'''


def test_each_service_converges_on_its_own_choice(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=3, backends=2) as arr:
        pushed = with_services(arr, TWO_SERVICES, "cdn-services.toml")
        r = dlba("config", "push", str(pushed), "--state", str(arr.state))
        assert r.returncode == 0, r.stderr
        wait_until(lambda: _get(arr, LONE, 8080, "/health", 45000)[0] == 200, 10,
                   "the api service to answer")
        for i, name in enumerate(OBJECTS):  # the shop: every object, across the nodes
            assert _get(arr, VIP, 80, f"/static/{name}", 43000 + i * 31)[0] == 200
        for i, name in enumerate(("logo.png", "app.js", "logo-2x.png")):  # the api: two pngs
            assert _get(arr, LONE, 8080, f"/static/{name}", 44000 + i * 37)[0] == 200
        want = {"shop": frozenset(f"/static/{n}" for n in OBJECTS),
                "api": frozenset({"/static/logo.png", "/static/logo-2x.png"})}

        def converged() -> bool:
            for k in range(1, arr.nodes + 1):
                view = arr.admin(k, "/cdn")
                got = {s["service"]: frozenset(o["path"] for o in s["objects"])
                       for s in view["services"]}
                if got != want:
                    return False
            return True

        wait_until(converged, 10, "every node to hold each service's own choice")
        for i in range(4):  # pages through each service's VIP, whichever node serves them
            _, shop = _get(arr, VIP, 80, "/page", 46000 + i * 17)
            _, api = _get(arr, LONE, 8080, "/page", 47000 + i * 17)
            assert f'src="{CDN}/static/app.js"'.encode() in shop, shop[:300]
            assert f"{API_CDN}/static/logo.png 1x, {API_CDN}/static/logo-2x.png 2x".encode() \
                in api, api[:300]
            assert b'src="/static/app.js"' in api and CDN.encode() not in api
