"""gunicorn's Arbiter as the master of a node's proxy workers, driven from the node's event loop.

gunicorn does what it does well: the signals (HUP, USR2, TTIN, TTOU), the worker bookkeeping
by age (`WORKERS`, `manage_workers`: spawn what is missing, stop the oldest extra), the
heartbeat file and its timeout (`murder_workers`: SIGABRT, then SIGKILL), re-exec of the master
with its listening sockets inherited (USR2), and the new master's promotion once the old one is
gone (`maybe_promote_master`). Three things differ, because the node's main process runs an
event loop and threads (admin API, failover agent, pyroute2), which a fork would copy in an
unknown state:
* a worker is a fresh interpreter (`spawn_worker` starts `python -m dlba.proxy.worker`, handing
  it its listening sockets, its heartbeat file and its control channel), not a fork;
* the loop is a task on the node's event loop (signals through `loop.add_signal_handler`), and
  nothing blocks it: gunicorn's reload and stop wait with `time.sleep`, ours do not wait;
* a child is reaped by its own pid, never `waitpid(-1)`, which would steal the exit status of
  the node's other subprocesses.
A replaced worker first stops accepting, then answers what it is serving (dlba/proxy/worker.py),
so SIGHUP and USR2 + QUIT fail no request. The master owns the listening sockets for its whole
life: a stopping worker closes only its copy, so nothing queued on them is ever reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gunicorn.arbiter import Arbiter

from dlba.config import Config
from dlba.proxy.gunicorn_app import NodeApplication
from dlba.proxy.sockets import listen_socket, proxy_addresses
from dlba.proxy.worker import DRAIN_S, worker_argv
from dlba.proxy.worker_pool import WorkerPool

events = logging.getLogger("dlba.event")
TICK_S = 0.25  # how often the master reaps, checks heartbeats and keeps the worker count
BOOT_S = 10.0  # a starting worker's heartbeat may come this much later than the timeout
READY_WAIT_S = 10.0  # old workers are retired when the new ones serve, or after this long
RESPAWN_MIN_S, RESPAWN_MAX_S = 0.5, 30.0  # backoff for workers that die before they serve
LISTEN_FDS = "DLBA_LISTEN_FDS"  # the sockets a re-exec'd master inherits, by name (JSON)
MASTER_PID = "GUNICORN_PID"  # gunicorn's: the old master of a re-exec'd one


def inherited_sockets() -> dict[str, socket.socket]:
    """The listening sockets an old master handed down (USR2), by name; read once."""
    raw = os.environ.pop(LISTEN_FDS, "")
    out: dict[str, socket.socket] = {}
    with contextlib.suppress(ValueError, TypeError, OSError):
        for name, fd in json.loads(raw or "{}").items():
            sock = socket.socket(fileno=int(fd))
            sock.setblocking(False)
            out[str(name)] = sock
    return out


def hand_over_pid_file(path: Path, old: int, new: int) -> bool:
    """Rewrite a pid file ("pid starttime ...", as `dlba up` keeps `pids/<node>.pid`) that
    names `old` so it names `new`, the rest of the line kept; False if it names another."""
    try:
        fields = path.read_text().split()
        if not fields or int(fields[0]) != old:
            return False
        stat = Path(f"/proc/{new}/stat").read_text()
        start = stat[stat.rindex(")") + 2:].split()[19]
        tmp = path.with_name(path.name + ".new")
        tmp.write_text(" ".join([str(new), start, *fields[2:]]) + "\n")
        tmp.replace(path)  # whoever reads it sees the old line or the new, never half of one
    except (OSError, ValueError, IndexError):
        return False
    return True


def listener_name(addr: object, tls: bool) -> str:
    return f"{'https' if tls else 'http'}://{addr}"


class NodeHooks:
    """What the arbiter asks of the node it runs in."""

    def __init__(self, reload: Callable[[], Awaitable[bool]], stop: Callable[[], None],
                 promoted: Callable[[], None], extra_fds: Callable[[], dict[str, int]]) -> None:
        self.reload = reload  # SIGHUP: re-read the config file (stage, commit); ok?
        self.stop = stop  # QUIT, TERM, INT: stop the node
        self.promoted = promoted  # a re-exec'd master whose old master is gone
        self.extra_fds = extra_fds  # more sockets a re-exec'd master inherits (admin)


class NodeArbiter(Arbiter):  # type: ignore[misc]
    def __init__(self, pool: WorkerPool, hooks: NodeHooks,
                 inherited: dict[str, socket.socket]) -> None:
        self.pool = pool
        self.hooks = hooks
        self.inherited = inherited
        self.sockets: dict[str, tuple[socket.socket, bool]] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.retiring: dict[int, Any] = {}  # pid -> worker asked to stop (SIGTERM)
        self.retired_at: dict[int, float] = {}
        self.reexec_proc: subprocess.Popen[bytes] | None = None
        self.replace_below = 0  # workers up to this age go once the newer ones serve
        self.respawn_at = 0.0
        self.respawn_backoff = RESPAWN_MIN_S
        self.replace_deadline = 0.0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.reloads: set[asyncio.Task[None]] = set()
        self.stopping = False
        timeout = pool.config.proxy.worker_timeout_s
        super().__init__(NodeApplication(pool.count, timeout))
        self.WORKERS: dict[int, Any] = {}  # gunicorn's is a class attribute: one per node here
        self.timeout = timeout
        pool.replacer = self.replace_workers

    # --- start, and the loop ------------------------------------------------------------------
    def start(self) -> None:
        self.pid = os.getpid()
        old = int(os.environ.get(MASTER_PID, "0") or 0)
        self.master_pid = old if old == os.getppid() else 0
        if self.master_pid:
            self.master_name = "Master.2"
        self.open_listeners(self.pool.config)
        for name in [n for n in self.inherited if n.startswith("http")]:
            self.inherited.pop(name).close()  # the old master's, no longer in the config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2):
            loop.add_signal_handler(sig, self.signal, sig, None)
        self.manage_workers()
        self.task = asyncio.ensure_future(self._loop())
        events.info("event=master_started node=%s pid=%d workers=%d upgrade_of=%s",
                    self.pool.name, self.pid, self.num_workers, self.master_pid or "-")

    def signal(self, sig: int, frame: object) -> None:
        self.SIG_QUEUE.put_nowait(sig)
        self.wake.set()

    async def _loop(self) -> None:
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self.wake.wait()
            self.wake.clear()
            for sig in self.wait_for_signals(timeout=0):
                name = self.SIG_NAMES.get(sig, str(sig))
                events.info("event=master_signal node=%s signal=%s", self.pool.name,
                            name.upper())
                handler = getattr(self, f"handle_{name}", None)
                if handler is not None:
                    handler()
            self.reap_workers()
            self.murder_workers()
            self.manage_workers()
            self.maybe_promote_master()

    def wait_for_signals(self, timeout: float = 0) -> list[int]:
        out: list[int] = []
        while not self.SIG_QUEUE.empty():
            out.append(self.SIG_QUEUE.get_nowait())
        return out

    # --- listening sockets: the master's for its whole life -----------------------------------
    def open_listeners(self, config: Config) -> None:
        """A socket for every proxy listener of `config` (inherited from an old master, kept,
        or new); sockets the config no longer names are closed by `close_unwanted`."""
        for addr, tls in proxy_addresses(config.node(self.pool.name)):
            name = listener_name(addr, tls)
            if name in self.sockets:
                continue
            sock = self.inherited.pop(name, None) or listen_socket(addr)
            sock.setblocking(False)
            self.sockets[name] = (sock, tls)
        self.LISTENERS = [s for s, _ in self.sockets.values()]

    def close_unwanted(self, config: Config) -> None:
        want = {listener_name(a, t) for a, t in proxy_addresses(config.node(self.pool.name))}
        for name in [n for n in self.sockets if n not in want]:
            self.sockets.pop(name)[0].close()
        self.LISTENERS = [s for s, _ in self.sockets.values()]

    # --- workers ------------------------------------------------------------------------------
    def spawn_worker(self) -> int:
        self.worker_age += 1
        worker = self.worker_class(self.worker_age, self.pid, self.LISTENERS, self.app,
                                   self.timeout / 2.0, self.cfg, self.log)
        # Its clock starts now, BOOT_S ahead: a fresh interpreter importing the proxy on a
        # loaded machine may take a while before its first heartbeat.
        boot = time.monotonic() + BOOT_S
        os.utime(worker.tmp.fileno(), (boot, boot))
        parent, child = socket.socketpair()
        # Only what the pool's config names: during a replacement the master still holds the
        # sockets the old config named, for the old workers.
        listeners = [(self.sockets[listener_name(a, tls)][0].fileno(), tls)
                     for a, tls in proxy_addresses(self.pool.config.node(self.pool.name))]
        argv = worker_argv(self.pool.config.path, self.pool.name, self.worker_age,
                           child.fileno(), worker.tmp.fileno(), listeners, self.timeout / 2.0,
                           logging.getLevelName(logging.getLogger().level))
        proc = subprocess.Popen(argv, pass_fds=[child.fileno(), worker.tmp.fileno(),
                                                *(fd for fd, _ in listeners)])
        child.close()
        worker.pid = proc.pid
        self.procs[proc.pid] = proc
        self.WORKERS[proc.pid] = worker
        self._stats["workers_spawned"] += 1
        self.pool.attach(proc.pid, self.worker_age, parent)
        return int(proc.pid)

    def spawn_workers(self) -> None:
        for _ in range(self.num_workers - len(self.WORKERS)):
            self.spawn_worker()

    def manage_workers(self) -> None:
        if self.stopping:
            return
        self.pool.count = self.num_workers
        if time.monotonic() < self.respawn_at:
            return  # workers die before they serve: not again at once (gunicorn would halt)
        if self.replace_below:
            self._replacing()
            return
        super().manage_workers()

    def _replacing(self) -> None:
        """A graceful replacement: the new workers first; the old ones stop accepting once
        every new one serves (has reported), so a slow boot leaves no gap."""
        new = [p for p, w in self.WORKERS.items() if w.age > self.replace_below]
        for _ in range(self.num_workers - len(new)):
            new.append(self.spawn_worker())
        ready = all(p in self.pool.reports for p in new)
        if ready or time.monotonic() > self.replace_deadline:
            for pid, w in list(self.WORKERS.items()):
                if w.age <= self.replace_below:
                    self.kill_worker(pid, signal.SIGTERM)
            self.replace_below = 0
            self.close_unwanted(self.pool.config)

    def replace_workers(self) -> None:
        """New workers on the pool's config, then the old ones retire (gunicorn's reload,
        without its blocking wait)."""
        self.open_listeners(self.pool.config)
        self.replace_below = self.worker_age
        self.replace_deadline = time.monotonic() + READY_WAIT_S
        self._replacing()

    def kill_worker(self, pid: int, sig: int) -> None:
        if sig == signal.SIGTERM and pid in self.WORKERS:
            # Asked to stop: it no longer counts as one of the serving workers.
            self.retiring[pid] = self.WORKERS.pop(pid)
            self.retired_at[pid] = time.monotonic()
            self.pool.retire(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def reap_workers(self) -> None:
        for pid, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[pid]
            retired = pid in self.retiring
            if not retired and pid not in self.pool.reports and not self.stopping:
                # Died before its first report: a config or code that cannot start.
                self.respawn_at = time.monotonic() + self.respawn_backoff
                self.respawn_backoff = min(self.respawn_backoff * 2, RESPAWN_MAX_S)
            elif pid in self.pool.reports:
                self.respawn_backoff = RESPAWN_MIN_S
            worker = self.WORKERS.pop(pid, None) or self.retiring.pop(pid, None)
            self.retired_at.pop(pid, None)
            if worker is not None:
                worker.tmp.close()
            self.pool.detach(pid)
            if retired:
                events.info("event=worker_retired node=%s pid=%d", self.pool.name, pid)
            elif worker is not None and worker.aborted:
                events.warning("event=worker_timeout node=%s pid=%d timeout_s=%s code=%s",
                               self.pool.name, pid, self.timeout, code)
            else:
                events.warning("event=worker_died node=%s pid=%d code=%s", self.pool.name,
                               pid, code)
        for pid, since in list(self.retired_at.items()):
            if time.monotonic() - since > DRAIN_S + 5:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # a retiring worker that hangs
        if self.reexec_proc is not None and self.reexec_proc.poll() is not None:
            # Backed out (TERM to it) or failed to start: this master goes on as it was.
            events.warning("event=new_master_exited node=%s pid=%d code=%s", self.pool.name,
                           self.reexec_proc.pid, self.reexec_proc.returncode)
            self.reexec_proc = None
            self.reexec_pid = 0

    # --- signals gunicorn does not handle the way a node needs --------------------------------
    def handle_hup(self) -> None:
        """Re-read the config file (the node's stage and commit), then replace every worker
        gracefully, as gunicorn does: new workers also run the code on disk. A refused file
        changes nothing."""
        async def reload() -> None:
            if not await self.hooks.reload():
                return
            proxy = self.pool.config.proxy
            self.num_workers = max(1, proxy.workers)  # as gunicorn's reload: the new count
            self.timeout = proxy.worker_timeout_s
            if not self.replace_below:
                self.replace_workers()

        task = asyncio.ensure_future(reload())
        self.reloads.add(task)
        task.add_done_callback(self.reloads.discard)

    def handle_ttin(self) -> None:
        super().handle_ttin()
        events.info("event=workers_changed node=%s count=%d", self.pool.name, self.num_workers)

    def handle_ttou(self) -> None:
        super().handle_ttou()
        events.info("event=workers_changed node=%s count=%d", self.pool.name, self.num_workers)

    def handle_term(self) -> None:
        self.hooks.stop()

    handle_int = handle_term
    handle_quit = handle_term  # graceful, as nginx's QUIT: old workers finish what they serve

    def reexec(self) -> None:
        """USR2: a new master on the code on disk, with this one's listening sockets (and the
        admin socket) inherited, as gunicorn's reexec; started by subprocess, not fork+exec
        from Python, because this process has threads."""
        if self.reexec_pid:
            events.warning("event=upgrade_refused node=%s reason=%r", self.pool.name,
                           "a new master runs already")
            return
        if self.master_pid:
            events.warning("event=upgrade_refused node=%s reason=%r", self.pool.name,
                           "this master's old master still runs")
            return
        fds = {name: s.fileno() for name, (s, _) in self.sockets.items()}
        fds.update(self.hooks.extra_fds())
        env = dict(os.environ)
        env[MASTER_PID] = str(self.pid)
        env[LISTEN_FDS] = json.dumps(fds)
        argv = [sys.executable, "-m", "dlba", *sys.argv[1:]]
        self.reexec_proc = subprocess.Popen(argv, pass_fds=list(fds.values()), env=env,
                                            cwd=self.START_CTX["cwd"])
        self.reexec_pid = self.reexec_proc.pid
        events.info("event=upgrade_started node=%s new_master=%d", self.pool.name,
                    self.reexec_pid)

    def maybe_promote_master(self) -> None:
        if self.master_pid and self.master_pid != os.getppid():
            self.master_pid = 0
            self.master_name = "Master"
            events.info("event=master_promoted node=%s pid=%d", self.pool.name, self.pid)
            self.hooks.promoted()

    # --- stop ---------------------------------------------------------------------------------
    async def stop_async(self, wait: bool = True) -> None:
        """Every worker stops accepting and finishes what it serves; `wait` False (a new
        master has taken over) leaves them to finish on their own, so the new master's control
        plane need not wait for the longest download."""
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
        for pid in list(self.WORKERS):
            self.kill_worker(pid, signal.SIGTERM)
        for s, _ in self.sockets.values():
            s.close()  # our copies: a new master keeps its own
        self.sockets.clear()
        deadline = time.monotonic() + DRAIN_S + 1
        while wait and self.procs and time.monotonic() < deadline:
            self.reap_workers()
            await asyncio.sleep(0.1)
        if wait:
            for pid in list(self.procs):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for proc in self.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, 5)
            self.reap_workers()
        self.pool.close()
