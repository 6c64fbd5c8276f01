"""The proxy side of virtual services on a real namespace array: two services on three VIPs
(one a /28 whose two halves name two classes), three pools, host and path routes, SNI
certificates per service, all pushed live; requests go through the scheduler's data plane to
every node and land in the pool their route names."""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from dlba.tls.certs import load_ca, make_cert, write_cert
from tests.array.array_harness import CLIENT_IP, VIP, Array, dlba, running_array, wait_until

pytestmark = pytest.mark.array

SERVICES = f'''
[[pools]]
name = "web"

[[pools]]
name = "static"

[[services]]
name = "shop"
vips = ["{VIP}", "198.18.0.112/28"]
ports = [80, 443]
pool = "web"

[[services.routes]]
host = "static.shop.test"
pool = "static"

[[services.routes]]
path_prefix = "/static/"
pool = "static"

[[services.certs]]
names = ["shop.test", "*.shop.test"]
cert = "certs/shop.pem"
key = "certs/shop.key"

[[services]]
name = "api"
vips = ["198.18.0.200"]
ports = [8080]
tls_ports = []

[[classes]]
name = "gold"
priority = 0
vips = ["198.18.0.112/29"]

[[classes]]
name = "silver"
priority = 1
vips = ["198.18.0.120/29"]
'''


def pushed_config(arr: Array) -> Path:
    """The array's config with back end 2 in "web", 3 in "static", and the services."""
    ca = load_ca(arr.state / "certs" / "ca.pem", arr.state / "certs" / "ca.key")
    cert, key = make_cert(ca, ["shop.test", "*.shop.test"])
    write_cert(cert, key, arr.state / "certs" / "shop.pem", arr.state / "certs" / "shop.key")
    text = (arr.state / "cluster.toml").read_text()
    text = text.replace("id = 2\n", 'id = 2\npool = "web"\n').replace(
        "id = 3\n", 'id = 3\npool = "static"\n')
    path = arr.state / "services-routes.toml"
    path.write_text(text + SERVICES)
    return path


def fetch(arr: Array, vip: str, port: int, sport: int, path: str, host: str,
          sni: str | None = None) -> tuple[str, str]:
    """The back end that answered (X-Backend) and, over TLS, the certificate's SAN names."""
    cafile = str(arr.state / "certs" / "ca.pem")

    def call() -> tuple[str, str]:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        raw.settimeout(3)
        raw.bind((CLIENT_IP, sport))
        raw.connect((vip, port))
        s: socket.socket = raw
        names = ""
        if sni is not None:
            ctx = ssl.create_default_context(cafile=cafile)
            ctx.check_hostname = False
            s = ctx.wrap_socket(raw, server_hostname=sni)
            der = s.getpeercert(binary_form=True)
            assert der is not None
            names = ",".join(x509.load_der_x509_certificate(der).extensions
                             .get_extension_for_class(x509.SubjectAlternativeName)
                             .value.get_values_for_type(x509.DNSName))
        with s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                      .encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        m = re.search(rb"\r\nX-Backend: (\w+)", data)
        assert m is not None, data[:200]
        return m.group(1).decode(), names

    result: tuple[str, str] = arr.in_client(call)
    return result


def test_pools_routes_and_sni_through_the_array(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=3, backends=3) as arr:
        r = dlba("config", "push", str(pushed_config(arr)), "--state", str(arr.state))
        assert r.returncode == 0, r.stderr

        def ready() -> bool:
            try:
                return fetch(arr, "198.18.0.113", 443, 43000, "/whoami", "shop.test",
                             "shop.test")[0] == "b2"
            except OSError:
                return False

        wait_until(ready, 15, "the shop service on TLS")
        for i in range(3):  # several source ports: the client table spreads them over nodes
            sport = 43100 + 10 * i
            assert fetch(arr, VIP, 443, sport, "/whoami", "www.shop.test",
                         "www.shop.test") == ("b2", "shop.test,*.shop.test")
            assert fetch(arr, "198.18.0.121", 80, sport + 1, "/whoami",
                         "static.shop.test")[0] == "b3"
            assert fetch(arr, "198.18.0.114", 80, sport + 2, "/static/a.css",
                         "shop.test")[0] == "b3"
            assert fetch(arr, "198.18.0.200", 8080, sport + 3, "/whoami", "api.test")[0] == "b1"
        # An unknown name gets the [tls] certificate.
        _, names = fetch(arr, VIP, 443, 43200, "/whoami", "other.test", "other.test")
        assert "shop.test" not in names
        # Each node counted its share; together: gold from the /28's first half, silver from
        # the second, default from the other VIPs.
        classes: dict[str, int] = {}
        for k in (1, 2, 3):
            for pool in arr.admin(k, "/status")["services"]["pools"].values():
                for name, c in pool["classes"].items():
                    classes[name] = classes.get(name, 0) + c["requests"]
        assert classes["gold"] >= 4 and classes["silver"] == 3 and classes["default"] >= 7
