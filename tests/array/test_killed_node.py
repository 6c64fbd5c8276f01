"""On a real namespace array: a killed node's buckets move and no other bucket does, and
every client is still served. An array of its own: the kill leaves buckets busy on the other
nodes for bucket_idle_s, which other tests of the table must not inherit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.array.array_harness import (
    Array,
    running_array,
    stop_process,
    supervision_paused,
    wait_until,
)


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    with running_array(tmp_path_factory.mktemp("killed"), nodes=3, backends=2) as arr:
        yield arr


def settled_table(arr: Array) -> dict[str, Any]:
    """The table once no rebalance is in flight: the same version over more than two
    maintenance passes (1 s each), so the next version can only be the failure's."""
    def same_version_twice() -> dict[str, Any] | None:
        first = arr.admin(3, "/table")
        time.sleep(2.5)
        second = arr.admin(3, "/table")
        return second if second["version"] == first["version"] else None

    result: dict[str, Any] = wait_until(same_version_twice, 20, "the table to settle")
    return result


def test_killed_node_buckets_move_and_no_other(array: Array) -> None:
    before = settled_table(array)
    # The supervisor of `dlba up` would start n1 again, maybe before the sweep fails it:
    # this test is about the scheduler's answer to a node that stays dead.
    with supervision_paused(array):
        stop_process(array, "n1")
        after = wait_until(
            lambda: (t := array.admin(3, "/table"))["version"] != before["version"] and t, 15,
            "the sweep to fail n1",
        )
        summary = array.admin(3, "/summary")
        for sport in range(41000, 41012):  # every client still served while n1 is dead
            assert array.request("/whoami", sport)[0] == 200
    moved = 0
    for old, new in zip(before["assignments"], after["assignments"], strict=True):
        if old == "n1":
            assert new in ("n2", "n3")
            moved += 1
        else:
            assert new == old
    assert moved > 1000
    assert [n["failed"] for n in summary["nodes"]] == [True, False, False]
