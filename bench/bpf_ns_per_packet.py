"""ns per packet of the eBPF scheduler program (scheduler/bpf/dlba_tc.c) under BPF_PROG_TEST_RUN.

The kernel runs the program `repeat` times on one skb and reports the mean time per run
(Katran's and Cilium's way of quoting per-packet cost). Target: <= 100 ns on the forward path.

Trap avoided here: in repeat mode the same skb is reused, so a program that rewrites the MACs
would see its own output from the second run on - our frame would then no longer be addressed
to the scheduler and take the cheap "not ours" exit. The bench gives the target node the
scheduler's own MAC, so the rewrite is idempotent and every run takes the full forward path;
the per-node counter is checked to prove it.

Run as root: `.venv/bin/python -m bench.bpf_ns_per_packet [--repeat N] [--json]`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys

from scheduler.dataplane_ebpf import EbpfDataPlane
from scheduler.frame_decision import bucket_of, build_frame

VIP = "198.18.0.100"
CLIENT = "198.18.0.2"
BUCKETS = 4096
OWN = b"\x02\0\0\0\0\x01"
FWD = "forward (balanced, 3-CIDR deny list)"
PREFIX_VIP = "198.18.5.77"  # inside the /24 of many_vips()


def many_vips() -> dict[str, frozenset[int] | None]:
    """4096 VIPs (seed 002): the cluster's on every port, a /24 and 3839 more /32s on 80/443."""
    vips: dict[str, frozenset[int] | None] = {VIP: None}
    web = frozenset({80, 443})
    vips.update((str(a), web) for a in ipaddress.IPv4Network("198.18.5.0/24"))
    vips.update((str(ipaddress.IPv4Address("10.64.0.0") + i), web) for i in range(4095 - 256))
    return vips


def measure(repeat: int = 1_000_000, rounds: int = 5) -> dict[str, float]:
    """Best-of-`rounds` mean ns per packet for each path through the program."""
    dp = EbpfDataPlane("lo", VIP, BUCKETS)
    try:
        dp.set_nodes({0: OWN, 1: OWN, 2: b"\x02\0\0\0\0\x03"})  # node 1 shares OWN: see above
        dp.set_self(0, OWN)
        table = [1] * BUCKETS
        src = int(ipaddress.IPv4Address(CLIENT))
        self_port = 40001
        table[bucket_of(src, self_port, BUCKETS)] = 0
        dp.set_assignments(table)
        dp.set_port_rules({80, 443}, {9000: 1}, None)
        dp.set_deny(["203.0.113.0/24", "192.0.2.0/24", "10.0.0.0/8"])
        cases = {
            FWD: (build_frame(CLIENT, VIP, 40000, 80, dst_mac=OWN), 1),
            "pass (owner self)": (build_frame(CLIENT, VIP, self_port, 80, dst_mac=OWN), 0),
            "forward (pinned port)": (build_frame(CLIENT, VIP, 40000, 9000, dst_mac=OWN), 1),
            "drop (deny ACL)": (build_frame("203.0.113.7", VIP, 1, 80, dst_mac=OWN), None),
            "pass (not the VIP)": (build_frame(CLIENT, "198.18.0.11", 1, 80, dst_mac=OWN), None),
        }
        results: dict[str, float] = {}
        last = [("", (b"", None)), ("4096", (b"", None)), ("prefix", (b"", None))]
        for name, (frame, node) in [*cases.items(), *last]:
            if not name:  # the common configuration, no deny list (no trie lookup)
                dp.set_deny([])
                name, (frame, node) = "forward (balanced), empty deny list", cases[FWD]
            elif name == "4096":  # many VIPs: the cluster's still one compare
                dp.set_vips(many_vips())
                name, (frame, node) = "forward, cluster VIP among 4096 VIPs", cases[FWD]
            elif name == "prefix":  # a VIP of a /24: a hash lookup and a port lookup
                name = "forward, a /24 VIP among 4096 VIPs"
                frame, node = build_frame(CLIENT, PREFIX_VIP, 40000, 80, dst_mac=OWN), 1
            best = None
            for _ in range(rounds):
                before = dp.raw_counters()[node] if node is not None else 0
                r = dp.test_run(frame, repeat)
                if node is not None and dp.raw_counters()[node] - before != repeat:
                    raise RuntimeError(f"{name}: not every run took the intended path")
                best = r.duration_ns if best is None else min(best, r.duration_ns)
            assert best is not None
            results[name] = float(best)
        return results
    finally:
        dp.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = measure(args.repeat, args.rounds)
    if args.json:
        print(json.dumps({"ns_per_packet": results, "target_ns": 100}))
    else:
        for name, ns in results.items():
            print(f"{name:42s} {ns:7.1f} ns/packet")
        verdict = "meets" if results[FWD] <= 100 else "misses"
        print(f"forward path {verdict} the 100 ns target (BPF_PROG_TEST_RUN, repeat {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
