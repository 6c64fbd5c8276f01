"""Client classes: which class a request's client belongs to (seed 002).

A class is recognised by the VIP the client dialled (the patent's source-side information in
the destination address: the node sees it as the connection's local address), by the client's
source address, or by a signed token (dlba/services/tokens.py). A valid token for a token class
wins; otherwise the highest-priority class (lowest number) whose VIPs or sources match. A client
no class recognises is in the class "default": the one configured under that name, else an
implicit one below every configured priority.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from dlba.config.services import ClassConfig

DEFAULT_CLASS = "default"
CACHE_MAX = 4096  # (local, peer) pairs remembered; cleared whole when full


@dataclass(frozen=True, slots=True)
class ClientClass:
    name: str
    priority: int  # 0 is the highest
    weight: int = 100
    pools: frozenset[str] = frozenset()  # empty: every pool

    def may_use(self, pool: str) -> bool:
        return not self.pools or pool in self.pools


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class _Matcher:
    cls: ClientClass
    vips: tuple[Network, ...]
    sources: tuple[Network, ...]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return a


class Classifier:
    def __init__(self, classes: Sequence[ClassConfig]) -> None:
        self.by_name: dict[str, ClientClass] = {}
        matchers: list[_Matcher] = []
        for c in classes:
            cls = ClientClass(c.name, c.priority, c.weight, frozenset(c.pools))
            self.by_name[c.name] = cls
            nets = tuple(ipaddress.ip_network(v, strict=False) for v in c.vips)
            srcs = tuple(ipaddress.ip_network(s, strict=False) for s in c.sources)
            if nets or srcs:
                matchers.append(_Matcher(cls, nets, srcs))
        # Highest priority first; equal priorities keep the file's order.
        self._matchers = sorted(matchers, key=lambda m: m.cls.priority)
        self.token_classes = frozenset(c.name for c in classes if c.token)
        default = self.by_name.get(DEFAULT_CLASS)
        if default is None:
            lowest = max((c.priority for c in classes), default=-1) + 1
            default = ClientClass(DEFAULT_CLASS, lowest)
        self.default = default
        self._cache: dict[tuple[str, str], ClientClass] = {}

    @property
    def classes(self) -> list[ClientClass]:
        """Every class, the default included, highest priority first."""
        out = dict(self.by_name)
        out.setdefault(DEFAULT_CLASS, self.default)
        return sorted(out.values(), key=lambda c: (c.priority, c.name))

    def classify(self, local_ip: str, peer_ip: str, token_class: str | None = None
                 ) -> ClientClass:
        """`token_class`: the class a verified token names (tokens.verify_token), if any."""
        if token_class is not None and token_class in self.token_classes:
            return self.by_name[token_class]
        key = (local_ip, peer_ip)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        cls = self._match(_address(local_ip), _address(peer_ip))
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key] = cls
        return cls

    def _match(self, local: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
               peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> ClientClass:
        for m in self._matchers:
            if local is not None and any(local in n for n in m.vips):
                return m.cls
            if peer is not None and any(peer in n for n in m.sources):
                return m.cls
        return self.default
