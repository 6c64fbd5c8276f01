"""Chaos soak of the namespace array: mixed load and hostile clients while faults strike.

    sudo .venv/bin/python -m bench.chaos --duration 600 [--seed 1] [--idle 10000]

Brings up its own array (`dlba up --detach --redis` under a private prefix, a temporary state
folder, nodes with 2 proxy workers), runs bench.chaos_load and bench.chaos_hostile in its client
namespace, and strikes the faults of bench.chaos_schedule (deterministic from the seed): kill -9
of a back end (restarted 3 s later), of a proxy worker, of a whole node, of every process of the
scheduler node, the scheduler's `front` link down for 2 s, redis killed (restarted 3 s later),
a config push. A killed node is left to `dlba up`'s supervision for `--supervise-wait` seconds,
then restarted here if nothing did. Writes bench/chaos_results.json (figures: bench/README.md).
Everything it started is stopped at the end (`dlba down` on its own prefix and state).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import chaos_figures
from bench.chaos_array import REPO, ArrayControl, Monitor, dlba_cli
from bench.chaos_schedule import Fault, make_schedule, warmup_s
from dlba.local_array import config_gen, processes
from dlba.local_array.topology import make_plan

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
STEADY_NODE = 1  # never killed whole: its memory and descriptors are watched over the run


def chaos_config(nodes: int, backends: int, prefix: str, weight_b1: int = 100) -> str:
    """`dlba up`'s own config for this plan, with 2 proxy workers per node (so a worker can
    die alone) and back end 1's weight as given (what the config pushes change)."""
    text = config_gen.config_for_plan(make_plan(nodes, backends, prefix=prefix, redis=True))
    text = text.replace('address = "198.18.1.101:8080"\nweight = 100',
                        f'address = "198.18.1.101:8080"\nweight = {weight_b1}')
    return text + "\n[proxy]\nworkers = 2\n"


def spawn_in_netns(netns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    fd = os.open(processes.netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)

    def enter() -> None:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")

    try:
        with open(log, "ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=enter, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                    cwd=REPO)
    finally:
        os.close(fd)


class Soak:
    def __init__(self, arr: ArrayControl, mon: Monitor, t0: float, supervise_wait: float):
        self.arr, self.mon, self.t0 = arr, mon, t0
        self.supervise_wait = supervise_wait
        self.events: list[dict[str, Any]] = []
        self.repairs: list[threading.Thread] = []
        self.pushes = 0

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def later(self, delay: float, fn: Any, ev: dict[str, Any]) -> None:
        def run() -> None:
            time.sleep(delay)
            try:
                fn(ev)
            except Exception as exc:  # recorded, the soak goes on
                ev["repair_error"] = repr(exc)

        th = threading.Thread(target=run, daemon=True)
        th.start()
        self.repairs.append(th)

    def _restart_node(self, ev: dict[str, Any]) -> None:
        k, old = ev["node_index"], set(ev["pids"])
        end = time.monotonic() + self.supervise_wait
        while time.monotonic() < end:
            pid = self.arr.live_pid(f"n{k}")
            if pid is not None and pid not in old:
                ev.update(repaired=self.now(), restarted_by="dlba up", new_pid=pid)
                return
            time.sleep(0.1)
        ev.update(new_pid=self.arr.start_node(k), repaired=self.now(), restarted_by="chaos")

    def strike(self, f: Fault) -> dict[str, Any]:
        ev: dict[str, Any] = {"t": self.now(), "kind": f.kind, "planned_at": round(f.at, 3)}
        sched = self.mon.scheduler()
        n = self.arr.nodes
        if f.kind in ("kill_node", "kill_scheduler", "scheduler_link"):
            if f.kind == "kill_node":
                cands = [k for k in range(1, n + 1) if k not in (sched, STEADY_NODE)]
                k = cands[f.pick % len(cands)] if cands else None
            else:
                k = sched
            if k is None:
                ev["skipped"] = "no scheduler known" if f.kind != "kill_node" else "no victim"
                return ev
            ev.update(node=f"n{k}", node_index=k)
            if f.kind == "scheduler_link":
                self.arr.link(k, up=False)

                def link_up(e: dict[str, Any], k: int = k) -> None:
                    self.arr.link(k, up=True)
                    e.update(repaired=self.now())

                self.later(f.repair_after, link_up, ev)
            else:
                ev["pids"] = self.arr.kill_tree(f"n{k}")
                self.later(0.0, self._restart_node, ev)
        elif f.kind == "kill_worker":
            k = 1 + f.pick % n
            ev.update(node=f"n{k}", pid=self.arr.kill_one_child(f"n{k}", f.pick // n))
        elif f.kind == "kill_backend":
            j = 1 + f.pick % self.arr.backends
            ev.update(backend=f"b{j}", pids=self.arr.kill_tree(f"b{j}"))
            self.later(f.repair_after, lambda e: e.update(new_pid=self.arr.start_backend(j),
                                                          repaired=self.now()), ev)
        elif f.kind == "kill_redis":
            ev["pids"] = self.arr.kill_tree("redis")
            self.later(f.repair_after, lambda e: e.update(new_pid=self.arr.start_redis(),
                                                          repaired=self.now()), ev)
        elif f.kind == "config_push":
            self.pushes += 1
            path = self.arr.state / f"pushed-{self.pushes}.toml"
            path.write_text(chaos_config(n, self.arr.backends, self.arr.prefix,
                                         weight_b1=90 if self.pushes % 2 else 100))
            res = dlba_cli("config", "push", str(path), "--state", str(self.arr.state),
                           timeout=30)
            ev.update(rc=res.returncode, output=(res.stdout + res.stderr).strip()[-300:],
                      repaired=self.now())
        return ev

    def run(self, schedule: list[Fault]) -> None:
        for f in schedule:
            wait = self.t0 + f.at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ev = self.strike(f)
            self.events.append(ev)
            print(f"[{ev['t']:7.1f}s] {f.kind} {ev.get('node') or ev.get('backend') or ''} "
                  f"{ev.get('skipped', '')}", flush=True)


def log_problems(logs: Path) -> dict[str, Any]:
    """Tracebacks and error-level lines in the array's logs (names, counts, a few samples)."""
    out: dict[str, Any] = {}
    pat = re.compile(r"Traceback|\bERROR\b|level=error|CRITICAL")
    for log in sorted(logs.glob("*.log")):
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if pat.search(ln)]
        if lines:
            out[log.name] = {"count": len(lines), "first": lines[:3]}
    return out


def wait_ready(arr: ArrayControl, deadline: float) -> None:
    def ready() -> bool:
        roles = [(arr.try_admin(k, "/status") or {}) for k in range(1, arr.nodes + 1)]
        scheds = [r.get("node") for r in roles if r.get("role") == "scheduler"]
        return len(scheds) == 1 and all(r.get("scheduler") == scheds[0] for r in roles)

    processes.run_in_netns(arr.client_ns, lambda: processes.wait_until(
        ready, deadline, "one scheduler that every node follows"))


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    prefix = f"cx{secrets.token_hex(2)}-"
    state = tmp / "state"
    state.mkdir(parents=True)
    config = state / "chaos.toml"
    config.write_text(chaos_config(a.nodes, a.backends, prefix))
    up = dlba_cli("up", "--detach", "--prefix", prefix, "--state", str(state), "--redis",
                  "--nodes", str(a.nodes), "--backends", str(a.backends),
                  "--config", str(config))
    try:
        if up.returncode != 0:
            raise RuntimeError(f"dlba up failed:\n{up.stdout}\n{up.stderr}")
        arr = ArrayControl(prefix, state, config, a.nodes, a.backends,
                           (state / "admin.token").read_text().strip())
        wait_ready(arr, 30)
        return soak(a, arr)
    finally:
        down = dlba_cli("down", "--prefix", prefix, "--state", str(state))
        print(down.stdout.strip(), down.stderr.strip(), flush=True)
        # The state folder is temporary: its logs are kept for the report's log lines.
        keep = Path(a.keep_logs or tempfile.mkdtemp(prefix="dlba-chaos-logs-"))
        shutil.copytree(state / "logs", keep, dirs_exist_ok=True)
        for name in ("load.log", "hostile.log"):
            if (state / name).exists():
                shutil.copy(state / name, keep / name)
        print(f"logs kept in {keep}", flush=True)


def soak(a: argparse.Namespace, arr: ArrayControl) -> dict[str, Any]:
    t0 = time.monotonic() + 1.0
    warm = warmup_s(a.duration)
    schedule = make_schedule(a.duration, a.seed)
    mon = Monitor(arr, t0)
    mon.start()
    out_dir = arr.state
    py = [sys.executable, "-m"]
    common = ["--duration", str(a.duration), "--t0", repr(t0)]
    load = spawn_in_netns(arr.client_ns, [*py, "bench.chaos_load", *common, "--cafile",
                                          str(arr.state / "certs" / "ca.pem"), "--out",
                                          str(out_dir / "load.json"), "--retry-budget",
                                          str(a.retry_budget)], out_dir / "load.log")
    hostile = spawn_in_netns(arr.client_ns, [*py, "bench.chaos_hostile", *common, "--idle",
                                             str(a.idle), "--out", str(out_dir / "hostile.json")],
                             out_dir / "hostile.log")
    s = Soak(arr, mon, t0, a.supervise_wait)
    try:
        s.run(schedule)
        for p in (load, hostile):
            p.wait(timeout=max(0.0, t0 + a.duration - time.monotonic()) + 60)
    finally:
        for p in (load, hostile):  # only our own children, by PID
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            if p.poll() is None:
                p.kill()
        for th in s.repairs:
            th.join(30)
        mon.close()
    for name in ("load", "hostile"):
        if not (out_dir / f"{name}.json").exists():
            raise RuntimeError(f"bench.chaos_{name} wrote no results; its log:\n"
                               + processes.log_tail(out_dir / f"{name}.log", 30))
    load_rec = json.loads((out_dir / "load.json").read_text())
    hostile_rec = json.loads((out_dir / "hostile.json").read_text())
    monitor = {"roles": mon.roles, "tables": mon.tables, "samples": mon.samples}
    figs = chaos_figures.figures(load_rec, s.events, monitor, a.duration, warm)
    figs.update(
        t0_wall=round(time.time() - (time.monotonic() - t0), 3),
        duration_s=a.duration, seed=a.seed, idle_connections=a.idle, warmup_s=warm,
        schedule=s.events, planned=[f.as_dict() for f in schedule], hostile=hostile_rec,
        log_problems=log_problems(arr.state / "logs"),
        tool_crashes=load_rec.get("crashes", []), roles=mon.roles,
        samples=mon.samples[-3 * arr.nodes:],
        load_log_tail=processes.log_tail(out_dir / "load.log", 5),
        hostile_log_tail=processes.log_tail(out_dir / "hostile.log", 5),
    )
    return figs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    p.add_argument("--idle", type=int, default=10000, help="idle connections held (10000)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--backends", type=int, default=3)
    p.add_argument("--retry-budget", type=float, default=3.0,
                   help="seconds an idempotent request is retried on new connections")
    p.add_argument("--supervise-wait", type=float, default=4.0,
                   help="seconds left to `dlba up` to restart a killed node")
    p.add_argument("--keep-logs", help="folder for the array's logs (default: a new /tmp one)")
    p.add_argument("--out", default=str(REPO / "bench" / "chaos_results.json"))
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.chaos: the namespace array needs root", file=sys.stderr)
        return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the array
    with tempfile.TemporaryDirectory(prefix="dlba-chaos-") as d:
        result = run(a, Path(d))
    result["command"] = "python -m bench.chaos " + " ".join(argv or sys.argv[1:])
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    keys = ("requests", "lost_idempotent", "broken_transfers", "sessions_moved", "failovers",
            "max_gap_s", "rss_growth_mb", "fd_growth", "dual_scheduler_s")
    print(" ".join(f"{k}={result[k]}" for k in keys))
    print(f"results in {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
