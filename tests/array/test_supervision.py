"""`dlba up` (here `--detach`, whose supervisor process stays) restarts a node whose processes
died, as a restart policy would: new PID in its pid file, and it rejoins as a server under the
scheduler that was already there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.array.array_harness import (
    SUPERVISOR,
    Array,
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
