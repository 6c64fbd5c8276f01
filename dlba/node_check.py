"""`dlba node --config FILE --name NAME --check`: is this machine ready to run the node?

Checks what the node needs without starting it: the config (as `dlba config check --name`), the
ARP sysctls when the array has a VIP, the capabilities, the BPF object and the kernel when the
data plane is eBPF, the right to bind privileged ports. `decide` is the pure part (facts in,
one line per check out); `gather` reads the facts from this machine.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Bit numbers in /proc/PID/status CapEff (linux/capability.h).
CAPS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
        "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}
EBPF_MIN_KERNEL = (5, 4)  # the oldest LTS with everything the tc program uses
MEMLOCK_FREE_KERNEL = (5, 11)  # BPF memory is cgroup-accounted from 5.11: no memlock limit


@dataclass(frozen=True)
class Facts:
    """What the checks need to know about this machine and this config."""

    config_problems: tuple[str, ...]
    vip: str | None = None
    dataplane: str = "ebpf"
    # Interface -> (arp_ignore, arp_announce) as written, "all" included.
    arp: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    caps: frozenset[str] = frozenset()
    kernel: tuple[int, int] = (0, 0)
    bpf_object: str = ""
    bpf_object_exists: bool = False
    bpf_load_error: str | None = None  # None: loaded (or not tried because it cannot be)
    memlock_unlimited: bool = True
    low_ports: tuple[int, ...] = ()  # listen ports below ip_unprivileged_port_start


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    more: tuple[str, ...] = ()  # one line each (a config's problems)

    def lines(self) -> list[str]:
        return [f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}",
                *(f"     {m}" for m in self.more)]


def _arp_check(facts: Facts) -> Check:
    all_ignore, all_announce = facts.arp.get("all", (0, 0))
    bad = []
    for dev, (ignore, announce) in sorted(facts.arp.items()):
        if dev in ("all", "default", "lo"):
            continue
        # The kernel uses the larger of `all` and the interface's own value.
        eff_i, eff_a = max(all_ignore, ignore), max(all_announce, announce)
        if eff_i < 1 or eff_a < 2:
            bad.append(f"{dev} arp_ignore={eff_i} arp_announce={eff_a}")
    if bad:
        return Check("sysctl", False, "this kernel could answer ARP for the VIP "
                     f"{facts.vip} ({', '.join(bad)}): set net.ipv4.conf.all.arp_ignore=1 and "
                     "net.ipv4.conf.all.arp_announce=2 (deploy/sysctl.d/90-dlba.conf)")
    return Check("sysctl", True, "arp_ignore>=1, arp_announce>=2 on every interface")


def _missing_caps(facts: Facts) -> list[str]:
    need = ["CAP_NET_ADMIN", "CAP_NET_RAW"] if facts.vip else []
    missing = [c for c in need if c not in facts.caps]
    if facts.vip and facts.dataplane == "ebpf" and not facts.caps & {"CAP_BPF", "CAP_SYS_ADMIN"}:
        missing.append("CAP_BPF (or CAP_SYS_ADMIN)")
    if facts.low_ports and "CAP_NET_BIND_SERVICE" not in facts.caps:
        missing.append(f"CAP_NET_BIND_SERVICE (ports {', '.join(map(str, facts.low_ports))})")
    return missing


def _ebpf_checks(facts: Facts) -> list[Check]:
    out = []
    kernel = ".".join(map(str, facts.kernel))
    if facts.kernel < EBPF_MIN_KERNEL:
        out.append(Check("kernel", False, f"{kernel} is older than "
                         f"{'.'.join(map(str, EBPF_MIN_KERNEL))}, needed by the eBPF data plane "
                         "(or run with --dataplane afpacket)"))
    elif facts.kernel < MEMLOCK_FREE_KERNEL and not facts.memlock_unlimited:
        out.append(Check("kernel", False, f"{kernel} charges BPF maps to RLIMIT_MEMLOCK: set "
                         "LimitMEMLOCK=infinity"))
    else:
        out.append(Check("kernel", True, f"{kernel}"))
    if not facts.bpf_object_exists:
        out.append(Check("bpf", False, f"{facts.bpf_object} missing: run `make install` (clang) "
                         "or use --dataplane afpacket"))
    elif facts.bpf_load_error is not None:
        out.append(Check("bpf", False, f"{facts.bpf_object} does not load: "
                         f"{facts.bpf_load_error} (or use --dataplane afpacket)"))
    else:
        out.append(Check("bpf", True, f"{facts.bpf_object} loads"))
    return out


def decide(facts: Facts) -> list[Check]:
    """Every check, in order, with what is missing named in each failed one."""
    n = len(facts.config_problems)
    out = [Check("config", n == 0, f"{n} problem(s)" if n else "valid", facts.config_problems)]
    if facts.vip:
        out.append(_arp_check(facts))
    missing = _missing_caps(facts)
    out.append(Check("capabilities", not missing,
                     f"missing {', '.join(missing)}" if missing else "present"))
    if facts.vip and facts.dataplane == "ebpf":
        out += _ebpf_checks(facts)
    return out


# --- gathering the facts (I/O) --------------------------------------------------------------

def effective_caps(status: str) -> frozenset[str]:
    """The named capabilities set in a /proc/PID/status text's CapEff."""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            bits = int(line.split()[1], 16)
            return frozenset(n for n, b in CAPS.items() if bits >> b & 1)
    return frozenset()


def kernel_version(release: str) -> tuple[int, int]:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _arp_sysctls(proc_sys: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for d in sorted((proc_sys / "net/ipv4/conf").iterdir()):
        try:
            out[d.name] = (int((d / "arp_ignore").read_text()),
                           int((d / "arp_announce").read_text()))
        except (OSError, ValueError):
            continue
    return out


def _bpf_load_error(vip: str, buckets: int) -> str | None:
    """Load the object as the scheduler would (not attached to any interface), then drop it."""
    from scheduler.dataplane_ebpf import EbpfDataPlane

    try:
        EbpfDataPlane("lo", vip, buckets).close()
    except (OSError, ValueError) as e:
        return str(e)
    return None


def gather(config: str, name: str, dataplane: str) -> Facts:
    from dlba.config.check import check_file
    from dlba.config.node_files import load_node_config
    from scheduler.dataplane_ebpf import OBJECT_PATH

    problems = check_file(Path(config), name)
    lines = tuple(f"{p.file}: {p.key}: {p.reason}" for p in problems)
    caps = effective_caps(Path("/proc/self/status").read_text())
    kernel = kernel_version(os.uname().release)
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    facts = Facts(lines, dataplane=dataplane, caps=caps, kernel=kernel,
                  bpf_object=str(OBJECT_PATH), bpf_object_exists=OBJECT_PATH.exists(),
                  memlock_unlimited=soft == resource.RLIM_INFINITY)
    if problems:
        return facts
    cfg = load_node_config(config, name)
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    node = cfg.node(name)
    low = tuple(sorted({hp.port for hp in (*node.listen, *node.listen_tls) if hp.port < start}))
    vip = cfg.cluster.vip
    can_try_bpf = (facts.bpf_object_exists and bool(caps & {"CAP_BPF", "CAP_SYS_ADMIN"})
                   and kernel >= EBPF_MIN_KERNEL)
    bpf_error = (_bpf_load_error(vip, cfg.cluster.buckets)
                 if vip and dataplane == "ebpf" and can_try_bpf else None)
    if vip and dataplane == "ebpf" and facts.bpf_object_exists and not can_try_bpf:
        bpf_error = "not tried: no CAP_BPF/CAP_SYS_ADMIN or kernel too old"
    return Facts(lines, vip=vip, dataplane=dataplane,
                 arp=_arp_sysctls(Path("/proc/sys")) if vip else {}, caps=caps, kernel=kernel,
                 bpf_object=facts.bpf_object, bpf_object_exists=facts.bpf_object_exists,
                 bpf_load_error=bpf_error, memlock_unlimited=facts.memlock_unlimited,
                 low_ports=low)


def node_check_main(config: str, name: str, dataplane: str) -> int:
    """Print each check; exit 0 when all pass, 2 naming what is missing otherwise."""
    checks = decide(gather(config, name, dataplane))
    for c in checks:
        print("\n".join(c.lines()))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        print(f"dlba node --check: not ready: {', '.join(failed)}", file=sys.stderr)
        return 2
    print(f"dlba node --check: node {name} ready")
    return 0
