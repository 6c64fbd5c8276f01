"""Where the node's CPU goes per unit of a load (a full TLS handshake, an HTTP/2 request),
by library and by compiled function, from `perf` with DWARF call graphs (issue 7: how this
session's changes were found).

    python -m bench.perf_attribution [--load handshakes|h2|h2_1stream|h1_tls] [--duration 10]
                                     [--freq 997] [--workers 1]

Loads: `handshakes` (`openssl s_time -new`, 3 clients, per connection); `h2` (h2load, 4
connections x 100 streams, GET /1k, per request); `h2_1stream` (16 x 1); `h1_tls` (h2load
--h1, 16 keepalive HTTPS connections: the HTTP/1.1 path beside HTTP/2's). It records the
node's process tree with `perf record --call-graph dwarf` and prints:

* the share of each library (libcrypto, kernel, libpython, ...) and µs per unit;
* the node's own overhead (everything outside OpenSSL and the kernel) attributed to the
  innermost function of the compiled request path (mypyc's `CPyDef_*`) or of uvloop on the
  stack, which is where an avoidable cost is (a hidden exception, a copy, a timer) shows up;
* each compiled function's inclusive share (the samples with it anywhere on the stack).

Unlike py-spy (wall time, stops the process to sample) this counts CPU only and leaves the
load undisturbed. Needs `perf` (linux-perf), root, and h2load for the HTTP loads.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import proxies
from bench.run import s_time

TLS_AND_KERNEL = ("libcrypto.so.3", "libssl.so.3", "[kernel.kallsyms]")
FRAME = re.compile(r"^\s+[0-9a-f]+ (.*) \((.*)\)$")
CYTHON_PREFIX = re.compile(r"^__pyx_[a-z]+_6uvloop_4loop_(\d+)?")  # module and class lengths

Stack = list[tuple[str, str]]  # (symbol, library file name), innermost first


def read_stacks(text: str) -> list[Stack]:
    """`perf script -F comm,ip,sym,dso` output as stacks; inlined frames dropped."""
    stacks: list[Stack] = []
    cur: Stack | None = None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                stacks.append(cur)
            cur = None
        elif not line[0].isspace():
            cur = []
        elif cur is not None and (m := FRAME.match(line)) and m.group(2) != "inlined":
            cur.append((m.group(1), m.group(2).rsplit("/", 1)[-1]))
    if cur:
        stacks.append(cur)
    return [s for s in stacks if s]


def owner(stack: Stack) -> str:
    for sym, dso in stack:
        if "native__mypyc" in dso and sym.startswith("CPyDef_"):
            return sym.removeprefix("CPyDef_").replace("___", ".")
    for sym, dso in stack:
        if dso.startswith(("loop.cpython", "parser.cpython")):
            return f"{dso.split('.')[0]}: {CYTHON_PREFIX.sub('', sym)}"
    return f"({stack[0][1]}) {stack[0][0]}"


def report(stacks: list[Stack], conns: float, cpu_s: float, top: int,
           unit: str = "connection") -> str:
    us = 1e6 * cpu_s / conns / len(stacks)  # µs per unit that one sample stands for
    lines = [f"{len(stacks)} samples, {conns:.0f} {unit}s, "
             f"{1e6 * cpu_s / conns:.0f} µs CPU per {unit}", "", "by library:"]
    by_dso = collections.Counter(s[0][1] for s in stacks)
    for dso, n in by_dso.most_common(12):
        lines.append(f"  {100 * n / len(stacks):5.1f} %  {n * us:6.1f} µs  {dso}")
    lines += ["", "innermost symbols (any library):"]
    for (sym, dso), n in collections.Counter(s[0] for s in stacks).most_common(top):
        lines.append(f"  {100 * n / len(stacks):5.2f} %  {n * us:6.1f} µs  {sym} ({dso})")
    own = [s for s in stacks if s[0][1] not in TLS_AND_KERNEL]
    lines += ["", f"outside OpenSSL and the kernel ({100 * len(own) / len(stacks):.1f} %), by "
              "innermost compiled or uvloop function:"]
    for name, n in collections.Counter(owner(s) for s in own).most_common(top):
        lines.append(f"  {100 * n / len(stacks):5.2f} %  {n * us:6.1f} µs  {name}")
    lines += ["", "compiled functions, inclusive (anywhere on the stack):"]
    inclusive = collections.Counter(
        name for s in stacks for name in {sym.removeprefix("CPyDef_").replace("___", ".")
                                          for sym, dso in s if "native__mypyc" in dso
                                          and sym.startswith("CPyDef_")})
    for name, n in inclusive.most_common(top):
        lines.append(f"  {100 * n / len(stacks):5.2f} %  {n * us:6.1f} µs  {name}")
    return "\n".join(lines)


def run_load(load: str, node: proxies.Server, duration: float) -> tuple[float, str]:
    """(units done, unit name) of `duration` seconds of the load against the node."""
    if load == "handshakes":
        conns, _, _ = s_time(node.ports["https_full"], duration, 3)
        return conns, "connection"
    from bench.h2 import h2load

    conns, streams = {"h2": (4, 100), "h2_1stream": (16, 1), "h1_tls": (16, 1)}[load]
    if load == "h1_tls":
        out = subprocess.run(["h2load", "--h1", "-D", str(round(duration)), "-c", "16",
                              "-t", "1", f"https://{proxies.HOST}:{node.ports['https']}/1k"],
                             capture_output=True, text=True, timeout=duration + 60).stdout
        m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
        return float(m.group(1)) if m else 0.0, "request"
    done, _, _ = h2load(node.ports["h2"], duration, conns, streams)
    return done, "request"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf_attribution")
    p.add_argument("--load", choices=("handshakes", "h2", "h2_1stream", "h1_tls"),
                   default="handshakes")
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--freq", type=int, default=997)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--save", type=Path, help="also write perf script's text here")
    a = p.parse_args(argv)
    if shutil.which("perf") is None:
        print("perf is missing (apt-get install linux-perf)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="dlba-perf-"))
    certs = proxies.make_certs(work)
    be = proxies.start_backend(work, certs)
    node: proxies.Server | None = None
    data = work / "perf.data"
    try:
        node = proxies.start_dlba(work, certs, be.ports["http"], a.workers)
        pids = ",".join(str(x) for x in proxies.tree_pids(node.pid))
        rec = subprocess.Popen(["perf", "record", "-F", str(a.freq), "--call-graph",
                                "dwarf,16384", "-o", str(data), "-p", pids],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        u0, s0 = proxies.tree_times(node.pid)
        done, unit = run_load(a.load, node, a.duration)
        u1, s1 = proxies.tree_times(node.pid)
        rec.send_signal(2)
        rec.wait(timeout=120)
        text = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,ip,sym,dso"],
                              capture_output=True, text=True, timeout=900).stdout
        if a.save:
            a.save.write_text(text)
        print("\n".join(node.notes))
        print(report(read_stacks(text), done, (u1 - u0) + (s1 - s0), a.top, unit))
    finally:  # (a node that did not start leaves no back end behind either)
        if node is not None:
            node.stop()
        be.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
