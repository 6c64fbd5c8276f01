"""A/B of two (or more) source trees of the node on full TLS handshakes per CPU-second, beside
HAProxy with 2 threads, interleaved round by round (issue 7: how each change of the request
path was judged; the box drifts by ±10 % between runs, so only a same-run A/B says much).

    python -m bench.ab HEAD~3 HEAD [--rounds 6] [--workers 2] [--duration 5]
    python -m bench.ab old=/path/to/tree new=.          # NAME=PATH or a git revision

A revision is exported (`git archive`) to a temporary tree; every tree gets its own native
build (build_native.py) unless it has a current one, and the C ticket callback of this tree.
Each node runs with PYTHONPATH set to its tree. Prints every run and the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import proxies
from bench.handshake_cost import measure_rounds, print_medians
from bench.proxies import Server

ROOT = Path(__file__).resolve().parent.parent


def native_state(tree: Path) -> str:
    """"yes", or why the tree's package would run as Python."""
    code = "import dlba; print('yes' if dlba.NATIVE else dlba.NATIVE_PROBLEM)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tree)}, cwd="/", timeout=60)
    return (r.stdout.strip() or r.stderr.strip()[-200:]) if r.returncode == 0 else "import fails"


def prepare(spec: str, scratch: Path) -> tuple[str, Path]:
    """(name, tree) for NAME=PATH, an existing directory, or a git revision."""
    name, _, where = spec.rpartition("=")
    path = Path(where)
    if path.is_dir():
        return name or where, path.resolve()
    tree = scratch / (name or where).replace("/", "_").replace("~", "-")
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", where], capture_output=True,
                             check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=60)
    return name or where, tree


def build(tree: Path) -> str:
    ticket = ROOT / "dlba" / "_tls_ticket_cb.so"
    if ticket.exists() and not (tree / "dlba" / ticket.name).exists():
        shutil.copy2(ticket, tree / "dlba" / ticket.name)
    state = native_state(tree)
    if state != "yes" and (tree / "build_native.py").exists():
        subprocess.run([sys.executable, "build_native.py"], cwd=tree, capture_output=True,
                       timeout=900, check=False)
        state = native_state(tree)
    return state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab")
    p.add_argument("trees", nargs="+", help="NAME=PATH, a directory or a git revision")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stime-procs", type=int, default=3)
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dlba-ab-"))
    targets: dict[str, Server] = {}
    be = None
    try:
        trees = [prepare(spec, work / "trees") for spec in a.trees]
        for name, tree in trees:
            print(f"{name}: {tree} native={build(tree)}", flush=True)
        certs = proxies.make_certs(work)
        be = proxies.start_backend(work, certs)
        for name, tree in trees:
            os.environ["PYTHONPATH"] = str(tree)  # inherited by the node and its workers
            try:
                (work / f"n-{len(targets)}").mkdir()
                targets[name] = proxies.start_dlba(work / f"n-{len(targets)}", certs,
                                                   be.ports["http"], a.workers)
            finally:
                os.environ.pop("PYTHONPATH")
        (work / "h").mkdir()
        targets["haproxy t=2"] = proxies.start_haproxy(work / "h", certs, be.ports["http"], 2)
        print_medians(measure_rounds(targets, a.rounds, a.duration, a.stime_procs),
                      "haproxy t=2")
    finally:
        for s in targets.values():
            s.stop()
        if be is not None:
            be.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
