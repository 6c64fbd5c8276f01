"""A certificate served for a set of SNI names: a `[[tls.sni]]` entry, or one of a
`[[services]]` entry's `certs` (the same keys, read by the same rule)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dlba.config.reader import Reader


@dataclass(frozen=True)
class SniCert:
    names: tuple[str, ...]
    cert: Path
    key: Path


def read_sni_cert(r: Reader, base: Path) -> SniCert:
    """`names`, `cert` and `key`, each required (a missing one reported once)."""
    names = r.take_list("names")
    if not names and not r.problems.has(r.key("names")):
        r.report("names", "missing")
    c, k = r.take_path("cert", base), r.take_path("key", base)
    for missing in [n for n, v in (("cert", c), ("key", k)) if v is None]:
        if not r.problems.has(r.key(missing)):
            r.report(missing, "missing")
    return SniCert(names, c or base, k or base)
