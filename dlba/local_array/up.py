"""`dlba up` and `dlba down`: a whole array on this machine, in network namespaces.

With root: build the contract's topology, start a demo back end per back-end namespace and
a `dlba node` per node namespace, wait until each answers, print the URLs, run until
SIGINT/SIGTERM, remove everything. Without root: one node on loopback. `--detach` leaves
the array running (for tests and scripts); `dlba down` removes it or a crashed run's rest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

from dlba.local_array import config_gen, netns_builder, processes, running, supervisor
from dlba.local_array.config_gen import BackendEntry, NodeEntry, StatePaths
from dlba.local_array.down import down_main, stop_processes
from dlba.local_array.topology import (
    ADMIN_PORT,
    BACKEND_PORT,
    DEFAULT_PREFIX,
    REDIS_ADDRESS,
    REDIS_PORT,
    Plan,
    make_plan,
)

START_DEADLINE_S = 30.0


def node_command(config: Path, name: str) -> list[str]:
    # sys.executable: the interpreter running `dlba up` (the venv's), whatever PATH says.
    return [sys.executable, "-m", "dlba", "node", "--config", str(config), "--name", name]


def backend_command(name: str, listen: str) -> list[str]:
    return [sys.executable, "-m", "dlba", "demo-backend", "--name", name, "--listen", listen]


def redis_command(state: StatePaths) -> list[str]:
    data = state.root / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # No persistence: the bus holds only what the nodes push while the array runs.
    return [
        "redis-server", "--bind", REDIS_ADDRESS, "--port", str(REDIS_PORT),
        "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", str(data),
    ]  # fmt: skip


def _parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--state", default="./run", help="state folder (default ./run)")
    # Tests build private arrays under another prefix next to a user's `dlba-` array.
    p.add_argument("--prefix", default=None, help=argparse.SUPPRESS)
    return p


def _up_parser() -> argparse.ArgumentParser:
    p = _parser("dlba up", "Run a local array on this machine: nodes, demo back ends and a "
                "client, each in its own network namespace, sharing one VIP.")
    p.add_argument("--config", help="run the nodes with this config instead of a generated one")
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--backends", type=int, default=3, help="number of demo back ends (default 3)")
    p.add_argument("--redis", action="store_true", help="start redis-server as the config bus")
    p.add_argument("--spare-nodes", type=int, default=0, metavar="N",
                   help="also build N node namespaces with no node in them: nodes to add by "
                   "`dlba config push` (start one with `ip netns exec dlba-nK dlba node`)")
    p.add_argument("--detach", action="store_true", help="start, print, exit; stop with dlba down")
    p.add_argument(
        "--host-access",
        action="store_true",
        help="give the front bridge 198.18.0.1 so this host's browser reaches the dashboard",
    )
    return p


class _UsageError(Exception):
    pass


def _user_config(path: str) -> tuple[Path, list[str], Path | None]:
    """(absolute path, node names, token file) of a user's --config, read with tomllib."""
    cfg = Path(path).resolve()
    try:
        data = tomllib.loads(cfg.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise _UsageError(f"{cfg}: cannot read: {exc}") from None
    names = [str(n.get("name", "")) for n in data.get("nodes", [])]
    if not names or not all(names):
        raise _UsageError(f"{cfg}: nodes: at least one [[nodes]] with a name is needed")
    token = data.get("admin", {}).get("token_file")
    return cfg, names, (cfg.parent / token) if token else None


def _wait_healthz(host: str, netns: str | None, watch: list[processes.Started]) -> None:
    processes.wait_until(
        lambda: processes.http_status(host, ADMIN_PORT, "/healthz", netns) == 200,
        START_DEADLINE_S,
        f"http://{host}:{ADMIN_PORT}/healthz" + (f" in {netns}" if netns else ""),
        watch,
    )


def _live_recorded(state: StatePaths) -> list[str]:
    return running.live_processes(state.root)


def _stop_all(state: StatePaths, prefix: str | None) -> netns_builder.Removed:
    stop_processes(state)
    return netns_builder.teardown(prefix) if prefix else netns_builder.Removed()


def _supervise_until_signal(state: StatePaths) -> None:
    """Restart dead nodes until SIGINT/SIGTERM/SIGHUP (a KeyboardInterrupt from _signals()),
    or until `dlba down` from elsewhere removed the array."""
    supervisor.setup_logging()
    sup = supervisor.for_state(state.root)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(supervisor.POLL_S)
            try:
                if not sup.step():
                    return
            except Exception:  # supervision must not end the array
                supervisor.events.exception("event=supervisor_error")


def _keep_running(detach: bool, state: StatePaths) -> None:
    """Detached: leave a supervisor process behind (recorded, so `dlba down` stops it first);
    otherwise supervise the nodes from here until a signal."""
    if detach:
        processes.start(supervisor.SUPERVISOR, supervisor.command(state.root), state.root)
    else:
        _supervise_until_signal(state)


def _node_commands(
    config: Path, names: list[str], netns: list[str | None]
) -> list[supervisor.Supervised]:
    """What `up` starts each node with, recorded so the supervisor restarts it the same way."""
    return [supervisor.Supervised(n, tuple(node_command(config, n)), ns)
            for n, ns in zip(names, netns, strict=True)]  # fmt: skip


def _foreign_owner(state: StatePaths, prefix: str) -> str | None:
    """The other state folder whose array runs under `prefix`, if any (never ours to remove)."""
    found = netns_builder.leftovers(prefix)
    owner = netns_builder.owner(prefix)
    if found.processes and owner is not None and owner != str(state.root):
        return owner
    return None


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM and SIGHUP act like Ctrl-C while `up` runs: a KeyboardInterrupt that the
    `finally` blocks turn into a clean teardown, instead of the default action leaving the
    namespaces behind. Restored on exit, so a caller (a test) keeps its own handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    owner = os.getpid()

    def interrupt(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            # A fork of this process (pyroute2 does its namespace work in forked helpers
            # and stops them with SIGTERM): it must die, not unwind into our code and go
            # on running a copy of `up` that tears down the array.
            os._exit(128 + signum)
        raise KeyboardInterrupt

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, interrupt) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _banner(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


def _start_processes(plan: Plan, state: StatePaths, commands: list[supervisor.Supervised]) -> None:
    """redis, the back ends, then the nodes, each waited for (a process that dies says so)."""
    started: list[processes.Started] = []
    if plan.redis:
        r = processes.start("redis", redis_command(state), state.root, plan.redis_ns)
        started.append(r)
        processes.wait_for_port(REDIS_ADDRESS, REDIS_PORT, plan.redis_ns, START_DEADLINE_S, [r])
    for j in range(1, plan.backends + 1):
        name = plan.backend_name(j)
        cmd = backend_command(name, plan.backend_endpoint(j))
        started.append(processes.start(name, cmd, state.root, plan.backend_ns(j)))
    for j in range(1, plan.backends + 1):
        # Checked from node 1's namespace: proves the back-end network, not just the server.
        processes.wait_for_port(plan.backend_address(j), BACKEND_PORT, plan.node_ns(1),
                                START_DEADLINE_S, started)  # fmt: skip
    for node in commands:
        started.append(processes.start(node.name, node.argv, state.root, node.netns))
    for k in range(1, plan.nodes + 1):
        _wait_healthz(plan.node_front(k), plan.client_ns, started)


def _print_banner(plan: Plan, state: StatePaths, token: str, detach: bool) -> None:
    ca = state.certs / "ca.pem"
    curl = f"ip netns exec {plan.client_ns} curl"
    _banner([
        f"DLBA array up: {_count(plan.nodes, 'node')}, {_count(plan.backends, 'back end')}"
        + (", redis" if plan.redis else "") + f" (state {state.root})",
        f"  VIP        http://{plan.vip}/   https://{plan.vip}/",
        f"  dashboard  {plan.admin_url(1)}?token={token}"
        + ("" if plan.host_address else "   (from this host: add --host-access)"),
        f"  try        {curl} -s http://{plan.vip}/whoami",
        f"             {curl} -s --cacert {ca} https://{plan.vip}/whoami",
        f"  logs       {state.logs}/",
        "dlba down stops it." if detach else "Ctrl-C stops and removes the array.",
    ])  # fmt: skip


def _up_netns(args: argparse.Namespace, state: StatePaths) -> int:
    if _live_recorded(state):
        print(f"dlba up: an array is already running from {state.root}; run dlba down first")
        return 2
    foreign = _foreign_owner(state, args.prefix)
    if foreign:
        print(f"dlba up: an array with prefix {args.prefix} is running from {foreign}; "
              f"run dlba down --state {foreign} first")
        return 2
    found = netns_builder.leftovers(args.prefix)
    if found:
        print(f"dlba up: removing what an earlier run left ({found.summary()})")
        _stop_all(state, args.prefix)

    user_token: Path | None = None
    if args.config:
        config, names, user_token = _user_config(args.config)
        plan = make_plan(len(names), args.backends, prefix=args.prefix, redis=args.redis,
                         host_access=args.host_access, spare_nodes=args.spare_nodes)  # fmt: skip
    else:
        plan = make_plan(args.nodes, args.backends, prefix=args.prefix, redis=args.redis,
                         host_access=args.host_access, spare_nodes=args.spare_nodes)  # fmt: skip
        names = [plan.node_name(k) for k in range(1, plan.nodes + 1)]
        config = state.config
    cert_names, cert_ips = config_gen.cert_subjects(plan)
    config_gen.write_state(state, config_gen.config_for_plan(plan), cert_names, cert_ips)
    node_ns: list[str | None] = [plan.node_ns(k) for k in range(1, len(names) + 1)]
    commands = _node_commands(config, names, node_ns)
    state.array_file.write_text(json.dumps({
        "mode": "netns", "prefix": plan.prefix, "nodes": names, "backends": plan.backends,
        "redis": plan.redis, "config": str(config),
        "admin": [f"http://{plan.node_front(k)}:{ADMIN_PORT}" for k in range(1, plan.nodes + 1)],
        # The admin addresses exist only inside the namespaces: `dlba status` connects from
        # this one (processes.netns_socket), not from the host.
        "client_netns": plan.client_ns,
        "token_file": str(user_token or state.token),
        "node_commands": [supervisor.record_of(c) for c in commands],
    }) + "\n")  # fmt: skip

    netns_builder.build(plan, owner=str(state.root))
    detached = False
    try:
        _start_processes(plan, state, commands)
        _print_banner(plan, state, (user_token or state.token).read_text().strip(), args.detach)
        _keep_running(args.detach, state)
        if args.detach:
            detached = True
            return 0
        print("dlba up: stopping", flush=True)
        return 0
    finally:
        if not detached:
            _stop_all(state, plan.prefix)


def _free_port(preferred: int) -> int:
    """`preferred` if it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def _up_loopback(args: argparse.Namespace, state: StatePaths) -> int:
    print("dlba up: network namespaces need root; running one node on loopback instead "
          "(run as root for the whole array)", flush=True)  # fmt: skip
    if _live_recorded(state):
        print(f"dlba up: an array is already running from {state.root}; run dlba down first")
        return 2
    http, tls, admin = _free_port(8000), _free_port(8443), _free_port(ADMIN_PORT)
    ports = [_free_port(18080 + j) for j in range(1, args.backends + 1)]
    node = NodeEntry("n1", "127.0.0.1", (f"127.0.0.1:{http}",), (f"127.0.0.1:{tls}",))
    backends = [BackendEntry(j, f"127.0.0.1:{p}") for j, p in enumerate(ports, start=1)]
    text = config_gen.render_config([node], backends, vip=None,
                                    admin_listen=f"127.0.0.1:{admin}")  # fmt: skip
    config_gen.write_state(state, text, *config_gen.cert_subjects(None))
    config = Path(args.config).resolve() if args.config else state.config
    commands = _node_commands(config, ["n1"], [None])
    state.array_file.write_text(json.dumps({
        "mode": "loopback", "prefix": None, "nodes": ["n1"], "backends": len(ports),
        "config": str(config), "admin": [f"http://127.0.0.1:{admin}"],
        "client_netns": None, "token_file": str(state.token),
        "node_commands": [supervisor.record_of(c) for c in commands],
    }) + "\n")  # fmt: skip
    detached = False
    try:
        started = [
            processes.start(f"b{j}", backend_command(f"b{j}", f"127.0.0.1:{p}"), state.root)
            for j, p in enumerate(ports, start=1)
        ]
        for p in ports:
            processes.wait_for_port("127.0.0.1", p, None, START_DEADLINE_S, started)
        started.append(processes.start("n1", commands[0].argv, state.root))
        _wait_healthz("127.0.0.1", None, started)
        token = config_gen.read_token(state)
        _banner([
            f"DLBA node up on loopback in front of {len(ports)} back ends "
            f"({', '.join(f'127.0.0.1:{p}' for p in ports)}; state {state.root})",
            f"  HTTP       http://127.0.0.1:{http}/   https://127.0.0.1:{tls}/",
            f"  dashboard  http://127.0.0.1:{admin}/?token={token}",
            f"  try        curl -s http://127.0.0.1:{http}/whoami",
            "dlba down stops it." if args.detach else "Ctrl-C stops it.",
        ])  # fmt: skip
        _keep_running(args.detach, state)
        if args.detach:
            detached = True
            return 0
        return 0
    finally:
        if not detached:
            _stop_all(state, None)


def up_main(argv: list[str]) -> int:
    args = _up_parser().parse_args(argv)
    args.prefix = args.prefix or DEFAULT_PREFIX
    state = StatePaths(Path(args.state).resolve())
    try:
        with _signals():
            if os.geteuid() != 0:
                return _up_loopback(args, state)
            return _up_netns(args, state)
    except KeyboardInterrupt:
        print("dlba up: interrupted while starting; removed what was made", file=sys.stderr)
        return 130
    except (_UsageError, ValueError) as exc:
        print(f"dlba up: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError, FileExistsError, OSError) as exc:
        print(f"dlba up: {exc}", file=sys.stderr)
        return 1


__all__ = ["down_main", "up_main"]
