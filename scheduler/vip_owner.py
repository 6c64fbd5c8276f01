"""VIP ownership on the front network: answering ARP for the VIPs, and gratuitous ARP.

Every VIP of every service (seed 002: many VIPs, prefixes expanded) is answered by the one
responder; the cluster's VIP comes first. `set_vips` changes the set live (a pushed config):
a VIP removed is not answered from that moment, a new one is announced.

Every node has the VIP on `lo` with arp_ignore=1, so no node's *kernel* answers ARP for it. The
scheduler's process answers ARP requests for the VIP itself, on an AF_PACKET socket read by its
event loop (`ArpResponder`). ARP answering therefore dies with the process: after a crash or a
`kill -9` the dead node's kernel stays silent, and the node elected in its place is the only
answerer once its gratuitous ARP is out. (The VIP used to sit on `front` as well, which made
the kernel answer: it kept answering for a dead scheduler.) Taking the role starts the
responder and announces the VIP with gratuitous ARP; standing down closes the socket at once.
The ARP frame is built by hand: it is 42 bytes and no library makes it simpler.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Collection, Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

events = logging.getLogger("dlba.event")
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
PACKET_OUTGOING = 4
_ARP_HEAD = b"\x08\x06\x00\x01\x08\x00\x06\x04"  # ethertype, Ethernet, IPv4, 6, 4


SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
IFF_RUNNING = 0x40  # operationally up: carrier, and the peer of a veth up


def link_running(ifname: str) -> bool:
    """Whether `ifname` is up and has carrier (one ioctl: cheap enough for every round)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH14x", ifname.encode(), 0))
        except OSError:
            return False  # gone
    flags = int(struct.unpack_from("16sH", res)[1])
    return flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING


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


def gratuitous_arp(ifname: str, ip: str | Sequence[str], mac: bytes, count: int = 3,
                   gap_s: float = 0.05) -> None:
    """Announce `ip` (or each of several) at `mac`: both a gratuitous request and reply, as
    switches differ in which one they learn from (the same as arping -U and -A)."""
    ips = [ip] if isinstance(ip, str) else list(ip)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, 0))
        for i in range(count):
            for one in ips:
                with contextlib.suppress(BlockingIOError):  # a full TX queue: next round
                    s.send(arp_frame(1, mac, one, b"\x00" * 6, one))
                    s.send(arp_frame(2, mac, one, BROADCAST, one))
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


def arp_reply(frame: bytes, vips: Collection[bytes], mac: bytes) -> bytes | None:
    """The answer to an ARP request for one of `vips` (packed IPv4), or None.

    Gratuitous announcements (sender IP == target IP) and our own frames get no answer."""
    if len(frame) < 42 or frame[12:20] != _ARP_HEAD or frame[20:22] != b"\x00\x01":
        return None
    sender_mac, sender_ip = frame[22:28], frame[28:32]
    target_ip = frame[38:42]
    if target_ip not in vips or sender_ip == target_ip or sender_mac == mac:
        return None
    return arp_frame(2, mac, str(ipaddress.IPv4Address(target_ip)), sender_mac,
                     str(ipaddress.IPv4Address(sender_ip)), dst=sender_mac)


class ArpResponder:
    """Answers ARP requests for the VIPs on one interface, from this process's event loop.

    While `held`, requests get no answer; `on_held` is told that one arrived (someone on the
    network wants the VIP), so the owner can confirm its role and answer again."""

    def __init__(self, ifname: str, vips: Collection[str], mac: bytes,
                 on_held: Callable[[], None] | None = None) -> None:
        self.ifname = ifname
        self.vips = frozenset(ipaddress.IPv4Address(v).packed for v in vips)
        self.mac = mac
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.answered = 0
        self.held = False
        self.on_held = on_held

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        try:
            sock.bind((self.ifname, ETH_P_ARP))
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.close()
            raise
        self.sock, self.loop = sock, loop

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(64):
            try:
                frame, addr = sock.recvfrom(128)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            reply = arp_reply(frame, self.vips, self.mac)
            if reply is not None and self.held:
                if self.on_held is not None:
                    self.on_held()
            elif reply is not None:
                with contextlib.suppress(OSError):
                    sock.send(reply)
                    self.answered += 1

    def stop(self) -> None:
        if self.sock is not None:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        self.sock = None
        self.loop = None


def remove_from_interface(ifname: str, address: str) -> bool:
    """Remove `address`/32 from `ifname` (what an older scheduler left there); True if it was."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        try:
            ipr.addr("del", index=int(found[0]), address=address, prefixlen=32)
        except NetlinkError:
            return False
        return True


class VipOwner:
    def __init__(self, ifname: str, vip: str,
                 on_held_request: Callable[[], None] | None = None,
                 vips: Sequence[str] = ()) -> None:
        self.ifname = ifname
        self.vip = vip  # the cluster's VIP: what peers probe to find the scheduler
        self.vips = _with_main(vip, vips)
        self.responder: ArpResponder | None = None
        self.on_held_request = on_held_request

    def set_vips(self, vips: Sequence[str]) -> list[str]:
        """Answer for these VIPs from now on (loop thread); the new ones, to announce()."""
        wanted = _with_main(self.vip, vips)
        new = [v for v in wanted if v not in self.vips]
        gone = [v for v in self.vips if v not in wanted]
        self.vips = wanted
        if self.responder is not None:
            self.responder.vips = frozenset(ipaddress.IPv4Address(v).packed for v in wanted)
        if new or gone:
            events.info("event=vips_changed vips=%d added=%d removed=%d interface=%s",
                        len(wanted), len(new), len(gone), self.ifname)
        return new

    @property
    def held(self) -> bool:
        return self.responder is not None

    @property
    def answering(self) -> bool:
        return self.responder is not None and not self.responder.held

    def take(self, mac: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Answer ARP for the VIP from now on (call from the loop's thread), then announce()."""
        if self.responder is None:
            responder = ArpResponder(self.ifname, self.vips, mac, self.on_held_request)
            responder.start(loop)
            self.responder = responder

    def hold(self, held: bool) -> None:
        """Stop (True) or resume (False) answering ARP while keeping the role (loop thread)."""
        if self.responder is not None and self.responder.held != held:
            self.responder.held = held
            events.info("event=vip_arp_%s vip=%s interface=%s",
                           "held" if held else "resumed", self.vip, self.ifname)

    def announce(self, mac: bytes, announcements: int = 3,
                 only: Sequence[str] | None = None) -> None:
        """Gratuitous ARP for every VIP, or `only` these (blocking: from a thread). A VIP on
        `front` left by an older version would make the kernel answer for it beyond this
        process's life: removed first (older versions only ever put the cluster's VIP there)."""
        if only is None:
            with contextlib.suppress(OSError, NetlinkError):
                remove_from_interface(self.ifname, self.vip)
        ips = list(self.vips if only is None else only)
        gratuitous_arp(self.ifname, ips, mac, announcements)
        events.info("event=vip_taken vip=%s vips=%d interface=%s mac=%s", self.vip, len(ips),
                    self.ifname, mac_text(mac))

    def release(self) -> None:
        """Stop answering at once (call from the loop's thread)."""
        if self.responder is not None:
            self.responder.stop()
            self.responder = None
            events.info("event=vip_released vip=%s interface=%s", self.vip, self.ifname)


def _with_main(vip: str, vips: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((vip, *vips)))


def lo_networks(services: Sequence[object]) -> list[str]:
    """Every VIP address of a config's services as `lo` holds it ("a.b.c.d/32"), each once.

    One /32 per address, not the prefix: a prefix on lo would make its last address the
    subnet's broadcast, which TCP never accepts, and a VIP prefix is a set of VIPs."""
    out: dict[str, None] = {}
    for svc in services:
        for v in getattr(svc, "vips", ()):
            net = ipaddress.IPv4Network(v)
            out.update((f"{net[i]}/32", None) for i in range(net.num_addresses))
    return list(out)


def sync_lo_vips(wanted: Sequence[str], previous: Sequence[str] = (),
                 ifname: str = "lo") -> tuple[list[str], list[str]]:
    """Hold every VIP address on `lo`, and drop those of `previous` no longer wanted;
    (added, removed).

    Blocking (pyroute2): call from a thread. arp_ignore keeps the kernel from answering ARP
    for them: only the scheduler's process does (ArpResponder)."""
    added: list[str] = []
    removed: list[str] = []
    with IPRoute() as ipr:
        index = int(ipr.link_lookup(ifname=ifname)[0])
        for text in wanted:
            net = ipaddress.IPv4Network(text)
            try:
                ipr.addr("add", index=index, address=str(net.network_address),
                         prefixlen=net.prefixlen)
                added.append(text)
            except NetlinkError as e:
                if e.code != 17:  # EEXIST: already there
                    raise
        for text in previous:
            if text in wanted:
                continue
            net = ipaddress.IPv4Network(text)
            with contextlib.suppress(NetlinkError):  # already gone
                ipr.addr("del", index=index, address=str(net.network_address),
                         prefixlen=net.prefixlen)
                removed.append(text)
    if added or removed:
        events.info("event=lo_vips_changed added=%d removed=%d first_added=%s",
                    len(added), len(removed), added[0] if added else "-")
    return added, removed
