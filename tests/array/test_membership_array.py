"""Live membership on a real namespace array: a node added by `dlba config push` enters
gradually (ownerless and idle buckets only) and serves; removed by push, it drains (its
buckets leave only as they fall idle) and is forgotten, all under a bounded load that sees
no failed request."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import pytest

from dlba.config.push import push_direct
from dlba.local_array import processes
from tests.array.array_harness import Array, running_array, wait_until

pytestmark = pytest.mark.array


def config_with(arr: Array, name: str, fourth: bool) -> Path:
    """The array's config with buckets idle after 2 s (so a drain ends within the test), and
    with n4 appended to [[nodes]] when `fourth`."""
    text = (arr.state / "cluster.toml").read_text()
    text = re.sub(r"bucket_idle_s = \d+", "bucket_idle_s = 2", text)
    if fourth:
        n4 = ('[[nodes]]\nname = "n4"\naddress = "198.18.0.14"\nweight = 100\n'
              'listen = ["198.18.0.100:80"]\nlisten_tls = ["198.18.0.100:443"]\n\n')
        text = text.replace("[tls]", n4 + "[tls]", 1)
    path = arr.state / name
    path.write_text(text)
    return path


def push(arr: Array, path: Path, nodes: list[int]) -> None:
    urls = [f"http://{arr.node_address(k)}:9000" for k in nodes]
    arr.in_client(lambda: push_direct(urls, arr.token, path.read_text()))


class Load:
    """One request at a time, each on a new connection (a new client port: a new bucket)."""

    def __init__(self, arr: Array) -> None:
        self.arr = arr
        self.done = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status, _ = self.arr.request("/whoami", timeout=5.0)
                if status != 200:
                    self.failed.append(f"status {status}")
            except OSError as e:
                self.failed.append(repr(e))
            self.done += 1
            time.sleep(0.05)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def owned(arr: Array, sched: int, name: str) -> int:
    return sum(o == name for o in arr.admin(sched, "/table")["assignments"])


def test_node_added_and_removed_by_push_under_load(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=3, backends=2, up_args=("--spare-nodes", "1")) as arr:
        sched = arr.scheduler()
        assert sched is not None
        four, three = config_with(arr, "four.toml", True), config_with(arr, "three.toml", False)
        from dlba.local_array.up import node_command

        n4 = processes.start("n4", node_command(four, "n4"), arr.state, arr.node_ns(4))
        try:
            wait_until(lambda: arr.try_admin(4, "/status"), 20, "n4 to answer")
            with Load(arr) as load:
                time.sleep(1.0)
                push(arr, four, [1, 2, 3, 4])
                wait_until(lambda: owned(arr, sched, "n4") > 0, 20, "n4 to get buckets")
                before = arr.admin(4, "/status")["nodes"][0]["hits"]
                wait_until(lambda: arr.admin(4, "/status")["nodes"][0]["hits"] > before, 20,
                           "n4 to serve requests")
                assert arr.admin(sched, "/status")["config_version"] == 2
                # removed: it drains (weight 0, idle buckets leave), then is forgotten
                push(arr, three, [1, 2, 3])
                wait_until(lambda: "n4" not in arr.admin(sched, "/table")["assignments"], 30,
                           "n4 to drain")
                names = [n["name"] for n in arr.admin(sched, "/summary")["nodes"]]
                wait_until(lambda: [n["name"] for n in arr.admin(sched, "/summary")["nodes"]]
                           == ["n1", "n2", "n3"], 10, f"n4 forgotten (have {names})")
                time.sleep(1.0)
            assert load.failed == [], load.failed
            assert load.done > 20, load.done
        finally:
            processes.stop_pid(n4.pid, None)
        print(f"requests={load.done} failed={len(load.failed)}", file=sys.stderr)
