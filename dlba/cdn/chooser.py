"""Which objects go to the CDN: the heaviest by bytes that match the configured types and that
the back end itself let be cached; and the chosen set as every node holds it."""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dlba.cdn.popularity import Figure


def type_matcher(globs: Sequence[str]) -> re.Pattern[str]:
    """One compiled pattern for the path globs (`*.css`): a path matches without its query."""
    if not globs:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs), re.IGNORECASE)


STICKY = 1.25  # a chosen object stays until a newcomer outweighs it by this factor


def choose(figures: Iterable[Figure], types: re.Pattern[str], top: int,
           current: frozenset[str] = frozenset()) -> list[Figure]:
    """The `top` heaviest cacheable objects of the configured types (ties by path). Objects
    already chosen (`current`) count STICKY times their bytes, so two objects near the cut do
    not swap places at every decision (each change drops every node's cached pages)."""
    ok = [f for f in figures if f.cacheable and f.bytes > 0 and types.match(f.path)]
    ok.sort(key=lambda f: (-f.bytes * (STICKY if f.path in current else 1.0), f.path))
    chosen = ok[:top]
    chosen.sort(key=lambda f: (-f.bytes, f.path))
    return chosen


@dataclass(frozen=True)
class Choice:
    """The chosen set: paths, their figures when chosen, and a version that changes when (and
    only when) the paths do, so a node can tell the choice moved and drop its cached pages."""

    objects: tuple[Figure, ...] = ()

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(f.path for f in self.objects)

    @property
    def version(self) -> str:
        h = hashlib.sha256("\n".join(sorted(self.paths)).encode()).hexdigest()
        return h[:16] if self.objects else "empty"

    def to_wire(self) -> dict[str, object]:
        return {"version": self.version, "objects": [f.to_wire() for f in self.objects]}

    @staticmethod
    def from_wire(data: object) -> Choice:
        if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
            raise ValueError("not a choice")
        return Choice(tuple(Figure.from_wire(o) for o in data["objects"]))
