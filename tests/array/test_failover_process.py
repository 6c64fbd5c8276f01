"""Liveness is the service, not the kernel, on a real namespace array: the scheduler node's
processes die (or its proxy stops) while its kernel keeps answering; a new scheduler is elected,
every new connection to the VIP works again, one MAC answers ARP for the VIP; panic mode
survives the failover. Whether `dlba up` restarts the dead node does not matter here."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlba.local_array import config_gen
from dlba.local_array.topology import make_plan
from tests.array.array_harness import (
    CLIENT_IP,
    VIP,
    Array,
    dlba,
    running_array,
    supervision_paused,
    wait_until,
)
from tests.array.test_netns_builder import arp_replies


def children(pid: int) -> list[int]:
    """Direct children of `pid` (its proxy workers), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def kill_node(arr: Array, name: str) -> None:
    """kill -9 every dlba process of one node: its main process and its workers, by PID."""
    pid = arr.pid(name)
    for p in [pid, *children(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def owners(arr: Array, k: int) -> list[str]:
    return list(arr.admin(k, "/table")["assignments"])


def ports_of(arr: Array, table: list[str], count: int = 8) -> list[int]:
    """Source ports whose buckets belonged to each node (the dead one's included)."""
    picked: list[int] = []
    for node in ("n1", "n2", "n3"):
        picked += [p for p in range(42000, 44000) if table[arr.bucket(p)] == node][:count]
    return picked


def connects(arr: Array, sport: int) -> bool:
    try:
        return arr.request("/whoami", sport, timeout=1.0)[0] == 200
    except OSError:
        return False


def new_scheduler(arr: Array, dead: int) -> int:
    others = [k for k in range(1, arr.nodes + 1) if k != dead]
    found: int = wait_until(lambda: arr.scheduler(others), 10, "a new scheduler")
    return found


def assert_served_by_one(arr: Array, sched: int, ports: list[int]) -> None:
    """Every new connection works (bounded wait for the first), one MAC answers ARP."""
    wait_until(lambda: connects(arr, ports[-1]), 10, "the dead node's buckets to answer")
    failed = [p for p in ports if not connects(arr, p)]
    assert failed == [], f"new connections failed from ports {failed}"
    assert arp_replies(arr.client_ns, "eth0", CLIENT_IP, VIP) == {arr.front_mac(sched)}


@pytest.fixture
def array(tmp_path: Path) -> Iterator[Array]:
    with running_array(tmp_path, nodes=3, backends=2) as arr:
        yield arr


def test_kill_9_of_every_scheduler_process_fails_over(array: Array) -> None:
    sched = array.scheduler()
    assert sched == 3
    table = owners(array, sched)
    ports = ports_of(array, table)
    assert all(connects(array, p) for p in ports)
    with supervision_paused(array):  # n3 stays dead while the array's view is checked
        kill_node(array, f"n{sched}")  # the kernel lives on: it still answers ICMP
        new = new_scheduler(array, sched)
        assert new == 2  # the highest live address
        assert_served_by_one(array, new, ports)
        summary = wait_until(lambda: (s := array.admin(new, "/summary"))["nodes"][2]["failed"]
                             and s, 10, "n3 shown failed")
        assert summary["scheduler"] == "n2"
        # The operator's view names the live scheduler, not the dead one.
        status = dlba("status", "--json", "--state", str(array.state), timeout=30)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["scheduler"] == "n2"


def test_panic_mode_survives_a_failover(array: Array) -> None:
    assert array.admin(3, "/panic", method="POST")["panic"] is True
    kill_node(array, "n3")
    new = new_scheduler(array, 3)
    summary = array.admin(new, "/summary")
    assert summary["panic"] is True, summary
    # ... and it is the new scheduler's to clear
    assert array.admin(new, "/panic", method="DELETE")["panic"] is False
    assert array.admin(new, "/summary")["panic"] is False


def test_a_scheduler_whose_proxy_is_stopped_is_a_failed_node(tmp_path: Path) -> None:
    """Its admin API and heartbeat answer, its workers do not: peers elect another scheduler,
    it stands down, and the new scheduler's sweep shows it failed."""
    state = tmp_path / "state"
    state.mkdir()
    config = state / "workers.toml"
    config.write_text(config_gen.config_for_plan(make_plan(3, 2)) + "\n[proxy]\nworkers = 2\n")
    with running_array(tmp_path, nodes=3, backends=2, up_args=("--config", str(config))) as arr:
        assert arr.scheduler() == 3
        workers = children(arr.pid("n3"))
        assert len(workers) == 2, workers
        table = owners(arr, 3)
        ports = ports_of(arr, table)
        for w in workers:
            os.kill(w, signal.SIGSTOP)  # alive, holding its listening socket, never accepting
        try:
            new = new_scheduler(arr, 3)
            assert (arr.try_admin(3, "/status") or {}).get("proxy", {}).get("healthy") is False
            wait_until(lambda: arr.admin(new, "/summary")["nodes"][2]["failed"], 15,
                       "n3 shown failed by the sweep")
            assert_served_by_one(arr, new, ports)
            assert arr.admin(3, "/status")["role"] == "server"
        finally:
            for w in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w, signal.SIGCONT)
