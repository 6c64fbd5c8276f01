"""Processes of the local array: start inside a network namespace, record, stop by PID.

A process enters its namespace with `setns(CLONE_NEWNET)` between fork and exec rather than
through `ip netns exec`: the latter also unshares the mount namespace and remounts /sys,
which hides the host's bpffs from a scheduler that pins BPF maps there. Each started
process gets `<state>/pids/<name>.pid` ("pid starttime netns") and `<state>/logs/<name>.log`.
The start time guards `stop` against a PID the kernel has since given to someone else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(netns: str) -> str:
    return os.path.join(NETNS_RUN_DIR, netns)


def run_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a short-lived thread that has entered `netns`.

    setns(CLONE_NEWNET) changes only the calling thread, so the caller's thread never
    leaves its namespace; sockets made in `fn` stay in `netns` for their whole life, and
    /proc/sys/net opened there shows that namespace's sysctls.
    """
    box: dict[str, T] = {}
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["v"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    t = threading.Thread(target=body, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return box["v"]


def netns_socket(
    netns: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A socket living in `netns` (None: the caller's namespace)."""
    if netns is None:
        return socket.socket(family, kind)
    return run_in_netns(netns, lambda: socket.socket(family, kind))


def write_sysctls(netns: str, items: Sequence[tuple[str, str]]) -> None:
    """`sysctl -w` for each (name, value) inside `netns`, without spawning a process."""

    def apply() -> None:
        for name, value in items:
            path = "/proc/sys/" + name.replace(".", "/")
            with open(path, "w") as f:
                f.write(value)

    run_in_netns(netns, apply)


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    netns: str | None
    log: Path
    popen: subprocess.Popen[bytes]


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def start(
    name: str,
    argv: Sequence[str],
    state_dir: Path,
    netns: str | None = None,
    env: dict[str, str] | None = None,
) -> Started:
    """Start `argv` (in `netns` when given), logging to and recording under `state_dir`."""
    pids, logs = state_dir / "pids", state_dir / "logs"
    pids.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    nsfd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC) if netns else -1

    def enter() -> None:  # runs in the child between fork and exec
        if nsfd >= 0:
            _setns(nsfd)

    try:
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=enter,
                # Own session: Ctrl-C in the terminal reaches `dlba up` only, which then
                # stops everything in order instead of racing its children.
                start_new_session=True,
                env=env,
            )
    finally:
        if nsfd >= 0:
            os.close(nsfd)
    started = _start_time(popen.pid) or "0"
    (pids / f"{name}.pid").write_text(f"{popen.pid} {started} {netns or '-'}\n")
    return Started(name, popen.pid, netns, log_path, popen)


def alive(pid: int, start_time: str | None) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own children so they do not linger as zombies
    now = _start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def stop_pid(pid: int, start_time: str | None = None, deadline_s: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after `deadline_s`. False if it was not (or no longer) ours."""
    if not alive(pid, start_time):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not alive(pid, start_time):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 2.0
    while time.monotonic() < end and alive(pid, start_time):
        time.sleep(0.02)
    return True


def recorded(state_dir: Path) -> list[tuple[str, int, str]]:
    """(name, pid, start time) of every pid file under `state_dir`."""
    out = []
    for f in sorted((state_dir / "pids").glob("*.pid")):
        try:
            pid_s, start_s, *_ = f.read_text().split()
            out.append((f.stem, int(pid_s), start_s))
        except (OSError, ValueError):
            continue
    return out


def stop_recorded(
    state_dir: Path,
    deadline_s: float = 5.0,
    order: Sequence[str] = (),
    only: Collection[str] | None = None,
) -> list[str]:
    """Stop every process with a pid file in `state_dir` (names in `order` first; only those
    in `only` when given), remove the pid files, and return the names that were running."""
    entries = [e for e in recorded(state_dir) if only is None or e[0] in only]
    rank = {n: i for i, n in enumerate(order)}
    entries.sort(key=lambda e: rank.get(e[0], len(rank)))
    stopped = []
    for name, pid, start_time in entries:
        if stop_pid(pid, start_time, deadline_s):
            stopped.append(name)
        with contextlib.suppress(OSError):
            (state_dir / "pids" / f"{name}.pid").unlink()
    return stopped


def port_open(host: str, port: int, netns: str | None = None, timeout: float = 0.5) -> bool:
    with netns_socket(netns) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except OSError:
            return False
        return True


def http_status(
    host: str, port: int, path: str = "/", netns: str | None = None, timeout: float = 1.0
) -> int | None:
    """Status code of a plain HTTP/1.0 GET made from inside `netns`, or None."""
    with netns_socket(netns) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            head = s.recv(64)
        except OSError:
            return None
    parts = head.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def wait_until(
    check: Callable[[], bool],
    deadline_s: float,
    what: str,
    watch: Sequence[Started] = (),
    interval: float = 0.1,
) -> None:
    """Poll `check` until true; TimeoutError after `deadline_s`, RuntimeError as soon as a
    watched process has exited (its log tail in the message), so a crash reports fast."""
    end = time.monotonic() + deadline_s
    while True:
        if check():
            return
        for p in watch:
            if p.popen.poll() is not None:
                raise RuntimeError(
                    f"{p.name} exited with {p.popen.returncode} while waiting for {what}; "
                    f"log {p.log}:\n{log_tail(p.log)}"
                )
        if time.monotonic() >= end:
            raise TimeoutError(f"timed out after {deadline_s:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_for_port(
    host: str,
    port: int,
    netns: str | None = None,
    deadline_s: float = 15.0,
    watch: Sequence[Started] = (),
) -> None:
    where = f" in {netns}" if netns else ""
    wait_until(lambda: port_open(host, port, netns), deadline_s, f"{host}:{port}{where}", watch)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
