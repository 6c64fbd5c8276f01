"""`dlba up` (here `--detach`, whose supervisor process stays) restarts a node whose processes
died, as a restart policy would: new PID in its pid file, and it rejoins as a server under the
scheduler that was already there."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from tests.array.array_harness import (
    REPO,
    SUPERVISOR,
    Array,
    dlba,
    kill_node,
    restarted,
    running_array,
    wait_until,
)


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    with running_array(tmp_path_factory.mktemp("supervised"), nodes=3, backends=1) as arr:
        yield arr


def follows(arr: Array, k: int, scheduler: int) -> bool:
    st = arr.try_admin(k, "/status")
    return bool(st) and st["role"] == "server" and st["scheduler"] == f"n{scheduler}"


def test_killed_node_is_started_again_and_rejoins_as_server(array: Array) -> None:
    sched = wait_until(array.scheduler, 15, "a scheduler")
    k = next(k for k in range(1, array.nodes + 1) if k != sched)
    old = array.pid(f"n{k}")
    assert old in kill_node(array, k)
    new = restarted(array, k, old)
    wait_until(lambda: follows(array, k, sched), 30, f"n{k} to follow n{sched} again")
    assert array.scheduler() == sched
    log = (array.state / "logs" / f"{SUPERVISOR}.log").read_text()
    restarts = [line for line in log.splitlines()
                if f"event=node_restarted node=n{k} old_pid={old} pid={new} " in line]
    assert len(restarts) == 1, log
    assert "backoff_s=" in restarts[0]

    def live_again() -> bool:
        rows = array.admin(sched, "/summary")["nodes"]
        return not next(n for n in rows if n["name"] == f"n{k}")["failed"]

    wait_until(live_again, 30, f"the scheduler to count n{k} live again")


def test_foreground_up_restarts_a_killed_node_and_removes_all_on_sigterm(tmp_path: Path) -> None:
    # `dlba up` without --detach supervises from its own process, until a signal.
    prefix, state = f"lf{secrets.token_hex(2)}-", tmp_path / "state"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(tmp_path / "up.log", "wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "dlba", "up", "--prefix", prefix, "--state", str(state),
             "--nodes", "1", "--backends", "1"], stdout=out, stderr=subprocess.STDOUT, env=env,
            cwd=REPO)  # fmt: skip
    try:
        wait_until(lambda: "Ctrl-C stops" in (tmp_path / "up.log").read_text(), 60, "dlba up")
        arr = Array(prefix, state, 1, (state / "admin.token").read_text().strip())
        assert not (state / "pids" / f"{SUPERVISOR}.pid").exists()  # `up` itself supervises
        old = arr.pid("n1")
        assert old in kill_node(arr, 1)
        restarted(arr, 1, old)
        wait_until(lambda: arr.try_admin(1, "/status"), 30, "n1 to answer again")
        assert "event=node_restarted node=n1" in (tmp_path / "up.log").read_text()
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        assert not [n for n in netns.listnetns() if n.startswith(prefix)]
        assert not list((state / "pids").glob("*.pid"))
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        dlba("down", "--prefix", prefix, "--state", str(state))
