"""Back-end selection for one request, in the order of patent 003:

1. the injected persistence cookie (signed back-end id, "Cookie Injection");
2. a session id -- a session cookie or a URL session parameter -- that a back end was seen
   issuing (``dlba/scheduling/learned_sessions.py``, shared by every node of the array): that
   back end, while it may take requests;
3. a session id not learned (or whose back end is down) hashed onto the ring of live back ends,
   for clients that the cookie has not reached (URL rewriting, first request after a login on
   another array);
4. consistent hashing of the URL for the configured cache paths (``/static/``, ``*.gif``), so
   each cache stays "hot";
5. the balancing policy over back ends accepting new sessions (plus, once per retry period, a
   back end marked down by connect failures, as its probe).

``exclude`` holds the back ends this request already failed to reach: the proxy calls select
again with a growing set to re-route without a client-visible error.

Hot path: everything derived from the config is precomputed, and everything derived from the
table's state (rings, candidate lists) is rebuilt only when ``table.version`` changes.
"""

from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Collection, Sequence
from typing import Literal

from dlba.config import PersistenceConfig, SchedulingConfig
from dlba.scheduling import cookie_codec
from dlba.scheduling.cookie_injection import find_cookies, find_session_id
from dlba.scheduling.hash_ring import HashRing
from dlba.scheduling.learned_sessions import LearnedSessions, issued_session_ids
from dlba.scheduling.policies import Policy, make_policy
from dlba.scheduling.web_server_status_table import WebServerStatus, WebServerStatusTable

Reason = Literal["cookie", "learned", "session", "url_hash", "policy"]


class Selection:
    """Where a request goes and why. A plain class, not a frozen dataclass: one is made per
    request, and compiled, a frozen dataclass's constructor costs several times as much."""

    __slots__ = ("backend_id", "bad_cookie", "reason")

    def __init__(self, backend_id: int, reason: Reason, bad_cookie: bool = False) -> None:
        self.backend_id = backend_id
        self.reason = reason
        self.bad_cookie = bad_cookie

    def __repr__(self) -> str:
        return f"Selection({self.backend_id}, {self.reason!r}, {self.bad_cookie})"


def compile_url_patterns(patterns: Collection[str]) -> re.Pattern[str] | None:
    """One regex for all ``url_hash_paths``: a pattern with a glob character (``*?[``) is a
    glob over the whole path (``*.gif``), anything else is a path prefix (``/static/``)."""
    parts: list[str] = []
    for p in patterns:
        if not p:
            continue
        if any(c in p for c in "*?["):
            # fnmatch.translate gives "(?s:...)\Z"; the combined regex is used with fullmatch.
            parts.append(fnmatch.translate(p).removesuffix(r"\Z"))
        else:
            parts.append(re.escape(p) + ".*")
    if not parts:
        return None
    return re.compile("|".join(f"(?:{p})" for p in parts), re.DOTALL)


def request_path(target: str) -> str:
    """The path of a request target: no query, no fragment, no ``;param`` (a jsessionid in the
    path must not scatter one URL over the cache ring)."""
    end = len(target)
    for sep in "?#;":
        i = target.find(sep)
        if 0 <= i < end:
            end = i
    return target[:end]


class BackendSelector:
    def __init__(self, table: WebServerStatusTable, persistence: PersistenceConfig,
                 scheduling: SchedulingConfig, secret: bytes,
                 rng: random.Random | None = None, members: frozenset[int] | None = None,
                 learned: LearnedSessions | None = None) -> None:
        """`members`: the back ends of this selector's pool (None: every back end of the
        table); a cookie or learned session naming another pool's back end is not followed, so
        sessions stay in the pool that set them. `learned`: shared by the selectors of every
        pool of the node (one stick table, as the array shares it)."""
        self.table = table
        self.secret = secret
        self._rng = rng
        self.members = members
        self._version = -1
        self._session_ring = HashRing({})
        self._url_ring = HashRing({})
        self._accepting: list[WebServerStatus] = []
        self._probe_ids: tuple[int, ...] = ()
        self._policy_name: str | None = None
        self.learned = learned if learned is not None else LearnedSessions(
            persistence.learned_ttl_s, persistence.learned_max)
        self.reconfigure(persistence, scheduling)

    def reconfigure(self, persistence: PersistenceConfig, scheduling: SchedulingConfig) -> None:
        self.persistence = persistence
        self.scheduling = scheduling
        self._cookie = persistence.cookie
        self._session_cookies = tuple(persistence.session_cookies)
        self._url_params = frozenset(p.lower() for p in persistence.url_session_params)
        self.learned.reconfigure(persistence.learned_ttl_s, persistence.learned_max)
        self._url_patterns = compile_url_patterns(scheduling.url_hash_paths)
        if self._policy_name != scheduling.policy:
            # A new policy starts with fresh state; an unchanged one keeps its rotation/credits.
            self.policy: Policy = make_policy(scheduling.policy, self._rng)
            self._policy_name = scheduling.policy
        self._version = -1

    def _refresh(self) -> None:
        table = self.table
        if table.version == self._version:
            return
        self._version = table.version
        members = self.members
        rows = table.rows if members is None else [r for r in table.rows if r.id in members]
        # Sessions may stay on draining back ends, so their ring uses the configured weight of
        # every back end that is not down: draining one must not remap everybody else's session.
        self._session_ring = HashRing(
            {r.id: r.weight for r in rows if r.accepts_persistent})
        self._accepting = [r for r in rows if r.accepts_new]
        self._url_ring = HashRing({r.id: r.effective_weight for r in self._accepting})
        self._probe_ids = tuple(r.id for r in rows if r.probe_eligible)

    def set_members(self, members: frozenset[int] | None) -> None:
        if members != self.members:
            self.members = members
            self._version = -1

    def select(self, target: str, cookie_header: str | None, exclude: Collection[int],
               now: float, cookie: str | None = None) -> Selection | None:
        """`cookie`: the persistence cookie's name when the service has its own."""
        self._refresh()
        table = self.table
        members = self.members
        bad_cookie = False

        # 1. Persistence cookie. find_cookies is cheap when the name is absent.
        if cookie_header:
            values = find_cookies(cookie_header, cookie or self._cookie)
            if values:
                valid = False
                for value in values:
                    bid = cookie_codec.decode(value, self.secret)
                    if bid is None:
                        continue
                    valid = True
                    if members is not None and bid not in members:
                        continue  # another pool's back end: the session does not leave its pool
                    # may_try: not down, or down but due for its probe (the session lives
                    # there, so this client is the best probe there is).
                    if bid not in exclude and table.may_try(bid, now):
                        return Selection(bid, "cookie", False)
                # Only a value that no longer verifies is "bad"; a valid cookie naming a down
                # or removed back end is normal re-routing, not tampering.
                bad_cookie = not valid

        # 2. Session id (cookie first, then URL): the back end that issued it, when known and
        # it may take the request; 3. else onto the ring of back ends that are not down.
        learned = self.learned
        if self._session_ring.nodes or len(learned):
            sid = find_session_id(cookie_header, target, self._session_cookies,
                                  self._url_params)
            if sid:
                issuer = learned.lookup(sid, now)
                if (issuer is not None and issuer not in exclude
                        and (members is None or issuer in members)
                        and table.may_try(issuer, now)):
                    learned.selections += 1
                    return Selection(issuer, "learned", bad_cookie)
                bid_or_none = self._session_ring.get_excluding(sid, exclude)
                if bid_or_none is not None:
                    return Selection(bid_or_none, "session", bad_cookie)

        # 4. URL hash for cache paths.
        patterns = self._url_patterns
        if patterns is not None and self._url_ring.nodes:
            path = request_path(target)
            if patterns.fullmatch(path):
                bid_or_none = self._url_ring.get_excluding(path, exclude)
                if bid_or_none is not None:
                    return Selection(bid_or_none, "url_hash", bad_cookie)

        # 5. A back end due for its retry probe takes this one request; then the policy.
        for bid in self._probe_ids:
            if bid not in exclude and table.may_try(bid, now):
                return Selection(bid, "policy", bad_cookie)
        candidates = self._accepting
        if exclude:
            candidates = [r for r in candidates if r.id not in exclude]
        row = self.policy.choose(candidates, request_path(target))
        if row is None:
            return None
        return Selection(row.id, "policy", bad_cookie)

    def learn(self, headers: Sequence[tuple[bytes, bytes]], backend_id: int, now: float) -> None:
        """A back end's response head: remember the session ids it issues as its own."""
        for sid in issued_session_ids(headers, self._session_cookies, self._url_params):
            self.learned.learn(sid, backend_id, now)
