"""Which virtual service a connection belongs to, and which pool a request of it goes to.

A node holds every VIP on `lo` and listens on each service port on the wildcard address, so a
connection's service is named by its local address (the VIP the client dialled) and port. A
local address no service names (the node's own address, a test dialling 127.0.0.1) falls back
to the first service that serves the port, then to the first service: the node still answers as
it did before services existed.

Within a service, the first route whose host (exact or `*.suffix`) and path prefix match names
the pool, else the service's default pool (HAProxy's `use_backend ... if`, `default_backend`).
"""

from __future__ import annotations

from collections.abc import Sequence

from dlba.config.services import ServiceConfig

CACHE_MAX = 4096


class ServiceRouter:
    def __init__(self, services: Sequence[ServiceConfig]) -> None:
        self.services = tuple(services)
        self._exact: dict[tuple[str, int], ServiceConfig] = {}
        self._any_port: dict[str, ServiceConfig] = {}  # a service with ports (): every port
        self._by_port: dict[int, ServiceConfig] = {}
        for s in self.services:
            addresses = s.addresses()
            if not s.ports:
                for a in addresses:
                    self._any_port.setdefault(a, s)
            for port in s.ports:
                self._by_port.setdefault(port, s)
                for a in addresses:
                    self._exact.setdefault((a, port), s)
        self.default: ServiceConfig | None = self.services[0] if self.services else None

    def ports(self) -> list[tuple[int, bool]]:
        """Every port a service names, with whether it is a TLS port, in the file's order."""
        out: dict[int, bool] = {}
        for s in self.services:
            for p in s.ports:
                out.setdefault(p, p in s.tls_ports)
        return list(out.items())

    def service_for(self, local_ip: str, port: int) -> ServiceConfig | None:
        if local_ip.startswith("::ffff:"):
            local_ip = local_ip[7:]
        s = self._exact.get((local_ip, port))
        if s is None:
            s = self._any_port.get(local_ip) or self._by_port.get(port) or self.default
        return s


def host_of(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The request's Host header (lower case, without port), "" when absent."""
    for name, value in headers:
        if len(name) == 4 and name.lower() == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host[: host.find("]") + 1]
            return host.rsplit(":", 1)[0] if ":" in host else host
    return ""
