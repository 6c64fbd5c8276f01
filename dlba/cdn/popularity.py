"""Which objects carry the bytes: a weighted space-saving summary over a sliding window.

Memory is bounded whatever the URL space: a window of `slots` buckets, each a space-saving
summary of at most `capacity` objects (Metwally et al., weighted by bytes). An object whose true
bytes in a bucket exceed that bucket's total / capacity is always kept; an object's estimate is
never below its true bytes and at most `error` above. Buckets rotate as time passes, so what was
popular a window ago fades out.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Entry:
    bytes: int = 0  # estimated bytes (never below the true figure)
    count: int = 0  # responses sampled (estimated the same way)
    error: int = 0  # how much of `bytes` may belong to objects it replaced
    uncacheable: bool = False  # one of its sampled responses said it must not be cached


@dataclass
class SpaceSaving:
    capacity: int
    entries: dict[str, Entry] = field(default_factory=dict)
    total: int = 0

    def add(self, key: str, nbytes: int, cacheable: bool) -> None:
        self.total += nbytes
        e = self.entries.get(key)
        if e is None:
            if len(self.entries) < self.capacity:
                e = self.entries[key] = Entry()
            else:
                # The lightest object leaves; the newcomer inherits its weight as its error.
                victim = min(self.entries, key=lambda k: self.entries[k].bytes)
                old = self.entries.pop(victim)
                e = self.entries[key] = Entry(old.bytes, old.count, old.bytes)
        e.bytes += nbytes
        e.count += 1
        if not cacheable:
            e.uncacheable = True


@dataclass(frozen=True)
class Figure:
    """One object's figures over the window (or merged over processes and nodes)."""

    path: str
    bytes: int
    count: int
    error: int
    cacheable: bool

    def to_wire(self) -> list[object]:
        return [self.path, self.bytes, self.count, self.error, self.cacheable]

    @staticmethod
    def from_wire(item: object) -> Figure:
        if not isinstance(item, list) or len(item) != 5:
            raise ValueError(f"not a figure: {item!r}")
        path, nbytes, count, error, cacheable = item
        if not (isinstance(path, str) and isinstance(nbytes, int) and isinstance(count, int)
                and isinstance(error, int) and isinstance(cacheable, bool)):
            raise ValueError(f"not a figure: {item!r}")
        return Figure(path, nbytes, count, error, cacheable)


class Popularity:
    """`slots` buckets of `slot_s` seconds each: the window is slots * slot_s."""

    def __init__(self, capacity: int = 256, slots: int = 6, slot_s: float = 10.0) -> None:
        self.capacity = capacity
        self.slot_s = slot_s
        self.buckets = [SpaceSaving(capacity) for _ in range(slots)]
        self.current = 0  # index of the bucket being filled
        self.epoch = 0  # slot number (time // slot_s) of the current bucket

    def _rotate(self, now: float) -> None:
        epoch = int(now // self.slot_s)
        steps = min(epoch - self.epoch, len(self.buckets))
        for _ in range(max(steps, 0)):
            self.current = (self.current + 1) % len(self.buckets)
            self.buckets[self.current] = SpaceSaving(self.capacity)
        if epoch > self.epoch:
            self.epoch = epoch

    def add(self, key: str, nbytes: int, cacheable: bool, now: float) -> None:
        self._rotate(now)
        self.buckets[self.current].add(key, nbytes, cacheable)

    def figures(self, now: float) -> list[Figure]:
        self._rotate(now)
        return merge([[Figure(k, e.bytes, e.count, e.error, not e.uncacheable)
                       for k, e in b.entries.items()] for b in self.buckets])

    def size(self) -> int:
        return sum(len(b.entries) for b in self.buckets)


def merge(groups: list[list[Figure]], limit: int | None = None) -> list[Figure]:
    """Figures of several buckets, processes or nodes summed per object, heaviest first (ties by
    path, so every node orders the same figures the same way); `limit` keeps the first ones."""
    acc: dict[str, list[int]] = {}
    for group in groups:
        for f in group:
            a = acc.get(f.path)
            if a is None:
                acc[f.path] = [f.bytes, f.count, f.error, int(not f.cacheable)]
            else:
                a[0] += f.bytes
                a[1] += f.count
                a[2] += f.error
                a[3] |= int(not f.cacheable)
    out = [Figure(p, a[0], a[1], a[2], not a[3]) for p, a in acc.items()]
    out.sort(key=lambda f: (-f.bytes, f.path))
    return out if limit is None else out[:limit]
