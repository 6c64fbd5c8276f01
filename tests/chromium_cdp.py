"""Headless Chromium driven over the DevTools protocol on a websocket with aiohttp (no extra
package), for the dashboard tests; and where those tests put their screenshot.

Screenshots go to the test's tmp folder, so a test run never dirties the repo; only when
`DLBA_SCREENSHOT` names a path (relative paths are taken from the repo root) does the array
test write there: `DLBA_SCREENSHOT=docs/dashboard.png` refreshes the README's picture.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT_ENV = "DLBA_SCREENSHOT"


def screenshot_path(tmp: Path, name: str = "dashboard.png") -> Path:
    """`$DLBA_SCREENSHOT` when set (e.g. docs/dashboard.png), else a file in `tmp`."""
    named = os.environ.get(SCREENSHOT_ENV, "").strip()
    if not named:
        return tmp / name
    path = Path(named)
    return path if path.is_absolute() else ROOT / path


# --- a minimal DevTools protocol client -----------------------------------------------------------
class Chromium:
    """Headless Chromium with one page, driven over the DevTools websocket."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session_id = ""
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.console: list[str] = []

    async def start(self) -> None:
        exe = shutil.which("chromium")
        if exe is None:
            pytest.fail("chromium missing: `make install` installs it (APT_PKGS)")
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            assert self.proc.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self.reader = asyncio.ensure_future(self._read())
        target = await self.send("Target.createTarget", {"url": "about:blank"}, page=False)
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
            page=False)
        self.session_id = attached["sessionId"]
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            d = json.loads(msg.data)
            if "id" in d and d["id"] in self.pending:
                self.pending.pop(d["id"]).set_result(d)
            elif d.get("method") == "Runtime.consoleAPICalled":
                args = d["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", "")) for a in args))
            elif d.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(d["params"])[:500])

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, page: bool = True,
    ) -> dict[str, Any]:
        assert self.ws is not None
        i = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
        if page:
            msg["sessionId"] = self.session_id
        await self.ws.send_str(json.dumps(msg))
        d = await asyncio.wait_for(fut, 30)
        if "error" in d:
            raise AssertionError(f"{method}: {d['error']}")
        return dict(d.get("result", {}))

    async def eval(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", {"expression": expression,
                                                 "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise AssertionError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait(self, expression: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.eval(expression)
            except AssertionError:  # e.g. between two documents while navigating
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, (
                f"page never satisfied {expression!r}; console: {self.console[-5:]}")
            await asyncio.sleep(0.1)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def click(self, selector: str) -> None:
        """A real mouse click (press + release) at the middle of the element."""
        rect = await self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()")
        assert rect is not None, f"no element {selector}"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", {
                "type": kind, "x": rect["x"], "y": rect["y"], "button": "left",
                "clickCount": 0 if kind == "mouseMoved" else 1})

    async def screenshot(self, path: Path, width: int = 1100) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": 800, "deviceScaleFactor": 1, "mobile": False})
        await asyncio.sleep(0.2)
        height = await self.eval("Math.ceil(document.documentElement.scrollHeight)")
        await self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": int(height), "deviceScaleFactor": 1, "mobile": False})
        await self.eval("window.scrollTo(0, 0)")
        await asyncio.sleep(0.3)
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close", page=False)
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@contextlib.asynccontextmanager
async def chromium(tmp: Path) -> AsyncIterator[Chromium]:
    b = Chromium(tmp / "chromium-profile")
    try:
        await b.start()
        yield b
    finally:
        await b.close()


