"""The node's main process is the gunicorn master of its workers: SIGHUP reloads the config
and replaces the workers, USR2 + QUIT upgrades the node, TTIN/TTOU change the worker count, a
hung worker is replaced; under load of HTTP and TLS keepalive clients, no request fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

from tests.chromium_cdp import chromium
from tests.integration.master_harness import (
    Node,
    Tally,
    alive,
    children,
    cmdline,
    eventually,
    load,
    master_node,
)


def start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[19]


def no_failures(tallies: dict[str, Tally]) -> None:
    for name, t in tallies.items():
        assert t.failed == 0, (name, t.errors[:5])
        assert t.ok > 20, (name, t.ok)


def all_new(node: Node, before: set[int], n: int = 2) -> bool:
    ws = node.serving()
    pids = {w["pid"] for w in ws}
    return len(ws) == n and not pids & before and all(w["ready"] for w in ws) and not any(
        alive(p) for p in before)


async def test_sighup_reloads_config_and_replaces_workers_without_failing(
        tmp_path: Path) -> None:
    with master_node(tmp_path) as node:
        before = set(node.workers())
        async with load(node) as tallies:
            text = node.config.read_text().replace("[[backends]]\nid = 2",
                                                   "[[backends]]\nid = 2\nweight = 50")
            node.config.write_text(text)
            os.kill(node.master, signal.SIGHUP)
            await eventually("workers replaced", lambda: all_new(node, before))
            st = node.status()
            assert st["config_version"] == 2
            backends = st["backends"]
            assert isinstance(backends, list)
            assert [b["weight"] for b in backends] == [100, 50]
            # a bad file: every problem logged, the running config and workers kept
            node.config.write_text(text.replace(
                "worker_timeout_s = 2", "worker_timeout_s = 2\nbogus = 1\nheader_timeout_s = -1"))
            now = set(node.workers())
            os.kill(node.master, signal.SIGHUP)
            await eventually("refusal logged",
                             lambda: "config_reload_refused" in node.log.read_text())
            await asyncio.sleep(0.5)
            assert node.status()["config_version"] == 2
            assert set(node.workers()) == now
        no_failures(tallies)
        assert len(children(node.master)) == 2
        refusals = [line for line in node.log.read_text().splitlines()
                    if "config_reload_refused" in line]
        assert any("bogus" in line for line in refusals), refusals
        assert any("header_timeout_s" in line for line in refusals), refusals


async def test_usr2_then_quit_upgrades_the_node_without_failing(tmp_path: Path) -> None:
    # systemd's notify socket (Type=notify, NotifyAccess=all): the unit follows the new master
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    with notify, master_node(tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify")}) as node:
        old_master = node.master
        # as `dlba up` keeps it: its supervisor must follow the new master, not restart the node
        pid_file = tmp_path / "pids" / "n1.pid"
        pid_file.parent.mkdir()
        pid_file.write_text(f"{old_master} {start_time(old_master)} dlba-n1\n")
        old_workers = set(node.workers())
        async with load(node) as tallies:
            os.kill(old_master, signal.SIGUSR2)

            def new_master() -> int | None:
                ms = [p for p in children(old_master)
                      if " node " in cmdline(p) and "dlba.proxy.worker" not in cmdline(p)]
                return ms[0] if ms else None

            await eventually("a new master", lambda: new_master() is not None)
            master = new_master()
            assert master is not None
            node.seen.add(master)
            await eventually("its workers", lambda: len(node.workers(master)) == 2)
            # both masters' workers accept on the same sockets now; the old one retires
            await asyncio.sleep(1.0)
            os.kill(old_master, signal.SIGQUIT)
            await eventually("old master gone", lambda: not alive(old_master))
            node.master = master
            await eventually("new master serves the admin API",
                             lambda: {w["pid"] for w in node.serving()}
                             == set(node.workers(master)))
        no_failures(tallies)
        await eventually("old workers finished", lambda: not any(alive(p) for p in old_workers))
        assert node.status()["node"] == "n1"
        said = []
        with contextlib.suppress(BlockingIOError):
            while True:
                said.append(notify.recv(4096).decode())
        assert said[0] == f"READY=1\nMAINPID={old_master}", said
        assert f"MAINPID={master}" in said, said  # from the old master, before it exits
        assert pid_file.read_text() == f"{master} {start_time(master)} dlba-n1\n"
        assert said[-1] == f"READY=1\nMAINPID={master}", said
        # the new master is a master in full: it can be upgraded again
        assert len(node.workers(master)) == 2


async def test_ttin_ttou_change_the_worker_count(tmp_path: Path) -> None:
    with master_node(tmp_path) as node:
        async with load(node) as tallies:
            os.kill(node.master, signal.SIGTTIN)
            await eventually("three workers", lambda: len(node.serving()) == 3 and all(
                w["ready"] for w in node.serving()) and len(node.workers()) == 3)
            # one at a time: the kernel merges a signal sent again before it is delivered
            os.kill(node.master, signal.SIGTTOU)
            await eventually("two workers", lambda: len(node.serving()) == 2)
            os.kill(node.master, signal.SIGTTOU)
            await eventually("one worker", lambda: len(node.serving()) == 1
                             and len(node.workers()) == 1)
            os.kill(node.master, signal.SIGTTOU)  # never below one
            await asyncio.sleep(0.5)
            assert len(node.serving()) == 1
        no_failures(tallies)


async def test_hung_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    with master_node(tmp_path) as node:
        hung, other = node.workers()
        os.kill(hung, signal.SIGSTOP)  # its event loop stops: no more heartbeats
        await eventually("hung worker replaced", lambda: not alive(hung) and len(
            node.serving()) == 2 and all(w["ready"] for w in node.serving()), timeout=12)
        pids = {w["pid"] for w in node.serving()}
        assert other in pids and hung not in pids
        assert "event=worker_timeout" in node.log.read_text()
        async with load(node) as tallies:
            await asyncio.sleep(0.5)
        no_failures(tallies)


async def test_sighup_reloads_a_single_process_node(tmp_path: Path) -> None:
    """`[proxy] workers = 1`: no master and workers, but SIGHUP still re-reads the file."""
    with master_node(tmp_path, workers=1) as node:
        async with load(node) as tallies:
            text = node.config.read_text()
            node.config.write_text(text.replace("[[backends]]\nid = 2",
                                                "[[backends]]\nid = 2\nweight = 50"))
            os.kill(node.master, signal.SIGHUP)
            await eventually("reloaded", lambda: node.status()["config_version"] == 2)
            node.config.write_text(text.replace("workers = 1", "workers = 0"))
            os.kill(node.master, signal.SIGHUP)
            await eventually("refusal logged",
                             lambda: "config_reload_refused" in node.log.read_text())
            assert node.status()["config_version"] == 2
        no_failures(tallies)
        assert children(node.master) == []


async def test_status_and_dashboard_count_workers(tmp_path: Path) -> None:
    with master_node(tmp_path) as node:
        async with chromium(tmp_path) as b:
            await b.goto(f"http://127.0.0.1:{node.admin}/?token={node.token}")
            await b.wait("document.getElementById('workers').textContent === '2'")
            os.kill(node.master, signal.SIGTTIN)
            await eventually("three in /status", lambda: len(node.serving()) == 3)
            await b.wait("document.getElementById('workers').textContent === '3'")
            os.kill(node.master, signal.SIGTTOU)
            await eventually("two in /status", lambda: len(node.serving()) == 2)
            await b.wait("document.getElementById('workers').textContent.startsWith('2')")


async def test_usr2_backed_out_with_term_to_the_new_master(tmp_path: Path) -> None:
    """An upgrade can be backed out before QUIT: TERM to the new master; the old one goes on
    serving (its control plane never stopped) and can be upgraded again."""
    with master_node(tmp_path) as node:
        workers = set(node.workers())

        def new_master() -> int | None:
            ms = [p for p in children(node.master)
                  if " node " in cmdline(p) and "dlba.proxy.worker" not in cmdline(p)]
            node.seen.update(ms)
            return ms[0] if ms else None

        async with load(node) as tallies:
            os.kill(node.master, signal.SIGUSR2)
            await eventually("a new master", lambda: new_master() is not None)
            master = new_master()
            assert master is not None
            await eventually("its workers", lambda: len(node.workers(master)) == 2)
            os.kill(master, signal.SIGTERM)
            await eventually("new master gone", lambda: not alive(master))
            await eventually("backed out", lambda: "event=new_master_exited"
                             in node.log.read_text())
            assert set(node.workers()) == workers
            assert {w["pid"] for w in node.serving()} == workers
            os.kill(node.master, signal.SIGUSR2)  # and again
            await eventually("another new master", lambda: new_master() not in (None, master))
        no_failures(tallies)
