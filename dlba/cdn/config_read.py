"""Reading and checking `[cdn]` (called by dlba/config/sections.py; every problem named by key)."""

from __future__ import annotations

from urllib.parse import urlsplit

from dlba.cdn.settings import CdnConfig
from dlba.config.reader import Reader


def read_cdn(r: Reader) -> CdnConfig:
    d = CdnConfig()
    base = r.take("base", str, d.base)
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment or any(c in base for c in " \t\"'<>&"):
        r.report("base", f"expected an http(s):// URL without query, got {base!r}")
        base = d.base
    types = r.take_list("types", d.types)
    for t in types:
        if not t.strip():
            r.report("types", "an empty pattern")
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
