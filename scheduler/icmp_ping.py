"""ICMP echo for the failover daemon: the patent's "simple ping test" of the scheduler.

A raw socket, written by hand because the probe is one packet and a reply match; a library
such as icmplib would add threads or its own event loop for no gain here.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"dlba-failover") -> bytes:
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(head + payload), ident, seq) + payload


class Pinger:
    """One raw ICMP socket; `ping()` sends an echo and waits for its reply or the timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.reader_added = False

    def _on_readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 8:
                continue
            kind, _, _, ident, seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if kind == 0 and ident == self.ident:
                fut = self.waiters.pop(seq, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    async def ping(self, address: str, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        if not self.reader_added:
            loop.add_reader(self.sock.fileno(), self._on_readable)
            self.reader_added = True
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        fut: asyncio.Future[None] = loop.create_future()
        self.waiters[seq] = fut
        try:
            self.sock.sendto(echo_request(self.ident, seq), (address, 0))
            await asyncio.wait_for(fut, timeout)
            return True
        except (TimeoutError, OSError):
            return False
        finally:
            self.waiters.pop(seq, None)

    def close(self) -> None:
        if self.reader_added:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.reader_added = False
        self.sock.close()
