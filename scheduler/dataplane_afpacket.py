"""The AF_PACKET fallback data plane: the eBPF program's decisions, in pure Python.

Where the BPF program cannot load, the scheduler still routes (patent 003: change the MAC, send
the frame back out). The hard part is that the VIP is on every node, so the scheduler's own
kernel would also accept frames that belong to other nodes (and answer them with RSTs). Design:

* a classic tc filter on `front` (clsact ingress, u32 "ip dst == VIP", one per VIP network
  (seed 002: every service's VIPs, collapsed to prefixes), action mirred egress
  redirect) steals every IPv4 frame for the VIP from this kernel's stack and hands it to a tap
  device (`dlbaself`) whose file descriptor this process reads; nothing else is touched. (The
  simpler "AF_PACKET tap + u32 action drop" needs act_gact, which kernels built without it
  lack - this one has only cls_u32 and act_mirred; mirred is the one action such kernels have.)
* scheduler/frame_decision.py decides per frame;
* frames for another node: MACs rewritten, sent out of `front` on an AF_PACKET socket (TX only);
* frames this node keeps (owner == self, ICMP, ...): written back into the tap with the tap's
  MAC as destination; a tap write is an ingress on the tap (rp_filter loose there, no filter),
  so they enter the stack exactly once.
The tap and the socket both use virtio-net headers (IFF_VNET_HDR / PACKET_VNET_HDR): frames
from a local veth often carry only a partial checksum, and the header hands that state through
unchanged instead of making Python compute checksums.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from scheduler.dataplane import (
    DataPlaneCounters,
    validate_cidrs,
    validate_mac,
    validate_node,
    validate_ports,
    validate_table,
    validate_vips,
)
from scheduler.frame_decision import Action, Reason, Rules, decide, node_u32

SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
PACKET_VNET_HDR = 15
ETH_P_IP = 0x0800
VNET_HDR_LEN = 10  # struct virtio_net_hdr
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TAP_NAME = "dlbaself"
TAP_ADDR = "169.254.0.77"
TC_PARENT_INGRESS = 0xFFFFFFF2  # clsact's ingress hook
TC_PRIO = 7
# A new VIP set is stolen at the other priority before the old filters go: no frame for a VIP
# kept across the change ever reaches this kernel's stack in between.
TC_PRIOS = (TC_PRIO, TC_PRIO + 1)


class AfPacketDataPlane:
    def __init__(self, ifname: str, vip: str, buckets: int, tap_name: str = TAP_NAME) -> None:
        self.ifname = ifname
        self.buckets = buckets
        self.tap_name = tap_name
        self._vip = ipaddress.IPv4Address(vip)
        # Rules are immutable and replaced by one attribute store: the forwarding thread sees
        # a whole old or a whole new table, never a half-written one.
        self._rules = Rules(vip=self._vip.packed, buckets=buckets)
        self._last = [0] * buckets
        self._counts: dict[str, int] = {}
        self._node_pkts: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._tap_fd = -1
        self._tap_mac = b""
        self._tap_index = 0
        self._ifindex = 0
        self._made_clsact = False
        self._networks = [ipaddress.IPv4Network(self._vip)]
        self._prio = TC_PRIO

    # -- install / close ------------------------------------------------------------------------

    def install(self) -> None:
        self._ifindex = socket.if_nametoindex(self.ifname)
        self._open_tap()
        self._open_socket()
        self._add_tc_steal()
        self._thread = threading.Thread(target=self._run, name="dlba-afpacket", daemon=True)
        self._thread.start()

    def _open_tap(self) -> None:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        ifr = struct.pack("16sH", self.tap_name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        os.set_blocking(fd, False)  # drained in batches after poll(), see _run
        self._tap_fd = fd
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.tap_name)[0]
            self._tap_index = idx
            ipr.link("set", index=idx, state="up")
            # Reverse-path checks need the tap to have some IPv4 address (with none, even loose
            # mode rejects every source); a /32 link-local one routes nothing anywhere.
            ipr.addr("add", index=idx, address=TAP_ADDR, prefixlen=32, scope=253)
            mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        self._tap_mac = bytes.fromhex(str(mac).replace(":", ""))
        # Loose: the client's address routes via front, not the tap; strict mode would drop.
        with open(f"/proc/sys/net/ipv4/conf/{self.tap_name}/rp_filter", "w") as f:
            f.write("2")
        v6 = f"/proc/sys/net/ipv6/conf/{self.tap_name}/disable_ipv6"
        if os.path.exists(v6):  # no IPv6 chatter (ND, MLD) from the kernel into our reader
            with open(v6, "w") as f:
                f.write("1")

    def _open_socket(self) -> None:
        # Protocol 0: a send-only socket; frames arrive through the tap, not here.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        sock.bind((self.ifname, 0))
        self._sock = sock

    def _del_filter(self, ipr: IPRoute, prio: int = TC_PRIO) -> None:
        # tcm_info spelled out: without a kind, pyroute2 drops `prio`, and a zero info
        # deletes every filter of the hook (the other priority's too).
        ipr.tc("del-filter", None, self._ifindex, parent=TC_PARENT_INGRESS,
               info=(prio << 16) | socket.htons(ETH_P_IP))  # fmt: skip

    def _add_tc_steal(self) -> None:
        with IPRoute() as ipr:
            # A crashed run leaves its filter redirecting into a tap that is gone, which would
            # black-hole the VIP: ours replaces it (same priority).
            for prio in TC_PRIOS:
                with contextlib.suppress(NetlinkError):  # ENOENT: nothing to remove
                    self._del_filter(ipr, prio)
            try:
                ipr.tc("add", "clsact", self._ifindex)
                self._made_clsact = True
            except NetlinkError:  # EEXIST: clsact already there
                self._made_clsact = False
            self._add_filters(ipr, self._prio)

    def _add_filters(self, ipr: IPRoute, prio: int) -> None:
        for net in self._networks:
            ipr.tc(
                "add-filter",
                "u32",
                self._ifindex,
                parent=TC_PARENT_INGRESS,
                prio=prio,
                protocol=ETH_P_IP,
                keys=[f"0x{int(net.network_address):08x}/0x{int(net.netmask):08x}+16"],
                target=0x10001,  # a classid pyroute2 insists on; the action decides
                action={
                    "kind": "mirred",
                    "direction": "egress",
                    "action": "redirect",
                    "ifindex": self._tap_index,
                },
            )

    def _resteal(self) -> None:
        """The filters for the current networks at the other priority, then the old ones go."""
        if not self._ifindex:
            return
        old, new = self._prio, TC_PRIOS[1] if self._prio == TC_PRIOS[0] else TC_PRIOS[0]
        with IPRoute() as ipr:
            with contextlib.suppress(NetlinkError):
                self._del_filter(ipr, new)
            self._add_filters(ipr, new)
            with contextlib.suppress(NetlinkError):
                self._del_filter(ipr, old)
        self._prio = new

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._ifindex:
            with IPRoute() as ipr:
                try:
                    if self._made_clsact:
                        ipr.tc("del", "clsact", self._ifindex)
                    else:
                        self._del_filter(ipr, self._prio)
                except NetlinkError:  # the interface or namespace is already gone
                    pass
            self._ifindex = 0
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tap_fd >= 0:
            os.close(self._tap_fd)  # a non-persistent tap disappears with its last fd
            self._tap_fd = -1

    # -- forwarding -----------------------------------------------------------------------------

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = select.poll()
        poller.register(self._tap_fd, select.POLLIN)
        buf = bytearray(VNET_HDR_LEN + 65536)
        view = memoryview(buf)
        while not self._stop.is_set():
            if not poller.poll(200):  # wakes at least every 0.2 s to see the stop flag
                continue
            for _ in range(1024):  # drain a batch, then look at the stop flag again
                try:
                    n = os.readv(self._tap_fd, [buf])
                except BlockingIOError:
                    break
                except OSError:
                    if self._stop.is_set():
                        return
                    raise
                self._handle(sock, buf, view, n)

    def _handle(self, sock: socket.socket, buf: bytearray, view: memoryview, n: int) -> None:
        counts, node_pkts, last = self._counts, self._node_pkts, self._last
        if n <= VNET_HDR_LEN:
            return
        rules = self._rules
        frame = view[VNET_HDR_LEN:n]
        v = decide(frame, rules)
        key = v.reason.value
        counts[key] = counts.get(key, 0) + 1
        if v.fragment:
            counts["fragment"] = counts.get("fragment", 0) + 1
        if v.icmp:  # an ICMP error for a flow's owner: not client traffic, no stamp
            counts["icmp"] = counts.get("icmp", 0) + 1
        elif v.bucket is not None:
            last[v.bucket] = time.monotonic_ns()
        if v.node is not None and v.action is not Action.DROP:
            node_pkts[v.node] = node_pkts.get(v.node, 0) + 1
        # Edit the MACs in place (vnet header first, then the frame) and send the buffer.
        if v.action is Action.FORWARD:
            assert v.node is not None
            buf[VNET_HDR_LEN : VNET_HDR_LEN + 6] = rules.node_macs[v.node]
            buf[VNET_HDR_LEN + 6 : VNET_HDR_LEN + 12] = rules.own_mac
            self._send(sock, view[:n])
        elif v.action is Action.PASS and v.reason is not Reason.NOT_OURS:
            buf[VNET_HDR_LEN : VNET_HDR_LEN + 6] = self._tap_mac
            try:
                os.write(self._tap_fd, view[:n])
            except OSError:
                counts["tx_error"] = counts.get("tx_error", 0) + 1
        # DROP, and frames not ours (a flooded copy for another MAC): the tc filter has
        # already kept them from the kernel, which would have dropped them too.

    def _send(self, sock: socket.socket, data: memoryview) -> None:
        try:
            sock.send(data)
        except OSError:  # full TX queue or an oversize GRO frame: like a drop on the wire
            self._counts["tx_error"] = self._counts.get("tx_error", 0) + 1

    # -- control plane --------------------------------------------------------------------------

    def set_nodes(self, macs: Mapping[int, bytes]) -> None:
        checked = {validate_node(i): validate_mac(m) for i, m in macs.items()}
        self._rules = replace(self._rules, node_macs=checked)

    def set_self(self, index: int, own_mac: bytes) -> None:
        index = validate_node(index, "self index")
        self._rules = replace(self._rules, self_index=index, own_mac=validate_mac(own_mac))

    def set_assignments(self, table: Sequence[int | None]) -> None:
        nodes = validate_table(table, self.buckets)
        self._rules = replace(self._rules, table=tuple(map(node_u32, nodes)))

    def set_port_rules(
        self, balanced: Collection[int], pinned: Mapping[int, int], default_node: int | None
    ) -> None:
        validate_ports(balanced, pinned, default_node)
        self._rules = replace(
            self._rules,
            balanced=frozenset(balanced),
            pinned=dict(pinned),
            default_node=default_node,
        )

    def set_deny(self, cidrs: Sequence[str]) -> None:
        validate_cidrs(cidrs)
        self._rules = replace(self._rules, deny=Rules.compile_deny(cidrs))

    def set_vips(self, vips: Mapping[str, Collection[int] | None]) -> None:
        wanted = validate_vips(vips)
        main = self._vip.packed
        others = {a: p for a, p in wanted.items() if a != main}
        addresses = [ipaddress.IPv4Network(int.from_bytes(a, "big")) for a in wanted]
        networks: list[ipaddress.IPv4Network] = list(ipaddress.collapse_addresses(addresses))
        steal_more = set(networks) - set(self._networks)
        if steal_more:  # steal the new VIPs first: the rules below expect their frames
            self._networks = networks
            self._resteal()
        self._rules = replace(
            self._rules, vip=main if main in wanted else b"\0" * 4,
            vip_ports=wanted.get(main, frozenset()), vips=others)
        if not steal_more and networks != self._networks:
            self._networks = networks
            self._resteal()

    def last_access_ns(self) -> list[int]:
        return list(self._last)

    def counters(self) -> DataPlaneCounters:
        c = dict(self._counts)
        return DataPlaneCounters(
            packets=dict(self._node_pkts),
            drops={k: c.get(k, 0) for k in ("acl", "port", "no_node")},
            redirected=c.get("forward", 0),
            passed_self=c.get("self", 0) + c.get("not_configured", 0),
            passed_other=c.get("other_proto", 0),
            fragments=c.get("fragment", 0),
            malformed=c.get("malformed", 0),
            icmp_errors=c.get("icmp", 0),
        )
