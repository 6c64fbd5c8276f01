"""The scheduler's routing decision for one Ethernet frame, as pure code (no I/O).

This is the Route/Load Balance Pkts module of patent 003 (Fig. 9, 906) over the Client IP Hash
Table (Fig. 4). scheduler/bpf/dlba_tc.c implements the very same decision in the kernel; the
AF_PACKET fallback calls `decide` per frame, and tests/array/test_bpf_prog.py checks the eBPF
program against this module frame by frame. Read dlba_tc.c's header comment for the order of
checks and the reasoning on fragments and ICMP errors.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

MAX_NODES = 64  # DLBA_MAX_NODES in dlba_tc.h
NO_NODE = 0xFFFFFFFF  # "no node" in the BPF maps' u32 entries (None everywhere else)
ETH_HLEN = 14
ETH_P_IP = 0x0800
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
ICMP_DEST_UNREACH = 3  # frag-needed (PMTU discovery) is its code 4
ICMP_HLEN = 8


def node_u32(node: int | None) -> int:
    """A node index, or None for no node, as the data planes' u32 entries hold it: the one
    place None becomes NO_NODE (both data planes keep their tables in this form)."""
    return NO_NODE if node is None else node


class Action(Enum):
    PASS = "pass"  # up this machine's own stack, untouched
    DROP = "drop"
    FORWARD = "forward"  # MACs rewritten, sent back out of the front interface


class Reason(Enum):
    NOT_OURS = "not_ours"  # not IPv4 to a VIP addressed to our MAC: none of our business
    MALFORMED = "malformed"  # to the VIP but too short or a bad header: the kernel drops it
    ACL = "acl"
    OTHER_PROTO = "other_proto"  # ICMP (not an error about our flow) etc.: the scheduler answers
    PORT = "port"  # no service names the port on that VIP, or no rule and no default node
    NO_NODE = "no_node"  # owner unknown (no MAC) or the bucket has no owner
    NOT_CONFIGURED = "not_configured"  # no client table yet
    SELF = "self"
    FORWARD = "forward"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: Reason
    node: int | None = None  # the node chosen, when one was
    bucket: int | None = None  # the client-table bucket used, when one was
    fragment: bool = False
    icmp: bool = False  # an ICMP error routed by the flow it carries (no last-access stamp)


def bucket_of(src_ip: int, src_port: int, buckets: int) -> int:
    """Patent 003 Fig. 4 and the contract: (client IPv4 as unsigned u32 + client port) % size."""
    return (src_ip + src_port) % buckets


@dataclass(frozen=True)
class Rules:
    """Everything the decision reads: the same state the eBPF maps hold.

    VIPs: `vip` (the cluster's, compared first: one compare for a single-VIP array) and the
    keys of `vips`; each with the ports its services name, None = every port (the port rules
    alone decide, as a config without [[services]] does). A port no service names on a VIP
    is dropped before the port rules are asked."""

    vip: bytes  # 4 bytes, network order
    buckets: int
    table: Sequence[int] | None = None  # bucket -> node index as the map holds it (NO_NODE)
    self_index: int | None = None
    own_mac: bytes = b"\0" * 6
    node_macs: Mapping[int, bytes] = field(default_factory=dict)
    balanced: Collection[int] = frozenset({80, 443})
    pinned: Mapping[int, int] = field(default_factory=dict)
    default_node: int | None = None
    deny: tuple[tuple[int, int, frozenset[int]], ...] = ()  # see compile_deny
    vip_ports: frozenset[int] | None = None  # the ports of `vip`
    vips: Mapping[bytes, frozenset[int] | None] = field(default_factory=dict)  # the other VIPs

    @staticmethod
    def compile_deny(cidrs: Sequence[str]) -> tuple[tuple[int, int, frozenset[int]], ...]:
        """CIDRs grouped by prefix length: a lookup costs one set probe per distinct length."""
        by_len: dict[int, set[int]] = {}
        for text in cidrs:
            net = ipaddress.IPv4Network(text, strict=False)
            by_len.setdefault(net.prefixlen, set()).add(int(net.network_address))
        return tuple(
            (plen, (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, frozenset(addrs))
            for plen, addrs in sorted(by_len.items(), reverse=True)
        )


_NOT_A_VIP = frozenset({-1})  # sentinel: a port set no port is in, returned for "not a VIP"


def vip_ports(daddr: bytes, rules: Rules) -> frozenset[int] | None:
    """The ports of VIP `daddr` (None: every port), or _NOT_A_VIP."""
    if daddr == rules.vip:
        return rules.vip_ports
    return rules.vips.get(daddr, _NOT_A_VIP)


def denied(src_ip: int, deny: tuple[tuple[int, int, frozenset[int]], ...]) -> bool:
    return any((src_ip & mask) in addrs for _plen, mask, addrs in deny)


_ETH = struct.Struct("!6s6sH")
_IP = struct.Struct("!BBHHHBBH4s4s")
_PORTS = struct.Struct("!HH")


def decide(frame: bytes | bytearray | memoryview, rules: Rules) -> Verdict:
    """The verdict for one frame arriving on the front interface."""
    if len(frame) < ETH_HLEN + 20:
        return Verdict(Action.PASS, Reason.NOT_OURS)
    dst_mac, _src_mac, proto = _ETH.unpack_from(frame, 0)
    if proto != ETH_P_IP:
        return Verdict(Action.PASS, Reason.NOT_OURS)
    vihl, _tos, _tot, _id, frag, _ttl, l4proto, _csum, saddr, daddr = _IP.unpack_from(
        frame, ETH_HLEN
    )
    ports = vip_ports(daddr, rules)
    if ports is _NOT_A_VIP or dst_mac != rules.own_mac:
        return Verdict(Action.PASS, Reason.NOT_OURS)
    ihl = vihl & 0x0F
    if vihl >> 4 != 4 or ihl < 5:
        return Verdict(Action.PASS, Reason.MALFORMED)
    src = int.from_bytes(saddr, "big")
    if rules.deny and denied(src, rules.deny):
        return Verdict(Action.DROP, Reason.ACL)
    fragment = bool(frag & 0x3FFF)  # MF or a fragment offset
    if l4proto == IPPROTO_ICMP and not fragment:
        routed = _icmp_error(frame, ETH_HLEN + ihl * 4, rules)
        if routed is not None:
            return routed
    if l4proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return Verdict(Action.PASS, Reason.OTHER_PROTO)
    if fragment:  # every piece hashed with port 0, no port rule (see dlba_tc.c)
        return _balanced(rules, src, 0, fragment=True)
    l4off = ETH_HLEN + ihl * 4
    if len(frame) < l4off + 4:
        return Verdict(Action.PASS, Reason.MALFORMED)
    sport, dport = _PORTS.unpack_from(frame, l4off)
    if ports is not None and dport not in ports:
        return Verdict(Action.DROP, Reason.PORT)
    table, buckets = rules.table, rules.buckets
    if dport in rules.balanced and table is not None and buckets > 0:  # the common case, inline
        bucket = (src + sport) % buckets
        return _deliver(rules, table[bucket], bucket, False)
    return _by_port(rules, src, sport, dport)


def _icmp_error(frame: bytes | bytearray | memoryview, off: int, rules: Rules) -> Verdict | None:
    """A destination-unreachable about one of our flows goes to the node that owns the flow.

    The embedded packet is that node's own outbound one, VIP:service port -> client:port, so
    its destination is the client: bucket (client IP + client port), the bucket the client's
    own packets hash to, and the port rule of the service port. None: not such an error, the
    scheduler's own stack takes it as before."""
    if len(frame) < off + ICMP_HLEN or frame[off] != ICMP_DEST_UNREACH:
        return None
    inner = off + ICMP_HLEN
    if len(frame) < inner + 20:
        return Verdict(Action.PASS, Reason.MALFORMED)
    vihl, _tos, _tot, _id, frag, _ttl, proto, _csum, saddr, daddr = _IP.unpack_from(frame, inner)
    ihl = vihl & 0x0F
    if vihl >> 4 != 4 or ihl < 5:
        return Verdict(Action.PASS, Reason.MALFORMED)
    ports = vip_ports(saddr, rules)
    if ports is _NOT_A_VIP or proto not in (IPPROTO_TCP, IPPROTO_UDP) or frag & 0x1FFF:
        return None  # not from a VIP, or no ports to find the flow by
    l4off = inner + ihl * 4
    if len(frame) < l4off + 4:
        return Verdict(Action.PASS, Reason.MALFORMED)
    vport, cport = _PORTS.unpack_from(frame, l4off)
    if ports is not None and vport not in ports:
        return Verdict(Action.DROP, Reason.PORT, icmp=True)
    return _by_port(rules, int.from_bytes(daddr, "big"), cport, vport, icmp=True)


def _by_port(rules: Rules, client: int, cport: int, vport: int, icmp: bool = False) -> Verdict:
    """The port rule of the VIP's port decides: balanced, pinned, default node or drop."""
    if vport in rules.balanced:
        return _balanced(rules, client, cport, icmp=icmp)
    node = rules.pinned.get(vport)
    if node is None:
        if rules.default_node is None:
            return Verdict(Action.DROP, Reason.PORT, icmp=icmp)
        node = rules.default_node
    return _deliver(rules, node, None, False, icmp)


def _balanced(
    rules: Rules, client: int, cport: int, fragment: bool = False, icmp: bool = False
) -> Verdict:
    if rules.table is None or rules.buckets <= 0:
        return Verdict(Action.PASS, Reason.NOT_CONFIGURED, fragment=fragment, icmp=icmp)
    bucket = bucket_of(client, cport, rules.buckets)
    return _deliver(rules, rules.table[bucket], bucket, fragment, icmp)


def _deliver(
    rules: Rules, node: int, bucket: int | None, fragment: bool, icmp: bool = False
) -> Verdict:
    if node < 0 or node >= MAX_NODES:
        return Verdict(Action.DROP, Reason.NO_NODE, None, bucket, fragment, icmp)
    if node == rules.self_index:
        return Verdict(Action.PASS, Reason.SELF, node, bucket, fragment, icmp)
    if node not in rules.node_macs:
        return Verdict(Action.DROP, Reason.NO_NODE, node, bucket, fragment, icmp)
    return Verdict(Action.FORWARD, Reason.FORWARD, node, bucket, fragment, icmp)


def rewrite_macs(frame: bytes | bytearray, dst_mac: bytes, src_mac: bytes) -> bytearray:
    """The only change the scheduler makes to a forwarded frame (patent: 'packet unchanged')."""
    out = bytearray(frame)
    out[0:6] = dst_mac
    out[6:12] = src_mac
    return out


def build_frame(
    src: str,
    dst: str,
    sport: int = 40000,
    dport: int = 80,
    *,
    proto: int = IPPROTO_TCP,
    dst_mac: bytes = b"\x02\0\0\0\0\x01",
    src_mac: bytes = b"\x02\0\0\0\0\xcc",
    frag: int = 0,
    ihl: int = 5,
    payload: bytes = b"",
) -> bytes:
    """An Ethernet + IPv4 + TCP/UDP frame (checksums left zero): for tests and the bench.

    frag is the raw flags+offset field (0x2000 = MF); a non-zero offset omits the L4 header."""
    l4 = b""
    if frag & 0x1FFF == 0:
        if proto == IPPROTO_TCP:
            l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 65535, 0, 0)
        elif proto == IPPROTO_UDP:
            l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    options = b"\x01" * (4 * (ihl - 5))  # NOPs
    body = l4 + payload
    ip = _IP.pack(
        0x40 | ihl,
        0,
        4 * ihl + len(body),
        1,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return _ETH.pack(dst_mac, src_mac, ETH_P_IP) + ip + options + body


def build_icmp_error(
    router: str,
    dst: str,
    inner: bytes,
    *,
    icmp_type: int = ICMP_DEST_UNREACH,
    code: int = 4,
    mtu: int = 1280,
    dst_mac: bytes = b"\x02\0\0\0\0\x01",
    src_mac: bytes = b"\x02\0\0\0\0\xcc",
    frag: int = 0,
    ihl: int = 5,
) -> bytes:
    """An ICMP error from `router` to `dst` quoting `inner` (an IPv4 packet: header + at least
    8 bytes, as RFC 792 asks): for tests and the bench. Checksums left zero."""
    icmp = struct.pack("!BBHHH", icmp_type, code, 0, 0, mtu) + inner
    return build_frame(router, dst, proto=IPPROTO_ICMP, dst_mac=dst_mac, src_mac=src_mac,
                       frag=frag, ihl=ihl, payload=icmp)  # fmt: skip
