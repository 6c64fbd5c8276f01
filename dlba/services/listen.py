"""Where a node listens for its virtual services.

Every port of every `[[services]]` entry is opened on the wildcard address (0.0.0.0:port,
SO_REUSEPORT as every listener), not once per VIP: a /24 prefix would be 256 sockets per port,
and a VIP added or removed by a config push then needs no socket change at all. The service is
told apart per connection by the local address the client dialled (dlba/services/routing.py).
A port is TLS when the service that names it lists it in `tls_ports`. Listeners the node's own
`listen`/`listen_tls` name stay as they are (a socket on the VIP itself takes precedence in the
kernel and serves the same way).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from dlba.config.model import NodeConfig
from dlba.config.reader import HostPort
from dlba.config.services import ServiceConfig

WILDCARD = "0.0.0.0"


def with_service_ports(node: NodeConfig, services: Sequence[ServiceConfig]) -> NodeConfig:
    """`node` with a wildcard listener for each service port it does not listen on yet."""
    have = {a.port for a in (*node.listen, *node.listen_tls) if a.host in (WILDCARD, "::")}
    plain = list(node.listen)
    tls = list(node.listen_tls)
    for s in services:
        if s.implicit:
            continue  # today's single VIP: the node's listen keys say where it listens
        for port in s.ports:
            if port in have:
                continue
            have.add(port)
            (tls if port in s.tls_ports else plain).append(HostPort(WILDCARD, port))
    if len(plain) == len(node.listen) and len(tls) == len(node.listen_tls):
        return node
    return dataclasses.replace(node, listen=tuple(plain), listen_tls=tuple(tls))
