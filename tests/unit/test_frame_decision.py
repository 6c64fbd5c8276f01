"""The pure routing decision (scheduler/frame_decision.py), property-tested without a kernel.

tests/array/test_bpf_prog.py checks that the eBPF program agrees with this module; here the
module itself is checked against the contract, written out independently."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.dataplane import validate_table
from scheduler.frame_decision import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_NODES,
    NO_NODE,
    Action,
    Reason,
    Rules,
    bucket_of,
    build_frame,
    build_icmp_error,
    decide,
    denied,
    node_u32,
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


@given(src=ips, sport=st.integers(0, 65535), frag=st.sampled_from([0x2000, 0x0001, 0x2ABC]))
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
    nobody = rules([NO_NODE])
    assert decide(build_frame("1.2.3.4", VIP, dst_mac=OWN), nobody).reason is Reason.NO_NODE
    assert decide(build_frame("1.2.3.4", VIP, dst_mac=OWN), rules([MAX_NODES])).action is (
        Action.DROP
    )
    unconfigured = Rules(vip=ipaddress.IPv4Address(VIP).packed, buckets=1, own_mac=OWN)
    assert decide(build_frame("1.2.3.4", VIP, dst_mac=OWN), unconfigured).reason is (
        Reason.NOT_CONFIGURED
    )


def test_no_owner_is_none_until_the_u32_table_of_the_data_planes() -> None:
    table = validate_table([None, 1, None], 3)
    assert table == [None, 1, None]
    u32 = [node_u32(n) for n in table]
    assert u32 == [NO_NODE, 1, NO_NODE]
    r = rules(u32)
    v = decide(build_frame("1.2.3.4", VIP, 2, 80, dst_mac=OWN), r)
    assert (v.bucket, v.node, v.reason) == (0, None, Reason.NO_NODE)
    with pytest.raises(ValueError):
        validate_table([-1, 1, 0], 3)  # the old spelling of "no owner" is refused


@given(payload=st.binary(max_size=64))
def test_rewrite_changes_only_the_macs(payload: bytes) -> None:
    frame = build_frame("1.2.3.4", VIP, dst_mac=OWN, payload=payload)
    out = rewrite_macs(frame, MACS[2], OWN)
    assert out[:12] == MACS[2] + OWN and out[12:] == frame[12:]


ROUTER = "203.0.113.1"  # the hop with the small MTU that sends "fragmentation needed"


def quoted(
    client: str, cport: int, vport: int, proto: int = IPPROTO_TCP, frag: int = 0, ihl: int = 5
) -> bytes:
    """The IPv4 packet an ICMP error quotes: a node's own response, VIP:vport -> client:cport."""
    return build_frame(VIP, client, vport, cport, proto=proto, frag=frag, ihl=ihl)[14:]


port_rules = st.fixed_dictionaries(
    {
        "balanced": st.frozensets(st.sampled_from([80, 443, 53]), max_size=3),
        "pinned": st.dictionaries(st.sampled_from([443, 9000]), st.integers(0, 3), max_size=2),
        "default_node": st.sampled_from([None, 0, 1]),
    }
)


@given(
    client=ips,
    cport=st.integers(0, 65535),
    vport=st.sampled_from([80, 443, 53, 9000, 22]),
    table=tables,
    proto=st.sampled_from([IPPROTO_TCP, IPPROTO_UDP]),
    code=st.integers(0, 15),
    ports=port_rules,
)
def test_icmp_error_follows_the_flow_it_quotes(
    client: str,
    cport: int,
    vport: int,
    table: list[int],
    proto: int,
    code: int,
    ports: dict[str, object],
) -> None:
    """Whatever the table and port rules: an unreachable (frag-needed is code 4) about
    VIP:vport -> client:cport gets the verdict of the client's own packet client:cport ->
    VIP:vport, so it reaches the node that holds the connection, or is dropped with it."""
    r = rules(table, **ports)
    err = build_icmp_error(ROUTER, VIP, quoted(client, cport, vport, proto), code=code,
                           dst_mac=OWN)  # fmt: skip
    v = decide(err, r)
    own = decide(build_frame(client, VIP, cport, vport, proto=proto, dst_mac=OWN), r)
    assert (v.action, v.reason, v.node, v.bucket) == (own.action, own.reason, own.node, own.bucket)
    assert v.icmp and not own.icmp
    if v.bucket is not None:  # the contract's formula on the quoted destination
        assert v.bucket == (int(ipaddress.IPv4Address(client)) + cport) % len(table)


def test_icmp_error_deny_list_is_on_the_outer_source() -> None:
    err = build_icmp_error(ROUTER, VIP, quoted("198.51.100.7", 5000, 80), dst_mac=OWN)
    by_router = rules([1], deny=Rules.compile_deny(["203.0.113.0/24"]))
    assert (decide(err, by_router).action, decide(err, by_router).reason) == (
        Action.DROP,
        Reason.ACL,
    )
    # A denied client never got a connection through; the router is not denied: routed.
    by_client = rules([1], deny=Rules.compile_deny(["198.51.100.0/24"]))
    assert decide(err, by_client).action is Action.FORWARD


def test_icmp_that_quotes_no_flow_of_ours_stays_with_the_scheduler() -> None:
    r = rules([1])
    client = "198.51.100.7"
    not_from_vip = build_frame("198.18.0.11", client, 80, 5000)[14:]
    for frame in (
        build_frame(client, VIP, proto=IPPROTO_ICMP, dst_mac=OWN, payload=b"\x08" + bytes(7)),
        build_icmp_error(ROUTER, VIP, quoted(client, 5000, 80), icmp_type=11, dst_mac=OWN),
        build_icmp_error(ROUTER, VIP, not_from_vip, dst_mac=OWN),
        build_icmp_error(ROUTER, VIP, quoted(client, 5000, 80, proto=IPPROTO_ICMP), dst_mac=OWN),
        build_icmp_error(ROUTER, VIP, quoted(client, 0, 0, frag=0x0010), dst_mac=OWN),  # no ports
        build_icmp_error(ROUTER, VIP, quoted(client, 5000, 80), frag=0x2000, dst_mac=OWN),
        build_icmp_error(ROUTER, VIP, quoted(client, 5000, 80), dst_mac=OWN)[: 14 + 20 + 4],
    ):
        v = decide(frame, r)
        assert (v.action, v.reason, v.icmp) == (Action.PASS, Reason.OTHER_PROTO, False)


def test_truncated_or_bad_quoted_header_is_malformed() -> None:
    r = rules([1])
    err = build_icmp_error(ROUTER, VIP, quoted("198.51.100.7", 5000, 80), dst_mac=OWN)
    inner = 14 + 20 + 8
    bad_version = err[:inner] + b"\x65" + err[inner + 1 :]
    for frame in (err[: inner + 19], err[: inner + 20 + 3], bad_version):
        assert decide(frame, r).reason is Reason.MALFORMED


@given(ihl=st.integers(5, 15), outer_ihl=st.integers(5, 15), cport=st.integers(0, 65535))
def test_ip_options_on_either_header_shift_the_quoted_ports(
    ihl: int, outer_ihl: int, cport: int
) -> None:
    table = [1, 2, 0, 1, 2, 2, 1]
    inner = quoted("198.51.100.7", cport, 443, ihl=ihl)
    v = decide(build_icmp_error(ROUTER, VIP, inner, ihl=outer_ihl, dst_mac=OWN), rules(table))
    bucket = bucket_of(int(ipaddress.IPv4Address("198.51.100.7")), cport, len(table))
    assert (v.bucket, v.node, v.icmp) == (bucket, table[bucket], True)
