"""Learned session ids: which back end issued each session id (HAProxy's stick table). Pure.

A back end that issues a session id (``Set-Cookie: JSESSIONID=...``, or ``;jsessionid=`` in a
Location it sends) owns that session: the node records session id -> back-end id, so a client
that carries only the session id (no persistence cookie: URL rewriting, a client that drops
unknown cookies) reaches the same back end from every node of the array.

The table is bounded twice: a least-recently-used limit on its size and a TTL refreshed on use.
Every local learn goes into a change log, exported in batches to whoever shares this table (a
worker to its node process, a node to its peers); imports merge, the newer learn winning.

Times are the process's monotonic clock. On the wire a record carries *ages* (seconds since it
was learned, since it was last used), so nodes whose clocks disagree still agree on which of two
learns is newer, and a record that waited in a queue is not made younger by the wait.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dlba.scheduling.cookie_injection import find_session_id, parse_set_cookie, split_set_cookie

# (session id, back-end id, learned at, last used at) in this process's clock.
Learned = tuple[str, int, float, float]

MAX_ID_LEN = 256  # a longer "session id" is garbage, not worth a table slot
TOUCH_SHARE = 0.25  # a used entry is re-shared once per this fraction of the TTL, so peers keep it


@dataclass(slots=True)
class _Entry:
    backend_id: int
    learned_at: float
    used_at: float
    shared_used_at: float  # used_at when it last went into the change log


def _valid_id(sid: object) -> bool:
    return isinstance(sid, str) and 0 < len(sid) <= MAX_ID_LEN and sid.isprintable()


class LearnedSessions:
    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._changes: dict[str, None] = {}  # ids to share, in the order they changed
        self.learned_total = 0  # ids learned from this process's own back-end responses
        self.selections = 0  # requests sent to a back end by a learned id (counted by callers)

    def __len__(self) -> int:
        return len(self._entries)

    def reconfigure(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._evict()

    # --- local use ----------------------------------------------------------------------------
    def learn(self, sid: str, backend_id: int, now: float) -> bool:
        """A back end's response issued ``sid``: bind it to that back end (a new learn always
        wins). True when the binding is new or changed."""
        if not _valid_id(sid):
            return False
        e = self._entries.get(sid)
        if e is not None and e.backend_id == backend_id:
            self._use(sid, e, now)
            return False
        self._entries[sid] = _Entry(backend_id, now, now, now)
        self._entries.move_to_end(sid)
        self._changes[sid] = None
        self.learned_total += 1
        self._evict()
        return True

    def lookup(self, sid: str, now: float) -> int | None:
        """The back end that issued ``sid``, or None; a hit refreshes the TTL."""
        e = self._entries.get(sid)
        if e is None:
            return None
        if now - e.used_at > self.ttl_s:
            self._drop(sid)
            return None
        self._use(sid, e, now)
        return e.backend_id

    def _use(self, sid: str, e: _Entry, now: float) -> None:
        if now > e.used_at:
            e.used_at = now
        self._entries.move_to_end(sid)
        if e.used_at - e.shared_used_at >= self.ttl_s * TOUCH_SHARE:
            # Peers refresh their copy too: they expire what is not used *there* otherwise.
            e.shared_used_at = e.used_at
            self._changes[sid] = None

    def forget(self, sid: str) -> None:
        self._drop(sid)

    def _drop(self, sid: str) -> None:
        self._entries.pop(sid, None)
        self._changes.pop(sid, None)

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries:
            sid, _ = self._entries.popitem(last=False)
            self._changes.pop(sid, None)

    def expire(self, now: float, budget: int = 1000) -> int:
        """Drop expired entries from the least recently used end, at most ``budget`` looked at."""
        dropped = 0
        for _ in range(min(budget, len(self._entries))):
            sid, e = next(iter(self._entries.items()))
            if now - e.used_at <= self.ttl_s:
                break
            self._drop(sid)
            dropped += 1
        return dropped

    # --- sharing ------------------------------------------------------------------------------
    @property
    def has_changes(self) -> bool:
        return bool(self._changes)

    def take_changes(self, limit: int) -> list[Learned]:
        """Up to ``limit`` changed entries, oldest change first; taken out of the change log."""
        out: list[Learned] = []
        changes = self._changes
        while changes and len(out) < limit:
            sid = next(iter(changes))
            del changes[sid]
            e = self._entries.get(sid)
            if e is not None:
                out.append((sid, e.backend_id, e.learned_at, e.used_at))
        return out

    def snapshot(self, limit: int) -> list[Learned]:
        """Up to ``limit`` entries, most recently used first (for a process that starts)."""
        out: list[Learned] = []
        for sid in reversed(self._entries):
            if len(out) >= limit:
                break
            e = self._entries[sid]
            out.append((sid, e.backend_id, e.learned_at, e.used_at))
        return out

    def merge(self, records: Iterable[Learned], now: float, share: bool = False
              ) -> list[Learned]:
        """Import records from elsewhere: a newer learn replaces the binding (equal times: the
        higher back-end id, so every node converges), the later use extends the TTL. With
        ``share`` the changes go into this table's change log too. Returns what changed here."""
        changed: list[Learned] = []
        for sid, bid, learned_at, used_at in records:
            if not _valid_id(sid) or now - used_at > self.ttl_s:
                continue
            e = self._entries.get(sid)
            if e is None:
                e = _Entry(bid, learned_at, used_at, used_at)
                self._entries[sid] = e
            elif (learned_at, bid) > (e.learned_at, e.backend_id):
                e.backend_id, e.learned_at = bid, learned_at
                e.used_at = max(e.used_at, used_at)
                e.shared_used_at = e.used_at
            elif used_at > e.used_at:
                e.used_at = used_at
                e.shared_used_at = used_at
            else:
                continue
            self._entries.move_to_end(sid)
            changed.append((sid, e.backend_id, e.learned_at, e.used_at))
            if share:
                self._changes[sid] = None
        self._evict()
        return [c for c in changed if c[0] in self._entries]


# --- the wire form: ages instead of clock readings ---------------------------------------------
def to_wire(records: Iterable[Learned], now: float) -> list[list[Any]]:
    return [[sid, bid, round(max(0.0, now - learned_at), 3), round(max(0.0, now - used_at), 3)]
            for sid, bid, learned_at, used_at in records]


def from_wire(items: object, now: float, limit: int) -> list[Learned]:
    """Records from JSON, at most ``limit``; malformed ones are skipped, never raised on."""
    out: list[Learned] = []
    if not isinstance(items, list):
        return out
    for item in items[:limit]:
        if not isinstance(item, list) or len(item) != 4:
            continue
        sid, bid, learned_age, used_age = item
        if not _valid_id(sid) or type(bid) is not int:
            continue
        if not all(type(a) in (int, float) and math.isfinite(a) and a >= 0
                   for a in (learned_age, used_age)):
            continue
        out.append((sid, bid, now - float(learned_age), now - float(used_age)))
    return out


# --- what a back end's response issues ---------------------------------------------------------
def issued_session_ids(headers: Sequence[tuple[bytes, bytes]], session_cookies: Collection[str],
                       url_params: Collection[str]) -> list[str]:
    """Session ids a response head issues: session cookies it sets (not deletions: an empty
    value or ``Max-Age`` <= 0) and a session parameter in its Location."""
    found: list[str] = []
    names, params = session_cookies, url_params
    for name, value in headers:
        n = len(name)
        if n == 10 and name.lower() == b"set-cookie" and names:
            for line in split_set_cookie(value.decode("latin-1")):
                parsed = parse_set_cookie(line)
                if parsed is None:
                    continue
                cname, cvalue, attrs = parsed
                cvalue = cvalue.strip('"')
                if cname not in names or not cvalue or cvalue in found:
                    continue
                max_age = attrs.get("Max-Age", "")
                if max_age.lstrip("-").isdigit() and int(max_age) <= 0:
                    continue
                found.append(cvalue)
        elif n == 8 and name.lower() == b"location" and params:
            sid = find_session_id(None, value.decode("latin-1"), (), params)
            if sid and sid not in found:
                found.append(sid)
    return found
