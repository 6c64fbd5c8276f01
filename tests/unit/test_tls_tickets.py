"""The ticket keys (pure): derived from the cluster secret per period, encrypt with the newest,
decrypt with the last three, older refused; and the installer's refusal path (self-check of the
SSL_CTX pointer, one warning, context untouched)."""

from __future__ import annotations

import logging
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlba.tls import openssl_ctx
from dlba.tls import tickets as tls_tickets
from dlba.tls.tickets import RING_SIZE, ROTATE_S, TicketKey, TicketKeyRing, derived_keys


def key(i: int, created: float | None = None) -> TicketKey:
    return TicketKey(i.to_bytes(16, "big"), bytes([i % 256]) * 32, bytes([(i + 1) % 256]) * 32,
                     float(i) if created is None else created)


@given(st.integers(min_value=1, max_value=12), st.integers(min_value=1, max_value=5))
def test_newest_encrypts_last_three_decrypt_older_refused(n: int, size: int) -> None:
    ring = TicketKeyRing(size=size)
    added: list[TicketKey] = []
    for i in range(n):
        k = key(i)
        added.append(k)
        ring.replace(added)
        assert ring.current == k                                   # encrypt with the newest
        live = added[-size:]
        for old in added:
            found = ring.decrypt_key(old.name)
            if old in live:
                assert found == (old, old == k)                     # current or older
            else:
                assert found is None
        assert ring.keys == tuple(reversed(live))
        assert len(ring) == len(live)


@given(st.booleans(), st.booleans())
def test_resumption_renews_tls13_always_tls12_for_older_keys(current: bool, tls13: bool) -> None:
    """1 = resume, 2 = resume and send a fresh ticket (OpenSSL's ticket-key callback): a TLS 1.3
    client uses each ticket once, so it must get a new one on every resumption."""
    assert tls_tickets.decrypt_result(current, tls13) == (2 if tls13 or not current else 1)


@given(st.integers(min_value=4, max_value=10))
def test_default_ring_is_three(n: int) -> None:
    ring = TicketKeyRing([key(i) for i in range(n)])
    assert RING_SIZE == 3
    assert [k.name for k in ring.keys] == [key(i).name for i in range(n - 1, n - 4, -1)]
    assert ring.decrypt_key(key(n - 4).name) is None


@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 1e9, allow_nan=False)),
                min_size=1, max_size=15))
def test_replace_orders_by_created_and_dedups(items: list[tuple[int, float]]) -> None:
    keys = [key(i, created) for i, created in items]
    ring = TicketKeyRing(keys)
    first_by_name: dict[bytes, TicketKey] = {}
    for k in keys:
        first_by_name.setdefault(k.name, k)
    expected = sorted(first_by_name.values(), key=lambda k: k.created, reverse=True)[:3]
    assert [k.created for k in ring.keys] == [k.created for k in expected]
    assert ring.current is not None and ring.current.created == max(
        k.created for k in first_by_name.values())
    # A node given the same list in any order ends with the same current key when the
    # creation times differ (they do: one rotator, one clock).
    if len({k.created for k in first_by_name.values()}) == len(first_by_name):
        assert TicketKeyRing(reversed(list(first_by_name.values()))).keys == ring.keys


@settings(max_examples=50)
@given(st.binary(min_size=16, max_size=64), st.floats(0, 1e10, allow_nan=False))
def test_derived_keys_follow_the_secret_and_the_clock(secret: bytes, now: float) -> None:
    """Every process derives the same ring from the cluster secret; a period later the newest
    key is new and the two before still decrypt; another secret shares no key."""
    keys = derived_keys(secret, now)
    assert keys == derived_keys(secret, now)
    assert len(keys) == RING_SIZE and len({k.name for k in keys}) == RING_SIZE
    for k in keys:
        assert k.hmac_key != k.aes_key
    ring = TicketKeyRing(keys)
    cur = ring.current
    assert cur is not None and cur.created <= now < cur.created + ROTATE_S
    later = TicketKeyRing(derived_keys(secret, now + ROTATE_S))
    assert later.current is not None and ring.decrypt_key(later.current.name) is None
    assert later.decrypt_key(cur.name) == (cur, False)
    assert [k.name for k in later.keys[1:]] == [k.name for k in ring.keys[:2]]
    other = {k.name for k in derived_keys(secret + b"x", now)}
    assert not other & {k.name for k in keys}


@pytest.mark.parametrize("bad", [
    {"name": b"x" * 15}, {"hmac_key": b"x" * 31}, {"aes_key": b"x" * 33},
    {"name": "0" * 16}, {"created": float("nan")},
])
def test_key_sizes_checked(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {"name": b"n" * 16, "hmac_key": b"h" * 32,
                                 "aes_key": b"a" * 32, "created": 1.0}
    fields.update(bad)
    with pytest.raises(ValueError):
        TicketKey(**fields)  # type: ignore[arg-type]


def test_secrets_never_in_repr() -> None:
    k = key(5)
    ring = TicketKeyRing([k])
    for text in (repr(k), str(k), repr(ring), f"{k}", str([k])):
        assert k.hmac_key.hex() not in text and k.aes_key.hex() not in text
        assert repr(k.hmac_key) not in text and repr(k.aes_key) not in text
    assert k.name.hex() in repr(k)


# --- the installer's checks (ctypes on a real SSLContext, no sockets) -------------------------
def test_pointer_self_check_matches_own_context_only() -> None:
    lib = openssl_ctx.load_openssl()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.options |= ssl.OP_NO_COMPRESSION
    ps, pc = openssl_ctx.ssl_ctx_pointer(server), openssl_ctx.ssl_ctx_pointer(client)
    assert ps != pc
    assert openssl_ctx.check_ssl_ctx_pointer(lib, server, ps) is None
    assert openssl_ctx.check_ssl_ctx_pointer(lib, client, pc) is None
    assert openssl_ctx.check_ssl_ctx_pointer(lib, server, pc) is not None
    assert openssl_ctx.check_ssl_ctx_pointer(lib, client, ps) is not None
    assert openssl_ctx.check_ssl_ctx_pointer(lib, server, 0) is not None


def test_wrong_layout_refused_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # One pointer further on is PySSLContext.alpn_protocols: NULL on a fresh context, so the
    # self-check refuses it before any OpenSSL call touches it.
    offset = openssl_ctx._ctx_offset()
    monkeypatch.setattr(openssl_ctx, "_ctx_offset", lambda: offset + 8)
    monkeypatch.setattr(tls_tickets, "_warned", False)
    ring = TicketKeyRing([key(7)])
    caplog.set_level(logging.WARNING, logger="dlba.tls_tickets")
    a, b = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert tls_tickets.install_ticket_keys(a, ring) is False
    assert tls_tickets.install_ticket_keys(b, ring) is False
    assert not tls_tickets.ticket_keys_installed(a)
    warnings = [r for r in caplog.records if r.name == "dlba.tls_tickets"]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "implausible" in warnings[0].getMessage()
    k = ring.current
    assert k is not None and k.aes_key.hex() not in caplog.text


def test_not_an_ssl_context_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls_tickets, "_warned", False)
    assert tls_tickets.install_ticket_keys(object(), TicketKeyRing()) is False  # type: ignore[arg-type]


def test_install_on_this_machine() -> None:
    """This interpreter and OpenSSL (3.0 here) take the callback; installing twice keeps one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ring = TicketKeyRing([key(7)])
    assert tls_tickets.install_ticket_keys(ctx, ring)
    assert tls_tickets.ticket_keys_installed(ctx)
    assert tls_tickets.install_ticket_keys(ctx, TicketKeyRing())
