"""A node with worker processes (the gunicorn master) as a real process tree, and strict HTTP
clients that count every failed request (test helper for tests/integration/test_node_master.py).

The clients never retry: a request that gets no complete response (a reset, an early close) is
a failure. They keep their connection alive and reconnect only when a response says
`Connection: close`, which is how a draining worker tells them to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.loopback import free_port, make_certs, write_config

REPO = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


@dataclass
class Node:
    master: int
    http: int
    https: int
    admin: int
    token: str
    ca: Path
    config: Path
    log: Path
    seen: set[int] = field(default_factory=set)  # every pid to stop at the end

    def status(self) -> dict[str, object]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}/status",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            result: dict[str, object] = json.loads(r.read())
            return result

    def serving(self) -> list[dict[str, object]]:
        ws = self.status()["workers"]
        assert isinstance(ws, list)
        return [w for w in ws if not w.get("retiring")]

    def workers(self, master: int | None = None) -> list[int]:
        pids = [p for p in children(master or self.master) if "dlba.proxy.worker" in cmdline(p)]
        self.seen.update(pids)
        return pids

    def client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def wait_until(what: str, check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


async def eventually(what: str, check: object, timeout: float = 10.0) -> None:
    """wait_until on the event loop (the load's clients keep running); `check` runs in a
    thread, since it may ask the admin API with urllib."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await asyncio.to_thread(check):
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.05)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def master_node(tmp: Path, workers: int = 2, extra: str = "",
                env: dict[str, str] | None = None) -> Iterator[Node]:
    """Two demo back ends and `dlba node` with `workers` workers; every process it started
    (old and new masters, their workers) is stopped by PID at the end."""
    certs = make_certs(tmp / "certs")
    bports = [free_port(), free_port()]
    hport, sport, aport = free_port(), free_port(), free_port()
    proxy = f"[proxy]\nworkers = {workers}\nworker_timeout_s = 2\n{extra}"
    cfg = write_config(tmp, certs, [(1, f"127.0.0.1:{bports[0]}"), (2, f"127.0.0.1:{bports[1]}")],
                       http_port=hport, https_port=sport, admin_port=aport, extra=proxy)
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    procs = [subprocess.Popen([sys.executable, "-m", "dlba", "demo-backend", "--name",
                               f"b{i + 1}", "--listen", f"127.0.0.1:{p}"], env=env,
                              stderr=subprocess.DEVNULL) for i, p in enumerate(bports)]
    log = tmp / "node.log"
    with log.open("w") as out:
        master = subprocess.Popen([sys.executable, "-m", "dlba", "node", "--config", str(cfg),
                                   "--name", "n1", "--log-level", "INFO"], env=env,
                                  stderr=out, cwd=tmp)
    node = Node(master.pid, hport, sport, aport, certs.admin_token.read_text().strip(),
                certs.ca_cert, cfg, log, {master.pid})
    try:
        for port in (*bports, hport, sport, aport):
            wait_until(f"port {port}", lambda port=port: _answers(port))
        wait_until("workers ready", lambda: len(node.serving()) == (
            workers if workers > 1 else 0) and all(w["ready"] for w in node.serving()))
        node.workers()
        yield node
    finally:
        for pid in list(node.seen):
            node.seen.update(children(pid))
        for pid in node.seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a test may have stopped one
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in node.seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in node.seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            master.wait(5)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)


async def _response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
               if k}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() == "close", body


async def keepalive_client(port: int, stop: asyncio.Event, tally: Tally,
                           tls: ssl.SSLContext | None = None, new_each: bool = False) -> None:
    """GET /whoami in a loop on one kept-alive connection (a new one each time with
    `new_each`), until `stop`; never retries."""
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while not stop.is_set():
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None)
                tally.reconnects += 1
            assert reader is not None
            writer.write(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n"
                         + (b"Connection: close\r\n" if new_each else b"") + b"\r\n")
            status, close, body = await asyncio.wait_for(_response(reader), 10)
            if status != 200 or body not in (b"b1", b"b2"):
                raise AssertionError(f"status {status} body {body[:40]!r}")
            tally.ok += 1
            if close or new_each:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, TimeoutError, AssertionError,
                ssl.SSLError, ValueError) as e:
            tally.failed += 1
            tally.errors.append(repr(e))
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


@contextlib.asynccontextmanager
async def load(node: Node) -> AsyncIterator[dict[str, Tally]]:
    """HTTP and TLS keepalive clients and a new-connection client, while the body runs."""
    stop = asyncio.Event()
    tallies = {"http": Tally(), "https": Tally(), "new": Tally()}
    tasks = [
        asyncio.ensure_future(keepalive_client(node.http, stop, tallies["http"])),
        asyncio.ensure_future(keepalive_client(node.https, stop, tallies["https"],
                                               node.client_ssl())),
        asyncio.ensure_future(keepalive_client(node.http, stop, tallies["new"], new_each=True)),
    ]
    try:
        await asyncio.sleep(0.3)
        yield tallies
    finally:
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
