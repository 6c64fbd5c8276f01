"""One selector per pool over one status table: every choice stays in the pool, and the
persistence cookie and learned session ids pin only within the pool that set them."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dlba.config import BackendConfig, HostPort, PersistenceConfig, SchedulingConfig
from dlba.scheduling import cookie_codec
from dlba.scheduling.selection import BackendSelector
from dlba.scheduling.web_server_status_table import WebServerStatusTable

SECRET = b"k" * 32
WEB, STATIC = frozenset({1, 2, 3}), frozenset({4, 5})


def pools() -> tuple[BackendSelector, BackendSelector]:
    table = WebServerStatusTable(
        [BackendConfig(i, HostPort(f"10.0.1.{i}", 80)) for i in range(1, 6)], 2, 1.0, 8.0)
    web = BackendSelector(table, PersistenceConfig(), SchedulingConfig("p2c"), SECRET,
                          random.Random(1), members=WEB)
    static = BackendSelector(table, PersistenceConfig(), SchedulingConfig("url_hash",
                             ("/static/",)), SECRET, random.Random(2), members=STATIC,
                             learned=web.learned)
    return web, static


@given(st.text(max_size=30), st.sets(st.integers(1, 5)))
def test_choices_stay_in_the_pool(path: str, exclude: set[int]) -> None:
    web, static = pools()
    for sel, members in ((web, WEB), (static, STATIC)):
        got = sel.select("/" + path, None, exclude, 0.0)
        if got is not None:
            assert got.backend_id in members and got.backend_id not in exclude
        else:
            assert members <= exclude


def test_cookie_and_learned_session_pin_within_their_pool() -> None:
    web, static = pools()
    to_2 = f"DLBASERVER={cookie_codec.encode(2, SECRET)}"
    got = web.select("/", to_2, (), 0.0)
    assert got is not None and (got.backend_id, got.reason) == (2, "cookie")
    got = static.select("/", to_2, (), 0.0)
    assert got is not None and got.backend_id in STATIC and got.reason != "cookie"
    assert not got.bad_cookie  # a valid cookie of another pool is not tampering
    web.learn([(b"Set-Cookie", b"JSESSIONID=abc; Path=/")], 3, 0.0)
    got = web.select("/", "JSESSIONID=abc", (), 1.0)
    assert got is not None and (got.backend_id, got.reason) == (3, "learned")
    got = static.select("/", "JSESSIONID=abc", (), 1.0)
    assert got is not None and got.backend_id in STATIC and got.reason == "session"
    # a service's own cookie name
    got = web.select("/", f"SHOP={cookie_codec.encode(1, SECRET)}", (), 0.0, cookie="SHOP")
    assert got is not None and (got.backend_id, got.reason) == (1, "cookie")
