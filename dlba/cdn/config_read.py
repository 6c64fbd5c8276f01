"""Reading and checking `[cdn]` (called by dlba/config/sections.py) and a service's
`[services.cdn]` (called by dlba/config/services.py); every problem named by key."""

from __future__ import annotations

from urllib.parse import urlsplit

from dlba.cdn.settings import CdnConfig, CdnOverride
from dlba.config.reader import Reader


def _base(r: Reader, default: str) -> str:
    base = r.take("base", str, default)
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment or any(c in base for c in " \t\"'<>&"):
        r.report("base", f"expected an http(s):// URL without query, got {base!r}")
        return default
    return base


def _types(r: Reader, default: tuple[str, ...]) -> tuple[str, ...]:
    types = r.take_list("types", default)
    for t in types:
        if not t.strip():
            r.report("types", "an empty pattern")
    return types


def read_cdn(r: Reader) -> CdnConfig:
    d = CdnConfig()
    base = _base(r, d.base)
    types = _types(r, d.types)
    sample = r.take("sample", float, d.sample)
    if not 0.0 <= sample <= 1.0:
        r.report("sample", f"a fraction from 0 to 1, got {sample}")
        sample = d.sample
    cfg = CdnConfig(
        enabled=r.take("enabled", bool, d.enabled),
        base=base,
        types=types,
        top=r.positive("top", int, d.top),
        sample=sample,
        cache_mb=r.positive("cache_mb", float, d.cache_mb),
        fold_client=r.take("fold_client", bool, d.fold_client),
    )
    r.done()
    return cfg


def read_cdn_override(r: Reader) -> CdnOverride:
    """`[services.cdn]`: enabled, base, types, top; a key left out is the `[cdn]` one."""
    keys = set(r.table)
    enabled = r.take("enabled", bool, False) if "enabled" in keys else None
    base = _base(r, "") if "base" in keys else None
    types = _types(r, ()) if "types" in keys else None
    top = r.positive("top", int, 1) if "top" in keys else None
    r.done()
    return CdnOverride(enabled, base or None, types, top)
