"""The ticket key ring (pure): encrypt with the newest, decrypt with the last three, older
refused; the rotation policy on ``now``; the key encoding for the config bus; and the installer's
refusal path (self-check of the SSL_CTX pointer, one warning, context untouched)."""

from __future__ import annotations

import logging
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlba.tls import tickets as tls_tickets
from dlba.tls.tickets import (
    RING_SIZE,
    TicketKey,
    TicketKeyRing,
    decode_keys,
    encode_keys,
)


def key(i: int, created: float | None = None) -> TicketKey:
    return TicketKey(i.to_bytes(16, "big"), bytes([i % 256]) * 32, bytes([(i + 1) % 256]) * 32,
                     float(i) if created is None else created)


@given(st.integers(min_value=1, max_value=12), st.integers(min_value=1, max_value=5))
def test_newest_encrypts_last_three_decrypt_older_refused(n: int, size: int) -> None:
    ring = TicketKeyRing(size=size)
    added: list[TicketKey] = []
    for i in range(n):
        k = key(i)
        ring.add(k)
        added.append(k)
        assert ring.current == k                                   # encrypt with the newest
        live = added[-size:]
        for old in added:
            found = ring.decrypt_key(old.name)
            if old in live:
                assert ring.lookup(old.name) == old
                assert found == (old, old == k)                     # current or older
            else:
                assert ring.lookup(old.name) is None and found is None
        assert ring.keys == tuple(reversed(live))
        assert len(ring) == len(live)


@given(st.booleans(), st.booleans())
def test_resumption_renews_tls13_always_tls12_for_older_keys(current: bool, tls13: bool) -> None:
    """1 = resume, 2 = resume and send a fresh ticket (OpenSSL's ticket-key callback): a TLS 1.3
    client uses each ticket once, so it must get a new one on every resumption."""
    assert tls_tickets.decrypt_result(current, tls13) == (2 if tls13 or not current else 1)


@given(st.integers(min_value=4, max_value=10))
def test_default_ring_is_three(n: int) -> None:
    ring = TicketKeyRing()
    for i in range(n):
        ring.add(key(i))
    assert RING_SIZE == 3
    assert [k.name for k in ring.keys] == [key(i).name for i in range(n - 1, n - 4, -1)]
    assert ring.lookup(key(n - 4).name) is None


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


def test_add_same_name_replaces() -> None:
    ring = TicketKeyRing([key(1), key(2)])
    newer = TicketKey(key(1).name, b"\x09" * 32, b"\x08" * 32, 10.0)
    ring.add(newer)
    assert ring.keys == (newer, key(2))


@settings(max_examples=200)
@given(st.floats(min_value=1.0, max_value=1e6), st.lists(st.floats(0, 1e4), max_size=30))
def test_rotation_policy(period: float, steps: list[float]) -> None:
    ring = TicketKeyRing(rotate_s=period)
    now = 1_000_000.0
    assert ring.rotation_due(now)
    first = ring.maybe_rotate(now)
    assert first is not None and ring.current == first and first.created == now
    for step in steps:
        now += step
        before = ring.current
        assert before is not None
        due = now - before.created >= period
        assert ring.rotation_due(now) is due
        made = ring.maybe_rotate(now)
        if due:
            assert made is not None and ring.current == made and made.created == now
            assert ring.lookup(before.name) == before              # still decrypts
        else:
            assert made is None and ring.current == before
        assert not ring.rotation_due(now)


def test_generated_keys_are_random_and_sized() -> None:
    a, b = TicketKey.generate(0), TicketKey.generate(0)
    assert len(a.name) == 16 and len(a.hmac_key) == 32 and len(a.aes_key) == 32
    assert a.name != b.name and a.hmac_key != b.hmac_key and a.aes_key != b.aes_key
    assert a.hmac_key != a.aes_key


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
    k = TicketKey.generate(5)
    ring = TicketKeyRing([k])
    for text in (repr(k), str(k), repr(ring), f"{k}", str([k])):
        assert k.hmac_key.hex() not in text and k.aes_key.hex() not in text
        assert repr(k.hmac_key) not in text and repr(k.aes_key) not in text
    assert k.name.hex() in repr(k)


keys_strategy = st.lists(
    st.builds(TicketKey, st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32),
              st.binary(min_size=32, max_size=32), st.floats(0, 1e10, allow_nan=False)),
    max_size=5, unique_by=lambda k: k.name)


@given(keys_strategy, st.none() | st.binary(min_size=16, max_size=64))
def test_encoding_round_trip(keys: list[TicketKey], secret: bytes | None) -> None:
    text = encode_keys(keys, secret)
    assert "\n" not in text
    assert decode_keys(text, secret) == keys
    if secret is not None:
        for k in keys:
            assert k.aes_key.hex() not in text and k.hmac_key.hex() not in text
        with pytest.raises(ValueError):
            decode_keys(text)
        with pytest.raises(ValueError):
            decode_keys(text, secret + b"x")
    ring = TicketKeyRing(keys)
    assert decode_keys(encode_keys(ring, secret), secret) == list(ring.keys)


@pytest.mark.parametrize("text", [
    "", "nope", "[]", '{"v": 2, "keys": []}', '{"v": 1}', '{"v": 1, "keys": {}}',
    '{"v": 1, "keys": [1]}', '{"v": 1, "keys": [{"name": "00"}]}',
    '{"v": 1, "keys": [{"name": "zz", "hmac": "", "aes": "", "created": 1}]}',
    '{"v": 1, "keys": [{"name": "' + "00" * 16 + '", "hmac": "' + "00" * 32 + '", "aes": "'
    + "00" * 32 + '", "created": true}]}',
    '{"v": 1, "sealed": "!!"}',
])
def test_decode_rejects(text: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_keys(text, b"s" * 32 if "sealed" in text else None)
    assert str(info.value).startswith("ticket keys:")


def test_plain_text_refused_when_a_secret_is_expected() -> None:
    with pytest.raises(ValueError):
        decode_keys(encode_keys([key(1)]), b"s" * 32)


# --- the installer's checks (ctypes on a real SSLContext, no sockets) -------------------------
def test_pointer_self_check_matches_own_context_only() -> None:
    lib = tls_tickets._load_openssl()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.options |= ssl.OP_NO_COMPRESSION
    ps, pc = tls_tickets.ssl_ctx_pointer(server), tls_tickets.ssl_ctx_pointer(client)
    assert ps != pc
    assert tls_tickets.check_ssl_ctx_pointer(lib, server, ps) is None
    assert tls_tickets.check_ssl_ctx_pointer(lib, client, pc) is None
    assert tls_tickets.check_ssl_ctx_pointer(lib, server, pc) is not None
    assert tls_tickets.check_ssl_ctx_pointer(lib, client, ps) is not None
    assert tls_tickets.check_ssl_ctx_pointer(lib, server, 0) is not None


def test_wrong_layout_refused_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # One pointer further on is PySSLContext.alpn_protocols: NULL on a fresh context, so the
    # self-check refuses it before any OpenSSL call touches it.
    offset = tls_tickets._ctx_offset()
    monkeypatch.setattr(tls_tickets, "_ctx_offset", lambda: offset + 8)
    monkeypatch.setattr(tls_tickets, "_warned", False)
    ring = TicketKeyRing([TicketKey.generate(0)])
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
    ring = TicketKeyRing([TicketKey.generate(0)])
    assert tls_tickets.install_ticket_keys(ctx, ring)
    assert tls_tickets.ticket_keys_installed(ctx)
    assert tls_tickets.install_ticket_keys(ctx, TicketKeyRing())
