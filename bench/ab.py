"""A/B of two (or more) source trees of the node on `make bench`'s throughput rows, per
CPU-second of the node's process tree, beside HAProxy with 2 threads as the drift reference,
interleaved round by round (the box drifts by ±10 % between runs, so only a same-run A/B says
much).

    python -m bench.ab 8962809 HEAD [--rounds 5] [--rows http_rps,tls_handshakes] [--duration 5]
    python -m bench.ab old=/path/to/tree new=.          # NAME=PATH or a git revision
    python -m bench.ab HEAD HEAD                        # A/A: the noise of this box right now

Rows: http_rps, https_rps, throughput_100k, tls_handshakes (full), tls_resumed, h2_rps (h2load
4 x 100 streams), h2_rps_1stream (16 x 1) (default all).
A revision is exported (`git archive`) into a cache folder keyed by its commit (`--cache`), so
the next run of the same commit reuses the tree and its native build; a directory is used as it
is. Every tree gets its own native build (build_native.py) unless it has a current one
(`--no-build`: run as found), and the C ticket callback of this tree. Each node runs with
PYTHONPATH set to its tree. Prints every run, then per row the medians and the per-round
ratios against the first tree and against HAProxy; `--out` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from bench import proxies
from bench.ab_rows import ROWS, Load, Sample, loadavg, parse_rows, run_rounds, write_close_lua
from bench.ab_stats import format_row, summarise_row, unique_names
from bench.proxies import Server

ROOT = Path(__file__).resolve().parent.parent
REF = "haproxy"
CACHE = Path(tempfile.gettempdir()) / "dlba-ab-trees"


def native_state(tree: Path) -> str:
    """"yes", or why the tree's package would run as Python."""
    code = "import dlba; print('yes' if dlba.NATIVE else dlba.NATIVE_PROBLEM)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tree)}, cwd="/", timeout=60)
    return (r.stdout.strip() or r.stderr.strip()[-200:]) if r.returncode == 0 else "import fails"


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def prepare(spec: str, cache: Path) -> tuple[str, Path, str]:
    """(name, tree, commit) for NAME=PATH, an existing directory, or a git revision; a
    revision is exported once into cache/<commit> (moved into place whole)."""
    name, _, where = spec.rpartition("=")
    path = Path(where)
    if path.is_dir():
        return name or where, path.resolve(), ""
    commit = git("rev-parse", "--verify", f"{where}^{{commit}}")
    tree = cache / commit
    if not tree.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=cache))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                                 capture_output=True, check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True, timeout=60)
        tmp.rename(tree)
    return name or where, tree, commit


def reuse_build(tree: Path, commit: str) -> None:
    """Copy the native build of a cached sibling whose dlba/ is the same git tree: the build
    depends on nothing else, so a commit that touched only bench/ or docs builds nothing."""
    mine = git("rev-parse", f"{commit}:dlba")
    for sib in tree.parent.iterdir():
        native = sib / "build" / "native"
        if sib == tree or not (native / "manifest.json").exists():
            continue
        try:
            same = git("rev-parse", f"{sib.name}:dlba") == mine
        except subprocess.CalledProcessError:
            continue
        if same:
            shutil.copytree(native, tree / "build" / "native", dirs_exist_ok=True)
            return


def build(tree: Path, allowed: bool, commit: str = "") -> str:
    # The TLS ticket callback built here, where the tree's layout loads it from (dlba/tls/ since
    # the package layout, dlba/ before).
    ticket = next((p for p in (ROOT / "dlba" / "tls" / "_ticket_cb.so",
                               ROOT / "dlba" / "_tls_ticket_cb.so") if p.exists()), None)
    dest = (tree / "dlba" / "tls" / "_ticket_cb.so" if (tree / "dlba" / "tls").is_dir()
            else tree / "dlba" / "_tls_ticket_cb.so")
    if allowed and ticket is not None and not dest.exists():
        shutil.copy2(ticket, dest)
    if allowed:
        build_nghttp2(tree)
    state = native_state(tree)
    if allowed and state != "yes" and commit:
        reuse_build(tree, commit)
        state = native_state(tree)
    if allowed and state != "yes" and (tree / "build_native.py").exists():
        subprocess.run([sys.executable, "build_native.py"], cwd=tree, capture_output=True,
                       timeout=1800, check=False)
        state = native_state(tree)
    return state


def build_nghttp2(tree: Path) -> None:
    """The tree's HTTP/2 engine (the Makefile's rule), if it has one and it is not built: the
    node offers h2 only with it, and the h2 rows need it."""
    src = sorted((tree / "dlba" / "proxy").glob("nghttp2_*.c"))
    so = tree / "dlba" / "proxy" / ("_nghttp2" + str(sysconfig.get_config_var("EXT_SUFFIX")))
    if not src or so.exists():
        return
    subprocess.run(["clang", "-O2", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}",
                    "-o", str(so), *map(str, src), "-lnghttp2"], capture_output=True,
                   timeout=300, check=True)


def start_targets(trees: list[tuple[str, Path]], work: Path, workers: int,
                  targets: dict[str, Server]) -> None:
    """One node per tree, then HAProxy; filled into `targets` as they start (so a failure
    still stops the ones already running)."""
    certs = proxies.make_certs(work)
    be = proxies.start_backend(work, certs)
    targets["_backend"] = be
    for i, (name, tree) in enumerate(trees):
        os.environ["PYTHONPATH"] = str(tree)  # inherited by the node and its workers
        try:
            (work / f"n-{i}").mkdir()
            targets[name] = proxies.start_dlba(work / f"n-{i}", certs, be.ports["http"], workers)
        finally:
            os.environ.pop("PYTHONPATH")
    (work / "h").mkdir()
    targets[REF] = proxies.start_haproxy(work / "h", certs, be.ports["http"], 2)


def results(samples: dict[str, dict[str, list[Sample]]], names: list[str]) -> list[dict[str, Any]]:
    out = []
    for rname, by_target in samples.items():
        runs = {t: [s.per_cpu for s in ss] for t, ss in by_target.items()}
        e: dict[str, Any] = {"row": rname, "unit": f"{ROWS[rname].unit}/CPU-s",
                             **summarise_row(runs, names, REF)}
        e["runs"] = {t: [round(x, 2) for x in xs] for t, xs in runs.items()}
        e["rate_per_s"] = {t: [round(s.work / s.wall, 2) for s in ss]
                           for t, ss in by_target.items()}
        out.append(e)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("trees", nargs="+", help="NAME=PATH, a directory or a git revision")
    p.add_argument("--rows", default="all", help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=5, help="seconds per row and target")
    p.add_argument("--workers", type=int, default=2, help="[proxy] workers of each node")
    p.add_argument("--conns", type=int, default=50, help="wrk connections")
    p.add_argument("--stime-procs", type=int, default=3)
    p.add_argument("--pause", type=float, default=0.5, help="seconds between runs")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of untimed load per row and target first (0: none)")
    p.add_argument("--wait-load", type=float, default=0.0, metavar="L",
                   help="before each round, wait (up to 2 min) for a 1-min load average < L")
    p.add_argument("--cache", type=Path, default=CACHE, help="exported revisions, by commit")
    p.add_argument("--no-build", action="store_true", help="run each tree as found")
    p.add_argument("--out", type=Path, help="write the figures as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        rows = parse_rows(a.rows)
    except ValueError as err:
        print(f"bench.ab: {err}", file=sys.stderr)
        return 2
    if proxies.tools_missing():
        print(f"bench.ab: missing {proxies.tools_missing()} (make bench installs them)",
              file=sys.stderr)
        return 2
    # The servers run in their own sessions and a build in a child: on SIGTERM unwind too, so
    # `finally` stops them (subprocess.run kills its child when interrupted).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="dlba-ab-"))
    targets: dict[str, Server] = {}
    try:
        prepared = [prepare(spec, a.cache) for spec in a.trees]
        names = unique_names([n for n, _, _ in prepared])
        trees: dict[str, dict[str, str]] = {}
        built: dict[Path, str] = {}  # an A/A run shares one tree and its build
        for name, (_, tree, commit) in zip(names, prepared, strict=True):
            if tree not in built:
                built[tree] = build(tree, not a.no_build, commit)
            state = built[tree]
            trees[name] = {"path": str(tree), "commit": commit, "native": state}
            print(f"{name}: {tree} {commit[:12]} native={state}", flush=True)
        start_targets([(n, Path(trees[n]["path"])) for n in names], work, a.workers, targets)
        measured = {k: v for k, v in targets.items() if k != "_backend"}
        load0 = loadavg()
        ld = Load(a.duration, a.conns, a.stime_procs, write_close_lua(work))
        samples, loads = run_rounds(measured, rows, a.rounds, ld, a.pause, a.wait_load,
                                    a.warmup)
        res = results(samples, names)
    finally:
        for s in targets.values():
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    load1 = loadavg()
    print(f"\nloadavg at start {load0}, at the end {load1}; medians over {a.rounds} rounds of "
          f"{a.duration:g} s per row and target; work per CPU-second of each process tree\n")
    for e in res:
        print("\n".join(format_row(e["row"], e["unit"], e, names, REF)))
    if len(names) > 1 and len(set(trees[n]["path"] for n in names)) == 1:
        print("\nA/A run: the ratios above are this box's noise; an A/B difference inside their "
              "min-max is not a difference.")
    else:
        print("\nTo judge the noise, run the A/A `python -m bench.ab NEW NEW` at a similar load.")
    if a.out is not None:
        a.out.write_text(json.dumps({
            "trees": trees, "reference": f"{REF} nbthread 2", "rounds": a.rounds,
            "duration_s": a.duration, "workers": a.workers, "rows": res,
            "loadavg": {"start": load0, "end": load1, "rounds": loads}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
