"""Several in-process nodes on loopback (127.0.0.k) sharing one config text, each with its own
config folder (so a file can be missing on one node only), in front of real demo back ends."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from dlba.config import load_config
from dlba.demo_backend import bound_port, start_demo_backend
from dlba.node import NodeRuntime
from dlba.tls.certs import CertPaths, init_certs
from tests.integration.loopback import free_port


@dataclass
class Ports:
    http: int
    https: int
    admin: int


@dataclass
class Backend:
    id: int
    address: str
    extra: str = ""


@dataclass
class ConfigArray:
    root: Path
    certs: CertPaths
    names: list[str]
    ports: dict[str, Ports]
    nodes: dict[str, NodeRuntime]
    backend_ports: dict[str, int] = field(default_factory=dict)
    runners: list[web.AppRunner] = field(default_factory=list)
    redis: str = ""

    def address(self, name: str) -> str:
        return f"127.0.0.{self.names.index(name) + 1}"

    def url(self, name: str) -> str:
        return f"http://{self.address(name)}:{self.ports[name].http}"

    def admin_url(self, name: str) -> str:
        return f"http://{self.address(name)}:{self.ports[name].admin}"

    @property
    def token(self) -> str:
        return self.certs.admin_token.read_text().strip()

    def backend(self, bid: int, name: str, extra: str = "") -> Backend:
        return Backend(bid, f"127.0.0.1:{self.backend_ports[name]}", extra)

    def render(self, backends: Sequence[Backend], *, policy: str = "least_conn",
               tls_cert: str = "certs/node.pem", tls_key: str = "certs/node.key",
               cookie: str = "DLBASERVER", ports: dict[str, Ports] | None = None,
               redis: str | None = None) -> str:
        ports = ports or self.ports
        redis = self.redis if redis is None else redis
        lines = ["[cluster]", 'secret_file = "certs/cluster.key"', f'redis = "{redis}"', ""]
        for name in self.names:
            p, a = ports[name], self.address(name)
            lines += ["[[nodes]]", f'name = "{name}"', f'address = "{a}"',
                      f'listen = ["{a}:{p.http}"]', f'listen_tls = ["{a}:{p.https}"]',
                      f'admin = "{a}:{p.admin}"', ""]
        lines += ["[tls]", f'cert = "{tls_cert}"', f'key = "{tls_key}"', "",
                  "[persistence]", f'cookie = "{cookie}"', "",
                  "[scheduling]", f'policy = "{policy}"', "",
                  "[admin]", 'listen = ":9000"', 'token_file = "certs/admin.token"', "",
                  "[proxy]", "health_interval_s = 0.5", ""]
        for b in backends:
            lines += ["[[backends]]", f"id = {b.id}", f'address = "{b.address}"', b.extra, ""]
        return "\n".join(lines) + "\n"

    def node_dir(self, name: str) -> Path:
        return self.root / name

    def push_file(self, text: str) -> Path:
        """The operator's copy of the config: its own folder, with the same certificates."""
        d = self.root / "push"
        if not (d / "certs").exists():
            shutil.copytree(self.root / "certs", d / "certs")
        path = d / "cluster.toml"
        path.write_text(text)
        return path

    def add_file(self, rel: str, source: Path, nodes: Sequence[str]) -> None:
        """Put a file into the push folder and the given nodes' folders only."""
        for d in [self.root / "push", *(self.node_dir(n) for n in nodes)]:
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, d / rel)

    async def admin(self, name: str, path: str, method: str = "GET",
                    data: str | None = None) -> Any:
        async with aiohttp.ClientSession() as s, s.request(
            method, self.admin_url(name) + path, data=data,
            headers={"Authorization": f"Bearer {self.token}"},
        ) as r:
            return await r.json()

    async def versions(self) -> dict[str, int]:
        return {n: int((await self.admin(n, "/status"))["config_version"]) for n in self.names}

    async def whoami(self, name: str, count: int = 6) -> set[str]:
        """Which back ends a node sends fresh requests to (new connection each time)."""
        seen: set[str] = set()
        for _ in range(count):
            async with aiohttp.ClientSession() as s, s.get(self.url(name) + "/whoami") as r:
                assert r.status == 200, await r.text()
                seen.add(r.headers["X-Backend"])
        return seen


async def start_backend(name: str) -> web.AppRunner:
    return await start_demo_backend(name, "127.0.0.1", 0)


@asynccontextmanager
async def config_array(
    tmp: Path, n_nodes: int = 3, backend_names: Sequence[str] = ("b1", "b2", "b3", "b4"),
    initial: Sequence[int] = (1, 2), redis: str = "", start: Sequence[str] | None = None,
) -> AsyncIterator[ConfigArray]:
    """Nodes n1..nN; back ends b1.. get ids 1..; `initial` lists the ids in the first config.
    `start` names the nodes to start (default: all; [] starts none)."""
    ips = [f"127.0.0.{k}" for k in range(1, n_nodes + 1)]
    certs = init_certs(tmp / "certs", ["localhost", "dlba.test"], ips)
    names = [f"n{k}" for k in range(1, n_nodes + 1)]
    ports = {n: Ports(free_port(), free_port(), free_port()) for n in names}
    arr = ConfigArray(tmp, certs, names, ports, {}, redis=redis)
    try:
        for bname in backend_names:
            r = await start_backend(bname)
            arr.runners.append(r)
            arr.backend_ports[bname] = bound_port(r)
        text = arr.render([arr.backend(i, f"b{i}") for i in initial])
        for name in names:
            d = arr.node_dir(name)
            shutil.copytree(tmp / "certs", d / "certs")
            (d / "cluster.toml").write_text(text)
        for name in names if start is None else start:
            node = NodeRuntime(load_config(arr.node_dir(name) / "cluster.toml"), name)
            await node.start()
            arr.nodes[name] = node
        yield arr
    finally:
        for node in arr.nodes.values():
            await node.stop()
        for r in arr.runners:
            await r.cleanup()
        await asyncio.sleep(0)
