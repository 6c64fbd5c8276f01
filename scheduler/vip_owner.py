"""VIP ownership on the front network: answering ARP for the VIP, and gratuitous ARP.

Every node has the VIP on `lo` with arp_ignore=1, so no node answers ARP for it. The scheduler
also puts the VIP (/32) on its `front` interface: with arp_ignore=1 the kernel answers ARP for
an address configured on the interface the request arrived on, so exactly the scheduler
answers. Taking the role adds it and announces it with gratuitous ARP; standing down removes it
at once. The ARP frame is built by hand: it is 42 bytes and no library makes it simpler.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import struct
import time

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

events = logging.getLogger("dlba.event")
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def interface_of(address: str) -> tuple[str, bytes]:
    """(name, MAC) of the interface that holds `address` in this network namespace."""
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET):
            if msg.get_attr("IFA_ADDRESS") == address:
                link = ipr.get_links(msg["index"])[0]
                mac = link.get_attr("IFLA_ADDRESS") or "00:00:00:00:00:00"
                return str(link.get_attr("IFLA_IFNAME")), bytes.fromhex(mac.replace(":", ""))
    raise LookupError(f"no interface has {address}")


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def arp_frame(op: int, sender_mac: bytes, sender_ip: str, target_mac: bytes, target_ip: str,
              dst: bytes = BROADCAST) -> bytes:
    return (
        dst + sender_mac + struct.pack("!H", ETH_P_ARP)
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
        + sender_mac + ipaddress.IPv4Address(sender_ip).packed
        + target_mac + ipaddress.IPv4Address(target_ip).packed
    )


def gratuitous_arp(ifname: str, ip: str, mac: bytes, count: int = 3, gap_s: float = 0.05) -> None:
    """Announce `ip` at `mac`: both a gratuitous request and reply, as switches differ in which
    one they learn from (the same as arping -U and -A)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, 0))
        for i in range(count):
            s.send(arp_frame(1, mac, ip, b"\x00" * 6, ip))
            s.send(arp_frame(2, mac, ip, BROADCAST, ip))
            if i + 1 < count:
                time.sleep(gap_s)


def arp_probe(ifname: str, src_ip: str, target: str, wait_s: float = 0.2) -> set[bytes]:
    """Ask who has `target` out of `ifname`; the MACs that answered within `wait_s`.

    Blocking (a raw socket with a timeout): call it from a thread."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        mac = s.getsockname()[4]
        s.send(arp_frame(1, mac, src_ip, b"\x00" * 6, target))
        target_ip = ipaddress.IPv4Address(target).packed
        found: set[bytes] = set()
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                frame = s.recv(128)
            except TimeoutError:
                break
            if len(frame) >= 42 and frame[20:22] == b"\x00\x02" and frame[28:32] == target_ip:
                found.add(frame[22:28])
        return found


class VipOwner:
    def __init__(self, ifname: str, vip: str) -> None:
        self.ifname = ifname
        self.vip = vip
        self.held = False

    def _index(self, ipr: IPRoute) -> int:
        found = ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise LookupError(f"no interface {self.ifname}")
        return int(found[0])

    def take(self, mac: bytes, announcements: int = 3) -> None:
        with IPRoute() as ipr:
            try:
                ipr.addr("add", index=self._index(ipr), address=self.vip, prefixlen=32)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
        self.held = True
        gratuitous_arp(self.ifname, self.vip, mac, announcements)
        events.warning("event=vip_taken vip=%s interface=%s mac=%s", self.vip, self.ifname,
                       mac_text(mac))

    def announce(self, mac: bytes) -> None:
        gratuitous_arp(self.ifname, self.vip, mac, 1)

    def release(self) -> None:
        with IPRoute() as ipr, contextlib.suppress(NetlinkError, LookupError):
            ipr.addr("del", index=self._index(ipr), address=self.vip, prefixlen=32)
        if self.held:
            events.warning("event=vip_released vip=%s interface=%s", self.vip, self.ifname)
        self.held = False

    def answering(self) -> bool:
        """Whether this host has the VIP on front now (the ground truth, not our flag)."""
        with IPRoute() as ipr:
            try:
                index = self._index(ipr)
            except LookupError:
                return False
            return any(
                m.get_attr("IFA_ADDRESS") == self.vip
                for m in ipr.get_addr(family=socket.AF_INET, index=index)
            )
