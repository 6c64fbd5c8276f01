"""Virtual services through a real node: two services on three VIPs (one a /28 whose addresses
name two classes), three pools, host and path routes, SNI certificates per service, per-service
HSTS, redirect and persistence cookie, classes seen in /status."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiohttp
from cryptography import x509

from dlba.tls.certs import CertPaths, load_ca, make_cert, write_cert
from tests.integration.loopback import free_port, loopback_array, make_certs

SHOP_VIP, SHOP_GOLD, SHOP_SILVER, API_VIP = "127.0.10.1", "127.0.10.17", "127.0.10.21", "127.0.20.1"


def fetch(ip: str, port: int, path: str, host: str, *, tls_name: str | None = None,
          cafile: Path | None = None, headers: str = "") -> tuple[int, dict[str, str], str]:
    """One HTTP/1.1 request to ip:port (TLS with SNI `tls_name`); status, headers, SAN of the
    certificate served (TLS) or ""."""
    raw = socket.create_connection((ip, port), timeout=5)
    sock: socket.socket = raw
    san = ""
    try:
        if tls_name is not None:
            ctx = ssl.create_default_context(cafile=str(cafile))
            ctx.check_hostname = False
            sock = ctx.wrap_socket(raw, server_hostname=tls_name)
            der = sock.getpeercert(binary_form=True)
            assert der is not None
            ext = x509.load_der_x509_certificate(der).extensions
            san = ",".join(ext.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
                     f"Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    out: dict[str, str] = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        out[k] = f"{out[k]}\n{v.strip()}" if k in out else v.strip()  # Set-Cookie: one a line
    return int(head[0].split()[1]), out, san


def service_config(certs: CertPaths, plain: int, tls: int) -> str:
    d = certs.ca_cert.parent
    ca = load_ca(certs.ca_cert, certs.ca_key)
    for name, names in (("shop", ["shop.test", "*.shop.test"]), ("api", ["api.test"])):
        cert, key = make_cert(ca, names)
        write_cert(cert, key, d / f"{name}.pem", d / f"{name}.key")
    return f"""
[[pools]]
name = "web"
policy = "weighted_rr"

[[pools]]
name = "static"
url_hash_paths = ["/static/"]

[[services]]
name = "shop"
vips = ["{SHOP_VIP}", "127.0.10.16/28"]
ports = [{plain}, {tls}]
tls_ports = [{tls}]
pool = "web"
redirect_https = true

[[services.routes]]
host = "static.shop.test"
pool = "static"

[[services.routes]]
path_prefix = "/static/"
pool = "static"

[[services.certs]]
names = ["shop.test", "*.shop.test"]
cert = "{d / 'shop.pem'}"
key = "{d / 'shop.key'}"

[[services]]
name = "api"
vips = ["{API_VIP}"]
ports = [{plain}, {tls}]
tls_ports = [{tls}]
pool = "default"
hsts = false
cookie = "APISRV"

[[services.routes]]
host = "*.img.test"
path_prefix = "/i/"
pool = "static"

[[services.certs]]
names = ["api.test"]
cert = "{d / 'api.pem'}"
key = "{d / 'api.key'}"

[[classes]]
name = "gold"
priority = 0
vips = ["127.0.10.16/30"]

[[classes]]
name = "silver"
priority = 1
vips = ["127.0.10.20/30"]
"""


POOLS = {1: "default", 2: "web", 3: "web", 4: "static", 5: "static"}


async def test_two_services_three_pools_routes_and_sni(tmp_path: Path) -> None:
    # The array's certificates first (loopback_array keeps what exists), so its CA signs the
    # services' certificates too.
    certs = make_certs(tmp_path / "certs")
    plain, tls = free_port(), free_port()
    extra = service_config(certs, plain, tls)
    backend_extra = {i: f'pool = "{p}"' for i, p in POOLS.items() if p != "default"}
    async with loopback_array(tmp_path, 5, extra=extra, backend_extra=backend_extra) as arr:
        ca = arr.certs.ca_cert

        async def get(*args: object, **kw: object) -> tuple[int, dict[str, str], str]:
            return await asyncio.to_thread(fetch, *args, **kw)  # type: ignore[arg-type]

        def pool_of(h: dict[str, str]) -> str:
            return POOLS[int(h["x-backend"][1:])]

        # shop: default pool web; host route and path route to static; redirect on plain.
        st, h, _ = await get(SHOP_VIP, plain, "/whoami", "shop.test")
        assert st == 308 and h["location"].startswith("https://shop.test")
        st, h, san = await get(SHOP_VIP, tls, "/whoami", "www.shop.test", tls_name="www.shop.test",
                               cafile=ca)
        assert st == 200 and pool_of(h) == "web" and "shop.test" in san
        assert "strict-transport-security" in h
        st, h, _ = await get(SHOP_GOLD, tls, "/whoami", "static.shop.test",
                             tls_name="static.shop.test", cafile=ca)
        assert pool_of(h) == "static"
        st, h, _ = await get(SHOP_SILVER, tls, "/static/a.css", "www.shop.test",
                             tls_name="www.shop.test", cafile=ca)
        assert pool_of(h) == "static"
        # api: its own certificate, no HSTS, default pool; host and path route together.
        st, h, san = await get(API_VIP, tls, "/whoami", "api.test", tls_name="api.test", cafile=ca)
        assert st == 200 and pool_of(h) == "default" and san == "api.test"
        assert "strict-transport-security" not in h
        st, h, _ = await get(API_VIP, plain, "/i/x.png", "cdn.img.test")
        assert pool_of(h) == "static"
        st, h, _ = await get(API_VIP, plain, "/whoami", "cdn.img.test")  # path does not match
        assert pool_of(h) == "default"
        # An unknown SNI name gets the [tls] certificate.
        _, _, san = await get(API_VIP, tls, "/whoami", "other.test", tls_name="other.test",
                              cafile=ca)
        assert "localhost" in san
        # Persistence: the api's cookie name; a cookie of the web pool's back end does not pull
        # an api request out of its pool.
        st, h, _ = await get(API_VIP, plain, "/login", "api.test")
        assert "\nAPISRV=" in h["set-cookie"]
        st, h, _ = await get(SHOP_VIP, tls, "/login", "shop.test", tls_name="shop.test",
                             cafile=ca)
        web_cookie = h["set-cookie"].split("\nDLBASERVER=")[1].split(";")[0]
        for _ in range(3):
            st, h2, _ = await get(API_VIP, plain, "/whoami", "api.test",
                                  headers=f"Cookie: APISRV={web_cookie}\r\n")
            assert pool_of(h2) == "default"
        st, h3, _ = await get(SHOP_VIP, tls, "/whoami", "shop.test", tls_name="shop.test",
                              cafile=ca, headers=f"Cookie: DLBASERVER={web_cookie}\r\n")
        assert h3["x-backend"] == h["x-backend"]  # pinned within its own pool

        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {arr.token}"}) as s, \
                s.get(arr.admin_url + "/status") as r:
            status = await r.json()
        svc = status["services"]
        assert [x["name"] for x in svc["services"]] == ["shop", "api"]
        assert set(svc["pools"]) == {"default", "web", "static"}
        classes = svc["pools"]["static"]["classes"]
        assert classes["gold"]["requests"] == 1 and classes["silver"]["requests"] == 1
