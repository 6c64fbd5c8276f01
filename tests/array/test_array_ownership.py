"""Commands act only on the array their state folder records: `dlba down` of a folder that
holds no array (or only a copy of another's record) removes nothing of a running array, and
`dlba status` / `dlba config push` with no array running say so and send nothing."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from dlba.local_array import processes
from tests.array.array_harness import REPO, Array, dlba, running_array


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    with running_array(tmp_path_factory.mktemp("owned"), nodes=2, backends=1) as arr:
        yield arr


def _still_running(arr: Array) -> None:
    assert arr.scheduler() is not None
    assert arr.client_ns in netns.listnetns()
    assert all(processes.alive(pid, st) for _, pid, st in processes.recorded(arr.state))


def test_down_of_an_empty_folder_removes_nothing(array: Array, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # Even naming the running array's prefix: the folder does not own it.
    for extra in ([], ["--prefix", array.prefix]):
        res = dlba("down", "--state", str(empty), *extra)
        assert res.returncode == 0, res.stderr
        assert "nothing to remove" in res.stdout
    _still_running(array)


def test_down_of_a_copied_record_removes_nothing(array: Array, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(array.state / "array.json", copy / "array.json")  # names the same prefix
    res = dlba("down", "--state", str(copy))
    assert res.returncode == 0, res.stderr
    assert "nothing to remove" in res.stdout and str(array.state) in res.stdout
    _still_running(array)


@pytest.fixture
def probe_ns() -> Iterator[str]:
    """A fresh namespace whose only way out is an interface carrying the default route:
    its tx counter shows whether a command sent anything toward the array's addresses."""
    name = f"dlbat-probe-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        # No IPv6: its own chatter (router solicitations, MLD) would move the counter.
        processes.write_sysctls(name, [("net.ipv6.conf.all.disable_ipv6", "1"),
                                       ("net.ipv6.conf.default.disable_ipv6", "1")])
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            # A veth pair with both ends here: out0 carries the default route, out1 only
            # gives it a carrier. Any connect toward the array's addresses would send (an
            # ARP request or a SYN) out of out0.
            ipr.link("add", ifname="out0", kind="veth", peer="out1")
            ipr.link("set", index=ipr.link_lookup(ifname="out1")[0], state="up")
            idx = ipr.link_lookup(ifname="out0")[0]
            ipr.addr("add", index=idx, address="10.255.0.1", prefixlen=24)
            ipr.link("set", index=idx, state="up")
            ipr.route("add", dst="0.0.0.0/0", oif=idx)
        yield name
    finally:
        netns.remove(name)


def _tx_packets(ns: str) -> int:
    with IPRoute(netns=ns) as ipr:
        idx = ipr.link_lookup(ifname="out0")[0]
        return int(ipr.get_links(idx)[0].get_attr("IFLA_STATS64")["tx_packets"])


def _dlba_in(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return processes.run_in_netns(ns, lambda: dlba(*args, timeout=60))


def _left_by_down(array: Array, tmp_path: Path) -> Path:
    """A state folder as `dlba down` leaves it: config, token and certs, no record, no pids."""
    stale = tmp_path / "stale"
    stale.mkdir()
    for name in ("cluster.toml", "admin.token"):
        shutil.copy(array.state / name, stale / name)
    shutil.copytree(array.state / "certs", stale / "certs")
    return stale


@pytest.mark.parametrize("folder", ["empty", "left_by_down"])
def test_status_without_an_array_says_so_and_sends_nothing(
    array: Array, tmp_path: Path, probe_ns: str, folder: str
) -> None:
    state = _left_by_down(array, tmp_path) if folder == "left_by_down" else tmp_path
    before = _tx_packets(probe_ns)
    for args in (["status", "--state", str(state)],
                 ["status", "--json", "--state", str(state)],
                 ["config", "push", str(array.state / "cluster.toml"), "--state", str(state)]):
        res = _dlba_in(probe_ns, *args)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert res.stdout == ""
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "no array is running from" in lines[0], res.stderr
    assert _tx_packets(probe_ns) == before


def test_status_of_a_folder_whose_processes_died_says_so(array: Array, tmp_path: Path) -> None:
    dead = tmp_path / "dead"
    (dead / "pids").mkdir(parents=True)
    shutil.copy(array.state / "array.json", dead / "array.json")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, cwd=REPO)
    (dead / "pids" / "n1.pid").write_text(f"{gone.stdout.strip()} 1 {array.node_ns(1)}\n")
    res = dlba("status", "--state", str(dead))
    assert res.returncode == 1
    assert "no array is running from" in res.stderr and "exited" in res.stderr
