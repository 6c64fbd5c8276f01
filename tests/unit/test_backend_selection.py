"""Back-end selection: cookie > session > URL hash > policy; tampered cookies flagged and
ignored; draining back ends keep persistent clients only; exclusions and down back ends are
never chosen (except one retry probe); rings follow the table's version."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from dlba.config import BackendConfig, HostPort, PersistenceConfig, SchedulingConfig
from dlba.scheduling import cookie_codec
from dlba.scheduling.selection import BackendSelector, compile_url_patterns, request_path
from dlba.scheduling.web_server_status_table import WebServerStatusTable

SECRET = b"k" * 32
OTHER_SECRET = b"z" * 32
PATTERNS = ("/static/", "*.gif")
N = 5


def make(policy: str = "least_conn", n: int = N
         ) -> tuple[WebServerStatusTable, BackendSelector]:
    cfg = [BackendConfig(i, HostPort(f"10.0.1.{i}", 8080)) for i in range(1, n + 1)]
    table = WebServerStatusTable(cfg, 2, 1.0, 8.0)
    sel = BackendSelector(table, PersistenceConfig(), SchedulingConfig(policy, PATTERNS), SECRET,
                          random.Random(1))
    return table, sel


def cookie(bid: int, secret: bytes = SECRET) -> str:
    return f"DLBASERVER={cookie_codec.encode(bid, secret)}"


def mark_down(table: WebServerStatusTable, bid: int, now: float = 0.0) -> None:
    while not table.on_connect_failure(bid, now):
        pass


@given(
    cookie_id=st.none() | st.integers(1, N),
    sid=st.none() | st.sampled_from(["cookie", "path", "query"]),
    static=st.booleans(),
    session_value=st.text("abcdef0123456789", min_size=1, max_size=12),
)
def test_selection_order(cookie_id: int | None, sid: str | None, static: bool,
                         session_value: str) -> None:
    _, sel = make()
    path = "/static/app.js" if static else "/app/page"
    cookies = []
    if cookie_id is not None:
        cookies.append(cookie(cookie_id))
    if sid == "cookie":
        cookies.append(f"JSESSIONID={session_value}")
    elif sid == "path":
        path += f";jsessionid={session_value}"
    target = path + ("?sid=" + session_value if sid == "query" else "?q=1")
    got = sel.select(target, "; ".join(cookies) or None, (), 0.0)
    assert got is not None and not got.bad_cookie
    if cookie_id is not None:
        assert (got.reason, got.backend_id) == ("cookie", cookie_id)
    elif sid is not None:
        assert got.reason == "session"
        assert got.backend_id == sel._session_ring.get(session_value)
    elif static:
        assert got.reason == "url_hash"
    else:
        assert got.reason == "policy"


@given(st.integers(1, N), st.integers(0, 30), st.sampled_from("aZ0_-."))
def test_tampered_cookie_is_flagged_and_ignored(bid: int, pos: int, ch: str) -> None:
    _, sel = make()
    value = cookie_codec.encode(bid, SECRET)
    pos %= len(value)
    tampered = value[:pos] + ch + value[pos + 1:]
    if tampered == value:
        return
    got = sel.select("/app", f"DLBASERVER={tampered}", (), 0.0)
    assert got is not None and got.bad_cookie and got.reason == "policy"


def test_foreign_cookie_is_flagged() -> None:
    _, sel = make()
    got = sel.select("/app", cookie(2, OTHER_SECRET), (), 0.0)
    assert got is not None and got.bad_cookie and got.reason == "policy"
    # A forged cookie must not disturb session scheduling either.
    got = sel.select("/app", cookie(2, OTHER_SECRET) + "; JSESSIONID=abc", (), 0.0)
    assert got is not None and got.bad_cookie and got.reason == "session"


def test_valid_cookie_for_down_or_excluded_backend_reroutes_without_flag() -> None:
    table, sel = make()
    got = sel.select("/app", cookie(3), {3}, 0.0)
    assert got is not None and got.backend_id != 3 and not got.bad_cookie
    mark_down(table, 3)
    got = sel.select("/app", cookie(3), (), 0.5)
    assert got is not None and got.backend_id != 3 and not got.bad_cookie
    got = sel.select("/app", cookie(99), (), 0.5)  # a back end removed from the config
    assert got is not None and not got.bad_cookie


def test_draining_keeps_persistent_clients_only() -> None:
    table, sel = make()
    table.set_admin(2, "drain")
    assert sel.select("/app", cookie(2), (), 0.0).backend_id == 2  # type: ignore[union-attr]
    # Session ids that mapped to 2 still map to 2: the session ring keeps draining back ends.
    sids = [s for s in (f"s{i}" for i in range(500)) if sel._session_ring.get(s) == 2]
    assert sids
    for s in sids[:20]:
        got = sel.select("/app", f"JSESSIONID={s}", (), 0.0)
        assert got is not None and (got.reason, got.backend_id) == ("session", 2)
    # New sessions, cache URLs and every policy avoid it.
    for i in range(300):
        for target in (f"/app/{i}", f"/static/{i}.css"):
            got = sel.select(target, None, (), 0.0)
            assert got is not None and got.backend_id != 2


@given(
    st.sets(st.integers(1, N)),
    st.sets(st.integers(1, N)),
    st.sets(st.integers(1, N)),
    st.sampled_from(["least_conn", "weighted_rr", "response_time", "p2c", "url_hash"]),
    st.sampled_from(["/a", "/static/x.js", "/b;jsessionid=q", "/c?sid=7", "/d.gif?x=1"]),
    st.none() | st.integers(1, N),
)
def test_never_picks_excluded_down_or_draining_for_new(
        excluded: set[int], down: set[int], draining: set[int], policy: str, target: str,
        cookie_id: int | None) -> None:
    table, sel = make(policy)
    for b in down:
        mark_down(table, b, 0.0)
    for b in draining:
        table.set_admin(b, "drain")
    got = sel.select(target, cookie(cookie_id) if cookie_id else None, excluded, 0.5)
    if got is None:
        # Nothing usable: every back end is excluded, down, or draining without a session.
        assert all(b in excluded | down | draining for b in range(1, N + 1))
        return
    assert got.backend_id not in excluded and got.backend_id not in down
    if got.reason in ("url_hash", "policy"):
        assert got.backend_id not in draining


def test_all_excluded_or_down_gives_none() -> None:
    table, sel = make()
    assert sel.select("/app", None, set(range(1, N + 1)), 0.0) is None
    for b in range(1, N + 1):
        mark_down(table, b, 0.0)
    assert sel.select("/app", "JSESSIONID=x", (), 0.5) is None


def test_down_backend_gets_exactly_one_probe_per_retry() -> None:
    table, sel = make()
    mark_down(table, 4, now=10.0)
    row = table.get(4)
    assert row is not None
    picks = Counter(sel.select(f"/p{i}", None, (), 10.5).backend_id  # type: ignore[union-attr]
                    for i in range(50))
    assert picks[4] == 0
    due = row.retry_at
    picks = Counter(sel.select(f"/p{i}", None, (), due).backend_id  # type: ignore[union-attr]
                    for i in range(50))
    assert picks[4] == 1
    table.on_connect_success(4, 12.0)
    picks = Counter(sel.select(f"/p{i}", None, (), 12.0).backend_id  # type: ignore[union-attr]
                    for i in range(50))
    assert picks[4] >= 5


def test_url_hash_uses_path_without_query_and_follows_membership() -> None:
    table, sel = make()
    a = sel.select("/static/logo.png?v=1", None, (), 0.0)
    b = sel.select("/static/logo.png?v=2#x", None, (), 0.0)
    assert a is not None and b is not None and a.reason == b.reason == "url_hash"
    assert a.backend_id == b.backend_id
    owner = a.backend_id
    other = sel.select("/static/logo.png", None, {owner}, 0.0)
    assert other is not None and other.backend_id != owner and other.reason == "url_hash"
    mark_down(table, owner)
    moved = sel.select("/static/logo.png", None, (), 0.5)
    assert moved is not None and moved.backend_id == other.backend_id
    # Only the lost back end's URLs move (consistency through the selector).
    urls = [f"/img/{i}.gif" for i in range(400)]
    _, fresh = make()
    for u in urls:
        before = fresh.select(u, None, (), 0.0)
        after = sel.select(u, None, (), 0.5)
        assert before is not None and after is not None
        if before.backend_id != owner:
            assert after.backend_id == before.backend_id


def test_reconfigure_changes_patterns_and_policy() -> None:
    _, sel = make()
    assert sel.select("/static/a", None, (), 0.0).reason == "url_hash"  # type: ignore[union-attr]
    sel.reconfigure(PersistenceConfig(cookie="SRV"), SchedulingConfig("weighted_rr", ()))
    assert sel.select("/static/a", None, (), 0.0).reason == "policy"  # type: ignore[union-attr]
    assert sel.select("/x", cookie(2), (), 0.0).reason == "policy"  # type: ignore[union-attr]
    got = sel.select("/x", "SRV=" + cookie_codec.encode(2, SECRET), (), 0.0)
    assert got is not None and (got.reason, got.backend_id) == ("cookie", 2)


def test_url_patterns() -> None:
    rx = compile_url_patterns(("/static/", "*.gif", "/img/?.png"))
    assert rx is not None
    for p in ("/static/", "/static/a/b.css", "/x/y.gif", "/img/a.png"):
        assert rx.fullmatch(p), p
    for p in ("/stat", "/x/y.gifx", "/img/ab.png", "/app/static/"):
        assert not rx.fullmatch(p), p
    assert compile_url_patterns(()) is None
    assert request_path("/a;jsessionid=1?x=2#f") == "/a"
    assert request_path("/a/b") == "/a/b"


def _ring_choice(sid: str) -> int:
    got = make()[1].select("/", f"JSESSIONID={sid}", (), 0.0)
    assert got is not None and got.reason == "session"
    return got.backend_id


@given(st.text("abcdef0123456789", min_size=1, max_size=12), st.integers(1, N),
       st.sampled_from(["cookie", "path", "query"]))
def test_learned_session_goes_to_its_issuer(sid: str, issuer: int, where: str) -> None:
    """A session id a back end issued goes back to that back end, wherever the ring hashes it;
    the persistence cookie still comes first."""
    _, sel = make()
    sel.learn([(b"Set-Cookie", f"JSESSIONID={sid}; Path=/".encode())], issuer, 0.0)
    target, header = "/app", None
    if where == "cookie":
        header = f"JSESSIONID={sid}"
    elif where == "path":
        target = f"/app;jsessionid={sid}"
    else:
        target = f"/app?sid={sid}"
    got = sel.select(target, header, (), 1.0)
    assert got is not None and (got.backend_id, got.reason) == (issuer, "learned")
    assert sel.learned.selections == 1
    other = issuer % N + 1
    got = sel.select(target, "; ".join(filter(None, [header, cookie(other)])), (), 1.0)
    assert got is not None and (got.backend_id, got.reason) == (other, "cookie")


def test_learned_issuer_down_or_excluded_falls_back_to_the_ring() -> None:
    sid = next(s for s in (f"s{i}" for i in range(100)) if _ring_choice(s) != 3)
    table, sel = make()
    sel.learn([(b"Location", f"/next;jsessionid={sid}".encode())], 3, 0.0)
    assert sel.select("/", f"JSESSIONID={sid}", (), 0.0).backend_id == 3  # type: ignore[union-attr]
    got = sel.select("/", f"JSESSIONID={sid}", {3}, 0.0)
    assert got is not None and (got.backend_id, got.reason) == (_ring_choice(sid), "session")
    mark_down(table, 3)
    got = sel.select("/", f"JSESSIONID={sid}", (), 0.1)
    assert got is not None and got.reason == "session" and got.backend_id != 3
    # Still known: once the back end is back, the session goes home again.
    assert table.on_connect_success(3, 0.2)
    got = sel.select("/", f"JSESSIONID={sid}", (), 0.3)
    assert got is not None and (got.backend_id, got.reason) == (3, "learned")


def test_learned_sessions_follow_the_configured_bounds() -> None:
    _, sel = make()
    for i in range(5):
        sel.learn([(b"Set-Cookie", f"JSESSIONID=x{i}".encode())], 1, float(i))
    assert len(sel.learned) == 5
    sel.reconfigure(PersistenceConfig(learned_ttl_s=2.0, learned_max=3), SchedulingConfig())
    assert len(sel.learned) == 3
    assert sel.learned.lookup("x0", 0.0) is None  # the least recently used went
    assert sel.learned.lookup("x2", 3.9) == 1
    assert sel.learned.lookup("x3", 5.5) is None  # idle for more than 2 s
