"""The eBPF data plane: scheduler/bpf/dlba_tc.o on the front interface's clsact ingress.

The maps are written with the bpf() syscall (through libbpf, scheduler/bpf_syscall.py) from this
process. Nothing is pinned: the process holds the map fds and the tc filter holds the program,
so close() (or the namespace going away) leaves nothing behind in a bpffs, and the
`ip netns exec` /sys remount trap does not apply. Layouts mirror scheduler/bpf/dlba_tc.h.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from scheduler import bpf_syscall as bpf
from scheduler.dataplane import (
    DataPlaneCounters,
    validate_cidrs,
    validate_mac,
    validate_node,
    validate_ports,
    validate_table,
    validate_vips,
)
from scheduler.frame_decision import MAX_NODES, NO_NODE, node_u32

OBJECT_PATH = Path(__file__).with_name("bpf") / "dlba_tc.o"
PROG_NAME = "dlba_ingress"
TC_HANDLE = 0xD1BA
TC_PRIORITY = 1

PORT_DEFAULT, PORT_BALANCED, PORT_PINNED = 0, 1, 2
C_DROP_ACL = MAX_NODES
C_DROP_PORT = MAX_NODES + 1
C_DROP_NO_NODE = MAX_NODES + 2
C_FRAGMENT = MAX_NODES + 3
C_REDIRECT = MAX_NODES + 4
C_PASS_SELF = MAX_NODES + 5
C_PASS_OTHER = MAX_NODES + 6
C_MALFORMED = MAX_NODES + 7
C_PULLED = MAX_NODES + 8
C_ICMP = MAX_NODES + 9
C_NUM = MAX_NODES + 10

VIP_ANY_PORT = 1
CONFIG = struct.Struct("=4sIII6sBxI")  # struct dlba_config
NODE = struct.Struct("=6sBx")  # struct dlba_node
LPM_KEY = struct.Struct("=I4s")  # struct dlba_lpm_key
U32 = struct.Struct("=I")
VIP_PORT = struct.Struct("=4sI")  # struct dlba_vip_port


def _u32_keys(n: int) -> bytes:
    return struct.pack(f"={n}I", *range(n))


class EbpfDataPlane:
    """Loads (verifies) the program at construction; install() attaches it."""

    def __init__(self, ifname: str, vip: str, buckets: int, obj_path: Path = OBJECT_PATH) -> None:
        if not obj_path.exists():
            raise FileNotFoundError(2, f"{obj_path} missing: run `make install` (clang)")
        self.ifname = ifname
        self.buckets = buckets
        self._main_vip = ipaddress.IPv4Address(vip).packed
        self._vip = self._main_vip  # 0.0.0.0 once a set_vips leaves the main VIP out
        self._vip_flags = VIP_ANY_PORT
        self._vips: dict[bytes, int] = {}  # the other VIPs in dlba_vips -> flags
        self._vip_pairs: set[bytes] = set()  # dlba_vip_ports keys
        self._self = NO_NODE
        self._own_mac = b"\0" * 6
        self._default = NO_NODE
        self._deny: set[bytes] = set()
        self._table: list[int | None] | None = None
        self._ifindex: int | None = None
        self._created_hook = False
        self._ncpu = bpf.possible_cpus()
        obj = bpf.BpfObject(str(obj_path))
        try:
            obj.set_max_entries("dlba_last_access", buckets)
            # The inner-map template decides the size every table swapped in must have.
            template = bpf.create_array("dlba_tbl_tmpl", 4, buckets)
            obj.set_inner_map_fd("dlba_table", os.dup(template.fd))
            template.close()
            obj.load()
            self.prog_fd = obj.prog_fd(PROG_NAME)
        except BaseException:
            obj.close()
            raise
        self._obj = obj
        fd = obj.map_fd
        self._config = bpf.Map(fd("dlba_config"), 4, CONFIG.size)
        self._nodes = bpf.Map(fd("dlba_nodes"), 4, NODE.size)
        self._ports = bpf.Map(fd("dlba_ports"), 4, 4)
        self._deny_map = bpf.Map(fd("dlba_deny"), LPM_KEY.size, 1)
        self._vips_map = bpf.Map(fd("dlba_vips"), 4, 4)
        self._vip_ports = bpf.Map(fd("dlba_vip_ports"), VIP_PORT.size, 1)
        self._outer = bpf.Map(fd("dlba_table"), 4, 4)
        self._last = bpf.Map(fd("dlba_last_access"), 4, 8)
        self._stats = bpf.Map(fd("dlba_stats"), 4, 8 * C_NUM)
        self._write_config()
        self.set_port_rules({80, 443}, {}, None)  # the contract's default: 80 and 443 balanced

    # -- control plane ----------------------------------------------------------------------

    def _write_config(self) -> None:
        value = CONFIG.pack(
            self._vip, self.buckets, self._self, self._default, self._own_mac, self._vip_flags,
            len(self._deny),
        )
        self._config.update(U32.pack(0), value)

    def install(self) -> None:
        self._ifindex = socket.if_nametoindex(self.ifname)
        self._created_hook = bpf.tc_attach_ingress(
            self._ifindex, self.prog_fd, TC_HANDLE, TC_PRIORITY
        )

    def set_nodes(self, macs: Mapping[int, bytes]) -> None:
        values = bytearray()
        for index in range(MAX_NODES):
            mac = macs.get(index)
            values += NODE.pack(validate_mac(mac), 1) if mac is not None else NODE.pack(b"", 0)
        for index in macs:
            validate_node(index)
        self._nodes.update_batch(_u32_keys(MAX_NODES), bytes(values), MAX_NODES)

    def set_self(self, index: int, own_mac: bytes) -> None:
        self._self = validate_node(index, "self index")
        self._own_mac = validate_mac(own_mac)
        self._write_config()

    def set_assignments(self, table: Sequence[int | None]) -> None:
        nodes = validate_table(table, self.buckets)
        if nodes == self._table:
            return
        # A complete new inner map, then one store into the outer slot: no packet ever sees a
        # half-written table (see the comment on dlba_table in dlba_tc.c).
        inner = bpf.create_array("dlba_tbl", 4, self.buckets)
        try:
            values = struct.pack(f"={self.buckets}I", *map(node_u32, nodes))
            inner.update_batch(_u32_keys(self.buckets), values, self.buckets)
            self._outer.update(U32.pack(0), U32.pack(inner.fd))
        finally:
            inner.close()  # the outer map holds its own reference now
        self._table = nodes

    def set_port_rules(
        self, balanced: Collection[int], pinned: Mapping[int, int], default_node: int | None
    ) -> None:
        validate_ports(balanced, pinned, default_node)
        rules = [PORT_DEFAULT] * 65536
        for port in balanced:
            rules[port] = PORT_BALANCED
        for port, node in pinned.items():
            rules[port] = PORT_PINNED + node
        # Each port's rule is one 4-byte element, so a port sees its old or its new rule.
        self._ports.update_batch(_u32_keys(65536), struct.pack("=65536I", *rules), 65536)
        self._default = node_u32(default_node)
        self._write_config()

    def set_deny(self, cidrs: Sequence[str]) -> None:
        keys = {
            LPM_KEY.pack(net.prefixlen, net.network_address.packed) for net in validate_cidrs(cidrs)
        }
        # Add before delete: a network listed before and after is never briefly open. The
        # count in the config (non-zero turns the trie lookup on) goes up before the adds and
        # down after the deletes.
        old = self._deny
        self._deny = keys | old
        self._write_config()
        for key in keys - old:
            self._deny_map.update(key, b"\1")
        for key in old - keys:
            self._deny_map.delete(key)
        self._deny = keys
        self._write_config()

    def set_vips(self, vips: Mapping[str, Collection[int] | None]) -> None:
        wanted = validate_vips(vips)
        pairs = {VIP_PORT.pack(a, p) for a, ports in wanted.items() for p in ports or ()}
        flags = {a: VIP_ANY_PORT if ports is None else 0 for a, ports in wanted.items()}
        others = {a: f for a, f in flags.items() if a != self._main_vip}
        # Ports before the VIPs that need them, deletes last: a port answered before and after
        # is never briefly dropped; each element is replaced whole.
        for key in pairs - self._vip_pairs:
            self._vip_ports.update(key, b"\1")
        for addr, f in others.items():
            if self._vips.get(addr) != f:
                self._vips_map.update(addr, U32.pack(f))
        main = flags.get(self._main_vip)
        self._vip = self._main_vip if main is not None else b"\0" * 4
        self._vip_flags = main or 0
        self._write_config()
        for addr in self._vips.keys() - others.keys():
            self._vips_map.delete(addr)
        for key in self._vip_pairs - pairs:
            self._vip_ports.delete(key)
        self._vips, self._vip_pairs = others, pairs

    # -- reading ------------------------------------------------------------------------------

    def last_access_ns(self) -> list[int]:
        raw = self._last.lookup_batch(self.buckets, 8 * self._ncpu)
        per_cpu = struct.unpack(f"={self.buckets * self._ncpu}Q", raw)
        n = self._ncpu
        return [max(per_cpu[i * n : (i + 1) * n]) for i in range(self.buckets)]

    def raw_counters(self) -> list[int]:
        """Counter slots summed over CPUs, indexed as in dlba_tc.h."""
        raw = self._stats.lookup(U32.pack(0), 8 * C_NUM * self._ncpu)
        assert raw is not None
        vals = struct.unpack(f"={C_NUM * self._ncpu}Q", raw)
        return [sum(vals[cpu * C_NUM + i] for cpu in range(self._ncpu)) for i in range(C_NUM)]

    def counters(self) -> DataPlaneCounters:
        c = self.raw_counters()
        return DataPlaneCounters(
            packets={i: c[i] for i in range(MAX_NODES) if c[i]},
            drops={"acl": c[C_DROP_ACL], "port": c[C_DROP_PORT], "no_node": c[C_DROP_NO_NODE]},
            redirected=c[C_REDIRECT],
            passed_self=c[C_PASS_SELF],
            passed_other=c[C_PASS_OTHER],
            fragments=c[C_FRAGMENT],
            malformed=c[C_MALFORMED],
            icmp_errors=c[C_ICMP],
        )

    def test_run(self, frame: bytes, repeat: int = 1) -> bpf.TestRunResult:
        """BPF_PROG_TEST_RUN on this loaded program (fixtures and the bench)."""
        return bpf.prog_test_run(self.prog_fd, frame, repeat)

    def close(self) -> None:
        if self._ifindex is not None:
            bpf.tc_detach_ingress(self._ifindex, TC_HANDLE, TC_PRIORITY, self._created_hook)
            self._ifindex = None
        self._obj.close()
