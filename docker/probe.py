"""Checks of the compose cluster, run inside its `client` container by docker/test-compose.sh.

Each subcommand prints one JSON line and exits 0 when the check holds, 1 (with the reason on
stderr) when it does not. Standard library only: it runs on the image's Python.

  probe.py serve                      HTTP, HTTPS (verified against the array's CA) and HTTP/2
                                      (curl) via the VIP
  probe.py sticky                     /login's JSESSIONID keeps a session on one back end
  probe.py status                     every node's role, scheduler and config_version
  probe.py vip-mac                    the MAC the client's ARP cache holds for the VIP
  probe.py arp                        exactly one MAC answers ARP for the VIP
  probe.py failover OLD_MAC           wait for the VIP to serve from another MAC

Environment (the compose file sets it): DLBA_VIP, DLBA_NODES; DLBA_CERTS holds ca.pem and
admin.token.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TIMEOUT_S = 2.0


class CheckFailed(Exception):
    pass


def env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise CheckFailed(f"{name} is not set")
    return value


def certs() -> Path:
    return Path(os.environ.get("DLBA_CERTS", "/certs"))


def get(url_path: str, tls: bool = False, cookie: str = "", host: str = "", port: int = 0,
        token: str = "", timeout: float = TIMEOUT_S,
        ) -> tuple[int, dict[str, str], list[str], bytes]:
    """One request on a new connection: (status, headers, Set-Cookie values, body)."""
    host = host or env("DLBA_VIP")
    conn: http.client.HTTPConnection
    if tls:
        ctx = ssl.create_default_context(cafile=str(certs() / "ca.pem"))
        conn = http.client.HTTPSConnection(host, port or 443, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port or 80, timeout=timeout)
    headers = {"Connection": "close"}
    if cookie:
        headers["Cookie"] = cookie
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", url_path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        cookies = resp.headers.get_all("Set-Cookie") or []
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, cookies, body
    finally:
        conn.close()


def serve() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scheme, tls in (("http", False), ("https", True)):
        status, headers, _, _ = get("/whoami", tls=tls)
        if status != 200 or "x-backend" not in headers:
            raise CheckFailed(f"{scheme}: status {status}, headers {headers}")
        out[scheme] = headers["x-backend"]
    out["h2"] = http2()
    return out


def http2() -> str:
    """One request with curl over HTTP/2 (ALPN h2): the image's node must speak it."""
    url = f"https://{env('DLBA_VIP')}/whoami"
    done = subprocess.run(
        ["curl", "-sS", "--http2", "--max-time", str(TIMEOUT_S), "--cacert",
         str(certs() / "ca.pem"), "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url],
        capture_output=True, text=True, timeout=TIMEOUT_S + 5)
    if done.stdout.strip() != "2 200":
        raise CheckFailed(f"HTTP/2: curl said {done.stdout!r} {done.stderr.strip()!r}")
    return "HTTP/2 200"


def cookie_header(set_cookies: list[str]) -> str:
    return "; ".join(c.split(";", 1)[0].strip() for c in set_cookies)


def sticky(sessions: int = 4, requests: int = 8) -> dict[str, Any]:
    seen: list[str] = []
    for _ in range(sessions):
        status, headers, set_cookies, _ = get("/login")
        jar = cookie_header(set_cookies)
        if status != 200 or "JSESSIONID=" not in jar:
            raise CheckFailed(f"/login: status {status}, Set-Cookie {set_cookies}")
        backend = headers["x-backend"]
        for i in range(requests):
            status, headers, more, _ = get("/whoami", cookie=jar)
            if status != 200 or headers.get("x-backend") != backend:
                raise CheckFailed(f"request {i} of a session logged in on {backend}: status "
                                  f"{status}, reached {headers.get('x-backend')}")
            if more:
                jar = "; ".join(filter(None, [jar, cookie_header(more)]))
        seen.append(backend)
    return {"sessions": seen, "requests_each": requests}


def nodes() -> dict[str, str]:
    return dict(p.strip().split("=", 1) for p in env("DLBA_NODES").split(","))


def status() -> dict[str, Any]:
    token = (certs() / "admin.token").read_text().strip()
    out: dict[str, Any] = {}
    for name, address in nodes().items():
        try:
            code, _, _, body = get("/status", host=address, port=9000, token=token)
        except OSError as e:
            out[name] = {"error": str(e)}
            continue
        doc = json.loads(body) if code == 200 else {}
        out[name] = {"role": doc.get("role"), "scheduler": doc.get("scheduler"),
                     "config_version": doc.get("config_version"), "http": code}
    return out


def vip_mac() -> str:
    vip = env("DLBA_VIP")
    for line in Path("/proc/net/arp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == vip and fields[3] != "00:00:00:00:00:00":
            return fields[3]
    return ""


ETH_P_ARP = 0x0806


def front_interface(vip: str) -> tuple[str, str]:
    """(interface, own address) of the client on the VIP's subnet."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        iface = ipaddress.IPv4Interface(fields[3])
        if ipaddress.IPv4Address(vip) in iface.network and iface.network.prefixlen < 32:
            return fields[1], str(iface.ip)
    raise CheckFailed(f"no interface on the subnet of {vip}")


def arp_answers(wait_s: float = 0.5) -> dict[str, Any]:
    """Ask who has the VIP (a broadcast ARP request) and gather every MAC that answers: only
    the scheduler's process may (every node's kernel has arp_ignore=1)."""
    vip = env("DLBA_VIP")
    ifname, own = front_interface(vip)
    macs: set[str] = set()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        mac = s.getsockname()[4]
        s.send(b"\xff" * 6 + mac + struct.pack("!HHHBBH", ETH_P_ARP, 1, 0x0800, 6, 4, 1)
               + mac + socket.inet_aton(own) + b"\x00" * 6 + socket.inet_aton(vip))
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                frame = s.recv(128)
            except TimeoutError:
                break
            if len(frame) < 42:
                continue
            op = struct.unpack_from("!H", frame, 20)[0]
            sender_mac, sender_ip = frame[22:28], frame[28:32]
            if op == 2 and sender_ip == socket.inet_aton(vip):
                macs.add(":".join(f"{b:02x}" for b in sender_mac))
    if len(macs) != 1:
        raise CheckFailed(f"{len(macs)} MACs answer ARP for {vip}: {sorted(macs)}")
    return {"vip": vip, "mac": macs.pop()}


def failover(old_mac: str, limit_s: float = 20.0) -> dict[str, Any]:
    """Poll the VIP (short timeouts, so a request stuck on the dead MAC costs little) until one
    succeeds with the VIP's ARP entry on another MAC than the dead scheduler's. Started before
    the kill: requests through the old scheduler do not count. `served_ns` is the wall clock
    (shared with the host) when the VIP served again."""
    failed = 0
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            ok = get("/whoami", timeout=0.3)[0] == 200
        except OSError:
            ok = False
        mac = vip_mac()
        if ok and mac and mac != old_mac:
            return {"served_ns": time.time_ns(), "mac": mac, "failed_requests": failed}
        failed += not ok
        time.sleep(0.02)
    raise CheckFailed(f"the VIP did not serve from another MAC than {old_mac} in {limit_s} s")


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["serve"]:
            result: Any = serve()
        elif argv[:1] == ["sticky"]:
            result = sticky()
        elif argv[:1] == ["status"]:
            result = status()
        elif argv[:1] == ["arp"]:
            result = arp_answers()
        elif argv[:1] == ["vip-mac"]:
            result = {"mac": vip_mac()}
        elif argv[:1] == ["failover"] and len(argv) == 2:
            result = failover(argv[1])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (CheckFailed, OSError, ValueError) as e:
        print(f"probe {argv[0]}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
