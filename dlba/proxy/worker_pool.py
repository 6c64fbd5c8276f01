"""Proxy worker processes of one node (`[proxy] workers = N`), and their control channel.

The node process (the supervisor) keeps the admin API, the node agent and the back-end checks;
N worker processes run the proxy, each on its own SO_REUSEPORT sockets for the node's
listeners, so the kernel spreads connections evenly over them by hash (a socket shared by all
would let whichever worker wakes first take most of them). One JSON-lines stream per worker carries
state changes down (admin actions, health and agent results, new configs) and counters up
(every STATS_S), which the supervisor sums into the tables its admin API shows.

Workers are started as fresh interpreters (`python -m dlba.proxy.worker`), not forked: the
supervisor runs an event loop and threads, which a fork would copy in an unknown state; and a
worker that dies is replaced the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from dlba.config import Config
from dlba.proxy.node_stats import BackendCounters, LatencyHistogram, NodeStats
from dlba.proxy.proxy_health import ProxyHealth, WorkerView, workers_health
from dlba.scheduling.agent_check import AgentReport
from dlba.scheduling.learned_sessions import Learned, LearnedSessions, from_wire, to_wire
from dlba.scheduling.web_server_status_table import AdminAction, WebServerStatusTable

events = logging.getLogger("dlba.event")
STATS_S = 0.5
REFRESH_S = 0.25  # how long a status request waits for the workers' fresh reports
SESSIONS_S = 0.05  # a worker sends the session ids it learned this often
SESSIONS_BATCH = 1000  # learned session records per control-channel line
SUMMED_ROW_FIELDS = ("hits", "open_connections", "unable_to_connect", "cookie_groups",
                     "bytes_out", "reroutes")
NODE_COUNTERS = ("requests", "errors", "bad_requests", "bytes_out", "reroutes",
                 "connections_open", "connections_total", "tls_handshakes", "cookie_injected",
                 "cookie_rejected")


class BroadcastingTable(WebServerStatusTable):
    """The supervisor's table: every state change is also sent to the workers."""

    pool: WorkerPool | None = None

    def set_admin(self, backend_id: int, action: AdminAction) -> None:
        super().set_admin(backend_id, action)
        if self.pool is not None:
            self.pool.send({"op": "admin", "id": backend_id, "action": action})

    def apply_agent(self, backend_id: int, report: AgentReport) -> None:
        super().apply_agent(backend_id, report)
        if self.pool is not None:
            self.pool.send({"op": "agent", "id": backend_id, "report": asdict(report)})

    def set_health(self, backend_id: int, ok: bool, now: float) -> bool:
        changed = super().set_health(backend_id, ok, now)
        if self.pool is not None:
            self.pool.send({"op": "health", "id": backend_id, "ok": ok})
        return changed


def histogram_json(h: LatencyHistogram) -> dict[str, Any]:
    return {"counts": h.counts, "total": h.total, "count": h.count}


def stats_json(stats: NodeStats, table: WebServerStatusTable,
               learned: LearnedSessions | None = None, seq: int | None = None) -> dict[str, Any]:
    """What a worker reports: its counters and its view of each back end (`seq`: the number
    of the supervisor's request this report answers, if any)."""
    return {
        "op": "stats",
        "seq": seq,
        "learned": {"learned": learned.learned_total if learned else 0,
                    "selections": learned.selections if learned else 0},
        "node": {k: getattr(stats, k) for k in NODE_COUNTERS},
        "latency": histogram_json(stats.latency),
        "backends": {
            str(bid): {"requests": c.requests, "errors": c.errors, "bytes_out": c.bytes_out,
                       "latency": histogram_json(c.latency)}
            for bid, c in stats.by_backend.items()
        },
        "rows": [
            {"id": r.id, "marked_down": r.marked_down, "avg_response_ms": r.avg_response_ms,
             "consecutive_failures": r.consecutive_failures,
             **{f: getattr(r, f) for f in SUMMED_ROW_FIELDS}}
            for r in table.rows
        ],
    }


def _add_histogram(into: LatencyHistogram, d: dict[str, Any]) -> None:
    into.counts = [a + b for a, b in zip(into.counts, d["counts"], strict=True)]
    into.total += d["total"]
    into.count += d["count"]


class WorkerPool:
    def __init__(self, config: Config, name: str, stats: NodeStats, table: BroadcastingTable,
                 count: int) -> None:
        self.config = config
        self.name = name
        self.stats = stats
        self.table = table
        self.count = count
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.writers: list[asyncio.StreamWriter | None] = [None] * count
        # The latest report of every worker process, by pid, the exited ones included (their
        # gauges zeroed): counters summed over them never go backwards when a worker is
        # replaced.
        self.reports: dict[int, dict[str, Any]] = {}
        self.retiring: list[subprocess.Popen[bytes]] = []
        self.spawned_at = [0.0] * count
        self.last_report: dict[int, float] = {}  # pid -> monotonic time of its last report
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        # The node's learned session ids: what one worker learns goes to the others (and, by
        # dlba/cluster/session_sync.py, to the peers); a new worker starts from all of it.
        self.learned: LearnedSessions | None = None
        # Fresh reports on demand: each request for one carries a number, each worker answers
        # with it, so a report already under way when we asked is not taken for the answer.
        self.report_seq = 0
        self.answered: dict[int, int] = {}  # pid -> the last request number it answered
        self.report_arrived = asyncio.Event()
        table.pool = self

    async def start(self) -> None:
        for i in range(self.count):
            await self._spawn(i)
        self.tasks.append(asyncio.ensure_future(self._supervise()))

    async def _spawn(self, i: int) -> None:
        parent, child = socket.socketpair()
        argv = [sys.executable, "-m", "dlba.proxy.worker", "--config", str(self.config.path),
                "--name", self.name, "--index", str(i), "--control", str(child.fileno()),
                "--log-level", logging.getLevelName(logging.getLogger().level)]
        proc = subprocess.Popen(argv, pass_fds=[child.fileno()])
        child.close()
        self.procs[i] = proc
        self.spawned_at[i] = time.monotonic()
        reader, writer = await asyncio.open_connection(sock=parent)
        self.writers[i] = writer
        if self.config.text:
            self._write(i, {"op": "config", "text": self.config.text})
        self._replay_state(i)
        self._replay_sessions(i)
        self.tasks.append(asyncio.ensure_future(self._read(proc.pid, reader)))
        events.info("event=worker_started node=%s worker=%d pid=%d", self.name, i, proc.pid)

    def _replay_state(self, i: int) -> None:
        """A new worker starts from the config; bring it to the node's current state."""
        for row in self.table.rows:
            if not row.enabled:
                self._write(i, {"op": "admin", "id": row.id, "action": "disable"})
            if row.admin_drain:
                self._write(i, {"op": "admin", "id": row.id, "action": "drain"})
            if not row.health_ok:
                self._write(i, {"op": "health", "id": row.id, "ok": False})
            if row.agent_state is not None or row.agent_weight is not None or (
                row.agent_weight_pct != 100
            ):
                report = AgentReport(row.agent_state, row.agent_weight_pct, row.agent_weight)
                self._write(i, {"op": "agent", "id": row.id, "report": asdict(report)})

    def workers_json(self) -> list[dict[str, Any]]:
        return [
            {"index": i, "pid": p.pid if p is not None else None,
             "ready": p is not None and p.pid in self.reports}
            for i, p in enumerate(self.procs)
        ] + [{"index": None, "pid": p.pid, "ready": False, "retiring": True}
             for p in self.retiring]

    def health(self) -> ProxyHealth:
        """Whether the workers serve (see dlba/proxy/proxy_health.py)."""
        return workers_health([
            WorkerView(p.poll() is None, self.spawned_at[i], self.last_report.get(p.pid))
            for i, p in enumerate(self.procs) if p is not None
        ], time.monotonic())

    async def _read(self, pid: int, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            with contextlib.suppress(ValueError, KeyError):
                msg = json.loads(line)
                if msg.get("op") == "sessions":
                    self._worker_learned(pid, msg["items"])
                elif msg.get("op") == "stats":
                    self.reports[pid] = msg
                    self.last_report[pid] = time.monotonic()
                    if isinstance(msg.get("seq"), int):
                        self.answered[pid] = msg["seq"]
                    self._merge()
                    self.report_arrived.set()

    async def refresh(self, timeout: float = REFRESH_S) -> bool:
        """Ask every live worker for its counters now and wait (at most `timeout`) until they
        are merged: the periodic reports lag up to STATS_S behind traffic, and a status asked
        right after a request must count it. False if some worker did not answer in time (its
        last periodic report stands)."""
        self.report_seq += 1
        seq = self.report_seq
        live = [p.pid for p in self.procs if p is not None and p.poll() is None]
        self.send({"op": "report", "seq": seq})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(self.answered.get(pid, 0) < seq for pid in live):
            left = deadline - loop.time()
            if left <= 0:
                return False
            self.report_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.report_arrived.wait(), left)
        return True

    # --- learned session ids ------------------------------------------------------------------
    def _replay_sessions(self, i: int) -> None:
        if self.learned is None:
            return
        now = asyncio.get_running_loop().time()
        records = self.learned.snapshot(self.learned.max_entries)
        for k in range(0, len(records), SESSIONS_BATCH):
            self._write(i, {"op": "sessions",
                            "items": to_wire(records[k:k + SESSIONS_BATCH], now)})

    def _worker_learned(self, pid: int, items: object) -> None:
        if self.learned is None:
            return
        now = asyncio.get_running_loop().time()
        changed = self.learned.merge(from_wire(items, now, SESSIONS_BATCH), now, share=True)
        if changed:
            self.send_sessions(changed, skip_pid=pid)

    def send_sessions(self, records: list[Learned], skip_pid: int | None = None) -> None:
        """Hand learned session ids to the workers (but the one they came from)."""
        now = asyncio.get_running_loop().time()
        for k in range(0, len(records), SESSIONS_BATCH):
            msg = {"op": "sessions", "items": to_wire(records[k:k + SESSIONS_BATCH], now)}
            for i, p in enumerate(self.procs):
                if p is not None and p.pid != skip_pid:
                    self._write(i, msg)

    def learned_counts(self) -> tuple[int, int]:
        """Session ids the workers learned and requests they sent by one, summed."""
        learned = [rep.get("learned", {}) for rep in self.reports.values()]
        return (sum(d.get("learned", 0) for d in learned),
                sum(d.get("selections", 0) for d in learned))

    def _exited(self, pid: int) -> None:
        """Keep an exited worker's counters, drop what was open in it."""
        rep = self.reports.get(pid)
        if rep is not None:
            rep["node"]["connections_open"] = 0
            for r in rep["rows"]:
                r["open_connections"] = 0
            self._merge()

    async def _supervise(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.5)
            for old in list(self.retiring):
                if old.poll() is not None:
                    self.retiring.remove(old)
                    self._exited(old.pid)
                    events.info("event=worker_retired node=%s pid=%d", self.name, old.pid)
            for i, p in enumerate(self.procs):
                if p is not None and p.poll() is not None and not self.stopping:
                    events.warning("event=worker_died node=%s worker=%d pid=%d code=%s",
                                   self.name, i, p.pid, p.returncode)
                    self._exited(p.pid)
                    await self._spawn(i)

    async def replace_all(self, config: Config) -> None:
        """New listeners: start new workers on the new config first, then let the old ones
        close their listening sockets and finish their connections (graceful restart)."""
        self.config = config
        for i in range(self.count):
            old, writer = self.procs[i], self.writers[i]
            await self._spawn(i)
            if writer is not None:
                writer.close()  # the old worker sees its control channel end: it drains
            if old is not None:
                old.terminate()
                self.retiring.append(old)
        events.info("event=workers_replaced node=%s count=%d", self.name, self.count)

    def _write(self, i: int, msg: dict[str, Any]) -> None:
        w = self.writers[i]
        if w is not None and not w.is_closing():
            w.write(json.dumps(msg).encode() + b"\n")

    def send(self, msg: dict[str, Any]) -> None:
        for i in range(self.count):
            self._write(i, msg)

    def apply_config(self, config: Config) -> None:
        self.config = config
        self.send({"op": "config", "text": config.text})

    def _merge(self) -> None:
        """Sum the workers' latest reports into the supervisor's stats and table."""
        s = self.stats
        for k in NODE_COUNTERS:
            setattr(s, k, 0)
        s.latency = LatencyHistogram()
        s.by_backend = {}
        rows: dict[int, list[dict[str, Any]]] = {}
        for rep in self.reports.values():
            for k in NODE_COUNTERS:
                setattr(s, k, getattr(s, k) + rep["node"][k])
            _add_histogram(s.latency, rep["latency"])
            for bid, d in rep["backends"].items():
                c = s.by_backend.setdefault(int(bid), BackendCounters())
                c.requests += d["requests"]
                c.errors += d["errors"]
                c.bytes_out += d["bytes_out"]
                _add_histogram(c.latency, d["latency"])
            for r in rep["rows"]:
                rows.setdefault(r["id"], []).append(r)
        for row in self.table.rows:
            got = rows.get(row.id, [])
            if not got:
                continue
            for f in SUMMED_ROW_FIELDS:
                setattr(row, f, sum(r[f] for r in got))
            hits = sum(r["hits"] for r in got)
            row.avg_response_ms = (
                sum(r["avg_response_ms"] * r["hits"] for r in got) / hits if hits else 0.0
            )
            row.marked_down = all(r["marked_down"] for r in got)
            row.consecutive_failures = max(r["consecutive_failures"] for r in got)

    async def stop(self) -> None:
        self.stopping = True
        for t in self.tasks:
            t.cancel()
        procs = [p for p in self.procs if p is not None] + self.retiring
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            if p is not None:
                try:
                    await asyncio.to_thread(p.wait, 10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for w in self.writers:
            if w is not None:
                w.close()
        with contextlib.suppress(OSError):
            os.waitpid(-1, os.WNOHANG)
