"""Live membership on a real namespace array: a node added by `dlba config push` enters
gradually (ownerless and idle buckets only) and serves; removed by push, it drains (its
buckets leave only as they fall idle) and is forgotten, all under a bounded load that sees
no failed request."""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from dlba.config.push import push_direct
from dlba.local_array import processes
from tests.array.array_harness import CLIENT_IP, VIP, Array, running_array, wait_until

pytestmark = pytest.mark.array


def config_with(arr: Array, name: str, fourth: bool, idle_s: int = 2) -> Path:
    """The array's config with buckets idle after `idle_s` (2: a drain ends within the test),
    and with n4 appended to [[nodes]] when `fourth`."""
    text = (arr.state / "cluster.toml").read_text()
    text = re.sub(r"bucket_idle_s = \d+", f"bucket_idle_s = {idle_s}", text)
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


class KeepAlive:
    """One client connection from a chosen port (so a chosen bucket), kept open."""

    def __init__(self, arr: Array, sport: int) -> None:
        self.arr = arr

        def connect() -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.settimeout(5.0)
            s.bind((CLIENT_IP, sport))
            s.connect((VIP, 80))
            return s

        self.sport = sport
        self.sock: socket.socket = arr.in_client(connect)

    def get(self) -> int:
        self.sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += self.sock.recv(4096)
        return int(head.split()[1])


def held_on(arr: Array, sched: int, name: str, k: int) -> KeepAlive:
    """A kept-open connection whose first request node `name` (number `k`) served. A bucket
    the table shows moving to it may be one the move guard keeps on its old node (a flow
    started there while the scheduler waited for its peers): then the next port is tried."""
    for _ in range(8):
        table = arr.admin(sched, "/table")["assignments"]
        sport = next(p for p in range(40000, 49000) if table[arr.bucket(p)] == name)
        hits = arr.admin(k, "/status")["nodes"][0]["hits"]
        conn = KeepAlive(arr, sport)
        assert conn.get() == 200
        served = False
        for _ in range(10):  # the node counts the request as it ends: a moment after we read it
            served = arr.admin(k, "/status")["nodes"][0]["hits"] > hits
            if served:
                break
            time.sleep(0.1)
        if served and arr.admin(sched, "/table")["assignments"][arr.bucket(sport)] == name:
            return conn
        conn.sock.close()
        time.sleep(1.0)  # the next rebalance settles
    raise AssertionError(f"no connection held on {name}")


def test_a_draining_node_survives_a_takeover_and_never_takes_over(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=3, backends=2, up_args=("--spare-nodes", "1")) as arr:
        sched = arr.scheduler()
        assert sched == 3
        four = config_with(arr, "four.toml", True, idle_s=60)
        three = config_with(arr, "three.toml", False, idle_s=60)
        from dlba.local_array.up import node_command

        n4 = processes.start("n4", node_command(four, "n4"), arr.state, arr.node_ns(4))
        conn: KeepAlive | None = None
        try:
            wait_until(lambda: arr.try_admin(4, "/status"), 20, "n4 to answer")
            push(arr, four, [1, 2, 3, 4])
            wait_until(lambda: owned(arr, sched, "n4") > 0, 20, "n4 to get buckets")
            conn = held_on(arr, sched, "n4", 4)
            sport = conn.sport
            push(arr, three, [1, 2, 3])  # n4 drains: its busy bucket stays (idle after 60 s)
            arr.link(3, up=False)
            try:
                wait_until(lambda: arr.scheduler([1, 2]) == 2, 15, "n2 to take over")
                # the new scheduler knows n4 still drains: its bucket is n4's, not cut
                assert arr.admin(2, "/table")["assignments"][arr.bucket(sport)] == "n4"
                assert conn.get() == 200
                names = [n["name"] for n in arr.admin(2, "/summary")["nodes"]]
                assert names == ["n1", "n2", "n3", "n4"], names
                # n4 (the highest address, no longer a member) never took over: it follows n2
                wait_until(lambda: arr.admin(4, "/status")["scheduler"] == "n2", 10,
                           "n4 to follow n2")
                assert arr.admin(4, "/status")["role"] == "server"
            finally:
                arr.link(3, up=True)
        finally:
            if conn is not None:
                conn.sock.close()
            processes.stop_pid(n4.pid, None)


def nodes_block(name: str, k: int) -> str:
    return (f'[[nodes]]\nname = "{name}"\naddress = "198.18.0.{10 + k}"\nweight = 100\n'
            'listen = ["198.18.0.100:80"]\nlisten_tls = ["198.18.0.100:443"]\n\n')


def without(text: str, name: str) -> str:
    """`text` without the [[nodes]] entry of `name` (it ends where the next table begins)."""
    out, n = re.subn(rf'\[\[nodes\]\]\nname = "{name}"\n.*?(?=^\[)', "", text,
                     flags=re.DOTALL | re.MULTILINE)
    assert n == 1, f"no [[nodes]] entry for {name}"
    return out


def test_a_middle_node_removed_by_push_drains_and_a_new_one_joins_in_the_middle(
        tmp_path: Path) -> None:
    """n2 of n1..n4 (not the scheduler) leaves by push under load: it keeps its table
    number while its buckets drain, then leaves the table; n3 and n4 keep theirs (no flow of
    theirs moves). Then n5, listed between n1 and n3, joins: it takes the next number."""
    with running_array(tmp_path, nodes=4, backends=2, up_args=("--spare-nodes", "1")) as arr:
        sched = arr.scheduler()
        assert sched == 4
        base = config_with(arr, "base.toml", False)
        no_n2 = arr.state / "no_n2.toml"
        no_n2.write_text(without(base.read_text(), "n2"))
        five = arr.state / "five.toml"
        five.write_text(no_n2.read_text().replace('[[nodes]]\nname = "n3"',
                                                  nodes_block("n5", 5) + '[[nodes]]\nname = "n3"',
                                                  1))
        from dlba.local_array.up import node_command

        n5: processes.Started | None = None
        try:
            with Load(arr) as load:
                time.sleep(1.0)
                push(arr, base, [1, 2, 3, 4])  # buckets idle after 2 s from here on
                assert owned(arr, sched, "n2") > 0
                before = arr.admin(sched, "/table")["assignments"]
                push(arr, no_n2, [1, 3, 4])
                wait_until(lambda: "n2" not in arr.admin(sched, "/table")["assignments"], 30,
                           "n2 to drain")
                after = arr.admin(sched, "/table")["assignments"]
                # only n2's buckets moved: the others' owners (numbers) held through the drain
                assert all(a == b for a, b in zip(before, after, strict=True) if a != "n2")
                wait_until(lambda: [n["name"] for n in arr.admin(sched, "/summary")["nodes"]]
                           == ["n1", "n3", "n4"], 10, "n2 to leave the scheduler's table")
                n5 = processes.start("n5", node_command(five, "n5"), arr.state, arr.node_ns(5))
                wait_until(lambda: arr.try_admin(5, "/status"), 20, "n5 to answer")
                push(arr, five, [1, 3, 4, 5])
                wait_until(lambda: owned(arr, sched, "n5") > 0, 20, "n5 to get buckets")
                hits = arr.admin(5, "/status")["nodes"][0]["hits"]
                wait_until(lambda: arr.admin(5, "/status")["nodes"][0]["hits"] > hits, 20,
                           "n5 to serve requests")
                rows = [n["name"] for n in arr.admin(sched, "/summary")["nodes"]]
                assert rows == ["n1", "n3", "n4", "n5"], rows
                # the followers' copies (what a takeover starts from) keep up: n3 is third in
                # [[nodes]] but keeps its table number, 3
                version = arr.admin(sched, "/table")["version"]
                wait_until(lambda: all(arr.admin(k, "/status")["table_version"] >= version
                                       for k in (1, 3, 5)), 5, "the followers' copies")
                time.sleep(1.0)
        finally:
            if n5 is not None:
                processes.stop_pid(n5.pid, None)
        assert load.failed == [], load.failed
        assert load.done > 20, load.done
        print(f"requests={load.done} failed={len(load.failed)}", file=sys.stderr)


def test_a_draining_middle_node_survives_a_takeover(tmp_path: Path) -> None:
    """n2 removed by push while a connection holds one of its buckets, then the scheduler
    (n4) is lost: the new scheduler keeps n2 draining in its own number, the flow is not cut."""
    with running_array(tmp_path, nodes=4, backends=2) as arr:
        assert arr.scheduler() == 4
        base = config_with(arr, "base.toml", False, idle_s=60)
        no_n2 = arr.state / "no_n2.toml"
        no_n2.write_text(without(base.read_text(), "n2"))
        push(arr, base, [1, 2, 3, 4])
        table = arr.admin(4, "/table")["assignments"]
        sport = next(p for p in range(40000, 49000) if table[arr.bucket(p)] == "n2")
        conn = KeepAlive(arr, sport)
        try:
            assert conn.get() == 200
            push(arr, no_n2, [1, 3, 4])  # n2 drains: its busy bucket stays (idle after 60 s)
            wait_until(lambda: all(o != "n2" or i == arr.bucket(sport) for i, o in
                                   enumerate(arr.admin(4, "/table")["assignments"])),
                       10, "n2's idle buckets to leave it")
            arr.link(4, up=False)
            try:
                wait_until(lambda: arr.scheduler([1, 3]) == 3, 15, "n3 to take over")
                assert arr.admin(3, "/table")["assignments"][arr.bucket(sport)] == "n2"
                assert conn.get() == 200
                names = [n["name"] for n in arr.admin(3, "/summary")["nodes"]]
                assert names == ["n1", "n2", "n3", "n4"], names
            finally:
                arr.link(4, up=True)
        finally:
            conn.sock.close()
