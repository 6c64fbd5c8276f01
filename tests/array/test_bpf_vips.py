"""Many VIPs in the eBPF data plane (seed 002): every address of every service is answered, a
port no service names on that VIP is dropped, and the kernel program agrees with
scheduler/frame_decision.py on every frame of a multi-VIP fixture (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.dataplane import vip_map
from scheduler.dataplane_ebpf import C_ICMP, EbpfDataPlane
from scheduler.frame_decision import Action, build_frame, build_icmp_error, decide
from tests.array.test_bpf_prog import (
    BUCKETS,
    CLIENT,
    DENY,
    MACS,
    OWN,
    ROUTER,
    RULES,
    TABLE,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    VERDICT,
    VIP,
    forwarded,
    sport_for,
)

pytestmark = pytest.mark.array

PREFIX = "198.18.0.112/28"
LONE = "198.18.0.200"
VIPS: dict[str, frozenset[int] | None] = {
    VIP: frozenset({80, 443, 53, 9000}),
    **{str(a): frozenset({80, 443}) for a in ipaddress.IPv4Network(PREFIX)},
    LONE: frozenset({8443, 53}),
}
MULTI = replace(
    RULES,
    balanced=frozenset({80, 443, 53, 8443}),
    vip_ports=VIPS[VIP],
    vips={ipaddress.IPv4Address(a).packed: p for a, p in VIPS.items() if a != VIP},
)
DESTS = [VIP, "198.18.0.112", "198.18.0.119", "198.18.0.127", "198.18.0.128", "198.18.0.111",
         LONE, "198.18.0.11"]
PORTS = [80, 443, 53, 9000, 8443, 22, 0, 65535]


@pytest.fixture
def dp(bpf_object: Path) -> Iterator[EbpfDataPlane]:
    plane = EbpfDataPlane("lo", VIP, BUCKETS, obj_path=bpf_object)
    plane.set_nodes(MACS)
    plane.set_self(0, OWN)
    plane.set_assignments(TABLE)
    plane.set_port_rules({80, 443, 53, 8443}, {9000: 2}, None)
    plane.set_deny(DENY)
    plane.set_vips(VIPS)
    yield plane
    plane.close()


@pytest.mark.parametrize("vip", ["198.18.0.112", "198.18.0.127", LONE])
def test_every_vip_is_balanced_by_the_same_client_table(dp: EbpfDataPlane, vip: str) -> None:
    port = 8443 if vip == LONE else 80
    frame = build_frame(CLIENT, vip, sport_for(1), port, dst_mac=OWN)
    r = dp.test_run(frame)
    assert (r.retval, r.data_out) == (TC_ACT_REDIRECT, forwarded(frame, 1))


@pytest.mark.parametrize(("vip", "port"), [("198.18.0.112", 8443), (LONE, 80), (VIP, 22)])
def test_a_port_no_service_names_on_that_vip_is_dropped(
        dp: EbpfDataPlane, vip: str, port: int) -> None:
    assert dp.test_run(build_frame(CLIENT, vip, 4000, port, dst_mac=OWN)).retval == TC_ACT_SHOT
    assert dp.counters().drops["port"] == 1


def test_outside_the_prefix_is_not_ours(dp: EbpfDataPlane) -> None:
    for vip in ("198.18.0.111", "198.18.0.128"):
        frame = build_frame(CLIENT, vip, 4000, 80, dst_mac=OWN)
        assert (dp.test_run(frame).retval, sum(dp.raw_counters())) == (TC_ACT_OK, 0)


def test_vip_set_is_replaced_live(dp: EbpfDataPlane) -> None:
    frame = build_frame(CLIENT, "198.18.0.120", sport_for(2), 80, dst_mac=OWN)
    assert dp.test_run(frame).retval == TC_ACT_REDIRECT
    dp.set_vips({VIP: None, LONE: {80}})  # the prefix removed, the cluster VIP on every port
    before = sum(dp.raw_counters())
    assert dp.test_run(frame).retval == TC_ACT_OK and sum(dp.raw_counters()) == before
    assert dp.test_run(build_frame(CLIENT, LONE, sport_for(2), 80, dst_mac=OWN)).retval == 7
    assert dp.test_run(build_frame(CLIENT, VIP, 1, 22, dst_mac=OWN)).retval == TC_ACT_SHOT
    dp.set_vips({LONE: {80}})  # even the cluster VIP can go
    main = build_frame(CLIENT, VIP, sport_for(2), 80, dst_mac=OWN)
    assert (dp.test_run(main).retval, dp.test_run(main).data_out) == (TC_ACT_OK, main)


def test_icmp_error_about_a_flow_of_any_vip_reaches_its_owner(dp: EbpfDataPlane) -> None:
    cport = sport_for(2)
    inner = build_frame("198.18.0.119", CLIENT, 443, cport, payload=b"r" * 8)[14:]
    frame = build_icmp_error(ROUTER, "198.18.0.119", inner, dst_mac=OWN)
    assert dp.test_run(frame).data_out == forwarded(frame, 2)
    unnamed = build_frame("198.18.0.119", CLIENT, 8443, cport, payload=b"r" * 8)[14:]
    assert dp.test_run(build_icmp_error(ROUTER, VIP, unnamed, dst_mac=OWN)).retval == TC_ACT_SHOT


def test_vip_map_from_a_config() -> None:
    from dlba.config.services import ServiceConfig, implicit_service

    class Cfg:
        services = (ServiceConfig("a", ("10.0.0.8/30",), (80,)),
                    ServiceConfig("b", ("10.0.0.9",), (8443,)))

    got = vip_map(Cfg())
    assert got == {"10.0.0.8": frozenset({80}), "10.0.0.9": frozenset({80, 8443}),
                   "10.0.0.10": frozenset({80}), "10.0.0.11": frozenset({80})}

    class Single:
        services = (implicit_service("10.0.0.1", True, "C"),)

    assert vip_map(Single()) == {"10.0.0.1": None}


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    frame = build_frame(
        draw(st.sampled_from([CLIENT, "203.0.113.5", "10.1.2.3"])),
        draw(st.sampled_from(DESTS)),
        draw(st.integers(0, 65535)),
        draw(st.sampled_from(PORTS)),
        proto=draw(st.sampled_from([6, 17, 1, 47])),
        dst_mac=draw(st.sampled_from([OWN, OWN, MACS[1]])),
        frag=draw(st.sampled_from([0, 0, 0x4000, 0x2000, 0x0010])),
        ihl=draw(st.integers(5, 15)),
        payload=draw(st.binary(max_size=8)),
    )
    return frame[: draw(st.integers(34, len(frame)))]


@st.composite
def icmp_frames(draw: st.DrawFn) -> bytes:
    inner = build_frame(
        draw(st.sampled_from(DESTS)),
        draw(st.sampled_from([CLIENT, "10.1.2.3"])),
        draw(st.sampled_from(PORTS)),
        draw(st.integers(0, 65535)),
        proto=draw(st.sampled_from([6, 17])),
        frag=draw(st.sampled_from([0, 0, 0x0010])),
        payload=b"r" * 8,
    )[14:]
    return build_icmp_error(draw(st.sampled_from([ROUTER, "203.0.113.5"])),
                            draw(st.sampled_from(DESTS)), inner,
                            icmp_type=draw(st.sampled_from([3, 3, 11])), dst_mac=OWN)


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=st.one_of(frames(), icmp_frames()))
def test_kernel_program_agrees_with_frame_decision_on_many_vips(
        dp: EbpfDataPlane, frame: bytes) -> None:
    verdict = decide(frame, MULTI)
    icmp_before = dp.raw_counters()[C_ICMP]
    r = dp.test_run(frame)
    assert r.retval == VERDICT[verdict.action], verdict
    assert dp.raw_counters()[C_ICMP] - icmp_before == int(verdict.icmp), verdict
    if verdict.action is Action.FORWARD:
        assert verdict.node is not None
        assert r.data_out == forwarded(frame, verdict.node)
    else:
        assert r.data_out == frame
