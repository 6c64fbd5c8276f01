"""The client table of patent 003 (Fig. 4): client IP/port hash bucket -> DLBA server #.

Pure state, no I/O: every method that depends on time takes ``now`` (seconds).  The algorithm is
the one of Linux's resilient next-hop groups: a fixed number of buckets, each owned by one node;
a failed node's buckets move at once, a new node (or a weight change) only gets buckets as they
fall idle, so a live connection never changes node because another node joined.

Memory is fixed at construction (two typed arrays of ``size`` entries plus a bounded change log),
so traffic cannot grow it.
"""

from __future__ import annotations

import ipaddress
from array import array
from collections.abc import Iterable, Sequence

from scheduler.change_log import Change, ChangeLog

# "No owner" is None in every method's arguments and results. ``array('i')`` cannot hold None:
# inside the owner array it is stored as _NO_OWNER, which never leaves this module.
_NO_OWNER = -1

# Last access of a bucket that never carried traffic: idle at any ``now``.  0.0 would not do: the
# clock is CLOCK_MONOTONIC (seconds since boot), so on a host up for less than ``idle_s`` a 0.0
# would look recent and pin every never-used bucket to its node.
NEVER = float("-inf")


class SyncError(ValueError):
    """A snapshot or delta that cannot be applied to this table."""


def ip_to_int(client_ip: str | int) -> int:
    """The client IPv4 address as an unsigned 32-bit integer (what the data plane hashes)."""
    if isinstance(client_ip, int):
        if not 0 <= client_ip <= 0xFFFFFFFF:
            raise ValueError(f"not an IPv4 address as u32: {client_ip}")
        return client_ip
    return int(ipaddress.IPv4Address(client_ip))


def bucket_of(client_ip: str | int, port: int, size: int) -> int:
    """bucket = (32-bit client IP + 16-bit client port) % size, exactly as the eBPF program does.

    The sum is taken in Python integers (no u32 wrap), which the C side must match by summing
    in 64 bits.
    """
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"not a port: {port}")
    return (ip_to_int(client_ip) + port) % size


def quotas(size: int, weights: Sequence[int], live: Sequence[bool]) -> list[int]:
    """Target # IP groups per node: proportional to weight over live nodes, summing to ``size``.

    Largest-remainder rounding keeps every quota within one bucket of its exact share; ties go to
    the lower index so the result is deterministic on every node that computes it.  If every
    live node has weight 0 they share equally: draining all of them must not black-hole traffic.
    """
    n = len(weights)
    eligible = [i for i in range(n) if live[i] and weights[i] > 0]
    eff = list(weights)
    if not eligible:
        eligible = [i for i in range(n) if live[i]]
        eff = [1] * n
    result = [0] * n
    if not eligible:
        return result
    total = sum(eff[i] for i in eligible)
    remainders: list[tuple[int, int]] = []
    for i in eligible:
        q, r = divmod(size * eff[i], total)
        result[i] = q
        remainders.append((-r, i))
    remainders.sort()
    for _, i in remainders[: size - sum(result)]:
        result[i] += 1
    return result


class ClientTable:
    """Buckets -> node index (or None), with last access times and a versioned change log."""

    def __init__(
        self,
        size: int,
        weights: Sequence[int],
        *,
        live: Sequence[bool] | None = None,
        log_limit: int | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        if any(w < 0 for w in weights):
            raise ValueError("weights must be >= 0")
        self.size = size
        self._weights = list(weights)
        self._live = list(live) if live is not None else [True] * len(weights)
        if len(self._live) != len(self._weights):
            raise ValueError("live and weights differ in length")
        # Who each node number is (membership.py): it travels with the sync messages, so a
        # copy indexes its nodes as the scheduler's does whatever order a config lists them in.
        self.names = list(names) if names is not None else [""] * len(self._weights)
        if len(self.names) != len(self._weights):
            raise ValueError("names and weights differ in length")
        self._owner = array("i", [_NO_OWNER]) * size
        self._last = array("d", [NEVER]) * size
        self._counts = [0] * len(self._weights)
        self.version = 0
        # Sync identity: a delta is only meaningful between tables of the same epoch, because a
        # new scheduler may restart from an older version than some follower already holds.
        self.epoch = 0
        self.panic_scheduler: int | None = None
        # The log is bounded in bucket changes, not operations; one table's worth by default is
        # enough for followers a few versions behind, anything further gets a snapshot.
        self._log = ChangeLog(size if log_limit is None else log_limit)

    # -- nodes ---------------------------------------------------------------------------------

    @property
    def node_count(self) -> int:
        return len(self._weights)

    def weight(self, node: int) -> int:
        return self._weights[node]

    def is_live(self, node: int) -> bool:
        return self._live[node]

    def add_node(self, weight: int, name: str = "") -> int:
        """Append a (not yet live) node on a config push; ``node_joined`` makes it live."""
        if weight < 0:
            raise ValueError("weight must be >= 0")
        self.names.append(name)
        self._weights.append(weight)
        self._live.append(False)
        self._counts.append(0)
        return len(self._weights) - 1

    def drop_last_node(self) -> None:
        """Forget the last node once it owns no bucket: a member a config push removed, and
        whose buckets have all left it as they fell idle (it drained)."""
        last = len(self._weights) - 1
        if last < 0 or self._counts[last]:
            raise ValueError("only a last node that owns no bucket can be dropped")
        self.names.pop()
        self._weights.pop()
        self._live.pop()
        self._counts.pop()
        if self.panic_scheduler == last:
            self.panic_scheduler = None

    def set_weight(self, node: int, weight: int) -> None:
        """Change a weight; like a join, buckets follow only as they fall idle (``rebalance``)."""
        if weight < 0:
            raise ValueError("weight must be >= 0")
        self._weights[node] = weight

    def quotas(self) -> list[int]:
        return quotas(self.size, self._weights, self._live)

    # -- lookups and the data plane's feedback -------------------------------------------------

    def bucket(self, client_ip: str | int, port: int) -> int:
        return bucket_of(client_ip, port, self.size)

    def owner(self, bucket: int) -> int | None:
        o = self._owner[bucket]
        return None if o == _NO_OWNER else o

    def last_access(self, bucket: int) -> float:
        return self._last[bucket]

    def touch(self, bucket: int, now: float) -> None:
        # max(): the data plane reports out of order (per-CPU maps); time must not run backwards.
        if now > self._last[bucket]:
            self._last[bucket] = now

    def touch_many(self, accesses: Iterable[tuple[int, float]]) -> None:
        for bucket, when in accesses:
            self.touch(bucket, when)

    def load_last_access(self, times: Sequence[float]) -> None:
        """Merge a whole last-access array read from the data plane's map.

        A time <= 0 is the map's "never" (both data planes start at 0 and stamp monotonic time,
        which is > 0 once the host runs): it leaves the bucket as it was.
        """
        if len(times) != self.size:
            raise ValueError("last-access array has the wrong size")
        last = self._last
        for b, t in enumerate(times):
            if t > 0.0 and t > last[b]:
                last[b] = t

    def reset_last_access(self, now: float) -> None:
        """On failover every bucket counts as busy: the new scheduler cannot know which are."""
        for b in range(self.size):
            self._last[b] = now

    def assignments(self) -> list[int | None]:
        return [None if o == _NO_OWNER else o for o in self._owner]

    def counts(self) -> list[int]:
        """# IP groups assigned per node (Fig. 5, column 503)."""
        return list(self._counts)

    # -- assignment changes --------------------------------------------------------------------

    def fill(self, now: float) -> int:
        """Give every ownerless bucket to the live node furthest below its quota."""
        q = self.quotas()
        changes: list[Change] = []
        for b in range(self.size):
            if self._owner[b] == _NO_OWNER:
                target = self._neediest(q)
                if target is None:
                    break
                changes.append((b, target))
                # An ownerless bucket carried no traffic: it keeps its last access (idle), so a
                # first fill does not pin every bucket for bucket_idle_s.
                self._set(b, target, self._last[b])
        return self._commit(changes)

    def node_failed(self, node: int, now: float) -> int:
        """Move the failed node's buckets at once; no other bucket moves."""
        self._live[node] = False
        if self.panic_scheduler == node:
            self.panic_scheduler = None
        return self._commit(self._evacuate(now))

    def _evacuate(self, now: float) -> list[Change]:
        """Reassign every bucket whose owner is not live to the neediest live node."""
        q = self.quotas()
        changes: list[Change] = []
        for b in range(self.size):
            o = self._owner[b]
            if o != _NO_OWNER and not self._live[o]:
                target = self._neediest(q)
                changes.append((b, target))
                self._set(b, target, now)
        return changes

    def node_joined(self, node: int, now: float) -> int:
        """Mark a node live.  Only ownerless buckets (no connection can be on them) move now."""
        self._live[node] = True
        return self.fill(now)

    def rebalance(self, now: float, idle_s: float) -> int:
        """Move idle buckets from over-quota nodes to under-quota ones; busy buckets stay put.

        Called periodically (Linux's idle timer).  A bucket is idle when its last access is
        more than ``idle_s`` ago.  Moved buckets get ``now`` as last access so a bucket that
        just moved is not moved again by the next call.
        """
        q = self.quotas()
        changes: list[Change] = []
        counts = self._counts
        for b in range(self.size):
            o = self._owner[b]
            if o == _NO_OWNER or not self._live[o]:
                # Nothing can be flowing through an ownerless or dead-owned bucket.
                target = self._neediest(q)
            elif counts[o] > q[o] and now - self._last[b] > idle_s:
                target = self._neediest(q)
                if target is not None and counts[target] >= q[target]:
                    target = None
            else:
                continue
            if target is None:
                continue
            changes.append((b, target))
            self._set(b, target, now)
        return self._commit(changes)

    def keep(self, owners: Iterable[tuple[int, int]], now: float) -> int:
        """Give buckets back to the owners they had (a move found busy before the kernel took
        it: ``scheduler.move_guard``); a new version, so the peers follow."""
        changes: list[Change] = []
        for b, o in owners:
            if self._owner[b] != o and o < len(self._live) and self._live[o]:
                changes.append((b, o))  # (a member dropped since is no owner to go back to)
                self._set(b, o, now)
        return self._commit(changes)

    def panic(self, now: float, scheduler_index: int | None = None) -> int:
        """Spread buckets exactly to quota over live nodes (even, or by weight); reset access.

        Only buckets above quota (or ownerless, or on dead nodes) move: the result is the same
        even spread as a full reshuffle, with fewer broken sessions.  ``scheduler_index`` is
        recorded as the pinned scheduler until ``clear_panic``.
        """
        self.panic_scheduler = scheduler_index
        q = self.quotas()
        counts = self._counts
        changes: list[Change] = []
        for b in range(self.size):
            o = self._owner[b]
            if o == _NO_OWNER or not self._live[o] or counts[o] > q[o]:
                target = self._neediest(q)
                if target is None or target == o or counts[target] >= q[target]:
                    continue
                changes.append((b, target))
                self._set(b, target, now)
        self.reset_last_access(now)
        return self._commit(changes)

    def clear_panic(self) -> None:
        self.panic_scheduler = None

    def _neediest(self, q: Sequence[int]) -> int | None:
        """The live node with the largest deficit (quota - count); lowest index on ties."""
        best: int | None = None
        best_deficit = 0
        for i, live in enumerate(self._live):
            if not live or q[i] == 0:
                continue
            deficit = q[i] - self._counts[i]
            if best is None or deficit > best_deficit:
                best, best_deficit = i, deficit
        return best

    def _set(self, bucket: int, node: int | None, now: float) -> None:
        old = self._owner[bucket]
        if old != _NO_OWNER:
            self._counts[old] -= 1
        if node is None:
            self._owner[bucket] = _NO_OWNER
        else:
            self._owner[bucket] = node
            self._counts[node] += 1
        self._last[bucket] = now

    def _commit(self, changes: list[Change]) -> int:
        if not changes:
            return 0
        self.version += 1
        self._log.append(self.version, tuple(changes))
        return len(changes)

    # -- sync (leader side) --------------------------------------------------------------------

    def begin_term(self, epoch: int, now: float, *, takeover: bool = True) -> None:
        """Become the leader of a new term: new sync identity, and on a takeover every bucket
        busy as of now (a first scheduler has carried no traffic yet: its buckets are idle)."""
        self.epoch = epoch
        self._log.restart(self.version)
        if takeover:
            self.reset_last_access(now)
        # The synced assignments reflect the old scheduler's view of which nodes are alive; ours
        # may differ (we may have seen a node die that it had not).  Trust our own, and give
        # ownerless buckets an owner (all nodes may have been down at some point).
        self._commit(self._evacuate(now))
        self.fill(now)

    def changes_since(self, version: int, *, epoch: int) -> list[Change] | None:
        """The (bucket, node) pairs that differ since ``version``, or None: send the whole table."""
        if epoch != self.epoch or version > self.version:
            return None
        return self._log.since(version)

    # -- sync (follower side) ------------------------------------------------------------------

    def apply_snapshot(
        self, version: int, assignments: Sequence[int | None], *, epoch: int
    ) -> None:
        """Replace every assignment with the leader's; last access times stay local."""
        if len(assignments) != self.size:
            raise SyncError(f"snapshot has {len(assignments)} buckets, table has {self.size}")
        for n in assignments:
            self._check_node(n)
        for b, n in enumerate(assignments):
            if self.owner(b) != n:
                self._set(b, n, self._last[b])
        self.version = version
        self.epoch = epoch
        self._log.restart(version)

    def apply_delta(
        self, from_version: int, to_version: int, changes: Iterable[Change], *, epoch: int
    ) -> None:
        """Apply a leader's delta; refused unless it starts from exactly this table's state."""
        if epoch != self.epoch or from_version != self.version:
            raise SyncError(
                f"delta {epoch}:{from_version}->{to_version} does not start at "
                f"{self.epoch}:{self.version}"
            )
        if to_version < from_version:
            raise SyncError("delta goes backwards")
        items = tuple(changes)
        for b, n in items:
            if not 0 <= b < self.size:
                raise SyncError(f"bucket {b} out of range")
            self._check_node(n)
        for b, n in items:
            self._set(b, n, self._last[b])
        self.version = to_version
        if items:
            # Kept so this follower can serve deltas itself if it becomes the scheduler.
            self._log.append(to_version, items)

    def _check_node(self, n: int | None) -> None:
        if n is not None and not 0 <= n < self.node_count:
            raise SyncError(f"node {n} out of range")
