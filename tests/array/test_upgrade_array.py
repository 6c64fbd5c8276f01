"""USR2 + QUIT on a node of a real namespace array (`dlba up`, `[proxy] workers = 2`): the new
master takes over the node's pid file, so the supervisor follows it instead of restarting the
node; it takes the control plane (admin API, agent) once the old master is gone, rejoins as a
server, and the node's buckets are served throughout."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from dlba.local_array import config_gen
from dlba.local_array.topology import make_plan
from tests.array.array_harness import running_array, wait_until
from tests.array.test_failover_process import children, connects, owners


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("which", ["server", "scheduler"])
def test_usr2_quit_upgrades_a_node_of_the_array(tmp_path: Path, which: str) -> None:
    """The scheduler's old master gives the role up when it stands down: a peer is elected
    (a planned failover) and the upgraded node rejoins as a server; never two schedulers."""
    state = tmp_path / "state"
    state.mkdir()
    config = state / "workers.toml"
    config.write_text(config_gen.config_for_plan(make_plan(3, 2)) + "\n[proxy]\nworkers = 2\n")
    with running_array(tmp_path, nodes=3, backends=2, up_args=("--config", str(config))) as arr:
        sched = arr.scheduler()
        assert sched is not None
        k = sched if which == "scheduler" else next(i for i in (1, 2, 3) if i != sched)
        name = f"n{k}"
        table = owners(arr, sched)
        ports = [p for p in range(42000, 44000) if table[arr.bucket(p)] == name][:6]
        assert ports
        wait_until(lambda: connects(arr, ports[0]), 10, "the node's buckets to answer")
        assert all(connects(arr, p) for p in ports)
        old = arr.pid(name)
        old_workers = set(children(old))
        assert len(old_workers) == 2

        os.kill(old, signal.SIGUSR2)

        def new_master() -> int | None:
            ms = [p for p in children(old) if " node " in cmdline(p)
                  and "dlba.proxy.worker" not in cmdline(p)]
            return ms[0] if ms else None

        new = wait_until(new_master, 15, "a new master")
        wait_until(lambda: len(children(new)) == 2, 15, "its workers")
        assert all(connects(arr, p) for p in ports)  # both masters' workers serve
        os.kill(old, signal.SIGQUIT)
        wait_until(lambda: arr.pid(name) == new, 10, "the pid file to name the new master")
        wait_until(lambda: (arr.try_admin(k, "/status") or {}).get("role") == "server", 15,
                   "the new master's admin API, as a server")
        if which == "scheduler":
            others = [i for i in (1, 2, 3) if i != k]
            sched = wait_until(lambda: arr.scheduler(others), 10, "a new scheduler")
            wait_until(lambda: connects(arr, ports[0]), 10, "the VIP to answer again")
        time.sleep(2)  # a few supervisor rounds: it must not start the node again
        assert arr.pid(name) == new
        new_workers = set(children(new))
        assert len(new_workers) == 2 and not new_workers & old_workers
        st = arr.admin(k, "/status")
        assert {w["pid"] for w in st["workers"]} == new_workers
        assert all(connects(arr, p) for p in ports)
        wait_until(lambda: not arr.admin(sched, "/summary")["nodes"][k - 1]["failed"], 10,
                   "the upgraded node shown up by the scheduler")
        assert arr.scheduler() == sched  # one scheduler, not the upgraded node again
