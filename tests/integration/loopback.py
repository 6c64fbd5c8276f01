"""A node on loopback in front of real demo back ends, with real certificates (test helper)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from dlba.config import load_config
from dlba.demo_backend import bound_port, start_demo_backend
from dlba.node import NodeRuntime
from dlba.tls import context as tls
from dlba.tls.certs import CertPaths, init_certs

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port for a test's listener that no connection takes before the test binds it.

    A port from bind(0) is an ephemeral one: an outgoing connection (to a back end, to redis)
    may get it as its local port first, and the node's bind then fails with EADDRINUSE (seen in
    CI). So: below the kernel's ephemeral range, never the same one twice in a run."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(10000, max(low, 10001))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port between 10000 and {low}")


def make_certs(directory: Path) -> CertPaths:
    return init_certs(directory, ["localhost", "dlba.test"], ["127.0.0.1"])


def write_config(
    directory: Path, certs: CertPaths, backends: Sequence[tuple[int, str]], *,
    http_port: int, https_port: int, admin_port: int, extra: str = "",
    backend_extra: dict[int, str] | None = None, name: str = "n1",
) -> Path:
    lines = [
        "[cluster]", f'secret_file = "{certs.cluster_key}"', "",
        "[[nodes]]", f'name = "{name}"', 'address = "127.0.0.1"',
        f'listen = ["127.0.0.1:{http_port}"]', f'listen_tls = ["127.0.0.1:{https_port}"]', "",
        "[tls]", f'cert = "{certs.node_cert}"', f'key = "{certs.node_key}"', "",
        "[admin]", f'listen = "127.0.0.1:{admin_port}"', f'token_file = "{certs.admin_token}"', "",
    ]
    for bid, address in backends:
        lines += ["[[backends]]", f"id = {bid}", f'address = "{address}"']
        if backend_extra and bid in backend_extra:
            lines.append(backend_extra[bid])
        lines.append("")
    path = directory / "node.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@dataclass
class LoopbackArray:
    node: NodeRuntime
    certs: CertPaths
    config_path: Path
    http_port: int
    https_port: int
    admin_port: int
    backends: dict[str, web.AppRunner] = field(default_factory=dict)
    backend_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def token(self) -> str:
        return self.certs.admin_token.read_text().strip()

    def client_ssl(self) -> ssl.SSLContext:
        return tls.client_context(self.certs.ca_cert)

    async def stop_backend(self, name: str) -> None:
        await self.backends.pop(name).cleanup()


@asynccontextmanager
async def loopback_array(
    tmp: Path, n_backends: int = 3, *, extra: str = "", backend_extra: dict[int, str] | None = None,
    dead_backends: int = 0,
) -> AsyncIterator[LoopbackArray]:
    """Start n demo back ends (b1..bn, ids 1..n) and a node; `dead_backends` more ids point
    at ports where nothing listens."""
    certs = make_certs(tmp / "certs")
    runners: dict[str, web.AppRunner] = {}
    ports: dict[str, int] = {}
    backends: list[tuple[int, str]] = []
    for i in range(1, n_backends + 1):
        r = await start_demo_backend(f"b{i}", "127.0.0.1", 0)
        runners[f"b{i}"] = r
        ports[f"b{i}"] = bound_port(r)
        backends.append((i, f"127.0.0.1:{ports[f'b{i}']}"))
    for j in range(dead_backends):
        backends.append((n_backends + j + 1, f"127.0.0.1:{free_port()}"))
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    path = write_config(
        tmp, certs, backends, http_port=http_port, https_port=https_port,
        admin_port=admin_port, extra=extra, backend_extra=backend_extra,
    )
    node = NodeRuntime(load_config(path), "n1")
    await node.start()
    arr = LoopbackArray(node, certs, path, http_port, https_port, admin_port, runners, ports)
    try:
        yield arr
    finally:
        await node.stop()
        for r in list(arr.backends.values()):
            await r.cleanup()
        await asyncio.sleep(0)


async def raw_exchange(
    port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 5.0,
) -> bytes:
    """Send raw bytes to the node and read what comes back until it closes (or timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)
    finally:
        writer.close()


async def wait_port(port: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            assert loop.time() < deadline, f"nothing listens on {port}"
            await asyncio.sleep(0.05)


@contextmanager
def node_processes(config: Path, backend_ports: Sequence[int], ports: Sequence[int],
                   stop_wait_s: float = 10.0) -> Iterator[int]:
    """Real processes: a demo back end b1..bn on each of ``backend_ports``, then `dlba node`
    n1 on ``config``; yields the node's pid once every port of both lists answers, and stops
    them all by PID (SIGTERM, then SIGKILL after ``stop_wait_s``)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs = [
        subprocess.Popen([sys.executable, "-m", "dlba", "demo-backend", "--name", f"b{i + 1}",
                          "--listen", f"127.0.0.1:{p}"], env=env, stderr=subprocess.DEVNULL)
        for i, p in enumerate(backend_ports)
    ]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "dlba", "node", "--config", str(config), "--name", "n1",
         "--log-level", "WARNING"], env=env,
    ))
    try:
        for port in (*backend_ports, *ports):
            asyncio.run(wait_port(port))
        yield procs[-1].pid
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(stop_wait_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
