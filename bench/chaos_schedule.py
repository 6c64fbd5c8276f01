"""The chaos soak's schedule of faults: pure, deterministic from a seed.

A schedule is a list of `Fault`s at offsets (seconds from the start of the load). The faults of
one *round* are one of each kind; rounds repeat until the span is full. Faults that take a node
away (a whole node, the scheduler's processes, the scheduler's link) alternate with the others,
so the array is never asked to survive two node losses at once: with 3 nodes that would leave
one. Each fault says how long until its repair (restart, link up); the next fault starts only
after the previous repair plus a settling time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Kinds that take a node's service away.
NODE_KINDS = ("kill_node", "kill_scheduler", "scheduler_link")
OTHER_KINDS = ("kill_backend", "kill_worker", "kill_redis", "config_push")
KINDS = NODE_KINDS + OTHER_KINDS

# Seconds until the repair (restart, link up) of each kind; 0: nothing to repair.
REPAIR_S = {
    "kill_node": 0.0,  # restarted by `dlba up`'s supervision, else by the soak (see chaos.py)
    "kill_scheduler": 0.0,
    "scheduler_link": 2.0,
    "kill_backend": 3.0,
    "kill_worker": 0.0,  # the node respawns its own workers
    "kill_redis": 3.0,
    "config_push": 0.0,
}
# Seconds after a fault (and its repair) before the next one: a node restart and rejoin, a
# back end's health check, or a new election must have had time to finish.
SETTLE_S = {
    "kill_node": 8.0,
    "kill_scheduler": 8.0,
    "scheduler_link": 5.0,
    "kill_backend": 4.0,
    "kill_worker": 3.0,
    "kill_redis": 3.0,
    "config_push": 3.0,
}


@dataclass(frozen=True)
class Fault:
    at: float  # seconds from the start of the load
    kind: str
    pick: int  # which victim among the eligible ones (index modulo their count)
    repair_after: float

    def as_dict(self) -> dict[str, object]:
        return {"at": round(self.at, 3), "kind": self.kind, "pick": self.pick,
                "repair_after": self.repair_after}


def warmup_s(duration: float) -> float:
    """Load without faults first: connections, sessions and the idle crowd get established and
    the first memory sample is taken at its end."""
    return min(15.0, max(5.0, duration * 0.12))


def tail_s(duration: float) -> float:
    """Load without faults at the end: the last repairs finish before the final samples."""
    return min(15.0, max(6.0, duration * 0.1))


def round_order(rng: random.Random) -> list[str]:
    """One of each kind: node faults shuffled, others shuffled, then interleaved."""
    nodes, others = list(NODE_KINDS), list(OTHER_KINDS)
    rng.shuffle(nodes)
    rng.shuffle(others)
    out: list[str] = []
    while nodes or others:
        if others:
            out.append(others.pop())
        if nodes:
            out.append(nodes.pop())
    return out


def make_schedule(duration: float, seed: int) -> list[Fault]:
    """Faults spread over [warm-up, duration - tail]; same duration and seed, same schedule.

    Each fault takes its repair time plus its settling time; when one round of all kinds
    needs less than the span, the spare time is spread evenly between the faults.
    """
    rng = random.Random(seed)
    start, end = warmup_s(duration), duration - tail_s(duration)
    if end <= start:
        return []
    kinds: list[str] = []
    need = 0.0
    while True:
        order = round_order(rng)
        cost = sum(REPAIR_S[k] + SETTLE_S[k] for k in order)
        if kinds and need + cost > end - start:
            break
        if not kinds and cost > end - start:
            # A short run: as many faults of the first round as fit, in its order, never two
            # node faults in a row.
            for k in order:
                c = REPAIR_S[k] + SETTLE_S[k]
                back_to_back = k in NODE_KINDS and bool(kinds) and kinds[-1] in NODE_KINDS
                if need + c <= end - start and not back_to_back:
                    kinds.append(k)
                    need += c
            break
        kinds += order
        need += cost
    spare = (end - start - need) / max(1, len(kinds))
    faults: list[Fault] = []
    t = start
    for k in kinds:
        faults.append(Fault(t, k, rng.randrange(1 << 16), REPAIR_S[k]))
        t += REPAIR_S[k] + SETTLE_S[k] + spare
    return faults
