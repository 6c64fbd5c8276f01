"""The `[cdn]` section of the config (read and checked by dlba/config/sections.py) and a
service's own `[services.cdn]` table, which overrides some of its keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

DEFAULT_TYPES = ("*.css", "*.js", "*.png", "*.jpg", "*.jpeg", "*.gif", "*.svg", "*.webp",
                 "*.woff", "*.woff2")


@dataclass(frozen=True)
class CdnConfig:
    enabled: bool = False
    base: str = "https://cdn.example.test"  # chosen objects' URLs become base + path
    types: tuple[str, ...] = DEFAULT_TYPES  # path globs of the objects that may be chosen
    top: int = 50  # objects chosen at most
    sample: float = 0.1  # fraction of the forwarded traffic sampled
    cache_mb: float = 64.0  # rewritten pages kept (per proxy process)
    # Fold the client's address into the CDN host name (c198-51-100-7.cdn.example.test), so
    # the CDN's DNS sees the exact client, as the patent suggests; pages are then cached per
    # client address.
    fold_client: bool = False


@dataclass(frozen=True)
class CdnOverride:
    """A service's `[services.cdn]`: the keys it sets (None: inherited from `[cdn]`). sample
    and cache_mb stay array-wide: they bound the proxy process, not a service."""

    enabled: bool | None = None
    base: str | None = None
    types: tuple[str, ...] | None = None
    top: int | None = None

    def apply(self, cfg: CdnConfig) -> CdnConfig:
        changes = {f.name: getattr(self, f.name) for f in fields(self)
                   if getattr(self, f.name) is not None}
        return replace(cfg, **changes) if changes else cfg


def per_service(default: CdnConfig, services: Sequence[tuple[str, CdnOverride]]
                ) -> dict[str, CdnConfig]:
    """Each service's CDN settings: `[cdn]` with its own overrides. No services (a Config made
    in code) reads as the implicit service "default" with `[cdn]` as it is."""
    if not services:
        return {"default": default}
    return {name: o.apply(default) for name, o in services}
