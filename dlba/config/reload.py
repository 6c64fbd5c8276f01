"""Hot reload of a node's config: stage, commit, abort (patent 003, "Configuration").

A push is two-phase so that every node runs the new version or none does. *Stage* parses and
validates the candidate with this node's own eyes (relative paths resolve against this node's
config folder, so a certificate missing only here fails here), builds its TLS context and
probes new listen addresses; nothing running changes. *Commit* swaps the staged config in:
back ends, limits, persistence and policy through `ProxyContext.apply` (no connection is
touched), back-end checks restarted, listeners reconciled (`Listeners`), `config_version` bumped.

Routes (admin API, bearer token): `PUT /config?stage=1&version=N` (body: TOML text),
`POST /config/commit` `{"version": N}`, `DELETE /config/stage`; `PUT /config` without
`stage=1` stages and commits in one go (a single node, by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from dlba.config import Config, ConfigError, ConfigErrors, HostPort, collect_config
from dlba.config.node_files import node_problems
from dlba.proxy.listeners import Listeners
from dlba.proxy.proxy_context import ProxyContext
from dlba.proxy.sockets import bound_socket, tls_context
from dlba.scheduling.backend_checks import BackendChecks

if TYPE_CHECKING:
    from dlba.config.bus import ConfigBusWatcher

events = logging.getLogger("dlba.event")


class StageError(ConfigErrors):
    """Why a candidate cannot run here: every file/key/reason problem, one line each."""

    @classmethod
    def one(cls, file: str, key: str, reason: str) -> StageError:
        return cls([ConfigError(file, key, reason)])

    def to_json(self) -> dict[str, Any]:  # type: ignore[override]
        first = self.problems[0]
        return {"error": str(self), "file": first.file, "key": first.key,
                "reason": first.reason, "problems": super().to_json()}


class ReloadableNode(Protocol):
    name: str
    config: Config
    config_version: int
    ctx: ProxyContext
    checks: BackendChecks
    servers: list[asyncio.AbstractServer]
    admin_runner: web.AppRunner | None


@dataclass
class Staged:
    version: int
    config: Config
    ssl_ctx: ssl.SSLContext | None
    tls_print: bytes


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tls_fingerprint(config: Config) -> bytes:
    """The certificate and key bytes: a file replaced under the same name is a change too."""
    files = [config.tls.cert, config.tls.key]
    files += [p for s in config.tls.sni for p in (s.cert, s.key)]
    files += [p for svc in config.services for c in svc.certs for p in (c.cert, c.key)]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode() + b"\0")
        if f is not None:
            with contextlib.suppress(OSError):
                h.update(f.read_bytes())
    return h.digest()


def _probe_bind(addr: HostPort) -> None:
    """Bind (not listen) a socket like the real listener would, so a commit cannot fail on an
    address this host does not allow; SO_REUSEPORT lets it coexist with a running listener."""
    bound_socket(addr).close()


def validate_candidate(text: str, node_name: str, base: Config, workers: bool = False) -> Staged:
    """Everything that can fail before the commit, all of it reported at once; raises
    StageError. `base` gives the path that relative file names resolve against (this node's
    config file): the files a config names are checked here, on the node."""
    file = str(base.path)
    new, problems = collect_config(text, base.path, check_files=True)
    if new is None:
        raise StageError(problems)
    problems += node_problems(new, node_name, problems)
    problems += _live_change_problems(new, base, problems)
    old_listeners = Listeners.wanted(base, node_name)
    if not problems:
        for kind, addr in Listeners.wanted(new, node_name):
            if (kind, addr) in old_listeners:
                continue
            try:
                _probe_bind(addr)
            except OSError as e:
                key = {"http": "listen", "https": "listen_tls", "admin": "admin"}[kind]
                problems.append(ConfigError(file, f"nodes.{key}",
                                            f"cannot bind {addr}: {e.strerror}"))
    if problems:
        raise StageError(problems)
    return Staged(0, new, tls_context(new), tls_fingerprint(new))


def _live_change_problems(new: Config, base: Config, earlier: list[ConfigError]
                          ) -> list[ConfigError]:
    """What a running array cannot take without a restart."""
    file = str(base.path)
    out: list[ConfigError] = []
    if not any(p.key == "cluster.secret_file" for p in earlier) and (
            new.read_secret() != base.read_secret()):
        # Cookies signed with the old secret are still out there; changing it is a restart.
        out.append(ConfigError(file, "cluster.secret_file",
                               "the cluster secret cannot change live"))
    old = {n.name: n.address for n in base.nodes}
    moved = sorted(n.name for n in new.nodes if old.get(n.name, n.address) != n.address)
    if not any(p.key.startswith("nodes") for p in earlier) and moved:
        # Any member joins or leaves live (its table number is kept by name: see
        # scheduler/membership.py), but a name is one node: its peers and the scheduler
        # watch it at that address.
        out.append(ConfigError(file, "nodes", f"the address of {', '.join(moved)} cannot "
                               "change live (remove it, then add it back; or restart)"))
    for key, a, b in (("cluster.vip", new.cluster.vip, base.cluster.vip),
                      ("cluster.buckets", new.cluster.buckets, base.cluster.buckets)):
        if a != b and not any(p.key == key for p in earlier):
            out.append(ConfigError(file, key, "cannot change while running (restart)"))
    return out


class ConfigReloader:
    """The node side of a push; one per node."""

    def __init__(self, node: ReloadableNode) -> None:
        self.node = node
        self.staged: Staged | None = None
        self.tls_print = tls_fingerprint(node.config)
        self.listeners = Listeners(node.ctx)
        self.bus: ConfigBusWatcher | None = None

    def with_routes(
        self, extra: Callable[[web.Application], None] | None,
    ) -> Callable[[web.Application], None]:
        """The admin app's route hook: the config routes, then whatever else the node adds."""
        def register(app: web.Application) -> None:
            config_routes(app, self)
            if extra is not None:
                extra(app)
        return register

    def start(self) -> None:
        """Follow the config bus when the config names one (cluster.redis)."""
        url = self.node.config.cluster.redis
        if url:
            from dlba.config.bus import ConfigBusWatcher

            self.bus = ConfigBusWatcher(self, url)
            self.bus.start()

    async def stop(self) -> None:
        if self.bus is not None:
            await self.bus.stop()

    def stage(self, text: str, version: int) -> Staged:
        if version <= self.node.config_version:
            raise StageError.one(str(self.node.config.path), "version",
                             f"{version} is not newer than {self.node.config_version}")
        workers = getattr(self.node, "workers", None) is not None
        staged = validate_candidate(text, self.node.name, self.node.config, workers)
        staged.version = version
        self.staged = staged
        events.info("event=config_staged node=%s version=%d", self.node.name, version)
        return staged

    def abort(self) -> int | None:
        version = self.staged.version if self.staged else None
        self.staged = None
        if version is not None:
            events.warning("event=config_aborted node=%s version=%d", self.node.name, version)
        return version

    async def commit(self, version: int, digest: str | None = None) -> None:
        staged = self.staged
        if staged is None or staged.version != version:
            have = staged.version if staged else "nothing"
            raise StageError.one(str(self.node.config.path), "version",
                             f"version {version} is not staged here (staged: {have})")
        if digest is not None and digest != text_digest(staged.config.text):
            # Two pushes raced for the same version: commit only the text this pusher staged.
            raise StageError.one(str(self.node.config.path), "version",
                             f"version {version} staged here is another push's text")
        self.staged = None
        node = self.node
        old = node.config
        workers = getattr(node, "workers", None)
        listeners = self.listeners
        if not listeners.adopted:
            listeners.adopt(old, node.servers, node.admin_runner)
        node.ctx.apply(staged.config)
        node.config = staged.config
        try:
            await listeners.reconcile(staged.config, staged.ssl_ctx,
                                      staged.tls_print != self.tls_print, workers is None)
        except OSError as e:
            # The probe bind passed, so this is a race with another process: keep the old.
            node.ctx.apply(old)
            node.config = old
            raise StageError.one(str(old.path), "nodes.listen", f"cannot listen: {e}") from e
        # NodeRuntime.stop closes what is in `servers`: keep it the live set.
        node.servers[:] = list(listeners.servers.values())
        tls_changed = staged.tls_print != self.tls_print
        self.tls_print = staged.tls_print
        if workers is not None:
            proxy = [(k, a) for k, a in Listeners.wanted(old, node.name) if k != "admin"]
            new_proxy = [(k, a) for k, a in Listeners.wanted(staged.config, node.name)
                         if k != "admin"]
            if proxy != new_proxy or tls_changed:
                # Workers own their listeners and TLS context: new workers on the new config,
                # the old ones finish their connections.
                await workers.replace_all(staged.config)
            else:
                workers.apply_config(staged.config)
        agent = getattr(node, "agent", None)
        if agent is not None:
            agent.reconfigure(staged.config)
        node.checks.start()  # start() stops the old checks: back ends may have come or gone
        node.config_version = version
        events.info(
            "event=config_committed node=%s version=%d backends=%d policy=%s", node.name,
            version, len(staged.config.backends), staged.config.scheduling.policy,
        )

    async def stage_and_commit(self, text: str, version: int) -> None:
        self.stage(text, version)
        await self.commit(version)


def config_routes(app: web.Application, reloader: ConfigReloader) -> None:
    """Register PUT /config, POST /config/commit, DELETE /config/stage on the admin app."""

    def bad(e: StageError, status: int = 409) -> web.Response:
        return web.json_response(e.to_json(), status=status)

    async def put_config(request: web.Request) -> web.Response:
        text = await request.text()
        node = reloader.node
        try:
            version = int(request.query.get("version", node.config_version + 1))
        except ValueError:
            return web.json_response({"error": "version must be an integer"}, status=400)
        try:
            if request.query.get("stage") in ("1", "true"):
                reloader.stage(text, version)
                return web.json_response(
                    {"node": node.name, "staged": version, "digest": text_digest(text)})
            await reloader.stage_and_commit(text, version)
        except StageError as e:
            return bad(e)
        return web.json_response({"node": node.name, "config_version": node.config_version})

    async def commit(request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
            version = int(body["version"])
            digest = body.get("digest")
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response({"error": 'body must be {"version": N}'}, status=400)
        try:
            await reloader.commit(version, None if digest is None else str(digest))
        except StageError as e:
            return bad(e)
        node = reloader.node
        return web.json_response({"node": node.name, "config_version": node.config_version})

    async def abort(_: web.Request) -> web.Response:
        return web.json_response({"node": reloader.node.name, "aborted": reloader.abort()})

    app.router.add_put("/config", put_config)
    app.router.add_post("/config/commit", commit)
    app.router.add_delete("/config/stage", abort)
