"""Packets/s through the scheduler's namespace: eBPF vs AF_PACKET vs plain kernel IP routing.

Issue 3, "Figures to report from bench/". Topology (throwaway namespaces `dlbp<hex>-*`, built by
tests/array/test_dataplane_forwarding.build_topology): a bridge namespace is the switch; client,
scheduler (`sch`) and nodes (`n1`, `n2`, VIP on lo, arp_ignore) hang off it. The client floods
UDP to VIP:80 from many source ports; every bucket of the table belongs to n1, so every datagram
takes client -> bridge -> sch -> bridge -> n1 in each mode:

* ebpf      scheduler/dataplane_ebpf.py on sch's `front` (tc ingress, MAC rewrite, redirect)
* afpacket  scheduler/dataplane_afpacket.py (tc steal into a tap, Python, AF_PACKET send)
* routing   the baseline: no data plane, the VIP removed from sch, ip_forward=1 and a route
            VIP/32 via n1 (send_redirects off): same hops, the kernel's forwarding path
* direct    reference only (not a figure of the issue): the client's neighbour entry for the
            VIP is n1's MAC, the scheduler is skipped; used to subtract the rest of the path
            from the softirq cost (below)

The client's neighbour entry for the VIP is static (sch's MAC, n1's in `direct`), so ARP never
enters a measurement. Delivered = n1's UDP InDatagrams+NoPorts (nothing listens, n1 drops them
after the socket lookup), i.e. datagrams that reached n1's UDP layer intact.

Generator: a small C sender (gcc at bench time) with sendmmsg over 64 connected sockets (64
source ports), pinned to CPU 0; every run stops by itself at --duration or at a packet cap.
The AF_PACKET plane's process is pinned to CPU 1, so it has a core of its own.

CPU per 100k packets:
* afpacket: the data-plane process's utime+stime from /proc/<pid>/stat (all its threads). Its
  sends run the rest of the path (bridge, n1's stack) inline in its context, so this includes
  that too.
* ebpf, routing: the forwarding runs in softirq. This kernel has no IRQ_TIME_ACCOUNTING and no
  PMU (perf stat: <not supported>), so the cost is the tick-sampled softirq column of /proc/stat
  (all CPUs; HZ=250), per delivered packet, minus the same figure of the interleaved `direct`
  run: the scheduler namespace's share (its hop: sch's stack or BPF program, plus the extra
  bridge/veth pass that going through it costs). The whole-path softirq figures are reported too.

Runs are interleaved (ebpf, afpacket, routing, direct, ebpf, ...); each figure is the median
with min-max. Everything made is removed on exit, failure or SIGTERM (processes by PID).

Run as root:  .venv/bin/python -m bench.dataplane_pps [--duration S] [--runs N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.array.conftest import ensure_bpf_object
from tests.array.test_dataplane_forwarding import (
    BUCKETS,
    CLIENT,
    HOSTS,
    NODE_ORDER,
    PORT,
    VIP,
    Plane,
    build_topology,
    link_info,
    sh,
)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "dataplane_results.json"
MODES = ("ebpf", "afpacket", "routing", "direct")
SOURCE_PORTS = 64
SENDER_CPU = 0
PLANE_CPU = 1
CAP_PPS = 5_000_000  # packet cap per run: duration x this (a bound, far above what 2 cores do)
TICK = os.sysconf("SC_CLK_TCK")

SENDER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#define BATCH 32
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: src dst dport sport0 nports secs cap len cpu\n");
        return 2;
    }
    int dport = atoi(argv[3]), sport0 = atoi(argv[4]), nports = atoi(argv[5]);
    double secs = atof(argv[6]); long long cap = atoll(argv[7]);
    int len = atoi(argv[8]), cpu = atoi(argv[9]);
    if (cpu >= 0) {
        cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu, &s); sched_setaffinity(0, sizeof s, &s);
    }
    int *fds = calloc(nports, sizeof(int));
    for (int i = 0; i < nports; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(sport0 + i)};
        inet_pton(AF_INET, argv[1], &a.sin_addr);
        int one = 1;
        fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
        setsockopt(fds[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fds[i], (struct sockaddr *)&a, sizeof a)) { perror("bind"); return 1; }
        a.sin_port = htons(dport);
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        if (connect(fds[i], (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    }
    static char payload[1500];
    memset(payload, 'x', sizeof payload);
    struct iovec iov = {.iov_base = payload, .iov_len = len};
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int j = 0; j < BATCH; j++) {
        msgs[j].msg_hdr.msg_iov = &iov; msgs[j].msg_hdr.msg_iovlen = 1;
    }
    long long sent = 0, errors = 0;
    double t0 = now(), deadline = t0 + secs, t = t0;
    for (int k = 0; sent < cap && (t = now()) < deadline; k = (k + 1) % nports) {
        int n = cap - sent < BATCH ? (int)(cap - sent) : BATCH;
        int r = sendmmsg(fds[k], msgs, n, 0);
        if (r >= 0) { sent += r; continue; }
        errors++;
        if (errno != ENOBUFS && errno != EAGAIN && errno != ECONNREFUSED) break;
    }
    double elapsed = now() - t0;
    struct rusage ru; getrusage(RUSAGE_SELF, &ru);
    double cpus = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    cpus += ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"sent\": %lld, \"errors\": %lld, \"elapsed\": %.6f, \"cpu\": %.6f}\n",
           sent, errors, elapsed, cpus);
    return 0;
}
"""


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: Any) -> None:
    raise Interrupted(f"signal {signum}")


def compile_sender(workdir: Path) -> Path:
    src, exe = workdir / "sender.c", workdir / "sender"
    src.write_text(SENDER_C)
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("gcc missing: the UDP sender is compiled at bench time")
    sh(gcc, "-O2", "-o", str(exe), str(src), timeout=60)
    return exe


# -- counters -------------------------------------------------------------------------------


def ns_read(ns: str, path: str) -> str:
    return sh("ip", "netns", "exec", ns, "cat", path)


def udp_delivered(ns: str) -> int:
    """InDatagrams + NoPorts of the namespace's UDP MIB: datagrams its UDP layer accepted."""
    lines = [
        ln.split() for ln in ns_read(ns, "/proc/net/snmp").splitlines() if ln.startswith("Udp:")
    ]
    stats = dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))
    return stats["InDatagrams"] + stats["NoPorts"]


def softirq_ticks() -> int:
    with open("/proc/stat") as f:
        return int(f.readline().split()[7])  # cpu user nice system idle iowait irq softirq


def proc_cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)


def pin_process(pid: int, cpu: int) -> None:
    if cpu >= (os.cpu_count() or 1):
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def node_macs(ns: dict[str, str]) -> dict[int, bytes]:
    return {
        i: bytes.fromhex(link_info(ns[role], "front")["address"].replace(":", ""))
        for i, role in enumerate(NODE_ORDER)
    }


# -- modes ----------------------------------------------------------------------------------


@contextmanager
def routing_mode(ns: dict[str, str]) -> Iterator[None]:
    sch = ns["sch"]
    sh("ip", "-n", sch, "addr", "del", f"{VIP}/32", "dev", "front")
    try:
        sh(
            "ip",
            "netns",
            "exec",
            sch,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.front.send_redirects=0",
        )
        sh("ip", "-n", sch, "route", "replace", f"{VIP}/32", "via", HOSTS["n1"], "dev", "front")
        yield
    finally:
        sh("ip", "-n", sch, "route", "del", f"{VIP}/32")
        sh("ip", "netns", "exec", sch, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        sh("ip", "-n", sch, "addr", "add", f"{VIP}/32", "dev", "front")


@contextmanager
def plane_mode(ns: dict[str, str], kind: str, macs: dict[int, bytes]) -> Iterator[Plane]:
    plane = Plane(ns["sch"], kind, macs)
    try:
        want = {"ebpf": "EbpfDataPlane", "afpacket": "AfPacketDataPlane"}[kind]
        if plane.kind != want:
            raise RuntimeError(f"asked for {kind}, got {plane.kind}")
        plane.call("set_assignments", [1] * BUCKETS)  # every bucket: n1
        assert plane.proc.pid is not None
        pin_process(plane.proc.pid, PLANE_CPU)
        yield plane
    finally:
        plane.stop()


def set_client_neigh(ns: dict[str, str], mac: bytes) -> None:
    sh(
        "ip",
        "-n",
        ns["cl"],
        "neigh",
        "replace",
        VIP,
        "lladdr",
        mac.hex(":"),
        "dev",
        "eth0",
        "nud",
        "permanent",
    )


# -- one run --------------------------------------------------------------------------------


def flood(ns: dict[str, str], sender: Path, duration: float, length: int) -> dict[str, Any]:
    cap = int(duration * CAP_PPS)
    args = [
        str(sender),
        CLIENT,
        VIP,
        str(PORT),
        "20000",
        str(SOURCE_PORTS),
        str(duration),
        str(cap),
        str(length),
        str(SENDER_CPU),
    ]
    # `ip netns exec` execs the sender: this PID is the sender's.
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns["cl"], *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=duration + 15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    if proc.returncode != 0:
        raise RuntimeError(f"sender failed ({proc.returncode}): {err.strip()}")
    result: dict[str, Any] = json.loads(out)
    return result


def one_run(
    mode: str,
    ns: dict[str, str],
    macs: dict[int, bytes],
    sender: Path,
    duration: float,
    length: int,
) -> dict[str, Any]:
    def measure(cpu_pid: int | None) -> dict[str, Any]:
        rx0, sirq0 = udp_delivered(ns["n1"]), softirq_ticks()
        cpu0 = proc_cpu_ticks(cpu_pid) if cpu_pid else 0
        tx0 = link_info(ns["cl"], "eth0")["stats64"]["tx"]["packets"]
        res = flood(ns, sender, duration, length)
        time.sleep(0.2)  # let queued frames (tap, backlog) drain
        delivered = udp_delivered(ns["n1"]) - rx0
        offered = link_info(ns["cl"], "eth0")["stats64"]["tx"]["packets"] - tx0
        sirq = (softirq_ticks() - sirq0) / TICK
        proc_cpu = (proc_cpu_ticks(cpu_pid) - cpu0) / TICK if cpu_pid else None
        return {
            "mode": mode,
            "sent": res["sent"],
            "send_errors": res["errors"],
            "offered": offered,
            "elapsed_s": res["elapsed"],
            "delivered": delivered,
            "pps": delivered / res["elapsed"],
            "sender_cpu_s": res["cpu"],
            "softirq_s": sirq,
            "proc_cpu_s": proc_cpu,
        }

    if mode in ("ebpf", "afpacket"):
        set_client_neigh(ns, macs[0])
        with plane_mode(ns, mode, macs) as plane:
            r = measure(plane.proc.pid if mode == "afpacket" else None)
            c = plane.call("counters")
            r["plane_redirected"] = c.redirected
            r["plane_drops"] = c.drops
        return r
    if mode == "routing":
        set_client_neigh(ns, macs[0])
        with routing_mode(ns):
            return measure(None)
    set_client_neigh(ns, macs[1])  # direct: skip the scheduler
    return measure(None)


# -- figures --------------------------------------------------------------------------------


def figure(name: str, unit: str, values: list[float], note: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "figure": name,
        "unit": unit,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }
    if note:
        out["note"] = note
    return out


def figures(runs: list[dict[str, Any]], bpf_ns: float | None) -> list[dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = {m: [r for r in runs if r["mode"] == m] for m in MODES}
    n = min(len(v) for v in by.values())

    def pps(mode: str) -> list[float]:
        return [r["pps"] for r in by[mode][:n]]

    def per100k(r: dict[str, Any], key: str) -> float:
        return float(r[key]) / max(int(r["delivered"]), 1) * 1e5

    def ratio(mode: str) -> list[float]:  # run i of mode / run i of routing (interleaved pairs)
        return [a / b for a, b in zip(pps(mode), pps("routing"), strict=True)]

    def ratio_cpu(mode: str) -> list[float]:
        return [
            (a["delivered"] / a["sender_cpu_s"]) / (b["delivered"] / b["sender_cpu_s"])
            for a, b in zip(by[mode][:n], by["routing"][:n], strict=True)
        ]

    def sched_share(mode: str) -> list[float]:
        return [
            per100k(a, "sender_cpu_s") - per100k(d, "sender_cpu_s")
            for a, d in zip(by[mode][:n], by["direct"][:n], strict=True)
        ]

    share = (
        "the sender's CPU s (getrusage: its syscalls plus the softirq forwarding that runs "
        "inline in its context) per 100k delivered, minus the interleaved `direct` run's"
    )
    out = [
        figure("ebpf_pps", "packets/s", pps("ebpf")),
        figure("afpacket_pps", "packets/s", pps("afpacket")),
        figure("routing_pps", "packets/s", pps("routing")),
        figure("ebpf_ratio", "ebpf/routing", ratio("ebpf"), "target >= 0.9"),
        figure("afpacket_ratio", "afpacket/routing", ratio("afpacket"), "target >= 0.3"),
        figure("ebpf_cpu_per_100k", "CPU s", sched_share("ebpf"), share),
        figure(
            "afpacket_cpu_per_100k",
            "CPU s",
            [per100k(r, "proc_cpu_s") for r in by["afpacket"][:n]],
            "user+sys of the data-plane process (/proc/<pid>/stat); includes the inline "
            "delivery (bridge, n1) its sends trigger",
        ),
        figure("routing_cpu_per_100k", "CPU s", sched_share("routing"), share),
        figure(
            "ebpf_ratio_cpu",
            "ebpf/routing",
            ratio_cpu("ebpf"),
            "delivered per sender CPU-second, ebpf/routing: robust to other load on the box",
        ),
        figure(
            "afpacket_ratio_cpu",
            "afpacket/routing",
            [
                (a["delivered"] / max(a["proc_cpu_s"], 1e-9)) / (b["delivered"] / b["sender_cpu_s"])
                for a, b in zip(by["afpacket"][:n], by["routing"][:n], strict=True)
            ],
            "per CPU-second of each path's bottleneck (the Python process; the sender's core, "
            "which carries the whole routed path): the ratio with a core each on a quiet box",
        ),
        figure(
            "afpacket_pps_per_cpu_s",
            "packets per CPU-second",
            [r["delivered"] / max(r["proc_cpu_s"], 1e-9) for r in by["afpacket"][:n]],
            "what one whole core of the Python plane would carry (delivered / its user+sys)",
        ),
        figure("direct_pps", "packets/s", pps("direct"), "reference: client -> n1, no scheduler"),
        *[
            figure(
                f"{m}_path_cpu_per_100k",
                "CPU s",
                [per100k(r, "sender_cpu_s") for r in by[m][:n]],
                "whole path in the sender's context, not subtracted",
            )
            for m in ("ebpf", "routing", "direct")
        ],
    ]
    if bpf_ns is not None:
        out.append(
            {
                "figure": "bpf_ns_per_packet",
                "unit": "ns",
                "value": bpf_ns,
                "runs": 1,
                "note": "BPF_PROG_TEST_RUN, forward path, best of 3 rounds "
                "(bench/bpf_ns_per_packet.py); target <= 100",
            }
        )
    return out


def print_table(figs: list[dict[str, Any]]) -> None:
    print(f"{'figure':32s} {'median':>12s} {'min':>12s} {'max':>12s}  unit")
    for f in figs:
        med = f.get("median", f.get("value"))
        lo, hi = f.get("min", med), f.get("max", med)
        fmt = "{:12.0f}" if "pps" in f["figure"] else "{:12.4f}"
        print(f"{f['figure']:32s} {fmt.format(med)} {fmt.format(lo)} {fmt.format(hi)}  {f['unit']}")


# -- main -----------------------------------------------------------------------------------


def run_bench(
    duration: float, runs: int, length: int, bpf_repeat: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("run as root: namespaces, tc, BPF")
    ensure_bpf_object()
    suffix = secrets.token_hex(3)
    ns = {role: f"dlbp{suffix}-{role}" for role in ("sw", "cl", "sch", "n1", "n2")}
    results: list[dict[str, Any]] = []
    old_term = signal.signal(signal.SIGTERM, _on_signal)
    try:
        with tempfile.TemporaryDirectory(prefix="dlbp-") as tmp:
            sender = compile_sender(Path(tmp))
            build_topology(ns)
            macs = node_macs(ns)
            sh(
                "ip",
                "-n",
                ns["sch"],
                "neigh",
                "replace",
                HOSTS["n1"],
                "lladdr",
                macs[1].hex(":"),
                "dev",
                "front",
                "nud",
                "permanent",
            )
            for i in range(runs):
                for mode in MODES:
                    r = one_run(mode, ns, macs, sender, duration, length)
                    r["run"] = i
                    results.append(r)
                    log(
                        f"run {i} {mode:9s} {r['pps']:>10.0f} pkt/s delivered "
                        f"({r['offered'] / r['elapsed_s']:.0f} offered); CPU s: sender "
                        f"{r['sender_cpu_s']:.2f}, plane {r['proc_cpu_s']}, all softirq "
                        f"{r['softirq_s']:.2f}"
                    )
    finally:
        signal.signal(signal.SIGTERM, old_term)
        from pyroute2 import netns

        for name in ns.values():
            if name in netns.listnetns():
                netns.remove(name)
    bpf_ns = None
    if bpf_repeat > 0:
        from bench.bpf_ns_per_packet import FWD, measure

        bpf_ns = measure(bpf_repeat, 3)[FWD]
    figs = figures(results, bpf_ns)
    return {"figures": figs, "runs": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    ap.add_argument("--runs", type=int, default=5, help="runs per mode (interleaved)")
    ap.add_argument("--length", type=int, default=18, help="UDP payload bytes (18: 60-byte frames)")
    ap.add_argument(
        "--bpf-repeat",
        type=int,
        default=1_000_000,
        help="BPF_PROG_TEST_RUN repeat for bpf_ns_per_packet (0: skip)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="figures JSON")
    ap.add_argument("--runs-out", type=Path, default=None, help="also write every run's raw data")
    args = ap.parse_args(argv)
    res = run_bench(args.duration, args.runs, args.length, args.bpf_repeat)
    args.out.write_text(json.dumps(res["figures"], indent=1) + "\n")
    if args.runs_out:
        args.runs_out.write_text(json.dumps(res["runs"], indent=1) + "\n")
    print()
    print_table(res["figures"])
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
