"""`dlba up` supervises its nodes as systemd's `Restart=always` or a compose restart policy does.

A node whose main process has died (a crash, an OOM kill, `kill -9`) is started again with the
command and namespace `dlba up` recorded for it, after a backoff (0.5 s, doubling up to 30 s;
back to 0.5 s once it has stayed up for 30 s), and its `pids/<node>.pid` is rewritten. What the
dead node left in its namespace (orphaned proxy workers still holding its ports) is stopped
first, by PID. The restarted node rejoins as a server: a starting node follows the scheduler
its peers name, the election never preempts.

`dlba up` runs the loop itself while it waits for Ctrl-C; with `--detach` it starts it as a
process of its own (the hidden `dlba _supervise --state DIR`), recorded as
`pids/_supervisor.pid`, so `dlba down` stops it before the nodes.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlba.local_array import netns_builder, processes, running

events = logging.getLogger("dlba.event")

SUPERVISOR = "_supervisor"  # pid file name; a leading "_" keeps it apart from node names
POLL_S = 0.2
BASE_S = 0.5
CAP_S = 30.0
STABLE_S = 30.0


@dataclass
class _Track:
    failures: int = 0
    up_since: float | None = None
    due: float | None = None


@dataclass
class RestartPolicy:
    """When to start a dead node again (pure: the caller says what it saw, and when)."""

    base_s: float = BASE_S
    cap_s: float = CAP_S
    stable_s: float = STABLE_S
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def delay(self, failures: int) -> float:
        """The wait before restart number `failures` (1, 2, ...) of a run of quick deaths."""
        return float(min(self.cap_s, self.base_s * 2 ** max(0, min(failures - 1, 30))))

    def failures(self, name: str) -> int:
        return self._track(name).failures

    def seen_alive(self, name: str, now: float) -> None:
        t = self._track(name)
        t.due = None
        if t.up_since is None:
            t.up_since = now
        elif now - t.up_since >= self.stable_s:
            t.failures = 0  # it stayed up: the next death starts the backoff afresh

    def seen_dead(self, name: str, now: float) -> bool:
        """True when the node should be started now."""
        t = self._track(name)
        if t.due is None:
            if t.up_since is not None and now - t.up_since >= self.stable_s:
                t.failures = 0
            t.failures += 1
            t.up_since = None
            t.due = now + self.delay(t.failures)
        return now >= t.due

    def started(self, name: str, now: float) -> None:
        t = self._track(name)
        t.due = None
        t.up_since = now

    def _track(self, name: str) -> _Track:
        return self._tracks.setdefault(name, _Track())


@dataclass(frozen=True)
class Supervised:
    name: str
    argv: tuple[str, ...]
    netns: str | None


def record_of(node: Supervised) -> dict[str, Any]:
    """How `array.json` keeps one supervised node (read back by `supervised_nodes`)."""
    return {"name": node.name, "argv": list(node.argv), "netns": node.netns}


def supervised_nodes(info: dict[str, Any]) -> list[Supervised]:
    """The nodes `dlba up` recorded in `array.json`, with the commands it started them with."""
    return [Supervised(str(n["name"]), tuple(str(a) for a in n["argv"]),
                       str(n["netns"]) if n.get("netns") else None)
            for n in info.get("node_commands", [])]  # fmt: skip


def _pid_entry(root: Path, name: str) -> tuple[int, str] | None:
    try:
        pid_s, start_s, *_ = (root / "pids" / f"{name}.pid").read_text().split()
        return int(pid_s), start_s
    except (OSError, ValueError):
        return None


class Supervisor:
    """Restarts the recorded nodes of one state folder; `step` is one look at all of them."""

    def __init__(
        self,
        root: Path,
        nodes: list[Supervised],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.nodes = nodes
        self.policy = policy or RestartPolicy()
        self.clock = clock

    def step(self) -> bool:
        """Look once; False when there is nothing left to supervise (`dlba down` ran)."""
        if not (self.root / "array.json").exists():
            return False
        watched = 0
        for node in self.nodes:
            entry = _pid_entry(self.root, node.name)
            if entry is None:
                continue  # no pid file: stopped on purpose, not ours to bring back
            watched += 1
            now = self.clock()
            if processes.alive(*entry):
                self.policy.seen_alive(node.name, now)
            elif self.policy.seen_dead(node.name, now):
                self._restart(node, entry[0], now)
        return watched > 0

    def _restart(self, node: Supervised, old_pid: int, now: float) -> None:
        leftovers = netns_builder.pids_in(node.netns) if node.netns else []
        for pid in leftovers:
            processes.stop_pid(pid, None, deadline_s=1.0)
        failures = self.policy.failures(node.name)
        try:
            started = processes.start(node.name, node.argv, self.root, node.netns)
        except OSError as exc:
            events.error("event=node_restart_failed node=%s error=%r restarts=%d", node.name,
                         str(exc), failures)
            self.policy.started(node.name, now)  # counts as a quick death: the backoff grows
            self.policy.seen_dead(node.name, now)
            return
        self.policy.started(node.name, now)
        events.warning(
            "event=node_restarted node=%s old_pid=%d pid=%d restarts=%d backoff_s=%.1f "
            "leftovers_stopped=%d", node.name, old_pid, started.pid, failures,
            self.policy.delay(failures), len(leftovers),
        )

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(POLL_S):
            try:
                if not self.step():
                    return
            except Exception:  # a supervisor that dies supervises nothing: log and go on
                events.exception("event=supervisor_error")


def for_state(root: Path) -> Supervisor:
    info = running.read_record(root)
    if info is None:
        raise running.NoArrayRunning(f"no array record in {root}")
    return Supervisor(root, supervised_nodes(info))


def setup_logging() -> None:
    """One line per event on stderr, when nothing else configured logging."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")


def command(root: Path) -> list[str]:
    """How `dlba up --detach` starts the supervisor process (a hidden `dlba` command)."""
    return [sys.executable, "-m", "dlba", "_supervise", "--state", str(root)]


def supervise_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dlba _supervise")
    p.add_argument("--state", required=True)
    args = p.parse_args(argv)
    setup_logging()
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        # A flag, not an exit: a restart under way finishes and writes its pid file, which
        # `dlba down` then reads and stops.
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        sup = for_state(Path(args.state).resolve())
    except running.NoArrayRunning as exc:
        print(f"dlba supervisor: {exc}", file=sys.stderr)
        return 1
    events.info("event=supervisor_started nodes=%s", ",".join(n.name for n in sup.nodes))
    sup.run(stop)
    events.info("event=supervisor_stopped")
    return 0
