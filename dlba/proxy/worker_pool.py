"""The node's control channel to its proxy worker processes (`[proxy] workers = N`).

The node's main process keeps the admin API, the node agent and the back-end checks, and is
the gunicorn master of its workers (dlba/proxy/arbiter.py: signals, worker bookkeeping,
timeouts, re-exec). Each worker (dlba/proxy/worker.py) accepts on the listening sockets the
master owns and hands down, so a worker that stops or a whole new master never closes a
socket that has connections queued. One JSON-lines stream per worker carries state changes
down (admin actions, health and agent results, new configs) and counters up (every STATS_S),
which the master sums into the tables its admin API shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
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
                 "cookie_rejected", "h2_connections", "h2_refused")


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
    """The node's side of its workers' control channels, one per worker process (by pid). The
    processes themselves are gunicorn's business (dlba/proxy/arbiter.py), which tells the pool
    when one starts (`attach`), is asked to stop (`retire`) and has exited (`detach`)."""

    def __init__(self, config: Config, name: str, stats: NodeStats, table: BroadcastingTable,
                 count: int) -> None:
        self.config = config
        self.name = name
        self.stats = stats
        self.table = table
        self.count = count
        self.writers: dict[int, asyncio.StreamWriter] = {}
        # Messages for a worker whose channel is still opening, in order.
        self.pending: dict[int, list[bytes]] = {}
        self.spawned_at: dict[int, float] = {}  # serving workers: pid -> monotonic start
        self.ages: dict[int, int] = {}  # pid -> gunicorn's worker age (its start order)
        self.retiring: dict[int, float] = {}  # pid -> monotonic time it was asked to stop
        # The latest report of every worker process, by pid, the exited ones included (their
        # gauges zeroed): counters summed over them never go backwards when a worker is
        # replaced.
        self.reports: dict[int, dict[str, Any]] = {}
        self.last_report: dict[int, float] = {}  # pid -> monotonic time of its last report
        self.tasks: dict[int, asyncio.Task[None]] = {}
        # Called to replace every worker with one on the pool's (new) config (the arbiter).
        self.replacer: Callable[[], None] | None = None
        # The node's learned session ids: what one worker learns goes to the others (and, by
        # dlba/cluster/session_sync.py, to the peers); a new worker starts from all of it.
        self.learned: LearnedSessions | None = None
        # Fresh reports on demand: each request for one carries a number, each worker answers
        # with it, so a report already under way when we asked is not taken for the answer.
        self.report_seq = 0
        self.answered: dict[int, int] = {}  # pid -> the last request number it answered
        self.report_arrived = asyncio.Event()
        table.pool = self

    # --- a worker's life, as the arbiter sees it ---------------------------------------------
    def attach(self, pid: int, age: int, channel: socket.socket) -> None:
        """A worker process started with the other end of `channel`: bring it to the node's
        config and state (it reads them before it serves), then read its reports."""
        self.spawned_at[pid] = time.monotonic()
        self.ages[pid] = age
        self.pending[pid] = []
        if self.config.text:
            self._write(pid, {"op": "config", "text": self.config.text})
        self._replay_state(pid)
        self._replay_sessions(pid)
        self.tasks[pid] = asyncio.ensure_future(self._open(pid, channel))
        events.info("event=worker_started node=%s age=%d pid=%d", self.name, age, pid)

    async def _open(self, pid: int, channel: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=channel)
        self.writers[pid] = writer
        for data in self.pending.pop(pid, []):
            writer.write(data)
        await self._read(pid, reader)

    def retire(self, pid: int) -> None:
        """The worker was asked to stop: it finishes its connections, then exits."""
        if self.spawned_at.pop(pid, None) is not None:
            self.retiring[pid] = time.monotonic()

    def detach(self, pid: int) -> None:
        """The worker exited: keep its counters, drop what was open in it."""
        self.spawned_at.pop(pid, None)
        self.retiring.pop(pid, None)
        self.ages.pop(pid, None)
        self.pending.pop(pid, None)
        w = self.writers.pop(pid, None)
        if w is not None:
            w.close()
        t = self.tasks.pop(pid, None)
        if t is not None:
            t.cancel()
        self._exited(pid)

    def _replay_state(self, pid: int) -> None:
        """A new worker starts from the config; bring it to the node's current state."""
        for row in self.table.rows:
            if not row.enabled:
                self._write(pid, {"op": "admin", "id": row.id, "action": "disable"})
            if row.admin_drain:
                self._write(pid, {"op": "admin", "id": row.id, "action": "drain"})
            if not row.health_ok:
                self._write(pid, {"op": "health", "id": row.id, "ok": False})
            if row.agent_state is not None or row.agent_weight is not None or (
                row.agent_weight_pct != 100
            ):
                report = AgentReport(row.agent_state, row.agent_weight_pct, row.agent_weight)
                self._write(pid, {"op": "agent", "id": row.id, "report": asdict(report)})

    def serving(self) -> list[int]:
        """Pids of the workers that take new connections, oldest first."""
        return sorted(self.spawned_at, key=lambda p: self.ages.get(p, 0))

    def workers_json(self) -> list[dict[str, Any]]:
        return [
            {"index": i, "pid": pid, "age": self.ages.get(pid), "ready": pid in self.reports}
            for i, pid in enumerate(self.serving())
        ] + [{"index": None, "pid": pid, "age": self.ages.get(pid), "ready": False,
              "retiring": True} for pid in self.retiring]

    def health(self) -> ProxyHealth:
        """Whether the workers serve (see dlba/proxy/proxy_health.py)."""
        return workers_health([
            WorkerView(True, self.spawned_at[pid], self.last_report.get(pid))
            for pid in self.serving()
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
        live = [*self.spawned_at, *self.retiring]
        self.send({"op": "report", "seq": seq})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(self.answered.get(pid, 0) < seq for pid in live
                  if pid in self.spawned_at or pid in self.retiring):
            left = deadline - loop.time()
            if left <= 0:
                return False
            self.report_arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.report_arrived.wait()
        return True

    # --- learned session ids ------------------------------------------------------------------
    def _replay_sessions(self, pid: int) -> None:
        if self.learned is None:
            return
        now = asyncio.get_running_loop().time()
        records = self.learned.snapshot(self.learned.max_entries)
        for k in range(0, len(records), SESSIONS_BATCH):
            self._write(pid, {"op": "sessions",
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
            for pid in [*self.writers, *self.pending]:
                if pid != skip_pid:
                    self._write(pid, msg)

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

    async def replace_all(self, config: Config) -> None:
        """New listeners or TLS: new workers on the new config first, then the old ones stop
        accepting and finish their connections (graceful restart, gunicorn's HUP)."""
        self.config = config
        if self.replacer is not None:
            self.replacer()
        events.info("event=workers_replaced node=%s count=%d", self.name, self.count)

    def _write(self, pid: int, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode() + b"\n"
        queued = self.pending.get(pid)
        if queued is not None:
            queued.append(data)
            return
        w = self.writers.get(pid)
        if w is not None and not w.is_closing():
            w.write(data)

    def send(self, msg: dict[str, Any]) -> None:
        for pid in [*self.writers, *self.pending]:
            self._write(pid, msg)

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

    def close(self) -> None:
        for pid in list(self.writers) + list(self.pending):
            self.detach(pid)
