"""The `[cdn]` section of the config (read and checked by dlba/config/sections.py)."""

from __future__ import annotations

from dataclasses import dataclass

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
