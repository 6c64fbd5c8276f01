"""scheduler/vip_owner.py with many VIPs: what lo holds, which VIPs the ARP responder answers,
and which a pushed config makes new (to announce)."""

from __future__ import annotations

import ipaddress

from dlba.config.services import ServiceConfig, implicit_service
from scheduler.vip_owner import ArpResponder, VipOwner, arp_frame, arp_reply, lo_networks

MAC = b"\x02\0\0\0\0\x01"
ASKER = b"\x02\0\0\0\0\x99"


def test_lo_holds_every_address_of_every_prefix_once() -> None:
    services = [ServiceConfig("a", ("10.0.0.100", "10.0.0.112/30"), (80,)),
                ServiceConfig("b", ("10.0.0.113",), (8080,))]
    assert lo_networks(services) == ["10.0.0.100/32", "10.0.0.112/32", "10.0.0.113/32",
                                     "10.0.0.114/32", "10.0.0.115/32"]
    assert lo_networks([implicit_service("10.0.0.1", True, "C")]) == ["10.0.0.1/32"]


def asks(ip: str) -> bytes:
    return arp_frame(1, ASKER, "10.0.0.2", b"\0" * 6, ip)


def test_set_vips_swaps_what_is_answered_and_returns_the_new_ones() -> None:
    owner = VipOwner("front", "10.0.0.100", vips=["10.0.0.112"])
    assert owner.vips == ("10.0.0.100", "10.0.0.112")
    owner.responder = ArpResponder("front", owner.vips, MAC)  # not started: no socket
    assert arp_reply(asks("10.0.0.112"), owner.responder.vips, MAC) is not None
    new = owner.set_vips(["10.0.0.120", "10.0.0.121"])
    assert new == ["10.0.0.120", "10.0.0.121"]
    assert list(owner.vips) == ["10.0.0.100", "10.0.0.120", "10.0.0.121"]  # cluster VIP stays
    answered = {str(ipaddress.IPv4Address(v)) for v in owner.responder.vips}
    assert answered == set(owner.vips)
    assert arp_reply(asks("10.0.0.112"), owner.responder.vips, MAC) is None
    assert owner.set_vips(["10.0.0.120", "10.0.0.121"]) == []
