"""`dlba config push FILE`: validate, then commit a config to every node, or to none.

Two-phase over the admin API (no `cluster.redis`): stage on all (`PUT /config?stage=1`), then
commit on all (`POST /config/commit`); one node that cannot stage aborts the stage everywhere
(`DELETE /config/stage`) and every node keeps running the version it had. With `cluster.redis`
the same two phases go through the config bus (dlba/config/bus.py).

Which nodes: `--admin URL` (repeatable), else `--state DIR` when it holds a `dlba up` array,
else the file's own [[nodes]] (each node's admin address).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dlba.config import Config, ConfigError, load_config
from dlba.config.reload import text_digest
from dlba.proxy.listeners import admin_address

T = TypeVar("T")
TIMEOUT_S = 10.0
PROG = "dlba config push"


class PushFailed(Exception):
    """One line for the operator: which node, what happened, what state the array is in;
    `problems`: the refusing nodes' config problems, one line each (a config error, exit 2)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def request(url: str, token: str, method: str = "GET", body: bytes | None = None,
            timeout: float = TIMEOUT_S) -> Any:
    req = urllib.request.Request(url, data=body, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        # A node's refusal lists its problems: file/key/reason each.
        try:
            answer = json.loads(e.read())
            reason = str(answer.get("error", e.reason))
            problems = [f"{p['file']}: {p['key']}: {p['reason']}"
                        for p in answer.get("problems", [])]
        except (ValueError, AttributeError, KeyError, TypeError):
            reason, problems = str(e.reason), []
        raise PushFailed(reason.splitlines()[0] if reason else str(e.reason), problems) from e
    except (OSError, ValueError) as e:
        raise PushFailed(f"unreachable: {getattr(e, 'reason', None) or e}") from e


def validate(path: Path) -> Config:
    """Everything that does not depend on the machine: the files the config names live on the
    nodes (relative to each node's own config), and each node checks them when it stages."""
    return load_config(path, check_files=False)


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
    refused: list[tuple[str, PushFailed]] = []
    for url in urls:
        # Stage everywhere even after a refusal: the operator learns every node's problems.
        try:
            request(f"{url}/config?stage=1&version={version}", token, "PUT", text.encode())
            staged.append(url)
        except PushFailed as e:
            refused.append((url, e))
    if refused:
        for u in urls:
            # A node that is down holds no stage worth keeping anyway.
            with contextlib.suppress(PushFailed):
                request(u + "/config/stage", token, "DELETE")
        who = "; ".join(f"node {names[u]} ({u}): {e}" for u, e in refused)
        raise PushFailed(
            f"version {version} not staged ({who}); aborted, every node keeps its running "
            "version", [f"node {names[u]}: {line}" for u, e in refused for line in e.problems])
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

    from dlba.config.bus import BusBusy, push_via_bus

    try:
        result = asyncio.run(push_via_bus(url, text, nodes, deadline_s))
    except (RedisError, OSError, BusBusy) as e:
        raise PushFailed(f"config bus {url}: {e}; nothing changed") from e
    if result.failed:
        # A refusal is the node's problems, one line each; anything else is one line too.
        who = "; ".join(f"node {n}: {r.splitlines()[0]}" for n, r in sorted(result.failed.items()))
        problems = [f"node {n}: {line}" for n, r in sorted(result.failed.items())
                    if not r.startswith("no answer") for line in r.splitlines()]
        raise PushFailed(f"version {result.version} not staged ({who}); aborted, every node "
                         "keeps its running version", problems)
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
    try:
        cfg = validate(Path(args.file))
    except ConfigError as e:
        for line in e.lines():  # every problem, one line each
            print(f"{PROG}: config error: {line}", file=sys.stderr)
        return 2
    use_bus = bool(cfg.cluster.redis) and not args.direct
    try:
        urls, token, netns, redis_netns = _find_array(args, cfg, need_token=not use_bus)
    except (ConfigError, OSError, ValueError, KeyError) as e:
        print(f"{PROG}: cannot find the array: {e}", file=sys.stderr)
        return 2
    text = cfg.text
    try:
        if use_bus:
            names = [n.name for n in cfg.nodes]
            version, done = _in_netns(
                redis_netns, lambda: push_bus(cfg.cluster.redis, text, names, args.deadline))
        else:
            version, done = _in_netns(netns, lambda: push_direct(urls, token, text))
    except PushFailed as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        for line in e.problems:
            print(f"{PROG}: config error: {line}", file=sys.stderr)
        return 2 if e.problems else 1
    print(f"config version {version} committed on {', '.join(done)}")
    return 0


def _find_array(args: argparse.Namespace, cfg: Config, need_token: bool
                ) -> tuple[list[str], str, str | None, str | None]:
    """Admin URLs, token, the namespace to reach them from, and the config bus's namespace."""
    netns: str | None = None
    redis_netns: str | None = None
    token: str = args.token or ""
    if args.admin:
        urls = [u.rstrip("/") for u in args.admin]
    elif args.state:
        from dlba.admin.status_cli import admin_urls_from_state

        urls, state_token, netns = admin_urls_from_state(Path(args.state))
        token = token or state_token
        info_file = Path(args.state) / "array.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        if info.get("redis") and info.get("prefix") is not None:
            # The bus address (198.18.1.2) exists only inside the array's namespaces.
            redis_netns = f"{info['prefix']}redis"
    else:
        urls = urls_from_file(cfg)
    if need_token and not token:
        try:
            token = cfg.read_admin_token()
        except ConfigError as e:
            # The token file may live only on the nodes (a copy pushed from elsewhere).
            raise ConfigError(e.file, e.key, f"{e.reason} (give --token or --state)") from e
    return urls, token, netns, redis_netns
