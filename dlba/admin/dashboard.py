"""The operator's dashboard on every node's admin listener.

Routes added to the admin app by `register_dashboard(app, view, token)`:

* `GET /` — the page (dlba/admin/static/dashboard.html); `GET /?token=T` checks T, sets it as the
  HttpOnly SameSite=Strict cookie `dlba_admin` and redirects to `/`, so the token leaves the URL.
* `GET /static/{file}` — the page's script and style sheet; nothing is loaded from elsewhere.
* `GET /dashboard.json` — everything the page shows (polled every 2 s): this node's `/status`,
  the scheduler's summary (Fig. 5 + Fig. 8) and client table, in-process on the scheduler and
  fetched from the scheduler's admin API (same token) on any other node; plus the CSRF token.
* `GET /dashboard/scheduler.json` — the scheduler's part alone, with per-bucket idle flags; what
  other nodes' dashboards fetch.
* `POST /dashboard/backends/{id}/{action}` — a back-end action on every node of the array
  (each node keeps its own web server status table); `POST|DELETE /dashboard/panic` — panic mode
  on the scheduler, from any node. Both forward to the existing admin endpoints with the bearer
  token, so those log the action as they always do; this module logs who asked, too.
* `POST /dashboard/nodes/{name}/{enable|disable}` — a node's enable/disable (Fig. 5), kept by
  the scheduler: forwarded to the scheduler's `POST /nodes/{name}/{action}` from any node; when
  that node answers 409 naming another scheduler (the role just moved), asked there once more.

CSRF: a request authenticated only by the cookie must carry `X-CSRF-Token` (a random token made
when the node starts, handed out only in the authenticated `/dashboard.json`) on anything but
GET/HEAD/OPTIONS, or it is refused with 403. Requests with a bearer header need no CSRF token (a
browser never adds that header by itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from dlba.admin.api import NodeView, status_json
from dlba.config import Config

events = logging.getLogger("dlba.event")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
}
COOKIE = "dlba_admin"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BACKEND_ACTIONS = ("enable", "disable", "drain")
NODE_ACTIONS = ("enable", "disable")
REMOTE_TIMEOUT_S = 1.5
REMOTE_CACHE_S = 0.8  # several open pages share one fetch from the scheduler
COOKIE_MAX_AGE_S = 12 * 3600
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

DASHBOARD_KEY = web.AppKey("dlba_dashboard", object)


def _same(a: str, b: str) -> bool:
    return bool(a) and hmac.compare_digest(a.encode(), b.encode())


def admin_url(config: Config, name: str) -> str | None:
    """The admin API base URL of the node called `name`, None for no such node."""
    for i, node in enumerate(config.nodes):
        if node.name == name:
            return config.admin_url(i)
    return None


def idle_flags(table: Any, now: float, idle_s: float) -> list[bool]:
    """Per bucket: not used for `idle_s` (the data plane's clock is monotonic)."""
    return [now - table.last_access(b) > idle_s for b in range(table.size)]


def compact_table(table: dict[str, Any]) -> dict[str, Any]:
    """`/table` as the page wants it: owner indexes into a name list (-1: none)."""
    names: list[str] = []
    index: dict[str, int] = {}
    owners: list[int] = []
    for owner in table.get("assignments") or []:
        if owner is None:
            owners.append(-1)
            continue
        if owner not in index:
            index[owner] = len(names)
            names.append(owner)
        owners.append(index[owner])
    out = {"version": table.get("version"), "size": table.get("size", len(owners)),
           "names": names, "owners": owners}
    if table.get("idle") is not None:
        out["idle"] = [1 if i else 0 for i in table["idle"]]
    return out


class Dashboard:
    def __init__(self, view: NodeView, token: str) -> None:
        self.view = view
        self.token = token
        self.csrf = secrets.token_urlsafe(32)
        self.session: aiohttp.ClientSession | None = None
        self._cache: tuple[float, str, dict[str, Any]] | None = None
        self._fetch_lock = asyncio.Lock()

    # --- where the scheduler's data comes from ----------------------------------------------
    def local_role(self) -> Any | None:
        """The scheduler role object when this node is the scheduler (duck-typed: the node
        runtime's agent, if any)."""
        agent = getattr(self.view, "agent", None)
        return getattr(agent, "role", None) if agent is not None else None

    def local_scheduler_part(self) -> dict[str, Any] | None:
        role = self.local_role()
        if role is None:
            return None
        table = role.table_json()
        with contextlib.suppress(Exception):  # idle flags are a nicety, never a failure
            table["idle"] = idle_flags(
                role.table, time.monotonic(), self.view.ctx.config.cluster.bucket_idle_s)
        return {"source": "local", "summary": role.summary_json(), "table": table}

    async def http(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REMOTE_TIMEOUT_S),
                headers={"Authorization": f"Bearer {self.token}"},
            )
        return self.session

    async def _get_json(self, url: str) -> tuple[int, Any]:
        s = await self.http()
        async with s.get(url) as r:
            body = await r.json(content_type=None) if r.status < 500 else None
            return r.status, body

    async def remote_scheduler_part(self, name: str) -> dict[str, Any]:
        now = time.monotonic()
        if self._cache and self._cache[1] == name and now - self._cache[0] < REMOTE_CACHE_S:
            return self._cache[2]
        async with self._fetch_lock:
            if self._cache and self._cache[1] == name and (
                time.monotonic() - self._cache[0] < REMOTE_CACHE_S
            ):
                return self._cache[2]
            part = await self._fetch_remote(name)
            self._cache = (time.monotonic(), name, part)
            return part

    async def _fetch_remote(self, name: str) -> dict[str, Any]:
        base = admin_url(self.view.ctx.config, name)
        if base is None:
            return {"source": "none", "error": f"scheduler {name} is not in this node's config"}
        try:
            status, body = await self._get_json(base + "/dashboard/scheduler.json")
            if status == 200 and isinstance(body, dict) and body.get("summary") is not None:
                return {**body, "source": base}
            if status == 404:  # a scheduler without the dashboard: its plain API
                _, summary = await self._get_json(base + "/summary")
                _, table = await self._get_json(base + "/table")
                return {"source": base, "summary": summary, "table": table}
            return {"source": base, "error": f"scheduler {name} answered {status}"}
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            return {"source": base, "error": f"scheduler {name} unreachable: {e!r}"}

    async def scheduler_part(self, status: dict[str, Any]) -> dict[str, Any]:
        local = self.local_scheduler_part()
        if local is not None:
            return local
        name = status.get("scheduler")
        if not name:
            return {"source": "none"}  # standalone, or no scheduler elected yet
        if name == self.view.name:  # just elected/standing down: ask again next poll
            return {"source": "none", "error": "role is changing"}
        return await self.remote_scheduler_part(name)

    async def snapshot(self) -> dict[str, Any]:
        status = status_json(self.view)
        part = await self.scheduler_part(status)
        table = part.get("table")
        return {
            "time": time.time(),
            "node": status,
            "scheduler": {
                "name": status.get("scheduler"),
                "source": part.get("source"),
                "error": part.get("error"),
                "summary": part.get("summary"),
                "table": compact_table(table) if isinstance(table, dict) else None,
            },
            "array": [n.name for n in self.view.ctx.config.nodes],
            "csrf": self.csrf,
        }

    # --- actions ----------------------------------------------------------------------------
    async def forward(
        self, method: str, name: str, path: str,
    ) -> dict[str, Any]:
        base = admin_url(self.view.ctx.config, name)
        if base is None:
            return {"node": name, "status": 0, "error": "not in config"}
        try:
            s = await self.http()
            async with s.request(method, base + path) as r:
                body = await r.json(content_type=None)
                return {"node": name, "status": r.status, "body": body}
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            return {"node": name, "status": 0, "error": repr(e)}

    async def close(self, _: web.Application) -> None:
        if self.session is not None:
            await self.session.close()


def who(request: web.Request) -> str:
    via = "bearer" if request.headers.get("Authorization", "").startswith("Bearer ") else "cookie"
    return f"via={via} peer={request.remote} ua={request.headers.get('User-Agent', '-')[:60]!r}"


class _Routes:
    """The dashboard's handlers, over one Dashboard, the node's view and the admin token."""

    def __init__(self, dash: Dashboard, view: NodeView, token: str) -> None:
        self.dash = dash
        self.view = view
        self.token = token

    @web.middleware
    async def gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/" and "token" in request.query:
            return self.login(request)
        cookie_only = not request.headers.get("Authorization") and _same(
            request.cookies.get(COOKIE, ""), self.token)
        if (request.method not in SAFE_METHODS and cookie_only
                and not _same(request.headers.get(CSRF_HEADER, ""), self.dash.csrf)):
            events.warning("event=csrf_refused node=%s method=%s path=%s %s", self.view.name,
                           request.method, request.path, who(request))
            return web.json_response(
                {"error": f"{CSRF_HEADER} header required with the dashboard cookie"},
                status=403,
            )
        return await handler(request)

    def login(self, request: web.Request) -> web.Response:
        if not _same(request.query.get("token", ""), self.token):
            events.warning("event=dashboard_login_refused node=%s %s", self.view.name,
                           who(request))
            return web.json_response({"error": "bad admin token"}, status=401)
        resp = web.Response(status=303, headers={"Location": "/", "Cache-Control": "no-store",
                                                 "Referrer-Policy": "no-referrer"})
        resp.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/",
                        max_age=COOKIE_MAX_AGE_S, secure=request.secure)
        events.info("event=dashboard_login node=%s %s", self.view.name, who(request))
        return resp

    async def page(self, _: web.Request) -> web.Response:
        return web.Response(body=(STATIC_DIR / "dashboard.html").read_bytes(),
                            content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = STATIC_FILES.get(name)
        if kind is None:
            raise web.HTTPNotFound()
        return web.Response(body=(STATIC_DIR / name).read_bytes(), content_type=kind,
                            charset="utf-8", headers={"Cache-Control": "no-cache",
                                                      "X-Content-Type-Options": "nosniff"})

    async def data(self, _: web.Request) -> web.Response:
        return web.json_response(await self.dash.snapshot(),
                                 headers={"Cache-Control": "no-store"})

    async def scheduler_json(self, _: web.Request) -> web.Response:
        part = self.dash.local_scheduler_part()
        if part is None:
            return web.json_response(
                {"error": "not the scheduler", "scheduler": self.view.scheduler_name()},
                status=409)
        return web.json_response(part)

    async def backend_everywhere(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in BACKEND_ACTIONS:
            return web.json_response({"error": f"action must be one of {BACKEND_ACTIONS}"},
                                     status=404)
        try:
            bid = int(request.match_info["id"])
        except ValueError:
            return web.json_response({"error": "back-end id must be an integer"}, status=400)
        events.info("event=dashboard_action node=%s action=%s backend=%d scope=array %s",
                       self.view.name, action, bid, who(request))
        names = [n.name for n in self.view.ctx.config.nodes]
        results = await asyncio.gather(
            *(self.dash.forward("POST", n, f"/backends/{bid}/{action}") for n in names))
        ok = all(r["status"] == 200 for r in results)
        return web.json_response({"ok": ok, "results": results}, status=200 if ok else 502)

    async def node_action(self, request: web.Request) -> web.Response:
        view, dash = self.view, self.dash
        name, action = request.match_info["name"], request.match_info["action"]
        if action not in NODE_ACTIONS:
            return web.json_response({"error": f"action must be one of {NODE_ACTIONS}"},
                                     status=404)
        if name not in {n.name for n in view.ctx.config.nodes}:
            return web.json_response({"error": f"no node {name!r} in the config"}, status=404)
        scheduler = view.scheduler_name()
        events.info("event=dashboard_action node=%s action=node_%s target=%s scheduler=%s %s",
                       view.name, action, name, scheduler, who(request))
        if not scheduler:
            return web.json_response({"error": "no scheduler (standalone node?)"}, status=409)
        path = f"/nodes/{name}/{action}"
        result = await dash.forward("POST", scheduler, path)
        body = result.get("body")
        moved = body.get("scheduler") if isinstance(body, dict) else None
        if result["status"] == 409 and moved and moved != scheduler:
            result = await dash.forward("POST", moved, path)  # the role moved meanwhile
        dash._cache = None  # show the new Fig. 5 on the next poll
        status = result["status"] if result["status"] in (200, 404, 409) else 502
        return web.json_response(result, status=status)

    async def panic(self, request: web.Request) -> web.Response:
        on = request.method == "POST"
        name = self.view.scheduler_name()
        events.info("event=dashboard_action node=%s action=panic_%s scheduler=%s %s",
                       self.view.name, "on" if on else "off", name, who(request))
        if not name:
            return web.json_response({"error": "no scheduler (standalone node?)"}, status=409)
        result = await self.dash.forward(request.method, name, "/panic")
        self.dash._cache = None  # show the new table on the next poll
        status = result["status"] if result["status"] in (200, 409) else 502
        return web.json_response(result, status=status)


def register_dashboard(app: web.Application, view: NodeView, token: str) -> None:
    """Add the dashboard's routes and its gate middleware to the (not yet started) admin app.

    The gate runs before the admin API's auth middleware: it answers `GET /?token=` itself
    (checking the token) and refuses cookie-authenticated state changes without the CSRF token.
    """
    dash = Dashboard(view, token)
    app[DASHBOARD_KEY] = dash
    app.on_cleanup.append(dash.close)
    r = _Routes(dash, view, token)
    app.middlewares.insert(0, r.gate)
    app.router.add_get("/", r.page)
    app.router.add_get("/static/{name}", r.static)
    app.router.add_get("/dashboard.json", r.data)
    app.router.add_get("/dashboard/scheduler.json", r.scheduler_json)
    app.router.add_post("/dashboard/backends/{id}/{action}", r.backend_everywhere)
    app.router.add_post("/dashboard/nodes/{name}/{action}", r.node_action)
    app.router.add_post("/dashboard/panic", r.panic)
    app.router.add_delete("/dashboard/panic", r.panic)
