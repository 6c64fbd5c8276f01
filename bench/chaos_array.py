"""The chaos soak's hands on the namespace array: its processes, links, admin API and memory.

Only processes recorded in the array's own state folder (`pids/<name>.pid`: "pid starttime
netns", written by `dlba up` or by `processes.start` here) and their children are ever
signalled; the start time guards against a PID the kernel has given to someone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from bench import chaos_growth
from dlba.local_array import processes
from dlba.local_array.config_gen import StatePaths
from dlba.local_array.topology import ADMIN_PORT, node_front_address
from dlba.local_array.up import backend_command, node_command, redis_command

REPO = Path(__file__).resolve().parents[1]


def dlba_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "dlba", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False, cwd=REPO)


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (depth first), from /proc/PID/task/*/children."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                for c in f.read().split():
                    out.append(int(c))
                    out += children(int(c))
    return out


def rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_targets(pid: int) -> list[str]:
    """readlink() of each of `pid`'s descriptors ("socket:[INODE]", "pipe:[...]", a path)."""
    out = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def node_sample(pid: int) -> dict[str, int]:
    """RSS and descriptors of a node's process and its workers, with how many descriptors are
    established TCP connections (of clients, to back ends) in the node's namespace, read
    together from /proc (PID's net/tcp lists its namespace's sockets)."""
    pids = [pid, *children(pid)]
    tables = []
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as f:
            tables.append(f.read())
    targets = [t for p in pids for t in fd_targets(p)]
    counts = chaos_growth.fd_counts(targets, chaos_growth.established_sockets(tables))
    # The main process's own RSS beside the sum: the control plane (failover, table and config
    # sync) lives there, the connections in the workers.
    return {"rss_kb": sum(rss_kb(p) for p in pids), "main_rss_kb": rss_kb(pid), **counts}


@dataclass
class ArrayControl:
    prefix: str
    state: Path
    config: Path
    nodes: int
    backends: int
    token: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- names and pids ------------------------------------------------------------------
    @property
    def client_ns(self) -> str:
        return f"{self.prefix}client"

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def record(self, name: str) -> tuple[int, str] | None:
        try:
            pid_s, start, *_ = (self.state / "pids" / f"{name}.pid").read_text().split()
            return int(pid_s), start
        except (OSError, ValueError):
            return None

    def live_pid(self, name: str) -> int | None:
        rec = self.record(name)
        return rec[0] if rec and processes.alive(*rec) else None

    def kill_tree(self, name: str) -> list[int]:
        """SIGKILL the recorded process `name` first (so it respawns nothing), then its
        descendants. Returns the PIDs signalled."""
        pid = self.live_pid(name)
        if pid is None:
            return []
        tree = children(pid)
        killed = []
        for p in [pid, *tree]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
                killed.append(p)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return killed

    def kill_one_child(self, name: str, pick: int) -> int | None:
        pid = self.live_pid(name)
        kids = [c for c in children(pid)] if pid else []
        if not kids:
            return None
        victim = kids[pick % len(kids)]
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        return victim

    # --- restarts (the same commands `dlba up` uses) ---------------------------------------
    def start_node(self, k: int) -> int:
        with self.lock:
            return processes.start(f"n{k}", node_command(self.config, f"n{k}"), self.state,
                                   self.ns(f"n{k}")).pid

    def start_backend(self, j: int) -> int:
        listen = f"198.18.1.{100 + j}:8080"
        with self.lock:
            return processes.start(f"b{j}", backend_command(f"b{j}", listen), self.state,
                                   self.ns(f"b{j}")).pid

    def start_redis(self) -> int:
        with self.lock:
            return processes.start("redis", redis_command(StatePaths(self.state)), self.state,
                                   self.ns("redis")).pid

    def link(self, k: int, up: bool) -> None:
        with IPRoute(netns=self.ns(f"n{k}")) as ipr:
            idx = ipr.link_lookup(ifname="front")[0]
            ipr.link("set", index=idx, state="up" if up else "down")

    # --- admin API, called from inside the client namespace ---------------------------------
    def admin(self, k: int, path: str, timeout: float = 0.5) -> Any:
        req = urllib.request.Request(f"http://{node_front_address(k)}:{ADMIN_PORT}{path}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def try_admin(self, k: int, path: str, timeout: float = 0.5) -> Any:
        try:
            return self.admin(k, path, timeout)
        except (OSError, ValueError):
            return None


class Monitor:
    """Polls, from the client namespace, every node's role (0.5 s) and the scheduler's client
    table (on each new version), and samples the nodes' memory and descriptors (2 s)."""

    def __init__(self, arr: ArrayControl, t0: float) -> None:
        self.arr, self.t0 = arr, t0
        self.roles: list[dict[str, Any]] = []  # changes only: {"t", "roles": {"n1": ...}}
        self.tables: list[dict[str, Any]] = []  # {"t", "version", "assignments"}
        # {"t", "node", "pid", "rss_kb", "fds", "socket_fds", "conn_fds", "client_conns", ...}
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._poll_in_client, daemon=True),
                        threading.Thread(target=self._sample, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def scheduler(self) -> int | None:
        if not self.roles:
            return None
        for name, role in self.roles[-1]["roles"].items():
            if role == "scheduler":
                return int(name[1:])
        return None

    def _poll_in_client(self) -> None:
        processes.run_in_netns(self.arr.client_ns, self._poll)

    def _poll(self) -> None:
        last_version = None
        while not self.stop.is_set():
            t = time.monotonic()
            roles: dict[str, str | None] = {}
            for k in range(1, self.arr.nodes + 1):
                st = self.arr.try_admin(k, "/status", 0.4)
                roles[f"n{k}"] = st.get("role") if isinstance(st, dict) else None
            if not self.roles or self.roles[-1]["roles"] != roles:
                self.roles.append({"t": self.now(), "roles": roles})
            sched = [int(n[1:]) for n, r in roles.items() if r == "scheduler"]
            if len(sched) == 1:
                table = self.arr.try_admin(sched[0], "/table", 1.0)
                if isinstance(table, dict) and table.get("version") != last_version:
                    last_version = table.get("version")
                    self.tables.append({"t": self.now(), "version": last_version,
                                        "assignments": table.get("assignments", [])})
            self.stop.wait(max(0.0, 0.5 - (time.monotonic() - t)))

    def _sample(self) -> None:
        while not self.stop.is_set():
            for k in range(1, self.arr.nodes + 1):
                pid = self.arr.live_pid(f"n{k}")
                if pid is None:
                    continue
                t = self.now()
                self.samples.append({"t": t, "node": f"n{k}", "pid": pid, **node_sample(pid)})
            self.stop.wait(2.0)
