"""Profile the DLBA node under wrk HTTP keepalive load with py-spy (issue 7, point 3).

Starts the bench's nginx back end and a DLBA node (--log-level WARNING, `[proxy] workers` as
bench.run does), drives `wrk` at GET /1k over keepalive connections, and records the node's
whole process tree with py-spy twice, under the same load:

* ``bench/profiles/node_http.speedscope.json``  -- open in https://www.speedscope.app
* ``bench/profiles/node_http.collapsed.txt``    -- folded stacks (flamegraph input)
* ``bench/profiles/node_http_top.txt``          -- a `py-spy top`-style table: own and total
  share per function, plus a breakdown by kind (httptools, transport writes, TLS, logging,
  our modules, event loop) computed from the folded stacks.

    python -m bench.profile [--duration 15] [--rate 250] [--no-native] [--path /1k] [--tls]

Needs py-spy in the venv (`.venv/bin/pip install py-spy`) and root (ptrace).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import proxies
from bench.proxies import HOST
from bench.run import STIME_REQ

HERE = Path(__file__).resolve().parent
OUT = HERE / "profiles"

# (kind, regex over "function (file)" of a frame): first match, innermost frame first.
KINDS = [
    ("logging", r"logging/|\blogging\b"),
    ("httptools parser", r"httptools|llhttp|parser\.pyx|HttpRequestParser|HttpResponseParser"),
    ("TLS (OpenSSL / sslproto)", r"libssl|libcrypto|sslproto|SSL_|ssl_|EVP_|ossl_|ecp_|bn_"),
    ("transport write (send)", r"UVStream_write|_write|__send|send\b|sendmsg|writev|__libc_send|"
                               r"uv__write|uv_try_write|_exec_write|try_write"),
    ("socket read (recv)", r"recv|uv__read|__libc_read|_on_read|readv"),
    ("epoll / loop", r"epoll|uv__io_poll|uv_run|run_forever|_run_once"),
]


OURS = re.compile(r"[(/](dlba|scheduler)/\w+")


def shrink(path: Path) -> None:
    """Merge stacks that differ only in line numbers or process ids (keeps the file small)."""
    merged: collections.Counter[str] = collections.Counter()
    for stack, n in folded(path):
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack if not re.match(r"0x[0-9a-f]+ ", f)]
        frames = [re.sub(r'^process \d+:"(.*?)"$', lambda m: "process " + (
            "worker" if "dlba.proxy.worker" in m.group(1) else "node"), f) for f in frames]
        merged[";".join(frames)] += n
    path.write_text("".join(f"{k} {v}\n" for k, v in merged.most_common()))


def folded(path: Path) -> list[tuple[list[str], int]]:
    rows = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            rows.append((stack.split(";"), int(n)))
    return rows


def _fn(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)" or "native_fn (lib.so)"
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    fn, file = m.groups()
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{fn} ({short})"


def kind_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        for kind, rx in KINDS:
            if re.search(rx, frame):
                return kind
        if OURS.search(frame):
            m = re.search(r"(dlba|scheduler)/([\w/]+)\.py", frame)
            return f"our Python: {m.group(1)}/{m.group(2)}.py" if m else "our Python"
    return "other (interpreter, asyncio, uvloop glue)"


def top_table(rows: list[tuple[list[str], int]], limit: int = 40) -> str:
    total = sum(n for _, n in rows) or 1
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    ours_own: collections.Counter[str] = collections.Counter()
    idle = 0
    for stack, n in rows:
        if not stack:
            continue
        own[_fn(stack[-1])] += n
        for f in {_fn(x) for x in stack}:
            incl[f] += n
        k = kind_of(stack)
        kinds[k] += n
        if k == "epoll / loop" and any("epoll" in x for x in stack[-2:]):
            idle += n
        # innermost frame of our own code: where our Python spends (self + callees)
        for frame in reversed(stack):
            if OURS.search(frame):
                ours_own[_fn(frame)] += n
                break
    lines = [f"samples: {total}  (py-spy, all threads of the node's process tree)", ""]
    lines.append("by kind (innermost frame that matches decides):")
    for k, n in kinds.most_common():
        lines.append(f"  {100 * n / total:6.1f}%  {k}")
    lines.append(f"  (of which inside epoll_pwait itself, waits included: "
                 f"{100 * idle / total:.1f}%)")
    lines += ["", "our code (innermost dlba/ frame of each sample = own time + C calls it made):"]
    for f, n in ours_own.most_common(20):
        lines.append(f"  {100 * n / total:6.1f}%  {f}")
    lines += ["", f"{'%Own':>7s} {'%Total':>7s}  function (file)"]
    for f, n in own.most_common(limit):
        lines.append(f"{100 * n / total:6.1f}% {100 * incl[f] / total:6.1f}%  {f}")
    lines += ["", "top inclusive:"]
    for f, n in incl.most_common(limit):
        lines.append(f"{100 * own[f] / total:6.1f}% {100 * n / total:6.1f}%  {f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--path", default="/1k")
    p.add_argument("--tls", action="store_true", help="profile HTTPS keepalive instead")
    p.add_argument("--handshakes", action="store_true",
                   help="profile full TLS handshakes instead (openssl s_time -new, as bench.run)")
    p.add_argument("--stime-procs", type=int, default=3)
    p.add_argument("--no-native", action="store_true")
    p.add_argument("--name", default="")
    p.add_argument("--analyse", action="store_true",
                   help="only recompute the _top.txt table from the saved folded stacks")
    a = p.parse_args(argv)
    spy = Path(sys.executable).with_name("py-spy")
    spy_cmd = str(spy) if spy.exists() else shutil.which("py-spy")
    if not spy_cmd:
        print("py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    name = a.name or ("node_handshakes" if a.handshakes else "node_https" if a.tls
                      else "node_http")
    OUT.mkdir(exist_ok=True)
    if a.analyse:
        top = OUT / f"{name}_top.txt"
        head = "".join(x for x in top.read_text().splitlines(True)[:3] if x.startswith("#"))
        table = top_table(folded(OUT / f"{name}.collapsed.txt"))
        top.write_text(head + "\n" + table)
        print(head + table)
        return 0
    work = Path(tempfile.mkdtemp(prefix="dlba-profile-"))
    certs = proxies.make_certs(work)
    be = proxies.start_backend(work, certs)
    node = proxies.start_dlba(work, certs, be.ports["http"], a.workers)
    scheme, port = ("https", node.ports["https"]) if a.tls else ("http", node.ports["http"])
    url = f"{scheme}://{HOST}:{port}{a.path}"
    if a.handshakes:
        load_argv = [["openssl", "s_time", "-connect", f"{HOST}:{node.ports['https_full']}",
                      "-new", "-www", STIME_REQ, "-time", str(a.duration + 4)]] * a.stime_procs
        load_desc = f"{a.stime_procs} x openssl s_time -new (full TLS 1.3 handshakes, GET /1k)"
    else:
        load_argv = [["wrk", "-t1", f"-c{a.conns}", f"-d{a.duration + 4}s", url]]
        load_desc = f"wrk -t1 -c{a.conns} {scheme} keepalive GET {a.path}"
    print("\n".join(node.notes))
    try:
        for fmt, dest, rate in (("speedscope", OUT / f"{name}.speedscope.json", min(a.rate, 100)),
                                ("raw", OUT / f"{name}.collapsed.txt", a.rate)):
            loads = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
                     for argv in load_argv]
            time.sleep(2)
            cmd = [spy_cmd, "record", "--pid", str(node.pid), "--subprocesses", "--rate",
                   str(rate), "--duration", str(a.duration), "--format", fmt, "-o", str(dest)]
            if not a.no_native:
                cmd.append("--native")
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=6 * a.duration + 60)
            if r.returncode != 0 and not a.no_native:
                print("py-spy --native failed, retrying without:", r.stderr[-300:])
                cmd.remove("--native")
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=6 * a.duration + 60)
            out = "".join(p.communicate(timeout=a.duration + 30)[0] for p in loads)
            if fmt == "raw":
                shrink(dest)
            rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
            conns = sum(int(m) for m in re.findall(r"(\d+) connections in", out)) // 2
            rate = rps.group(1) + " req/s" if rps else f"{conns / (a.duration + 4):.0f} conn/s"
            print(f"{fmt}: {dest} ({dest.stat().st_size // 1024} KiB); load under py-spy: "
                  f"{rate}")
        table = top_table(folded(OUT / f"{name}.collapsed.txt"))
        head = (f"# py-spy record --rate {a.rate} --duration {a.duration} --subprocesses"
                f"{'' if a.no_native else ' --native'} on `dlba node` "
                f"(--log-level WARNING; {'; '.join(node.notes)})\n"
                f"# load: {load_desc}, one nginx back end\n\n")
        (OUT / f"{name}_top.txt").write_text(head + table)
        print(head + table)
    finally:
        node.stop()
        be.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
