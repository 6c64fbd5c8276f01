"""The pure routing decision (scheduler/frame_decision.py), property-tested without a kernel.

tests/array/test_bpf_prog.py checks that the eBPF program agrees with this module; here the
module itself is checked against the contract, written out independently."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from scheduler.frame_decision import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_NODES,
    Action,
    Reason,
    Rules,
    bucket_of,
    build_frame,
    decide,
    denied,
    rewrite_macs,
)

VIP = "198.18.0.100"
OWN = b"\x02\0\0\0\0\x01"
MACS = {0: OWN, 1: b"\x02\0\0\0\0\x02", 2: b"\x02\0\0\0\0\x03"}


def rules(table: list[int], **kw: object) -> Rules:
    base: dict[str, object] = {
        "vip": ipaddress.IPv4Address(VIP).packed,
        "buckets": len(table),
        "table": table,
        "self_index": 0,
        "own_mac": OWN,
        "node_macs": MACS,
    }
    base.update(kw)
    return Rules(**base)  # type: ignore[arg-type]


ips = st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i)))
tables = st.integers(1, 64).flatmap(lambda n: st.lists(st.integers(0, 2), min_size=n, max_size=n))


@given(src=ips, sport=st.integers(0, 65535), table=tables, proto=st.sampled_from([6, 17]))
def test_balanced_port_follows_the_table_exactly(
    src: str, sport: int, table: list[int], proto: int
) -> None:
    v = decide(build_frame(src, VIP, sport, 80, proto=proto, dst_mac=OWN), rules(table))
    bucket = (int(ipaddress.IPv4Address(src)) + sport) % len(table)  # the contract's formula
    assert v.bucket == bucket and v.node == table[bucket]
    if table[bucket] == 0:
        assert (v.action, v.reason) == (Action.PASS, Reason.SELF)
    else:
        assert v.action is Action.FORWARD


@given(src=ips, sport=st.integers(0, 65535), dport=st.integers(0, 65535))
def test_port_rules_pinned_default_drop(src: str, sport: int, dport: int) -> None:
    frame = build_frame(src, VIP, sport, dport, dst_mac=OWN)
    r = rules([1] * 8, balanced=frozenset({80}), pinned={9000: 2}, default_node=None)
    v = decide(frame, r)
    if dport == 80:
        assert v.node == 1
    elif dport == 9000:
        assert (v.node, v.bucket) == (2, None)
    else:
        assert (v.action, v.reason) == (Action.DROP, Reason.PORT)
        v2 = decide(frame, rules([1] * 8, balanced=frozenset({80}), default_node=0))
        assert (v2.action, v2.node) == (Action.PASS, 0)


@given(
    net=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)),
    probe=st.integers(0, 2**32 - 1),
)
def test_deny_matches_exactly_the_cidr(net: tuple[int, int], probe: int) -> None:
    cidr = ipaddress.IPv4Network((net[0], net[1]), strict=False)
    inside = ipaddress.IPv4Address(probe) in cidr
    assert denied(probe, Rules.compile_deny([str(cidr)])) == inside
    v = decide(build_frame(str(ipaddress.IPv4Address(probe)), VIP, dst_mac=OWN),
               rules([0], deny=Rules.compile_deny([str(cidr)])))  # fmt: skip
    assert (v.action is Action.DROP and v.reason is Reason.ACL) == inside


@given(src=ips, sport=st.integers(0, 65535), frag=st.sampled_from([0x2000, 0x0001, 0x2abc]))
def test_all_fragments_hash_with_port_zero(src: str, sport: int, frag: int) -> None:
    table = [1, 2, 0, 1, 2]
    v = decide(build_frame(src, VIP, sport, 22, proto=IPPROTO_UDP, dst_mac=OWN, frag=frag),
               rules(table, balanced=frozenset()))  # fmt: skip
    bucket = bucket_of(int(ipaddress.IPv4Address(src)), 0, len(table))
    assert v.fragment and v.bucket == bucket and v.node == table[bucket]


def test_not_ours_passes() -> None:
    r = rules([1])
    for frame in (
        build_frame("1.2.3.4", "198.18.0.11", dst_mac=OWN),  # another destination
        build_frame("1.2.3.4", VIP, dst_mac=MACS[1]),  # a flooded copy for another MAC
        build_frame("1.2.3.4", VIP, dst_mac=OWN)[:20],  # too short for IPv4
        OWN + MACS[1] + b"\x86\xdd" + bytes(60),  # IPv6
    ):
        assert decide(frame, r).reason is Reason.NOT_OURS


def test_non_tcp_udp_and_malformed_pass_up() -> None:
    r = rules([1])
    assert decide(build_frame("1.2.3.4", VIP, proto=1, dst_mac=OWN), r).reason is Reason.OTHER_PROTO
    short = build_frame("1.2.3.4", VIP, proto=IPPROTO_TCP, dst_mac=OWN)[:36]
    assert decide(short, r).reason is Reason.MALFORMED
    bad_ihl = bytearray(build_frame("1.2.3.4", VIP, dst_mac=OWN))
    bad_ihl[14] = 0x44
    assert decide(bytes(bad_ihl), r).reason is Reason.MALFORMED


def test_unknown_or_missing_owner_drops_and_no_table_passes() -> None:
    assert decide(build_frame("1.2.3.4", VIP, dst_mac=OWN), rules([7])).reason is Reason.NO_NODE
    assert decide(build_frame("1.2.3.4", VIP, dst_mac=OWN), rules([-1])).reason is Reason.NO_NODE
    assert decide(build_frame("1.2.3.4", VIP, dst_mac=OWN), rules([MAX_NODES])).action is (
        Action.DROP
    )
    unconfigured = Rules(vip=ipaddress.IPv4Address(VIP).packed, buckets=1, own_mac=OWN)
    assert decide(build_frame("1.2.3.4", VIP, dst_mac=OWN), unconfigured).reason is (
        Reason.NOT_CONFIGURED
    )


@given(payload=st.binary(max_size=64))
def test_rewrite_changes_only_the_macs(payload: bytes) -> None:
    frame = build_frame("1.2.3.4", VIP, dst_mac=OWN, payload=payload)
    out = rewrite_macs(frame, MACS[2], OWN)
    assert out[:12] == MACS[2] + OWN and out[12:] == frame[12:]
