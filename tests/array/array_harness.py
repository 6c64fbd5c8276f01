"""A whole namespace array made by `dlba up --detach` under a private prefix (test helper).

Everything the tests do to it happens from inside its namespaces (client requests, admin API
calls, link changes), and `dlba down` removes it whatever the test's outcome.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from dlba.local_array import processes

REPO = Path(__file__).resolve().parents[2]
VIP = "198.18.0.100"
CLIENT_IP = "198.18.0.2"
EPHEMERAL_PORTS = "50000 60999"  # the client namespace's; chosen source ports stay below


def wait_until(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(step)


@dataclass
class Array:
    prefix: str
    state: Path
    nodes: int
    token: str

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}client"

    def node_ns(self, k: int) -> str:
        return f"{self.prefix}n{k}"

    def node_address(self, k: int) -> str:
        return f"198.18.0.{10 + k}"

    def in_client(self, fn: Callable[[], Any]) -> Any:
        return processes.run_in_netns(self.client_ns, fn)

    # --- admin API ----------------------------------------------------------------------------
    def admin(self, k: int, path: str, method: str = "GET", timeout: float = 2.0) -> Any:
        url = f"http://{self.node_address(k)}:9000{path}"

        def call() -> Any:
            req = urllib.request.Request(
                url, method=method, headers={"Authorization": f"Bearer {self.token}"}
            )
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())

        return self.in_client(call)

    def try_admin(self, k: int, path: str) -> Any:
        try:
            return self.admin(k, path, timeout=1.0)
        except OSError:
            return None

    def scheduler(self, among: range | list[int] | None = None) -> int | None:
        """The node that says it holds the role (None when none does)."""
        for k in among or range(1, self.nodes + 1):
            st = self.try_admin(k, "/status")
            if st and st.get("role") == "scheduler":
                return k
        return None

    def hits(self) -> dict[int, int]:
        out = {}
        for k in range(1, self.nodes + 1):
            st = self.try_admin(k, "/status")
            out[k] = st["nodes"][0]["hits"] if st else -1
        return out

    # --- client traffic -----------------------------------------------------------------------
    def request(self, path: str, sport: int = 0, timeout: float = 5.0) -> tuple[int, bytes]:
        """One HTTP/1.1 request to the VIP from the client namespace, from a chosen port."""

        def call() -> tuple[int, bytes]:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.settimeout(timeout)
            try:
                s.bind((CLIENT_IP, sport))
                s.connect((VIP, 80))
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"
                          .encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            finally:
                s.close()
            head, _, body = data.partition(b"\r\n\r\n")
            return int(head.split()[1]), body

        result: tuple[int, bytes] = self.in_client(call)
        return result

    def bucket(self, sport: int, size: int = 4096) -> int:
        return (int(ipaddress.IPv4Address(CLIENT_IP)) + sport) % size

    def pid(self, name: str) -> int:
        return int((self.state / "pids" / f"{name}.pid").read_text().split()[0])

    def link(self, k: int, up: bool) -> None:
        with IPRoute(netns=self.node_ns(k)) as ipr:
            idx = ipr.link_lookup(ifname="front")[0]
            ipr.link("set", index=idx, state="up" if up else "down")

    def tx_bytes(self, k: int) -> int:
        with IPRoute(netns=self.node_ns(k)) as ipr:
            idx = ipr.link_lookup(ifname="front")[0]
            stats = ipr.get_links(idx)[0].get_attr("IFLA_STATS64")
            return int(stats["tx_bytes"])

    def front_mac(self, k: int) -> str:
        with IPRoute(netns=self.node_ns(k)) as ipr:
            idx = ipr.link_lookup(ifname="front")[0]
            return str(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS"))


def dlba(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "dlba", *args], capture_output=True, text=True, env=env,
        timeout=timeout, check=False, cwd=REPO,
    )


@contextmanager
def running_array(
    tmp: Path, nodes: int = 3, backends: int = 2, redis: bool = False,
    up_args: tuple[str, ...] = (),
) -> Iterator[Array]:
    if os.geteuid() != 0:
        pytest.fail("array tests need root (network namespaces, BPF, raw sockets)")
    if redis and shutil.which("redis-server") is None:
        pytest.fail("redis-server missing: `make install` installs it")
    prefix = f"la{secrets.token_hex(2)}-"
    state = tmp / "state"
    up = dlba("up", "--detach", "--prefix", prefix, "--state", str(state), "--nodes",
              str(nodes), "--backends", str(backends), *(["--redis"] if redis else []),
              *up_args)
    try:
        assert up.returncode == 0, f"dlba up failed:\n{up.stdout}\n{up.stderr}"
        arr = Array(prefix, state, nodes, (state / "admin.token").read_text().strip())
        # Tests bind chosen client ports below 50000 (to pick a bucket); the admin calls' own
        # ephemeral ports must never take one, or a TIME_WAIT left by a socket without
        # SO_REUSEADDR makes the chosen port's bind fail with EADDRINUSE.
        processes.write_sysctls(arr.client_ns,
                                [("net.ipv4.ip_local_port_range", EPHEMERAL_PORTS)])
        sched = wait_until(arr.scheduler, 15, "a scheduler")

        def all_follow() -> bool:
            return all((arr.try_admin(k, "/status") or {}).get("scheduler") == f"n{sched}"
                       for k in range(1, nodes + 1) if k != sched)

        wait_until(all_follow, 10, "every node to follow the scheduler")
        yield arr
    finally:
        down = dlba("down", "--prefix", prefix, "--state", str(state))
        if down.returncode != 0:
            print(down.stdout, down.stderr)


def stop_process(arr: Array, name: str) -> None:
    os.kill(arr.pid(name), signal.SIGKILL)


SUPERVISOR = "_supervisor"  # the pid file `dlba up --detach` leaves for its supervisor


def kill_node(arr: Array, k: int) -> list[int]:
    """`kill -9` of every process of node k (its main process and its proxy workers), found
    by its namespace, by PID."""
    from dlba.local_array import netns_builder

    pids = netns_builder.pids_in(arr.node_ns(k))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


@contextmanager
def supervision_paused(arr: Array) -> Iterator[None]:
    """The array's supervisor stopped (SIGSTOP), so a node a test kills stays dead."""
    pid = arr.pid(SUPERVISOR)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def restarted(arr: Array, k: int, old_pid: int, timeout: float = 30) -> int:
    """The new PID of node k once the supervisor started it again; its pid file holds
    `pid starttime netns` of the running process."""

    def check() -> int | None:
        try:
            pid_s, start, ns = (arr.state / "pids" / f"n{k}.pid").read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_s)
        ok = pid != old_pid and processes.alive(pid, start) and ns == arr.node_ns(k)
        return pid if ok else None

    result: int = wait_until(check, timeout, f"n{k} to be started again")
    return result
