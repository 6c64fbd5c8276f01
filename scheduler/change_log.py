"""The client table's change log: the versioned history a scheduler sends its followers.

Every committed change of the client table (patent 003, Fig. 4) is kept under its version, so a
follower a few versions behind gets just the buckets that changed since (a delta) instead of
the whole table. The log is bounded in bucket changes, not operations; a follower further
behind than it reaches gets a snapshot. Pure: no I/O.
"""

from __future__ import annotations

from collections import deque

Change = tuple[int, int | None]  # (bucket, node that owns it now, or None)


class ChangeLog:
    """(version, changes) entries since a floor version, at most `limit` bucket changes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0  # bucket changes held
        self.floor = 0  # deltas can start at this version or later
        self._entries: deque[tuple[int, tuple[Change, ...]]] = deque()

    def append(self, version: int, changes: tuple[Change, ...]) -> None:
        self._entries.append((version, changes))
        self.size += len(changes)
        while self.size > self.limit and self._entries:
            # Evicting whole operations keeps every remaining delta exact.
            v, dropped = self._entries.popleft()
            self.size -= len(dropped)
            self.floor = v

    def restart(self, version: int) -> None:
        """Forget the history: deltas can start at `version` only (a new term, a snapshot)."""
        self._entries.clear()
        self.size = 0
        self.floor = version

    def since(self, version: int) -> list[Change] | None:
        """The latest owner of every bucket changed after `version`, by bucket; None when the
        log no longer reaches back to `version`."""
        if version < self.floor:
            return None
        latest: dict[int, int | None] = {}
        for v, changes in self._entries:
            if v > version:
                for b, n in changes:
                    latest[b] = n
        return sorted(latest.items())
