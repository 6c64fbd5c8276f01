"""Idle-bucket moves checked again at the last moment (pure: no I/O).

The scheduler decides which idle buckets move from a snapshot of the data plane's last-access
times, then tells its peers (an await) and only then writes the kernel's map. A connection that
starts in a moving bucket inside that gap begins on the old owner and continues on the new one,
which resets it. So just before the kernel write the last-access times are read again, and a
bucket that carried traffic since the snapshot stays with its old owner this time round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def busy_moves(before: Sequence[int | None], after: Sequence[int | None],
               owner_alive: Callable[[int], bool], last_ns: Sequence[int],
               since_ns: int) -> list[tuple[int, int]]:
    """(bucket, owner to keep) for each bucket the kernel would move away from an owner that is
    still alive although it carried traffic at or after `since_ns` (a dead owner's buckets move
    whatever their traffic: nothing answers there any more; a first owner is no move)."""
    return [(b, old) for b, (old, new) in enumerate(zip(before, after, strict=True))
            if old is not None and new is not None and new != old and owner_alive(old)
            and last_ns[b] >= since_ns]


def with_kept(assignment: Sequence[int | None], kept: Sequence[tuple[int, int]]
              ) -> list[int | None]:
    """`assignment` with the kept buckets back on their owners."""
    back = dict(kept)
    return [back.get(b, o) for b, o in enumerate(assignment)]
