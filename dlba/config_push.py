"""`dlba config push FILE`: validate, then commit a config to every node, or to none.

Two-phase over the admin API (no `cluster.redis`): stage on all (`PUT /config?stage=1`), then
commit on all (`POST /config/commit`); one node that cannot stage aborts the stage everywhere
(`DELETE /config/stage`) and every node keeps running the version it had. With `cluster.redis`
the same two phases go through the config bus (dlba/config_bus.py).

Which nodes: `--admin URL` (repeatable), else `--state DIR` when it holds a `dlba up` array,
else the file's own [[nodes]] (each node's admin address).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dlba.config import Config, ConfigError, load_config
from dlba.config_reload import text_digest
from dlba.listeners import admin_address
from dlba.sockets import tls_context

T = TypeVar("T")
TIMEOUT_S = 10.0
PROG = "dlba config push"


class PushFailed(Exception):
    """One line for the operator: which node, what happened, what state the array is in."""


def request(url: str, token: str, method: str = "GET", body: bytes | None = None,
            timeout: float = TIMEOUT_S) -> Any:
    req = urllib.request.Request(url, data=body, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        # The node's refusal carries its file/key/reason line in "error".
        try:
            reason = json.loads(e.read()).get("error", e.reason)
        except (ValueError, AttributeError):
            reason = e.reason
        raise PushFailed(str(reason)) from e
    except (OSError, ValueError) as e:
        raise PushFailed(f"unreachable: {getattr(e, 'reason', None) or e}") from e


def validate(path: Path) -> Config:
    """The node's own validator, plus what a node checks before staging (TLS loadable)."""
    cfg = load_config(path)
    cfg.read_secret()
    cfg.read_admin_token()
    try:
        tls_context(cfg)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(str(path), "tls.cert", f"cannot load: {e}") from e
    return cfg


def urls_from_file(cfg: Config) -> list[str]:
    out = []
    for n in cfg.nodes:
        a = admin_address(cfg, n.name)
        host = f"[{a.host}]" if ":" in a.host else a.host
        out.append(f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{a.port}")
    return out


def push_direct(urls: list[str], token: str, text: str) -> tuple[int, list[str]]:
    """Stage on all, then commit on all; raises PushFailed after aborting the stage."""
    names: dict[str, str] = {}
    versions = []
    for url in urls:
        try:
            st = request(url + "/status", token)
        except PushFailed as e:
            raise PushFailed(f"node {url}: {e}; nothing changed") from e
        names[url] = str(st.get("node", url))
        versions.append(int(st.get("config_version") or 0))
    version = max(versions) + 1
    staged: list[str] = []
    for url in urls:
        try:
            request(f"{url}/config?stage=1&version={version}", token, "PUT", text.encode())
            staged.append(url)
        except PushFailed as e:
            for u in [*staged, url]:
                # A node that is down holds no stage worth keeping anyway.
                with contextlib.suppress(PushFailed):
                    request(u + "/config/stage", token, "DELETE")
            raise PushFailed(
                f"node {names[url]} ({url}) cannot stage version {version}: {e}; aborted, "
                "every node keeps its running version") from e
    done: list[str] = []
    failed: list[str] = []
    body = json.dumps({"version": version, "digest": text_digest(text)}).encode()
    for url in urls:
        try:
            request(url + "/config/commit", token, "POST", body)
            done.append(names[url])
        except PushFailed as e:
            failed.append(f"{names[url]} ({url}): {e}")
    if failed:
        # All staged, so this is a node lost between the phases: say exactly who runs what.
        raise PushFailed(f"version {version} committed on {', '.join(done) or 'no node'} but "
                         f"not on {'; '.join(failed)}")
    return version, [names[u] for u in urls]


def push_bus(url: str, text: str, nodes: list[str], deadline_s: float) -> tuple[int, list[str]]:
    from redis.exceptions import RedisError

    from dlba.config_bus import BusBusy, push_via_bus

    try:
        result = asyncio.run(push_via_bus(url, text, nodes, deadline_s))
    except (RedisError, OSError, BusBusy) as e:
        raise PushFailed(f"config bus {url}: {e}; nothing changed") from e
    if result.failed:
        who = "; ".join(f"node {n}: {r}" for n, r in sorted(result.failed.items()))
        raise PushFailed(f"version {result.version} not staged ({who}); aborted, every node "
                         "keeps its running version")
    return result.version, nodes


def _in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    if netns is None:
        return fn()
    from dlba.local_array.processes import run_in_netns

    return run_in_netns(netns, fn)


def push_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="validate, then commit a config to "
                                "every node of the array (or to none)")
    p.add_argument("file", help="the new config (TOML)")
    p.add_argument("--admin", action="append", help="a node's admin URL (repeatable)")
    p.add_argument("--state", help="state folder of `dlba up` whose array to push to")
    p.add_argument("--token", help="admin token (default: the config's admin.token_file)")
    p.add_argument("--direct", action="store_true",
                   help="push to each node's admin API even when cluster.redis is set")
    p.add_argument("--deadline", type=float, default=10.0,
                   help="seconds every node has to stage over the config bus")
    args = p.parse_args(argv)
    path = Path(args.file)
    try:
        cfg = validate(path)
    except ConfigError as e:
        print(f"{PROG}: config error: {e}", file=sys.stderr)
        return 2
    text = cfg.text
    netns: str | None = None
    redis_netns: str | None = None
    try:
        token = args.token or cfg.read_admin_token()
        if args.admin:
            urls = [u.rstrip("/") for u in args.admin]
        elif args.state:
            from dlba.status_cli import admin_urls_from_state

            urls, state_token, netns = admin_urls_from_state(Path(args.state))
            token = args.token or state_token
            info_file = Path(args.state) / "array.json"
            info = json.loads(info_file.read_text()) if info_file.exists() else {}
            if info.get("redis") and info.get("prefix") is not None:
                # The bus address (198.18.1.2) exists only inside the array's namespaces.
                redis_netns = f"{info['prefix']}redis"
        else:
            urls = urls_from_file(cfg)
    except (ConfigError, OSError, ValueError, KeyError) as e:
        print(f"{PROG}: cannot find the array: {e}", file=sys.stderr)
        return 2
    try:
        if cfg.cluster.redis and not args.direct:
            names = [n.name for n in cfg.nodes]
            version, done = _in_netns(
                redis_netns, lambda: push_bus(cfg.cluster.redis, text, names, args.deadline))
        else:
            version, done = _in_netns(netns, lambda: push_direct(urls, token, text))
    except PushFailed as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    print(f"config version {version} committed on {', '.join(done)}")
    return 0
