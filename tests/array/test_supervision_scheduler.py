"""The scheduler node's processes die (`kill -9`, its kernel alive): another node takes the
role, and the supervisor of `dlba up --detach` starts the dead one again, which rejoins as a
server and never takes the role back."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.array.array_harness import Array, kill_node, restarted, running_array, wait_until


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    with running_array(tmp_path_factory.mktemp("supervised_sched"), nodes=3, backends=1) as arr:
        yield arr


def test_killed_scheduler_comes_back_as_a_server(array: Array) -> None:
    sched = wait_until(array.scheduler, 15, "a scheduler")
    others = [k for k in range(1, array.nodes + 1) if k != sched]
    old = array.pid(f"n{sched}")
    assert old in kill_node(array, sched)
    successor = wait_until(lambda: array.scheduler(others), 30, "another node to take over")
    restarted(array, sched, old)

    def follows() -> bool:
        st = array.try_admin(sched, "/status")
        return bool(st) and st["role"] == "server" and st["scheduler"] == f"n{successor}"

    wait_until(follows, 30, f"n{sched} to follow n{successor}")
    # Never preempting: over several ping and sweep rounds the role stays where it went.
    for _ in range(10):
        time.sleep(0.3)
        assert array.scheduler() == successor
        st = array.try_admin(sched, "/status")
        assert st is None or st["role"] == "server"
