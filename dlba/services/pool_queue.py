"""Overload protection of one pool: back-end slots (`maxconn`) and the queue of requests waiting
for one, ordered by client class (HAProxy's `maxconn` and `timeout queue`, plus seed 002's
class priorities).

Rules, each a test in tests/unit/services/test_pool_queue.py:
* A back end with maxconn 0 has no limit; else at most maxconn requests hold its slots.
* A request waits when its back end (a pinned session's) or every back end of the pool is full,
  and also when a request of its class or a higher one already waits for that slot: arrivals
  never overtake.
* A freed slot goes to the waiting request of the highest class (0 is highest) that can use it;
  among classes of one priority, to the one served least for its weight; then first come.
* The queue holds at most `max_waiting`: a newcomer when it is full pushes out the newest waiter
  of the lowest class below its own, or is shed itself when none is lower. So a lower class is
  always shed first: the highest class is never shed to make room while a lower one waits, and
  no lower class takes a slot while a higher one waits for it.
* A request that waited `timeout_s` is shed (the shell answers 503 with Retry-After).

Pure: items are opaque (the proxy's exchanges), time is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from dlba.services.classes import ClientClass

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Waiter(Generic[T]):
    item: T
    cls: ClientClass
    deadline: float
    backend: int  # 0: any back end of the pool; else only this one (a pinned session)
    seq: int


@dataclass(slots=True)
class ClassCounters:
    requests: int = 0  # requests of this class routed to the pool
    queued: int = 0  # of them, how many waited
    shed: int = 0  # answered 503: the queue was full or their wait ran out
    served: int = 0  # slots given (weight shares are taken from this)


@dataclass(slots=True)
class QueueCounters:
    queued: int = 0
    shed: int = 0
    timeouts: int = 0
    max_depth: int = 0
    by_class: dict[str, ClassCounters] = field(default_factory=dict)

    def of(self, cls: ClientClass) -> ClassCounters:
        c = self.by_class.get(cls.name)
        if c is None:
            c = self.by_class[cls.name] = ClassCounters()
        return c


class PoolQueue(Generic[T]):
    def __init__(self, name: str, timeout_s: float, max_waiting: int = 1024) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.max_waiting = max_waiting
        self.maxconn: dict[int, int] = {}
        self.used: dict[int, int] = {}
        self.waiting: list[Waiter[T]] = []
        self.counters = QueueCounters()
        self._seq = 0

    # --- slots ------------------------------------------------------------------------------
    def set_limits(self, maxconn: dict[int, int]) -> None:
        """Back end id -> maxconn (0: none). Slots held by a removed back end are forgotten."""
        self.maxconn = dict(maxconn)
        self.used = {b: n for b, n in self.used.items() if b in maxconn}

    def limited(self) -> bool:
        return any(self.maxconn.values())

    def has_room(self, backend: int) -> bool:
        limit = self.maxconn.get(backend, 0)
        return limit <= 0 or self.used.get(backend, 0) < limit

    def full(self) -> frozenset[int]:
        return frozenset(b for b in self.maxconn if not self.has_room(b))

    def blocked(self, backend: int, cls: ClientClass) -> bool:
        """Whether a request of `cls` must queue rather than take `backend`'s free slot: a
        request of its class or a higher one waits for that back end already."""
        return any(w.cls.priority <= cls.priority and w.backend in (0, backend)
                   for w in self.waiting)

    def acquire(self, backend: int) -> None:
        self.used[backend] = self.used.get(backend, 0) + 1

    def release(self, backend: int) -> None:
        n = self.used.get(backend, 0)
        if n > 1:
            self.used[backend] = n - 1
        else:
            self.used.pop(backend, None)

    # --- the queue --------------------------------------------------------------------------
    def count(self, cls: ClientClass) -> None:
        """A request of `cls` routed to this pool (whether it waits or not)."""
        self.counters.of(cls).requests += 1

    def served(self, cls: ClientClass) -> None:
        self.counters.of(cls).served += 1

    def push(self, item: T, cls: ClientClass, now: float, backend: int = 0) -> list[T]:
        """Queue `item`; returns the items shed to make room (maybe `item` itself)."""
        c = self.counters
        c.queued += 1
        c.of(cls).queued += 1
        if len(self.waiting) >= self.max_waiting:
            victim = self._lowest_below(cls.priority)
            if victim is None:
                self._count_shed(cls)
                return [item]
            self.waiting.remove(victim)
            self._count_shed(victim.cls)
            shed = [victim.item]
        else:
            shed = []
        self._seq += 1
        self.waiting.append(Waiter(item, cls, now + self.timeout_s, backend, self._seq))
        c.max_depth = max(c.max_depth, len(self.waiting))
        return shed

    def _lowest_below(self, priority: int) -> Waiter[T] | None:
        lower = [w for w in self.waiting if w.cls.priority > priority]
        if not lower:
            return None
        return max(lower, key=lambda w: (w.cls.priority, w.seq))

    def _count_shed(self, cls: ClientClass) -> None:
        self.counters.shed += 1
        self.counters.of(cls).shed += 1

    def pop_for(self, backend: int, alive: Callable[[T], bool] = lambda _: True,
                fits: Callable[[Waiter[T]], bool] = lambda _: True) -> Waiter[T] | None:
        """The waiter a free slot of `backend` goes to (removed from the queue), dropping those
        `alive` says are gone (their client closed) and passing over those it does not `fit`
        (a back end the request already failed on, a draining one for a new session)."""
        self.waiting = [w for w in self.waiting if alive(w.item)]
        usable = [w for w in self.waiting if w.backend in (0, backend) and fits(w)]
        if not usable:
            return None
        top = min(w.cls.priority for w in usable)
        usable = [w for w in usable if w.cls.priority == top]
        by = self.counters.by_class

        def share(w: Waiter[T]) -> tuple[float, int]:
            c = by.get(w.cls.name)
            return ((c.served if c else 0) / max(1, w.cls.weight), w.seq)

        best = min(usable, key=share)
        self.waiting.remove(best)
        return best

    def remove(self, item: T) -> bool:
        for w in self.waiting:
            if w.item is item:
                self.waiting.remove(w)
                return True
        return False

    def expire(self, now: float) -> list[T]:
        """Items whose wait ran out, shed (removed)."""
        out = [w for w in self.waiting if w.deadline <= now]
        if out:
            self.waiting = [w for w in self.waiting if w.deadline > now]
            for w in out:
                self._count_shed(w.cls)
                self.counters.timeouts += 1
        return [w.item for w in out]

    def depth(self) -> int:
        return len(self.waiting)

    def depth_by_class(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.waiting:
            out[w.cls.name] = out.get(w.cls.name, 0) + 1
        return out

    def items(self) -> Iterable[T]:
        return (w.item for w in self.waiting)
